#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <limits>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/utf8.h"

namespace fennec::tokenizer {

enum class ModelKind { kBpe, kSpm };

struct TokenizerData {
  std::string model, pre, arch;
  ModelKind kind = ModelKind::kBpe;
  std::vector<std::string> tokens;  // raw vocab strings
  std::vector<TokenAttr> attrs;
  std::vector<std::string> bytes;   // what each token decodes to
  std::vector<float> priority;      // SPM: higher merges first
  std::vector<int32_t> n_chars;     // SPM: code points per (lookup) token, for merge tie-breaks
  std::unordered_map<std::string, int32_t> lookup;  // spelling used by the model -> id (last wins)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // BPE (left,right) -> (rank, id)
  std::vector<int32_t> byte_ids;    // SPM byte fallback <0xNN> -> id, -1 if absent
  std::optional<PreTokenizer> pre_tok;
  // Added tokens matched whole in raw text (leftmost-longest) through a byte trie.
  std::vector<std::unordered_map<uint8_t, int32_t>> trie{1};
  std::vector<int32_t> trie_token{-1};
  std::unordered_set<int32_t> eog;
  int32_t bos = -1, eos = -1, unk = -1;
  bool add_bos = false, add_eos = false, add_space_prefix = false;
};

namespace {

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

TokenAttr attr_from_type(int64_t t) {
  switch (t) {
    case 2: return TokenAttr::kUnknown;
    case 3: return TokenAttr::kControl;
    case 4: return TokenAttr::kUserDefined;
    case 5: return TokenAttr::kUnused;
    case 6: return TokenAttr::kByte;
    default: return TokenAttr::kNormal;
  }
}

// "<0xNN>" -> NN, or -1.
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else return -1;
  }
  return v;
}

bool all_in_byte_alphabet(std::string_view t) {
  for (size_t i = 0; i < t.size();) {
    const size_t n = utf8::valid_seq_len(t, i);
    if (!n || utf8::cp_to_byte(utf8::decode_at(t, i, n)) < 0) return false;
    i += n;
  }
  return true;
}

// Gemma files store runs of spaces as real spaces; HF looks them up as U+2581 runs.
bool is_space_run(std::string_view t) {
  bool has_space = false;
  for (char c : t) {
    if (c == ' ') has_space = true;
    else if (c != '\t' && c != '\n' && c != '\r' && c != '\v' && c != '\f') return false;
  }
  return has_space;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (true) {
    const size_t j = s.find(from, i);
    if (j == std::string_view::npos) break;
    out.append(s.substr(i, j - i)).append(to);
    i = j + from.size();
  }
  out.append(s.substr(i));
  return out;
}

Expected<int32_t> special_id(const formats::GgufFile& g, const char* key, int32_t n_vocab) {
  const auto* v = g.find(key);
  if (!v) return -1;
  if (!v->is_integer()) return make_error(std::string("tokenizer: ") + key + " is not an integer");
  if (v->i64 < -1 || v->i64 >= n_vocab)
    return make_error(std::string("tokenizer: ") + key + " = " + std::to_string(v->i64) + " is outside the vocabulary of " +
                      std::to_string(n_vocab) + " tokens");
  return static_cast<int32_t>(v->i64);
}

struct Symbol {
  int32_t id;     // -1: a character outside the vocabulary (never merges)
  int32_t prev, next;
  uint32_t begin, len;  // byte span in the word
  bool alive;
};

void link(std::vector<Symbol>& syms) {
  for (size_t i = 0; i < syms.size(); ++i) {
    syms[i].prev = static_cast<int32_t>(i) - 1;
    syms[i].next = i + 1 < syms.size() ? static_cast<int32_t>(i + 1) : -1;
  }
}

}  // namespace

// ---- construction ----

