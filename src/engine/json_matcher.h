// Byte-level incremental matcher for the JSON text a compiled JsonSchema allows. It accepts one
// byte at a time and says whether the text so far is a complete value. Every prefix it accepts
// can still be completed (no dead ends), and every complete text is valid JSON that the
// schema accepts. The grammar is compact JSON: no whitespace except at most one space after ':'
// and after ','; strings are UTF-8 without control characters, escapes \" \\ \/ \b \f \n \r \t
// \uXXXX (surrogates paired); numbers have at most 16 integer and 16 fraction digits and 2
// exponent digits (integers: no fraction or exponent); nothing may follow the top-level value.
//
// Alternatives (anyOf, type lists) are followed in parallel: the state is a set of threads,
// each a stack of frames, at most kMaxThreads of them (further ones are dropped: that narrows
// what may be generated, never what is valid). step_into() writes the successor into another
// matcher without allocating once that one has grown, which is what the vocabulary walk needs.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "engine/json_schema.h"

namespace fennec::engine {

class JsonMatcher {
 public:
  static constexpr size_t kMaxThreads = 32;

  explicit JsonMatcher(std::shared_ptr<const JsonSchema> schema);

  // Advances past `byte`; false (state unchanged) when the byte cannot come next.
  bool advance(uint8_t byte);
  // Advances past every byte; false (state unchanged) when one of them is rejected.
  bool advance(std::string_view bytes);
  bool can_accept(uint8_t byte) const;
  // The text so far is a complete value (end of text is allowed here).
  bool is_complete() const;
  // Writes the state after `byte` into `next` (a matcher of the same schema); false if rejected.
  bool step_into(uint8_t byte, JsonMatcher& next) const;
  // How many more code points some thread may take inside a string body right now (0 if none):
  // text made only of unescaped printable characters and whole UTF-8 sequences up to that length
  // is then certain to be accepted.
  uint32_t plain_string_room() const;

  size_t threads() const { return ends_.size(); }
  const JsonSchema& schema() const { return *schema_; }

  // One level of nesting in a thread; plain data so threads compare and copy bytewise.
  struct Frame {
    uint32_t node;   // schema node (never kAnyOf)
    uint32_t a;      // string: code points; array: items; object: next property; literal: trie node
    uint32_t b;      // string: \u code unit so far; object: key trie node, then property index
    uint8_t phase;   // where in the node's syntax (0: before its first byte)
    uint8_t c;       // string: pending UTF-8 bytes or hex digits; number: digits; space taken
    uint8_t lo, hi;  // string: range of the next UTF-8 continuation byte
  };

 private:
  void run(Frame* st, uint32_t n, uint8_t byte);
  void push_thread(const Frame* st, uint32_t n);
  void dedup();

  std::shared_ptr<const JsonSchema> schema_;
  std::vector<Frame> frames_;   // all threads, one after another
  std::vector<uint32_t> ends_;  // end of each thread in frames_
};

}  // namespace fennec::engine
