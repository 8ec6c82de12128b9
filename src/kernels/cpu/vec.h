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
  // The sum (mod 2^64) of p[0, n), read a 64-byte line at a time with this level's widest loads
  // (64-bit ones on the scalar level), asking for each line's successors `far` bytes ahead into
  // L2 and `near` bytes ahead into L1 (0: no such prefetch; both 0: the hardware prefetchers
  // alone). p is 64-byte aligned. The memory bandwidth probe's reads (engine/bench.cpp): on the
  // Zen 4 measured, one core read 5-6% faster with 512-bit loads than with 64-bit ones.
  uint64_t (*read_sum)(const uint64_t* p, int64_t n, int64_t far, int64_t near);
};

const VecOps& vec_ops();  // for the active level
const VecOps& vec_ops_scalar();
const VecOps& vec_ops_avx2();
const VecOps& vec_ops_avx512();

}  // namespace fennec::kernels
