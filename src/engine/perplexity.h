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

Expected<PerplexityResult> perplexity(LoadedModel& lm, const std::vector<int32_t>& tokens, int n_ctx,
                                      int max_chunks = -1,
                                      const std::function<void(int, double)>& on_chunk = {});

}  // namespace fennec::engine
