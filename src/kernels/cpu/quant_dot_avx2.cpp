// quant_dot kernels with AVX2 + FMA. The integer lanes are exact, so these must return the
// same bits as the portable bodies in quant_dot_impl.h (kernel_test checks it).
#include <immintrin.h>

#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/quant_dot_impl.h"

namespace fennec::kernels {

namespace {

using impl::BlockQ4_0;
using impl::BlockQ4_1;
using impl::BlockQ5_0;
using impl::BlockQ5_1;
using impl::BlockQ8_0;
using impl::BlockQ8_1;
using impl::h2f;

inline float hsum8(__m256 v) {
  float a[8];
  _mm256_storeu_ps(a, v);
  return impl::hsum8(a);
}

// 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high (16..31).
inline __m256i nibbles32(const uint8_t* qs) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m256i v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

// 32 bits -> 32 bytes, 0xFF where the bit is set.
inline __m256i bits32(const uint8_t* qh) {
  uint32_t x;
  std::memcpy(&x, qh, 4);
  const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(x)), shuf);
  v = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

// Eight int32 lanes, lane k = sum of products of bytes 4k..4k+3; ux unsigned, y signed.
inline __m256i lanes_us(__m256i ux, __m256i y) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(ux, y), _mm256_set1_epi16(1));
}
inline __m256i lanes_ss(__m256i x, __m256i y) {
  return lanes_us(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

float dot_q4_0(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const BlockQ4_0*>(vx);
  const auto* y = static_cast<const BlockQ8_0*>(vy);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / 32; ++b) {
    const float d = h2f(x[b].d) * h2f(y[b].d);
    const __m256i qx = _mm256_sub_epi8(nibbles32(x[b].qs), _mm256_set1_epi8(8));
    acc =
        _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes_ss(qx, load32(y[b].qs))), acc);
  }
  return hsum8(acc);
}

float dot_q5_0(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const BlockQ5_0*>(vx);
  const auto* y = static_cast<const BlockQ8_0*>(vy);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / 32; ++b) {
    const float d = h2f(x[b].d) * h2f(y[b].d);
    // Without the fifth bit the value is nibble - 16: set the high nibble to 0xF.
    const __m256i hi =
        _mm256_andnot_si256(bits32(x[b].qh), _mm256_set1_epi8(static_cast<char>(0xF0)));
    const __m256i qx = _mm256_or_si256(nibbles32(x[b].qs), hi);
    acc =
        _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes_ss(qx, load32(y[b].qs))), acc);
  }
  return hsum8(acc);
}

float dot_q4_1(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const BlockQ4_1*>(vx);
  const auto* y = static_cast<const BlockQ8_1*>(vy);
  __m256 acc = _mm256_setzero_ps();
  float summs = 0;
  for (int64_t b = 0; b < n / 32; ++b) {
    summs += h2f(x[b].m) * h2f(y[b].s);
    const float d = h2f(x[b].d) * h2f(y[b].d);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d),
                          _mm256_cvtepi32_ps(lanes_us(nibbles32(x[b].qs), load32(y[b].qs))), acc);
  }
  return hsum8(acc) + summs;
}

float dot_q5_1(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const BlockQ5_1*>(vx);
  const auto* y = static_cast<const BlockQ8_1*>(vy);
  __m256 acc = _mm256_setzero_ps();
  float summs = 0;
  for (int64_t b = 0; b < n / 32; ++b) {
    summs += h2f(x[b].m) * h2f(y[b].s);
    const float d = h2f(x[b].d) * h2f(y[b].d);
    const __m256i qx = _mm256_or_si256(nibbles32(x[b].qs),
                                       _mm256_and_si256(bits32(x[b].qh), _mm256_set1_epi8(0x10)));
    acc =
        _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes_us(qx, load32(y[b].qs))), acc);
  }
  return hsum8(acc) + summs;
}

float dot_q8_0(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const BlockQ8_0*>(vx);
  const auto* y = static_cast<const BlockQ8_0*>(vy);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / 32; ++b) {
    const float d = h2f(x[b].d) * h2f(y[b].d);
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d),
                          _mm256_cvtepi32_ps(lanes_ss(load32(x[b].qs), load32(y[b].qs))), acc);
  }
  return hsum8(acc);
}

}  // namespace

const QuantDotOps& quant_dot_ops_avx2() {
  static const QuantDotOps ops{dot_q4_0,
                               dot_q4_1,
                               dot_q5_0,
                               dot_q5_1,
                               dot_q8_0,
                               impl::dot_q4_k,
                               impl::dot_q4_k_8x8,
                               impl::dot_q6_k,
                               impl::swiglu,
                               impl::dot_f16,
                               impl::dot_f16_chain,
                               impl::softmax_exp};
  return ops;
}

}  // namespace fennec::kernels
