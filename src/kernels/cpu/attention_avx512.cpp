// paged_attention's AVX-512 body: attention_simd_impl.h compiled with AVX-512VL, so the same
// 256-bit operations have 32 registers (two query heads per key pass, wider value tiles). 512-bit
// operations would not help: this body's cost is fmas, and a zmm fma issues at half the ymm
// rate on the CPUs measured (bench/micro/fma_probe.cpp).
#include "kernels/cpu/attention_simd_impl.h"

namespace fennec::kernels {

AttnItemFn attention_item_avx512() { return &attend_simd; }

}  // namespace fennec::kernels
