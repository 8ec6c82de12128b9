#include "kernels/cpu/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace fennec::kernels {

namespace {
std::atomic<int> g_level{-1};
}

SimdLevel detect_simd_level() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return SimdLevel::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return SimdLevel::kAvx2;
  return SimdLevel::kScalar;
}

void set_simd_level(SimdLevel level) {
  const SimdLevel best = detect_simd_level();
  if (static_cast<int>(level) > static_cast<int>(best)) level = best;
  g_level = static_cast<int>(level);
}

SimdLevel active_simd_level() {
  int l = g_level.load(std::memory_order_relaxed);
  if (l >= 0) return static_cast<SimdLevel>(l);
  SimdLevel level = detect_simd_level();
  if (const char* env = std::getenv("FENNEC_CPU")) {
    if (std::strcmp(env, "scalar") == 0) level = SimdLevel::kScalar;
    else if (std::strcmp(env, "avx2") == 0 && level >= SimdLevel::kAvx2) level = SimdLevel::kAvx2;
  }
  g_level = static_cast<int>(level);
  return level;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar: return "scalar";
    case SimdLevel::kAvx2: return "avx2";
    case SimdLevel::kAvx512: return "avx512";
  }
  return "?";
}

}  // namespace fennec::kernels
