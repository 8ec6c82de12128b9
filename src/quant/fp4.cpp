// 4-bit float types MXFP4 and NVFP4, in ggml's convention: doubled E2M1 codes (kE2M1Doubled)
// times half scales, which gives the same values as E2M1 * scale except that code 8 is +0.
#include "core/float_convert.h"
#include "quant/dequantize.h"

namespace fennec::quant::ref {

void dequantize_mxfp4(const BlockMxfp4* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = e8m0_to_f32_half(x[i].e);
    const uint8_t* q = x[i].qs;
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(kE2M1Doubled[q[j] & 0xf]) * d;
      y[j + kQK / 2] = static_cast<float>(kE2M1Doubled[q[j] >> 4]) * d;
    }
  }
}

void dequantize_nvfp4(const BlockNvfp4* x, float* __restrict y, int64_t nb) {
  constexpr int kHalf = kQKNvfp4Sub / 2;
  for (int64_t i = 0; i < nb; ++i) {
    for (int s = 0; s < kQKNvfp4 / kQKNvfp4Sub; ++s, y += kQKNvfp4Sub) {
      const float d = ue4m3_to_f32_half(x[i].d[s]);
      const uint8_t* q = x[i].qs + kHalf * s;
      for (int j = 0; j < kHalf; ++j) {
        y[j] = static_cast<float>(kE2M1Doubled[q[j] & 0xf]) * d;
        y[j + kHalf] = static_cast<float>(kE2M1Doubled[q[j] >> 4]) * d;
      }
    }
  }
}

}  // namespace fennec::quant::ref
