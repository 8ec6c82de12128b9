// The vector body of paged_attention, for attention_avx2.cpp (16 ymm registers) and
// attention_avx512.cpp (AVX-512's 32 registers, which let two query heads keep their rows in
// registers while they share each key; there the q.k chains, a prompt chunk's weighted values
// and the softmax's exp take pairs of the 256-bit operations as one 512-bit one, under
// __AVX512F__, lane for lane the same). It performs the
// float operations of attend_scalar (attention.cpp), per output in the same order, arranged
// for throughput:
// - a chunk of queries converts its keys and values (fp16 or Q8_0) to f32 once per work item,
//   inline (no call per row); one query (a decode step) reads the cache in place, in the
//   order the cache lies (attend_decode: every KV head of the item on each 8 keys, then on each
//   block of values), with software prefetch spread over the work;
// - q.k: each key's dot keeps its lane-wise chains (ggml_vec_dot_f16's four 16-lane
//   accumulators, or the tinyBLAS chain of two 8-lane halves), and the final horizontal sum
//   of eight keys is done at once by transposing shuffles that add the same pairs in the same
//   order as the single-key reduction (reduce8);
// - the scores' scale, max, the softmax's exp and the fp16 rounding of the weights run 8 lanes
//   at a time;
// - the weighted sum of values is a register-tiled product: up to six rows (query heads that
//   share a KV head, and neighbouring queries) times 16 or 32 value dimensions per tile, each
//   value load feeding every row. ggml's f16 dot over key positions keeps one fma chain per
//   lane slot (position mod 64 for ggml_vec_dot_f16, mod 16 for the tinyBLAS chain), so each
//   slot's chain runs for the tile at once, and the slots are then combined with the dot's
//   final additions, dimension-wise.
// A row's weights outside its own causal window are zero, and fma(0, v, acc) leaves acc
// unchanged (acc starts at +0 and a sum of nonzero terms is never -0), so rows with different
// windows share a tile's key range.
// Include from one file per ISA only: everything here has internal linkage.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/aligned_vector.h"
#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/expf_avx2.h"

namespace fennec::kernels {
namespace {  // NOLINT(google-build-namespaces): one copy per translation unit

#ifdef __AVX512VL__
constexpr int kQkRows = 2;   // query heads per q.k pass (their q rows stay in registers)
constexpr int kPvWidth = 4;  // ymm registers of value dimensions per tile (32 floats)
#else
constexpr int kQkRows = 1;
constexpr int kPvWidth = 2;
#endif
constexpr int kPvRows = 6;  // rows per weighted-values tile

inline __m256 load_h8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Where an item's key or value rows are read: converted to f32 and gathered (F32Rows: position
// k's row at base + (k - k0) * stride + off, the rows holding KV heads head0 ..), or in the
// cache itself through a table of row pointers (F16Rows, Q8Rows: rows[k - k0] + off, whole
// cache rows, head0 = 0). off selects the KV head. row() gives a position in values that `+ n`
// moves along the row; load() reads 8 values there as f32; address() and bytes() are for
// the prefetches.
struct F32Rows {
  const float* base;
  int64_t stride;
  int32_t k0;
  int64_t off;
  int head0;
  const float* row(int32_t k) const { return base + static_cast<int64_t>(k - k0) * stride + off; }
  static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  template <int N>
  static void load_run(const float* p, __m256* out) {
    for (int n = 0; n < N; ++n) out[n] = load(p + 8 * n);
  }
#ifdef __AVX512F__
  template <int N>  // 16 N values as N zmm: the same values as load_run<2N>
  static void load_run16(const float* p, __m512* out) {
    for (int n = 0; n < N; ++n) out[n] = _mm512_loadu_ps(p + 16 * n);
  }
#endif
  static uintptr_t address(const float* p) { return reinterpret_cast<uintptr_t>(p); }
  static int64_t bytes(int64_t n_values) { return n_values * 4; }
};
struct F16Rows {
  const uint8_t* const* rows;
  int32_t k0;
  int64_t off;
  int head0;
  const uint16_t* row(int32_t k) const { return reinterpret_cast<const uint16_t*>(rows[k - k0]) + off; }
  static __m256 load(const uint16_t* p) { return load_h8(p); }
  template <int N>
  static void load_run(const uint16_t* p, __m256* out) {
    for (int n = 0; n < N; ++n) out[n] = load(p + 8 * n);
  }
#ifdef __AVX512F__
  template <int N>
  static void load_run16(const uint16_t* p, __m512* out) {
    for (int n = 0; n < N; ++n) out[n] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * n)));
  }
#endif
  static uintptr_t address(const uint16_t* p) { return reinterpret_cast<uintptr_t>(p); }
  static int64_t bytes(int64_t n_values) { return n_values * 2; }
};
// Value v of the run of Q8_0 blocks from `blocks` (34 bytes per 32 values: the fp16 scale d,
// then 32 int8 q).
struct Q8Pos {
  const uint8_t* blocks;
  int64_t v;
  Q8Pos operator+(int64_t n) const { return {blocks, v + n}; }
};
struct Q8Rows {
  const uint8_t* const* rows;
  int32_t k0;
  int64_t off;
  int head0;
  Q8Pos row(int32_t k) const { return {rows[k - k0], off}; }
  // Values v .. v + 8N - 1 as d * q (the same floats gather_rows makes, exact in float), 8N <= 32
  // and v a multiple of 8N, so within one block: its scale is read once.
  template <int N>
  static void load_run(Q8Pos p, __m256* out) {
    static_assert(32 % (8 * N) == 0);
    const uint8_t* b = p.blocks + (p.v >> 5) * 34;
    uint16_t d;
    std::memcpy(&d, b, 2);
    const __m256 scale = _mm256_set1_ps(_cvtsh_ss(d));
    const uint8_t* q = b + 2 + (p.v & 31);
    for (int n = 0; n < N; ++n) {
      const __m256i x = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * n)));
      out[n] = _mm256_mul_ps(_mm256_cvtepi32_ps(x), scale);
    }
  }
#ifdef __AVX512F__
  template <int N>  // 16N <= 32 values, v a multiple of 16N
  static void load_run16(Q8Pos p, __m512* out) {
    static_assert(32 % (16 * N) == 0);
    const uint8_t* b = p.blocks + (p.v >> 5) * 34;
    uint16_t d;
    std::memcpy(&d, b, 2);
    const __m512 scale = _mm512_set1_ps(_cvtsh_ss(d));
    const uint8_t* q = b + 2 + (p.v & 31);
    for (int n = 0; n < N; ++n) {
      const __m512i x = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16 * n)));
      out[n] = _mm512_mul_ps(_mm512_cvtepi32_ps(x), scale);
    }
  }
