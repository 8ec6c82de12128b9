// Kernel bodies of quant_dot.h, compiled once per ISA (quant_dot_scalar.cpp without FMA
// instructions, where std::fma is a library call; quant_dot_avx2.cpp with -mavx2 -mfma, where
// it is one instruction). Same results on both: every float step is spelled out.
// Included only by those two files. The bodies sit in an unnamed namespace so that each of those
// files keeps its own copy: as ordinary inline functions the linker would keep one copy for both
// (the scalar one ran in the AVX2 path, with a library call per fma; the AVX2 one could have run
// on a CPU without AVX2).
#pragma once

#include <cmath>
#include <cstring>

#include "core/float_convert.h"
#include "quant/blocks.h"

namespace fennec::kernels::impl {
namespace {  // NOLINT(google-build-namespaces): one copy per ISA, see above

using quant::BlockQ4_0;
using quant::BlockQ4_1;
using quant::BlockQ4K;
using quant::BlockQ5_0;
using quant::BlockQ5_1;
using quant::BlockQ6K;
using quant::BlockQ8_0;
using quant::BlockQ8_1;
using quant::BlockQ8K;

inline float h2f(uint16_t h) { return fp16_to_f32(h); }

// ggml's hsum_float_8: (a0+a4) (a1+a5) (a2+a6) (a3+a7), then pairs across.
inline float hsum8(const float* a) {
  const float r0 = a[4] + a[0], r1 = a[5] + a[1], r2 = a[6] + a[2], r3 = a[7] + a[3];
  return (r0 + r2) + (r1 + r3);
}

// Lane k of a 32-byte block: the integer sum of elements 4k..4k+3.
inline void lanes32(const int8_t* qx, const int8_t* qy, int32_t* lane) {
  for (int k = 0; k < 8; ++k) {
    int32_t s = 0;
    for (int j = 0; j < 4; ++j) s += static_cast<int32_t>(qx[4 * k + j]) * qy[4 * k + j];
    lane[k] = s;
  }
}

// Unpacks a 4-bit (plus optional fifth bit) block into 32 signed bytes, element order.
inline void unpack_nibbles(const uint8_t* qs, const uint8_t* qh, int offset, int8_t* out) {
  uint32_t hbits = 0;
  if (qh) std::memcpy(&hbits, qh, 4);
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 15) | (qh ? static_cast<int>((hbits >> j) & 1) << 4 : 0);
    const int hi = (qs[j] >> 4) | (qh ? static_cast<int>((hbits >> (j + 16)) & 1) << 4 : 0);
    out[j] = static_cast<int8_t>(lo - offset);
    out[j + 16] = static_cast<int8_t>(hi - offset);
  }
}

template <class Block, int kOffset, bool kHigh>
inline float dot_legacy_q8_0(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const Block*>(vx);
  const auto* y = static_cast<const BlockQ8_0*>(vy);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int8_t qx[32];
  int32_t lane[8];
  for (int64_t b = 0; b < n / 32; ++b) {
    Block blk;
    std::memcpy(&blk, x + b, sizeof(Block));
    if constexpr (kHigh)
      unpack_nibbles(blk.qs, blk.qh, kOffset, qx);
    else
      unpack_nibbles(blk.qs, nullptr, kOffset, qx);
    BlockQ8_0 yb;
    std::memcpy(&yb, y + b, sizeof(yb));
    const float d = h2f(blk.d) * h2f(yb.d);
    lanes32(qx, yb.qs, lane);
    for (int k = 0; k < 8; ++k) acc[k] = std::fma(d, static_cast<float>(lane[k]), acc[k]);
  }
  return hsum8(acc);
}

template <class Block, bool kHigh>
inline float dot_legacy_q8_1(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const Block*>(vx);
  const auto* y = static_cast<const BlockQ8_1*>(vy);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  float summs = 0;
  int8_t qx[32];
  int32_t lane[8];
  for (int64_t b = 0; b < n / 32; ++b) {
    Block blk;
    std::memcpy(&blk, x + b, sizeof(Block));
    if constexpr (kHigh)
      unpack_nibbles(blk.qs, blk.qh, 0, qx);
    else
      unpack_nibbles(blk.qs, nullptr, 0, qx);
    BlockQ8_1 yb;
    std::memcpy(&yb, y + b, sizeof(yb));
    summs += h2f(blk.m) * h2f(yb.s);
    const float d = h2f(blk.d) * h2f(yb.d);
    lanes32(qx, yb.qs, lane);
    for (int k = 0; k < 8; ++k) acc[k] = std::fma(d, static_cast<float>(lane[k]), acc[k]);
  }
  return hsum8(acc) + summs;
}

