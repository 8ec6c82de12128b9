// Packed products (repack.h) with AVX-512 VNNI: one zmm lane per output row of a 16-row group.
// Per block, the 16 rows' quants are unpacked once per tile of T tokens into the eight step
// vectors of repack_layout.h (nibble masks, Q5_0's 5th bits through a byte shuffle and a bit
// test, the FP4 codes through a 16-byte table); each token then takes 8 vpdpbusd with its
// activation bytes broadcast, a convert, a multiply of the row scales by its scale and an fma
// (twice each for NVFP4's two scales). The integer start value -offset * (sum of the activation
// bytes) turns the unsigned u into the signed products exactly.
//
// GCC 12 reports its own _mm512 intrinsics' undefined start values as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "core/aligned_vector.h"
#include "kernels/cpu/cpu_features.h"

#include "core/float_convert.h"
#include "kernels/cpu/repack.h"
#include "kernels/cpu/repack_layout.h"
#include "quant/blocks.h"

namespace fennec::kernels {
namespace {

using quant::BlockQ8_0;

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// s + the vpdpbusd products of steps j0 .. j1-1 (w[j] with the activation bytes y + 4j). With
// few tokens there are no other chains to overlap, so two run side by side and meet in one add:
// integer sums, the same whatever the order.
template <int T>
inline __m512i dot_steps(__m512i s, const __m512i* w, const int8_t* y, int j0, int j1) {
  if constexpr (T <= 2) {
    __m512i s2 = _mm512_setzero_si512();
    int j = j0;
    for (; j + 2 <= j1; j += 2) {
      s = _mm512_dpbusd_epi32(s, w[j], bcast4(y + 4 * j));
      s2 = _mm512_dpbusd_epi32(s2, w[j + 1], bcast4(y + 4 * j + 4));
    }
    if (j < j1) s = _mm512_dpbusd_epi32(s, w[j], bcast4(y + 4 * j));
    return _mm512_add_epi32(s, s2);
  } else {
    for (int j = j0; j < j1; ++j) s = _mm512_dpbusd_epi32(s, w[j], bcast4(y + 4 * j));
    return s;
  }
}

// w + value in byte k of lane r where bit 4j+k of the lane's 32-bit plane word is set (step
// j's columns 4j..4j+3): byte j/2 of the word, bit 4(j%2)+k, found by a byte shuffle and a test.
inline __m512i add_plane(__m512i plane, int j, __m512i w, char value) {
  const __m512i pick = _mm512_add_epi8(_mm512_set1_epi8(static_cast<char>(j / 2)),
                                       _mm512_set_epi8(12, 12, 12, 12, 8, 8, 8, 8, 4, 4, 4, 4, 0, 0, 0, 0,  //
                                                       12, 12, 12, 12, 8, 8, 8, 8, 4, 4, 4, 4, 0, 0, 0, 0,  //
                                                       12, 12, 12, 12, 8, 8, 8, 8, 4, 4, 4, 4, 0, 0, 0, 0,  //
                                                       12, 12, 12, 12, 8, 8, 8, 8, 4, 4, 4, 4, 0, 0, 0, 0));
  const int sh = 4 * (j % 2);
  const __m512i bits = _mm512_set1_epi32(static_cast<int>((1u << sh) | (2u << sh) << 8 | (4u << sh) << 16 | (8u << sh) << 24));
  const __mmask64 set = _mm512_test_epi8_mask(_mm512_shuffle_epi8(plane, pick), bits);
  return _mm512_mask_add_epi8(w, set, w, _mm512_set1_epi8(value));
}

// The eight steps of one packed block.
template <class L>
[[gnu::always_inline]] inline void unpack(const uint8_t* q, __m512i w[8]) {
  if constexpr (L::kChunks == 8) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) w[j] = _mm512_load_si512(q + 64 * j);
  } else {
    const __m512i m = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m512i c = _mm512_load_si512(q + 64 * j);
      w[j] = _mm512_and_si512(c, m);
      w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(c, 4), m);
    }
    if constexpr (L::kLut) {
      const __m512i lut = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(packed::kE2M1Unsigned)));
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) w[j] = _mm512_shuffle_epi8(lut, w[j]);
    }
    if constexpr (L::kQh) {
      const __m512i qh = _mm512_load_si512(q + 64 * L::kChunks);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) w[j] = add_plane(qh, j, w[j], 0x10);
    }
  }
}

