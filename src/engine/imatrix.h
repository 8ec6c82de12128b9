// Importance matrices, as llama.cpp's llama-imatrix computes them: for every weight matrix of a
// layer (GGUF name "blk.N.*"; the output matrix too when asked), the sum over all tokens of the
// squared input activation of each input column, and the number of tokens summed. The text is
// run in chunks of n_ctx tokens (perplexity.h's chunking, every token of a chunk counted);
// quant/imatrix_file.h writes the result in llama.cpp's GGUF format.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/expected.h"
#include "engine/loaded_model.h"
#include "model/model.h"
#include "quant/imatrix_file.h"

namespace fennec::engine {

// Collects the statistics while forward() runs (pass it as the forward observer).
class ImatrixCollector final : public model::MatmulObserver {
 public:
  // process_output: also collect the output matrix ("output.weight"; never a tied embedding),
  // as llama-imatrix --process-output does.
  explicit ImatrixCollector(bool process_output = false) : process_output_(process_output) {}

  // Skips what llama-imatrix skips: other names, and inputs of fewer than 16 tokens.
  void on_matmul(const kernels::WeightView& w, std::string_view name, const float* x,
                 int64_t n_tokens) override;

  struct Stat {
    std::vector<double> sums;  // per input column
    int64_t count = 0;         // tokens summed
  };
  const std::map<std::string, Stat, std::less<>>& stats() const { return stats_; }
  // The first non-finite sum's tensor name, or "" when all are finite.
  std::string first_non_finite() const;
  // The collected entries (one matrix each) with the given metadata.
  quant::Imatrix to_imatrix(std::vector<std::string> datasets, int32_t chunk_count,
                            int32_t chunk_size) const;

 private:
  bool process_output_;
  std::map<std::string, Stat, std::less<>> stats_;
};

struct ImatrixResult {
  quant::Imatrix imatrix;
  int n_chunks = 0;
  int n_ctx = 0;
  double ppl = 0;  // of the text, scored as perplexity() does (a check that the model works)
  double ppl_stderr = 0;
};

// Runs the model over `tokens` chunk by chunk and collects the imatrix; `dataset` (the text
// file's name) goes to imatrix.datasets. on_chunk(c, running ppl) after each chunk.
Expected<ImatrixResult> compute_imatrix(LoadedModel& lm, const std::vector<int32_t>& tokens,
                                        int n_ctx, int max_chunks, bool process_output,
                                        const std::string& dataset,
                                        const std::function<void(int, double)>& on_chunk = {});

}  // namespace fennec::engine