#endif
  static uintptr_t address(Q8Pos p) { return reinterpret_cast<uintptr_t>(p.blocks + (p.v >> 5) * 34); }
  static int64_t bytes(int64_t n_values) { return n_values / 32 * 34; }
};

// impl::reduce16 (the _mm512_reduce_add_ps order) of the 16 lanes lo (0..7), hi (8..15).
inline float reduce16(__m256 lo, __m256 hi) {
  const __m256 t3 = _mm256_add_ps(hi, lo);
  const __m128 t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
  const __m128 s = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));  // t6[0]+t6[2], t6[1]+t6[3]
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

// The first step of reduce16 after t3 for two keys: [t6 of x | t6 of y], t6[i] = t3[4+i] + t3[i].
inline __m256 pair_t6(__m256 x, __m256 y) {
  return _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x31), _mm256_permute2f128_ps(x, y, 0x20));
}

// reduce16's remaining steps for eight keys at once, from pair_t6 of keys (0,1), (2,3), (4,5),
// (6,7): each key's (t6[0]+t6[2]) + (t6[1]+t6[3]), keys in lane order.
inline __m256 reduce8(__m256 u01, __m256 u23, __m256 u45, __m256 u67) {
  // [k0 s0, k2 s0, k0 s1, k2 s1 | k1 s0, k3 s0, k1 s1, k3 s1], s0 = t6[0]+t6[2], s1 = t6[1]+t6[3]
  const __m256 s = _mm256_add_ps(_mm256_unpacklo_ps(u01, u23), _mm256_unpackhi_ps(u01, u23));
  const __m256 t = _mm256_add_ps(_mm256_unpacklo_ps(u45, u67), _mm256_unpackhi_ps(u45, u67));
  const __m256 r = _mm256_add_ps(_mm256_shuffle_ps(s, t, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm256_shuffle_ps(s, t, _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // k0 k2 k4 k6 | k1 ..
}

// impl::dot_f16 (ggml_vec_dot_f16 on AVX-512), n % 16 == 0: for head sizes that are not a
// multiple of 64 (the batched path below needs whole 64-lane steps).
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

// t3 (the 8-lane sum that reduce16 starts from) of one key k against NQ query rows. kChain:
// the tinyBLAS chain (dk % 16 == 0); otherwise ggml_vec_dot_f16 (dk % 64 == 0). DK: the head
// size when known at compile time (0: dk). q[r]: the fp16-rounded query rows.
template <bool kChain, int NQ, int DK, class Rows, class P>
__attribute__((always_inline)) inline void key_t3(const float* const* q, P k, int dk, __m256* t3) {
  const int n = DK > 0 ? DK : dk;
#ifdef __AVX512F__
  // The same chains as below with each pair of ymm halves (lanes 0..7, 8..15 of one of ggml's or
  // tinyBLAS's 16-lane accumulators) in one zmm: lane for lane the same operations, half the
  // instructions (a zmm fma issues about as often as a ymm one on Zen 5).
  if constexpr (kChain) {
    __m512 z[NQ];
    for (int r = 0; r < NQ; ++r) z[r] = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
      __m512 kv[1];
      Rows::template load_run16<1>(k + i, kv);
      for (int r = 0; r < NQ; ++r) z[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q[r] + i), kv[0], z[r]);
    }
    for (int r = 0; r < NQ; ++r)
      t3[r] = _mm256_add_ps(_mm512_extractf32x8_ps(z[r], 1), _mm512_castps512_ps256(z[r]));
  } else {
    __m512 acc[NQ][4];
    for (int r = 0; r < NQ; ++r)
      for (auto& x : acc[r]) x = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 64)
      for (int h = 0; h < 2; ++h) {
        __m512 kv[2];
        Rows::template load_run16<2>(k + i + 32 * h, kv);
        for (int m = 2 * h; m < 2 * h + 2; ++m)
          for (int r = 0; r < NQ; ++r)
            acc[r][m] = _mm512_fmadd_ps(_mm512_loadu_ps(q[r] + i + 16 * m), kv[m - 2 * h], acc[r][m]);
      }
    for (int r = 0; r < NQ; ++r) {
      // (0+2)+(1+3) of the 16-lane accumulators; t3 = its upper half + its lower half.
      const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][2]), _mm512_add_ps(acc[r][1], acc[r][3]));
      t3[r] = _mm256_add_ps(_mm512_extractf32x8_ps(sum, 1), _mm512_castps512_ps256(sum));
    }
  }
#else
  if constexpr (kChain) {
    __m256 lo[NQ], hi[NQ];
    for (int r = 0; r < NQ; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 16) {
      __m256 kv[2];
      Rows::template load_run<2>(k + i, kv);
      for (int r = 0; r < NQ; ++r) {
        lo[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q[r] + i), kv[0], lo[r]);
        hi[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q[r] + i + 8), kv[1], hi[r]);
      }
    }
    for (int r = 0; r < NQ; ++r) t3[r] = _mm256_add_ps(hi[r], lo[r]);
  } else {
    __m256 acc[NQ][8];
    for (int r = 0; r < NQ; ++r)
      for (auto& x : acc[r]) x = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 64)
      for (int h = 0; h < 2; ++h) {
        __m256 kv[4];
        Rows::template load_run<4>(k + i + 32 * h, kv);
        for (int j = 4 * h; j < 4 * h + 4; ++j)
          for (int r = 0; r < NQ; ++r)
            acc[r][j] = _mm256_fmadd_ps(_mm256_loadu_ps(q[r] + i + 8 * j), kv[j - 4 * h], acc[r][j]);
      }
    for (int r = 0; r < NQ; ++r) {
      const __m256* a = acc[r];
      const __m256 lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
      const __m256 hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
      t3[r] = _mm256_add_ps(hi, lo);
    }
  }
#endif
}

