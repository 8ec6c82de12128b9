// paged_attention's AVX2 body: attention_simd_impl.h with 16 vector registers.
#include "kernels/cpu/attention_simd_impl.h"

namespace fennec::kernels {

AttnItemFn attention_item_avx2() { return &attend_simd; }

}  // namespace fennec::kernels
