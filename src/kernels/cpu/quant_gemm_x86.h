// Tile kernels of quant_gemm.h written with AVX2 intrinsics, compiled once per x86 ISA:
// quant_gemm_avx2.cpp (-mavx2 -mfma -mf16c) and quant_gemm_avx512.cpp (AVX-512 flags: 32 vector
// registers, and VNNI's vpdpbusd in place of vpmaddubsw + vpmaddwd). Included only by those
// files; the unnamed namespace gives each its own copy (see quant_dot_impl.h for why).
//
// Every float step per output is the one of the per-output bodies in quant_dot_impl.h, in the
// same order; only the integer lane sums are formed differently, and integer sums are exact
// (no product pair here can saturate vpmaddubsw's int16: |nibble or 6-bit value| * 127 * 2 and
// 128 * 127 * 2 stay below 32767, and Q8 activations lie in [-127, 127]).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cpu/quant_gemm.h"
#include "quant/blocks.h"

namespace fennec::kernels::x86 {
namespace {  // NOLINT(google-build-namespaces): one copy per ISA

using quant::BlockQ4_0;
using quant::BlockQ4_1;
using quant::BlockQ4K;
using quant::BlockQ5_0;
using quant::BlockQ5_1;
using quant::BlockQ6K;
using quant::BlockQ8_0;
using quant::BlockQ8_1;
using quant::BlockQ8K;

// F16C conversion: exact for every fp16 value, subnormals included (kernel_test checks all).
inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Eight int32 lanes, lane k = the exact sum of the products of bytes 4k..4k+3; ux unsigned.
inline __m256i lanes_us(__m256i ux, __m256i y) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), ux, y);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(ux, y), _mm256_set1_epi16(1));
#endif
}
// Both signed: |x| times y with x's sign.
inline __m256i lanes_ss(__m256i x, __m256i y) {
  return lanes_us(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
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

// ggml's hsum_float_8 of four outputs at once: lane i of the result is
// ((a4+a0) + (a6+a2)) + ((a5+a1) + (a7+a3)) of v[i], the same additions as impl::hsum8.
inline __m128 hsum8x4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  __m128 h0 = _mm_add_ps(_mm256_extractf128_ps(v0, 1), _mm256_castps256_ps128(v0));
  __m128 h1 = _mm_add_ps(_mm256_extractf128_ps(v1, 1), _mm256_castps256_ps128(v1));
  __m128 h2 = _mm_add_ps(_mm256_extractf128_ps(v2, 1), _mm256_castps256_ps128(v2));
  __m128 h3 = _mm_add_ps(_mm256_extractf128_ps(v3, 1), _mm256_castps256_ps128(v3));
  _MM_TRANSPOSE4_PS(h0, h1, h2, h3);
  return _mm_add_ps(_mm_add_ps(h0, h2), _mm_add_ps(h1, h3));
}

inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
  return _mm_cvtsi128_si32(s);
}

// Software prefetch of the weights a kernel reads next (the following rows: `bytes` from
// `next`), spread evenly over the `steps` block steps of the current pass, one cache line after
// another. The tiles read several rows side by side, which the hardware prefetcher follows
// poorly. Measured on Zen 4, one token through a 178 MB Q8_0 matrix: 12 GB/s on two cores
// without software prefetch, 17 with one prefetch per row at the same offset in the next tile,
// 35 with this linear walk (a plain sequential read: 39); on one core 8.6 -> 18 GB/s.
class Prefetcher {
 public:
  Prefetcher(const char* next, int64_t bytes, int64_t steps)
      : next_(next), lines_per_step_((bytes + 64 * steps - 1) / (64 * steps)) {}
  void step(int64_t s) const {
    const char* p = next_ + s * lines_per_step_ * 64;
    for (int64_t k = 0; k < lines_per_step_; ++k) _mm_prefetch(p + 64 * k, _MM_HINT_T0);
  }

 private:
  const char* next_;
  int64_t lines_per_step_;
};

// Per-thread scratch, reused from call to call.
inline __m256i* scratch(size_t n) {
  struct alignas(32) Slot {
    uint8_t bytes[32];
  };
  thread_local std::vector<Slot> buf;  // 32-byte aligned (aligned new)
  if (buf.size() < n) buf.resize(n);
  return reinterpret_cast<__m256i*>(buf.data());
}

