// Packed products (repack.h) with AVX2: the 16-row group as two halves of 8 rows, one ymm lane
// per row. vpmaddubsw + vpmaddwd form the exact integer sums:
//   types with an offset (unsigned u <= 31 times signed activations): four steps of int16 pair
//   sums stay below 4 * 2 * 31 * 127 = 31496, so they are added as int16 and widened once per
//   16 columns (Q4_0, u <= 15: once per 32); the start value -offset * (sum of the activation
//   bytes) removes the offset;
//   Q8_0: signed times signed through vpsignb (|x| times y with x's sign; x + 128 could saturate
//   vpmaddubsw), widened per step.
// Q4_0, Q8_0 and the FP4 types run step-major over both halves at once: each activation
// broadcast feeds both. Q4_0 and Q8_0 prefill take 4 tokens per pass with the integer part of a
// block written as one asm statement (q4_tokens, q8_tokens): from intrinsics GCC hoisted the
// steps' loads and spilled the int16 sums. Decode: nibble_decode, q8_pass; the FP4 types:
// nibble_pass. Q5_0 a half at a time (half_tile), 8-token prefill tiles (q5_tokens). Q4_1:
// ggml's float lanes, one token a half at a time (half_tile_lanes), 4-token prefill tiles a lane
// pair at a time (q41_tokens).
// The float steps are repack.h's, so the bits equal the scalar and AVX-512 paths'.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <type_traits>

#include "core/float_convert.h"
#include "kernels/cpu/repack.h"
#include "kernels/cpu/repack_layout.h"
#include "quant/blocks.h"

namespace fennec::kernels {
namespace {

using quant::BlockQ8_0;

// The products' software prefetch (repack_layout.h) without its far stream into L2: on the AMD
// Zen 3 measured (bench/micro/README.md), the L1 stream 4 KB ahead alone decoded the 1.2B Q4_0
// faster than both, and the far stream's loop cost 20-30% of a product running from L2. The
// K-quants' steps (2.3 KB) take no L1 stream: they keep the L2 one.
constexpr bool kFar = false;

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// w + value in byte k of lane r where bit 4j+k of the lane's 32-bit plane word is set.
inline __m256i add_plane(__m256i plane, int j, __m256i w, char value) {
  const __m256i lanes = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12,  //
                                         0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
  const int sh = 4 * (j % 2);
  const __m256i bits = _mm256_set1_epi32(static_cast<int>((1u << sh) | (2u << sh) << 8 | (4u << sh) << 16 | (8u << sh) << 24));
  const __m256i bytes = _mm256_shuffle_epi8(plane, _mm256_add_epi8(lanes, _mm256_set1_epi8(static_cast<char>(j / 2))));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bits), bits);
  return _mm256_or_si256(w, _mm256_and_si256(set, _mm256_set1_epi8(value)));
}

// The eight steps of half h (rows 8h..8h+7) of one packed Q5_0 block: nibbles plus the 5th bits.
template <class L>
inline void unpack(const uint8_t* q, int h, __m256i w[8]) {
  static_assert(L::kChunks == 4 && L::kQh && !L::kLut);
  q += 32 * h;
  const __m256i m = _mm256_set1_epi8(0x0F);
  for (int j = 0; j < 4; ++j) {
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * j));
    w[j] = _mm256_and_si256(c, m);
    w[j + 4] = _mm256_and_si256(_mm256_srli_epi16(c, 4), m);
  }
  const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * L::kChunks));
  for (int j = 0; j < 8; ++j) w[j] = add_plane(qh, j, w[j], 0x10);
}

// The scales of rows 8h .. 8h+7 in a block's scales at p, as float (dw[s] for scale s).
template <class L>
inline void row_scales(const uint8_t* p, int h, __m256 dw[L::kScales]) {
  const auto* sc = reinterpret_cast<const uint16_t*>(p);
  for (int s = 0; s < L::kScales; ++s) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + s * kPackRows + 8 * h));
    if constexpr (L::kBf16Scale)
      dw[s] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
    else
      dw[s] = _mm256_cvtph_ps(raw);
  }
}

// Q5_0, rows 8h .. 8h+7 of the group for tokens t0 .. t0+T-1, into out[T][8]. A block's eight
// steps (nibbles plus the 5th-bit plane, the costly part) are unpacked once into an L1 buffer
// that every token's vpmaddubsw read as memory operands, so that up to 8 tokens share them
// without holding them in registers. u <= 31: four steps of int16 pair sums stay below
// 4 * 2 * 31 * 127 = 31496, so each 16-column half has its own.
template <class L, int T>
void half_tile(const PackedGemmArgs& a, const uint8_t* grp, int h, int64_t t0, float* out,
               const packed::Prefetcher* pf, int64_t step0) {
  static_assert(L::kQh && L::kChunks == 4 && L::kScales == 1 && !L::kMin);
  __m256 acc[T];
  const BlockQ8_0* act[T];
  for (int t = 0; t < T; ++t) {
    acc[t] = _mm256_setzero_ps();
    act[t] = reinterpret_cast<const BlockQ8_0*>(a.act + (t0 + t) * a.act_stride);
  }
  const float* ad = a.act_d + t0 * a.nb;
  const int32_t* as = a.act_sum + 2 * t0 * a.nb;
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) __m256i wb[8];
  for (int64_t b = 0; b < a.nb; ++b) {
    if (pf) pf->step<kFar>(step0 + b);
    const packed::BlockAt at = packed::block_at<L>(a.nb, b);
    __m256i w[8];
    unpack<L>(grp + at.quants, h, w);
    const __m256i* ws = w;  // one token (a decode step): from registers
    if constexpr (T > 1) {
      for (int j = 0; j < 8; ++j) wb[j] = w[j];
      asm volatile("" : : "r"(wb) : "memory");  // the tokens read wb from memory, not registers
      ws = wb;
    }
    __m256 dw[L::kScales];
    row_scales<L>(grp + at.scales, h, dw);
    for (int t = 0; t < T; ++t) {
      const int8_t* y = act[t][b].qs;
      const int32_t* sum = as + 2 * (t * a.nb + b);
      __m256i s16[2];
      for (int hh = 0; hh < 2; ++hh) {
        s16[hh] = _mm256_maddubs_epi16(ws[4 * hh], bcast4(y + 16 * hh));
        for (int j = 4 * hh + 1; j < 4 * hh + 4; ++j) s16[hh] = _mm256_add_epi16(s16[hh], _mm256_maddubs_epi16(ws[j], bcast4(y + 4 * j)));
      }
      const __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_madd_epi16(s16[0], ones), _mm256_madd_epi16(s16[1], ones)),
                                         _mm256_set1_epi32(-L::kOffset * (sum[0] + sum[1])));
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw[0], _mm256_set1_ps(ad[t * a.nb + b])), acc[t]);
    }
  }
  for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + 8 * t, acc[t]);
}

// The nibble types: Q4_0 and the FP4 types. Q5_0's bit planes made it slower in nibble_pass than
// in half_tile (measured), and Q4_1 keeps ggml's float lanes (half_tile_lanes).
template <class L>
constexpr bool kNibble = L::kChunks == 4 && !L::kMin && !L::kQh;

