// Tokenizers built from GGUF metadata: byte-level BPE (`tokenizer.ggml.model` = "gpt2") and
// SentencePiece-style BPE over scores ("llama"). Encoding matches the Hugging Face tokenizer of the
// same model (checked by tests/tokenizer against fixtures made with transformers). All metadata is
// treated as hostile: inconsistent vocabularies yield an Error from from_gguf, never a crash.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/expected.h"
#include "formats/gguf.h"

namespace fennec::tokenizer {

// Values of tokenizer.ggml.token_type (llama.cpp's numbering minus one: 1=normal ... 6=byte).
enum class TokenAttr { kNormal, kControl, kUserDefined, kUnknown, kByte, kUnused };

struct TokenizerData;  // vocabulary, merges, special tokens, compiled pre-tokenizer

class Tokenizer {
 public:
  static Expected<std::unique_ptr<Tokenizer>> from_gguf(const formats::GgufFile& gguf);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // add_special: add BOS/EOS as the metadata says (tokenizer.ggml.add_bos_token / add_eos_token,
  // llama.cpp's defaults when absent). parse_special: text spelling a control token becomes that
  // token; otherwise it is tokenized as plain text. User-defined tokens always match whole, as in
  // llama.cpp and HF (non-special added tokens).
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;
  std::string token_text(int32_t id) const;   // raw vocab string ("" when out of range)
  std::string token_bytes(int32_t id) const;  // the bytes this token decodes to
  // Concatenated token bytes; invalid UTF-8 becomes U+FFFD as HF's decoders do.
  std::string decode(std::span<const int32_t> ids, bool skip_special) const;
  int32_t n_vocab() const;
  int32_t bos_id() const;  // -1 if none
  int32_t eos_id() const;  // -1 if none
  TokenAttr token_attr(int32_t id) const;
  bool is_special(int32_t id) const;  // control tokens: skipped by decode(skip_special=true)
  bool is_eog(int32_t id) const;      // EOS, EOT, EOM, <|im_end|>, <end_of_turn>, ...
  bool add_bos() const;
  bool add_eos() const;
  std::optional<int32_t> find_token(std::string_view text) const;
  const std::string& model_name() const;  // "gpt2", "llama", ...
  const std::string& pre_name() const;

 private:
  explicit Tokenizer(std::unique_ptr<TokenizerData> d);
  std::unique_ptr<TokenizerData> d_;
};

// Streams text out of generated token ids without ever emitting half a UTF-8 character.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tok, bool skip_special = true);
  std::string push(int32_t id);  // complete UTF-8 text now available
  std::string flush();           // anything held (invalid trailing bytes become U+FFFD)

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace fennec::tokenizer