// ---- Legacy 32-element blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) -------------------------------
// Per block b of each output: d = fp16(x.d) * fp16(y.d); acc = fma(d, lanes, acc); for the
// types with a minimum, summs += fp16(x.m) * fp16(y.s). Then hsum8(acc) (+ summs).
//
// A tile of 4 rows is unpacked once into bytes u, 32 per block, with x = u - kOffset, and its
// scales into floats; every token then reads them back. Where kOffset > 0, u is unsigned and
// the offset goes into the start value of the integer lanes, lane k of token t and block b
// starting at bias = -kOffset * (the sum of y's bytes 4k..4k+3), computed once per call: lanes =
// bias + sum u * y = sum x * y, exactly. One vpdpbusd (or vpmaddubsw + vpmaddwd + vpaddd) per
// output and block instead of two vpsignb on top. Zen 4, 32 tokens, one thread: 0.76-0.88 ns
// per (row, token, block) before (unpacking in the tile, d stored and read straight back) ->
// 0.41-0.47 (bench/micro/quant_gemm_bench.cpp). Two outputs per zmm register measured no faster
// there: 512-bit ops run as two 256-bit halves, and vpdpbusd and vfmadd share two pipes.

// Eight int32 lanes: start + the products of unsigned u with signed y, bytes 4k..4k+3 in lane k
// (no vpmaddubsw pair here can saturate: u <= 31 where start is not zero, see above).
inline __m256i lanes_us_add(__m256i start, __m256i u, __m256i y) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(start, u, y);
#else
  return _mm256_add_epi32(start, _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), _mm256_set1_epi16(1)));
#endif
}