// The FP4 types (MXFP4, NVFP4: a table maps each nibble to u <= 24), step-major over the whole
// 16-row group (both 8-row halves, so a decode step reads each weight line in one pass): chunk j
// of a block gives steps j (low nibbles, columns 4j..4j+3) and j + 4 (high, 16+4j..), unpacked
// once for the pass's T tokens; each activation broadcast feeds both halves. Per token and half,
// the vpmaddubsw pair sums of the low and of the high steps add up as int16 apart
// (4 * 2 * 24 * 127 fits; NVFP4 needs them apart anyway for its two scales); one vpmaddwd per
// sum widens to int32. Writes out[h][t][8].
template <class L, int T>
void nibble_pass(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, float* out, const packed::Prefetcher* pf,
                 int64_t step0) {
  static_assert(kNibble<L> && L::kLut);
  constexpr int NH = 2;
  __m256 acc[T][NH];
  const BlockQ8_0* act[T];
  for (int t = 0; t < T; ++t) {
    for (int hh = 0; hh < NH; ++hh) acc[t][hh] = _mm256_setzero_ps();
    act[t] = reinterpret_cast<const BlockQ8_0*>(a.act + (t0 + t) * a.act_stride);
  }
  const float* ad = a.act_d + t0 * a.nb;
  const int32_t* as = a.act_sum + 2 * t0 * a.nb;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t b = 0; b < a.nb; ++b) {
    if (pf) pf->step<kFar>(step0 + b);
    const packed::BlockAt at = packed::block_at<L>(a.nb, b);
    const uint8_t* q = grp + at.quants;
    __m256i s[T][NH][2];
    for (int j = 0; j < 4; ++j) {
      asm volatile("" ::: "memory");  // keeps each step's loads in its step (GCC hoists them all and spills)
      for (int hh = 0; hh < NH; ++hh) {
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * j + 32 * hh));
        const __m256i lut =
            _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(packed::kE2M1Unsigned)));
        const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(c, m4));
        const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(c, 4), m4));
        for (int t = 0; t < T; ++t) {
          const int8_t* y = act[t][b].qs;
          const __m256i pl = _mm256_maddubs_epi16(lo, bcast4(y + 4 * j));
          const __m256i ph = _mm256_maddubs_epi16(hi, bcast4(y + 16 + 4 * j));
          s[t][hh][0] = j == 0 ? pl : _mm256_add_epi16(s[t][hh][0], pl);
          s[t][hh][1] = j == 0 ? ph : _mm256_add_epi16(s[t][hh][1], ph);
        }
      }
    }
    const __m256i ones = _mm256_set1_epi16(1);
    for (int hh = 0; hh < NH; ++hh) {
      __m256 dw[L::kScales];
      row_scales<L>(grp + at.scales, hh, dw);
      for (int t = 0; t < T; ++t) {
        const int32_t* sum = as + 2 * (t * a.nb + b);
        const __m256 da = _mm256_set1_ps(ad[t * a.nb + b]);
        if constexpr (L::kScales == 1) {
          __m256i i = _mm256_add_epi32(_mm256_madd_epi16(s[t][hh][0], ones), _mm256_set1_epi32(-L::kOffset * (sum[0] + sum[1])));
          i = _mm256_add_epi32(i, _mm256_madd_epi16(s[t][hh][1], ones));
          acc[t][hh] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(dw[0], da), acc[t][hh]);
        } else {
          for (int k = 0; k < 2; ++k) {
            const __m256i i = _mm256_add_epi32(_mm256_madd_epi16(s[t][hh][k], ones), _mm256_set1_epi32(-L::kOffset * sum[k]));
            acc[t][hh] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(dw[k], da), acc[t][hh]);
          }
        }
      }
    }
  }
  for (int hh = 0; hh < NH; ++hh)
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + 8 * (hh * T + t), acc[t][hh]);
}

// The float sums of a pass over both halves for T tokens (acc[t][h]) and the tokens' activation
// bytes (the qs of their Q8_0 rows; block b at + b * 34). store() writes out[h][t][8].
template <int T>
struct TokenSums {
  __m256 acc[T][2];
  const int8_t* act[T];
  TokenSums(const PackedGemmArgs& a, int64_t t0) {
    for (int t = 0; t < T; ++t) {
      acc[t][0] = acc[t][1] = _mm256_setzero_ps();
      act[t] = reinterpret_cast<const int8_t*>(a.act + (t0 + t) * a.act_stride) + offsetof(BlockQ8_0, qs);
    }
  }
  void store(float* out) const {
    for (int h = 0; h < 2; ++h)
      for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + 8 * (h * T + t), acc[t][h]);
  }
};

// Q5_0, eight tokens, both halves (prefill). A block's unpacked steps (nibbles plus the 5th-bit
// plane, the costly part) of both halves go to an L1 buffer once for the eight tokens; then per
// pair of tokens one asm statement reads them (vmovdqa) and adds each token's vpmaddubsw pair
// sums as int16, steps 0-3 and 4-7 apart per half (u <= 31: 4 * 2 * 31 * 127 = 31496 fits):
// 12 ymm registers. The float part per token and half: half_tile's.
#define Q5_STEP(J, S, OP)                                                                        \
  "vmovdqa " #J "*32(%[w]), %[w0]\n\t"                                                          \
  "vmovdqa 256+" #J "*32(%[w]), %[w1]\n\t"                                                      \
  "vpbroadcastd " #J "*4(%[y0]), %[bc]\n\t" OP("%[s0" S "]", "%[w0]") OP("%[s1" S "]", "%[w1]") \
  "vpbroadcastd " #J "*4(%[y1]), %[bc]\n\t" OP("%[s2" S "]", "%[w0]") OP("%[s3" S "]", "%[w1]")
#define Q5_SET(S, W) "vpmaddubsw %[bc], " W ", " S "\n\t"
#define Q5_ADD(S, W) "vpmaddubsw %[bc], " W ", %[p]\n\tvpaddw %[p], " S ", " S "\n\t"
template <class L>
void q5_tokens(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, float* out, const packed::Prefetcher* pf,
               int64_t step0) {
  static_assert(L::kQh && L::kChunks == 4 && L::kScales == 1 && !L::kMin);
  constexpr int T = 8;
  TokenSums<T> ts(a, t0);
  auto& [acc, act] = ts;
  const float* ad = a.act_d + t0 * a.nb;
  const int32_t* as = a.act_sum + 2 * t0 * a.nb;
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) __m256i wb[2][8];
  for (int64_t b = 0; b < a.nb; ++b) {
    if (pf) pf->step<kFar>(step0 + b);
    const packed::BlockAt at = packed::block_at<L>(a.nb, b);
    for (int h = 0; h < 2; ++h) {
      __m256i w[8];
      unpack<L>(grp + at.quants, h, w);
      for (int j = 0; j < 8; ++j) wb[h][j] = w[j];
    }
    __m256 dw[2][1];
    row_scales<L>(grp + at.scales, 0, dw[0]);
    row_scales<L>(grp + at.scales, 1, dw[1]);
    const int64_t yo = b * static_cast<int64_t>(sizeof(BlockQ8_0));
    for (int t = 0; t < T; t += 2) {
      // s[k][part]: k = 2 * (t - pair's first) + h; part 0: steps 0-3, 1: steps 4-7.
      __m256i s[4][2], w0, w1, bc, p;
      asm(Q5_STEP(0, "a", Q5_SET) Q5_STEP(1, "a", Q5_ADD) Q5_STEP(2, "a", Q5_ADD) Q5_STEP(3, "a", Q5_ADD)
              Q5_STEP(4, "b", Q5_SET) Q5_STEP(5, "b", Q5_ADD) Q5_STEP(6, "b", Q5_ADD) Q5_STEP(7, "b", Q5_ADD)
          : [s0a] "=&x"(s[0][0]), [s0b] "=&x"(s[0][1]), [s1a] "=&x"(s[1][0]), [s1b] "=&x"(s[1][1]),
            [s2a] "=&x"(s[2][0]), [s2b] "=&x"(s[2][1]), [s3a] "=&x"(s[3][0]), [s3b] "=&x"(s[3][1]), [w0] "=&x"(w0),
            [w1] "=&x"(w1), [bc] "=&x"(bc), [p] "=&x"(p)
          : [w] "r"(&wb[0][0]), [y0] "r"(act[t] + yo), [y1] "r"(act[t + 1] + yo)
          : "memory");
      for (int u = 0; u < 2; ++u) {
        const int32_t* sum = as + 2 * ((t + u) * a.nb + b);
        const __m256 da = _mm256_set1_ps(ad[(t + u) * a.nb + b]);
        const __m256i o = _mm256_set1_epi32(-L::kOffset * (sum[0] + sum[1]));
        for (int h = 0; h < 2; ++h) {
          const __m256i* sk = s[2 * u + h];
          const __m256i i = _mm256_add_epi32(_mm256_add_epi32(_mm256_madd_epi16(sk[0], ones), _mm256_madd_epi16(sk[1], ones)), o);
          acc[t + u][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(dw[h][0], da), acc[t + u][h]);
        }
      }
    }
  }
  ts.store(out);
}
#undef Q5_STEP
#undef Q5_SET
#undef Q5_ADD

