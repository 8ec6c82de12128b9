// Legacy 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, and the Q8_0 quantizer.
// Low and high nibbles go in separate loops and y is restrict: that is what lets GCC vectorize.
#include <cmath>
#include <cstring>

#include "core/float_convert.h"
#include "quant/dequantize.h"

namespace fennec::quant::ref {

namespace {
uint32_t load_qh(const uint8_t* qh) {
  uint32_t v;
  std::memcpy(&v, qh, 4);
  return v;
}
}  // namespace

void dequantize_q4_0(const BlockQ4_0* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(x[i].d);
    const uint8_t* q = x[i].qs;
    for (int j = 0; j < kQK / 2; ++j) y[j] = static_cast<float>((q[j] & 0xf) - 8) * d;
    for (int j = 0; j < kQK / 2; ++j) y[j + kQK / 2] = static_cast<float>((q[j] >> 4) - 8) * d;
  }
}

void dequantize_q4_1(const BlockQ4_1* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(x[i].d);
    const float m = fp16_to_f32(x[i].m);
    const uint8_t* q = x[i].qs;
    for (int j = 0; j < kQK / 2; ++j) y[j] = static_cast<float>(q[j] & 0xf) * d + m;
    for (int j = 0; j < kQK / 2; ++j) y[j + kQK / 2] = static_cast<float>(q[j] >> 4) * d + m;
  }
}

void dequantize_q5_0(const BlockQ5_0* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(x[i].d);
    const uint32_t qh = load_qh(x[i].qh);
    const uint8_t* q = x[i].qs;
    for (int j = 0; j < kQK / 2; ++j) {
      const int h = (qh & (1u << j)) != 0 ? 0x10 : 0;  // constant masks: vectorizes
      y[j] = static_cast<float>(((q[j] & 0xf) | h) - 16) * d;
    }
    for (int j = 0; j < kQK / 2; ++j) {
      const int h = (qh & (1u << (j + 16))) != 0 ? 0x10 : 0;
      y[j + kQK / 2] = static_cast<float>(((q[j] >> 4) | h) - 16) * d;
    }
  }
}

void dequantize_q5_1(const BlockQ5_1* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(x[i].d);
    const float m = fp16_to_f32(x[i].m);
    const uint32_t qh = load_qh(x[i].qh);
    const uint8_t* q = x[i].qs;
    for (int j = 0; j < kQK / 2; ++j) {
      const int h = (qh & (1u << j)) != 0 ? 0x10 : 0;  // constant masks: vectorizes
      y[j] = static_cast<float>((q[j] & 0xf) | h) * d + m;
    }
    for (int j = 0; j < kQK / 2; ++j) {
      const int h = (qh & (1u << (j + 16))) != 0 ? 0x10 : 0;
      y[j + kQK / 2] = static_cast<float>((q[j] >> 4) | h) * d + m;
    }
  }
}

void dequantize_q8_0(const BlockQ8_0* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(x[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(x[i].qs[j]) * d;
  }
}

void dequantize_q8_1(const BlockQ8_1* x, float* __restrict y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += kQK) {
    const float d = fp16_to_f32(x[i].d);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(x[i].qs[j]) * d;
  }
}

void quantize_q8_0(const float* __restrict x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      const float a = std::fabs(x[j]);
      amax = amax > a ? amax : a;  // ggml MAX()
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f32_to_fp16(d);
    for (int j = 0; j < kQK; ++j) y[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

}  // namespace fennec::quant::ref
