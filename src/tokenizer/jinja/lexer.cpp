#include "tokenizer/jinja/lexer.h"

#include <cctype>
#include <cstring>

namespace fennec::tokenizer::jinja {

const char* token_type_name(TokenType t) {
  switch (t) {
    case TokenType::Text: return "template data";
    case TokenType::VarBegin: return "begin of print statement";
    case TokenType::VarEnd: return "end of print statement";
    case TokenType::BlockBegin: return "begin of statement block";
    case TokenType::BlockEnd: return "end of statement block";
    case TokenType::Name: return "name";
    case TokenType::String: return "string";
    case TokenType::Integer: return "integer";
    case TokenType::Float: return "float";
    case TokenType::Operator: return "operator";
    case TokenType::End: return "end of template";
  }
  return "token";
}

namespace {

class Lexer {
 public:
  Lexer(std::string src, const LexerOptions& opt) : src_(std::move(src)), opt_(opt) {}

  Expected<std::vector<Token>> run() {
    try {
      lex();
    } catch (const Error& e) {
      return e;
    }
    tokens_.push_back({TokenType::End, "", line_at(pos_), col_at(pos_)});
    return std::move(tokens_);
  }

 private:
  std::string src_;
  LexerOptions opt_;
  size_t pos_ = 0;
  std::vector<Token> tokens_;
  // Line bookkeeping: positions of newlines seen so far, computed lazily.
  // Tokens are pushed nearly in order, so the line count is advanced from a cached position.
  mutable size_t line_pos_ = 0;
  mutable int line_no_ = 1;
  mutable size_t line_start_ = 0;
  int line_at(size_t p) const {
    if (p < line_pos_) {
      line_pos_ = 0;
      line_no_ = 1;
      line_start_ = 0;
    }
    for (; line_pos_ < p && line_pos_ < src_.size(); ++line_pos_) {
      if (src_[line_pos_] == '\n') {
        ++line_no_;
        line_start_ = line_pos_ + 1;
      }
    }
    return line_no_;
  }
  int col_at(size_t p) const {
    line_at(p);
    return static_cast<int>(p - line_start_) + 1;
  }
  [[noreturn]] void fail(size_t p, const std::string& msg) const {
    throw make_error("template syntax error at line " + std::to_string(line_at(p)) + ", column " +
                     std::to_string(col_at(p)) + ": " + msg);
  }
  void push(TokenType t, std::string v, size_t at) {
    tokens_.push_back({t, std::move(v), line_at(at), col_at(at)});
  }

  static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

  void lex() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      size_t tag = find_tag(pos_);
      if (tag == std::string::npos) {
        push(TokenType::Text, src_.substr(pos_), pos_);
        pos_ = src_.size();
        break;
      }
      char kind = src_[tag + 1];  // '{', '%' or '#'
      char sign = tag + 2 < src_.size() ? src_[tag + 2] : 0;
      std::string text = src_.substr(pos_, tag - pos_);
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_ws(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+' && opt_.lstrip_blocks && kind != '{') {
        size_t nl = text.rfind('\n');
        size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if (l_pos > 0 || line_starting) {
          bool only_ws = l_pos < text.size();
          for (size_t k = l_pos; k < text.size(); ++k)
            if (!is_ws(text[k])) only_ws = false;
          if (only_ws) text.resize(l_pos);
        }
      }
      if (!text.empty()) push(TokenType::Text, text, pos_);
      size_t body = tag + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      if (kind == '#') {
        size_t end = src_.find("#}", body);
        if (end == std::string::npos) fail(tag, "missing end of comment tag");
        bool strip = end > body && src_[end - 1] == '-';
        bool keep = end > body && src_[end - 1] == '+';
        pos_ = end + 2;
        line_starting = finish_tag(strip, !keep && opt_.trim_blocks);
        continue;
      }
      if (kind == '%' && try_raw(tag, body)) {
        line_starting = false;
        continue;
      }
      push(kind == '{' ? TokenType::VarBegin : TokenType::BlockBegin, "", tag);
      pos_ = body;
      line_starting = lex_expression(kind == '{', tag);
    }
  }

  size_t find_tag(size_t from) const {
    for (size_t p = src_.find('{', from); p != std::string::npos; p = src_.find('{', p + 1)) {
      if (p + 1 < src_.size() && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#')) return p;
    }
    return std::string::npos;
  }

  // After a tag end at pos_: `-` strips all following whitespace, trim_blocks one newline.
  // Returns whether the consumed text ended in a newline (jinja's "line_starting").
  bool finish_tag(bool strip, bool trim_newline) {
    bool ended_newline = false;
    if (strip) {
      while (pos_ < src_.size() && is_ws(src_[pos_])) ended_newline = src_[pos_++] == '\n';
    } else if (trim_newline && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
      ended_newline = true;
    }
    return ended_newline;
  }

  // {% raw %}...{% endraw %}: text passed through verbatim.
  bool try_raw(size_t tag, size_t body) {
    size_t p = body;
    while (p < src_.size() && is_ws(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < src_.size() && is_ws(src_[p])) ++p;
    bool strip_after = false;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) strip_after = src_[p++] == '-';
    if (src_.compare(p, 2, "%}") != 0) return false;
    p += 2;
    pos_ = p;
    finish_tag(strip_after, opt_.trim_blocks && !strip_after);
    size_t content_start = pos_;
    for (size_t q = src_.find("{%", pos_); q != std::string::npos; q = src_.find("{%", q + 1)) {
      size_t r = q + 2;
      bool strip_before = r < src_.size() && src_[r] == '-';
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) ++r;
      while (r < src_.size() && is_ws(src_[r])) ++r;
      if (src_.compare(r, 6, "endraw") != 0) continue;
      r += 6;
      while (r < src_.size() && is_ws(src_[r])) ++r;
      bool strip_end = false;
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) strip_end = src_[r++] == '-';
      if (src_.compare(r, 2, "%}") != 0) continue;
      std::string text = src_.substr(content_start, q - content_start);
      if (strip_before) {
        while (!text.empty() && is_ws(text.back())) text.pop_back();
      }
      if (!text.empty()) push(TokenType::Text, text, content_start);
      pos_ = r + 2;
      finish_tag(strip_end, opt_.trim_blocks && !strip_end);
      return true;
    }
    fail(tag, "missing end of raw directive");
  }

