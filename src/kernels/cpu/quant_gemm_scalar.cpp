// The portable quant_gemm path: each output by the per-output kernel, which defines the bits
// that the SIMD tiles reproduce.
#include <algorithm>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/quant_gemm.h"

namespace fennec::kernels {

using formats::GgmlType;

namespace {

template <QuantDotFn QuantDotOps::*kDot>
void gemm_by_dot(const QuantGemmArgs& a, int64_t r0, int64_t r1) {
  const QuantDotFn dot = quant_dot_ops_scalar().*kDot;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = a.w + r * a.w_stride;
    for (int64_t t = 0; t < a.n_tokens; ++t)
      a.y[t * a.ldy + r] = dot(row, a.act + t * a.act_stride, a.n);
  }
}

}  // namespace

const QuantGemmOps& quant_gemm_ops_scalar() {
  static const QuantGemmOps ops{
      &gemm_by_dot<&QuantDotOps::q4_0>,     &gemm_by_dot<&QuantDotOps::q4_1>,
      &gemm_by_dot<&QuantDotOps::q5_0>,     &gemm_by_dot<&QuantDotOps::q5_1>,
      &gemm_by_dot<&QuantDotOps::q8_0>,     &gemm_by_dot<&QuantDotOps::q4_k>,
      &gemm_by_dot<&QuantDotOps::q4_k_8x8>, &gemm_by_dot<&QuantDotOps::q6_k>};
  return ops;
}

const QuantGemmOps& quant_gemm_ops() {
  switch (active_simd_level()) {
    case SimdLevel::kAvx512:
      return quant_gemm_ops_avx512();
    case SimdLevel::kAvx2:
      return quant_gemm_ops_avx2();
    default:
      return quant_gemm_ops_scalar();
  }
}

QuantGemmFn quant_gemm_pick(const QuantGemmOps& o, GgmlType t, int64_t rows) {
  return pick_kernel(o, t, rows);
}

QuantGemmFn quant_gemm_fn(GgmlType t, int64_t rows) {
  return quant_gemm_pick(quant_gemm_ops(), t, rows);
}

}  // namespace fennec::kernels
