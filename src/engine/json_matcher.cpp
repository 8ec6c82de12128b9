#include "engine/json_matcher.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace fennec::engine {

namespace {

using Kind = JsonNode::Kind;
using Frame = JsonMatcher::Frame;

static_assert(sizeof(Frame) == 16 && std::is_trivially_copyable_v<Frame>,
              "frames are compared and copied bytewise: no padding");

constexpr int kMaxFrames = JsonSchema::kMaxFrames;
constexpr uint32_t kNone = LiteralTrie::kNone;
constexpr uint8_t kMaxIntDigits = 16;
constexpr uint8_t kMaxFracDigits = 16;
constexpr uint8_t kMaxExpDigits = 2;

enum StringPhase : uint8_t {
  kSStart,
  kSBody,
  kSUtf8,
  kSEscape,
  kSHex,
  kSLowSlash,
  kSLowU,
  kSHexLow
};
enum NumberPhase : uint8_t {
  kNStart,
  kNMinus,
  kNZero,
  kNInt,
  kNDot,
  kNFrac,
  kNExp,
  kNExpSign,
  kNExpDigits
};
enum ObjectPhase : uint8_t { kOStart, kOFirst, kOKey, kOColon, kOValue, kOAfter, kONext };
enum ArrayPhase : uint8_t { kAStart, kAFirst, kAAfter, kANext };

// What one byte does to the top frame of a thread.
enum class Step : uint8_t {
  kReject,  // the thread dies
  kStay,    // consumed; the frame stays on top
  kPop,     // consumed; the frame is finished (closing quote or bracket)
  kPush,    // consumed; st[n] was filled with a new top frame
  kEnd,     // not consumed: the frame ended before this byte (number, literal); parent takes it
  kStart,   // not consumed: a value of `start` begins with this byte
};

Frame fresh(uint32_t node, uint8_t phase = 0) { return Frame{node, 0, 0, phase, 0, 0, 0}; }

int hex_value(uint8_t b) {
  if (b >= '0' && b <= '9') return b - '0';
  if (b >= 'a' && b <= 'f') return b - 'a' + 10;
  if (b >= 'A' && b <= 'F') return b - 'A' + 10;
  return -1;
}

bool is_digit(uint8_t b) { return b >= '0' && b <= '9'; }

// What a UTF-8 lead byte announces: how many continuation bytes follow and the range of the
// first one (RFC 3629: no overlongs, surrogates or code points above U+10FFFF, as nlohmann
// and every strict parser require). extra == 0: not a lead byte.
struct Utf8Lead {
  uint8_t extra, lo, hi;
};

Utf8Lead utf8_lead(uint8_t b) {
  if (b >= 0xC2 && b <= 0xDF) return {1, 0x80, 0xBF};
  if (b == 0xE0) return {2, 0xA0, 0xBF};
  if (b == 0xED) return {2, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {2, 0x80, 0xBF};
  if (b == 0xF0) return {3, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {3, 0x80, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};
  return {0, 0, 0};
}

// Counts one more code point against maxLength.
bool take_char(Frame& f, const JsonNode& node) {
  if (f.a >= node.max_length) return false;
  ++f.a;
  return true;
}

Step step_string(Frame& f, const JsonNode& node, uint8_t b) {
  switch (f.phase) {
    case kSStart:
      if (b != '"') return Step::kReject;
      f.phase = kSBody;
      return Step::kStay;
    case kSBody:
      if (b == '"') return f.a >= node.min_length ? Step::kPop : Step::kReject;
      if (b < 0x20) return Step::kReject;
      if (b < 0x80) {
        if (!take_char(f, node)) return Step::kReject;
        if (b == '\\') f.phase = kSEscape;
        return Step::kStay;
      }
      {
        const Utf8Lead lead = utf8_lead(b);
        if (lead.extra == 0 || !take_char(f, node)) return Step::kReject;
        f.phase = kSUtf8;
        f.c = lead.extra;
        f.lo = lead.lo;
        f.hi = lead.hi;
      }
      return Step::kStay;
    case kSUtf8:
      if (b < f.lo || b > f.hi) return Step::kReject;
      f.lo = 0x80;
      f.hi = 0xBF;
      if (--f.c == 0) {
        f.phase = kSBody;  // lo/hi back to 0: equal states compare equal
        f.lo = f.hi = 0;
      }
      return Step::kStay;
    case kSEscape:
      if (b == 'u') {
        f.phase = kSHex;
        return Step::kStay;
      }
      if (b == '"' || b == '\\' || b == '/' || b == 'b' || b == 'f' || b == 'n' || b == 'r' ||
          b == 't') {
        f.phase = kSBody;
        return Step::kStay;
      }
      return Step::kReject;
    case kSHex: {
      const int v = hex_value(b);
      if (v < 0) return Step::kReject;
      f.b = f.b * 16 + static_cast<uint32_t>(v);
      ++f.c;
      if (f.c == 2 && f.b >= 0xDC && f.b <= 0xDF) return Step::kReject;  // lone low surrogate
      if (f.c == 4) {
        f.phase = (f.b >= 0xD800 && f.b <= 0xDBFF) ? kSLowSlash : kSBody;
        f.b = 0;
        f.c = 0;
      }
      return Step::kStay;
    }
    case kSLowSlash:
      if (b != '\\') return Step::kReject;
      f.phase = kSLowU;
      return Step::kStay;
    case kSLowU:
      if (b != 'u') return Step::kReject;
      f.phase = kSHexLow;
      return Step::kStay;
    case kSHexLow: {
      const int v = hex_value(b);
      if (v < 0 || (f.c == 0 && v != 0xD) || (f.c == 1 && v < 0xC)) return Step::kReject;
      if (++f.c == 4) {
        f.phase = kSBody;
        f.c = 0;
      }
      return Step::kStay;
    }
  }
  return Step::kReject;
}

Step step_number(Frame& f, const JsonNode& node, uint8_t b) {
  const bool digit = is_digit(b);
  const bool fraction_ok = !node.integer && b == '.';
  const bool exponent_ok = !node.integer && (b == 'e' || b == 'E');
  switch (f.phase) {
    case kNStart:
      if (b == '-' && !node.non_negative) {
        f.phase = kNMinus;
        return Step::kStay;
      }
      [[fallthrough]];
    case kNMinus:
      if (!digit) return Step::kReject;
      f.phase = b == '0' ? kNZero : kNInt;
      f.c = b == '0' ? 0 : 1;
      return Step::kStay;
    case kNZero:
    case kNInt:
      if (digit && f.phase == kNInt && f.c < kMaxIntDigits) {
        ++f.c;
        return Step::kStay;
      }
      if (fraction_ok || exponent_ok) {
        f.phase = fraction_ok ? kNDot : kNExp;
        f.c = 0;
        return Step::kStay;
      }
      return Step::kEnd;
    case kNDot:
      if (!digit) return Step::kReject;
      f.phase = kNFrac;
      f.c = 1;
      return Step::kStay;
    case kNFrac:
      if (digit && f.c < kMaxFracDigits) {
        ++f.c;
        return Step::kStay;
      }
      if (exponent_ok) {
        f.phase = kNExp;
        f.c = 0;
        return Step::kStay;
      }
      return Step::kEnd;
    case kNExp:
      if (b == '+' || b == '-') {
        f.phase = kNExpSign;
        return Step::kStay;
      }
      [[fallthrough]];
    case kNExpSign:
      if (!digit) return Step::kReject;
      f.phase = kNExpDigits;
      f.c = 1;
      return Step::kStay;
    case kNExpDigits:
      if (digit && f.c < kMaxExpDigits) {
        ++f.c;
        return Step::kStay;
      }
      return Step::kEnd;
  }
  return Step::kReject;
}

Step step_literal(Frame& f, const JsonNode& node, uint8_t b) {
  const uint32_t next = node.literals.child(f.a, b);
  if (next != kNone) {
    f.a = next;
    return Step::kStay;
  }
  return node.literals.value(f.a) != kNone ? Step::kEnd : Step::kReject;
}

bool can_end(const JsonSchema& schema, const Frame& f) {
  const JsonNode& node = schema.node(f.node);
  if (node.kind == Kind::kNumber) {
    return f.phase == kNZero || f.phase == kNInt || f.phase == kNFrac || f.phase == kNExpDigits;
  }
  return node.kind == Kind::kLiteral && node.literals.value(f.a) != kNone;
}

// A value of `value` may start as frame number n + 1 (n frames below it).
bool fits(const JsonSchema& schema, uint32_t n, uint32_t value) {
  return n + schema.need(value) <= static_cast<uint32_t>(kMaxFrames);
}

// Last property index that may come next when `lo` is the first one not yet passed: the first
// required property at or after lo (optional ones before it may be skipped).
uint32_t last_choice(const JsonNode& node, uint32_t lo) {
  const uint32_t n = static_cast<uint32_t>(node.properties.size());
  return std::min(node.next_required[std::min(lo, n)], n - 1);
}

// Some property through key trie node `t` may come next.
bool key_possible(const JsonSchema& schema, const JsonNode& node, uint32_t t, uint32_t lo,
                  uint32_t n) {
  if (lo >= node.properties.size()) return false;
  const uint32_t hi = last_choice(node, lo);
  const auto below = node.keys.values_below(t);
  for (auto it = std::lower_bound(below.begin(), below.end(), lo); it != below.end() && *it <= hi;
       ++it) {
    if (fits(schema, n, node.properties[*it].node)) return true;
  }
  return false;
}

bool can_close_object(const JsonNode& node, uint32_t lo) {
  return node.free_keys ||
         node.next_required[std::min<size_t>(lo, node.properties.size())] == node.properties.size();
}

// '"' opening a key; n frames with the object on top.
Step start_key(const JsonSchema& schema, Frame* st, uint32_t n) {
  Frame& f = st[n - 1];
  const JsonNode& node = schema.node(f.node);
  if (node.free_keys) {
    if (!fits(schema, n, node.free_values)) return Step::kReject;
    f.phase = kOColon;
    st[n] = fresh(JsonSchema::kAnyStringNode, kSBody);
    return Step::kPush;
  }
  const uint32_t t = node.keys.child(0, '"');
  if (t == kNone || !key_possible(schema, node, t, f.a, n)) return Step::kReject;
  f.phase = kOKey;
  f.b = t;
  return Step::kStay;
}

Step step_object(const JsonSchema& schema, Frame* st, uint32_t n, uint8_t b, uint32_t& start) {
  Frame& f = st[n - 1];
  const JsonNode& node = schema.node(f.node);
  switch (f.phase) {
    case kOStart:
      if (b != '{') return Step::kReject;
      f.phase = kOFirst;
      return Step::kStay;
    case kOFirst:
      if (b == '}') return can_close_object(node, 0) ? Step::kPop : Step::kReject;
      return b == '"' ? start_key(schema, st, n) : Step::kReject;
    case kONext:
      if (b == ' ' && f.c == 0) {
        f.c = 1;
        return Step::kStay;
      }
      return b == '"' ? start_key(schema, st, n) : Step::kReject;
    case kOKey: {
      const uint32_t t = node.keys.child(f.b, b);
      if (t == kNone || !key_possible(schema, node, t, f.a, n)) return Step::kReject;
      const uint32_t prop = node.keys.value(t);
      if (prop != kNone) {
        f.phase = kOColon;
        f.b = prop;
        f.a = prop + 1;
      } else {
        f.b = t;
      }
      return Step::kStay;
    }
    case kOColon:
      if (b != ':') return Step::kReject;
      f.phase = kOValue;
      f.c = 0;
      return Step::kStay;
    case kOValue:
      if (b == ' ' && f.c == 0) {
        f.c = 1;
        return Step::kStay;
      }
      f.phase = kOAfter;
      start = node.free_keys ? node.free_values : node.properties[f.b].node;
      return Step::kStart;
    case kOAfter:
      if (b == '}') return can_close_object(node, f.a) ? Step::kPop : Step::kReject;
      if (b != ',') return Step::kReject;
      if (node.free_keys ? !fits(schema, n, node.free_values)
                         : !key_possible(schema, node, 0, f.a, n)) {
        return Step::kReject;
      }
      f.phase = kONext;
      f.c = 0;
      return Step::kStay;
  }
  return Step::kReject;
}

Step step_array(const JsonSchema& schema, Frame& f, uint32_t n, uint8_t b, uint32_t& start) {
  const JsonNode& node = schema.node(f.node);
  switch (f.phase) {
    case kAStart:
      if (b != '[') return Step::kReject;
      f.phase = kAFirst;
      return Step::kStay;
    case kAAfter:
      if (b == ']') return f.a >= node.min_items ? Step::kPop : Step::kReject;
      if (b != ',' || f.a >= node.max_items) return Step::kReject;
      if (f.a >= node.min_items && !fits(schema, n, node.items)) return Step::kReject;
      f.phase = kANext;
      f.c = 0;
      return Step::kStay;
    case kAFirst:
      if (b == ']') return node.min_items == 0 ? Step::kPop : Step::kReject;
      break;
    case kANext:
      if (b == ' ' && f.c == 0) {
        f.c = 1;
        return Step::kStay;
      }
      break;
    default:
      return Step::kReject;
  }
  if (f.a >= node.max_items || !fits(schema, n, node.items)) return Step::kReject;
  ++f.a;
  f.phase = kAAfter;
  start = node.items;
  return Step::kStart;
}

}  // namespace

JsonMatcher::JsonMatcher(std::shared_ptr<const JsonSchema> schema) : schema_(std::move(schema)) {
  for (const uint32_t leaf : schema_->node(schema_->root()).leaves) {
    if (!fits(*schema_, 0, leaf)) continue;
    const Frame f = fresh(leaf);
    push_thread(&f, 1);
  }
}

void JsonMatcher::push_thread(const Frame* st, uint32_t n) {
  uint32_t begin = 0;
  for (const uint32_t end : ends_) {
    if (end - begin == n && std::memcmp(&frames_[begin], st, n * sizeof(Frame)) == 0) return;
    begin = end;
  }
  if (ends_.size() >= kMaxThreads) return;
  frames_.insert(frames_.end(), st, st + n);
  ends_.push_back(static_cast<uint32_t>(frames_.size()));
}

// Feeds `byte` to the thread st[0, n) and appends what survives (several threads when a value
// with alternatives starts here).
void JsonMatcher::run(Frame* st, uint32_t n, uint8_t byte) {
  const JsonSchema& schema = *schema_;
  for (;;) {
    if (n == 0) return;  // the top-level value is finished: nothing may follow
    Frame& f = st[n - 1];
    const JsonNode& node = schema.node(f.node);
    uint32_t start = 0;
    Step r = Step::kReject;
    switch (node.kind) {
      case Kind::kString:
        r = step_string(f, node, byte);
        break;
      case Kind::kNumber:
        r = step_number(f, node, byte);
        break;
      case Kind::kLiteral:
        r = step_literal(f, node, byte);
        break;
      case Kind::kObject:
        r = step_object(schema, st, n, byte, start);
        break;
      case Kind::kArray:
        r = step_array(schema, f, n, byte, start);
        break;
      case Kind::kAnyOf:
        break;
    }
    switch (r) {
      case Step::kReject:
        return;
      case Step::kStay:
        push_thread(st, n);
        return;
      case Step::kPop:
        push_thread(st, n - 1);
        return;
      case Step::kPush:
        push_thread(st, n + 1);
        return;
      case Step::kEnd:
        --n;
        continue;
      case Step::kStart:
        break;
    }
    // A value starts: one thread per alternative that fits, each fed this byte.
    const auto& leaves = schema.node(start).leaves;
    uint32_t last = kNone;
    for (const uint32_t leaf : leaves) {
      if (!fits(schema, n, leaf)) continue;
      if (last != kNone) {
        Frame copy[kMaxFrames];
        std::memcpy(copy, st, n * sizeof(Frame));
        copy[n] = fresh(last);
        run(copy, n + 1, byte);
      }
      last = leaf;
    }
    if (last == kNone) return;
    st[n] = fresh(last);
    ++n;
  }
}

bool JsonMatcher::step_into(uint8_t byte, JsonMatcher& next) const {
  next.frames_.clear();
  next.ends_.clear();
  Frame st[kMaxFrames];
  uint32_t begin = 0;
  for (const uint32_t end : ends_) {
    const uint32_t n = end - begin;
    std::memcpy(st, &frames_[begin], n * sizeof(Frame));
    next.run(st, n, byte);
    begin = end;
  }
  return !next.ends_.empty();
}

bool JsonMatcher::advance(uint8_t byte) {
  JsonMatcher next(*this);
  if (!step_into(byte, next)) return false;
  *this = std::move(next);
  return true;
}

bool JsonMatcher::advance(std::string_view bytes) {
  JsonMatcher cur(*this), next(*this);
  for (const char c : bytes) {
    if (!cur.step_into(static_cast<uint8_t>(c), next)) return false;
    std::swap(cur, next);
  }
  *this = std::move(cur);
  return true;
}

bool JsonMatcher::can_accept(uint8_t byte) const {
  JsonMatcher next(schema_);
  return step_into(byte, next);
}

bool JsonMatcher::is_complete() const {
  uint32_t begin = 0;
  for (const uint32_t end : ends_) {
    if (end == begin || (end - begin == 1 && can_end(*schema_, frames_[begin]))) return true;
    begin = end;
  }
  return false;
}

uint32_t JsonMatcher::plain_string_room() const {
  uint32_t room = 0;
  uint32_t begin = 0;
  for (const uint32_t end : ends_) {
    if (end > begin) {
      const Frame& top = frames_[end - 1];
      const JsonNode& node = schema_->node(top.node);
      if (node.kind == Kind::kString && top.phase == kSBody) {
        room = std::max(room, node.max_length - top.a);
      }
    }
    begin = end;
  }
  return room;
}

}  // namespace fennec::engine