inline float dot_q4_0(const void* x, const void* y, int64_t n) {
  return dot_legacy_q8_0<BlockQ4_0, 8, false>(x, y, n);
}
inline float dot_q5_0(const void* x, const void* y, int64_t n) {
  return dot_legacy_q8_0<BlockQ5_0, 16, true>(x, y, n);
}
inline float dot_q4_1(const void* x, const void* y, int64_t n) {
  return dot_legacy_q8_1<BlockQ4_1, false>(x, y, n);
}
inline float dot_q5_1(const void* x, const void* y, int64_t n) {
  return dot_legacy_q8_1<BlockQ5_1, true>(x, y, n);
}

inline float dot_q8_0(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const BlockQ8_0*>(vx);
  const auto* y = static_cast<const BlockQ8_0*>(vy);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int32_t lane[8];
  for (int64_t b = 0; b < n / 32; ++b) {
    BlockQ8_0 xb, yb;
    std::memcpy(&xb, x + b, sizeof(xb));
    std::memcpy(&yb, y + b, sizeof(yb));
    const float d = h2f(xb.d) * h2f(yb.d);
    lanes32(xb.qs, yb.qs, lane);
    for (int k = 0; k < 8; ++k) acc[k] = std::fma(d, static_cast<float>(lane[k]), acc[k]);
  }
  return hsum8(acc);
}

// The 6-bit scales and mins of a Q4_K/Q5_K block: sc[0..7], mn[0..7].
inline void unpack_scales_k4(const uint8_t* s, int32_t* sc, int32_t* mn) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = s[j] & 63;
      mn[j] = s[j + 4] & 63;
    } else {
      sc[j] = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
      mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
  }
}

inline float dot_q4_k(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const BlockQ4K*>(vx);
  const auto* y = static_cast<const BlockQ8K*>(vy);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  float acc_m[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i < n / 256; ++i) {
    BlockQ4K xb;
    std::memcpy(&xb, x + i, sizeof(xb));
    const BlockQ8K& yb = y[i];
    const float d = yb.d * h2f(xb.d);
    const float dmin = -yb.d * h2f(xb.dmin);
    int32_t sc[8], mn[8];
    unpack_scales_k4(xb.scales, sc, mn);
    for (int p = 0; p < 4; ++p) {
      const int32_t s0 = yb.bsums[4 * p] + yb.bsums[4 * p + 1];
      const int32_t s1 = yb.bsums[4 * p + 2] + yb.bsums[4 * p + 3];
      const int32_t prod = mn[2 * p] * s0 + mn[2 * p + 1] * s1;
      acc_m[p] = std::fma(dmin, static_cast<float>(prod), acc_m[p]);
    }
    int32_t sumi[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < 4; ++j) {
      const uint8_t* q4 = xb.qs + 32 * j;
      const int8_t* q8 = yb.qs + 64 * j;
      for (int b = 0; b < 32; ++b)
        sumi[b / 4] += sc[2 * j] * (q4[b] & 15) * q8[b] + sc[2 * j + 1] * (q4[b] >> 4) * q8[32 + b];
    }
    for (int k = 0; k < 8; ++k) acc[k] = std::fma(d, static_cast<float>(sumi[k]), acc[k]);
  }
  const float m = (acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]);
  return hsum8(acc) + m;
}

