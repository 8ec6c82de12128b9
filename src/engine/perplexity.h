// Perplexity with llama.cpp's method (llama-perplexity): the text is cut into chunks of n_ctx
// tokens (BOS replacing the first token of each chunk when the model adds BOS); each chunk is
// evaluated from an empty cache and only the second half of its predictions is scored.
#pragma once

#include <functional>
#include <vector>

#include "core/expected.h"
#include "engine/loaded_model.h"

namespace fennec::engine {

struct PerplexityResult {
  int n_chunks = 0;
  int n_ctx = 0;
  int64_t n_scored = 0;
  double nll_sum = 0;        // natural log
  double ppl = 0;            // exp(nll_sum / n_scored)
  double ppl_stderr = 0;     // first-order error estimate, as llama-perplexity prints
  std::vector<double> chunk_ppl;  // running estimate after each chunk
};

// The chunking shared by perplexity, kld and imatrix. count_chunks: the whole chunks of n_ctx
// tokens in the text (at most max_chunks when > 0); errors (prefixed with `what`) when n_ctx is
// under 16, exceeds the KV cache, or the text is shorter than one chunk.
Expected<int> count_chunks(LoadedModel& lm, size_t n_tokens, int n_ctx, int max_chunks,
                           const char* what);
// Evaluates chunk c of `tokens` from an empty cache (BOS replacing its first token when the
// model adds BOS) and writes the logits of its last n_logits positions ([n_logits][n_vocab]).
// The scored positions are n_ctx/2 .. n_ctx-2 (n_logits = n_ctx - n_ctx/2 covers them: row i
// predicts token c*n_ctx + n_ctx/2 + i + 1).
Status eval_chunk(LoadedModel& lm, const std::vector<int32_t>& tokens, int n_ctx, int c,
                  int n_logits, std::vector<float>& logits,
                  model::MatmulObserver* observer = nullptr);

Expected<PerplexityResult> perplexity(LoadedModel& lm, const std::vector<int32_t>& tokens, int n_ctx,
                                      int max_chunks = -1,
                                      const std::function<void(int, double)>& on_chunk = {});

}  // namespace fennec::engine