Expected<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const formats::GgufFile& g) {
  auto d = std::make_unique<TokenizerData>();
  d->model = g.get_string_or("tokenizer.ggml.model", "");
  d->pre = g.get_string_or("tokenizer.ggml.pre", "default");
  d->arch = g.get_string_or("general.architecture", "");
  if (d->model == "gpt2") d->kind = ModelKind::kBpe;
  else if (d->model == "llama") d->kind = ModelKind::kSpm;
  else if (d->model.empty()) return make_error(g.path() + ": no tokenizer.ggml.model in the metadata");
  else return make_error(g.path() + ": tokenizer model '" + d->model + "' is not supported (gpt2 and llama are)");

  const auto* toks = g.find("tokenizer.ggml.tokens");
  if (!toks || !toks->is_array() || toks->elem_type != formats::GgufType::STRING || toks->strings.empty())
    return make_error(g.path() + ": tokenizer.ggml.tokens is missing or not a non-empty string array");
  if (toks->strings.size() > size_t(std::numeric_limits<int32_t>::max() / 2))
    return make_error(g.path() + ": tokenizer.ggml.tokens is too large");
  const auto n = static_cast<int32_t>(toks->strings.size());
  d->tokens.reserve(n);
  for (auto s : toks->strings) d->tokens.emplace_back(s);

  d->attrs.assign(n, TokenAttr::kNormal);
  if (const auto* tt = g.find("tokenizer.ggml.token_type")) {
    if (!tt->is_array() || tt->count != uint64_t(n) || tt->elem_type == formats::GgufType::STRING ||
        tt->elem_type == formats::GgufType::ARRAY)
      return make_error(g.path() + ": tokenizer.ggml.token_type must be a numeric array of " + std::to_string(n) +
                        " entries (one per token)");
    for (int32_t i = 0; i < n; ++i) d->attrs[i] = attr_from_type(tt->int_at(i));
  }
  std::vector<float> scores;
  if (const auto* sc = g.find("tokenizer.ggml.scores")) {
    if (!sc->is_array() || sc->count != uint64_t(n) || sc->elem_type == formats::GgufType::STRING ||
        sc->elem_type == formats::GgufType::ARRAY)
      return make_error(g.path() + ": tokenizer.ggml.scores must be a numeric array of " + std::to_string(n) +
                        " entries (one per token)");
    scores.resize(n);
    for (int32_t i = 0; i < n; ++i) scores[i] = static_cast<float>(sc->number_at(i));
  }

  for (auto [key, out] : {std::pair{"tokenizer.ggml.bos_token_id", &d->bos}, {"tokenizer.ggml.eos_token_id", &d->eos},
                          {"tokenizer.ggml.unknown_token_id", &d->unk}}) {
    auto id = special_id(g, key, n);
    if (!id) return make_error(g.path() + ": " + id.error().message);
    *out = *id;
  }
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    auto id = special_id(g, key, n);
    if (!id) return make_error(g.path() + ": " + id.error().message);
    if (*id >= 0) d->eog.insert(*id);
  }
  if (d->eos >= 0) d->eog.insert(d->eos);

  const bool llama3_like = d->pre == "llama3" || d->pre == "llama-v3" || d->pre == "llama-bpe" || d->pre == "falcon3";
  d->add_bos = g.get_bool_or("tokenizer.ggml.add_bos_token", d->kind == ModelKind::kSpm || llama3_like);
  d->add_eos = g.get_bool_or("tokenizer.ggml.add_eos_token", false);
  d->add_space_prefix = g.get_bool_or("tokenizer.ggml.add_space_prefix", d->kind == ModelKind::kSpm);
  if (d->add_bos && d->bos < 0) d->add_bos = false;
  if (d->add_eos && d->eos < 0) d->add_eos = false;

  d->bytes.resize(n);
  if (d->kind == ModelKind::kBpe) {
    for (int32_t i = 0; i < n; ++i) {
      d->lookup[d->tokens[i]] = i;
      const std::string& t = d->tokens[i];
      std::string& b = d->bytes[i];
      for (size_t k = 0; k < t.size();) {
        const size_t len = utf8::valid_seq_len(t, k);
        if (!len) {
          b.push_back(t[k++]);
          continue;
        }
        const int byte = utf8::cp_to_byte(utf8::decode_at(t, k, len));
        if (byte >= 0) b.push_back(static_cast<char>(byte));
        else b.append(t, k, len);
        k += len;
      }
    }
    const auto* mg = g.find("tokenizer.ggml.merges");
    if (!mg || !mg->is_array() || mg->elem_type != formats::GgufType::STRING)
      return make_error(g.path() + ": a gpt2 (BPE) tokenizer needs tokenizer.ggml.merges as a string array");
    d->merges.reserve(mg->strings.size());
    for (size_t r = 0; r < mg->strings.size(); ++r) {
      const std::string_view m = mg->strings[r];
      const size_t sp = m.find(' ', 1);
      if (sp == std::string_view::npos)
        return make_error(g.path() + ": tokenizer.ggml.merges[" + std::to_string(r) + "] is not two tokens split by a space");
      const auto a = d->lookup.find(std::string(m.substr(0, sp)));
      const auto b = d->lookup.find(std::string(m.substr(sp + 1)));
      const auto c = d->lookup.find(std::string(m.substr(0, sp)) + std::string(m.substr(sp + 1)));
      if (a == d->lookup.end() || b == d->lookup.end() || c == d->lookup.end()) continue;  // unusable merge
      d->merges.try_emplace(pair_key(a->second, b->second), static_cast<int32_t>(r), c->second);
    }
    auto pt = PreTokenizer::for_name(d->pre);
    if (!pt) return make_error(g.path() + ": " + pt.error().message);
    d->pre_tok = std::move(*pt);
  } else {
    // HF ranks Gemma's merges by file order (its scores do not follow the merge order); others by score.
    const bool by_position = d->arch.rfind("gemma", 0) == 0;
    if (scores.empty() && !by_position) scores.assign(n, 0.0f);
    d->priority.resize(n);
    d->n_chars.resize(n);
    d->byte_ids.assign(256, -1);
    for (int32_t i = 0; i < n; ++i) {
      const std::string& t = d->tokens[i];
      std::string spelled = t;
      if (by_position && is_space_run(t)) {
        spelled.clear();
        for (size_t k = 0; k < t.size(); ++k) spelled.append(utf8::kSpmSpace);
      }
      d->lookup[spelled] = i;
      d->priority[i] = by_position ? -static_cast<float>(i) : scores[i];
      d->n_chars[i] = static_cast<int32_t>(utf8::count_chars(spelled));
      const int byte = parse_byte_token(t);
      if (byte >= 0 && (d->attrs[i] == TokenAttr::kByte)) {
        d->byte_ids[byte] = i;
        d->bytes[i] = std::string(1, static_cast<char>(byte));
      } else {
        d->bytes[i] = replace_all(spelled, utf8::kSpmSpace, " ");
      }
    }
    if (by_position) {
      // Float priorities of -i are exact up to 2^24 ids; beyond that fall back to order-preserving ties.
      if (n > (1 << 24)) return make_error(g.path() + ": vocabulary too large for position-ranked merges");
    }
  }

  // Added tokens: control (matched only with parse_special) and user-defined (always), kept only when
  // the model spells them as they are (as HF does when it builds the tokenizer from a GGUF).
  for (int32_t i = 0; i < n; ++i) {
    const TokenAttr a = d->attrs[i];
    if (a != TokenAttr::kControl && a != TokenAttr::kUserDefined) continue;
    const std::string& t = d->tokens[i];
    if (t.empty()) continue;
    if (d->kind == ModelKind::kBpe && !all_in_byte_alphabet(t)) continue;
    if (a == TokenAttr::kUserDefined) {
      auto it = d->lookup.find(t);
      if (it == d->lookup.end()) continue;
    }
    int32_t node = 0;
    for (unsigned char c : t) {
      auto it = d->trie[node].find(c);
      if (it == d->trie[node].end()) {
        d->trie.emplace_back();
        d->trie_token.push_back(-1);
        const auto child = static_cast<int32_t>(d->trie.size() - 1);
        d->trie[node].emplace(c, child);
        node = child;
      } else {
        node = it->second;
      }
    }
    d->trie_token[node] = i;
  }

  for (int32_t i = 0; i < n; ++i) {
    static const std::unordered_set<std::string_view> kEogTexts = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>",
        "<|end_of_text|>", "<|return|>", "<|call|>", "<｜end▁of▁sentence｜>", "<|end▁of▁sentence|>"};
    if ((d->attrs[i] == TokenAttr::kControl || d->attrs[i] == TokenAttr::kUserDefined) &&
        kEogTexts.count(d->tokens[i]))
      d->eog.insert(i);
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(d)));
}