// Q5 blocks' 32 unsigned 5-bit values: the nibbles with bit 4 from qh.
inline __m256i five_bits32(const uint8_t* qs, const uint8_t* qh) {
  return _mm256_or_si256(nibbles32(qs), _mm256_and_si256(bits32(qh), _mm256_set1_epi8(0x10)));
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
constexpr bool kVnni = true;
#else
constexpr bool kVnni = false;
#endif

struct LegacyQ4_0 {
  using Block = BlockQ4_0;
  using Act = BlockQ8_0;
  static constexpr bool kMin = false;
  static constexpr int kOffset = 8;
  static __m256i unpack(const Block& x) { return nibbles32(x.qs); }
};

struct LegacyQ5_0 {
  using Block = BlockQ5_0;
  using Act = BlockQ8_0;
  static constexpr bool kMin = false;
  static constexpr int kOffset = 16;
  static __m256i unpack(const Block& x) {
    return five_bits32(x.qs, x.qh);
  }
};

// With VNNI x + 128 (unsigned, exact for every byte: vpdpbusd cannot saturate); without it the
// signed bytes, multiplied by vpsignb pairs (x + 128 times y could saturate vpmaddubsw).
struct LegacyQ8_0 {
  using Block = BlockQ8_0;
  using Act = BlockQ8_0;
  static constexpr bool kMin = false;
  static constexpr int kOffset = kVnni ? 128 : 0;
  static __m256i unpack(const Block& x) {
    if constexpr (kVnni)
      return _mm256_xor_si256(load32(x.qs), _mm256_set1_epi8(static_cast<char>(0x80)));
    else
      return load32(x.qs);
  }
};

struct LegacyQ4_1 {
  using Block = BlockQ4_1;
  using Act = BlockQ8_1;
  static constexpr bool kMin = true;
  static constexpr int kOffset = 0;
  static __m256i unpack(const Block& x) { return nibbles32(x.qs); }
};

struct LegacyQ5_1 {
  using Block = BlockQ5_1;
  using Act = BlockQ8_1;
  static constexpr bool kMin = true;
  static constexpr int kOffset = 0;
  static __m256i unpack(const Block& x) {
    return five_bits32(x.qs, x.qh);
  }
};

// The integer lanes of one output and block from the unpacked weight bytes, as floats.
template <class K>
inline __m256 legacy_lanes(__m256i qx, __m256i qy, const __m256i* bias) {
  if constexpr (K::kOffset > 0)
    return _mm256_cvtepi32_ps(lanes_us_add(_mm256_load_si256(bias), qx, qy));
  else if constexpr (std::is_same_v<K, LegacyQ8_0>)
    return _mm256_cvtepi32_ps(lanes_ss(qx, qy));
  else
    return _mm256_cvtepi32_ps(lanes_us(qx, qy));
}

// The scales of block b in four rows: lanes 0..3 the d of each row, 4..7 its m (the 16 bits
// after d, which only the types with a minimum use).
template <class Block>
inline __m256 row_scales4(const Block* const* x, int64_t b) {
  uint32_t w[4];
  for (int i = 0; i < 4; ++i) std::memcpy(&w[i], &x[i][b], 4);
  const __m256 v = _mm256_cvtph_ps(_mm_setr_epi32(static_cast<int>(w[0]), static_cast<int>(w[1]),
                                                  static_cast<int>(w[2]), static_cast<int>(w[3])));
  return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

// What a call prepares: the activations' converted scales and lane starts, and the current row
// tile unpacked.
struct LegacyScratch {
  int64_t nb = 0;
  int64_t ntp = 0;                // an even count of tokens, at least one more than there are
  const float* yd = nullptr;      // [block][token < ntp], zero past the last
  const float* ys = nullptr;      // [token][block], types with a minimum
  const __m256i* bias = nullptr;  // [token][block], types with an offset
  const __m256i* qx = nullptr;    // [block][row of 4]
  const __m256* xs = nullptr;     // [block]: row_scales4
  float* d = nullptr;             // a tile's [block][token][row of 4] products of the scales
};

// Unpacks rows r..r+R-1 (4 slots per block; the scales of rows past R repeat the last row's).
template <class K>
void legacy_unpack(const QuantGemmArgs& a, int64_t r, int R, __m256i* qx, __m256* xs,
                   bool prefetch) {
  using Block = typename K::Block;
  const int64_t nb = a.n / 32;
  const Block* x[4];
  for (int i = 0; i < 4; ++i)
    x[i] = reinterpret_cast<const Block*>(a.w + (r + std::min(i, R - 1)) * a.w_stride);
  const Prefetcher pf(reinterpret_cast<const char*>(x[0]) + R * a.w_stride, R * a.w_stride, nb);
  for (int64_t b = 0; b < nb; ++b) {
    if (prefetch) pf.step(b);
    xs[b] = row_scales4(x, b);
    for (int i = 0; i < R; ++i) _mm256_store_si256(qx + 4 * b + i, K::unpack(x[i][b]));
  }
}

// The outputs of a tile: hsum8 of each accumulator (+ summs), rows r.., tokens t...
template <class K, int R, int C>
inline void legacy_store(const QuantGemmArgs& a, const __m256 (&acc)[R][C], const __m128 (&summs)[C],
                         int64_t r, int64_t t) {
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    __m128 out = hsum8x4(acc[0][c], acc[std::min(1, R - 1)][c], acc[std::min(2, R - 1)][c],
                         acc[std::min(3, R - 1)][c]);
    if constexpr (K::kMin) out = _mm_add_ps(out, summs[c]);
    float* dst = a.y + (t + c) * a.ldy + r;
    if constexpr (R == 4) {
      _mm_storeu_ps(dst, out);
    } else {
      alignas(16) float o[4];
      _mm_store_ps(o, out);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) dst[i] = o[i];
    }
  }
}


// Zeroed accumulators (the unrolled loops keep them in registers: GCC 12 left them in memory).
template <int R, int C>
inline void legacy_zero(__m256 (&acc)[R][C], __m128 (&summs)[C]) {
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    summs[c] = _mm_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc[i][c] = _mm256_setzero_ps();
  }
}

