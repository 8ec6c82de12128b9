// quant_dot's AVX2 + FMA table: the portable bodies of quant_dot_impl.h compiled with FMA (the
// matrix products use the tiles of quant_gemm_x86.h), plus AVX2 activation quantizers that write
// the same bytes as quant_dot_scalar.cpp's (kernel tests check both).
#include <immintrin.h>

#include "kernels/cpu/quant_dot.h"
#include "core/float_convert.h"
#include "kernels/cpu/quant_dot_impl.h"
#include "kernels/cpu/expf_avx2.h"

namespace fennec::kernels {

namespace {

using impl::BlockQ8_0;
using impl::BlockQ8_1;

// ---- Activation quantization: the bytes of quant_dot_scalar.cpp's quantize_q8_x/q8_k ---------
// Maxima are exact in any order, products and divisions are the scalar ones lane by lane, and
// _mm256_round_ps to nearest is nearbyint (and nearest_int's 1.5 * 2^23 trick, |v| <= 127.x).

inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

inline __m256i round_to_int(__m256 v) {
  return _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// 32 int32 (each in [-128, 127]) -> 32 bytes in order.
inline __m256i pack32(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
  const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
  return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// Lane i: the largest lane of m[i] (max is exact: any order gives the same value).
inline __m256 hmax_8x8(const __m256* m) {
  auto four = [](__m256 m0, __m256 m1, __m256 m2, __m256 m3) {
    const __m256 a01 = _mm256_max_ps(_mm256_unpacklo_ps(m0, m1), _mm256_unpackhi_ps(m0, m1));
    const __m256 a23 = _mm256_max_ps(_mm256_unpacklo_ps(m2, m3), _mm256_unpackhi_ps(m2, m3));
    const __m256 b = _mm256_max_ps(_mm256_shuffle_ps(a01, a23, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm256_shuffle_ps(a01, a23, _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm_max_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));  // lane j: m_j
  };
  return _mm256_set_m128(four(m[4], m[5], m[6], m[7]), four(m[0], m[1], m[2], m[3]));
}

// |v[i]| lane-wise over the block's 32 values v, as 8 lanes (hmax8 or hmax_8x8 finishes it).
inline __m256 block_absmax8(const float* v) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m = _mm256_setzero_ps();
  for (int k = 0; k < 4; ++k) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(v + 8 * k), abs_mask));
  return m;
}

// One block of 32 values v quantized with the scale d (fp16 dh) and its inverse id.
template <class Block>
inline void quantize_block(const float* v, float d, uint16_t dh, float id, Block* out_at) {
  __m256i q[4];
  for (int k = 0; k < 4; ++k) q[k] = round_to_int(_mm256_mul_ps(_mm256_loadu_ps(v + 8 * k), _mm256_set1_ps(id)));
  Block out;
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.qs), pack32(q[0], q[1], q[2], q[3]));
  out.d = dh;
  if constexpr (sizeof(Block) == sizeof(BlockQ8_1)) {
    const int32_t sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    out.s = _cvtss_sh(d * static_cast<float>(sum), _MM_FROUND_TO_NEAREST_INT);
  }
  std::memcpy(out_at, &out, sizeof(Block));
}

