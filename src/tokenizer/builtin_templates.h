// Chat templates for known model families whose GGUF files carry none (some Gemma 3 conversions
// ship without `tokenizer.chat_template`). Returns "" when no built-in template applies.
#pragma once

#include <string>

#include "formats/gguf.h"

namespace fennec::tokenizer {

std::string builtin_chat_template(const formats::GgufFile& gguf);

}  // namespace fennec::tokenizer
