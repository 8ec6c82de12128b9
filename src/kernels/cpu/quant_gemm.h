// Tiled products of a quantized weight matrix with many quantized activation rows: the kernel
// matmul() runs for every weight type with an integer dot (quant_dot.h).
//
// Each output y[t][r] is computed with exactly the float steps of quant_dot_fn(type, rows) on
// (row r, activation t): the same per-block products, the same fma chain in block order, the
// same horizontal sum. A tile interleaves several such chains (a few rows times a few tokens),
// which hides the fma latency and lets each unpacked weight block and each activation block
// serve several outputs, but never reorders the steps inside one output. So the results are
// bit-identical to the per-output kernel on every ISA path (quant_gemm_test checks it).
#pragma once

#include <cstdint>

#include "formats/ggml_type.h"

namespace fennec::kernels {

// Weight row r starts at w + r * w_stride; activation row t, quantized to
// activation_format(type), at act + t * act_stride (strides in bytes); n elements per row (a
// multiple of the type's block); outputs at y[t * ldy + r].
struct QuantGemmArgs {
  const uint8_t* w = nullptr;
  int64_t w_stride = 0;
  const uint8_t* act = nullptr;
  int64_t act_stride = 0;
  int64_t n = 0;
  int64_t n_tokens = 0;
  float* y = nullptr;
  int64_t ldy = 0;
};

// Computes y[t * ldy + r] for rows r in [r0, r1) and every token t < a.n_tokens.
using QuantGemmFn = void (*)(const QuantGemmArgs& a, int64_t r0, int64_t r1);

// The kernel for weight type t in a matrix of `rows` rows (Q4_K picks its order by the row
// count, as quant_dot_fn does), at the active SIMD level. nullptr if !has_quant_dot(t).
QuantGemmFn quant_gemm_fn(formats::GgmlType t, int64_t rows);

// Per-ISA tables (quant_gemm_scalar.cpp, quant_gemm_avx2.cpp, quant_gemm_avx512.cpp).
struct QuantGemmOps {
  QuantGemmFn q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q4_k_8x8, q6_k;
};
const QuantGemmOps& quant_gemm_ops();  // the active level's table
const QuantGemmOps& quant_gemm_ops_scalar();
const QuantGemmOps& quant_gemm_ops_avx2();
const QuantGemmOps& quant_gemm_ops_avx512();
// The table's entry for type t and row count `rows`.
QuantGemmFn quant_gemm_pick(const QuantGemmOps& ops, formats::GgmlType t, int64_t rows);

}  // namespace fennec::kernels