// Q4_0, T (2 or 4) tokens, both halves (prefill; decode: nibble_decode). The integer part of a
// block is one asm statement, so that the compiler neither hoists the steps' loads nor spills
// the int16 sums: per chunk j, the low and high nibbles of both halves (steps j and j + 4), then
// per token the broadcast activation bytes of each step times both halves' nibbles
// (vpmaddubsw), all eight steps of a half added up as int16 (8 * 2 * 15 * 127 = 30480 fits).
// Four tokens: 15 ymm registers. The float part per block and token stays in intrinsics.
// Measured in one process against nibble_pass's intrinsics (1536 x 576, 512 tokens): 1.35x at
// one thread, 1.43x at two.
#define Q4_LOAD(J)                        \
  "vmovdqu " #J "*64(%[q]), %[l0]\n\t"    \
  "vpsrlw $4, %[l0], %[h0]\n\t"           \
  "vpand %[m4], %[l0], %[l0]\n\t"         \
  "vpand %[m4], %[h0], %[h0]\n\t"         \
  "vmovdqu " #J "*64+32(%[q]), %[l1]\n\t" \
  "vpsrlw $4, %[l1], %[h1]\n\t"           \
  "vpand %[m4], %[l1], %[l1]\n\t"         \
  "vpand %[m4], %[h1], %[h1]\n\t"
#define Q4_SET(S, W) "vpmaddubsw %[bc], " W ", " S "\n\t"
#define Q4_ADD(S, W) "vpmaddubsw %[bc], " W ", %[p]\n\tvpaddw %[p], " S ", " S "\n\t"
#define Q4_TOKEN(J, Y, S0, S1, OP)                         \
  "vpbroadcastd " #J "*4(" Y "), %[bc]\n\t" OP(S0, "%[l0]") OP(S1, "%[l1]") \
  "vpbroadcastd 16+" #J "*4(" Y "), %[bc]\n\t" Q4_ADD(S0, "%[h0]") Q4_ADD(S1, "%[h1]")
#define Q4_STEP2(J, OP) Q4_LOAD(J) Q4_TOKEN(J, "%[y0]", "%[s00]", "%[s01]", OP) Q4_TOKEN(J, "%[y1]", "%[s10]", "%[s11]", OP)
#define Q4_STEP4(J, OP) \
  Q4_STEP2(J, OP) Q4_TOKEN(J, "%[y2]", "%[s20]", "%[s21]", OP) Q4_TOKEN(J, "%[y3]", "%[s30]", "%[s31]", OP)
template <class L, int T>
void q4_tokens(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, float* out, const packed::Prefetcher* pf,
               int64_t step0) {
  static_assert(T == 2 || T == 4);
  TokenSums<T> ts(a, t0);
  auto& [acc, act] = ts;
  const float* ad = a.act_d + t0 * a.nb;
  const int32_t* as = a.act_sum + 2 * t0 * a.nb;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < a.nb; ++b) {
    if (pf) pf->step<kFar>(step0 + b);
    const packed::BlockAt at = packed::block_at<L>(a.nb, b);
    const uint8_t* q = grp + at.quants;
    const int64_t yo = b * static_cast<int64_t>(sizeof(BlockQ8_0));
    __m256i s[T][2], l0, h0, l1, h1, bc, p;
    if constexpr (T == 2) {
      asm(Q4_STEP2(0, Q4_SET) Q4_STEP2(1, Q4_ADD) Q4_STEP2(2, Q4_ADD) Q4_STEP2(3, Q4_ADD)
          : [s00] "=&x"(s[0][0]), [s01] "=&x"(s[0][1]), [s10] "=&x"(s[1][0]), [s11] "=&x"(s[1][1]), [l0] "=&x"(l0),
            [h0] "=&x"(h0), [l1] "=&x"(l1), [h1] "=&x"(h1), [bc] "=&x"(bc), [p] "=&x"(p)
          : [q] "r"(q), [y0] "r"(act[0] + yo), [y1] "r"(act[1] + yo), [m4] "x"(m4)
          : "memory");
    } else {
      asm(Q4_STEP4(0, Q4_SET) Q4_STEP4(1, Q4_ADD) Q4_STEP4(2, Q4_ADD) Q4_STEP4(3, Q4_ADD)
          : [s00] "=&x"(s[0][0]), [s01] "=&x"(s[0][1]), [s10] "=&x"(s[1][0]), [s11] "=&x"(s[1][1]),
            [s20] "=&x"(s[2][0]), [s21] "=&x"(s[2][1]), [s30] "=&x"(s[3][0]), [s31] "=&x"(s[3][1]), [l0] "=&x"(l0),
            [h0] "=&x"(h0), [l1] "=&x"(l1), [h1] "=&x"(h1), [bc] "=&x"(bc), [p] "=&x"(p)
          : [q] "r"(q), [y0] "r"(act[0] + yo), [y1] "r"(act[1] + yo), [y2] "r"(act[2] + yo), [y3] "r"(act[3] + yo),
            [m4] "x"(m4)
          : "memory");
    }
    __m256 dw[2][1];
    row_scales<L>(grp + at.scales, 0, dw[0]);
    row_scales<L>(grp + at.scales, 1, dw[1]);
    for (int t = 0; t < T; ++t) {
      const int32_t* sum = as + 2 * (t * a.nb + b);
      const __m256 da = _mm256_set1_ps(ad[t * a.nb + b]);
      const __m256i o = _mm256_set1_epi32(-L::kOffset * (sum[0] + sum[1]));
      for (int hh = 0; hh < 2; ++hh)
        acc[t][hh] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_madd_epi16(s[t][hh], ones), o)),
                                     _mm256_mul_ps(dw[hh][0], da), acc[t][hh]);
    }
  }
  ts.store(out);
}
#undef Q4_LOAD
#undef Q4_SET
#undef Q4_ADD
#undef Q4_TOKEN
#undef Q4_STEP2
#undef Q4_STEP4