// Unscaled scores of NQ query rows against keys lo .. hi, eight keys per step: positions up to
// hi + 7 are written (and their key rows read).
template <bool kChain, int NQ, int DK, class Rows, bool kLocalQ = true>
void qk_scores(const float* const* q, const Rows& kr, int dk, int32_t lo, int32_t hi, float* const* scores) {
  // With DK known, the rows are copied into locals the compiler can keep in registers (the
  // score stores could otherwise alias them); without kLocalQ (a few keys per call) they are
  // read where they are.
  constexpr bool kCopy = DK > 0 && kLocalQ;
  constexpr int kLocal = kCopy ? DK : 1;
  alignas(32) float ql[NQ][kLocal];
  const float* qp[NQ];
  for (int r = 0; r < NQ; ++r) {
    if constexpr (kCopy) {
      std::copy(q[r], q[r] + DK, ql[r]);
      qp[r] = ql[r];
    } else {
      qp[r] = q[r];
    }
  }
  for (int32_t j = lo; j <= hi; j += 8) {
    __m256 u[4][NQ];
    for (int p = 0; p < 4; ++p) {
      __m256 x[NQ], y[NQ];
      key_t3<kChain, NQ, DK, Rows>(qp, kr.row(j + 2 * p), dk, x);
      key_t3<kChain, NQ, DK, Rows>(qp, kr.row(j + 2 * p + 1), dk, y);
      for (int r = 0; r < NQ; ++r) u[p][r] = pair_t6(x[r], y[r]);
    }
    for (int r = 0; r < NQ; ++r) _mm256_storeu_ps(scores[r] + j, reduce8(u[0][r], u[1][r], u[2][r], u[3][r]));
  }
}

// impl::softmax_exp over [i0, n), n and i0 multiples of 16 (chunks before i0 would add zeros).
inline double softmax_exp(const float* x, float* y, int64_t i0, int64_t n, float max) {
#ifdef __AVX512F__
  const __m512 vz = _mm512_set1_ps(max);
  double sum = 0;
  for (int64_t i = i0; i < n; i += 16) {
    const __m512 e = expf16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vz));
    _mm512_storeu_ps(y + i, e);
    sum += reduce16(_mm512_castps512_ps256(e), _mm512_extractf32x8_ps(e, 1));
  }
#else
  const __m256 vm = _mm256_set1_ps(max);
  double sum = 0;
  for (int64_t i = i0; i < n; i += 16) {
    const __m256 lo = expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    const __m256 hi = expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
    _mm256_storeu_ps(y + i, lo);
    _mm256_storeu_ps(y + i + 8, hi);
    sum += reduce16(lo, hi);
  }
#endif
  return sum;
}

// A query row rounded to fp16 (ggml converts Q to the cache's type), n % 8 == 0.
inline void round_q_fp16(const float* src, float* dst, int n) {
  for (int e = 0; e < n; e += 8)
    _mm256_storeu_ps(dst + e, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(src + e), _MM_FROUND_TO_NEAREST_INT)));
}

// One row's weights from its scores sc at key positions lo .. pos (unscaled; positions up to
// round_up(pos + 1, 16) writable): the scale (and softcap), the max, ggml's exp over chunks of 16
// counted from position 0, and the weights normalized and rounded to fp16 into pr, with zeros
// where the row's range leaves pass_lo .. pass_hi (the key range its tile shares).
inline void softmax_row(const AttnParams& p, float* sc, float* pr, int32_t lo, int32_t pos, int32_t pass_lo,
                        int32_t pass_hi) {
  const int64_t m = round_up(pos + 1, 16);
  const int64_t lo16 = lo / 16 * 16;
  for (int64_t j = lo16; j < lo; ++j) sc[j] = -INFINITY;
  for (int64_t j = pos + 1; j < m; ++j) sc[j] = -INFINITY;
  // scale (and softcap), then the max, 8 positions at a time where the softcap allows.
  float mx = -INFINITY;
  if (p.softcap > 0) {
    for (int32_t j = lo; j <= pos; ++j) {
      const float s = p.softcap * std::tanh(sc[j] * p.scale / p.softcap);
      sc[j] = s;
      mx = std::max(mx, s);
    }
  } else {
    const __m256 vscale = _mm256_set1_ps(p.scale);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int32_t j = lo;
    for (; j + 8 <= pos + 1; j += 8) {
      const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(sc + j), vscale);
      _mm256_storeu_ps(sc + j, s);
      vmax = _mm256_max_ps(vmax, s);
    }
    for (; j <= pos; ++j) {
      sc[j] *= p.scale;
      mx = std::max(mx, sc[j]);
    }
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, vmax);
    for (float x : tmp) mx = std::max(mx, x);
  }
  const float inv = static_cast<float>(1.0 / softmax_exp(sc, pr, lo16, m, mx));
  int64_t j = lo16;
#ifdef __AVX512F__
  for (; j < m; j += 16) {
    const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(pr + j), _mm512_set1_ps(inv));
    _mm512_storeu_ps(pr + j, _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)));
  }
#endif
  for (; j < m; j += 8) {
    const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(pr + j), _mm256_set1_ps(inv));
    _mm256_storeu_ps(pr + j, _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT)));
  }
  // Zero weight where this row's window leaves the pass's key range.
  for (int64_t j = pass_lo; j < lo16; ++j) pr[j] = 0.0f;
  for (int64_t j = m; j <= pass_hi; ++j) pr[j] = 0.0f;
}

// Software prefetch of bytes first .. first + n of rows j .. hi of r, a few lines per call, so that
// the fetches of the next block go out spread over the work on this one (a burst of them would
// fill the load queue and stall that work).
template <class Rows>
struct Prefetcher {
  Rows r;
  int64_t first = 0, n = 0;
  int32_t j = 0, hi = -1;
  int64_t o = 0;  // next line of row j, from the line holding byte first
  int per_call = 0;
  void reset(int32_t lo, int32_t h, int lines_per_call) {
    j = lo;
    hi = h;
    o = 0;
    per_call = lines_per_call;
  }
  int64_t lines_per_row() const { return n > 0 ? (n + 63) / 64 + 1 : 0; }  // at most (any alignment)
  // Every line of rows lo .. h at once (the first block, before there is work to spread it over).
  template <int kHint>
  void fetch_all(int32_t lo, int32_t h) {
    reset(lo, h, std::numeric_limits<int>::max());
    step<kHint>();
  }
  template <int kHint>
  void step() {
    for (int i = 0; i < per_call && j <= hi; ++i) {
      const auto a = Rows::address(r.row(j)) + static_cast<uintptr_t>(first);
      const uintptr_t line = (a & ~uintptr_t{63}) + static_cast<uintptr_t>(o);
      _mm_prefetch(reinterpret_cast<const char*>(line), static_cast<_mm_hint>(kHint));
      o += 64;
      if (line + 64 >= a + static_cast<uintptr_t>(n)) {
        o = 0;
        ++j;
      }
    }
  }
};

