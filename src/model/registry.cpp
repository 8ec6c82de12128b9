#include "model/registry.h"

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
    if (*arch == e.name) return e.load(std::move(gguf));
  std::string known;
  for (const ArchEntry& e : architectures()) known += (known.empty() ? "" : ", ") + std::string(e.name);
  return make_error(gguf->path() + ": architecture '" + *arch + "' is not supported (fennec knows: " +
                    known + ")");
}

}  // namespace fennec::model
