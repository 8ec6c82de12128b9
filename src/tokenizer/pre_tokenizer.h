// Regex pre-tokenizer of byte-level BPE vocabularies, chosen by `tokenizer.ggml.pre`. A name maps to
// a chain of PCRE2 (UTF + UCP) patterns applied in turn, as llama.cpp does: each pattern splits every
// piece left by the one before into its matches and the gaps between them.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/expected.h"

namespace fennec::tokenizer {

class PreTokenizer {
 public:
  // Unknown names fall back to the GPT-2 pattern with a warning-free default (as HF's ByteLevel).
  static Expected<PreTokenizer> for_name(const std::string& pre_name);
  static Expected<PreTokenizer> from_patterns(const std::vector<std::string>& patterns);
  // Pieces are views into `text`, in order, covering it exactly. Invalid UTF-8 bytes are pieces of
  // their own and never reach the regex engine.
  std::vector<std::string_view> split(std::string_view text) const;
  // Whether a whole piece found in the vocabulary skips merging (llama3's ignore_merges).
  bool ignore_merges() const { return ignore_merges_; }

 private:
  struct Code;
  std::vector<std::shared_ptr<const Code>> codes_;
  bool ignore_merges_ = false;
};

}  // namespace fennec::tokenizer
