#include "engine/perplexity.h"

#include <cmath>

#include "kernels/cpu/ops.h"

namespace fennec::engine {

Expected<PerplexityResult> perplexity(LoadedModel& lm, const std::vector<int32_t>& tokens, int n_ctx,
                                      int max_chunks,
                                      const std::function<void(int, double)>& on_chunk) {
  if (n_ctx < 16) return make_error("perplexity: context must be at least 16 tokens");
  const int bs = lm.kv().shape().block_size;
  const int64_t blocks = (n_ctx + bs - 1) / bs;
  if (blocks > lm.kv().n_blocks())
    return make_error("perplexity: context " + std::to_string(n_ctx) + " exceeds the KV cache (" +
                      std::to_string(lm.kv().n_blocks() * bs) + " tokens): raise --ctx");
  int n_chunks = static_cast<int>(tokens.size() / static_cast<size_t>(n_ctx));
  if (max_chunks > 0) n_chunks = std::min(n_chunks, max_chunks);
  if (n_chunks == 0)
    return make_error("perplexity: the text has " + std::to_string(tokens.size()) +
                      " tokens, fewer than one chunk of " + std::to_string(n_ctx) + ": use a longer text or a smaller -c");
  const int n_vocab = lm.model().hparams().n_vocab;
  const int32_t bos = lm.tokenizer().bos_id();
  const bool add_bos = lm.tokenizer().add_bos() && bos >= 0;
  const int first = n_ctx / 2;
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) table[static_cast<size_t>(b)] = static_cast<int32_t>(b);

  PerplexityResult r;
  r.n_ctx = n_ctx;
  r.n_chunks = n_chunks;
  double sum_sq = 0;
  std::vector<float> logits, lsm;
  for (int c = 0; c < n_chunks; ++c) {
    std::vector<int32_t> chunk(tokens.begin() + static_cast<int64_t>(c) * n_ctx,
                               tokens.begin() + static_cast<int64_t>(c + 1) * n_ctx);
    if (add_bos) chunk[0] = bos;
    model::Batch batch;
    // Logits for positions first .. n_ctx-2 predict tokens first+1 .. n_ctx-1.
    batch.add(chunk, 0, table, n_ctx - first);
    if (auto s = lm.model().forward(batch, lm.kv(), lm.pool(), logits); !s) return s.error();
    for (int i = first; i < n_ctx - 1; ++i) {
      const float* row = logits.data() + static_cast<int64_t>(i - first) * n_vocab;
      kernels::log_softmax(row, n_vocab, lsm);
      const double nll = -lsm[static_cast<size_t>(tokens[static_cast<size_t>(c) * n_ctx + i + 1])];
      r.nll_sum += nll;
      sum_sq += nll * nll;
      ++r.n_scored;
    }
    const double mean = r.nll_sum / r.n_scored;
    r.chunk_ppl.push_back(std::exp(mean));
    if (on_chunk) on_chunk(c, std::exp(mean));
  }
  const double mean = r.nll_sum / r.n_scored;
  r.ppl = std::exp(mean);
  const double var = sum_sq / r.n_scored - mean * mean;
  if (r.n_scored > 1 && var > 0) r.ppl_stderr = r.ppl * std::sqrt(var / (r.n_scored - 1));
  return r;
}

}  // namespace fennec::engine
