#include "engine/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace fennec::engine {

namespace {

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// Length a UTF-8 lead byte announces; 1 for ASCII and for bytes that cannot lead.
size_t sequence_length(unsigned char c) {
  if (c >= 0xF0 && c <= 0xF7) return 4;
  if (c >= 0xE0) return c <= 0xEF ? 3 : 1;
  if (c >= 0xC0) return 2;
  return 1;
}

// Moves `cut` (an emit boundary in s) back so that s[0, cut) does not end inside a UTF-8
// character: either the boundary falls on a continuation byte, or the last character before
// it is incomplete. Invalid bytes are left alone rather than held forever.
size_t utf8_safe_cut(std::string_view s, size_t cut) {
  // Walk back over at most 3 continuation bytes to the lead byte of the character at cut - 1.
  size_t lead = cut;
  for (int back = 0; back < 4 && lead > 0; ++back) {
    --lead;
    const unsigned char c = static_cast<unsigned char>(s[lead]);
    if (!is_continuation(c)) {
      const size_t len = sequence_length(c);
      return lead + len > cut ? lead : cut;  // incomplete before cut: hold the whole character
    }
  }
  return cut;
}

}  // namespace

StopMatcher::StopMatcher(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

StopMatcher::Output StopMatcher::push(std::string_view piece) {
  Output out;
  if (stopped_) {
    out.stopped = true;
    return out;
  }
  held_.append(piece);

  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    held_.resize(first);
    out.text = std::move(held_);
    held_.clear();
    out.stopped = stopped_ = true;
    return out;
  }

  // Longest tail of held_ that is a proper prefix of some stop string: it may still become one.
  size_t hold = 0;
  const std::string_view h = held_;
  for (const std::string& s : stops_) {
    for (size_t k = std::min(s.size() - 1, h.size()); k > hold; --k) {
      if (h.substr(h.size() - k) == std::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  const size_t cut = utf8_safe_cut(h, h.size() - hold);
  out.text.assign(held_, 0, cut);
  held_.erase(0, cut);
  return out;
}

std::string StopMatcher::flush() {
  std::string rest = std::move(held_);
  held_.clear();
  return rest;
}

}  // namespace fennec::engine