// nibble_pass for one token of Q4_0 (one int16 sum per half, one scale), written out: a decode
// step's products run here.
template <class L>
void nibble_decode(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, float* out, const packed::Prefetcher* pf,
                   int64_t step0) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  const auto* act = reinterpret_cast<const BlockQ8_0*>(a.act + t0 * a.act_stride);
  const float* ad = a.act_d + t0 * a.nb;
  const int32_t* as = a.act_sum + 2 * t0 * a.nb;
  const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < a.nb; ++b) {
    if (pf) pf->step<kFar>(step0 + b);
    const packed::BlockAt at = packed::block_at<L>(a.nb, b);
    const uint8_t* q = grp + at.quants;
    const int8_t* y = act[b].qs;
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      asm volatile("" ::: "memory");  // keeps each step's loads in its step (GCC hoists them all and spills)
      const __m256i yl = bcast4(y + 4 * j), yh = bcast4(y + 16 + 4 * j);
      const __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 64 * j));
      const __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 64 * j + 32));
      s0 = _mm256_add_epi16(s0, _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(c0, m4), yl),
                                                 _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(c0, 4), m4), yh)));
      s1 = _mm256_add_epi16(s1, _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(c1, m4), yl),
                                                 _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(c1, 4), m4), yh)));
    }
    const int32_t* sum = as + 2 * b;
    const __m256i off = _mm256_set1_epi32(-L::kOffset * (sum[0] + sum[1]));
    const __m256 da = _mm256_set1_ps(ad[b]);
    const auto* sc = reinterpret_cast<const __m128i*>(grp + at.scales);
    const __m256 d0 = _mm256_mul_ps(_mm256_cvtph_ps(_mm_load_si128(sc)), da);
    const __m256 d1 = _mm256_mul_ps(_mm256_cvtph_ps(_mm_load_si128(sc + 1)), da);
    acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_madd_epi16(s0, ones), off)), d0, acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_madd_epi16(s1, ones), off)), d1, acc1);
  }
  _mm256_store_ps(out, acc0);
  _mm256_store_ps(out + 8, acc1);
}

// half_tile for T tokens of Q8_0 over both halves of a group, each step's loads kept in its step:
// each activation broadcast feeds both halves. One token: a decode step's products (most of
// Gemma 3's, whose tied embedding is Q8_0).
template <class L, int T>
void q8_pass(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, float* out, const packed::Prefetcher* pf,
             int64_t step0) {
  static_assert(L::kChunks == 8 && L::kScales == 1);
  __m256 acc[T][2];
  const BlockQ8_0* act[T];
  for (int t = 0; t < T; ++t) {
    acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    act[t] = reinterpret_cast<const BlockQ8_0*>(a.act + (t0 + t) * a.act_stride);
  }
  const float* ad = a.act_d + t0 * a.nb;
  const __m256i x80 = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < a.nb; ++b) {
    if (pf) pf->step<kFar>(step0 + b);
    const packed::BlockAt at = packed::block_at<L>(a.nb, b);
    const uint8_t* q = grp + at.quants;
    __m256i s[T][2];
    for (int j = 0; j < 8; ++j) {
      asm volatile("" ::: "memory");  // keeps each step's loads in its step (GCC hoists them all and spills)
      __m256i x[2], ax[2];
      for (int h = 0; h < 2; ++h) {
        x[h] = _mm256_xor_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(q + 64 * j + 32 * h)), x80);
        ax[h] = _mm256_sign_epi8(x[h], x[h]);
      }
      for (int t = 0; t < T; ++t) {
        const __m256i yb = bcast4(act[t][b].qs + 4 * j);
        for (int h = 0; h < 2; ++h) {
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax[h], _mm256_sign_epi8(yb, x[h])), ones);
          s[t][h] = j == 0 ? p : _mm256_add_epi32(s[t][h], p);
        }
      }
    }
    for (int h = 0; h < 2; ++h) {
      __m256 dw[1];
      row_scales<L>(grp + at.scales, h, dw);
      for (int t = 0; t < T; ++t)
        acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t][h]), _mm256_mul_ps(dw[0], _mm256_set1_ps(ad[t * a.nb + b])),
                                    acc[t][h]);
    }
  }
  for (int h = 0; h < 2; ++h)
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + 8 * (h * T + t), acc[t][h]);
}

// Q8_0, four tokens, both halves (prefill; pairs and decode: q8_pass). The integer part of a
// block is one asm statement: per step j (columns 4j..4j+3), x = the stored byte ^ 0x80 and |x|
// of each half, then per token the broadcast activation with x's signs times |x| (vpmaddubsw),
// widened (vpmaddwd) and added to the token's int32 sum of that half. 14 ymm registers; the
// constants are memory operands. Measured in one process against q8_pass's pairs (1536 x 576,
// 512 tokens): 1.06x at one thread, 1.24x at two. vpmaddubsw and vpmaddwd share this core's two
// multiply pipes: 32 of them per token and block bound it.
#define Q8_LOAD(J)                            \
  "vmovdqa " #J "*64(%[q]), %[x0]\n\t"        \
  "vpxor %[x80], %[x0], %[x0]\n\t"            \
  "vpsignb %[x0], %[x0], %[a0]\n\t"           \
  "vmovdqa " #J "*64+32(%[q]), %[x1]\n\t"     \
  "vpxor %[x80], %[x1], %[x1]\n\t"            \
  "vpsignb %[x1], %[x1], %[a1]\n\t"
#define Q8_SET(S) "vpmaddwd %[ones], %[p], " S "\n\t"
#define Q8_ADD(S) "vpmaddwd %[ones], %[p], %[p]\n\tvpaddd %[p], " S ", " S "\n\t"
#define Q8_TOKEN(J, Y, S0, S1, OP)                                          \
  "vpbroadcastd " #J "*4(" Y "), %[bc]\n\t"                                \
  "vpsignb %[x0], %[bc], %[p]\n\tvpmaddubsw %[p], %[a0], %[p]\n\t" OP(S0)  \
  "vpsignb %[x1], %[bc], %[p]\n\tvpmaddubsw %[p], %[a1], %[p]\n\t" OP(S1)
#define Q8_STEP(J, OP)                                                                                           \
  Q8_LOAD(J) Q8_TOKEN(J, "%[y0]", "%[s00]", "%[s01]", OP) Q8_TOKEN(J, "%[y1]", "%[s10]", "%[s11]", OP)           \
      Q8_TOKEN(J, "%[y2]", "%[s20]", "%[s21]", OP) Q8_TOKEN(J, "%[y3]", "%[s30]", "%[s31]", OP)
