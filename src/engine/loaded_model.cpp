#include "engine/loaded_model.h"

#include <cstdio>
#include <fstream>

#include "tokenizer/builtin_templates.h"

namespace fennec::engine {

Expected<std::unique_ptr<LoadedModel>> LoadedModel::load(const std::string& path,
                                                         const LoadOptions& opts) {
  auto g = formats::GgufFile::open(path);
  if (!g) return g.error();
  std::unique_ptr<LoadedModel> m(new LoadedModel());
  m->gguf_ = std::make_shared<formats::GgufFile>(std::move(*g));
  auto model = model::Model::load(m->gguf_);
  if (!model) return model.error();
  m->model_ = std::move(*model);
  auto tok = tokenizer::Tokenizer::from_gguf(*m->gguf_);
  if (!tok) return tok.error();
  m->tok_ = std::move(*tok);

  std::string tmpl_src = m->gguf_->get_string_or("tokenizer.chat_template", "");
  if (tmpl_src.empty()) tmpl_src = tokenizer::builtin_chat_template(*m->gguf_);
  if (!tmpl_src.empty()) {
    auto t = tokenizer::ChatTemplate::parse(tmpl_src);
    if (!t) return make_error(path + ": tokenizer.chat_template: " + t.error().message);
    m->tmpl_.emplace(std::move(*t));
  }

  const auto& hp = m->model_->hparams();
  if (opts.n_ctx < 0) return make_error("--ctx must be positive");
  m->n_ctx_ = opts.n_ctx > 0 ? opts.n_ctx : std::min(hp.ctx_train, 4096);
  const int n_seqs = std::max(1, opts.n_seqs);
  const int64_t blocks_per_seq = (m->n_ctx_ + opts.block_size - 1) / opts.block_size;
  int64_t n_blocks = blocks_per_seq * n_seqs;
  KvCacheShape shape = m->model_->kv_shape(opts.block_size);
  shape.k_type = opts.k_type;
  shape.v_type = opts.v_type;
  if (opts.kv_bytes > 0) {
    const int64_t per_block = KvCache::bytes_per_block(shape);
    n_blocks = opts.kv_bytes / per_block;
    if (n_blocks < blocks_per_seq)
      return make_error("KV memory of " + std::to_string(opts.kv_bytes >> 20) + " MiB holds " +
                        std::to_string(n_blocks * opts.block_size) + " tokens, less than one context of " +
                        std::to_string(m->n_ctx_) + ": raise --kv-mem or lower --ctx");
  }
  auto kv = KvCache::create(shape, n_blocks);
  if (!kv) return kv.error();
  m->kv_ = std::move(*kv);
  const bool pin = opts.pin_threads || pin_requested_by_env();
  m->pool_ = std::make_unique<ThreadPool>(opts.n_threads > 0 ? opts.n_threads : default_thread_count(), pin);
  return m;
}

Expected<std::vector<int32_t>> LoadedModel::tokenize_chat(const nlohmann::json& messages,
                                                          bool add_generation_prompt) const {
  if (!tmpl_) return make_error(gguf_->path() + ": the model has no chat template: use --raw");
  const int32_t bos = tok_->bos_id();
  const int32_t eos = tok_->eos_id();
  const std::string bos_text = bos >= 0 ? tok_->token_text(bos) : "";
  const std::string eos_text = eos >= 0 ? tok_->token_text(eos) : "";
  auto text = tmpl_->apply(messages, add_generation_prompt, bos_text, eos_text);
  if (!text) return text.error();
  std::vector<int32_t> ids = tok_->encode(*text, /*add_special=*/true, /*parse_special=*/true);
  // The template may already start with BOS: do not add a second one.
  if (bos >= 0 && ids.size() >= 2 && ids[0] == bos && ids[1] == bos) ids.erase(ids.begin());
  return ids;
}

int64_t resident_memory_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      long long kb = 0;
      if (std::sscanf(line.c_str() + 6, "%lld", &kb) == 1) return kb * 1024;
    }
  }
  return -1;
}

}  // namespace fennec::engine