Tokenizer::Tokenizer(std::unique_ptr<TokenizerData> d) : d_(std::move(d)) {}
Tokenizer::~Tokenizer() = default;

// ---- encoding ----

namespace {

// Byte-level BPE of one pre-tokenized piece: merges applied lowest rank first, leftmost on ties.
void bpe_word(const TokenizerData& d, std::string_view word, std::vector<int32_t>& out) {
  std::string mapped;
  for (unsigned char c : word) utf8::append_cp(mapped, utf8::byte_to_cp(c));
  if (d.pre_tok->ignore_merges()) {
    auto it = d.lookup.find(mapped);
    if (it != d.lookup.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<Symbol> syms;
  for (size_t i = 0; i < mapped.size();) {
    const size_t len = utf8::valid_seq_len(mapped, i);
    auto it = d.lookup.find(mapped.substr(i, len));
    syms.push_back({it == d.lookup.end() ? -1 : it->second, 0, 0, uint32_t(i), uint32_t(len), true});
    i += len;
  }
  link(syms);
  using Item = std::tuple<int32_t, int32_t, int32_t, int32_t>;  // rank, left index, right index, merged id
  std::priority_queue<Item, std::vector<Item>, std::greater<>> q;
  const auto push = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || syms[l].id < 0 || syms[r].id < 0) return;
    auto it = d.merges.find(pair_key(syms[l].id, syms[r].id));
    if (it != d.merges.end()) q.emplace(it->second.first, l, r, it->second.second);
  };
  for (size_t i = 1; i < syms.size(); ++i) push(int32_t(i - 1), int32_t(i));
  while (!q.empty()) {
    auto [rank, l, r, id] = q.top();
    q.pop();
    if (!syms[l].alive || !syms[r].alive || syms[l].next != r) continue;
    auto it = d.merges.find(pair_key(syms[l].id, syms[r].id));
    if (it == d.merges.end() || it->second.first != rank) continue;
    syms[l].id = id;
    syms[l].len += syms[r].len;
    syms[r].alive = false;
    syms[l].next = syms[r].next;
    if (syms[r].next >= 0) syms[syms[r].next].prev = l;
    push(syms[l].prev, l);
    push(l, syms[l].next);
  }
  for (const Symbol& s : syms) {
    if (!s.alive) continue;
    if (s.id >= 0) out.push_back(s.id);
    else if (d.unk >= 0) out.push_back(d.unk);
  }
}

// SentencePiece-style BPE over one normalized fragment: the pair whose merged token ranks best wins
// (HF's merge order: priority, then longer left piece, longer right piece; leftmost on ties).
void spm_fragment(const TokenizerData& d, std::string_view text, std::vector<int32_t>& out) {
  std::vector<Symbol> syms;
  for (size_t i = 0; i < text.size();) {
    size_t len = utf8::valid_seq_len(text, i);
    if (!len) len = 1;
    auto it = d.lookup.find(std::string(text.substr(i, len)));
    syms.push_back({it == d.lookup.end() ? -1 : it->second, 0, 0, uint32_t(i), uint32_t(len), true});
    i += len;
  }
  link(syms);
  struct Item {
    float prio;
    int32_t lchars, rchars, merged, left, right;
    bool operator<(const Item& o) const {  // "worse than" for the max-heap
      if (prio != o.prio) return prio < o.prio;
      if (lchars != o.lchars) return lchars < o.lchars;
      if (rchars != o.rchars) return rchars < o.rchars;
      if (merged != o.merged) return merged > o.merged;
      return left > o.left;
    }
  };
  std::priority_queue<Item> q;
  std::string buf;
  const auto push = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0 || syms[l].id < 0 || syms[r].id < 0) return;
    buf.assign(text.substr(syms[l].begin, syms[l].len + syms[r].len));
    auto it = d.lookup.find(buf);
    if (it == d.lookup.end()) return;
    q.push({d.priority[it->second], d.n_chars[syms[l].id], d.n_chars[syms[r].id], it->second, l, r});
  };
  for (size_t i = 1; i < syms.size(); ++i) push(int32_t(i - 1), int32_t(i));
  while (!q.empty()) {
    const Item top = q.top();
    q.pop();
    Symbol& L = syms[top.left];
    Symbol& R = syms[top.right];
    if (!L.alive || !R.alive || L.next != top.right) continue;
    if (L.begin + L.len != R.begin || d.n_chars[L.id] != top.lchars || d.n_chars[R.id] != top.rchars) continue;
    L.id = top.merged;
    L.len += R.len;
    R.alive = false;
    L.next = R.next;
    if (R.next >= 0) syms[R.next].prev = top.left;
    push(L.prev, top.left);
    push(top.left, L.next);
  }
  for (const Symbol& s : syms) {
    if (!s.alive) continue;
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    // Byte fallback: one <0xNN> per byte when the vocabulary has them all, else <unk>.
    bool all = true;
    for (uint32_t k = 0; k < s.len; ++k) all = all && d.byte_ids[uint8_t(text[s.begin + k])] >= 0;
    if (all) {
      for (uint32_t k = 0; k < s.len; ++k) out.push_back(d.byte_ids[uint8_t(text[s.begin + k])]);
    } else if (d.unk >= 0) {
      out.push_back(d.unk);
    }
  }
}

}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  const TokenizerData& d = *d_;
  std::vector<int32_t> out;
  if (add_special && d.add_bos) out.push_back(d.bos);

  bool first_text = true;
  const auto encode_text = [&](std::string_view frag) {
    if (frag.empty()) return;
    if (d.kind == ModelKind::kBpe) {
      for (std::string_view w : d.pre_tok->split(frag)) bpe_word(d, w, out);
    } else {
      std::string norm;
      if (d.add_space_prefix && first_text) norm.append(utf8::kSpmSpace);
      norm += replace_all(frag, " ", utf8::kSpmSpace);
      spm_fragment(d, norm, out);
    }
    first_text = false;
  };

  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    int32_t node = 0, best = -1;
    size_t best_end = 0;
    for (size_t k = i; k < text.size(); ++k) {
      auto it = d.trie[node].find(static_cast<uint8_t>(text[k]));
      if (it == d.trie[node].end()) break;
      node = it->second;
      const int32_t tok = d.trie_token[node];
      if (tok >= 0 && (parse_special || d.attrs[tok] == TokenAttr::kUserDefined)) {
        best = tok;
        best_end = k + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    encode_text(text.substr(start, i - start));
    out.push_back(best);
    first_text = false;
    i = start = best_end;
  }
  encode_text(text.substr(start));
  if (add_special && d.add_eos) out.push_back(d.eos);
  return out;
}

