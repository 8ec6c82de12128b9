// Checks and dispatch of dequantize_row / quantize_row_q8_0; the plain types F32/F16/BF16.
#include "quant/dequantize.h"

#include <cstring>
#include <string>

#include "core/float_convert.h"

namespace fennec::quant {

using formats::GgmlType;

namespace ref {

// fp16_to_f32 without branches, so that a row vectorizes: move exponent and mantissa into
// place and rebias; inf/NaN get the exponent rebiased once more (to 255); zero and subnormals
// are made normal with exponent 2^-14 and then 2^-14 is subtracted, exactly. Same bits as
// fp16_to_f32.
void dequantize_f16(const uint16_t* x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t hv;
    std::memcpy(&hv, x + i, 2);  // rows of a GGUF file may sit at odd addresses
    const uint32_t h = hv;
    const uint32_t shifted = (h & 0x7fffu) << 13;
    const uint32_t exp = shifted & 0x0f800000u;
    const uint32_t inf_nan = 0u - static_cast<uint32_t>(exp == 0x0f800000u);  // all-ones masks
    const uint32_t zero_sub = 0u - static_cast<uint32_t>(exp == 0);
    uint32_t mag = shifted + (112u << 23) + (inf_nan & (112u << 23));
    const uint32_t sub = f32_to_bits(bits_to_f32(mag + (1u << 23)) - 6.103515625e-05f);
    mag = (sub & zero_sub) | (mag & ~zero_sub);
    y[i] = bits_to_f32(((h & 0x8000u) << 16) | mag);
  }
}

void dequantize_bf16(const uint16_t* x, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, x + i, 2);
    y[i] = bf16_to_f32(h);
  }
}

}  // namespace ref

bool can_dequantize(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::Q8_1:
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::Q8_K:
    case GgmlType::MXFP4:
    case GgmlType::NVFP4:
      return true;
    default:
      return false;
  }
}

namespace {

Status check_n(GgmlType t, uint32_t block_size, int64_t n) {
  if (n < 0 || n % block_size != 0) {
    return make_error("cannot convert a row of " + std::to_string(n) + " " + formats::type_name(t) +
                      " elements: the count must be a non-negative multiple of the block size " +
                      std::to_string(block_size));
  }
  return {};
}

}  // namespace

Status dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  if (!can_dequantize(t)) {
    return make_error("fennec cannot dequantize weight type " + formats::type_name(t) +
                      ": convert the model to a supported type (e.g. Q8_0, Q4_K, MXFP4)");
  }
  const auto traits = formats::type_traits(static_cast<uint32_t>(t));
  if (Status s = check_n(t, traits->block_size, n); !s) return s;
  const int64_t nb = n / traits->block_size;
  switch (t) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); break;
    case GgmlType::F16: ref::dequantize_f16(static_cast<const uint16_t*>(src), dst, n); break;
    case GgmlType::BF16: ref::dequantize_bf16(static_cast<const uint16_t*>(src), dst, n); break;
    case GgmlType::Q4_0: ref::dequantize_q4_0(static_cast<const BlockQ4_0*>(src), dst, nb); break;
    case GgmlType::Q4_1: ref::dequantize_q4_1(static_cast<const BlockQ4_1*>(src), dst, nb); break;
    case GgmlType::Q5_0: ref::dequantize_q5_0(static_cast<const BlockQ5_0*>(src), dst, nb); break;
    case GgmlType::Q5_1: ref::dequantize_q5_1(static_cast<const BlockQ5_1*>(src), dst, nb); break;
    case GgmlType::Q8_0: ref::dequantize_q8_0(static_cast<const BlockQ8_0*>(src), dst, nb); break;
    case GgmlType::Q8_1: ref::dequantize_q8_1(static_cast<const BlockQ8_1*>(src), dst, nb); break;
    case GgmlType::Q2_K: ref::dequantize_q2_k(static_cast<const BlockQ2K*>(src), dst, nb); break;
    case GgmlType::Q3_K: ref::dequantize_q3_k(static_cast<const BlockQ3K*>(src), dst, nb); break;
    case GgmlType::Q4_K: ref::dequantize_q4_k(static_cast<const BlockQ4K*>(src), dst, nb); break;
    case GgmlType::Q5_K: ref::dequantize_q5_k(static_cast<const BlockQ5K*>(src), dst, nb); break;
    case GgmlType::Q6_K: ref::dequantize_q6_k(static_cast<const BlockQ6K*>(src), dst, nb); break;
    case GgmlType::Q8_K: ref::dequantize_q8_k(static_cast<const BlockQ8K*>(src), dst, nb); break;
    case GgmlType::MXFP4: ref::dequantize_mxfp4(static_cast<const BlockMxfp4*>(src), dst, nb); break;
    case GgmlType::NVFP4: ref::dequantize_nvfp4(static_cast<const BlockNvfp4*>(src), dst, nb); break;
    default: break;  // excluded by can_dequantize
  }
  return {};
}

Status quantize_row_q8_0(const float* src, void* dst, int64_t n) {
  if (Status s = check_n(GgmlType::Q8_0, kQK, n); !s) return s;
  ref::quantize_q8_0(src, static_cast<BlockQ8_0*>(dst), n / kQK);
  return {};
}

}  // namespace fennec::quant
