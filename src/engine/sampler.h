// Token sampler: turns one row of logits into the next token, following llama.cpp's default
// chain: logit bias -> penalties -> (greedy: argmax) -> top-k -> top-p -> min-p -> temperature
// -> softmax -> draw. The caller's logits are never modified; the sampler works on private
// scratch buffers that it keeps between calls, so a step allocates nothing after the first.
// One Sampler per sequence; not thread-safe.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "core/expected.h"

namespace fennec::engine {

struct SamplingParams {
  float temperature = 1.0f;         // 0 => greedy
  int top_k = 0;                    // 0 => off
  float top_p = 1.0f;               // 1 => off
  float min_p = 0.0f;               // 0 => off
  float repetition_penalty = 1.0f;  // divide positive logits, multiply negative (llama.cpp/HF)
  int repeat_last_n = 64;           // penalty window in tokens (-1 = whole history, 0 = off)
  float presence_penalty = 0.0f;    // OpenAI: subtract once if the token occurs in the window
  float frequency_penalty = 0.0f;   // OpenAI: subtract count * penalty
  std::vector<std::pair<int32_t, float>> logit_bias;  // added to logits (-100 effectively bans)
  uint64_t seed = 0;
  bool has_seed = false;  // same seed => same output

  // Checks ranges against a vocabulary of n_vocab tokens; the message names the field.
  Status validate(int n_vocab) const;
};

class Sampler {
 public:
  // Seeds its own std::mt19937_64 from params.seed, or from std::random_device if !has_seed.
  explicit Sampler(SamplingParams params);

  struct Result {
    int32_t token;
    // log-probability of `token` under the full-vocabulary distribution after bias, penalties
    // and temperature, before truncation (top-k/top-p/min-p), so it is comparable with
    // top_logprobs. Greedy decoding uses temperature 1 for this value.
    float logprob;
  };

  // Picks the next token from n_vocab logits. `history` holds the prompt and generated tokens
  // (oldest first); only its last repeat_last_n entries feed the penalties. Ids outside the
  // vocabulary (in history or logit_bias) are ignored; NaN logits count as -inf.
  Result sample(const float* logits, int n_vocab, std::span<const int32_t> history);

  // Top-n (token, logprob) of log_softmax(logits), highest first, ties to the lower id.
  static std::vector<std::pair<int32_t, float>> top_logprobs(const float* logits, int n_vocab,
                                                             int n);

  // The logits of the last sample() call after bias and penalties (before temperature and
  // truncation). Pass them to top_logprobs to report alternatives under the same distribution
  // as Result::logprob (at temperature 1). Valid until the next sample().
  std::span<const float> processed_logits() const { return logits_; }

  const SamplingParams& params() const { return params_; }

 private:
  struct Candidate {
    float logit;
    int32_t id;
  };

  void apply_bias_and_penalties(int n_vocab, std::span<const int32_t> history);
  void top_k_into_candidates(int n_vocab, int k);
  void top_p_over_candidates(float max_logit);
  void top_p_over_vocab(int n_vocab, float max_logit, bool weights_at_t1);
  int32_t draw(size_t n, float min_logit, int32_t fallback);
  int32_t draw_vocab(int n_vocab, float min_logit, double total_weight, int32_t fallback);
  double uniform01();

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> logits_;    // processed copy of the caller's row
  std::vector<int32_t> counts_;  // per-token counts in the penalty window, zero between calls
  std::vector<Candidate> cand_;  // candidate pool for top-k / top-p
  size_t n_cand_ = 0;            // live prefix of cand_ (0 => the whole vocabulary)
  std::vector<float> weights_;   // exp((l - max) / T) per token, then per candidate
  std::vector<double> bins_;     // top-p histogram of probability mass by logit
};

}  // namespace fennec::engine
