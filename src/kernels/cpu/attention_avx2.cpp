// The AVX2 body of paged_attention: the same float operations as attend_scalar (attention.cpp),
// per output in the same order, arranged for throughput:
// - keys and values are converted from fp16 once per work item, inline (no call per row);
// - the scores, the softmax's exp and the fp16 rounding of the weights run 8 lanes at a time;
// - the weighted sum of values is formed as an outer product: ggml's f16 dot over key positions
//   keeps one fma chain per lane slot (position mod 64 for ggml_vec_dot_f16: four 16-lane
//   accumulators; position mod 16 for the tinyBLAS chain), so each slot's chain is run for all
//   output dimensions at once (8 per register, several registers in flight), and the slots are
//   then combined with the same additions as the dot's final reduction, dimension-wise.
// Positions whose weight is exactly zero (outside the causal window) are skipped: fma(0, v, acc)
// leaves acc unchanged (acc starts at +0 and a sum of nonzero terms is never -0).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/expf_avx2.h"

namespace fennec::kernels {

namespace {

inline __m256 load_h8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// impl::reduce16 (the _mm512_reduce_add_ps order) of the 16 lanes lo (0..7), hi (8..15).
inline float reduce16(__m256 lo, __m256 hi) {
  const __m256 t3 = _mm256_add_ps(hi, lo);
  const __m128 t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
  const __m128 s = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));  // t6[0]+t6[2], t6[1]+t6[3]
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

// impl::dot_f16 (ggml_vec_dot_f16 on AVX-512), n % 16 == 0.
inline float dot_ggml(const float* a, const float* b, int64_t n) {
  const int64_t np = n & ~int64_t{63};
  __m256 acc[8];
  for (auto& x : acc) x = _mm256_setzero_ps();
  for (int64_t i = 0; i < np; i += 64)
    for (int k = 0; k < 8; ++k)
      acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8 * k), _mm256_loadu_ps(b + i + 8 * k), acc[k]);
  // accumulator j is acc[2j] (lanes 0..7) and acc[2j+1] (8..15): (0+2)+(1+3) lane-wise.
  const __m256 lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
  const __m256 hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
  if (np == n) return reduce16(lo, hi);
  double s = reduce16(lo, hi);
  for (int64_t i = np; i < n; ++i) s += static_cast<double>(a[i] * b[i]);
  return static_cast<float>(s);
}

// impl::dot_f16_chain (llamafile tinyBLAS on AVX-512), n % 16 == 0.
inline float dot_chain(const float* a, const float* b, int64_t n) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    lo = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), lo);
    hi = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), hi);
  }
  return reduce16(lo, hi);
}

// impl::softmax_exp over [i0, n), n and i0 multiples of 16 (chunks before i0 would add zeros).
inline double softmax_exp(const float* x, float* y, int64_t i0, int64_t n, float max) {
  const __m256 vm = _mm256_set1_ps(max);
  double sum = 0;
  for (int64_t i = i0; i < n; i += 16) {
    const __m256 lo = expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    const __m256 hi = expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
    _mm256_storeu_ps(y + i, lo);
    _mm256_storeu_ps(y + i + 8, hi);
    sum += reduce16(lo, hi);
  }
  return sum;
}