// ---- decoding and queries ----

std::string Tokenizer::token_text(int32_t id) const {
  return id >= 0 && id < n_vocab() ? d_->tokens[id] : std::string();
}

std::string Tokenizer::token_bytes(int32_t id) const {
  return id >= 0 && id < n_vocab() ? d_->bytes[id] : std::string();
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const TokenizerData& d = *d_;
  std::string out;
  if (d.kind == ModelKind::kBpe) {
    for (int32_t id : ids) {
      if (id < 0 || id >= n_vocab() || (skip_special && is_special(id))) continue;
      out += d.bytes[id];
    }
    return utf8::lossy(out);
  }
  // SPM: consecutive byte tokens form one group; a group that is not valid UTF-8 becomes one U+FFFD
  // per byte token (HF's ByteFallback decoder).
  std::string group;
  size_t group_n = 0;
  const auto flush_group = [&] {
    if (!group_n) return;
    if (utf8::is_valid(group)) out += group;
    else for (size_t k = 0; k < group_n; ++k) out += "\xEF\xBF\xBD";
    group.clear();
    group_n = 0;
  };
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= n_vocab() || (skip_special && is_special(id))) continue;
    if (d.attrs[id] == TokenAttr::kByte && d.bytes[id].size() == 1) {
      group += d.bytes[id];
      ++group_n;
    } else {
      flush_group();
      std::string_view b = d.bytes[id];
      if (first && d.add_space_prefix && !b.empty() && b[0] == ' ') b.remove_prefix(1);
      out += b;
    }
    first = false;
  }
  flush_group();
  return out;
}

