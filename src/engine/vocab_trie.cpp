#include "engine/vocab_trie.h"

#include <algorithm>
#include <mutex>
#include <string>
#include <utility>

#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace fennec::engine {

namespace {

// Text that stays inside a JSON string body whatever surrounds it: no control characters, '"'
// or '\\', and only whole, valid UTF-8 sequences.
bool is_plain(std::string_view s) {
  for (const char c : s) {
    const uint8_t b = static_cast<uint8_t>(c);
    if (b < 0x20 || b == '"' || b == '\\') return false;
  }
  return tokenizer::utf8::is_valid(s);
}

uint64_t fingerprint(const tokenizer::Tokenizer& tok) {
  uint64_t h = 1469598103934665603ull;
  const auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  const int32_t n = tok.n_vocab();
  mix(static_cast<uint64_t>(n));
  mix(static_cast<uint64_t>(tok.eos_id()));
  for (int k = 0; k < 64 && n > 0; ++k) {
    const int32_t id = static_cast<int32_t>(static_cast<int64_t>(n) * k / 64);
    for (const char c : tok.token_bytes(id)) mix(static_cast<uint8_t>(c));
    mix(tok.is_special(id) * 2 + tok.is_eog(id));
  }
  return h;
}

}  // namespace

std::string_view VocabTrie::token_bytes(int32_t id) const {
  if (id < 0 || id >= n_vocab_) return {};
  return std::string_view(bytes_.data() + offsets_[id], offsets_[id + 1] - offsets_[id]);
}

bool VocabTrie::is_eog(int32_t id) const { return id >= 0 && id < n_vocab_ && is_eog_[id]; }

std::shared_ptr<const VocabTrie> VocabTrie::build(const tokenizer::Tokenizer& tok) {
  auto trie = std::make_shared<VocabTrie>();
  VocabTrie& t = *trie;
  const int32_t n = std::max(tok.n_vocab(), 0);
  t.n_vocab_ = n;
  t.is_eog_.assign(n, 0);
  t.offsets_.assign(static_cast<size_t>(n) + 1, 0);
  for (int32_t id = 0; id < n; ++id) {
    t.offsets_[id] = static_cast<uint32_t>(t.bytes_.size());
    if (tok.is_eog(id)) {
      t.is_eog_[id] = 1;
      t.eog_.push_back(id);
      continue;
    }
    if (tok.is_special(id)) continue;
    const std::string b = tok.token_bytes(id);
    t.bytes_.insert(t.bytes_.end(), b.begin(), b.end());
  }
  t.offsets_[n] = static_cast<uint32_t>(t.bytes_.size());

  std::vector<int32_t> ids;
  for (int32_t id = 0; id < n; ++id) {
    if (!t.token_bytes(id).empty()) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end(), [&t](int32_t x, int32_t y) {
    const std::string_view a = t.token_bytes(x), b = t.token_bytes(y);
    return a != b ? a < b : x < y;
  });

  // Insert in sorted order: nodes come out in preorder and the tokens of a subtree contiguous.
  t.nodes_.push_back(Node{0, 0, 0, 0, 0, 0, 0});
  std::vector<uint32_t> parent{0}, last_child{0}, depth{0};
  std::vector<uint32_t> path{0};
  std::vector<uint8_t> plain_own{1};
  std::string_view prev;
  t.order_.reserve(ids.size());
  t.order_chars_.reserve(ids.size());
  for (const int32_t id : ids) {
    const std::string_view s = t.token_bytes(id);
    size_t common = 0;
    while (common < s.size() && common < prev.size() && s[common] == prev[common]) ++common;
    path.resize(common + 1);
    for (size_t k = common; k < s.size(); ++k) {
      const uint32_t p = path[k];
      const uint32_t node = static_cast<uint32_t>(t.nodes_.size());
      const uint32_t begin = static_cast<uint32_t>(t.order_.size());
      t.nodes_.push_back(Node{0, begin, begin, begin, 0, static_cast<uint8_t>(s[k]), 0});
      if (last_child[p])
        t.nodes_[last_child[p]].next_sibling = node;
      else
        t.nodes_[p].flags |= kHasChildren;  // preorder: the first child follows its parent
      last_child[p] = node;
      parent.push_back(p);
      last_child.push_back(0);
      depth.push_back(static_cast<uint32_t>(k + 1));
      plain_own.push_back(1);
      path.push_back(node);
    }
    const uint32_t end = path.back();
    t.order_.push_back(id);
    size_t chars = 0;
    for (const char c : s) chars += (static_cast<uint8_t>(c) & 0xC0) != 0x80;
    t.order_chars_.push_back(static_cast<uint16_t>(std::min<size_t>(chars, 65535)));
    t.nodes_[end].tok_own_end = static_cast<uint32_t>(t.order_.size());
    plain_own[end] = is_plain(s);
    t.max_token_len_ = std::max(t.max_token_len_, s.size());
    prev = s;
  }

  // Bottom up (children have larger indices): subtree token ranges, lengths, plainness.
  for (Node& node : t.nodes_) {
    node.tok_end = node.tok_own_end;
    node.flags |= kPlain;
  }
  for (uint32_t i = static_cast<uint32_t>(t.nodes_.size()); i-- > 1;) {
    Node& node = t.nodes_[i];
    if (node.tok_own_end > node.tok_begin) {
      node.max_len = std::max<uint16_t>(node.max_len,
                                        static_cast<uint16_t>(std::min<uint32_t>(depth[i], 65535)));
      if (!plain_own[i]) node.flags &= static_cast<uint8_t>(~kPlain);
    }
    Node& up = t.nodes_[parent[i]];
    up.tok_end = std::max(up.tok_end, node.tok_end);
    up.max_len = std::max(up.max_len, node.max_len);
    if (!(node.flags & kPlain)) up.flags &= static_cast<uint8_t>(~kPlain);
  }
  return trie;
}

std::shared_ptr<const VocabTrie> VocabTrie::for_tokenizer(const tokenizer::Tokenizer& tok) {
  struct Entry {
    const tokenizer::Tokenizer* tok;
    uint64_t fingerprint;
    std::shared_ptr<const VocabTrie> trie;
  };
  static std::mutex mu;
  static std::vector<Entry> cache;  // a few tokenizers per process; oldest evicted first
  const uint64_t fp = fingerprint(tok);
  std::lock_guard<std::mutex> lock(mu);
  for (const Entry& e : cache) {
    if (e.tok == &tok && e.fingerprint == fp) return e.trie;
  }
  auto trie = build(tok);
  std::erase_if(cache, [&tok](const Entry& e) { return e.tok == &tok; });
  if (cache.size() >= 8) cache.erase(cache.begin());
  cache.push_back({&tok, fp, trie});
  return trie;
}

}  // namespace fennec::engine
