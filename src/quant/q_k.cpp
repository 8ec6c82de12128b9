// K-quants: 256-element super-blocks Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, and Q8_K.
#include <cstring>

#include "core/float_convert.h"
#include "quant/dequantize.h"

namespace fennec::quant::ref {

// The 6-bit scales and mins of Q4_K/Q5_K: sub-block j < 4 keeps them in the low 6 bits of
// bytes j and j+4; j >= 4 has 4 low bits in byte j+4 and 2 high bits on top of bytes j-4, j.
void unpack_scale_min_k4(const uint8_t* s, uint8_t sc[8], uint8_t mn[8]) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
    sc[j + 4] = static_cast<uint8_t>((s[j + 8] & 0xf) | ((s[j] >> 6) << 4));
    mn[j + 4] = static_cast<uint8_t>((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
  }
}

namespace {

// The 16 signed 6-bit scales of Q3_K: low 4 bits are the nibbles of bytes 0..7 (low nibbles
// first), the high 2 bits come from bytes 8..11, two bits per scale, minus 32.
void unpack_scales_q3k(const uint8_t* s, int sc[16]) {
  for (int j = 0; j < 16; ++j) {
    const int lo = (s[j % 8] >> (4 * (j / 8))) & 0xf;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    sc[j] = (lo | hi << 4) - 32;
  }
}

}  // namespace

void dequantize_q2_k(const BlockQ2K* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_f32(x[i].d);
    const float dmin = fp16_to_f32(x[i].dmin);
    // Element 128h + 32s + l (l < 32) is bits 2s..2s+1 of qs[32h + l]; its scale byte is
    // scales[8h + 2s + l/16].
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = x[i].qs + 32 * h;
      for (int s = 0; s < 4; ++s) {
        for (int half = 0; half < 2; ++half) {
          const uint8_t sc = x[i].scales[8 * h + 2 * s + half];
          const float dl = d * static_cast<float>(sc & 0xf);
          const float ml = dmin * static_cast<float>(sc >> 4);
          const uint8_t* qq = q + 16 * half;
          for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((qq[l] >> (2 * s)) & 3) - ml;
        }
      }
    }
  }
}

void dequantize_q3_k(const BlockQ3K* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_f32(x[i].d);
    int sc[16];
    unpack_scales_q3k(x[i].scales, sc);
    // Element 128h + 32s + l: 2 low bits at bits 2s of qs[32h + l], high bit at bit 4h + s of
    // hmask[l]; a clear high bit means q - 4.
    for (int h = 0; h < 2; ++h) {
      const uint8_t* q = x[i].qs + 32 * h;
      for (int s = 0; s < 4; ++s) {
        const int hbit = 4 * h + s;
        for (int half = 0; half < 2; ++half) {
          const float dl = d * static_cast<float>(sc[8 * h + 2 * s + half]);
          const uint8_t* qq = q + 16 * half;
          const uint8_t* hm = x[i].hmask + 16 * half;
          for (int l = 0; l < 16; ++l) {
            const int lo = (qq[l] >> (2 * s)) & 3;
            const int hi = (hm[l] >> hbit) & 1;
            *y++ = dl * static_cast<float>(lo - 4 + 4 * hi);
          }
        }
      }
    }
  }
}

void dequantize_q4_k(const BlockQ4K* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_f32(x[i].d);
    const float dmin = fp16_to_f32(x[i].dmin);
    uint8_t sc[8], mn[8];
    unpack_scale_min_k4(x[i].scales, sc, mn);
    // 64 elements per 32 bytes: low nibbles are sub-block 2p, high nibbles 2p + 1.
    for (int p = 0; p < 4; ++p) {
      const uint8_t* q = x[i].qs + 32 * p;
      const float d1 = d * static_cast<float>(sc[2 * p]), m1 = dmin * static_cast<float>(mn[2 * p]);
      const float d2 = d * static_cast<float>(sc[2 * p + 1]);
      const float m2 = dmin * static_cast<float>(mn[2 * p + 1]);
      for (int l = 0; l < 32; ++l) y[l] = d1 * static_cast<float>(q[l] & 0xf) - m1;
      for (int l = 0; l < 32; ++l) y[l + 32] = d2 * static_cast<float>(q[l] >> 4) - m2;
      y += 64;
    }
  }
}

void dequantize_q5_k(const BlockQ5K* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_f32(x[i].d);
    const float dmin = fp16_to_f32(x[i].dmin);
    uint8_t sc[8], mn[8];
    unpack_scale_min_k4(x[i].scales, sc, mn);
    // As Q4_K; the fifth bit of sub-block k is bit k of qh[l].
    for (int p = 0; p < 4; ++p) {
      const uint8_t* q = x[i].qs + 32 * p;
      const uint8_t* qh = x[i].qh;
      const float d1 = d * static_cast<float>(sc[2 * p]), m1 = dmin * static_cast<float>(mn[2 * p]);
      const float d2 = d * static_cast<float>(sc[2 * p + 1]);
      const float m2 = dmin * static_cast<float>(mn[2 * p + 1]);
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] & 0xf) | (((qh[l] >> (2 * p)) & 1) << 4);
        y[l] = d1 * static_cast<float>(v) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        const int v = (q[l] >> 4) | (((qh[l] >> (2 * p + 1)) & 1) << 4);
        y[l + 32] = d2 * static_cast<float>(v) - m2;
      }
      y += 64;
    }
  }
}

void dequantize_q6_k(const BlockQ6K* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = fp16_to_f32(x[i].d);
    // Each half h of 128: element 128h + 32k + l (k < 4, l < 32) takes a nibble of
    // ql[64h + 32(k & 1) + l] (high nibble for k >= 2) and bits 2k of qh[32h + l];
    // its scale is scales[8h + 2k + l/16].
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = x[i].ql + 64 * h;
      const uint8_t* qh = x[i].qh + 32 * h;
      const int8_t* sc = x[i].scales + 8 * h;
      for (int k = 0; k < 4; ++k) {
        const uint8_t* qlk = ql + 32 * (k & 1);
        const int nib_shift = 4 * (k >> 1);
        for (int half = 0; half < 2; ++half) {
          const float dl = d * static_cast<float>(sc[2 * k + half]);
          const uint8_t* a = qlk + 16 * half;
          const uint8_t* b = qh + 16 * half;
          float* yy = y + 32 * k + 16 * half;
          for (int l = 0; l < 16; ++l) {
            const int q = ((a[l] >> nib_shift) & 0xf) | (((b[l] >> (2 * k)) & 3) << 4);
            yy[l] = dl * static_cast<float>(q - 32);
          }
        }
      }
      y += 128;
    }
  }
}

void dequantize_q8_k(const BlockQ8K* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQKK) {
    const float d = x[i].d;
    for (int j = 0; j < kQKK; ++j) y[j] = d * static_cast<float>(x[i].qs[j]);
  }
}

}  // namespace fennec::quant::ref