// Q4_1 (kMin) in ggml's order (repack.cpp, gemm_scalar_lanes): 8 accumulators per token, one
// per packed step (ggml's float lane), and the m terms' own chain; T <= 2 keeps them in registers.
// Each 64-byte chunk of the block gives its two steps (low and high nibbles) right where they
// are used, so that the steps, the 16 accumulators and the tokens' scales fit the 32 registers
// (with the block unpacked first GCC spilled accumulators), and the activations' fp16 scales
// are converted by F16C (exact, as fp16_to_f32). The block's prefetch goes out in two halves,
// at chunks 0 and 2 (Prefetcher::step_part): SmolLM2 Q4_1 decoded 10-11% faster than with one
// burst per block, and 1% slower with four quarters (Zen 5 VM, sixteenth session).
template <class L, int T>
void tile_lanes(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, int64_t row0, __mmask16 mask,
                const packed::Prefetcher* pf, int64_t step0) {
  static_assert(L::kChunks == 4 && !L::kQh && !L::kLut, "the Q4_1 layout");
  __m512 acc[T][8], summs[T];
  const quant::BlockQ8_1* act[T];
#pragma GCC unroll 2
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 8
    for (auto& x : acc[t]) x = _mm512_setzero_ps();
    summs[t] = _mm512_setzero_ps();
    act[t] = reinterpret_cast<const quant::BlockQ8_1*>(a.act + (t0 + t) * a.act_stride);
  }
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int64_t b = 0; b < a.nb; ++b) {
    const packed::BlockAt at = packed::block_at<L>(a.nb, b);
    const uint8_t* q = grp + at.quants;
    const auto* sc = reinterpret_cast<const uint16_t*>(grp + at.scales);
    const __m512 dx = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(sc)));
    const __m512 mx = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(sc + kPackRows)));
    __m512 dd[T];
#pragma GCC unroll 2
    for (int t = 0; t < T; ++t) {
      const quant::BlockQ8_1& y = act[t][b];
      dd[t] = _mm512_mul_ps(dx, _mm512_set1_ps(_cvtsh_ss(y.d)));
      summs[t] = _mm512_fmadd_ps(mx, _mm512_set1_ps(_cvtsh_ss(y.s)), summs[t]);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m512i c = _mm512_load_si512(q + 64 * j);
      if (pf && j % 2 == 0) pf->step_part<2>(step0 + b, j / 2);
      const __m512i lo = _mm512_and_si512(c, m4), hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), m4);
#pragma GCC unroll 2
      for (int t = 0; t < T; ++t) {
        const int8_t* y = act[t][b].qs;
        const __m512i pl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, bcast4(y + 4 * j));
        const __m512i ph = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, bcast4(y + 4 * (j + 4)));
        acc[t][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pl), dd[t], acc[t][j]);
        acc[t][j + 4] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ph), dd[t], acc[t][j + 4]);
      }
    }
  }
#pragma GCC unroll 2
  for (int t = 0; t < T; ++t) {
    const __m512 lo = _mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][4]), _mm512_add_ps(acc[t][2], acc[t][6]));
    const __m512 hi = _mm512_add_ps(_mm512_add_ps(acc[t][1], acc[t][5]), _mm512_add_ps(acc[t][3], acc[t][7]));
    _mm512_mask_storeu_ps(a.y + (t0 + t) * a.ldy + row0, mask, _mm512_add_ps(_mm512_add_ps(lo, hi), summs[t]));
  }
}

// The 16 rows' scales of one packed block (scale half h for NVFP4) as floats: fp16, or bf16 for
// MXFP4 (repack_layout.h).
template <class L>
inline __m512 block_scales(const uint8_t* sc_bytes, int h = 0) {
  const auto* sc = reinterpret_cast<const uint16_t*>(sc_bytes) + h * kPackRows;
  const __m256i raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(sc));
  if constexpr (L::kBf16Scale)
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  else
    return _mm512_cvtph_ps(raw);
}