// One slot's chains of a tile of the weighted values: acc[row][n] = fma(w[row][k], value n of
// position k, acc[row][n]) for k = start, start + R, .. <= k1 (the order pv_slots and pv_direct
// both keep).
template <int R, int NR, int NV, class Rows>
[[gnu::always_inline]] inline void slot_chain(const float* const* w, int32_t start, int32_t k1, const Rows& vr,
                                              int e, __m256 (&acc)[NR][NV]) {
  for (int32_t k = start; k <= k1; k += R) {
    __m256 vv[NV];
    Rows::template load_run<NV>(vr.row(k) + e, vv);
    for (int i = 0; i < NR; ++i) {
      const __m256 wk = _mm256_broadcast_ss(w[i] + k);
      for (int n = 0; n < NV; ++n) acc[i][n] = _mm256_fmadd_ps(wk, vv[n], acc[i][n]);
    }
  }
}

// The dot's last additions over its 16 lane sums x (reduce16), dimension-wise.
inline __m256 reduce16_lanes(const __m256* x) {
  __m256 t3[8], t6[4];
  for (int j = 0; j < 8; ++j) t3[j] = _mm256_add_ps(x[8 + j], x[j]);
  for (int j = 0; j < 4; ++j) t6[j] = _mm256_add_ps(t3[4 + j], t3[j]);
  return _mm256_add_ps(_mm256_add_ps(t6[0], t6[2]), _mm256_add_ps(t6[1], t6[3]));
}

// One tile of the weighted values: NR rows (weights w[row], indexed by key position) times NV*8
// value dimensions from e, over key positions k0 .. k1 of the value rows vr. Each slot's chain
// is kept in slots[(r * NR + row) * NV * 8 ...]: it starts at +0 when `first`, else it goes on
// from what the previous key range left there (ranges taken in ascending order keep each
// chain's order).
template <int R, int NR, int NV, class Rows>
void pv_slots(const float* const* w, int32_t k0, int32_t k1, const Rows& vr, int e, float* slots, bool first,
              Prefetcher<Rows>* pf) {
  for (int r = 0; r < R; ++r) {
    if (pf) pf->template step<_MM_HINT_T1>();
    const int32_t start = k0 + ((r - k0) % R + R) % R;  // first position >= k0 in slot r
    float* s = slots + static_cast<int64_t>(r) * NR * NV * 8;
    if (start > k1 && !first) continue;  // nothing to add: the chain stays as it is
#ifdef __AVX512F__
    // Over f32 rows (a prompt chunk's), each pair of ymm chains as one zmm: the same lanes
    // (attention_avx512.cpp).
    if constexpr (NV % 2 == 0 && std::is_same_v<Rows, F32Rows>) {
      constexpr int NZ = NV / 2;
      __m512 acc[NR][NZ];
      for (int i = 0; i < NR; ++i)
        for (int n = 0; n < NZ; ++n) acc[i][n] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(s + (i * NZ + n) * 16);
      for (int32_t k = start; k <= k1; k += R) {
        __m512 vv[NZ];
        Rows::template load_run16<NZ>(vr.row(k) + e, vv);
        for (int i = 0; i < NR; ++i) {
          const __m512 wk = _mm512_set1_ps(w[i][k]);
          for (int n = 0; n < NZ; ++n) acc[i][n] = _mm512_fmadd_ps(wk, vv[n], acc[i][n]);
        }
      }
      for (int i = 0; i < NR; ++i)
        for (int n = 0; n < NZ; ++n) _mm512_storeu_ps(s + (i * NZ + n) * 16, acc[i][n]);
      continue;
    }
#endif
    __m256 acc[NR][NV];
    for (int i = 0; i < NR; ++i)
      for (int n = 0; n < NV; ++n) acc[i][n] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(s + (i * NV + n) * 8);
    slot_chain<R, NR, NV>(w, start, k1, vr, e, acc);
    for (int i = 0; i < NR; ++i)
      for (int n = 0; n < NV; ++n) _mm256_storeu_ps(s + (i * NV + n) * 8, acc[i][n]);
  }
}

// Combines the slots of pv_slots into out[row][e ..]: the dot's final additions, dimension-wise.
template <int R, int NR, int NV>
void pv_combine(const float* slots, float* const* out, int e) {
  for (int i = 0; i < NR; ++i)
    for (int n = 0; n < NV; ++n) {
      auto slot = [&](int r) { return _mm256_loadu_ps(slots + ((static_cast<int64_t>(r) * NR + i) * NV + n) * 8); };
      __m256 x[16];
      for (int l = 0; l < 16; ++l) {
        if constexpr (R == 64)  // accumulator j holds slots 16j + l: (0+2)+(1+3)
          x[l] = _mm256_add_ps(_mm256_add_ps(slot(l), slot(32 + l)), _mm256_add_ps(slot(16 + l), slot(48 + l)));
        else
          x[l] = slot(l);
      }
      _mm256_storeu_ps(out[i] + e + 8 * n, reduce16_lanes(x));
    }
}

// pv_slots and pv_combine of one range of key positions k0 .. k1 (first and last at once: a
// decode step's values in one block, up to kDecodePvBlock positions), NV * 8 value dimensions
// from e, without the slot state: per l = 0 .. 15 the four slot chains l, 16 + l, 32 + l, 48 + l
// run in registers (each from +0, its positions ascending: pv_slots' operations) and only their
// sum x[l] = (s[l] + s[32 + l]) + (s[16 + l] + s[48 + l]) goes to memory; then pv_combine's
// additions over x. The same operations on the same values in the same order, so the same bits;
// pv_slots' 64 slots of NR * 32 floats (up to 48 KB) no longer pass through L1 and back. One-token
// decode steps at positions 0-127, Zen 4 VM, nineteenth session: the weighted values went from
// 2.9% to 1.6% of a one-thread SmolLM2 Q8_0 step's samples (perf), and the 1.2B decoded 1.3%
// faster (per-step alternation).
template <int NR, int NV, class Rows>
void pv_direct(const float* const* w, int32_t k0, int32_t k1, const Rows& vr, int e, float* const* out) {
  alignas(32) float xs[16][NR][NV][8];
  for (int l = 0; l < 16; ++l) {
    // The chain of slot r: +0, then its positions k = r (mod 64) in k0 .. k1.
    auto chain = [&](int r, __m256 (&acc)[NR][NV]) {
      for (int i = 0; i < NR; ++i)
        for (int n = 0; n < NV; ++n) acc[i][n] = _mm256_setzero_ps();
      slot_chain<64, NR, NV>(w, k0 + ((r - k0) % 64 + 64) % 64, k1, vr, e, acc);
    };
    __m256 a[NR][NV], c[NR][NV];
    chain(l, a);
    chain(32 + l, c);
    for (int i = 0; i < NR; ++i)
      for (int n = 0; n < NV; ++n) a[i][n] = _mm256_add_ps(a[i][n], c[i][n]);
    __m256 b[NR][NV];
    chain(16 + l, b);
    chain(48 + l, c);
    for (int i = 0; i < NR; ++i)
      for (int n = 0; n < NV; ++n)
        _mm256_store_ps(xs[l][i][n], _mm256_add_ps(a[i][n], _mm256_add_ps(b[i][n], c[i][n])));
  }
  for (int i = 0; i < NR; ++i)
    for (int n = 0; n < NV; ++n) {
      __m256 x[16];
      for (int l = 0; l < 16; ++l) x[l] = _mm256_load_ps(xs[l][i][n]);
      _mm256_storeu_ps(out[i] + e + 8 * n, reduce16_lanes(x));
    }
}