template <class L>
void q8_tokens(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, float* out, const packed::Prefetcher* pf,
               int64_t step0) {
  static_assert(L::kChunks == 8 && L::kScales == 1 && L::kOffset == 128);
  constexpr int T = 4;
  TokenSums<T> ts(a, t0);
  auto& [acc, act] = ts;
  const float* ad = a.act_d + t0 * a.nb;
  alignas(32) static constexpr std::array<uint8_t, 32> kX80 = [] {
    std::array<uint8_t, 32> v{};
    v.fill(0x80);
    return v;
  }();
  alignas(32) static constexpr std::array<int16_t, 16> kOnes = [] {
    std::array<int16_t, 16> v{};
    v.fill(1);
    return v;
  }();
  for (int64_t b = 0; b < a.nb; ++b) {
    if (pf) pf->step<kFar>(step0 + b);
    const packed::BlockAt at = packed::block_at<L>(a.nb, b);
    const uint8_t* q = grp + at.quants;
    const int64_t yo = b * static_cast<int64_t>(sizeof(BlockQ8_0));
    __m256i s[T][2], x0, x1, a0, a1, bc, p;
    asm(Q8_STEP(0, Q8_SET) Q8_STEP(1, Q8_ADD) Q8_STEP(2, Q8_ADD) Q8_STEP(3, Q8_ADD) Q8_STEP(4, Q8_ADD)
            Q8_STEP(5, Q8_ADD) Q8_STEP(6, Q8_ADD) Q8_STEP(7, Q8_ADD)
        : [s00] "=&x"(s[0][0]), [s01] "=&x"(s[0][1]), [s10] "=&x"(s[1][0]), [s11] "=&x"(s[1][1]), [s20] "=&x"(s[2][0]),
          [s21] "=&x"(s[2][1]), [s30] "=&x"(s[3][0]), [s31] "=&x"(s[3][1]), [x0] "=&x"(x0), [x1] "=&x"(x1),
          [a0] "=&x"(a0), [a1] "=&x"(a1), [bc] "=&x"(bc), [p] "=&x"(p)
        : [q] "r"(q), [y0] "r"(act[0] + yo), [y1] "r"(act[1] + yo), [y2] "r"(act[2] + yo), [y3] "r"(act[3] + yo),
          [x80] "m"(kX80), [ones] "m"(kOnes)
        : "memory");
    __m256 dw[2][1];
    row_scales<L>(grp + at.scales, 0, dw[0]);
    row_scales<L>(grp + at.scales, 1, dw[1]);
    for (int t = 0; t < T; ++t) {
      const __m256 da = _mm256_set1_ps(ad[t * a.nb + b]);
      for (int hh = 0; hh < 2; ++hh)
        acc[t][hh] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t][hh]), _mm256_mul_ps(dw[hh][0], da), acc[t][hh]);
    }
  }
  ts.store(out);
}
#undef Q8_LOAD
#undef Q8_SET
#undef Q8_ADD
#undef Q8_TOKEN
#undef Q8_STEP

// Q4_1 (kMin) in ggml's order (repack.cpp, gemm_scalar_lanes), rows 8h .. 8h+7, one token:
// 8 accumulators (one per packed step, ggml's float lane) and the m terms' own chain.
template <class L>
void half_tile_lanes(const PackedGemmArgs& a, const uint8_t* grp, int h, int64_t t0, float* out,
                     const packed::Prefetcher* pf, int64_t step0) {
  static_assert(L::kChunks == 4 && !L::kQh && !L::kLut);
  __m256 acc[8], summs = _mm256_setzero_ps();
  for (auto& x : acc) x = _mm256_setzero_ps();
  const auto* act = reinterpret_cast<const quant::BlockQ8_1*>(a.act + t0 * a.act_stride);
  const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0F);
  for (int64_t b = 0; b < a.nb; ++b) {
    if (pf) pf->step<kFar>(step0 + b);
    const packed::BlockAt at = packed::block_at<L>(a.nb, b);
    const uint8_t* q = grp + at.quants;
    const auto* sc = reinterpret_cast<const uint16_t*>(grp + at.scales);
    const quant::BlockQ8_1& y = act[b];
    const __m256 dx = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 8 * h)));
    const __m256 mx = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + kPackRows + 8 * h)));
    const __m256 dd = _mm256_mul_ps(dx, _mm256_set1_ps(_cvtsh_ss(y.d)));  // F16C: exact, as fp16_to_f32
    summs = _mm256_fmadd_ps(mx, _mm256_set1_ps(_cvtsh_ss(y.s)), summs);
    for (int j = 0; j < 4; ++j) {
      asm volatile("" ::: "memory");  // keeps each step's loads in its step (GCC hoists them all and spills)
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64 * j + 32 * h));
      const __m256i lo = _mm256_and_si256(c, m4), hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), m4);
      const __m256i l0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, bcast4(y.qs + 4 * j)), ones);
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(l0), dd, acc[j]);
      const __m256i l1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, bcast4(y.qs + 16 + 4 * j)), ones);
      acc[j + 4] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(l1), dd, acc[j + 4]);
    }
  }
  const __m256 lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
  const __m256 hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(lo, hi), summs));
}

// half_tile_lanes for T tokens (prefill). ggml's 8 lanes per output are 8 independent chains
// over the blocks, so they are walked one pair at a time (lanes j and j + 4: the low and high
// nibbles of packed vector j) through a run of blocks, which keeps 4T chains in registers and
// lets each loaded weight vector feed T tokens. The products d * d_y of the run (each chain's
// fma reads its own as a memory operand) and the m terms' chains come first, in one walk.
// Each chain's operations and order are half_tile_lanes', so the bits are too.
#define Q41_LOAD                 \
  "vmovdqa (%[q]), %[wl]\n\t"     \
  "vpsrlw $4, %[wl], %[wh]\n\t"   \
  "vpand %[m4], %[wl], %[wl]\n\t" \
  "vpand %[m4], %[wh], %[wh]\n\t"
// Lanes j (low nibbles) and j + 4 (high) of one token: y points at its qs + 4j, D is the
// offset of its d * d_y.
#define Q41_TOKEN(Y, D, LO, HI)                                                        \
  "vpbroadcastd (" Y "), %[b0]\n\t"                                                   \
  "vpbroadcastd 16(" Y "), %[b1]\n\t"                                                 \
  "vpmaddubsw %[b0], %[wl], %[p0]\n\t"                                                \
  "vpmaddubsw %[b1], %[wh], %[p1]\n\t"                                                \
  "vpmaddwd %[ones], %[p0], %[p0]\n\t"                                                \
  "vpmaddwd %[ones], %[p1], %[p1]\n\t"                                                \
  "vcvtdq2ps %[p0], %[p0]\n\t"                                                        \
  "vcvtdq2ps %[p1], %[p1]\n\t"                                                        \
  "vfmadd231ps " D "(%[d]), %[p0], " LO "\n\t"                                         \
  "vfmadd231ps " D "(%[d]), %[p1], " HI "\n\t"
