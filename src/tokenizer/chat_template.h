// A model's chat template (GGUF `tokenizer.chat_template`), rendered like HF transformers does
// with Python jinja2 (trim_blocks, lstrip_blocks, raise_exception, strftime_now, HF's tojson).
// Parse once, render per request; rendering is const and thread-safe.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/expected.h"
#include "tokenizer/jinja/interpreter.h"

namespace fennec::tokenizer {

class ChatTemplate {
 public:
  // Parses the template text; a syntax error is an Error with line/column and what was expected.
  static Expected<ChatTemplate> parse(const std::string& source);
  // Renders with the given context variables (messages, add_generation_prompt, bos_token,
  // eos_token, tools, ...). Template runtime errors (including raise_exception) are Errors.
  // nlohmann::json sorts object keys; pass ordered_json to keep the caller's key order (tojson
  // output of tool schemas then matches Python's, which keeps insertion order).
  Expected<std::string> render(const nlohmann::json& context) const;
  Expected<std::string> render(const nlohmann::ordered_json& context) const;
  // Convenience: messages + add_generation_prompt + special tokens (+ optional tools).
  Expected<std::string> apply(const nlohmann::json& messages, bool add_generation_prompt,
                              const std::string& bos_token, const std::string& eos_token,
                              const nlohmann::json& tools = nullptr) const;

  // Limits against hostile templates (recursion, loop iterations, output size).
  void set_limits(const jinja::RenderLimits& limits) { limits_ = limits; }

 private:
  std::shared_ptr<const jinja::Body> body_;
  jinja::RenderLimits limits_;
};

}  // namespace fennec::tokenizer
