// Reference quantizers of the common ggml weight types: the same rounding as ggml's
// quantize_row_*_ref (ggml-quants.c), byte for byte, so a file fennec writes is the file
// llama-quantize would write for the same tensor without an importance matrix. The FP4 types
// have range-managed quantizers in quant/fp4_quantize.h; their plain ggml rounding is here too.
// Results depend on the exact float operations: this file is built without FMA contraction
// (the project builds ISO C++, where GCC does not contract).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/expected.h"
#include "formats/ggml_type.h"
#include "quant/blocks.h"

namespace fennec::quant {

// True if quantize_row_ref supports the type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q4_K, Q6_K, MXFP4, NVFP4).
bool can_quantize(formats::GgmlType t);

// Quantizes n floats (n a multiple of the type's block size) to t as ggml's reference does.
// NVFP4 here is ggml's quantize_row_nvfp4_ref: no per-tensor scale.
Status quantize_row_ref(formats::GgmlType t, const float* src, void* dst, int64_t n);

// "q4_k", "Q4_K", "nvfp4", "f16", ... -> type; nullopt for a name fennec cannot quantize to.
std::optional<formats::GgmlType> parse_quant_type(std::string_view name);
// The names parse_quant_type accepts, for help and error texts ("f32, f16, ...").
std::string quant_type_names();

namespace ref {
void quantize_f16(const float* x, uint16_t* y, int64_t n);
void quantize_bf16(const float* x, uint16_t* y, int64_t n);  // ggml_compute_fp32_to_bf16
void quantize_q4_0(const float* x, BlockQ4_0* y, int64_t nb);
void quantize_q4_1(const float* x, BlockQ4_1* y, int64_t nb);
void quantize_q5_0(const float* x, BlockQ5_0* y, int64_t nb);
void quantize_q5_1(const float* x, BlockQ5_1* y, int64_t nb);
void quantize_q4_k(const float* x, BlockQ4K* y, int64_t nb);
void quantize_q6_k(const float* x, BlockQ6K* y, int64_t nb);
void quantize_mxfp4(const float* x, BlockMxfp4* y, int64_t nb);
void quantize_nvfp4(const float* x, BlockNvfp4* y, int64_t nb);
// ggml_fp32_to_ue4m3: clamps to 448, rounds the mantissa half-up (not to even).
uint8_t f32_to_ue4m3_ggml(float x);
}  // namespace ref

}  // namespace fennec::quant
