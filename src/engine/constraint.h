// Constrained decoding: a TokenConstraint decides, before each sampling step, which tokens of the
// vocabulary may come next, and follows the tokens actually chosen. The scheduler applies it by
// setting the logits of disallowed tokens to -inf before the sampler runs. EOS/EOG tokens are
// allowed exactly when the output so far is complete (is_complete()).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace fennec::engine {

class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // allowed has n_vocab entries; sets allowed[id] = 1 for each token that may come next and 0
  // for the others. Never leaves every entry 0 while !is_complete().
  virtual void allowed_tokens(std::vector<uint8_t>& allowed) = 0;
  // Advances past the chosen token (one that allowed_tokens allowed).
  virtual void accept(int32_t token) = 0;
  // True when the text so far is a complete value: end of generation is allowed (and forced
  // when no other token is allowed).
  virtual bool is_complete() const = 0;
};

}  // namespace fennec::engine
