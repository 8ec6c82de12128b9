// Llama family: RMSNorm, rotary embeddings on adjacent pairs (GGUF's llama converter permutes
// Q/K for it), SwiGLU, optional Llama 3 rope frequency factors, GQA, optional tied output.
#include "model/registry.h"

namespace fennec::model {

Expected<std::unique_ptr<Model>> load_llama(std::shared_ptr<const formats::GgufFile> g) {
  auto arch = g->get_string("general.architecture");
  if (!arch) return arch.error();
  Loader l(*g, *arch);
  auto hp = read_common_hparams(l, *arch);
  if (!hp) return hp.error();
  hp->rope_style = kernels::RopeStyle::kNormal;
  hp->act = Activation::kSilu;
  auto w = load_decoder_weights(l, *hp);
  if (!w) return w.error();
  return std::make_unique<Model>(std::move(g), std::move(*hp), std::move(*w));
}

}  // namespace fennec::model
