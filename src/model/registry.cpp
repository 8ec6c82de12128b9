#include "model/registry.h"

#include <algorithm>
#include <thread>

namespace fennec::model {

const std::vector<ArchEntry>& architectures() {
  static const std::vector<ArchEntry> kArchs = {
      {"llama", load_llama},   // Llama 2/3.x, SmolLM2, TinyLlama, Mistral
      {"mistral", load_llama},
      {"qwen2", load_qwen2},
      {"gemma3", load_gemma3},
  };
  return kArchs;
}

Expected<std::unique_ptr<Model>> Model::load(std::shared_ptr<const formats::GgufFile> gguf) {
  auto arch = gguf->get_string("general.architecture");
  if (!arch) return arch.error();
  for (const ArchEntry& e : architectures())
    if (*arch == e.name) {
      auto m = e.load(std::move(gguf));
      if (m) {
        ThreadPool pool(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
        (*m)->pack_weights(pool);
      }
      return m;
    }
  std::string known;
  for (const ArchEntry& e : architectures()) known += (known.empty() ? "" : ", ") + std::string(e.name);
  return make_error(gguf->path() + ": architecture '" + *arch + "' is not supported (fennec knows: " +
                    known + ")");
}

}  // namespace fennec::model