// Q4_K in the order of llama.cpp's repacked kernels (q4_K_8x8 gemv/gemm on x86), which it uses
// by default for Q4_K matrices whose row count is a multiple of 8: per super-block one exact
// integer sum for the scales and one for the mins, each accumulated by its own fma chain.
inline float dot_q4_k_8x8(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const BlockQ4K*>(vx);
  const auto* y = static_cast<const BlockQ8K*>(vy);
  float acc = 0, acc_min = 0;
  for (int64_t i = 0; i < n / 256; ++i) {
    BlockQ4K xb;
    std::memcpy(&xb, x + i, sizeof(xb));
    const BlockQ8K& yb = y[i];
    int32_t sc[8], mn[8];
    unpack_scales_k4(xb.scales, sc, mn);
    int32_t isum = 0, imin = 0;
    for (int j = 0; j < 4; ++j) {
      const uint8_t* q4 = xb.qs + 32 * j;
      const int8_t* q8 = yb.qs + 64 * j;
      int32_t lo = 0, hi = 0;
      for (int b = 0; b < 32; ++b) {
        lo += (q4[b] & 15) * q8[b];
        hi += (q4[b] >> 4) * q8[32 + b];
      }
      isum += sc[2 * j] * lo + sc[2 * j + 1] * hi;
    }
    for (int sb = 0; sb < 8; ++sb) imin += mn[sb] * (yb.bsums[2 * sb] + yb.bsums[2 * sb + 1]);
    acc = std::fma(static_cast<float>(isum), h2f(xb.d) * yb.d, acc);
    acc_min = std::fma(static_cast<float>(imin), h2f(xb.dmin) * yb.d, acc_min);
  }
  return acc - acc_min;
}

inline float dot_q6_k(const void* vx, const void* vy, int64_t n) {
  const auto* x = static_cast<const BlockQ6K*>(vx);
  const auto* y = static_cast<const BlockQ8K*>(vy);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n / 256; ++i) {
    BlockQ6K xb;
    std::memcpy(&xb, x + i, sizeof(xb));
    const BlockQ8K& yb = y[i];
    const float d = yb.d * h2f(xb.d);
    int32_t sumi[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int j = 0; j < 2; ++j) {
      const uint8_t* ql = xb.ql + 64 * j;
      const uint8_t* qh = xb.qh + 32 * j;
      const int8_t* q8 = yb.qs + 128 * j;
      const int8_t* sc = xb.scales + 8 * j;
      for (int b = 0; b < 32; ++b) {
        const int half = b >= 16;
        const int q0 = (ql[b] & 15) | ((qh[b] & 3) << 4);
        const int q1 = (ql[32 + b] & 15) | (((qh[b] >> 2) & 3) << 4);
        const int q2 = (ql[b] >> 4) | (((qh[b] >> 4) & 3) << 4);
        const int q3 = (ql[32 + b] >> 4) | (((qh[b] >> 6) & 3) << 4);
        sumi[b / 4] += sc[0 + half] * q0 * q8[b] + sc[2 + half] * q1 * q8[32 + b] +
                       sc[4 + half] * q2 * q8[64 + b] + sc[6 + half] * q3 * q8[96 + b];
      }
    }
    // The 6-bit values carry an offset of 32: subtract 32 * scale * (sum of activations).
    for (int k = 0; k < 8; ++k)
      sumi[k] -=
          (yb.bsums[2 * k] * xb.scales[2 * k] + yb.bsums[2 * k + 1] * xb.scales[2 * k + 1]) * 32;
    for (int k = 0; k < 8; ++k) acc[k] = std::fma(d, static_cast<float>(sumi[k]), acc[k]);
  }
  return hsum8(acc);
}

// j * 2^n for |n| <= 192 and j near 1, rounded once as std::ldexp (and AVX-512's scalef) round
// it, without ldexp's library call: j * 2^(n/2) is exact (normal), the second factor rounds.
inline float scale_pow2(float j, int n) {
  const int n1 = n / 2, n2 = n - n1;
  return j * bits_to_f32(static_cast<uint32_t>(n1 + 127) << 23) *
         bits_to_f32(static_cast<uint32_t>(n2 + 127) << 23);
}

