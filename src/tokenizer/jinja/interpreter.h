// Renders a parsed template: jinja2 semantics (default Undefined, Python-like operators and
// printing) plus HF transformers' globals (raise_exception, strftime_now, tojson override).
// Hostile templates are stopped by limits on recursion, loop iterations and output size.
#pragma once

#include <cstddef>
#include <string>

#include "core/expected.h"
#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/value.h"

namespace fennec::tokenizer::jinja {

struct RenderLimits {
  int max_call_depth = 100;                   // nested macro calls
  size_t max_loop_iterations = 1'000'000;     // all loop iterations in one render together
  size_t max_output_bytes = 16u << 20;        // rendered text, and any single string built
};

// context: a Dict value of top-level variables.
Expected<std::string> render_template(const Body& body, const Value& context, const RenderLimits& limits);

}  // namespace fennec::tokenizer::jinja
