// paged_attention's AVX-512 body: attention_simd_impl.h compiled with AVX-512, so its operations
// have 32 registers (two query heads per key pass, wider value tiles), and the q.k chains run as
// zmm (pairs of the AVX2 body's ymm chains, lane for lane the same operations). On Zen 5 a zmm
// fma issues about as often as a ymm one (0.29 against 0.25 ns, bench/micro/fma_probe.cpp; the
// CPUs measured before issued it at half the rate): a 1.2B decode layer's attention took 7-12%
// less time with the q.k in zmm. The weighted values' slot chains run as zmm over a prompt
// chunk's f32 value rows (pp512 2-5% faster on SmolLM2, Gemma 3 and the 1.2B); over a decode
// step's fp16 cache rows zmm was 10-15% slower at 2048 positions (their loads, not their fmas,
// set the pace there), so those stay ymm.
// GCC 12 reports its own _mm512 intrinsics' undefined start values as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/cpu/attention_simd_impl.h"

namespace fennec::kernels {

AttnItemFn attention_item_avx512() { return &attend_simd; }

}  // namespace fennec::kernels
