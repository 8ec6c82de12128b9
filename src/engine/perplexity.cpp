#include "engine/perplexity.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cpu/ops.h"

namespace fennec::engine {

Expected<int> count_chunks(LoadedModel& lm, size_t n_tokens, int n_ctx, int max_chunks,
                           const char* what) {
  const std::string w = what;
  if (n_ctx < 16) return make_error(w + ": context must be at least 16 tokens");
  const int bs = lm.kv().shape().block_size;
  const int64_t blocks = (n_ctx + bs - 1) / bs;
  if (blocks > lm.kv().n_blocks())
    return make_error(w + ": context " + std::to_string(n_ctx) + " exceeds the KV cache (" +
                      std::to_string(lm.kv().n_blocks() * bs) + " tokens): raise --ctx");
  int n_chunks = static_cast<int>(n_tokens / static_cast<size_t>(n_ctx));
  if (max_chunks > 0) n_chunks = std::min(n_chunks, max_chunks);
  if (n_chunks == 0)
    return make_error(w + ": the text has " + std::to_string(n_tokens) +
                      " tokens, fewer than one chunk of " + std::to_string(n_ctx) +
                      ": use a longer text or a smaller -c");
  return n_chunks;
}

Status eval_chunk(LoadedModel& lm, const std::vector<int32_t>& tokens, int n_ctx, int c,
                  int n_logits, std::vector<float>& logits, model::MatmulObserver* observer) {
  const int bs = lm.kv().shape().block_size;
  const int64_t blocks = (n_ctx + bs - 1) / bs;
  std::vector<int32_t> table(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) table[static_cast<size_t>(b)] = static_cast<int32_t>(b);
  std::vector<int32_t> chunk(tokens.begin() + static_cast<int64_t>(c) * n_ctx,
                             tokens.begin() + static_cast<int64_t>(c + 1) * n_ctx);
  const int32_t bos = lm.tokenizer().bos_id();
  if (lm.tokenizer().add_bos() && bos >= 0) chunk[0] = bos;
  model::Batch batch;
  batch.add(chunk, 0, table, n_logits);
  return lm.model().forward(batch, lm.kv(), lm.pool(), logits, observer);
}

Expected<PerplexityResult> perplexity(LoadedModel& lm, const std::vector<int32_t>& tokens, int n_ctx,
                                      int max_chunks,
                                      const std::function<void(int, double)>& on_chunk) {
  auto n_chunks = count_chunks(lm, tokens.size(), n_ctx, max_chunks, "perplexity");
  if (!n_chunks) return n_chunks.error();
  const int n_vocab = lm.model().hparams().n_vocab;
  const int first = n_ctx / 2;

  PerplexityResult r;
  r.n_ctx = n_ctx;
  r.n_chunks = *n_chunks;
  double sum_sq = 0;
  std::vector<float> logits, lsm;
  for (int c = 0; c < r.n_chunks; ++c) {
    // Logits for positions first .. n_ctx-2 predict tokens first+1 .. n_ctx-1.
    if (auto s = eval_chunk(lm, tokens, n_ctx, c, n_ctx - first, logits); !s) return s.error();
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
