#include "kernels/cpu/activation_quant.h"

#include <algorithm>
#include <cmath>

#include "core/float_convert.h"

namespace fennec::kernels {

using formats::GgmlType;

ActFormat activation_format(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return ActFormat::kF32;
    case GgmlType::F16: return ActFormat::kF16;
    case GgmlType::BF16: return ActFormat::kBF16;
    case GgmlType::Q4_1:
    case GgmlType::Q5_1: return ActFormat::kQ8_1;
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K: return ActFormat::kQ8_K;
    default: return ActFormat::kQ8_0;
  }
}

int activation_block(ActFormat f) {
  switch (f) {
    case ActFormat::kQ8_0:
    case ActFormat::kQ8_1: return 32;
    case ActFormat::kQ8_K: return 256;
    default: return 1;
  }
}

namespace {

inline float bf16_round(float x) {
  uint32_t u = f32_to_bits(x);
  if ((u & 0x7fffffff) > 0x7f800000) return bits_to_f32((u | 0x00400000) & 0xffff0000u);  // NaN
  u += 0x7fff + ((u >> 16) & 1);  // round to nearest even
  return bits_to_f32(u & 0xffff0000u);
}

// ggml's nearest_int: round half to even via the 1.5 * 2^23 trick (|v| < 2^22).
inline int nearest_int(float v) {
  float val = v + 12582912.f;
  int i;
  uint32_t u = f32_to_bits(val);
  i = static_cast<int>(u & 0x007fffff) - 0x00400000;
  return i;
}

void round_q8_0(const float* x, float* out, int64_t n) {
  for (int64_t b = 0; b < n; b += 32) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = amax / 127.0f;
    const float id = amax != 0 ? 127.0f / amax : 0.0f;
    const float dh = fp16_to_f32(f32_to_fp16(d));
    for (int j = 0; j < 32; ++j) {
      // ggml's x86 path rounds to nearest even (_mm256_round_ps with _MM_ROUND_NEAREST).
      out[b + j] = dh * std::nearbyint(x[b + j] * id);
    }
  }
}

void round_q8_k(const float* x, float* out, int64_t n) {
  for (int64_t b = 0; b < n; b += 256) {
    float amax = 0, max = 0;
    for (int j = 0; j < 256; ++j) {
      const float ax = std::fabs(x[b + j]);
      if (ax > amax) {
        amax = ax;
        max = x[b + j];
      }
    }
    if (amax == 0) {
      std::fill(out + b, out + b + 256, 0.0f);
      continue;
    }
    const float iscale = -127.f / max;
    const float d = 1 / iscale;
    for (int j = 0; j < 256; ++j) {
      const int v = std::min(127, nearest_int(iscale * x[b + j]));
      out[b + j] = d * static_cast<float>(v);
    }
  }
}

}  // namespace

void round_activations(ActFormat f, const float* x, float* out, int64_t n) {
  switch (f) {
    case ActFormat::kF32:
      if (out != x) std::copy(x, x + n, out);
      return;
    case ActFormat::kF16:
      for (int64_t i = 0; i < n; ++i) out[i] = fp16_to_f32(f32_to_fp16(x[i]));
      return;
    case ActFormat::kBF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_round(x[i]);
      return;
    case ActFormat::kQ8_0:
    case ActFormat::kQ8_1: round_q8_0(x, out, n); return;
    case ActFormat::kQ8_K: round_q8_k(x, out, n); return;
  }
}

}  // namespace fennec::kernels
