// Structured output (OpenAI response_format json_object / json_schema) as a TokenConstraint: a
// token may come next when every byte it decodes to keeps the text a prefix of JSON that the
// schema accepts (JsonMatcher). allowed_tokens() walks the tokenizer's shared VocabTrie depth
// first with copies of the matcher state, pruning at the first rejected byte; inside strings it
// accepts whole subtrees of plain text without visiting them. Special tokens and empty tokens
// are never allowed; end-of-generation tokens exactly when the JSON is complete.
// One constraint per sequence; not thread-safe (the trie and schema are shared, immutable).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/expected.h"
#include "engine/constraint.h"
#include "engine/json_matcher.h"
#include "engine/json_schema.h"
#include "engine/vocab_trie.h"

namespace fennec::tokenizer {
class Tokenizer;
}

namespace fennec::engine {

class JsonConstraint : public TokenConstraint {
 public:
  // schema_or_null: a JSON Schema (json_schema mode), or null for any JSON object (json_object
  // mode). A schema that cannot be enforced gives an Error naming the JSON pointer of the bad
  // part (HTTP 400). ordered_json keeps the author's property order (nlohmann::json sorts keys).
  static Expected<std::unique_ptr<JsonConstraint>> create(const nlohmann::json& schema_or_null,
                                                          const tokenizer::Tokenizer& tok);
  static Expected<std::unique_ptr<JsonConstraint>> create(
      const nlohmann::ordered_json& schema_or_null, const tokenizer::Tokenizer& tok);
  // From parts already built (one compiled schema for the n choices of a request).
  JsonConstraint(std::shared_ptr<const JsonSchema> schema, std::shared_ptr<const VocabTrie> vocab);

  void allowed_tokens(std::vector<uint8_t>& allowed) override;
  void accept(int32_t token) override;
  bool is_complete() const override;

  // A token was accepted that the grammar rejects (a caller that ignored allowed_tokens): from
  // then on only end of generation is allowed and the output is not guaranteed valid.
  bool failed() const { return failed_; }
  const JsonMatcher& matcher() const { return matcher_; }

 private:
  void walk(uint32_t node, size_t depth, uint32_t room, std::vector<uint8_t>& allowed);
  void mark(uint32_t begin, uint32_t end, std::vector<uint8_t>& allowed) const;
  void mark_fitting(uint32_t begin, uint32_t end, uint32_t room, std::vector<uint8_t>& allowed);

  std::shared_ptr<const JsonSchema> schema_;
  std::shared_ptr<const VocabTrie> vocab_;
  JsonMatcher matcher_;
  std::vector<JsonMatcher> scratch_;  // matcher state per trie depth during a walk
  bool any_allowed_ = false;
  bool failed_ = false;
  bool ended_ = false;  // an end-of-generation token was accepted
};

}  // namespace fennec::engine