int32_t Tokenizer::n_vocab() const { return static_cast<int32_t>(d_->tokens.size()); }
int32_t Tokenizer::bos_id() const { return d_->bos; }
int32_t Tokenizer::eos_id() const { return d_->eos; }
bool Tokenizer::add_bos() const { return d_->add_bos; }
bool Tokenizer::add_eos() const { return d_->add_eos; }
TokenAttr Tokenizer::token_attr(int32_t id) const {
  return id >= 0 && id < n_vocab() ? d_->attrs[id] : TokenAttr::kUnused;
}
bool Tokenizer::is_special(int32_t id) const { return token_attr(id) == TokenAttr::kControl; }
bool Tokenizer::is_eog(int32_t id) const { return d_->eog.count(id) > 0; }
std::optional<int32_t> Tokenizer::find_token(std::string_view text) const {
  auto it = d_->lookup.find(std::string(text));
  if (it != d_->lookup.end()) return it->second;
  return std::nullopt;
}
const std::string& Tokenizer::model_name() const { return d_->model; }
const std::string& Tokenizer::pre_name() const { return d_->pre; }

// ---- incremental detokenizer ----

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special)
    : tok_(tok), skip_special_(skip_special) {}

std::string IncrementalDetokenizer::push(int32_t id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  pending_ += tok_.token_bytes(id);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    bool incomplete = false;
    const size_t n = utf8::valid_seq_len(pending_, i, &incomplete);
    if (n) {
      out.append(pending_, i, n);
      i += n;
    } else if (incomplete) {
      break;  // may complete with the next token
    } else {
      // Invalid here: let lossy() decide how many bytes one U+FFFD covers.
      size_t j = i + 1;
      while (j < pending_.size() && (static_cast<uint8_t>(pending_[j]) & 0xC0) == 0x80) ++j;
      out += utf8::lossy(std::string_view(pending_).substr(i, j - i));
      i = j;
    }
  }
  pending_.erase(0, i);
  return out;
}

std::string IncrementalDetokenizer::flush() {
  std::string out = utf8::lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace fennec::tokenizer
