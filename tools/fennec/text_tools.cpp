// Shared steps of the commands that run a model over a text file (perplexity, kld, imatrix).
#include <cstdio>
#include <fstream>
#include <sstream>

#include "tools/fennec/commands.h"

namespace fennec::cli {

std::optional<std::string> read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "fennec: %s: cannot read\n", path.c_str());
    return std::nullopt;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void KvTypeFlags::apply(engine::LoadOptions& o) const {
  if (auto t = engine::parse_kv_type(k)) o.k_type = *t;
  if (auto t = engine::parse_kv_type(v)) o.v_type = *t;
}

void add_kv_type_options(CLI::App* cmd, KvTypeFlags& f, const std::string& env_prefix) {
  // The names are checked by the one parser that knows them (engine::parse_kv_type).
  const CLI::Validator known(
      [](std::string& name) {
        auto t = engine::parse_kv_type(name);
        return t ? std::string() : t.error().message;
      },
      "f16|q8_0");
  auto* k = cmd->add_option("--cache-type-k", f.k, "KV cache type of K: f16 or q8_0 (default f16; also -ctk)")
                ->check(known);
  auto* v = cmd->add_option("--cache-type-v", f.v, "KV cache type of V: f16 or q8_0 (default f16; also -ctv)")
                ->check(known);
  if (!env_prefix.empty()) {
    k->envname(env_prefix + "CACHE_TYPE_K");
    v->envname(env_prefix + "CACHE_TYPE_V");
  }
}

Expected<std::unique_ptr<engine::LoadedModel>> load_text_model(const std::string& path, int threads, int ctx,
                                                               const KvTypeFlags& kv) {
  engine::LoadOptions o;
  o.n_threads = threads;
  o.n_ctx = ctx;
  kv.apply(o);
  auto lm = engine::LoadedModel::load(path, o);
  if (!lm) std::fprintf(stderr, "fennec: %s\n", lm.error().message.c_str());
  return lm;
}

std::vector<int32_t> text_tokens(const engine::LoadedModel& lm, const std::string& text, int ctx) {
  // BOS/EOS as the model's tokenizer adds them, special-token text kept as plain text
  // (llama-perplexity tokenizes the same way).
  std::vector<int32_t> ids = lm.tokenizer().encode(text, /*add_special=*/true, /*parse_special=*/false);
  std::fprintf(stderr, "fennec: %zu tokens, %d per chunk\n", ids.size(), ctx);
  return ids;
}

}  // namespace fennec::cli
