// Parses jinja2 template source into a statement list. Errors name line, column and what was
// expected, e.g. "template syntax error at line 3, column 5: expected 'endfor', got end of template".
#pragma once

#include <string>

#include "core/expected.h"
#include "tokenizer/jinja/ast.h"

namespace fennec::tokenizer::jinja {

struct ParseLimits {
  int max_nesting = 200;  // expression and block nesting: bounds recursion on hostile input
};

Expected<Body> parse_template(const std::string& source, const ParseLimits& limits = {});

}  // namespace fennec::tokenizer::jinja
