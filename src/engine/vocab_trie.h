// Byte trie over the decoded bytes of every token a constraint may ever allow (not special, not
// end-of-generation, not empty), built once per tokenizer and shared: constraints walk it depth
// first with copies of their matcher state, pruning a whole subtree at the first rejected byte.
// Nodes are numbered in preorder, so a node's subtree is one index range and its tokens are one
// range of `order`; per node it records whether every token below is plain string text, which
// lets a walk inside a JSON string accept such subtrees without visiting them.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

namespace fennec::tokenizer {
class Tokenizer;
}

namespace fennec::engine {

class VocabTrie {
 public:
  struct Node {
    uint32_t next_sibling;  // 0: last child of its parent (the root is never a sibling)
    uint32_t tok_begin;     // tokens ending here: order[tok_begin, tok_own_end)
    uint32_t tok_own_end;
    uint32_t tok_end;  // tokens ending in the subtree: order[tok_begin, tok_end)
    uint16_t max_len;  // longest token in the subtree, in bytes (saturates)
    uint8_t byte;      // label of the edge into this node
    uint8_t flags;     // kHasChildren | kPlain
  };
  static constexpr uint8_t kHasChildren = 1;  // first child is the next node
  static constexpr uint8_t kPlain = 2;        // every token below: printable, no '"' or '\\',
                                              // only whole, valid UTF-8 sequences

  static std::shared_ptr<const VocabTrie> build(const tokenizer::Tokenizer& tok);
  // build() cached per tokenizer (keyed by address and checked against a fingerprint of the
  // vocabulary); thread-safe.
  static std::shared_ptr<const VocabTrie> for_tokenizer(const tokenizer::Tokenizer& tok);

  int32_t n_vocab() const { return n_vocab_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<int32_t>& order() const { return order_; }
  // Code points of the token at each position of order() (meaningful for plain tokens).
  const std::vector<uint16_t>& order_chars() const { return order_chars_; }
  const std::vector<int32_t>& eog_tokens() const { return eog_; }
  // Bytes of token `id`; empty for tokens outside the trie (special, EOG, empty).
  std::string_view token_bytes(int32_t id) const;
  bool is_eog(int32_t id) const;
  size_t max_token_len() const { return max_token_len_; }

 private:
  int32_t n_vocab_ = 0;
  std::vector<Node> nodes_;
  std::vector<int32_t> order_;
  std::vector<uint16_t> order_chars_;
  std::vector<int32_t> eog_;
  std::vector<uint8_t> is_eog_;
  std::vector<char> bytes_;        // token bytes back to back
  std::vector<uint32_t> offsets_;  // n_vocab + 1 offsets into bytes_
  size_t max_token_len_ = 0;
};

}  // namespace fennec::engine