template <class L, int T>
void tile(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, int64_t row0,
          __mmask16 mask, const packed::Prefetcher* pf, int64_t step0) {
  if constexpr (L::kMin) {  // ggml's order: two tokens per pass (tile_lanes)
    for (int t = 0; t < T; t += 2) {
      const packed::Prefetcher* p = t == 0 ? pf : nullptr;
      if (t + 2 <= T)
        tile_lanes<L, 2>(a, grp, t0 + t, row0, mask, p, step0);
      else
        tile_lanes<L, 1>(a, grp, t0 + t, row0, mask, p, step0);
    }
    return;
  }
  __m512 acc[T];
  const BlockQ8_0* act[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    acc[t] = _mm512_setzero_ps();
    act[t] = reinterpret_cast<const BlockQ8_0*>(a.act + (t0 + t) * a.act_stride);
  }
  const float* ad = a.act_d + t0 * a.nb;
  const int32_t* as = a.act_sum + 2 * t0 * a.nb;
  for (int64_t b = 0; b < a.nb; ++b) {
    __m512i w[8];
    if (pf) pf->step(step0 + b);
    const packed::BlockAt at = packed::block_at<L>(a.nb, b);
    unpack<L>(grp + at.quants, w);
    __m512 dw[L::kScales];
#pragma GCC unroll 2
    for (int s = 0; s < L::kScales; ++s) dw[s] = block_scales<L>(grp + at.scales, s);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const int8_t* y = act[t][b].qs;
      const int32_t* sum = as + 2 * (t * a.nb + b);
      const __m512 da = _mm512_set1_ps(ad[t * a.nb + b]);
      if constexpr (L::kScales == 1) {
        const __m512i s = dot_steps<T>(_mm512_set1_epi32(-L::kOffset * (sum[0] + sum[1])), w, y, 0, 8);
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw[0], da), acc[t]);
      } else {
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          const __m512i s = dot_steps<T>(_mm512_set1_epi32(-L::kOffset * sum[h]), w, y, 4 * h, 4 * h + 4);
          acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw[h], da), acc[t]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(a.y + (t0 + t) * a.ldy + row0, mask, acc[t]);
}

// Prefetches lines [l0, l1) of the 64-byte lines at pf into L1 (none where pf is 0).
template <int64_t l0, int64_t l1>
inline void prefetch_part(uintptr_t pf) {
  if (pf == 0) return;
#pragma GCC unroll 32
  for (int64_t l = l0; l < l1; ++l) packed::prefetch_line<true>(pf + 64 * l);
}

// One packed block of one token from its unpacked steps w: the exact dot (its start value
// -offset * activation sum), then acc = fma(float(dot), d_w * d_a, acc), per scale half for
// NVFP4: tile<L, T>'s bits (dot_steps<T>'s chains, as tile<L, T> runs them).
template <class L, int T = 1>
[[gnu::always_inline]] inline __m512 decode_dots(const __m512i* w, const uint8_t* sc_bytes, const int8_t* y,
                                                 const int32_t* sum, float da, __m512 acc) {
  const __m512 vda = _mm512_set1_ps(da);
#pragma GCC unroll 2
  for (int h = 0; h < L::kScales; ++h) {
    const __m512 dw = block_scales<L>(sc_bytes, h);
    const int32_t start = L::kScales == 1 ? -L::kOffset * (sum[0] + sum[1]) : -L::kOffset * sum[h];
    const int j0 = L::kScales == 1 ? 0 : 4 * h, j1 = L::kScales == 1 ? 8 : j0 + 4;
    const __m512i s = dot_steps<T>(_mm512_set1_epi32(start), w, y, j0, j1);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, vda), acc);
  }
  return acc;
}