template <class L, int T>
void q41_tokens(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, float* out, const packed::Prefetcher* pf,
                int64_t step0) {
  static_assert(L::kMin && L::kChunks == 4);
  constexpr int64_t kRun = 64;  // blocks per run: dd is kRun * 2 * T * 32 bytes (16 KB for T = 4)
  alignas(32) __m256 dd[kRun][2][T];
  __m256 lane[2][T][8], summs[2][T];
  const quant::BlockQ8_1* act[T];
  const uint8_t* yq[T];
  for (int t = 0; t < T; ++t) {
    act[t] = reinterpret_cast<const quant::BlockQ8_1*>(a.act + (t0 + t) * a.act_stride);
    yq[t] = reinterpret_cast<const uint8_t*>(act[t]) + offsetof(quant::BlockQ8_1, qs);
    for (int h = 0; h < 2; ++h) {
      summs[h][t] = _mm256_setzero_ps();
      for (auto& x : lane[h][t]) x = _mm256_setzero_ps();
    }
  }
  const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(0x0F);
  for (int64_t b0 = 0; b0 < a.nb; b0 += kRun) {
    const int64_t n = std::min(kRun, a.nb - b0);
    for (int64_t i = 0; i < n; ++i) {
      if (pf) pf->step<kFar>(step0 + b0 + i);
      const auto* sc = reinterpret_cast<const __m128i*>(grp + packed::block_at<L>(a.nb, b0 + i).scales);
      for (int h = 0; h < 2; ++h) {
        const __m256 dx = _mm256_cvtph_ps(_mm_load_si128(sc + h));
        const __m256 mx = _mm256_cvtph_ps(_mm_load_si128(sc + 2 + h));
        for (int t = 0; t < T; ++t) {
          const quant::BlockQ8_1& y = act[t][b0 + i];
          dd[i][h][t] = _mm256_mul_ps(dx, _mm256_set1_ps(_cvtsh_ss(y.d)));
          summs[h][t] = _mm256_fmadd_ps(mx, _mm256_set1_ps(_cvtsh_ss(y.s)), summs[h][t]);
        }
      }
    }
    for (int h = 0; h < 2; ++h)
      for (int j = 0; j < 4; ++j) {
        __m256 lo[T], hi[T];
        for (int t = 0; t < T; ++t) {
          lo[t] = lane[h][t][j];
          hi[t] = lane[h][t][j + 4];
        }
        for (int64_t i = 0; i < n; ++i) {
          const uint8_t* q = grp + packed::block_at<L>(a.nb, b0 + i).quants + 64 * j + 32 * h;
          const int64_t yo = (b0 + i) * static_cast<int64_t>(sizeof(quant::BlockQ8_1)) + 4 * j;
          const __m256* d = dd[i][h];
          __m256i wl, wh, b0v, p0, b1v, p1;
          if constexpr (T == 4) {
            asm(Q41_LOAD Q41_TOKEN("%[y0]", "0", "%[l0]", "%[h0]") Q41_TOKEN("%[y1]", "32", "%[l1]", "%[h1]")
                    Q41_TOKEN("%[y2]", "64", "%[l2]", "%[h2]") Q41_TOKEN("%[y3]", "96", "%[l3]", "%[h3]")
                : [l0] "+x"(lo[0]), [h0] "+x"(hi[0]), [l1] "+x"(lo[1]), [h1] "+x"(hi[1]), [l2] "+x"(lo[2]),
                  [h2] "+x"(hi[2]), [l3] "+x"(lo[3]), [h3] "+x"(hi[3]), [wl] "=&x"(wl), [wh] "=&x"(wh),
                  [b0] "=&x"(b0v), [p0] "=&x"(p0), [b1] "=&x"(b1v), [p1] "=&x"(p1)
                : [q] "r"(q), [y0] "r"(yq[0] + yo), [y1] "r"(yq[1] + yo), [y2] "r"(yq[2] + yo), [y3] "r"(yq[3] + yo),
                  [d] "r"(d), [m4] "m"(m4), [ones] "x"(ones)
                : "memory");
          } else {
            asm(Q41_LOAD Q41_TOKEN("%[y0]", "0", "%[l0]", "%[h0]") Q41_TOKEN("%[y1]", "32", "%[l1]", "%[h1]")
                : [l0] "+x"(lo[0]), [h0] "+x"(hi[0]), [l1] "+x"(lo[1]), [h1] "+x"(hi[1]), [wl] "=&x"(wl), [wh] "=&x"(wh),
                  [b0] "=&x"(b0v), [p0] "=&x"(p0), [b1] "=&x"(b1v), [p1] "=&x"(p1)
                : [q] "r"(q), [y0] "r"(yq[0] + yo), [y1] "r"(yq[1] + yo), [d] "r"(d), [m4] "m"(m4), [ones] "x"(ones)
                : "memory");
          }
        }
        for (int t = 0; t < T; ++t) {
          lane[h][t][j] = lo[t];
          lane[h][t][j + 4] = hi[t];
        }
      }
  }
  for (int h = 0; h < 2; ++h)
    for (int t = 0; t < T; ++t) {
      const __m256* l = lane[h][t];
      const __m256 x = _mm256_add_ps(_mm256_add_ps(l[0], l[4]), _mm256_add_ps(l[2], l[6]));
      const __m256 z = _mm256_add_ps(_mm256_add_ps(l[1], l[5]), _mm256_add_ps(l[3], l[7]));
      _mm256_storeu_ps(out + 8 * (h * T + t), _mm256_add_ps(_mm256_add_ps(x, z), summs[h][t]));
    }
}
#undef Q41_LOAD
#undef Q41_TOKEN

// Writes a tile's outputs out[h][t][r] (rows 8h + r of the group at row0, nr of them) to y.
template <int T>
inline void store_tile(const PackedGemmArgs& a, const float (&out)[2][T][8], int64_t t0, int64_t row0, int64_t nr) {
  for (int t = 0; t < T; ++t) {
    float* y = a.y + (t0 + t) * a.ldy + row0;
    for (int64_t r = 0; r < nr; ++r) y[r] = out[r / 8][t][r % 8];
  }
}

// Q4_0 (the nibble type without a table: one scale, u <= 15): nibble_decode, q4_tokens.
template <class L>
constexpr bool kQ4Asm = kNibble<L> && !L::kLut;
// Types whose prefill takes 4-token tiles (the asm passes; q4_tokens, q8_tokens, q41_tokens).
template <class L>
constexpr bool kFourTokens = kQ4Asm<L> || L::kChunks == 8 || L::kMin;

template <class L, int T>
void tile(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, int64_t row0, int64_t nr,
          const packed::Prefetcher* pf, int64_t step0) {
  alignas(32) float out[2][T][8];
  if constexpr (kQ4Asm<L> && T == 1) {
    nibble_decode<L>(a, grp, t0, &out[0][0][0], pf, step0);
  } else if constexpr (kQ4Asm<L>) {
    q4_tokens<L, T>(a, grp, t0, &out[0][0][0], pf, step0);
  } else if constexpr (kNibble<L>) {
    nibble_pass<L, T>(a, grp, t0, &out[0][0][0], pf, step0);
  } else if constexpr (L::kMin && T > 1) {
    q41_tokens<L, T>(a, grp, t0, &out[0][0][0], pf, step0);
  } else if constexpr (L::kMin) {
    for (int t = 0; t < T; ++t) {
      half_tile_lanes<L>(a, grp, 0, t0 + t, &out[0][t][0], t == 0 ? pf : nullptr, step0);
      if (nr > 8) half_tile_lanes<L>(a, grp, 1, t0 + t, &out[1][t][0], nullptr, 0);
    }
  } else if constexpr (L::kChunks == 8 && T == 4) {
    q8_tokens<L>(a, grp, t0, &out[0][0][0], pf, step0);
  } else if constexpr (L::kChunks == 8) {
    q8_pass<L, T>(a, grp, t0, &out[0][0][0], pf, step0);
  } else if constexpr (T == 8) {
    q5_tokens<L>(a, grp, t0, &out[0][0][0], pf, step0);
  } else {
    half_tile<L, T>(a, grp, 0, t0, &out[0][0][0], pf, step0);
    if (nr > 8) half_tile<L, T>(a, grp, 1, t0, &out[1][0][0], nullptr, 0);
  }
  store_tile<T>(a, out, t0, row0, nr);
}

template <class L>
void gemm(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  const int64_t gbytes = packed::group_stride<L>(a.nb);
  const auto pf = packed::Prefetcher::of_call(a, gbytes, g0, g1);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = a.w + g * gbytes;
    const int64_t row0 = g * kPackRows;
    const int64_t nr = std::min<int64_t>(kPackRows, a.rows - row0);
    const int64_t step0 = (g - g0) * a.nb;  // the first token tile prefetches
    int64_t t = 0;
    if constexpr (L::kQh) {  // half_tile: up to 8 tokens share a block's unpacked steps
      for (; t + 8 <= a.n_tokens; t += 8) tile<L, 8>(a, grp, t, row0, nr, t == 0 ? &pf : nullptr, step0);
      const packed::Prefetcher* p = t == 0 ? &pf : nullptr;
      switch (a.n_tokens - t) {
        case 7: tile<L, 7>(a, grp, t, row0, nr, p, step0); break;
        case 6: tile<L, 6>(a, grp, t, row0, nr, p, step0); break;
        case 5: tile<L, 5>(a, grp, t, row0, nr, p, step0); break;
        case 4: tile<L, 4>(a, grp, t, row0, nr, p, step0); break;
        case 3: tile<L, 3>(a, grp, t, row0, nr, p, step0); break;
        case 2: tile<L, 2>(a, grp, t, row0, nr, p, step0); break;
        case 1: tile<L, 1>(a, grp, t, row0, nr, p, step0); break;
        default: break;
      }
      continue;
    }
    if constexpr (kFourTokens<L>)
      for (; t + 4 <= a.n_tokens; t += 4) tile<L, 4>(a, grp, t, row0, nr, t == 0 ? &pf : nullptr, step0);
    for (; t + 2 <= a.n_tokens; t += 2) tile<L, 2>(a, grp, t, row0, nr, t == 0 ? &pf : nullptr, step0);
    if (t < a.n_tokens) tile<L, 1>(a, grp, t, row0, nr, t == 0 ? &pf : nullptr, step0);
  }
}