// ggml_v_expf: exp by range reduction and a degree-5 polynomial (fused steps as in ggml).
inline float expf_ggml(float x) {
  const float r = 0x1.8p23f;
  const float z = std::fma(x, 0x1.715476p+0f, r);
  const float nn = z - r;
  const float b = std::fma(-nn, 0x1.7f7d1cp-20f, std::fma(-nn, 0x1.62e4p-1f, x));
  const float u = b * b;
  const float j = std::fma(std::fma(std::fma(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                                    std::fma(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                           u, std::fma(0x1.ffffecp-1f, b, 1.0f));
  if (nn > 192.0f) return INFINITY;
  if (nn < -192.0f) return 0.0f;
  return scale_pow2(j, static_cast<int>(nn));
}

// _mm512_reduce_add_ps as GCC expands it: halves, quarters, then pairs.
inline float reduce16(const float* v) {
  float t3[8], t6[4];
  for (int i = 0; i < 8; ++i) t3[i] = v[8 + i] + v[i];
  for (int i = 0; i < 4; ++i) t6[i] = t3[4 + i] + t3[i];
  return (t6[0] + t6[2]) + (t6[1] + t6[3]);
}

// ggml_vec_dot_f16 on AVX-512 for values already rounded to fp16: four 16-lane accumulators
// over steps of 64, combined (0+2)+(1+3), reduced, and the tail added in double.
inline float dot_f16(const float* a, const float* b, int64_t n) {
  const int64_t np = n & ~int64_t{63};
  float acc[4][16] = {};
  for (int64_t i = 0; i < np; i += 64)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 16; ++l)
        acc[j][l] = std::fma(a[i + 16 * j + l], b[i + 16 * j + l], acc[j][l]);
  float x[16];
  for (int l = 0; l < 16; ++l) x[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
  double s = reduce16(x);
  for (int64_t i = np; i < n; ++i) s += static_cast<double>(a[i] * b[i]);
  return static_cast<float>(s);
}

// llamafile tinyBLAS on AVX-512 (fp16 A and B): one 16-lane fma chain over k, then reduced.
inline float dot_f16_chain(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  for (int64_t i = 0; i < n; i += 16)
    for (int l = 0; l < 16; ++l) acc[l] = std::fma(a[i + l], b[i + l], acc[l]);
  return reduce16(acc);
}

// ggml_vec_soft_max_f32 on AVX-512: y = exp(x - max) by the polynomial over whole chunks of 16
// (libm expf on the tail); returns the sum, each chunk reduced in float and added in double.
inline double softmax_exp(const float* x, float* y, int64_t n, float max) {
  double sum = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int l = 0; l < 16; ++l) y[i + l] = expf_ggml(x[i + l] - max);
    sum += reduce16(y + i);
  }
  for (; i < n; ++i) {
    y[i] = std::exp(x[i] - max);
    sum += y[i];
  }
  return sum;
}

// QuantDotOps::rope_rotate, one pair at a time from pair `from` on.
inline void rope_rotate(float* v, int n_heads, int head_dim, int half, bool neox, const float* c, const float* s,
                        int from = 0) {
  for (int h = 0; h < n_heads; ++h) {
    float* x = v + static_cast<int64_t>(h) * head_dim;
    for (int i = from; i < half; ++i) {
      const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
      const float x0 = x[a], x1 = x[b];
      x[a] = std::fma(x0, c[i], -(x1 * s[i]));
      x[b] = std::fma(x0, s[i], x1 * c[i]);
    }
  }
}

// QuantDotOps::geglu, one value at a time.
inline void geglu(const float* g, const float* u, float* out, int64_t n, const float* table) {
  for (int64_t i = 0; i < n; ++i) {
    if (g[i] <= -10.0f)
      out[i] = 0.0f;
    else if (g[i] >= 10.0f)
      out[i] = g[i] * u[i];
    else
      out[i] = table[f32_to_fp16(g[i])] * u[i];
  }
}

// ggml_vec_swiglu_f32 on AVX-512: whole chunks of 16 take the polynomial, the tail libm expf.
// fennec uses this order on every path, so its dispatch paths agree with each other.
inline void swiglu(const float* g, const float* u, float* out, int64_t n) {
  const int64_t n16 = n / 16 * 16;
  int64_t i = 0;
  for (; i < n16; ++i) out[i] = (g[i] / (1.0f + expf_ggml(-g[i]))) * u[i];
  for (; i < n; ++i) out[i] = (g[i] / (1.0f + std::exp(-g[i]))) * u[i];
}

}  // namespace
}  // namespace fennec::kernels::impl