// Eight blocks at a time: their maxima in one vector, so that the scales' two divisions and the
// fp16 rounding of d run once per eight blocks (vector IEEE division and F16C's round to
// nearest even give the scalar code's bits: the quantizer test compares the bytes).
template <class Block>
void quantize_q8_x(const float* x, Block* y, int64_t n) {
  const int64_t nb = n / 32;
  int64_t b = 0;
  for (; b + 8 <= nb; b += 8) {
    __m256 m[8];
    for (int i = 0; i < 8; ++i) m[i] = block_absmax8(x + (b + i) * 32);
    const __m256 amax = hmax_8x8(m);
    const __m256 d = _mm256_div_ps(amax, _mm256_set1_ps(127.0f));
    // amax != 0 ? 127 / amax : 0 (a NaN maximum compares unequal, as in the scalar code)
    const __m256 id = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(127.0f), amax),
                                    _mm256_cmp_ps(amax, _mm256_setzero_ps(), _CMP_NEQ_UQ));
    alignas(32) float df[8], idf[8];
    alignas(16) uint16_t dh[8];
    _mm256_store_ps(df, d);
    _mm256_store_ps(idf, id);
    _mm_store_si128(reinterpret_cast<__m128i*>(dh), _mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT));
    for (int i = 0; i < 8; ++i) quantize_block(x + (b + i) * 32, df[i], dh[i], idf[i], y + b + i);
  }
  for (; b < nb; ++b) {
    const float* v = x + b * 32;
    const float amax = hmax8(block_absmax8(v));
    const float d = amax / 127.0f;
    const float id = amax != 0 ? 127.0f / amax : 0.0f;
    quantize_block(v, d, f32_to_fp16(d), id, y + b);
  }
}

void quantize_q8_k(const float* x, quant::BlockQ8K* y, int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < n / 256; ++b) {
    const float* v = x + b * 256;
    quant::BlockQ8K& out = y[b];
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 32; ++k)
      m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(v + 8 * k), abs_mask));
    const float amax = hmax8(m);
    if (amax == 0) {
      std::memset(&out, 0, sizeof(out));
      continue;
    }
    // The scalar loop keeps the first element of largest magnitude (a strict >).
    float max = 0;
    for (int k = 0; k < 32; ++k) {
      const __m256 a = _mm256_and_ps(_mm256_loadu_ps(v + 8 * k), abs_mask);
      const int hit = _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(amax), _CMP_EQ_OQ));
      if (hit) {
        max = v[8 * k + __builtin_ctz(static_cast<unsigned>(hit))];
        break;
      }
    }
    const float iscale = -127.f / max;
    const __m256i top = _mm256_set1_epi32(127);
    for (int g = 0; g < 8; ++g) {  // 32 values, two bsums at a time
      __m256i q[4];
      for (int k = 0; k < 4; ++k)
        q[k] =
            _mm256_min_epi32(top, round_to_int(_mm256_mul_ps(_mm256_set1_ps(iscale),
                                                             _mm256_loadu_ps(v + 32 * g + 8 * k))));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.qs + 32 * g),
                          pack32(q[0], q[1], q[2], q[3]));
      out.bsums[2 * g] = static_cast<int16_t>(hsum_epi32(_mm256_add_epi32(q[0], q[1])));
      out.bsums[2 * g + 1] = static_cast<int16_t>(hsum_epi32(_mm256_add_epi32(q[2], q[3])));
    }
    out.d = 1 / iscale;
  }
}

void quantize_act_avx2(ActFormat f, const float* x, void* out, int64_t n) {
  switch (f) {
    case ActFormat::kQ8_0:
      quantize_q8_x(x, static_cast<BlockQ8_0*>(out), n);
      return;
    case ActFormat::kQ8_1:
      quantize_q8_x(x, static_cast<BlockQ8_1*>(out), n);
      return;
    case ActFormat::kQ8_K:
      quantize_q8_k(x, static_cast<quant::BlockQ8K*>(out), n);
      return;
    default:
      std::memcpy(out, x, static_cast<size_t>(n) * sizeof(float));
      return;
  }
}

// impl::swiglu 8 lanes at a time: g / (1 + exp(-g)) * u with the same exp and the same IEEE
// steps, so the same bits; the tail past whole chunks of 16 takes libm's expf as there.
void swiglu_avx2(const float* g, const float* u, float* out, int64_t n) {
  const int64_t n16 = n / 16 * 16;
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < n16; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 e = expf8(_mm256_xor_ps(x, sign));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
  }
  impl::swiglu(g + n16, u + n16, out + n16, n - n16);
}

