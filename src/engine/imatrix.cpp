#include "engine/imatrix.h"

#include <cmath>

#include "engine/perplexity.h"
#include "kernels/cpu/ops.h"

namespace fennec::engine {

void ImatrixCollector::on_matmul(const kernels::WeightView& w, std::string_view name,
                                 const float* x, int64_t n_tokens) {
  // llama-imatrix ignores small batches (they would weigh the statistics towards whatever was
  // decoded token by token) and everything outside the layers unless asked for the output.
  if (n_tokens < 16) return;
  if (!(name.starts_with("blk.") || (process_output_ && name == "output.weight"))) return;
  auto it = stats_.find(name);
  if (it == stats_.end()) it = stats_.emplace(std::string(name), Stat{}).first;
  Stat& s = it->second;
  const int64_t cols = w.cols;
  if (s.sums.empty()) s.sums.assign(static_cast<size_t>(cols), 0.0);
  double* sums = s.sums.data();
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* row = x + t * cols;
    for (int64_t j = 0; j < cols; ++j) sums[j] += static_cast<double>(row[j]) * row[j];
  }
  s.count += n_tokens;
}

std::string ImatrixCollector::first_non_finite() const {
  for (const auto& [name, s] : stats_)
    for (double v : s.sums)
      if (!std::isfinite(v)) return name;
  return "";
}

quant::Imatrix ImatrixCollector::to_imatrix(std::vector<std::string> datasets, int32_t chunk_count,
                                            int32_t chunk_size) const {
  quant::Imatrix im;
  im.datasets = std::move(datasets);
  im.chunk_count = chunk_count;
  im.chunk_size = chunk_size;
  for (const auto& [name, s] : stats_) {
    quant::ImatrixEntry e;
    e.sums.assign(s.sums.begin(), s.sums.end());
    e.counts = {s.count};
    im.entries.emplace(name, std::move(e));
  }
  return im;
}

Expected<ImatrixResult> compute_imatrix(LoadedModel& lm, const std::vector<int32_t>& tokens,
                                        int n_ctx, int max_chunks, bool process_output,
                                        const std::string& dataset,
                                        const std::function<void(int, double)>& on_chunk) {
  auto n_chunks = count_chunks(lm, tokens.size(), n_ctx, max_chunks, "imatrix");
  if (!n_chunks) return n_chunks.error();
  const int n_vocab = lm.model().hparams().n_vocab;
  const int first = n_ctx / 2;
  // The output matrix sees every position of the chunk, as in llama-imatrix (which asks for
  // all logits); otherwise only the scored half is needed.
  const int n_logits = process_output ? n_ctx : n_ctx - first;
  const int row0 = n_ctx - n_logits;

  ImatrixCollector collector(process_output);
  std::vector<float> logits, lsm;
  double nll_sum = 0, nll_sq = 0;
  int64_t n_scored = 0;
  for (int c = 0; c < *n_chunks; ++c) {
    if (auto s = eval_chunk(lm, tokens, n_ctx, c, n_logits, logits, &collector); !s)
      return s.error();
    if (std::string bad = collector.first_non_finite(); !bad.empty())
      return make_error("imatrix: the activations of '" + bad + "' overflowed in chunk " +
                        std::to_string(c + 1) + ": the model file is probably damaged");
    for (int i = first; i < n_ctx - 1; ++i) {
      kernels::log_softmax(logits.data() + static_cast<int64_t>(i - row0) * n_vocab, n_vocab, lsm);
      const double nll = -lsm[static_cast<size_t>(tokens[static_cast<size_t>(c) * n_ctx + i + 1])];
      nll_sum += nll;
      nll_sq += nll * nll;
      ++n_scored;
    }
    if (on_chunk) on_chunk(c, std::exp(nll_sum / static_cast<double>(n_scored)));
  }
  ImatrixResult r;
  r.n_chunks = *n_chunks;
  r.n_ctx = n_ctx;
  const double mean = nll_sum / static_cast<double>(n_scored);
  r.ppl = std::exp(mean);
  const double var = nll_sq / static_cast<double>(n_scored) - mean * mean;
  if (n_scored > 1 && var > 0)
    r.ppl_stderr = r.ppl * std::sqrt(var / static_cast<double>(n_scored - 1));
  r.imatrix = collector.to_imatrix({dataset}, *n_chunks, n_ctx);
  return r;
}

}  // namespace fennec::engine