// The products of one to eight tokens (a decode step of up to eight sequences, or a short
// prompt), tile<L, T>'s bits: the call's groups are one stream of block pairs (repack_layout.h),
// walked with a pointer, and each pair prefetches its own bytes at the plan's distances ahead,
// written out per line. (Prefetcher::step and block_at cost a third of the uops of tile<L, 1>
// per block, and from L2 it ran at about twice the DRAM bandwidth of one core; inside a decode
// step that left the stream well short of a plain read: bench/micro/README.md.) On the Zen 5 VM
// (sixteenth session), alternating variants in one process:
// - the pair's L1 prefetches go out in four parts spread over its work, not in one burst: a
//   burst of 9 (Q4_0) or 17 (Q8_0) prefetches per pair decoded the 1.2B Q4_0 5-8% slower at
//   one thread and SmolLM2 Q8_0 15-23% slower (two halves gained about half as much, and one
//   prefetch after each quant load less);
// - each block's quants are loaded (unpacked) before the previous block's dots, so that more
//   of the stream's loads are in flight: the 1.2B 4-5% faster at one and two threads, SmolLM2
//   Q8_0 2%; where the four parts sit around the loads and dots made no difference.
// Each block's steps then feed the T tokens' dots in turn. Two to eight tokens took tile<L, T>
// (one prefetch burst per block) until the eighteenth session; on the Zen 4 VM, alternating in
// one process, the 1.2B Q4_0's products alone read 21.3 -> 26.0 GB/s at two tokens, 19.2 -> 22.3
// at three and 5-10% more at five to eight, where they are bound by the dots (bench/micro/README.md).
template <class L, int T = 1>
void decode_pairs(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  constexpr int64_t kBlock = packed::block_bytes<L>(), kScaleBytes = packed::scale_bytes<L>();
  constexpr int64_t kPair = packed::pair_bytes<L>(), kLines = kPair / 64;
  constexpr int64_t kQ1 = kLines / 4, kQ2 = kLines / 2, kQ3 = 3 * kLines / 4;
  const int64_t gbytes = packed::group_stride<L>(a.nb);
  const packed::PrefetchPlan plan = packed::prefetch_plan();
  const int64_t far = plan.far, near = plan.near;
  const uint8_t* stop = a.w + g1 * gbytes;
  const bool last_call = g1 * kPackRows >= a.rows && a.run_on_end != nullptr;
  const auto limit = reinterpret_cast<uintptr_t>(last_call ? std::max(stop, a.run_on_end) : stop);
  const BlockQ8_0* act[T];
  const float* ad[T];
  const int32_t* as[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
    act[t] = reinterpret_cast<const BlockQ8_0*>(a.act + t * a.act_stride);
    ad[t] = a.act_d + t * a.nb;
    as[t] = a.act_sum + 2 * t * a.nb;
  }
  const int64_t pairs = a.nb / 2;
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = a.w + g * gbytes;
    const int64_t row0 = g * kPackRows;
    const int64_t nr = std::min<int64_t>(kPackRows, a.rows - row0);
    __m512 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    __m512i w0[8], w1[8];  // the steps of the pair's first and second block
    if (pairs > 0) unpack<L>(grp, w0);
    for (int64_t p = 0; p < pairs; ++p) {
      const uint8_t* q = grp + p * kPair;
      const auto at = reinterpret_cast<uintptr_t>(q);
      // pf: the pair's lines near bytes ahead, prefetched in four parts; 0 where they would run
      // past limit (a call's last pairs), which take them in one bounded loop.
      uintptr_t pf = 0;
      if (near > 0) {
        if (at + near + kPair <= limit)
          pf = at + near;
        else
          for (int64_t l = 0; l < kLines && at + near + 64 * l < limit; ++l) packed::prefetch_line<true>(at + near + 64 * l);
      }
      if (far > 0)
        for (int64_t l = 0; l < kLines && at + far + 64 * l < limit; ++l) packed::prefetch_line<false>(at + far + 64 * l);
      const int64_t b = 2 * p;
      prefetch_part<0, kQ1>(pf);
      unpack<L>(q + kBlock, w1);
      prefetch_part<kQ1, kQ2>(pf);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t)
        acc[t] = decode_dots<L, T>(w0, q + 2 * kBlock, act[t][b].qs, as[t] + 2 * b, ad[t][b], acc[t]);
      prefetch_part<kQ2, kQ3>(pf);
      if (p + 1 < pairs) unpack<L>(q + kPair, w0);
      prefetch_part<kQ3, kLines>(pf);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t)
        acc[t] = decode_dots<L, T>(w1, q + 2 * kBlock + kScaleBytes, act[t][b + 1].qs, as[t] + 2 * b + 2,
                                   ad[t][b + 1], acc[t]);
    }
    if (a.nb % 2) {  // the odd last block: its scales follow it
      const int64_t b = a.nb - 1;
      const uint8_t* q = grp + pairs * kPair;
      unpack<L>(q, w0);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t)
        acc[t] = decode_dots<L, T>(w0, q + kBlock, act[t][b].qs, as[t] + 2 * b, ad[t][b], acc[t]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
      _mm512_mask_storeu_ps(a.y + t * a.ldy + row0, static_cast<__mmask16>((1u << nr) - 1), acc[t]);
  }
}

