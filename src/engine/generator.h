// Batched generation for the CLI and the tests: several requests prefill and decode together,
// one forward pass per step over a paged KV cache. Each request owns the blocks for its prompt
// plus max_tokens, taken up front (the server's scheduler, with preemption and prefix sharing,
// builds on the same pieces).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/expected.h"
#include "core/thread_pool.h"
#include "engine/kv_cache.h"
#include "engine/sampler.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace fennec::engine {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int max_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;
};

enum class FinishReason { kStop, kLength };
const char* finish_reason_name(FinishReason r);

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (the stop token excluded)
  std::string text;             // detokenized, stop strings removed
  FinishReason finish = FinishReason::kLength;
  int n_prompt = 0;
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prompt_seconds = 0;
  double generation_seconds = 0;
};

// Called with each request's newly available text (UTF-8 complete, stop strings held back).
using TextCallback = std::function<void(size_t request_index, const std::string& text)>;

class Generator {
 public:
  Generator(const model::Model& model, const tokenizer::Tokenizer& tok, KvCache& kv,
            ThreadPool& pool, int max_batch_tokens = 512);

  Expected<std::vector<GenerationResult>> generate(const std::vector<GenerationRequest>& reqs,
                                                   const TextCallback& on_text = {});
  const GenerationStats& stats() const { return stats_; }

 private:
  const model::Model& model_;
  const tokenizer::Tokenizer& tok_;
  KvCache& kv_;
  ThreadPool& pool_;
  int max_batch_tokens_;
  GenerationStats stats_;
};

}  // namespace fennec::engine
