// Reference dequantization of ggml weight types to float32, bit-exact with ggml's
// dequantize_row_* (and the Python gguf package): same operations in the same order. Every
// product of a scale and a quant is exact in float (fp16 scale x small integers needs <= 24
// bits), so fused multiply-add, if the compiler forms one, cannot change a result. Used by the first matmul (dequantize a row, then dot) and as the oracle of the
// SIMD kernels. Blocks are read through the packed layouts of quant/blocks.h, so src may have
// any alignment; src and dst must not overlap.
#pragma once

#include <cstdint>

#include "core/expected.h"
#include "formats/ggml_type.h"
#include "quant/blocks.h"

namespace fennec::quant {

// True if fennec can dequantize this type.
bool can_dequantize(formats::GgmlType t);

// Dequantizes n elements (n a multiple of the type's block size) from src to dst (float32).
// Returns an error for unsupported types or bad n.
Status dequantize_row(formats::GgmlType t, const void* src, float* dst, int64_t n);

// Quantizes n floats (n a multiple of 32) to Q8_0 as ggml's quantize_row_q8_0_ref does:
// d = amax / 127 rounded to fp16, q = round-half-away(x / d) computed as x * (1/d) in float.
Status quantize_row_q8_0(const float* src, void* dst, int64_t n);

// Per-type loops over nb whole blocks, without checks, for callers that already know the type.
namespace ref {
// The 8 six-bit scales and mins packed in a Q4_K/Q5_K block's 12 scale bytes.
void unpack_scale_min_k4(const uint8_t* s, uint8_t sc[8], uint8_t mn[8]);
void dequantize_f16(const uint16_t* x, float* y, int64_t n);
void dequantize_bf16(const uint16_t* x, float* y, int64_t n);
void dequantize_q4_0(const BlockQ4_0* x, float* y, int64_t nb);
void dequantize_q4_1(const BlockQ4_1* x, float* y, int64_t nb);
void dequantize_q5_0(const BlockQ5_0* x, float* y, int64_t nb);
void dequantize_q5_1(const BlockQ5_1* x, float* y, int64_t nb);
void dequantize_q8_0(const BlockQ8_0* x, float* y, int64_t nb);
void dequantize_q8_1(const BlockQ8_1* x, float* y, int64_t nb);  // d * q; s is not needed
void dequantize_q2_k(const BlockQ2K* x, float* y, int64_t nb);
void dequantize_q3_k(const BlockQ3K* x, float* y, int64_t nb);
void dequantize_q4_k(const BlockQ4K* x, float* y, int64_t nb);
void dequantize_q5_k(const BlockQ5K* x, float* y, int64_t nb);
void dequantize_q6_k(const BlockQ6K* x, float* y, int64_t nb);
void dequantize_q8_k(const BlockQ8K* x, float* y, int64_t nb);
void dequantize_mxfp4(const BlockMxfp4* x, float* y, int64_t nb);
void dequantize_nvfp4(const BlockNvfp4* x, float* y, int64_t nb);
void quantize_q8_0(const float* x, BlockQ8_0* y, int64_t nb);
}  // namespace ref

}  // namespace fennec::quant
