#include "kernels/cpu/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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

CpuModel cpu_model() {
  CpuModel m;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_is("intel")) m.vendor = CpuVendor::kIntel;
  else if (__builtin_cpu_is("amd")) m.vendor = CpuVendor::kAmd;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d)) {
    const unsigned base = (a >> 8) & 0xF;
    m.family = base == 0xF ? base + ((a >> 20) & 0xFF) : base;
  }
#endif
  return m;
}

namespace {
// The CPU and the OS allow AMX-INT8 in this process (asked once).
bool amx_granted() {
#if defined(__x86_64__) && defined(__linux__)
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_max(0, nullptr) < 0xd) return false;
    __cpuid_count(7, 0, a, b, c, d);
    const bool tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
    const bool xsave = [] {
      unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
      __cpuid(1, a1, b1, c1, d1);
      return ((c1 >> 27) & 1) != 0;  // OSXSAVE: xgetbv is allowed
    }();
    if (!tile || !int8 || !xsave) return false;
    unsigned lo = 0, hi = 0;
    asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return false;
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  return ok;
#else
  return false;
#endif
}
std::atomic<int> g_amx{-1};  // -1: FENNEC_AMX not read yet
}  // namespace

bool amx_usable() {
  int on = g_amx.load(std::memory_order_relaxed);
  if (on < 0) {
    const char* e = std::getenv("FENNEC_AMX");
    on = e && std::strcmp(e, "0") == 0 ? 0 : 1;
    g_amx = on;
  }
  return on == 1 && active_simd_level() == SimdLevel::kAvx512 && amx_granted();
}

void set_amx_enabled(bool on) { g_amx = on ? 1 : 0; }

}  // namespace fennec::kernels