// Prefill on AMX-INT8 tiles (amx_usable()), for the types with one scale per block and no min
// (Q4_0, Q5_0, Q8_0, MXFP4). A block's eight steps (repack_layout.h) are already the layout of
// an AMX B tile: 8 rows of 64 bytes, row j holding 4 bytes of each of the 16 rows. Each block of
// a group is unpacked once into a scratch buffer as signed x = u - offset; then per block and 16
// tokens at a time, tdpbssd gives C = A . B (A: the tokens' 32 activation bytes): the exact
// integer dot of every token and row, the same integer as the VNNI path's. Each token's row of C
// then goes into its accumulator as tile<L, T> does it (acc = fma(float(dot), d_w * d_a, acc)):
// the same bits. Tiles: C in 0/1, A in 2/3, B in 4/5.
template <class L>
constexpr bool kAmx = L::kScales == 1 && !L::kMin;

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

inline void amx_configure() {
  static thread_local bool done = false;
  if (done) return;
  TileConfig c;
  for (int i = 0; i < 2; ++i) {
    c.rows[i] = 16, c.colsb[i] = 64;          // C: 16 tokens x 16 rows, int32
    c.rows[2 + i] = 16, c.colsb[2 + i] = 32;  // A: 16 tokens x 32 bytes
    c.rows[4 + i] = 8, c.colsb[4 + i] = 64;   // B: 8 steps x 16 rows x 4 bytes
  }
  _tile_loadconfig(&c);
  done = true;
}

// acc[t] += row t of a block's C as tile<L, T> adds a block; ad: the 16 tokens' scales of the block.
inline void amx_accumulate(__m512* acc, const int32_t* c, __m512 dw, const float* ad) {
#pragma GCC unroll 16
  for (int t = 0; t < 16; ++t) {
    const __m512 s = _mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * t));
    acc[t] = _mm512_fmadd_ps(s, _mm512_mul_ps(dw, _mm512_set1_ps(ad[t])), acc[t]);
  }
}

// Tile C = A . B for one block: A (16 tokens x 32 bytes) from act, B (8 x 64 bytes) from x. (GCC's
// tile intrinsics take the tile numbers as literal tokens: hence macros.)
#define FENNEC_AMX_DOT(C, A, B, act, x) \
  do {                                   \
    _tile_loadd(A, act, 32);             \
    _tile_loadd(B, x, 64);               \
    _tile_zero(C);                       \
    _tile_dpbssd(C, A, B);               \
  } while (0)

