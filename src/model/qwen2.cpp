// Qwen2 / Qwen2.5: the llama layer with biases on Q, K and V (bound when present) and rotary
// embeddings on the two halves of each head (NEOX style).
#include "model/registry.h"

namespace fennec::model {

Expected<std::unique_ptr<Model>> load_qwen2(std::shared_ptr<const formats::GgufFile> g) {
  Loader l(*g, "qwen2");
  auto hp = read_common_hparams(l, "qwen2");
  if (!hp) return hp.error();
  hp->rope_style = kernels::RopeStyle::kNeox;
  hp->act = Activation::kSilu;
  auto w = load_decoder_weights(l, *hp);
  if (!w) return w.error();
  return std::make_unique<Model>(std::move(g), std::move(*hp), std::move(*w));
}

}  // namespace fennec::model
