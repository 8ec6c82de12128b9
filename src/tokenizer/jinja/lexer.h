// Splits template source into text and tag tokens the way jinja2's lexer does, applying the
// whitespace rules there (`-`/`+` markers, trim_blocks, lstrip_blocks, one trailing newline
// dropped, newlines normalised to \n).
#pragma once

#include <string>
#include <vector>

#include "core/expected.h"

namespace fennec::tokenizer::jinja {

enum class TokenType {
  Text,        // literal template text
  VarBegin,    // {{
  VarEnd,      // }}
  BlockBegin,  // {%
  BlockEnd,    // %}
  Name,
  String,      // value holds the decoded string
  Integer,
  Float,
  Operator,    // value holds the operator text
  End,
};

struct Token {
  TokenType type;
  std::string value;
  int line = 1;
  int column = 1;
};

struct LexerOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
};

Expected<std::vector<Token>> tokenize(const std::string& source, const LexerOptions& options = {});

const char* token_type_name(TokenType t);

}  // namespace fennec::tokenizer::jinja