// R rows (r..r+R-1, unpacked in s) times C tokens (t..t+C-1), each output its own accumulator.
template <class K, int R, int C>
void legacy_tile(const QuantGemmArgs& a, const LegacyScratch& s, int64_t r, int64_t t) {
  using Act = typename K::Act;
  const int64_t nb = s.nb;
  const Act* y[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) y[c] = reinterpret_cast<const Act*>(a.act + (t + c) * a.act_stride);
  __m256 acc[R][C];
  __m128 summs[C];
  legacy_zero<R, C>(acc, summs);
  const float* ys = s.ys + t * nb;
  const __m256i* bias = s.bias + t * nb;
  // d of every output and block first, two tokens per product, stored well before it is read
  // back (reading it straight from a store stalls).
  constexpr int kC2 = (C + 1) / 2 * 2;
  const __m256i two = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  for (int64_t b = 0; b < nb; ++b) {
    const __m256 xd2 = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(s.xs + b));
    const float* ydb = s.yd + b * s.ntp + t;
#pragma GCC unroll 8
    for (int c = 0; c < C; c += 2) {
      const __m128 pair = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(ydb + c)));
      _mm256_store_ps(s.d + (b * kC2 + c) * 4,
                      _mm256_mul_ps(xd2, _mm256_permutevar8x32_ps(_mm256_castps128_ps256(pair), two)));
    }
  }
  for (int64_t b = 0; b < nb; ++b) {
    const __m256 xs = s.xs[b];
    const __m256i* qx = s.qx + 4 * b;
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m256i qy = load32(y[c][b].qs);
      const float* d = s.d + (b * kC2 + c) * 4;
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i)
        acc[i][c] = _mm256_fmadd_ps(
            _mm256_broadcast_ss(d + i),
            legacy_lanes<K>(_mm256_load_si256(qx + i), qy, bias + c * nb + b),
            acc[i][c]);
      if constexpr (K::kMin)
        summs[c] = _mm_add_ps(summs[c],
                              _mm_mul_ps(_mm256_extractf128_ps(xs, 1), _mm_set1_ps(ys[c * nb + b])));
    }
  }
  legacy_store<K, R, C>(a, acc, summs, r, t);
}

// Few tokens (at most 2, one pass): each weight block serves too few outputs to pay for
// unpacking the tile first, so it is read in place, and the weights stream through one pass.
template <class K, int R, int C>
void legacy_tile_direct(const QuantGemmArgs& a, const LegacyScratch& s, int64_t r, int64_t t) {
  static_assert(C <= 2);
  using Block = typename K::Block;
  using Act = typename K::Act;
  const int64_t nb = s.nb;
  const Block* x[4];
  for (int i = 0; i < 4; ++i)  // rows past R repeat the last one: loaded, never stored
    x[i] = reinterpret_cast<const Block*>(a.w + (r + std::min(i, R - 1)) * a.w_stride);
  const Act* y[C];
  for (int c = 0; c < C; ++c) y[c] = reinterpret_cast<const Act*>(a.act + (t + c) * a.act_stride);
  __m256 acc[R][C];
  __m128 summs[C];
  legacy_zero<R, C>(acc, summs);
  const __m256i two = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  const Prefetcher pf(reinterpret_cast<const char*>(x[0]) + R * a.w_stride, R * a.w_stride, nb);
  for (int64_t b = 0; b < nb; ++b) {
    pf.step(b);
    const __m256 xs = row_scales4(x, b);
    // d of rows 0..3 for token t, then for t + 1.
    const __m128 pair =
        _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s.yd + b * s.ntp + t)));
    const __m256 dv = _mm256_mul_ps(_mm256_permute2f128_ps(xs, xs, 0x00),
                                    _mm256_permutevar8x32_ps(_mm256_castps128_ps256(pair), two));
    __m256i qx[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) qx[i] = K::unpack(x[i][b]);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const __m256i qy = load32(y[c][b].qs);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i)
        acc[i][c] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(dv, _mm256_set1_epi32(4 * c + i)),
                                    legacy_lanes<K>(qx[i], qy, s.bias + (t + c) * nb + b),
                                    acc[i][c]);
      if constexpr (K::kMin)
        summs[c] = _mm_add_ps(summs[c], _mm_mul_ps(_mm256_extractf128_ps(xs, 1),
                                                   _mm_set1_ps(s.ys[(t + c) * nb + b])));
    }
  }
  legacy_store<K, R, C>(a, acc, summs, r, t);
}

using LegacyTileFn = void (*)(const QuantGemmArgs&, const LegacyScratch&, int64_t, int64_t);