// Tokens [0, n) of groups [g0, g1), n a multiple of 16.
template <class L>
void amx_gemm(const PackedGemmArgs& a, int64_t g0, int64_t g1, int64_t n) {
  amx_configure();
  const int64_t gbytes = packed::group_stride<L>(a.nb);
  alignas(64) int32_t c[2][16 * 16];
  static thread_local std::vector<uint8_t, CacheAlignedAllocator<uint8_t>> scratch;
  scratch.resize(static_cast<size_t>(512 * a.nb));
  auto* x = reinterpret_cast<__m512i*>(scratch.data());
  const __m512i off = _mm512_set1_epi8(static_cast<char>(L::kOffset));
  // The activations as A tiles (packed_act_tiles: in place, each of a tile's 16 rows would be a
  // 32-byte piece of a 34-byte block, often across two cache lines), laid out by the caller once
  // per product or here.
  const uint8_t* act_tiles = a.act_tiles;
  const float* act_tile_d = a.act_tile_d;
  if (!act_tiles) {
    static thread_local std::vector<uint8_t, CacheAlignedAllocator<uint8_t>> tiles;
    static thread_local std::vector<float, CacheAlignedAllocator<float>> scales;
    tiles.resize(static_cast<size_t>(n * a.nb * 32));
    scales.resize(static_cast<size_t>(n * a.nb));
    for (int64_t t = 0; t < n; ++t) packed_act_tiles(a.act + t * a.act_stride, a.nb, t, tiles.data(), scales.data());
    act_tiles = tiles.data();
    act_tile_d = scales.data();
  }
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = a.w + g * gbytes;
    const int64_t row0 = g * kPackRows;
    const int64_t nr = std::min<int64_t>(kPackRows, a.rows - row0);
    const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
    for (int64_t b = 0; b < a.nb; ++b) {
      __m512i w[8];
      unpack<L>(grp + packed::block_at<L>(a.nb, b).quants, w);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) _mm512_store_si512(x + 8 * b + j, _mm512_sub_epi8(w[j], off));
    }
    for (int64_t t0 = 0; t0 < n; t0 += 16) {
      __m512 acc[16];
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
      const uint8_t* act = act_tiles + t0 * a.nb * 32;
      const float* ad = act_tile_d + t0 * a.nb;
      // Two blocks at a time: the tile unit works on the second while the vector units add the
      // first. (Keeping two pairs in flight, C in tiles 0/1 and 6/7, measured no faster.)
      int64_t b = 0;
      for (; b + 2 <= a.nb; b += 2) {
        FENNEC_AMX_DOT(0, 2, 4, act + b * 512, x + 8 * b);
        FENNEC_AMX_DOT(1, 3, 5, act + (b + 1) * 512, x + 8 * (b + 1));
        _tile_stored(0, c[0], 64);
        amx_accumulate(acc, c[0], block_scales<L>(grp + packed::block_at<L>(a.nb, b).scales), ad + 16 * b);
        _tile_stored(1, c[1], 64);
        amx_accumulate(acc, c[1], block_scales<L>(grp + packed::block_at<L>(a.nb, b + 1).scales), ad + 16 * (b + 1));
      }
      if (b < a.nb) {
        FENNEC_AMX_DOT(0, 2, 4, act + b * 512, x + 8 * b);
        _tile_stored(0, c[0], 64);
        amx_accumulate(acc, c[0], block_scales<L>(grp + packed::block_at<L>(a.nb, b).scales), ad + 16 * b);
      }
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) _mm512_mask_storeu_ps(a.y + (t0 + t) * a.ldy + row0, mask, acc[t]);
    }
  }
}
#undef FENNEC_AMX_DOT

template <class L>
void gemm(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  constexpr int kT = 8;
  if constexpr (!L::kMin) {
    switch (a.n_tokens) {  // decode steps of up to eight sequences
      case 1: return decode_pairs<L, 1>(a, g0, g1);
      case 2: return decode_pairs<L, 2>(a, g0, g1);
      case 3: return decode_pairs<L, 3>(a, g0, g1);
      case 4: return decode_pairs<L, 4>(a, g0, g1);
      case 5: return decode_pairs<L, 5>(a, g0, g1);
      case 6: return decode_pairs<L, 6>(a, g0, g1);
      case 7: return decode_pairs<L, 7>(a, g0, g1);
      case 8: return decode_pairs<L, 8>(a, g0, g1);
      default: break;
    }
  }
  int64_t t_amx = 0;  // tokens [0, t_amx) on AMX tiles
  if constexpr (kAmx<L>) {
    if (packed_amx_wanted(a.n_tokens)) {
      t_amx = a.n_tokens / 16 * 16;
      amx_gemm<L>(a, g0, g1, t_amx);
      if (t_amx == a.n_tokens) return;
    }
  }
  const int64_t gbytes = packed::group_stride<L>(a.nb);
  const auto pf = packed::Prefetcher::of_call(a, gbytes, g0, g1);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = a.w + g * gbytes;
    const int64_t row0 = g * kPackRows;
    const int64_t nr = std::min<int64_t>(kPackRows, a.rows - row0);
    const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
    // The first token tile over this group prefetches (the one pass when there are few tokens).
    const int64_t step0 = (g - g0) * a.nb;
    int64_t t = t_amx;
    for (; t + kT <= a.n_tokens; t += kT) tile<L, kT>(a, grp, t, row0, mask, t == 0 ? &pf : nullptr, step0);
    const packed::Prefetcher* p = t == 0 ? &pf : nullptr;
    switch (a.n_tokens - t) {
      case 7: tile<L, 7>(a, grp, t, row0, mask, p, step0); break;
      case 6: tile<L, 6>(a, grp, t, row0, mask, p, step0); break;
      case 5: tile<L, 5>(a, grp, t, row0, mask, p, step0); break;
      case 4: tile<L, 4>(a, grp, t, row0, mask, p, step0); break;
      case 3: tile<L, 3>(a, grp, t, row0, mask, p, step0); break;
      case 2: tile<L, 2>(a, grp, t, row0, mask, p, step0); break;
      case 1: tile<L, 1>(a, grp, t, row0, mask, p, step0); break;
      default: break;
    }
  }
}