// Floats of slot state one tile keeps per block of kPvWidth * 8 value dimensions (the last,
// narrower block of a head size that is not a multiple of it uses the start of its share).
constexpr int64_t kSlotFloats = int64_t{64} * kPvRows * 8 * kPvWidth;

// The slots of every block of value dimensions of a tile over key positions k0 .. k1
// (state: dv / 8 / kPvWidth rounded up shares of kSlotFloats), and when `last` their sums into
// out[row][..].
template <int R, int NR, class Rows>
void pv_rows(const float* const* w, int32_t k0, int32_t k1, const Rows& vr, int dv, float* state, bool first,
             bool last, float* const* out, Prefetcher<Rows>* pf) {
  // One block of a decode step (the cache read in place): without the slot state (pv_direct).
  // Registers per chain: NR * NV ymm, three chains' worth live.
  if constexpr (R == 64 && !std::is_same_v<Rows, F32Rows>) {
    if (first && last) {
      constexpr int NV = NR <= 4 && kPvWidth >= 4 ? 2 : 1;
      int e = 0;
      for (; e + 8 * NV <= dv; e += 8 * NV) pv_direct<NR, NV>(w, k0, k1, vr, e, out);
      for (; e < dv; e += 8) pv_direct<NR, 1>(w, k0, k1, vr, e, out);
      return;
    }
  }
  int e = 0;
  for (; e + 8 * kPvWidth <= dv; e += 8 * kPvWidth, state += kSlotFloats) {
    pv_slots<R, NR, kPvWidth>(w, k0, k1, vr, e, state, first, pf);
    if (last) pv_combine<R, NR, kPvWidth>(state, out, e);
  }
  for (; e < dv; e += 8, state += kSlotFloats) {
    pv_slots<R, NR, 1>(w, k0, k1, vr, e, state, first, pf);
    if (last) pv_combine<R, NR, 1>(state, out, e);
  }
}

// Blocks of value dimensions pv_rows takes for head size dv (of kPvWidth * 8, then of 8), and
// the slot-state floats of one tile it walks through.
inline int value_blocks(int dv) { return dv / (8 * kPvWidth) + dv % (8 * kPvWidth) / 8; }
inline int64_t tile_state_floats(int dv) { return value_blocks(dv) * kSlotFloats; }

// out[row][e] for n_rows <= kPvRows rows: the f16 dot of the weights w[row] over key positions
// k0 .. k1 with value dimension e, in the lane order of ggml_vec_dot_f16 (R = 64) or of the
// tinyBLAS chain (R = 16), taken over key ranges in ascending order: `first` starts the chains,
// `last` writes the sums.
template <int R, class Rows>
void weighted_values(const float* const* w, int n_rows, int32_t k0, int32_t k1, const Rows& vr, int dv,
                     float* state, bool first, bool last, float* const* out,
                     Prefetcher<Rows>* pf = nullptr) {
  switch (n_rows) {
    case 1: return pv_rows<R, 1>(w, k0, k1, vr, dv, state, first, last, out, pf);
    case 2: return pv_rows<R, 2>(w, k0, k1, vr, dv, state, first, last, out, pf);
    case 3: return pv_rows<R, 3>(w, k0, k1, vr, dv, state, first, last, out, pf);
    case 4: return pv_rows<R, 4>(w, k0, k1, vr, dv, state, first, last, out, pf);
    case 5: return pv_rows<R, 5>(w, k0, k1, vr, dv, state, first, last, out, pf);
    default: return pv_rows<R, 6>(w, k0, k1, vr, dv, state, first, last, out, pf);
  }
}

// Values first .. first + n_vals of rows [k_lo, k_lo + n) of one layer's cache (type t, rows of
// width values), converted to f32 at dst (row stride n_vals): Q8_0 as d * q, exact in float.
void gather_rows(const void* cache, KvType t, int64_t width, int64_t first, int64_t n_vals, const AttnSequence& sq,
                 int block_size, int32_t k_lo, int32_t n, float* dst) {
  for (int32_t j = 0; j < n; ++j) {
    const uint8_t* src = kv_at(cache, t, width, cache_slot(sq.block_table, block_size, k_lo + j), first);
    float* d = dst + static_cast<int64_t>(j) * n_vals;
    if (t == KvType::kF16) {
      const auto* h = reinterpret_cast<const uint16_t*>(src);
      for (int64_t e = 0; e < n_vals; e += 8) _mm256_storeu_ps(d + e, load_h8(h + e));
      continue;
    }
    for (int64_t e = 0; e < n_vals; e += 32, src += 34) {
      uint16_t dh;
      std::memcpy(&dh, src, 2);
      const __m256 scale = _mm256_set1_ps(_cvtsh_ss(dh));
      for (int i = 0; i < 32; i += 8) {
        const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 2 + i)));
        _mm256_storeu_ps(d + e + i, _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale));
      }
    }
  }
}

template <bool kChain, int NQ, class Rows>
void qk_dispatch(const float* const* q, const Rows& kr, int dk, int32_t lo, int32_t hi, float* const* scores) {
  if (dk == 64)
    qk_scores<kChain, NQ, 64>(q, kr, dk, lo, hi, scores);
  else
    qk_scores<kChain, NQ, 0>(q, kr, dk, lo, hi, scores);
}