template <class K, int R, int... C>
constexpr std::array<LegacyTileFn, sizeof...(C)> legacy_row(std::integer_sequence<int, C...>) {
  return {&legacy_tile<K, R, C + 1>...};
}
template <class K, int R>
constexpr std::array<LegacyTileFn, 2> legacy_row_direct() {
  return {&legacy_tile_direct<K, R, 1>, &legacy_tile_direct<K, R, 2>};
}

// Tiles of 4 rows (4 fma chains hide the fma latency even for one token) by up to kTokens
// tokens, row tiles outermost: a tile's unpacked weights stay in L1 while the activations
// stream by.
template <int kTokens, class K>
void legacy_gemm(const QuantGemmArgs& a, int64_t r0, int64_t r1) {
  using Act = typename K::Act;
  constexpr int kRows = 4;
  static constexpr std::array<std::array<LegacyTileFn, kTokens>, kRows> kTiles = {
      legacy_row<K, 1>(std::make_integer_sequence<int, kTokens>()),
      legacy_row<K, 2>(std::make_integer_sequence<int, kTokens>()),
      legacy_row<K, 3>(std::make_integer_sequence<int, kTokens>()),
      legacy_row<K, 4>(std::make_integer_sequence<int, kTokens>())};
  static constexpr std::array<std::array<LegacyTileFn, 2>, kRows> kDirect = {
      legacy_row_direct<K, 1>(), legacy_row_direct<K, 2>(), legacy_row_direct<K, 3>(),
      legacy_row_direct<K, 4>()};
  const int64_t nb = a.n / 32;
  const int64_t nt = a.n_tokens;
  const int64_t n_bias = K::kOffset > 0 ? nt * nb : 0;
  const int64_t ntp = nt / 2 * 2 + 2;  // a tile of odd C reads one token further
  const int64_t n_scales = ntp * nb + (K::kMin ? nt * nb : 0);
  __m256i* buf =
      scratch(static_cast<size_t>(5 * nb + n_bias + (n_scales + 7) / 8 + (kTokens + 1) / 2 * nb));
  __m256i* qx = buf;
  auto* xs = reinterpret_cast<__m256*>(buf + 4 * nb);
  __m256i* bias = buf + 5 * nb;
  auto* yd = reinterpret_cast<float*>(bias + n_bias);
  float* ys = yd + ntp * nb;
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t t = nt; t < ntp; ++t) yd[b * ntp + t] = 0;
  for (int64_t t = 0; t < nt; ++t) {
    const Act* y = reinterpret_cast<const Act*>(a.act + t * a.act_stride);
    for (int64_t b = 0; b < nb; ++b) {
      yd[b * ntp + t] = h2f(y[b].d);
      if constexpr (K::kMin) ys[t * nb + b] = h2f(y[b].s);
      if constexpr (K::kOffset > 0)
        bias[t * nb + b] = _mm256_sub_epi32(
            _mm256_setzero_si256(),
            lanes_us(_mm256_set1_epi8(static_cast<char>(K::kOffset)), load32(y[b].qs)));
    }
  }
  float* d = reinterpret_cast<float*>(buf + 5 * nb + n_bias + (n_scales + 7) / 8);
  const LegacyScratch s{nb, ntp, yd, ys, bias, qx, xs, d};
  if (nt <= 2) {
    for (int64_t r = r0; r < r1; r += kRows) {
      const int64_t nr = std::min<int64_t>(kRows, r1 - r);
      kDirect[nr - 1][nt - 1](a, s, r, 0);
    }
    return;
  }
  for (int64_t r = r0; r < r1; r += kRows) {
    const int64_t nr = std::min<int64_t>(kRows, r1 - r);
    legacy_unpack<K>(a, r, static_cast<int>(nr), qx, xs, true);
    for (int64_t t = 0; t < nt; t += kTokens) {
      const int64_t nc = std::min<int64_t>(kTokens, nt - t);
      kTiles[nr - 1][nc - 1](a, s, r, t);
    }
  }
}