// The Q8_K activation rows of a K-quant tile's T tokens and its T accumulators (16 rows each).
template <int T>
struct KTile {
  const quant::BlockQ8K* act[T];
  __m512 acc[T];
  KTile(const PackedGemmArgs& a, int64_t t0) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      act[t] = reinterpret_cast<const quant::BlockQ8K*>(a.act + (t0 + t) * a.act_stride);
      acc[t] = _mm512_setzero_ps();
    }
  }
  void store(const PackedGemmArgs& a, int64_t t0, int64_t row0, __mmask16 mask) const {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(a.y + (t0 + t) * a.ldy + row0, mask, acc[t]);
  }
};

// Q4_K (repack_layout.h): per super-block, sub-block j's 8 steps are the low or high nibbles of
// pair j/2; its exact dot is scaled by vpmulld with the rows' 6-bit scales, and the mins meet
// the activation sums through vpmaddwd on (min 2p, min 2p+1) int16 pairs. The super-block's
// prefetch (36 lines) goes out in four parts over its sub-blocks, as Q6_K's (52 lines): Gemma 3
// 270M Q4_K_M decoded 16-22% faster than with one burst per super-block (Zen 5 VM, sixteenth
// session; eight parts measured the same).
template <int T>
void q4k_tile(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, int64_t row0, __mmask16 mask,
              const packed::Prefetcher* pf, int64_t step0) {
  using packed::Q4K;
  KTile<T> k(a, t0);
  const quant::BlockQ8K* const* act = k.act;
  __m512* acc = k.acc;
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int64_t sb = 0; sb < a.nb; ++sb) {
    const uint8_t* blk = grp + sb * Q4K::kBytes;
    __m512i isum[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) isum[t] = _mm512_setzero_si512();
    for (int j = 0; j < 8; ++j) {
      if (pf && j % 2 == 0) pf->step_part<4>(step0 + sb, j / 2);
      __m512i w[8];
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) {
        const __m512i c = _mm512_load_si512(blk + 512 * (j / 2) + 64 * k);
        w[k] = _mm512_and_si512(j % 2 ? _mm512_srli_epi16(c, 4) : c, m4);
      }
      const __m512i sc = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + Q4K::kScales + 16 * j)));
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const int8_t* y = act[t][sb].qs + 32 * j;
        const __m512i s = dot_steps<T>(_mm512_setzero_si512(), w, y, 0, 8);
        isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(s, sc));
      }
    }
    __m512i mins[4];
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p)
      mins[p] = _mm512_cvtepu8_epi16(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + Q4K::kMins + 32 * p)));
    const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + Q4K::kD)));
    const __m512 dmin = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + Q4K::kDmin)));
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const int16_t* bs = act[t][sb].bsums;
      __m512i imin = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int p = 0; p < 4; ++p) {
        const uint32_t lo = static_cast<uint16_t>(bs[4 * p] + bs[4 * p + 1]);
        const uint32_t hi = static_cast<uint16_t>(bs[4 * p + 2] + bs[4 * p + 3]);
        imin = _mm512_add_epi32(imin, _mm512_madd_epi16(mins[p], _mm512_set1_epi32(static_cast<int>(lo | hi << 16))));
      }
      const __m512 da = _mm512_set1_ps(act[t][sb].d);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, da), acc[t]);
      acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imin), _mm512_mul_ps(dmin, da), acc[t]);
    }
  }
  k.store(a, t0, row0, mask);
}

