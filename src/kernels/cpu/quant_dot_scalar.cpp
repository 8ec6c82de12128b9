#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/quant_dot_impl.h"

namespace fennec::kernels {

using formats::GgmlType;

const QuantDotOps& quant_dot_ops() {
  return active_simd_level() >= SimdLevel::kAvx2 ? quant_dot_ops_avx2() : quant_dot_ops_scalar();
}

bool has_quant_dot(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

int64_t quantized_act_bytes(ActFormat f, int64_t n) {
  switch (f) {
    case ActFormat::kQ8_0:
      return n / 32 * static_cast<int64_t>(sizeof(quant::BlockQ8_0));
    case ActFormat::kQ8_1:
      return n / 32 * static_cast<int64_t>(sizeof(quant::BlockQ8_1));
    case ActFormat::kQ8_K:
      return n / 256 * static_cast<int64_t>(sizeof(quant::BlockQ8K));
    default:
      return n * static_cast<int64_t>(sizeof(float));
  }
}

namespace {

// ggml's nearest_int: round half to even through the 1.5 * 2^23 trick.
inline int nearest_int(float v) {
  return static_cast<int>(f32_to_bits(v + 12582912.f) & 0x007fffff) - 0x00400000;
}

template <class Block>
void quantize_q8_x(const float* x, Block* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* v = x + b * 32;
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    const float id = amax != 0 ? 127.0f / amax : 0.0f;
    Block out;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      // ggml's x86 path rounds to nearest even (_mm256_round_ps, _MM_ROUND_NEAREST).
      const int q = static_cast<int>(std::nearbyint(v[j] * id));
      out.qs[j] = static_cast<int8_t>(q);
      sum += q;
    }
    out.d = f32_to_fp16(d);
    if constexpr (sizeof(Block) == sizeof(quant::BlockQ8_1)) {
      out.s = f32_to_fp16(d * static_cast<float>(sum));
    }
    std::memcpy(y + b, &out, sizeof(Block));
  }
}

void quantize_q8_k(const float* x, quant::BlockQ8K* y, int64_t n) {
  for (int64_t b = 0; b < n / 256; ++b) {
    const float* v = x + b * 256;
    quant::BlockQ8K& out = y[b];
    float amax = 0, max = 0;
    for (int j = 0; j < 256; ++j) {
      const float ax = std::fabs(v[j]);
      if (ax > amax) {
        amax = ax;
        max = v[j];
      }
    }
    if (amax == 0) {
      out.d = 0;
      for (int j = 0; j < 256; ++j) out.qs[j] = 0;
      for (int j = 0; j < 16; ++j) out.bsums[j] = 0;
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < 256; ++j)
      out.qs[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * v[j])));
    for (int j = 0; j < 16; ++j) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += out.qs[16 * j + i];
      out.bsums[j] = static_cast<int16_t>(sum);
    }
    out.d = 1 / iscale;
  }
}

void quantize_act_scalar(ActFormat f, const float* x, void* out, int64_t n) {
  switch (f) {
    case ActFormat::kQ8_0:
      quantize_q8_x(x, static_cast<quant::BlockQ8_0*>(out), n);
      return;
    case ActFormat::kQ8_1:
      quantize_q8_x(x, static_cast<quant::BlockQ8_1*>(out), n);
      return;
    case ActFormat::kQ8_K:
      quantize_q8_k(x, static_cast<quant::BlockQ8K*>(out), n);
      return;
    default:
      std::memcpy(out, x, static_cast<size_t>(n) * sizeof(float));
      return;
  }
}

}  // namespace

const QuantDotOps& quant_dot_ops_scalar() {
  static const QuantDotOps ops{impl::dot_q4_0,      impl::dot_q4_1,     impl::dot_q5_0,
                               impl::dot_q5_1,      impl::dot_q8_0,     impl::dot_q4_k,
                               impl::dot_q4_k_8x8,  impl::dot_q6_k,     impl::swiglu,       impl::geglu,
                               [](float* v, int nh, int hd, int half, bool neox, const float* c, const float* s) {
                                 impl::rope_rotate(v, nh, hd, half, neox, c, s);
                               },
                               quantize_act_scalar, impl::dot_f16,      impl::dot_f16_chain,
                               impl::softmax_exp};
  return ops;
}

void quantize_act(ActFormat f, const float* x, void* out, int64_t n) {
  quant_dot_ops().quantize(f, x, out, n);
}

QuantDotFn quant_dot_fn(GgmlType t, int64_t rows) { return pick_kernel(quant_dot_ops(), t, rows); }

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  quant_dot_ops().swiglu(gate, up, out, n);
}

}  // namespace fennec::kernels