// ---- Q4_K (256-element super-blocks, 8 sub-blocks of 32 with 6-bit scales and mins) ----------
// Zen 4, one thread, 640 rows (the 8x8 order), 4 and 32 tokens: 1.55-1.69 TSC cycles per (row,
// token, 32 elements) with two hsum_epi32 and scalar fmas per output and super-block and the
// scales stored then broadcast -> 1.26-1.40 with the sums of 4 tokens reduced together and
// vpdpwssd (bench/micro/quant_gemm_bench.cpp k).

// The int16 pairs (x, x) of lane k: what vpmaddwd / vpdpwssd multiplies a pair of int16 by.
inline __m256i pairs16(__m256i dwords) { return _mm256_or_si256(dwords, _mm256_slli_epi32(dwords, 16)); }

// acc + the int16 pairs of p times those of s, summed in int32 lanes (exact: no pair here can
// overflow, |p| <= 2 * 63 * 127 and s <= 127).
inline __m256i madd_add(__m256i acc, __m256i p, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, p, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
#endif
}

// The 12 packed bytes -> the eight 6-bit scales (bytes 0..7) and mins (8..15), ggml's utmp
// shuffle.
inline void q4k_unpack_scales(const uint8_t* packed, uint32_t (&u)[4]) {
  std::memcpy(u, packed, 12);
  constexpr uint32_t kMask1 = 0x3f3f3f3f, kMask2 = 0x0f0f0f0f, kMask3 = 0x03030303;
  u[3] = ((u[2] >> 4) & kMask2) | (((u[1] >> 6) & kMask3) << 4);
  const uint32_t t = u[1] & kMask1;
  u[1] = (u[2] & kMask2) | (((u[0] >> 6) & kMask3) << 4);
  u[2] = t;
  u[0] &= kMask1;
}

// Lane i of the result: the sum of the eight int32 lanes of v[i] (i < 4), and of w[i - 4].
inline __m256i hsum8_epi32x8(const __m256i (&v)[4], const __m256i (&w)[4]) {
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
  const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(w[0], w[1]), _mm256_hadd_epi32(w[2], w[3]));
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                          _mm256_permute2x128_si256(a, b, 0x31));
}

// One row times C tokens. The integer lanes are those of impl::dot_q4_k: lane k sums the bytes
// 4k..4k+3 of each 32-element sub-block times its scale; the repacked order (k8x8) adds them all
// up instead, which integers allow, and then takes the C sums (and those of the mins) as the
// lanes of one vector: lanes c and 4 + c of acc8 are token c's acc and acc_min, each its own fma
// chain as in impl::dot_q4_k_8x8.
template <bool k8x8, int C>
void q4k_tile(const QuantGemmArgs& a, int64_t r, int64_t t) {
  static_assert(C <= 4);
  const int64_t nsb = a.n / 256;
  const auto* x = reinterpret_cast<const BlockQ4K*>(a.w + r * a.w_stride);
  const BlockQ8K* y[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
    y[c] = reinterpret_cast<const BlockQ8K*>(a.act + (t + c) * a.act_stride);
  __m256 acc[C];
  __m128 acc_m[C];
  __m256 acc8 = _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) {
    acc[c] = _mm256_setzero_ps();
    acc_m[c] = _mm_setzero_ps();
  }
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const Prefetcher pf(reinterpret_cast<const char*>(x) + a.w_stride, a.w_stride, nsb);
  for (int64_t i = 0; i < nsb; ++i) {
    if (t == 0) pf.step(i);
    const BlockQ4K& xb = x[i];
    uint32_t u[4];
    q4k_unpack_scales(xb.scales, u);
    // Scale k as an int16 pair in every lane, and min k as the pair in lane k.
    const __m256i scd = pairs16(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(u))));
    const __m256i mins2 =
        pairs16(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(u + 2))));
    __m256i sc[8];
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) sc[k] = _mm256_permutevar8x32_epi32(scd, _mm256_set1_epi32(k));
    __m256i lo[4], hi[4];
