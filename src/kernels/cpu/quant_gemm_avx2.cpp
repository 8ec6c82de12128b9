// quant_gemm tiles with AVX2 + FMA + F16C (bodies in quant_gemm_x86.h).
#include "kernels/cpu/quant_gemm_x86.h"

namespace fennec::kernels {

const QuantGemmOps& quant_gemm_ops_avx2() {
  // 4 rows x 4 tokens per legacy tile, 1 row x 4 tokens per K-quant tile: on Zen 4 the best of
  // 1..6 tokens (4 rows x 4 spills a little from 16 registers, still 3-20% ahead of x 2).
  static const QuantGemmOps ops = x86::make_ops<4, 4>();
  return ops;
}

}  // namespace fennec::kernels