// Per-thread buffers of a work item's rows: q rounded to fp16, scores, weights and slot state,
// and each row's pointers into them and into the output.
struct RowBuffers {
  aligned_vector<float> scores, probs, qh, state;
  std::vector<const float*> qrows;
  std::vector<float*> srows, prows, orows;
  void resize(int rows, int64_t n_row, int dk, int64_t state_floats) {
    for (auto* v : {&srows, &prows, &orows}) v->resize(static_cast<size_t>(rows));
    qrows.resize(static_cast<size_t>(rows));
    scores.resize(static_cast<size_t>(rows * n_row));
    probs.resize(static_cast<size_t>(rows * n_row));
    qh.resize(static_cast<size_t>(rows * dk));
    state.resize(static_cast<size_t>(state_floats));
  }
};
inline RowBuffers& row_buffers() {
  thread_local RowBuffers b;
  return b;
}

// Keys per block of the q.k phase (32 KB of f32 keys at head size 64: an L1's worth, read by
// every row of the pass while it is there), and per block of the weighted values (those
// rows' tiles share each block of values from L2).
constexpr int32_t kQkBlock = 128;
constexpr int32_t kPvBlock = 512;
// The scores and weights of one pass (8 bytes per row and key) stay within this: a chunk of
// queries then takes one or two passes over the keys and values instead of one per query.
constexpr int64_t kPassBytes = int64_t{4} << 20;

// The passes of one work item over its key rows kr and value rows vr, converted to f32 (off 0;
// each KV head adds its own offset): chunks of queries, and decode steps that attend_decode does
// not take (a head size that is not a multiple of 64). A pass takes as many queries as
// kPassBytes allows and, per KV head, computes all its rows' scores key block by key block,
// their softmax, then their weighted values tile by tile, value block by value block.
void attend_rows(const AttnArgs& a, const AttnItem& w, F32Rows kr, F32Rows vr) {
  const AttnParams& p = *a.p;
  const AttnSequence& sq = *w.seq;
  const int group = p.n_heads / p.n_kv_heads;
  const int dk = p.head_dim_k, dv = p.head_dim_v;
  const bool chain = sq.n_queries >= 2;  // see attend_scalar
  const bool batched = chain || dk % 64 == 0;
  const int32_t last_pos = sq.pos0 + w.q_end - 1;
  const int64_t n_row = round_up(last_pos + 1, 16) + 8;  // + the 8-key steps' overhang
  const int n_q = w.q_end - w.q_begin;
  const int max_pass = static_cast<int>(std::clamp<int64_t>(kPassBytes / (8 * group * n_row), 1, n_q));
  const int n_passes = (n_q + max_pass - 1) / max_pass;
  const int per_pass = (n_q + n_passes - 1) / n_passes;  // queries per pass, balanced
  const int rows = per_pass * group;
  const int max_tiles = (rows + kPvRows - 1) / kPvRows;
  const int64_t tile_state = tile_state_floats(dv);
  RowBuffers& rb = row_buffers();
  rb.resize(rows, n_row, dk, max_tiles * tile_state);
  auto& [scores, probs, qh, state, qrows, srows, prows, orows] = rb;
  auto window_lo = [&](int32_t pos) { return p.window > 0 ? std::max(0, pos - p.window + 1) : 0; };
  for (int32_t q0 = w.q_begin; q0 < w.q_end; q0 += per_pass) {
    const int nq = std::min<int>(per_pass, w.q_end - q0);
    const int32_t pass_lo = window_lo(sq.pos0 + q0);
    const int32_t pass_hi = sq.pos0 + q0 + nq - 1;
    for (int kvh = w.kv_head; kvh < (w.kv_head_end > 0 ? w.kv_head_end : p.n_kv_heads); ++kvh) {
      const float** qrow = qrows.data();
      float** srow = srows.data();
      float** prow = prows.data();
      float** orow = orows.data();
      F32Rows kh = kr, vh = vr;
      kh.off = static_cast<int64_t>(kvh - kr.head0) * dk;
      vh.off = static_cast<int64_t>(kvh - vr.head0) * dv;
      // The rows: query t's heads of this KV head, its q rounded to fp16.
      for (int t = 0; t < nq; ++t) {
        const int64_t row = sq.row + q0 + t;
        for (int g = 0; g < group; ++g) {
          const int i = t * group + g;
          const int head = kvh * group + g;
          float* qd = qh.data() + static_cast<int64_t>(i) * dk;
          round_q_fp16(a.q + row * a.ldq + static_cast<int64_t>(head) * dk, qd, dk);
          qrow[i] = qd;
          srow[i] = scores.data() + static_cast<int64_t>(i) * n_row;
          prow[i] = probs.data() + static_cast<int64_t>(i) * n_row;
          orow[i] = a.out + row * a.ldo + static_cast<int64_t>(head) * dv;
        }
      }
      // Scores, a block of keys at a time for every row (each score is its own dot: the order
      // of blocks and rows changes no bit).
      for (int32_t b0 = pass_lo / 8 * 8; b0 <= pass_hi; b0 += kQkBlock) {
        const int32_t b1 = b0 + kQkBlock - 1;
        for (int t = 0; t < nq; ++t) {
          const int32_t pos = sq.pos0 + q0 + t;
          const int32_t j0 = std::max(window_lo(pos), b0), j1 = std::min(pos, b1);
          if (j0 > j1) continue;
          const float* const* qt = qrow + t * group;
          float* const* st = srow + t * group;
          if (!batched) {  // ggml order with a head size that is not a multiple of 64
            for (int g = 0; g < group; ++g)
              for (int32_t j = j0; j <= j1; ++j) st[g][j] = dot_ggml(qt[g], kh.row(j), dk);
            continue;
          }
          int g = 0;
          for (; g + kQkRows <= group; g += kQkRows) {
            if (chain)
              qk_dispatch<true, kQkRows>(qt + g, kh, dk, j0, j1, st + g);
            else
              qk_dispatch<false, kQkRows>(qt + g, kh, dk, j0, j1, st + g);
          }
          for (; g < group; ++g) {
            if (chain)
              qk_dispatch<true, 1>(qt + g, kh, dk, j0, j1, st + g);
            else
              qk_dispatch<false, 1>(qt + g, kh, dk, j0, j1, st + g);
          }
        }
      }
      for (int t = 0; t < nq; ++t) {
        const int32_t pos = sq.pos0 + q0 + t;
        for (int g = 0; g < group; ++g)
          softmax_row(p, srow[t * group + g], prows[t * group + g], window_lo(pos), pos, pass_lo, pass_hi);
      }
      // Weighted values: with several tiles, a block of values at a time for every tile (each
      // slot's chain then runs over the blocks in order: the same bits); one tile takes the
      // whole range at once.
      const int n_rows = nq * group;
      const int n_tiles = (n_rows + kPvRows - 1) / kPvRows;
      const int32_t block = n_tiles > 1 ? kPvBlock : pass_hi - pass_lo + 1;
      for (int32_t c0 = pass_lo; c0 <= pass_hi; c0 += block) {
        const int32_t c1 = std::min(pass_hi, c0 + block - 1);
        for (int r0 = 0, tile = 0; tile < n_tiles; ++tile) {
          const int r1 = n_rows * (tile + 1) / n_tiles;
          float* st = state.data() + tile * tile_state;
          if (chain)
            weighted_values<16>(prow + r0, r1 - r0, c0, c1, vh, dv, st, c0 == pass_lo, c1 == pass_hi, orow + r0);
          else
            weighted_values<64>(prow + r0, r1 - r0, c0, c1, vh, dv, st, c0 == pass_lo, c1 == pass_hi, orow + r0);
          r0 = r1;
        }
      }
    }
  }
}