// Q6_K (repack_layout.h): per sub-block, the 8 steps are nibbles plus two bit planes; each
// 16-column group's exact dot starts at -32 * (its activation sum) and is scaled by vpmulld.
template <int T>
void q6k_tile(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, int64_t row0, __mmask16 mask,
              const packed::Prefetcher* pf, int64_t step0) {
  using packed::Q6K;
  KTile<T> k(a, t0);
  const quant::BlockQ8K* const* act = k.act;
  __m512* acc = k.acc;
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int64_t sb = 0; sb < a.nb; ++sb) {
    const uint8_t* blk = grp + sb * Q6K::kBytes;
    __m512i isum[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) isum[t] = _mm512_setzero_si512();
    for (int j = 0; j < 8; ++j) {
      if (pf && j % 2 == 0) pf->step_part<4>(step0 + sb, j / 2);
      const uint8_t* sub = blk + Q6K::kSub * j;
      __m512i w[8];
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m512i v = _mm512_load_si512(sub + 64 * c);
        w[c] = _mm512_and_si512(v, m4);
        w[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
      }
      const __m512i b4 = _mm512_load_si512(sub + 256), b5 = _mm512_load_si512(sub + 320);
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) w[k] = add_plane(b5, k, add_plane(b4, k, w[k], 0x10), 0x20);
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const int gi = 2 * j + h;
        const __m512i sc = _mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + Q6K::kScales + 16 * gi)));
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          const int8_t* y = act[t][sb].qs + 16 * gi;
          const __m512i s = dot_steps<T>(_mm512_set1_epi32(-32 * act[t][sb].bsums[gi]), w + 4 * h, y, 0, 4);
          isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(s, sc));
        }
      }
    }
    const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + Q6K::kD)));
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(d, _mm512_set1_ps(act[t][sb].d)), acc[t]);
  }
  k.store(a, t0, row0, mask);
}

// The K-quant products: groups, then tiles of K::kTokens tokens, of 4, and the rest.
struct Q4KTiles {
  static constexpr int64_t kBytes = packed::Q4K::kBytes;
  static constexpr int kTokens = 4;  // 8 measured 9% slower (fifteenth session, Zen 5)
  template <int T>
  static void run(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, int64_t row0, __mmask16 mask,
                  const packed::Prefetcher* pf, int64_t step0) {
    q4k_tile<T>(a, grp, t0, row0, mask, pf, step0);
  }
};
struct Q6KTiles {
  static constexpr int64_t kBytes = packed::Q6K::kBytes;
  // Q6_K's steps cost more to make (the two bit planes) than its dots: 8 tokens share them
  // (fifteenth session, Zen 5, 576 x 1536 at 32 and 512 tokens: 391-393 -> 471-482 GFLOP/s at
  // one thread, 720-766 -> 883-911 at two, against 4 tokens).
  static constexpr int kTokens = 8;
  template <int T>
  static void run(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, int64_t row0, __mmask16 mask,
                  const packed::Prefetcher* pf, int64_t step0) {
    q6k_tile<T>(a, grp, t0, row0, mask, pf, step0);
  }
};

template <class K>
void kquant_gemm(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  constexpr int kT = K::kTokens;
  const auto pf = packed::Prefetcher::of_call(a, a.nb * K::kBytes, g0, g1);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = a.w + g * a.nb * K::kBytes;
    const int64_t row0 = g * kPackRows;
    const int64_t nr = std::min<int64_t>(kPackRows, a.rows - row0);
    const __mmask16 mask = static_cast<__mmask16>((1u << nr) - 1);
    const int64_t step0 = (g - g0) * a.nb;
    int64_t t = 0;
    for (; t + kT <= a.n_tokens; t += kT) K::template run<kT>(a, grp, t, row0, mask, t == 0 ? &pf : nullptr, step0);
    if constexpr (kT > 4)
      for (; t + 4 <= a.n_tokens; t += 4) K::template run<4>(a, grp, t, row0, mask, t == 0 ? &pf : nullptr, step0);
    const packed::Prefetcher* p = t == 0 ? &pf : nullptr;
    switch (a.n_tokens - t) {
      case 3: K::template run<3>(a, grp, t, row0, mask, p, step0); break;
      case 2: K::template run<2>(a, grp, t, row0, mask, p, step0); break;
      case 1: K::template run<1>(a, grp, t, row0, mask, p, step0); break;
      default: break;
    }
  }
}

}  // namespace

const PackedGemmOps& packed_gemm_ops_avx512() {
  static const PackedGemmOps ops{&gemm<packed::Q4_0>,  &gemm<packed::Q4_1>, &gemm<packed::Q5_0>,  &gemm<packed::Q8_0>,
                                 &gemm<packed::Mxfp4>, &gemm<packed::Nvfp4>, &kquant_gemm<Q4KTiles>,
                                 &kquant_gemm<Q6KTiles>};
  return ops;
}

}  // namespace fennec::kernels
