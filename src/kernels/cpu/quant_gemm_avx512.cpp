// quant_gemm tiles compiled with AVX-512 (bodies in quant_gemm_x86.h): the same 256-bit code,
// with 32 vector registers for larger tiles and VNNI's vpdpbusd for the byte products.
#include "kernels/cpu/quant_gemm_x86.h"

namespace fennec::kernels {

const QuantGemmOps& quant_gemm_ops_avx512() {
  // 4 tokens per tile, as measured on Zen 4 (5 and 6 were no faster).
  static const QuantGemmOps ops = x86::make_ops<4, 4>();
  return ops;
}

}  // namespace fennec::kernels
