// Hyper-parameters of a decoder-only transformer, read from GGUF metadata by the architecture
// files (llama.cpp, qwen2.cpp, gemma3.cpp). Differences between architectures are data here, not
// branches in the forward pass.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"

namespace fennec::model {

enum class Activation { kSilu, kGeluTanh };

struct HParams {
  std::string arch;
  int n_layers = 0;
  int n_embd = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim_k = 0;
  int head_dim_v = 0;
  int n_ff = 0;
  int n_vocab = 0;
  int ctx_train = 0;
  float norm_eps = 1e-5f;
  kernels::RopeStyle rope_style = kernels::RopeStyle::kNormal;
  int rope_dims = 0;
  float rope_base = 10000.f;
  float rope_base_local = 10000.f;   // sliding-window layers (Gemma 3)
  float rope_freq_scale = 1.0f;      // linear rope scaling (global layers)
  float attn_scale = 0.f;            // 0: 1/sqrt(head_dim_k)
  bool scale_q_first = false;        // multiply Q by attn_scale before attention (Gemma), not q.k
  float embed_scale = 1.0f;          // Gemma: sqrt(n_embd)
  float attn_softcap = 0.f;
  float final_softcap = 0.f;
  Activation act = Activation::kSilu;
  int sliding_window = 0;
  std::vector<bool> layer_is_swa;    // per layer: sliding-window attention
  bool qk_norm = false;              // per-head RMSNorm of q and k (Gemma 3)
  bool post_norms = false;           // norms after attention and FFN outputs (Gemma 2/3)
};

}  // namespace fennec::model
