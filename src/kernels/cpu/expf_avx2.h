// ggml's exp polynomial (impl::expf_ggml) on 8 lanes with AVX2 + FMA (and on 16 with AVX-512),
// bit for bit: for the *_avx2.cpp and *_avx512.cpp files only (it needs their compile flags).
#pragma once

#include <immintrin.h>

#include <cmath>

namespace fennec::kernels {
namespace {  // NOLINT(google-build-namespaces): one copy per translation unit

// impl::expf_ggml on 8 lanes: the same fused steps, and scale_pow2's two exact factors.
inline __m256 expf8(__m256 x) {
  const __m256 r = _mm256_set1_ps(0x1.8p23f);
  const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
  const __m256 nn = _mm256_sub_ps(z, r);
  const __m256 b = _mm256_fnmadd_ps(nn, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                    _mm256_fnmadd_ps(nn, _mm256_set1_ps(0x1.62e4p-1f), x));
  const __m256 u = _mm256_mul_ps(b, b);
  const __m256 j = _mm256_fmadd_ps(
      _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)),
                      u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
      u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
  const __m256 big = _mm256_cmp_ps(nn, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
  const __m256 tiny = _mm256_cmp_ps(nn, _mm256_set1_ps(-192.0f), _CMP_LT_OQ);
  // Clamp so that the lanes replaced below compute nothing undefined.
  const __m256 nc = _mm256_min_ps(_mm256_max_ps(nn, _mm256_set1_ps(-192.0f)), _mm256_set1_ps(192.0f));
  const __m256i n = _mm256_cvttps_epi32(nc);
  const __m256i n1 = _mm256_srai_epi32(_mm256_add_epi32(n, _mm256_srli_epi32(n, 31)), 1);  // n / 2
  const __m256i n2 = _mm256_sub_epi32(n, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(j, p1), p2);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), big);
  return _mm256_blendv_ps(y, _mm256_setzero_ps(), tiny);
}

#ifdef __AVX512F__
// expf8 on 16 lanes (the AVX-512 files): lane for lane the same operations.
inline __m512 expf16(__m512 x) {
  const __m512 r = _mm512_set1_ps(0x1.8p23f);
  const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r);
  const __m512 nn = _mm512_sub_ps(z, r);
  const __m512 b = _mm512_fnmadd_ps(nn, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                    _mm512_fnmadd_ps(nn, _mm512_set1_ps(0x1.62e4p-1f), x));
  const __m512 u = _mm512_mul_ps(b, b);
  const __m512 j = _mm512_fmadd_ps(
      _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b, _mm512_set1_ps(0x1.573e2ep-5f)),
                      u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b, _mm512_set1_ps(0x1.fffdb6p-2f))),
      u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
  const __mmask16 big = _mm512_cmp_ps_mask(nn, _mm512_set1_ps(192.0f), _CMP_GT_OQ);
  const __mmask16 tiny = _mm512_cmp_ps_mask(nn, _mm512_set1_ps(-192.0f), _CMP_LT_OQ);
  const __m512 nc = _mm512_min_ps(_mm512_max_ps(nn, _mm512_set1_ps(-192.0f)), _mm512_set1_ps(192.0f));
  const __m512i n = _mm512_cvttps_epi32(nc);
  const __m512i n1 = _mm512_srai_epi32(_mm512_add_epi32(n, _mm512_srli_epi32(n, 31)), 1);  // n / 2
  const __m512i n2 = _mm512_sub_epi32(n, n1);
  const __m512i bias = _mm512_set1_epi32(127);
  const __m512 p1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
  const __m512 p2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
  __m512 y = _mm512_mul_ps(_mm512_mul_ps(j, p1), p2);
  y = _mm512_mask_mov_ps(y, big, _mm512_set1_ps(INFINITY));
  return _mm512_mask_mov_ps(y, tiny, _mm512_setzero_ps());
}
#endif

}  // namespace
}  // namespace fennec::kernels
