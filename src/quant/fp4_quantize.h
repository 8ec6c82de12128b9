// Range-managed quantizers of the 4-bit float types, in ggml's byte layouts (quant/blocks.h).
//
// Both formats store E2M1 codes (magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6) times a block scale.
// ggml decodes with doubled codes (kE2M1Doubled: 0..12) times HALF the scale, which is the same
// value; here scales are handled as true E2M1 multipliers: x ~ e2m1(q) * s.
//
// NVFP4 (64 values = 4 sub-blocks of 16, one UE4M3 scale each): the weights are first divided by
// a per-tensor FP32 scale g, stored next to the weight as the F32 tensor "<base>.scale" (shape
// [1]) that llama.cpp multiplies into the matmul output. g = amax(tensor) / (6 * 448) puts the
// largest sub-block scale at UE4M3's top (448) so no scale clips and small sub-blocks keep
// normal (3-bit mantissa) scales instead of collapsing into UE4M3's subnormals or zero. Per
// sub-block, the scale is the best of the UE4M3 codes from 3 below amax/6 to 8 above (2x), and
// around the least-squares refit sum(w|x|e)/sum(w e^2) of the chosen codes, by squared error
// weighted by the importance matrix (w = 1 without one); elements round to nearest E2M1, ties
// to even.
//
// MXFP4 (32 values, one E8M0 power-of-two scale): the OCP rule takes 2^(floor(log2 amax) - 2),
// which can clip values above 6 * scale; the quantizer tries that exponent, one below and two
// above, and keeps the one with the least weighted squared error.
#pragma once

#include <cstdint>

#include "quant/blocks.h"

namespace fennec::quant {

// UE4M3 code nearest to v (ties to even), clamped to [0, 448] (codes 0 .. 0x7e; 0x7f, which
// ggml decodes as 0, is never produced). True value: ue4m3_to_f32(code).
uint8_t f32_to_ue4m3_rne(float v);

// E2M1 code (sign in bit 3; -0 is coded +0) nearest to y, ties to even, saturating at +-6.
uint8_t f32_to_e2m1_rne(float y);

// Per-tensor scale g of NVFP4 for n values: amax / (6 * 448); 1 when amax is 0 or not finite.
float nvfp4_tensor_scale(const float* x, int64_t n);

// Quantizes n_rows rows of n_per_row values (a multiple of 64) to NVFP4 blocks of x / g.
// col_weights: n_per_row importance weights (mean squared activation per column) or null.
void quantize_nvfp4_rows(const float* x, BlockNvfp4* y, int64_t n_rows, int64_t n_per_row, float g,
                         const float* col_weights);

// Quantizes n_rows rows of n_per_row values (a multiple of 32) to MXFP4 blocks.
void quantize_mxfp4_rows(const float* x, BlockMxfp4* y, int64_t n_rows, int64_t n_per_row,
                         const float* col_weights);

}  // namespace fennec::quant
