// Vector primitives over float32 with per-ISA implementations (vec_scalar.cpp, vec_avx2.cpp,
// vec_avx512.cpp) selected by the active SIMD level.
#pragma once

#include <cstdint>

namespace fennec::kernels {

struct VecOps {
  float (*dot)(const float* a, const float* b, int64_t n);
  // y += a * x
  void (*axpy)(float a, const float* x, float* y, int64_t n);
  void (*fp16_to_f32)(const uint16_t* src, float* dst, int64_t n);
  void (*f32_to_fp16)(const float* src, uint16_t* dst, int64_t n);
};

const VecOps& vec_ops();  // for the active level
const VecOps& vec_ops_scalar();
const VecOps& vec_ops_avx2();
const VecOps& vec_ops_avx512();

}  // namespace fennec::kernels