#pragma GCC unroll 8
    for (int j = 0; j < 4; ++j) {
      const __m256i q = load32(xb.qs + 32 * j);
      lo[j] = _mm256_and_si256(q, m4);
      hi[j] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    }
    __m256i sumi[4], pm[4];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const BlockQ8K& yb = y[c][i];
      __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int j = 0; j < 4; ++j) {
        s0 = madd_add(s0, _mm256_maddubs_epi16(lo[j], load32(yb.qs + 64 * j)), sc[2 * j]);
        s1 = madd_add(s1, _mm256_maddubs_epi16(hi[j], load32(yb.qs + 64 * j + 32)), sc[2 * j + 1]);
      }
      sumi[c] = _mm256_add_epi32(s0, s1);
      // lane k: mins[k] * (bsums[2k] + bsums[2k + 1])
      pm[c] = _mm256_madd_epi16(load32(yb.bsums), mins2);
    }
    if constexpr (k8x8) {
#pragma GCC unroll 8
      for (int c = C; c < 4; ++c) sumi[c] = pm[c] = _mm256_setzero_si256();
      const __m256 sums = _mm256_cvtepi32_ps(hsum8_epi32x8(sumi, pm));
      uint32_t dd;  // d, dmin
      std::memcpy(&dd, &xb.d, 4);
      const __m256 xs = _mm256_permutevar8x32_ps(
          _mm256_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(dd))),
          _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
      const __m128 yd = _mm_setr_ps(y[0][i].d, C > 1 ? y[std::min(1, C - 1)][i].d : 0.0f,
                                    C > 2 ? y[std::min(2, C - 1)][i].d : 0.0f,
                                    C > 3 ? y[std::min(3, C - 1)][i].d : 0.0f);
      acc8 = _mm256_fmadd_ps(sums, _mm256_mul_ps(xs, _mm256_set_m128(yd, yd)), acc8);
    } else {
      const float xd = h2f(xb.d), xdmin = h2f(xb.dmin);
#pragma GCC unroll 8
      for (int c = 0; c < C; ++c) {
        const float yd = y[c][i].d;
        const float d = yd * xd;
        const float dmin = -yd * xdmin;
        acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[c]), acc[c]);
        const __m128i prod =
            _mm_hadd_epi32(_mm256_castsi256_si128(pm[c]), _mm256_extracti128_si256(pm[c], 1));
        acc_m[c] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[c]);
      }
    }
  }
  if constexpr (k8x8) {
    alignas(32) float o[8];
    _mm256_store_ps(o, acc8);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) a.y[(t + c) * a.ldy + r] = o[c] - o[4 + c];
  } else {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      alignas(16) float m[4];
      _mm_store_ps(m, acc_m[c]);
      const float mm = (m[0] + m[2]) + (m[1] + m[3]);
      a.y[(t + c) * a.ldy + r] = _mm_cvtss_f32(hsum8x4(acc[c], acc[c], acc[c], acc[c])) + mm;
    }
  }
}

// ---- Q6_K (256-element super-blocks, 16 sub-blocks of 16 with int8 scales) --------------------

// One row times C tokens; lanes as impl::dot_q6_k: lane k sums bytes 4k..4k+3 of each 32-byte
// slice times the scale of its 16-element half, minus 32 * scale * (the activations' sums).
template <int C>
void q6k_tile(const QuantGemmArgs& a, int64_t r, int64_t t) {
  const int64_t nsb = a.n / 256;
  const auto* x = reinterpret_cast<const BlockQ6K*>(a.w + r * a.w_stride);
  const BlockQ8K* y[C];
  for (int c = 0; c < C; ++c)
    y[c] = reinterpret_cast<const BlockQ8K*>(a.act + (t + c) * a.act_stride);
  __m256 acc[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x30);
  // Slice s takes scale 2s (int16 at bytes 4s, 4s+1) in its low 16 bytes and 2s+1 in its high.
  const __m256i shuf[4] = {
      _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,  //
                       2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3),
      _mm256_setr_epi8(4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5, 4, 5,  //
                       6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7, 6, 7),
      _mm256_setr_epi8(8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9, 8, 9,  //
                       10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11, 10, 11),
      _mm256_setr_epi8(12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13, 12, 13,  //
                       14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15)};
  const Prefetcher pf(reinterpret_cast<const char*>(x) + a.w_stride, a.w_stride, nsb);
  for (int64_t i = 0; i < nsb; ++i) {
    if (t == 0) pf.step(i);
    const BlockQ6K& xb = x[i];
    __m256i sumi[C];
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) sumi[c] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int j = 0; j < 2; ++j) {
      const __m256i ql0 = load32(xb.ql + 64 * j);
      const __m256i ql1 = load32(xb.ql + 64 * j + 32);
      const __m256i qh = load32(xb.qh + 32 * j);
      __m256i q[4];
      q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4),
                             _mm256_and_si256(_mm256_slli_epi16(qh, 4), m2));
      q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                             _mm256_and_si256(_mm256_slli_epi16(qh, 2), m2));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                             _mm256_and_si256(qh, m2));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                             _mm256_and_si256(_mm256_srli_epi16(qh, 2), m2));
      const __m128i sc8 =
          _mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(xb.scales + 8 * j)));
      const __m256i sc = _mm256_broadcastsi128_si256(sc8);