// The Q8_K activation rows of a K-quant half-tile's T tokens and its T accumulators (8 rows each).
template <int T>
struct KHalf {
  const quant::BlockQ8K* act[T];
  __m256 acc[T];
  KHalf(const PackedGemmArgs& a, int64_t t0) {
    for (int t = 0; t < T; ++t) {
      act[t] = reinterpret_cast<const quant::BlockQ8K*>(a.act + (t0 + t) * a.act_stride);
      acc[t] = _mm256_setzero_ps();
    }
  }
  void store(float* out) const {
    for (int t = 0; t < T; ++t) _mm256_storeu_ps(out + 8 * t, acc[t]);
  }
};

// The end of a Q4_K super-block sb for rows 8h..8h+7 and T tokens: the mins against the
// activation sums (vpmaddwd on int16 pairs), then acc = fma(isum, d * d_a) and fma(-imin,
// dmin * d_a).
template <int T>
inline void q4k_finish(const uint8_t* blk, int h, const quant::BlockQ8K* const* act, int64_t sb, const __m256i* isum,
                       __m256* acc) {
  using packed::Q4K;
  __m256i mins[4];
  for (int p = 0; p < 4; ++p)
    mins[p] = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + Q4K::kMins + 32 * p + 16 * h)));
  const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + Q4K::kD + 16 * h)));
  const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + Q4K::kDmin + 16 * h)));
  for (int t = 0; t < T; ++t) {
    const int16_t* bs = act[t][sb].bsums;
    __m256i imin = _mm256_setzero_si256();
    for (int p = 0; p < 4; ++p) {
      const uint32_t lo = static_cast<uint16_t>(bs[4 * p] + bs[4 * p + 1]);
      const uint32_t hi = static_cast<uint16_t>(bs[4 * p + 2] + bs[4 * p + 3]);
      imin = _mm256_add_epi32(imin, _mm256_madd_epi16(mins[p], _mm256_set1_epi32(static_cast<int>(lo | hi << 16))));
    }
    const __m256 da = _mm256_set1_ps(act[t][sb].d);
    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, da), acc[t]);
    acc[t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_mul_ps(dmin, da), acc[t]);
  }
}

// Q4_K: sub-block j's 8 steps (nibbles <= 15: eight int16 pair sums stay below 30480), one
// vpmaddwd to int32, vpmulld by the 6-bit scales; the mins through vpmaddwd on int16 pairs.
template <int T>
void q4k_half(const PackedGemmArgs& a, const uint8_t* grp, int h, int64_t t0, float* out,
              const packed::Prefetcher* pf, int64_t step0) {
  using packed::Q4K;
  KHalf<T> k(a, t0);
  const quant::BlockQ8K* const* act = k.act;
  __m256* acc = k.acc;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t sb = 0; sb < a.nb; ++sb) {
    const uint8_t* blk = grp + sb * Q4K::kBytes;
    if (pf) pf->step(step0 + sb);
    __m256i isum[T];
    for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      __m256i w[8];
      for (int k = 0; k < 8; ++k) {
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 512 * (j / 2) + 64 * k + 32 * h));
        w[k] = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(c, 4) : c, m4);
      }
      const __m256i sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + Q4K::kScales + 16 * j + 8 * h)));
      for (int t = 0; t < T; ++t) {
        const int8_t* y = act[t][sb].qs + 32 * j;
        __m256i s16 = _mm256_maddubs_epi16(w[0], bcast4(y));
        for (int k = 1; k < 8; ++k) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[k], bcast4(y + 4 * k)));
        isum[t] = _mm256_add_epi32(isum[t], _mm256_mullo_epi32(_mm256_madd_epi16(s16, ones), sc));
      }
    }
    q4k_finish<T>(blk, h, act, sb, isum, acc);
  }
  k.store(out);
}

// Q4_K, four tokens, both halves (prefill): per sub-block j, its eight steps (the low or the
// high nibbles of pair j / 2) times each token's activation bytes, added up as int16 per token
// and half in one asm statement (as q4_tokens: 13 ymm registers); then per token and half
// vpmaddwd, vpmulld by the 6-bit scales into the int32 sum isum. The mins and the float steps
// as q4k_half's.
#define Q4K_STEP(K, SHIFT, OP)                                                             \
  "vmovdqu " #K "*64(%[q]), %[w0]\n\t" SHIFT("%[w0]") "vpand %[m4], %[w0], %[w0]\n\t"     \
  "vmovdqu " #K "*64+32(%[q]), %[w1]\n\t" SHIFT("%[w1]") "vpand %[m4], %[w1], %[w1]\n\t"  \
  Q4K_TOKEN(K, "%[y0]", "%[s00]", "%[s01]", OP) Q4K_TOKEN(K, "%[y1]", "%[s10]", "%[s11]", OP) \
  Q4K_TOKEN(K, "%[y2]", "%[s20]", "%[s21]", OP) Q4K_TOKEN(K, "%[y3]", "%[s30]", "%[s31]", OP)
#define Q4K_TOKEN(K, Y, S0, S1, OP) "vpbroadcastd " #K "*4(" Y "), %[bc]\n\t" OP(S0, "%[w0]") OP(S1, "%[w1]")
#define Q4K_SET(S, W) "vpmaddubsw %[bc], " W ", " S "\n\t"
#define Q4K_ADD(S, W) "vpmaddubsw %[bc], " W ", %[p]\n\tvpaddw %[p], " S ", " S "\n\t"
#define Q4K_LOW(W) ""
#define Q4K_HIGH(W) "vpsrlw $4, " W ", " W "\n\t"
#define Q4K_SUB(SHIFT)                                                                                        \
  Q4K_STEP(0, SHIFT, Q4K_SET) Q4K_STEP(1, SHIFT, Q4K_ADD) Q4K_STEP(2, SHIFT, Q4K_ADD) Q4K_STEP(3, SHIFT, Q4K_ADD) \
      Q4K_STEP(4, SHIFT, Q4K_ADD) Q4K_STEP(5, SHIFT, Q4K_ADD) Q4K_STEP(6, SHIFT, Q4K_ADD) Q4K_STEP(7, SHIFT, Q4K_ADD)