// How far ahead a decode step fetches its keys (bytes of key rows, into L1: 64 positions of the
// 1.2B's 1 KB rows were more than a 48 KB L1 holds, and its cold-cache attention took 57-63 us
// a layer at 128 positions instead of 39-47; fifteenth session, Zen 5), and the positions per
// block of its weighted values (the item's value rows, read from L2 by every KV head's slot
// chains while the next block is fetched).
constexpr int64_t kDecodeQkAheadBytes = 16384;
constexpr int32_t kDecodePvBlock = 256;

// q.k of the n rows q (the group of one KV head) against the 8 keys j .. j + 7, up to
// kDecodeQkRows rows per pass, q read in place (each score is its own dot: the grouping changes
// no bit).
#ifdef __AVX512VL__
constexpr int kDecodeQkRows = 4;
#else
constexpr int kDecodeQkRows = 1;
#endif
template <class Rows>
void qk_step(const float* const* q, int n, const Rows& kr, int dk, int32_t j, float* const* scores) {
  auto pass = [&]<int NQ>(int g) {
    if (dk == 64)
      qk_scores<false, NQ, 64, Rows, false>(q + g, kr, dk, j, j, scores + g);
    else
      qk_scores<false, NQ, 0, Rows, false>(q + g, kr, dk, j, j, scores + g);
  };
  int g = 0;
  for (; g + kDecodeQkRows <= n; g += kDecodeQkRows) pass.template operator()<kDecodeQkRows>(g);
  switch (n - g) {
    case 3: if constexpr (kDecodeQkRows > 3) pass.template operator()<3>(g); break;
    case 2: if constexpr (kDecodeQkRows > 2) pass.template operator()<2>(g); break;
    case 1: pass.template operator()<1>(g); break;
    default: break;
  }
}

// One query (a decode step) against the item's KV heads, with ggml's 64-lane order (dk % 64 ==
// 0, one query: see attend_scalar): the same operations as attend_rows, in an order that reads
// the cache as it lies. The scores take a block of keys at a time for every KV head of the item
// (whole cache rows, the next block fetched meanwhile); the weighted values a block of
// positions at a time for every KV head, each head's slot chains going on from block to block.
template <class KRows, class VRows>
void attend_decode(const AttnArgs& a, const AttnItem& w, KRows kr, VRows vr) {
  const AttnParams& p = *a.p;
  const AttnSequence& sq = *w.seq;
  const int group = p.n_heads / p.n_kv_heads;
  const int dk = p.head_dim_k, dv = p.head_dim_v;
  const int h0 = w.kv_head, h1 = w.kv_head_end > 0 ? w.kv_head_end : p.n_kv_heads;
  const int n_kv = h1 - h0;
  const int hb = w.head_end > 0 ? w.head_begin : h0 * group, he = w.head_end > 0 ? w.head_end : h1 * group;
  const int rows = he - hb;
  // Rows of KV head kvh: hr(kvh) .. hr(kvh + 1) - 1.
  auto hr = [&](int kvh) { return std::clamp(kvh * group, hb, he) - hb; };
  const int32_t pos = sq.pos0 + w.q_begin;
  const int32_t lo = p.window > 0 ? std::max(0, pos - p.window + 1) : 0;
  const int64_t n_row = round_up(pos + 1, 16) + 8;  // + the 8-key steps' overhang
  const int tiles = (group + kPvRows - 1) / kPvRows;  // weighted-value tiles per KV head
  const int64_t tile_state = tile_state_floats(dv);
  RowBuffers& rb = row_buffers();
  rb.resize(rows, n_row, dk, n_kv * tiles * tile_state);
  auto& [scores, probs, qh, state, qrows, srows, prows, orows] = rb;
  const int64_t row = sq.row + w.q_begin;
  for (int i = 0; i < rows; ++i) {
    const int head = hb + i;
    float* qd = qh.data() + static_cast<int64_t>(i) * dk;
    round_q_fp16(a.q + row * a.ldq + static_cast<int64_t>(head) * dk, qd, dk);
    qrows[static_cast<size_t>(i)] = qd;
    srows[static_cast<size_t>(i)] = scores.data() + static_cast<int64_t>(i) * n_row;
    prows[static_cast<size_t>(i)] = probs.data() + static_cast<int64_t>(i) * n_row;
    orows[static_cast<size_t>(i)] = a.out + row * a.ldo + static_cast<int64_t>(head) * dv;
  }
  auto head_rows = [&](auto r, int kvh, int d) {
    r.off = static_cast<int64_t>(kvh - r.head0) * d;
    return r;
  };
  const int64_t k_first = KRows::bytes(static_cast<int64_t>(h0 - kr.head0) * dk);
  const int64_t k_bytes = KRows::bytes(static_cast<int64_t>(n_kv) * dk);
  const int64_t v_first = VRows::bytes(static_cast<int64_t>(h0 - vr.head0) * dv);
  const int64_t v_bytes = VRows::bytes(static_cast<int64_t>(n_kv) * dv);
  // Scores: 8 keys at a time (from lo rounded down to 8; up to pos + the overhang), every KV
  // head of the item on them before the next 8, the keys `ahead` positions on fetched into L1
  // (kDecodeQkAheadBytes of rows), and in the last steps the values of the first block of the
  // weighted values (kDecodePvBlock positions) into L2, 8 positions per step of 8 keys.
  Prefetcher<KRows> kpf{kr, k_first, k_bytes};
  Prefetcher<VRows> vpf{vr, v_first, v_bytes};
  const int32_t k0 = lo / 8 * 8;
  const int k_lines = static_cast<int>(8 * kpf.lines_per_row());
  const int32_t ahead = static_cast<int32_t>(std::max<int64_t>(8, kDecodeQkAheadBytes / (k_lines * 8) / 8 * 8));
  kpf.template fetch_all<_MM_HINT_T0>(lo, std::min(pos, k0 + ahead - 1));
  kpf.reset(k0 + ahead, pos, k_lines);
  const int32_t v_end = std::min(pos, lo + kDecodePvBlock - 1);
  vpf.reset(lo, v_end, static_cast<int>(8 * vpf.lines_per_row()));
  // The values go out in the last steps (one step per 8 of their positions), so that the keys
  // read after them do not push them out of L2 before the weighted values read them (fetched in
  // the first steps, at 1024 positions a 1.2B layer took 204-223 us cold instead of 190-193;
  // SmolLM2's 70 instead of 59).
  const int32_t v_from = std::max(k0, pos - (v_end - lo + 8) / 8 * 8);
  for (int32_t b0 = k0; b0 <= pos; b0 += 8) {
    kpf.template step<_MM_HINT_T0>();
    if (b0 >= v_from) vpf.template step<_MM_HINT_T1>();
    const int32_t j0 = std::max(lo, b0);
    for (int kvh = h0; kvh < h1; ++kvh)
      qk_step(qrows.data() + hr(kvh), hr(kvh + 1) - hr(kvh), head_rows(kr, kvh, dk), dk, j0, srows.data() + hr(kvh));
  }
  for (int i = 0; i < rows; ++i) softmax_row(p, srows[static_cast<size_t>(i)], prows[static_cast<size_t>(i)], lo, pos, lo, pos);
  // Weighted values, a block of positions at a time; the next block is fetched during this one,
  // a few lines per slot chain (the first block's lines that the scores' steps did not reach
  // are fetched before it).
  vpf.template fetch_all<_MM_HINT_T1>(vpf.j, v_end);
  const int chains = 64 * n_kv * value_blocks(dv);
  const int v_lines = static_cast<int>((kDecodePvBlock * vpf.lines_per_row() + chains - 1) / chains);
  for (int32_t c0 = lo; c0 <= pos; c0 += kDecodePvBlock) {
    const int32_t c1 = std::min(pos, c0 + kDecodePvBlock - 1);
    vpf.reset(c1 + 1, std::min(pos, c1 + kDecodePvBlock), v_lines);
    for (int kvh = h0; kvh < h1; ++kvh) {
      const VRows vh = head_rows(vr, kvh, dv);
      const int n = hr(kvh + 1) - hr(kvh), tiles_h = (n + kPvRows - 1) / kPvRows;
      for (int tile = 0; tile < tiles_h; ++tile) {
        const int r0 = hr(kvh) + n * tile / tiles_h, r1 = hr(kvh) + n * (tile + 1) / tiles_h;
        float* st = state.data() + static_cast<int64_t>((kvh - h0) * tiles + tile) * tile_state;
        weighted_values<64>(prows.data() + r0, r1 - r0, c0, c1, vh, dv, st, c0 == lo, c1 == pos, orows.data() + r0,
                            &vpf);
      }
    }
  }
}