// impl::rope_rotate 8 values at a time with the same fused and rounded products: halves (neox)
// pair lane with lane; adjacent pairs take each angle twice and the pair swapped in-lane, even
// lanes from x0*c - (x1*s), odd ones from x0*s + (x1*c). The pairs past a multiple of 8 (or 4)
// go one at a time.
void rope_rotate_avx2(float* v, int n_heads, int head_dim, int half, bool neox, const float* c, const float* s) {
  const int whole = neox ? half / 8 * 8 : half / 4 * 4;
  for (int h = 0; h < n_heads; ++h) {
    float* x = v + static_cast<int64_t>(h) * head_dim;
    if (neox) {
      for (int i = 0; i < whole; i += 8) {
        const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + half + i);
        const __m256 vc = _mm256_loadu_ps(c + i), vs = _mm256_loadu_ps(s + i);
        _mm256_storeu_ps(x + i, _mm256_fmsub_ps(x0, vc, _mm256_mul_ps(x1, vs)));
        _mm256_storeu_ps(x + half + i, _mm256_fmadd_ps(x0, vs, _mm256_mul_ps(x1, vc)));
      }
    } else {
      for (int i = 0; i < whole; i += 4) {
        const __m128 c4 = _mm_loadu_ps(c + i), s4 = _mm_loadu_ps(s + i);
        const __m256 cd = _mm256_set_m128(_mm_unpackhi_ps(c4, c4), _mm_unpacklo_ps(c4, c4));
        const __m256 sd = _mm256_set_m128(_mm_unpackhi_ps(s4, s4), _mm_unpacklo_ps(s4, s4));
        const __m256 xv = _mm256_loadu_ps(x + 2 * i);
        const __m256 sw = _mm256_permute_ps(xv, 0xB1);  // x1 x0 per pair
        const __m256 even = _mm256_fmsub_ps(xv, cd, _mm256_mul_ps(sw, sd));
        const __m256 odd = _mm256_fmadd_ps(sw, sd, _mm256_mul_ps(xv, cd));
        _mm256_storeu_ps(x + 2 * i, _mm256_blend_ps(even, odd, 0xAA));
      }
    }
  }
  if (whole < half) impl::rope_rotate(v, n_heads, head_dim, half, neox, c, s, whole);
}

// impl::geglu 8 lanes at a time: F16C's rounding (to nearest even, as f32_to_fp16) indexes the
// table through a gather; the saturated ends are blended in.
void geglu_avx2(const float* g, const float* u, float* out, int64_t n, const float* table) {
  const int64_t n8 = n / 8 * 8;
  const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i), y = _mm256_loadu_ps(u + i);
    const __m256i idx = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
    __m256 r = _mm256_mul_ps(_mm256_i32gather_ps(table, idx, 4), y);
    r = _mm256_blendv_ps(r, _mm256_mul_ps(x, y), _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
    r = _mm256_blendv_ps(r, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LE_OQ));
    _mm256_storeu_ps(out + i, r);
  }
  impl::geglu(g + n8, u + n8, out + n8, n - n8, table);
}

}  // namespace

const QuantDotOps& quant_dot_ops_avx2() {
  // The per-output legacy kernels are the portable bodies (matmul uses the tiles of
  // quant_gemm_x86.h; these serve as their reference and for one-off dots).
  static const QuantDotOps ops{impl::dot_q4_0,
                               impl::dot_q4_1,
                               impl::dot_q5_0,
                               impl::dot_q5_1,
                               impl::dot_q8_0,
                               impl::dot_q4_k,
                               impl::dot_q4_k_8x8,
                               impl::dot_q6_k,
                               swiglu_avx2,
                               geglu_avx2,
                               rope_rotate_avx2,
                               quantize_act_avx2,
                               impl::dot_f16,
                               impl::dot_f16_chain,
                               impl::softmax_exp};
  return ops;
}

}  // namespace fennec::kernels
