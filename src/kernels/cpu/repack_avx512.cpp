// Packed products (repack.h) with AVX-512 VNNI: one zmm lane per output row of a 16-row group.
// Per block: the 16 rows' quants are 4 (Q4_0) or 8 (Q8_0) 64-byte vectors, unpacked once per
// block and tile of T tokens; each token then takes 8 vpdpbusd with its activation bytes
// broadcast, one convert, one multiply of the row scales by its scale and one fma. The integer
// start value -offset * sum(activation bytes) turns the unsigned quants (Q4_0's nibble x + 8,
// Q8_0's x + 128) into the signed products exactly.
// GCC 12 reports its own _mm512 intrinsics' undefined start values as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/repack.h"
#include "quant/blocks.h"

namespace fennec::kernels {
namespace {

using quant::BlockQ8_0;

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

template <bool kQ4, int T>
void tile(const PackedGemmArgs& a, const uint8_t* qs, const uint16_t* d, int64_t t0, int64_t row0,
          __mmask16 mask) {
  constexpr int kChunks = kQ4 ? 4 : 8;
  constexpr int32_t kOffset = kQ4 ? 8 : 128;
  __m512 acc[T];
  const BlockQ8_0* act[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    acc[t] = _mm512_setzero_ps();
    act[t] = reinterpret_cast<const BlockQ8_0*>(a.act + (t0 + t) * a.act_stride);
  }
  const float* ad = a.act_d + t0 * a.nb;
  const int32_t* as = a.act_sum + t0 * a.nb;
  for (int64_t b = 0; b < a.nb; ++b) {
    __m512i w[8];
    const uint8_t* q = qs + b * kChunks * 64;
    if constexpr (kQ4) {
      const __m512i m = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const __m512i c = _mm512_load_si512(q + 64 * j);
        w[j] = _mm512_and_si512(c, m);
        w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(c, 4), m);
      }
    } else {
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) w[j] = _mm512_load_si512(q + 64 * j);
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(d + b * kPackRows)));
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      __m512i s = _mm512_set1_epi32(-kOffset * as[t * a.nb + b]);
      const int8_t* y = act[t][b].qs;
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) s = _mm512_dpbusd_epi32(s, w[j], bcast4(y + 4 * j));
      const __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(ad[t * a.nb + b]));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), dd, acc[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(a.y + (t0 + t) * a.ldy + row0, mask, acc[t]);
}

template <bool kQ4>
void gemm(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  constexpr int kChunks = kQ4 ? 4 : 8;
  constexpr int kT = 8;
  const int64_t gbytes = packed_group_stride(kChunks, a.nb);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* qs = a.w + g * gbytes;
    const auto* d = reinterpret_cast<const uint16_t*>(qs + a.nb * kChunks * 64);
    const int64_t row0 = g * kPackRows;
    const int64_t nr = std::min<int64_t>(kPackRows, a.rows - row0);
    const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
    int64_t t = 0;
    for (; t + kT <= a.n_tokens; t += kT) tile<kQ4, kT>(a, qs, d, t, row0, mask);
    switch (a.n_tokens - t) {
      case 7: tile<kQ4, 7>(a, qs, d, t, row0, mask); break;
      case 6: tile<kQ4, 6>(a, qs, d, t, row0, mask); break;
      case 5: tile<kQ4, 5>(a, qs, d, t, row0, mask); break;
      case 4: tile<kQ4, 4>(a, qs, d, t, row0, mask); break;
      case 3: tile<kQ4, 3>(a, qs, d, t, row0, mask); break;
      case 2: tile<kQ4, 2>(a, qs, d, t, row0, mask); break;
      case 1: tile<kQ4, 1>(a, qs, d, t, row0, mask); break;
      default: break;
    }
  }
}

}  // namespace

const PackedGemmOps& packed_gemm_ops_avx512() {
  static const PackedGemmOps ops{&gemm<true>, &gemm<false>};
  return ops;
}

}  // namespace fennec::kernels
