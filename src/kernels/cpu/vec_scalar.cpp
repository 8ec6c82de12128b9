#include "core/float_convert.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/repack_layout.h"
#include "kernels/cpu/vec.h"

namespace fennec::kernels {

namespace {

float dot_scalar(const float* a, const float* b, int64_t n) {
  // Eight partial sums, like the SIMD paths, so results stay close across paths.
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  float r = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

void axpy_scalar(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void h2f_scalar(const uint16_t* s, float* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = fp16_to_f32(s[i]);
}
void f2h_scalar(const float* s, uint16_t* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_fp16(s[i]);
}

uint64_t read_sum_scalar(const uint64_t* p, int64_t n, int64_t far, int64_t near) {
  const auto end = reinterpret_cast<uintptr_t>(p + n);
  uint64_t s[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    packed::prefetch_ahead(reinterpret_cast<uintptr_t>(p + i), far, near, end);
    for (int k = 0; k < 8; ++k) s[k] += p[i + k];
  }
  for (; i < n; ++i) s[0] += p[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

const VecOps kScalar{dot_scalar, axpy_scalar, h2f_scalar, f2h_scalar, read_sum_scalar};

}  // namespace

const VecOps& vec_ops_scalar() { return kScalar; }

const VecOps& vec_ops() {
  switch (active_simd_level()) {
    case SimdLevel::kAvx512: return vec_ops_avx512();
    case SimdLevel::kAvx2: return vec_ops_avx2();
    default: return kScalar;
  }
}

}  // namespace fennec::kernels