// One work item covers a range of KV heads of its sequence (usually all of them). A chunk of
// queries reads each key many times: its rows (the item's KV heads) are converted to f32 once.
// One query (a decode step) reads each key once per pass: it reads the cache in place, fp16 or
// Q8_0 (converting each 8 values as it loads them).
void attend_simd(const AttnArgs& a, const AttnItem& w) {
  const AttnParams& p = *a.p;
  const AttnSequence& sq = *w.seq;
  const int dk = p.head_dim_k, dv = p.head_dim_v;
  const int64_t kw = static_cast<int64_t>(p.n_kv_heads) * dk, vw = static_cast<int64_t>(p.n_kv_heads) * dv;
  const int32_t first_pos = sq.pos0 + w.q_begin;
  const int32_t last_pos = sq.pos0 + w.q_end - 1;
  const int32_t k_lo = p.window > 0 ? std::max(0, first_pos - p.window + 1) : 0;
  const int32_t n_keys = last_pos + 1 - k_lo;
  if (decodes_by_query_heads(p, sq)) {
    // Row pointers per position, and 8 more (the 8-key steps' overhang) at a row of zeros.
    thread_local std::vector<const uint8_t*> krows, vrows;
    thread_local std::vector<uint8_t> zeros;
    zeros.resize(static_cast<size_t>(kv_bytes(p.k_type, kw)));  // never written: new elements are zeros
    krows.resize(static_cast<size_t>(n_keys + 8));
    vrows.resize(static_cast<size_t>(n_keys));
    for (int32_t j = 0; j < n_keys; ++j) {
      const int64_t slot = cache_slot(sq.block_table, p.block_size, k_lo + j);
      krows[static_cast<size_t>(j)] = kv_at(a.k_cache, p.k_type, kw, slot, 0);
      vrows[static_cast<size_t>(j)] = kv_at(a.v_cache, p.v_type, vw, slot, 0);
    }
    for (int j = 0; j < 8; ++j) krows[static_cast<size_t>(n_keys + j)] = zeros.data();
    auto with_values = [&](auto kr) {
      if (p.v_type == KvType::kF16)
        attend_decode(a, w, kr, F16Rows{vrows.data(), k_lo, 0, 0});
      else
        attend_decode(a, w, kr, Q8Rows{vrows.data(), k_lo, 0, 0});
    };
    if (p.k_type == KvType::kF16)
      with_values(F16Rows{krows.data(), k_lo, 0, 0});
    else
      with_values(Q8Rows{krows.data(), k_lo, 0, 0});
    return;
  }
  const int h0 = w.kv_head, h1 = w.kv_head_end > 0 ? w.kv_head_end : p.n_kv_heads;
  const int64_t ik = static_cast<int64_t>(h1 - h0) * dk, iv = static_cast<int64_t>(h1 - h0) * dv;
  thread_local aligned_vector<float> keys, vals;
  keys.resize(static_cast<size_t>((n_keys + 8) * ik));
  std::fill(keys.begin() + static_cast<int64_t>(n_keys) * ik, keys.end(), 0.0f);
  vals.resize(static_cast<size_t>(n_keys * iv));
  gather_rows(a.k_cache, p.k_type, kw, static_cast<int64_t>(h0) * dk, ik, sq, p.block_size, k_lo, n_keys, keys.data());
  gather_rows(a.v_cache, p.v_type, vw, static_cast<int64_t>(h0) * dv, iv, sq, p.block_size, k_lo, n_keys, vals.data());
  attend_rows(a, w, F32Rows{keys.data(), ik, k_lo, 0, h0}, F32Rows{vals.data(), iv, k_lo, 0, h0});
}

}  // namespace
}  // namespace fennec::kernels
