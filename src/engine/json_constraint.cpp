#include "engine/json_constraint.h"

#include <algorithm>
#include <utility>

#include "tokenizer/tokenizer.h"

namespace fennec::engine {

namespace {

template <class J>
Expected<std::unique_ptr<JsonConstraint>> create_from(const J& schema_or_null,
                                                      const tokenizer::Tokenizer& tok) {
  std::shared_ptr<const JsonSchema> schema;
  if (schema_or_null.is_null()) {
    schema = JsonSchema::any_object();
  } else {
    auto compiled = JsonSchema::compile(schema_or_null);
    if (!compiled) return compiled.error();
    schema = std::move(*compiled);
  }
  return std::make_unique<JsonConstraint>(std::move(schema), VocabTrie::for_tokenizer(tok));
}

}  // namespace

Expected<std::unique_ptr<JsonConstraint>> JsonConstraint::create(
    const nlohmann::json& schema_or_null, const tokenizer::Tokenizer& tok) {
  return create_from(schema_or_null, tok);
}

Expected<std::unique_ptr<JsonConstraint>> JsonConstraint::create(
    const nlohmann::ordered_json& schema_or_null, const tokenizer::Tokenizer& tok) {
  return create_from(schema_or_null, tok);
}

JsonConstraint::JsonConstraint(std::shared_ptr<const JsonSchema> schema,
                               std::shared_ptr<const VocabTrie> vocab)
    : schema_(std::move(schema)), vocab_(std::move(vocab)), matcher_(schema_) {
  scratch_.assign(vocab_->max_token_len() + 1, matcher_);
}

void JsonConstraint::mark(uint32_t begin, uint32_t end, std::vector<uint8_t>& allowed) const {
  const std::vector<int32_t>& order = vocab_->order();
  for (uint32_t i = begin; i < end; ++i) allowed[order[i]] = 1;
}

void JsonConstraint::mark_fitting(uint32_t begin, uint32_t end, uint32_t room,
                                  std::vector<uint8_t>& allowed) {
  const std::vector<int32_t>& order = vocab_->order();
  const std::vector<uint16_t>& chars = vocab_->order_chars();
  for (uint32_t i = begin; i < end; ++i) {
    if (chars[i] <= room) {
      allowed[order[i]] = 1;
      any_allowed_ = true;
    }
  }
}

// Children of trie node `node`, whose bytes led to the state matcher_ (depth 0) or
// scratch_[depth]. `room`: code points of plain string text the starting state surely takes.
void JsonConstraint::walk(uint32_t node, size_t depth, uint32_t room,
                          std::vector<uint8_t>& allowed) {
  const std::vector<VocabTrie::Node>& nodes = vocab_->nodes();
  const JsonMatcher& cur = depth == 0 ? matcher_ : scratch_[depth];
  JsonMatcher& next = scratch_[depth + 1];
  for (uint32_t c = node + 1; c != 0; c = nodes[c].next_sibling) {
    const VocabTrie::Node& child = nodes[c];
    if (room && (child.flags & VocabTrie::kPlain)) {
      // Every token below stays inside the current string: allowed when its code points fit.
      if (child.max_len <= room) {
        mark(child.tok_begin, child.tok_end, allowed);
        any_allowed_ = true;
      } else {
        mark_fitting(child.tok_begin, child.tok_end, room, allowed);
      }
      continue;
    }
    if (!cur.step_into(child.byte, next)) continue;
    if (child.tok_own_end > child.tok_begin) {
      mark(child.tok_begin, child.tok_own_end, allowed);
      any_allowed_ = true;
    }
    if (child.flags & VocabTrie::kHasChildren) walk(c, depth + 1, room, allowed);
  }
}

void JsonConstraint::allowed_tokens(std::vector<uint8_t>& allowed) {
  const size_t n = static_cast<size_t>(vocab_->n_vocab());
  if (allowed.size() < n) allowed.resize(n);
  std::fill(allowed.begin(), allowed.end(), 0);
  any_allowed_ = false;
  if (!failed_ && !ended_ && (vocab_->nodes()[0].flags & VocabTrie::kHasChildren)) {
    walk(0, 0, matcher_.plain_string_room(), allowed);
  }
  // End of generation once complete; also the way out should no token fit (a vocabulary that
  // cannot spell some byte): stopping beats a sequence with nothing to sample.
  if (is_complete() || !any_allowed_) {
    for (const int32_t id : vocab_->eog_tokens()) allowed[id] = 1;
  }
}

void JsonConstraint::accept(int32_t token) {
  if (failed_ || ended_) return;
  if (vocab_->is_eog(token)) {
    ended_ = true;
    return;
  }
  const std::string_view bytes = vocab_->token_bytes(token);
  if (bytes.empty() || !matcher_.advance(bytes)) failed_ = true;
}

bool JsonConstraint::is_complete() const { return failed_ || ended_ || matcher_.is_complete(); }

}  // namespace fennec::engine