void q4k_tokens(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, float* out, const packed::Prefetcher* pf,
                int64_t step0) {
  using packed::Q4K;
  constexpr int T = 4;
  KHalf<T> k0(a, t0), k1(a, t0);
  const quant::BlockQ8K* const* act = k0.act;
  __m256* acc[2] = {k0.acc, k1.acc};
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t sb = 0; sb < a.nb; ++sb) {
    const uint8_t* blk = grp + sb * Q4K::kBytes;
    if (pf) pf->step(step0 + sb);
    __m256i isum[2][T];
    for (int j = 0; j < 8; ++j) {
      const uint8_t* q = blk + 512 * (j / 2);
      __m256i s[T][2], w0, w1, bc, p;
#define Q4K_OPERANDS                                                                                              \
  : [s00] "=&x"(s[0][0]), [s01] "=&x"(s[0][1]), [s10] "=&x"(s[1][0]), [s11] "=&x"(s[1][1]), [s20] "=&x"(s[2][0]),  \
    [s21] "=&x"(s[2][1]), [s30] "=&x"(s[3][0]), [s31] "=&x"(s[3][1]), [w0] "=&x"(w0), [w1] "=&x"(w1), [bc] "=&x"(bc), \
    [p] "=&x"(p)                                                                                                   \
  : [q] "r"(q), [y0] "r"(act[0][sb].qs + 32 * j), [y1] "r"(act[1][sb].qs + 32 * j), [y2] "r"(act[2][sb].qs + 32 * j), \
    [y3] "r"(act[3][sb].qs + 32 * j), [m4] "x"(m4)                                                                 \
  : "memory"
      if (j % 2 == 0)
        asm(Q4K_SUB(Q4K_LOW) Q4K_OPERANDS);
      else
        asm(Q4K_SUB(Q4K_HIGH) Q4K_OPERANDS);
#undef Q4K_OPERANDS
      for (int h = 0; h < 2; ++h) {
        const __m256i sc =
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + Q4K::kScales + 16 * j + 8 * h)));
        for (int t = 0; t < T; ++t) {
          const __m256i x = _mm256_mullo_epi32(_mm256_madd_epi16(s[t][h], ones), sc);
          isum[h][t] = j == 0 ? x : _mm256_add_epi32(isum[h][t], x);
        }
      }
    }
    for (int h = 0; h < 2; ++h) q4k_finish<T>(blk, h, act, sb, isum[h], acc[h]);
  }
  k0.store(out);
  k1.store(out + 8 * T);
}
#undef Q4K_STEP
#undef Q4K_TOKEN
#undef Q4K_SET
#undef Q4K_ADD
#undef Q4K_LOW
#undef Q4K_HIGH
#undef Q4K_SUB

// Q6_K: u <= 63, so two steps of int16 pair sums stay below 2 * 2 * 63 * 128 = 32256 before
// vpmaddwd; each 16-column group starts at -32 * its activation sum, scaled by vpmulld.
template <int T>
void q6k_half(const PackedGemmArgs& a, const uint8_t* grp, int h, int64_t t0, float* out,
              const packed::Prefetcher* pf, int64_t step0) {
  using packed::Q6K;
  KHalf<T> k(a, t0);
  const quant::BlockQ8K* const* act = k.act;
  __m256* acc = k.acc;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t sb = 0; sb < a.nb; ++sb) {
    const uint8_t* blk = grp + sb * Q6K::kBytes;
    if (pf) pf->step(step0 + sb);
    __m256i isum[T];
    for (int t = 0; t < T; ++t) isum[t] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const uint8_t* sub = blk + Q6K::kSub * j + 32 * h;
      __m256i w[8];
      for (int c = 0; c < 4; ++c) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sub + 64 * c));
        w[c] = _mm256_and_si256(v, m4);
        w[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
      }
      const __m256i b4 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sub + 256));
      const __m256i b5 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sub + 320));
      for (int k = 0; k < 8; ++k) w[k] = add_plane(b5, k, add_plane(b4, k, w[k], 0x10), 0x20);
      for (int hh = 0; hh < 2; ++hh) {
        const int gi = 2 * j + hh;
        const __m256i sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + Q6K::kScales + 16 * gi + 8 * h)));
        for (int t = 0; t < T; ++t) {
          const int8_t* y = act[t][sb].qs + 16 * gi;
          const __m256i p01 = _mm256_add_epi16(_mm256_maddubs_epi16(w[4 * hh], bcast4(y)),
                                               _mm256_maddubs_epi16(w[4 * hh + 1], bcast4(y + 4)));
          const __m256i p23 = _mm256_add_epi16(_mm256_maddubs_epi16(w[4 * hh + 2], bcast4(y + 8)),
                                               _mm256_maddubs_epi16(w[4 * hh + 3], bcast4(y + 12)));
          const __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_madd_epi16(p01, ones), _mm256_madd_epi16(p23, ones)),
                                             _mm256_set1_epi32(-32 * act[t][sb].bsums[gi]));
          isum[t] = _mm256_add_epi32(isum[t], _mm256_mullo_epi32(s, sc));
        }
      }
    }
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + Q6K::kD + 16 * h)));
    for (int t = 0; t < T; ++t)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, _mm256_set1_ps(act[t][sb].d)), acc[t]);
  }
  k.store(out);
}

// The K-quant products: groups of two 8-row halves, tiles of 2 tokens and the rest.
struct Q4KHalves {
  static constexpr int64_t kBytes = packed::Q4K::kBytes;
  template <int T>
  static void run(const PackedGemmArgs& a, const uint8_t* grp, int h, int64_t t0, float* out,
                  const packed::Prefetcher* pf, int64_t step0) {
    q4k_half<T>(a, grp, h, t0, out, pf, step0);
  }
};
struct Q6KHalves {
  static constexpr int64_t kBytes = packed::Q6K::kBytes;
  template <int T>
  static void run(const PackedGemmArgs& a, const uint8_t* grp, int h, int64_t t0, float* out,
                  const packed::Prefetcher* pf, int64_t step0) {
    q6k_half<T>(a, grp, h, t0, out, pf, step0);
  }
};

template <class K, int T>
void kquant_tile(const PackedGemmArgs& a, const uint8_t* grp, int64_t t0, int64_t row0, int64_t nr,
                 const packed::Prefetcher* pf, int64_t step0) {
  alignas(32) float out[2][T][8];
  K::template run<T>(a, grp, 0, t0, &out[0][0][0], pf, step0);
  if (nr > 8) K::template run<T>(a, grp, 1, t0, &out[1][0][0], nullptr, 0);
  store_tile<T>(a, out, t0, row0, nr);
}

template <class K>
void kquant_gemm(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  const auto pf = packed::Prefetcher::of_call(a, a.nb * K::kBytes, g0, g1);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = a.w + g * a.nb * K::kBytes;
    const int64_t row0 = g * kPackRows;
    const int64_t nr = std::min<int64_t>(kPackRows, a.rows - row0);
    const int64_t step0 = (g - g0) * a.nb;  // the first token tile prefetches
    int64_t t = 0;
    if constexpr (std::is_same_v<K, Q4KHalves>)
      for (; t + 4 <= a.n_tokens; t += 4) {
        alignas(32) float out[2][4][8];
        q4k_tokens(a, grp, t, &out[0][0][0], t == 0 ? &pf : nullptr, step0);
        store_tile<4>(a, out, t, row0, nr);
      }
    for (; t + 2 <= a.n_tokens; t += 2) kquant_tile<K, 2>(a, grp, t, row0, nr, t == 0 ? &pf : nullptr, step0);
    if (t < a.n_tokens) kquant_tile<K, 1>(a, grp, t, row0, nr, t == 0 ? &pf : nullptr, step0);
  }
}

}  // namespace

const PackedGemmOps& packed_gemm_ops_avx2() {
  static const PackedGemmOps ops{&gemm<packed::Q4_0>,  &gemm<packed::Q4_1>, &gemm<packed::Q5_0>,  &gemm<packed::Q8_0>,
                                 &gemm<packed::Mxfp4>, &gemm<packed::Nvfp4>, &kquant_gemm<Q4KHalves>,
                                 &kquant_gemm<Q6KHalves>};
  return ops;
}

}  // namespace fennec::kernels
