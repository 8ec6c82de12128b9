// Activation rounding that matches the 8-bit (or fp16) activation formats ggml's CPU backend
// pairs with each weight type (its vec_dot_type): Q8_0 for Q4_0/Q5_0/Q8_0/IQ4_NL/MXFP4/NVFP4,
// Q8_1 for Q4_1/Q5_1, Q8_K for the K-quants, fp16 for F16, bf16 for BF16, none for F32.
// round_activations() writes the dequantized values of x in that format, so a float dot with
// the dequantized weights gives the integer dot product's result up to summation order; the
// integer kernels (a later step) must produce the same values.
#pragma once

#include <cstdint>

#include "formats/ggml_type.h"

namespace fennec::kernels {

enum class ActFormat { kF32, kF16, kBF16, kQ8_0, kQ8_1, kQ8_K };

ActFormat activation_format(formats::GgmlType weight_type);
// Block length of the format (1 for float formats).
int activation_block(ActFormat f);

// x (n values; n a multiple of the block) -> out, rounded through format f. out may equal x.
void round_activations(ActFormat f, const float* x, float* out, int64_t n);

}  // namespace fennec::kernels
