// Dot products of quantized weight rows with activations quantized to 8 bits, in the order of
// operations of ggml's x86 kernels (8 float lanes, each the exact integer sum of 4 products,
// accumulated block by block with fused multiply-add, then ggml's horizontal sum). Following
// that order makes fennec's logits equal llama.cpp's, not just close: small models amplify
// one flipped 8-bit rounding into a different argmax. Integer sums are exact, so only the
// float steps need to follow ggml.
#pragma once

#include <cstdint>
#include <vector>

#include "formats/ggml_type.h"
#include "kernels/cpu/activation_quant.h"

namespace fennec::kernels {

// True if weight type t has an integer dot kernel here.
bool has_quant_dot(formats::GgmlType t);

// Bytes of one activation row of n values in format f (Q8_0, Q8_1 or Q8_K blocks).
int64_t quantized_act_bytes(ActFormat f, int64_t n);
// Quantizes n values (a multiple of the block) as ggml's x86 quantize_row_q8_* does.
void quantize_act(ActFormat f, const float* x, void* out, int64_t n);

// The kernel computing sum_i w[i] * a[i] for one weight row of type t and one quantized
// activation row (the format activation_format(t) names), for a matrix with `rows` rows: Q4_K
// matrices whose row count is a multiple of 8 take the order of llama.cpp's repacked Q4_K
// kernels, which it uses for them by default. nullptr if !has_quant_dot(t).
using QuantDotFn = float (*)(const void*, const void*, int64_t);
QuantDotFn quant_dot_fn(formats::GgmlType t, int64_t rows);

// out[i] = silu(gate[i]) * up[i] with ggml's exp polynomial on chunks of 16 and libm expf on the
// tail, as ggml_vec_swiglu_f32 computes it.
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// Per-ISA tables (quant_dot_scalar.cpp, quant_dot_avx2.cpp); quant_dot_fn() uses the active one.
struct QuantDotOps {
  float (*q4_0)(const void*, const void*, int64_t);
  float (*q4_1)(const void*, const void*, int64_t);
  float (*q5_0)(const void*, const void*, int64_t);
  float (*q5_1)(const void*, const void*, int64_t);
  float (*q8_0)(const void*, const void*, int64_t);
  float (*q4_k)(const void*, const void*, int64_t);
  float (*q4_k_8x8)(const void*, const void*, int64_t);
  float (*q6_k)(const void*, const void*, int64_t);
  void (*swiglu)(const float*, const float*, float*, int64_t);
  // out[i] = gelu(gate[i]) * up[i] as ggml_vec_geglu_f32: table[fp16 rounding of gate[i]] (the
  // 65536 GELU values, ops.cpp), 0 at or below -10, the gate itself at or above 10.
  void (*geglu)(const float* gate, const float* up, float* out, int64_t n, const float* table);
  // rope's rotation of one token's n_heads heads (head_dim apart) by the angles whose cosines
  // and sines are c[i], s[i] for pair i < half: pairs (2i, 2i+1), or (i, i + half) with neox, as
  // ggml computes them (x0*c - x1*s and x0*s + x1*c, the first product fused).
  void (*rope_rotate)(float* v, int n_heads, int head_dim, int half, bool neox, const float* c, const float* s);
  // quantize_act() (same bytes on every path).
  void (*quantize)(ActFormat, const float*, void*, int64_t);
  // Attention pieces (fp16-rounded inputs): ggml's f16 dot and softmax exponentials.
  float (*dot_f16)(const float*, const float*, int64_t);
  float (*dot_f16_chain)(const float*, const float*, int64_t);
  double (*softmax_exp)(const float*, float*, int64_t, float);
};
// The entry of a per-type kernel table (QuantDotOps here, QuantGemmOps in quant_gemm.h: members
// q4_0 ... q6_k) for weight type t in a matrix of `rows` rows, chosen as quant_dot_fn chooses
// (Q4_K in the 8x8 order when rows % 8 == 0); nullptr for a type without a kernel.
template <class Ops>
auto pick_kernel(const Ops& o, formats::GgmlType t, int64_t rows) -> decltype(o.q4_0) {
  using formats::GgmlType;
  switch (t) {
    case GgmlType::Q4_0:
      return o.q4_0;
    case GgmlType::Q4_1:
      return o.q4_1;
    case GgmlType::Q5_0:
      return o.q5_0;
    case GgmlType::Q5_1:
      return o.q5_1;
    case GgmlType::Q8_0:
      return o.q8_0;
    case GgmlType::Q4_K:
      return rows % 8 == 0 ? o.q4_k_8x8 : o.q4_k;
    case GgmlType::Q6_K:
      return o.q6_k;
    default:
      return nullptr;
  }
}

// The table for the active SIMD level.
const QuantDotOps& quant_dot_ops();
const QuantDotOps& quant_dot_ops_scalar();
const QuantDotOps& quant_dot_ops_avx2();

}  // namespace fennec::kernels
