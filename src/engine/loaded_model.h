// Everything a front end (CLI, server) needs from one model file: the mapped GGUF, the model,
// its tokenizer and chat template, a KV cache sized for the context, and the thread pool.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "core/expected.h"
#include "core/thread_pool.h"
#include "engine/kv_cache.h"
#include "formats/gguf.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace fennec::engine {

struct LoadOptions {
  int n_threads = 0;   // 0: default_thread_count()
  int n_ctx = 0;       // tokens of KV per sequence; 0: min(training context, 4096)
  int n_seqs = 1;      // sequences that must fit in the KV cache at full context
  int64_t kv_bytes = 0;  // > 0: size the KV cache by memory instead (at least one full context)
  int block_size = 16;
  kernels::KvType k_type = kernels::KvType::kF16;  // the KV cache's K and V types (--cache-type-k/-v)
  kernels::KvType v_type = kernels::KvType::kF16;
  bool pin_threads = false;  // pin the pool's threads to cores (ThreadPool); FENNEC_PIN=1 also does
};

class LoadedModel {
 public:
  static Expected<std::unique_ptr<LoadedModel>> load(const std::string& path, const LoadOptions& opts);

  const formats::GgufFile& gguf() const { return *gguf_; }
  const model::Model& model() const { return *model_; }
  const tokenizer::Tokenizer& tokenizer() const { return *tok_; }
  // The model's chat template (GGUF `tokenizer.chat_template`, or a built-in one for a known
  // family whose file carries none); nullptr if neither exists.
  const tokenizer::ChatTemplate* chat_template() const { return tmpl_ ? &*tmpl_ : nullptr; }
  KvCache& kv() { return *kv_; }
  ThreadPool& pool() { return *pool_; }
  int n_ctx() const { return n_ctx_; }

  // Renders messages with the chat template and tokenizes the result (special tokens parsed,
  // BOS added only when the template did not already emit it).
  Expected<std::vector<int32_t>> tokenize_chat(const nlohmann::json& messages,
                                               bool add_generation_prompt) const;

 private:
  std::shared_ptr<formats::GgufFile> gguf_;
  std::unique_ptr<model::Model> model_;
  std::unique_ptr<tokenizer::Tokenizer> tok_;
  std::optional<tokenizer::ChatTemplate> tmpl_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<ThreadPool> pool_;
  int n_ctx_ = 0;
};

// Resident memory of this process in bytes (VmRSS), or -1 if unknown.
int64_t resident_memory_bytes();

}  // namespace fennec::engine
