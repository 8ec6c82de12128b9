// Stop strings (OpenAI `stop`) over incrementally generated text. push() returns the text that
// is safe to stream now: it holds back the longest tail that could still grow into a stop
// string, and never ends a chunk inside a UTF-8 character. Once a stop string appears, the text
// before it is returned, the stop string and everything after it are dropped, and the matcher
// stays stopped. The earliest occurrence of any stop string wins.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace fennec::engine {

class StopMatcher {
 public:
  // Empty stop strings are ignored (they would match before any text).
  explicit StopMatcher(std::vector<std::string> stops);

  struct Output {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string was hit: end generation
  };

  Output push(std::string_view piece);
  // Returns the held-back tail at the end of generation (empty once stopped).
  std::string flush();

  bool stopped() const { return stopped_; }
  size_t held_bytes() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace fennec::engine