  bool lex_expression(bool is_var, size_t tag_start) {
    const char* end_marker = is_var ? "}}" : "%}";
    int depth = 0;  // bracket nesting: a '}' inside {...} is not the end of the tag
    while (true) {
      while (pos_ < src_.size() && is_ws(src_[pos_])) ++pos_;
      if (pos_ >= src_.size()) fail(tag_start, is_var ? "unexpected end of template, expected '}}'" : "unexpected end of template, expected '%}'");
      char c = src_[pos_];
      // Tag end, possibly with a whitespace-control sign.
      if (depth == 0) {
        bool minus = (c == '-' || c == '+') && src_.compare(pos_ + 1, 2, end_marker) == 0;
        if (minus || src_.compare(pos_, 2, end_marker) == 0) {
          size_t at = pos_;
          bool strip = minus && c == '-';
          bool keep = minus && c == '+';
          pos_ += minus ? 3 : 2;
          push(is_var ? TokenType::VarEnd : TokenType::BlockEnd, "", at);
          return finish_tag(strip, !is_var && !keep && opt_.trim_blocks);
        }
      }
      size_t start = pos_;
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        while (pos_ < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) ++pos_;
        push(TokenType::Name, src_.substr(start, pos_ - start), start);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number();
      } else if (c == '\'' || c == '"') {
        lex_string();
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<",
                                    ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"};
        const char* found = nullptr;
        for (const char* op : ops) {
          if (src_.compare(pos_, std::strlen(op), op) == 0) {
            found = op;
            break;
          }
        }
        if (!found) fail(pos_, std::string("unexpected char '") + c + "'");
        if (*found == '(' || *found == '[' || *found == '{') ++depth;
        if ((*found == ')' || *found == ']' || *found == '}') && depth > 0) --depth;
        pos_ += std::strlen(found);
        push(TokenType::Operator, found, start);
      }
    }
  }

  void lex_number() {
    size_t start = pos_;
    auto digits = [&] {
      while (pos_ < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[pos_])) || src_[pos_] == '_')) ++pos_;
    };
    digits();
    bool is_float = false;
    if (pos_ + 1 < src_.size() && src_[pos_] == '.' && std::isdigit(static_cast<unsigned char>(src_[pos_ + 1]))) {
      is_float = true;
      ++pos_;
      digits();
    }
    if (pos_ < src_.size() && (src_[pos_] == 'e' || src_[pos_] == 'E')) {
      size_t save = pos_++;
      if (pos_ < src_.size() && (src_[pos_] == '+' || src_[pos_] == '-')) ++pos_;
      if (pos_ < src_.size() && std::isdigit(static_cast<unsigned char>(src_[pos_]))) {
        digits();
        is_float = true;
      } else {
        pos_ = save;
      }
    }
    std::string text;
    for (size_t k = start; k < pos_; ++k)
      if (src_[k] != '_') text += src_[k];
    push(is_float ? TokenType::Float : TokenType::Integer, text, start);
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // Python string-literal escapes (jinja2 decodes literals with "unicode-escape").
  void lex_string() {
    size_t start = pos_;
    char q = src_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= src_.size()) fail(start, "unexpected end of string");
      char c = src_[pos_++];
      if (c == q) break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= src_.size()) fail(start, "unexpected end of string");
      char e = src_[pos_++];
      auto hex = [&](int n) {
        if (pos_ + static_cast<size_t>(n) > src_.size()) fail(pos_, "truncated \\x/\\u escape");
        uint32_t v = 0;
        for (int k = 0; k < n; ++k) {
          char h = src_[pos_++];
          if (!std::isxdigit(static_cast<unsigned char>(h))) fail(pos_, "invalid \\x/\\u escape");
          v = v * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
        }
        return v;
      };
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '\n': break;
        case 'x': append_utf8(out, hex(2)); break;
        case 'u': append_utf8(out, hex(4)); break;
        case 'U': {
          uint32_t cp = hex(8);
          if (cp > 0x10FFFF) fail(pos_, "invalid \\U escape");
          append_utf8(out, cp);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && pos_ < src_.size() && src_[pos_] >= '0' && src_[pos_] <= '7'; ++k)
              v = v * 8 + static_cast<uint32_t>(src_[pos_++] - '0');
            append_utf8(out, v);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    push(TokenType::String, out, start);
  }
};

}  // namespace

Expected<std::vector<Token>> tokenize(const std::string& source, const LexerOptions& options) {
  // Normalise newlines and drop one trailing newline (keep_trailing_newline=False).
  std::string src;
  src.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      src += '\n';
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      src += source[k];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  return Lexer(std::move(src), options).run();
}

}  // namespace fennec::tokenizer::jinja