#pragma GCC unroll 8
      for (int s = 0; s < 4; ++s) {
        const __m256i scs = _mm256_shuffle_epi8(sc, shuf[s]);
#pragma GCC unroll 8
        for (int c = 0; c < C; ++c) {
          const __m256i p = _mm256_maddubs_epi16(q[s], load32(y[c][i].qs + 128 * j + 32 * s));
          // Fused only where C chains hide vpdpwssd's latency (1 token: 7% slower fused).
          if constexpr (C > 2)
            sumi[c] = madd_add(sumi[c], p, scs);
          else
            sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(p, scs));
        }
      }
    }
    const __m256i sc16 =
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb.scales)));
    const float xd = h2f(xb.d);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const BlockQ8K& yb = y[c][i];
      const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(load32(yb.bsums), sc16), 5);
      const __m256i s = _mm256_sub_epi32(sumi[c], off);
      acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(yb.d * xd), _mm256_cvtepi32_ps(s), acc[c]);
    }
  }
  for (int c = 0; c < C; ++c)
    a.y[(t + c) * a.ldy + r] = _mm_cvtss_f32(hsum8x4(acc[c], acc[c], acc[c], acc[c]));
}

using KTileFn = void (*)(const QuantGemmArgs&, int64_t, int64_t);

template <template <int> class Tile, int... C>
constexpr std::array<KTileFn, sizeof...(C)> k_tiles(std::integer_sequence<int, C...>) {
  return {&Tile<C + 1>::run...};
}

// One row at a time (a super-block is long enough to hide the fma latency), up to kTokens
// tokens per pass so each unpacked super-block serves several.
template <int kTokens, template <int> class Tile>
void k_gemm(const QuantGemmArgs& a, int64_t r0, int64_t r1) {
  static constexpr std::array<KTileFn, kTokens> kTiles =
      k_tiles<Tile>(std::make_integer_sequence<int, kTokens>());
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t t = 0; t < a.n_tokens; t += kTokens)
      kTiles[std::min<int64_t>(kTokens, a.n_tokens - t) - 1](a, r, t);
}

template <int C>
struct Q4KTile {
  static void run(const QuantGemmArgs& a, int64_t r, int64_t t) { q4k_tile<false, C>(a, r, t); }
};
template <int C>
struct Q4K8x8Tile {
  static void run(const QuantGemmArgs& a, int64_t r, int64_t t) { q4k_tile<true, C>(a, r, t); }
};
template <int C>
struct Q6KTile {
  static void run(const QuantGemmArgs& a, int64_t r, int64_t t) { q6k_tile<C>(a, r, t); }
};

// The table for this ISA; kLegacyTokens and kKTokens: tokens per tile.
template <int kLegacyTokens, int kKTokens>
QuantGemmOps make_ops() {
  return QuantGemmOps{
      &legacy_gemm<kLegacyTokens, LegacyQ4_0>, &legacy_gemm<kLegacyTokens, LegacyQ4_1>,
      &legacy_gemm<kLegacyTokens, LegacyQ5_0>, &legacy_gemm<kLegacyTokens, LegacyQ5_1>,
      &legacy_gemm<kLegacyTokens, LegacyQ8_0>, &k_gemm<kKTokens, Q4KTile>,
      &k_gemm<kKTokens, Q4K8x8Tile>,           &k_gemm<kKTokens, Q6KTile>};
}

}  // namespace
}  // namespace fennec::kernels::x86
