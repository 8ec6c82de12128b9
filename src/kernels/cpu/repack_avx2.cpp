// Packed products (repack.h) with AVX2: the 16-row group as two halves of 8 rows, one ymm lane
// per row. vpmaddubsw + vpmaddwd form the exact integer block sums:
//   Q4_0: unsigned nibbles times signed activations; the eight int16 partial sums of a lane
//         stay below 8 * 2 * 15 * 127 = 30480, so they are added as int16 before one vpmaddwd,
//         and the start value -8 * sum(activation bytes) removes the nibble offset.
//   Q8_0: signed times signed through vpsignb (|x| times y with x's sign; x + 128 could
//         saturate vpmaddubsw), one vpmaddwd per 4 columns.
// The float steps are repack.h's, so the bits equal the scalar and AVX-512 paths'.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/repack.h"
#include "quant/blocks.h"

namespace fennec::kernels {
namespace {

using quant::BlockQ8_0;

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// Outputs of rows row0 + 8h .. +7 (half h of the group) for tokens t0 .. t0+T-1.
template <bool kQ4, int T>
void half_tile(const PackedGemmArgs& a, const uint8_t* qs, const uint16_t* d, int h, int64_t t0,
               float* out /* [T][8] */) {
  constexpr int kChunks = kQ4 ? 4 : 8;
  __m256 acc[T];
  const BlockQ8_0* act[T];
  for (int t = 0; t < T; ++t) {
    acc[t] = _mm256_setzero_ps();
    act[t] = reinterpret_cast<const BlockQ8_0*>(a.act + (t0 + t) * a.act_stride);
  }
  const float* ad = a.act_d + t0 * a.nb;
  const int32_t* as = a.act_sum + t0 * a.nb;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < a.nb; ++b) {
    const uint8_t* q = qs + b * kChunks * 64 + 32 * h;
    __m256i w[8];
    if constexpr (kQ4) {
      const __m256i m = _mm256_set1_epi8(0x0F);
      for (int j = 0; j < 4; ++j) {
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * j));
        w[j] = _mm256_and_si256(c, m);
        w[j + 4] = _mm256_and_si256(_mm256_srli_epi16(c, 4), m);
      }
    } else {
      const __m256i x80 = _mm256_set1_epi8(static_cast<char>(0x80));
      for (int j = 0; j < 8; ++j)
        w[j] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * j)), x80);
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d + b * kPackRows + 8 * h)));
    for (int t = 0; t < T; ++t) {
      const int8_t* y = act[t][b].qs;
      __m256i s;
      if constexpr (kQ4) {
        __m256i s16 = _mm256_maddubs_epi16(w[0], bcast4(y));
        for (int j = 1; j < 8; ++j) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[j], bcast4(y + 4 * j)));
        s = _mm256_add_epi32(_mm256_madd_epi16(s16, ones), _mm256_set1_epi32(-8 * as[t * a.nb + b]));
      } else {
        s = _mm256_setzero_si256();
        for (int j = 0; j < 8; ++j) {
          const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w[j], w[j]), _mm256_sign_epi8(bcast4(y + 4 * j), w[j]));
          s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
        }
      }
      const __m256 dd = _mm256_mul_ps(dw, _mm256_set1_ps(ad[t * a.nb + b]));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), dd, acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + 8 * t, acc[t]);
}

template <bool kQ4, int T>
void tile(const PackedGemmArgs& a, const uint8_t* qs, const uint16_t* d, int64_t t0, int64_t row0, int64_t nr) {
  alignas(32) float out[2][T][8];
  half_tile<kQ4, T>(a, qs, d, 0, t0, &out[0][0][0]);
  if (nr > 8) half_tile<kQ4, T>(a, qs, d, 1, t0, &out[1][0][0]);
  for (int t = 0; t < T; ++t) {
    float* y = a.y + (t0 + t) * a.ldy + row0;
    for (int64_t r = 0; r < nr; ++r) y[r] = out[r / 8][t][r % 8];
  }
}

template <bool kQ4>
void gemm(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  constexpr int kChunks = kQ4 ? 4 : 8;
  const int64_t gbytes = packed_group_stride(kChunks, a.nb);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* qs = a.w + g * gbytes;
    const auto* d = reinterpret_cast<const uint16_t*>(qs + a.nb * kChunks * 64);
    const int64_t row0 = g * kPackRows;
    const int64_t nr = std::min<int64_t>(kPackRows, a.rows - row0);
    int64_t t = 0;
    for (; t + 2 <= a.n_tokens; t += 2) tile<kQ4, 2>(a, qs, d, t, row0, nr);
    if (t < a.n_tokens) tile<kQ4, 1>(a, qs, d, t, row0, nr);
  }
}

}  // namespace

const PackedGemmOps& packed_gemm_ops_avx2() {
  static const PackedGemmOps ops{&gemm<true>, &gemm<false>};
  return ops;
}

}  // namespace fennec::kernels