// out[e] = the f16 dot of the weights w over key positions [lo, hi] with value dimension e,
// in the lane order of ggml_vec_dot_f16 (R = 64) or of the tinyBLAS chain (R = 16). v: the
// value row of position k at v + (k - k_lo) * ldv. acc: R * dv floats of scratch.
template <int R>
void weighted_values(const float* w, int32_t lo, int32_t hi, const float* v, int32_t k_lo, int dv,
                     int64_t ldv, float* acc, float* out) {
  for (int r = 0; r < R; ++r) {
    const int32_t first = lo + ((r - lo) % R + R) % R;  // first position >= lo in slot r
    float* ar = acc + static_cast<int64_t>(r) * dv;
    int e = 0;
    for (; e + 64 <= dv; e += 64) {
      __m256 s[8];
      for (auto& x : s) x = _mm256_setzero_ps();
      for (int32_t k = first; k <= hi; k += R) {
        const __m256 wk = _mm256_broadcast_ss(w + k);
        const float* vk = v + static_cast<int64_t>(k - k_lo) * ldv + e;
        for (int i = 0; i < 8; ++i) s[i] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(vk + 8 * i), s[i]);
      }
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(ar + e + 8 * i, s[i]);
    }
    for (; e < dv; e += 8) {
      __m256 s = _mm256_setzero_ps();
      for (int32_t k = first; k <= hi; k += R)
        s = _mm256_fmadd_ps(_mm256_broadcast_ss(w + k),
                            _mm256_loadu_ps(v + static_cast<int64_t>(k - k_lo) * ldv + e), s);
      _mm256_storeu_ps(ar + e, s);
    }
  }
  for (int e = 0; e < dv; e += 8) {
    auto slot = [&](int r) { return _mm256_loadu_ps(acc + static_cast<int64_t>(r) * dv + e); };
    __m256 x[16];
    for (int l = 0; l < 16; ++l) {
      if constexpr (R == 64)  // accumulator j holds slots 16j + l: (0+2)+(1+3)
        x[l] = _mm256_add_ps(_mm256_add_ps(slot(l), slot(32 + l)),
                             _mm256_add_ps(slot(16 + l), slot(48 + l)));
      else
        x[l] = slot(l);
    }
    // reduce16 of each dimension's 16 lanes, dimension-wise.
    __m256 t3[8], t6[4];
    for (int i = 0; i < 8; ++i) t3[i] = _mm256_add_ps(x[8 + i], x[i]);
    for (int i = 0; i < 4; ++i) t6[i] = _mm256_add_ps(t3[4 + i], t3[i]);
    _mm256_storeu_ps(out + e, _mm256_add_ps(_mm256_add_ps(t6[0], t6[2]), _mm256_add_ps(t6[1], t6[3])));
  }
}

// Rows [k_lo, k_lo + n) of one layer's cache (every KV head: a block's slots are contiguous, so
// the reads stream), converted to f32 at dst (row stride `width`).
void gather_rows(const uint16_t* cache, int64_t width, const AttnSequence& sq, int block_size,
                 int32_t k_lo, int32_t n, float* dst) {
  for (int32_t j = 0; j < n;) {
    const int32_t kp = k_lo + j;
    const int32_t run = std::min(n - j, block_size - kp % block_size);  // slots left in the block
    const uint16_t* src =
        cache + (static_cast<int64_t>(sq.block_table[kp / block_size]) * block_size + kp % block_size) * width;
    float* d = dst + static_cast<int64_t>(j) * width;
    const int64_t count = run * width;
    for (int64_t e = 0; e < count; e += 8) _mm256_storeu_ps(d + e, load_h8(src + e));
    j += run;
  }
}

