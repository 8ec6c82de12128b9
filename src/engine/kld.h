// KL divergence of a model against a base model, with llama-perplexity --kl-divergence's method
// and statistics: both models run over the same chunks of tokens (perplexity.h's chunking, only
// the second half of each chunk scored); per scored token, KL(base || model) over the whole
// vocabulary, whether both predict the same top token, the probability each gives the actual
// next token. Chunks stream: only one chunk of logits per model is held at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/expected.h"
#include "engine/loaded_model.h"

namespace fennec::engine {

struct ValueAndError {
  double value = 0;
  double error = 0;  // one standard error, as llama-perplexity estimates it
};

struct KldResult {
  int n_chunks = 0;
  int n_ctx = 0;
  int64_t n_scored = 0;
  ValueAndError ppl_base, ppl_model;
  double ppl_correlation = 0;  // of ln PPL(model) and ln PPL(base)
  ValueAndError ln_ppl_ratio;  // ln(PPL(model) / PPL(base))
  ValueAndError ppl_ratio;     // PPL(model) / PPL(base)
  ValueAndError ppl_diff;      // PPL(model) - PPL(base)
  ValueAndError kld_mean;      // nats
  double kld_max = 0, kld_p99_9 = 0, kld_p99 = 0, kld_p95 = 0, kld_p90 = 0, kld_median = 0,
         kld_p10 = 0, kld_p5 = 0, kld_p1 = 0, kld_p0_1 = 0, kld_min = 0;
  ValueAndError same_top;  // fraction of tokens where both argmax agree, in [0, 1]
  ValueAndError dp_mean;   // mean of p_model(token) - p_base(token)
  ValueAndError dp_rms;    // root mean square of the same
  double dp_max = 0, dp_median = 0, dp_min = 0;
};

// What one scored token contributes: computed in double over the whole vocabulary from one row
// of logits of each model and the token that followed.
struct TokenKld {
  double kld = 0;       // KL(base || model) = sum_i p_base(i) * (ln p_base(i) - ln p_model(i))
  double nll_base = 0;  // -ln p_base(next)
  double nll_model = 0;
  bool same_top = false;  // both argmax (first maximum) agree
};
TokenKld token_kld(const float* base_logits, const float* model_logits, int n_vocab,
                   int32_t next_token);

// Running sums over scored tokens, in the order added. Separate from the model loop so tests
// can feed it rows directly.
class KldAccumulator {
 public:
  void add(const TokenKld& t);
  int64_t count() const { return count_; }
  const std::vector<float>& kld_values() const { return kld_; }
  // The statistics so far (n_chunks / n_ctx are left for the caller).
  KldResult result() const;

 private:
  int64_t count_ = 0, n_same_top_ = 0;
  double sum_nll_ = 0, sum_nll2_ = 0, sum_nll_base_ = 0, sum_nll_base2_ = 0, sum_nll_cross_ = 0;
  double sum_kld_ = 0, sum_kld2_ = 0, sum_dp_ = 0, sum_dp2_ = 0, sum_dp4_ = 0;
  std::vector<float> kld_, dp_;  // one per scored token (for median and percentiles)
};

// An error unless both models have the same vocabulary (size, every token's text, BOS use):
// the tokens are the base model's and each model must read them the same way.
Status check_same_vocab(const LoadedModel& base, const LoadedModel& model);

// Runs both models chunk by chunk over `tokens` (tokenized with the base model's tokenizer).
// on_chunk(c, running result) after each chunk.
Expected<KldResult> kl_divergence(LoadedModel& base, LoadedModel& model,
                                  const std::vector<int32_t>& tokens, int n_ctx,
                                  int max_chunks = -1,
                                  const std::function<void(int, const KldResult&)>& on_chunk = {});

}  // namespace fennec::engine
