// Gemma 3: embeddings scaled by sqrt(n_embd); per-head RMSNorm of q and k; norms before and after
// both attention and FFN; GeGLU (tanh GELU); NEOX rotary embeddings; five sliding-window layers
// (rope base 10000) for each global layer (rope base from metadata, optional linear scaling).
// GGUF stores Gemma's norm weights with the +1 already folded in, so plain RMSNorm applies.
#include <cmath>

#include "model/registry.h"

namespace fennec::model {

Expected<std::unique_ptr<Model>> load_gemma3(std::shared_ptr<const formats::GgufFile> g) {
  Loader l(*g, "gemma3");
  auto hp = read_common_hparams(l, "gemma3");
  if (!hp) return hp.error();
  hp->rope_style = kernels::RopeStyle::kNeox;
  hp->act = Activation::kGeluTanh;
  hp->qk_norm = true;
  hp->post_norms = true;
  hp->scale_q_first = true;
  hp->embed_scale = std::sqrt(static_cast<float>(hp->n_embd));
  hp->norm_eps = static_cast<float>(l.arch_float_or("attention.layer_norm_rms_epsilon", 1e-6));
  hp->rope_base_local = static_cast<float>(l.arch_float_or("rope.freq_base_swa", 10000.0));
  hp->sliding_window = static_cast<int>(l.arch_int_or("attention.sliding_window", 4096));
  if (hp->sliding_window <= 0) return make_error(g->path() + ": gemma3.attention.sliding_window must be positive");
  // Every sixth layer is global; the others use the sliding window.
  constexpr int kSwaPattern = 6;
  for (int i = 0; i < hp->n_layers; ++i) hp->layer_is_swa[static_cast<size_t>(i)] = (i + 1) % kSwaPattern != 0;
  hp->final_softcap = static_cast<float>(l.arch_float_or("final_logit_softcapping", 0.0));
  hp->attn_softcap = static_cast<float>(l.arch_float_or("attn_logit_softcapping", 0.0));
  auto w = load_decoder_weights(l, *hp);
  if (!w) return w.error();
  return std::make_unique<Model>(std::move(g), std::move(*hp), std::move(*w));
}

}  // namespace fennec::model