// One work item covers every KV head of its sequence (AttnItem::kv_head is ignored): the rows
// are gathered once, whole.
void attend_avx2(const AttnArgs& a, const AttnItem& w) {
  const AttnParams& p = *a.p;
  const AttnSequence& sq = *w.seq;
  const int group = p.n_heads / p.n_kv_heads;
  const int dk = p.head_dim_k, dv = p.head_dim_v;
  const int64_t kw = static_cast<int64_t>(p.n_kv_heads) * dk, vw = static_cast<int64_t>(p.n_kv_heads) * dv;
  const bool chain = sq.n_queries >= 2;  // see attend_scalar
  const int32_t first_pos = sq.pos0 + w.q_begin;
  const int32_t last_pos = sq.pos0 + w.q_end - 1;
  const int32_t k_lo = p.window > 0 ? std::max(0, first_pos - p.window + 1) : 0;
  const int32_t n_keys = last_pos + 1 - k_lo;
  const int64_t n_row = round_up(last_pos + 1, 16);
  thread_local std::vector<float> keys, vals, scores, probs, qh, acc;
  keys.resize(static_cast<size_t>(n_keys * kw));
  vals.resize(static_cast<size_t>(n_keys * vw));
  scores.resize(static_cast<size_t>(n_row));
  probs.resize(static_cast<size_t>(n_row));
  qh.resize(static_cast<size_t>(dk));
  acc.resize(static_cast<size_t>(64) * dv);
  gather_rows(a.k_cache, kw, sq, p.block_size, k_lo, n_keys, keys.data());
  gather_rows(a.v_cache, vw, sq, p.block_size, k_lo, n_keys, vals.data());
  const __m256 vscale = _mm256_set1_ps(p.scale);
  for (int32_t qi = w.q_begin; qi < w.q_end; ++qi) {
    const int32_t pos = sq.pos0 + qi;
    const int32_t lo = p.window > 0 ? std::max(0, pos - p.window + 1) : 0;
    const int64_t m = round_up(pos + 1, 16);
    const int64_t lo16 = lo / 16 * 16;
    const int64_t row = sq.row + qi;
    for (int head = 0; head < p.n_heads; ++head) {
      const int kvh = head / group;
      const float* qrow = a.q + row * a.ldq + static_cast<int64_t>(head) * dk;
      for (int e = 0; e < dk; e += 8)
        _mm256_storeu_ps(qh.data() + e,
                         _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(qrow + e), _MM_FROUND_TO_NEAREST_INT)));
      for (int64_t j = lo16; j < lo; ++j) scores[j] = -INFINITY;
      for (int64_t j = pos + 1; j < m; ++j) scores[j] = -INFINITY;
      const float* kb = keys.data() + (lo - k_lo) * kw + static_cast<int64_t>(kvh) * dk;
      if (chain) {
        for (int32_t j = lo; j <= pos; ++j, kb += kw) scores[j] = dot_chain(qh.data(), kb, dk);
      } else {
        for (int32_t j = lo; j <= pos; ++j, kb += kw) scores[j] = dot_ggml(qh.data(), kb, dk);
      }
      // scale (and softcap), then the max, 8 positions at a time where the softcap allows.
      __m256 vmax = _mm256_set1_ps(-INFINITY);
      float mx = -INFINITY;
      if (p.softcap > 0) {
        for (int32_t j = lo; j <= pos; ++j) {
          const float sc = p.softcap * std::tanh(scores[j] * p.scale / p.softcap);
          scores[j] = sc;
          mx = std::max(mx, sc);
        }
      } else {
        int32_t j = lo;
        for (; j + 8 <= pos + 1; j += 8) {
          const __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(scores.data() + j), vscale);
          _mm256_storeu_ps(scores.data() + j, sc);
          vmax = _mm256_max_ps(vmax, sc);
        }
        for (; j <= pos; ++j) {
          scores[j] *= p.scale;
          mx = std::max(mx, scores[j]);
        }
        alignas(32) float t[8];
        _mm256_store_ps(t, vmax);
        for (float x : t) mx = std::max(mx, x);
      }
      const double sum = softmax_exp(scores.data(), probs.data(), lo16, m, mx);
      const __m256 inv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
      for (int64_t j = lo16; j < m; j += 8) {
        const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(probs.data() + j), inv);
        _mm256_storeu_ps(probs.data() + j,
                         _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)));
      }
      float* o = a.out + row * a.ldo + static_cast<int64_t>(head) * dv;
      const float* vb = vals.data() + static_cast<int64_t>(kvh) * dv;
      if (chain)
        weighted_values<16>(probs.data(), lo, pos, vb, k_lo, dv, vw, acc.data(), o);
      else
        weighted_values<64>(probs.data(), lo, pos, vb, k_lo, dv, vw, acc.data(), o);
    }
  }
}

}  // namespace

AttnItemFn attention_item_avx2() { return &attend_avx2; }

}  // namespace fennec::kernels
