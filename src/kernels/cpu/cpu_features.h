// CPU feature detection and the SIMD level the kernels run at, chosen once at start.
// FENNEC_CPU=scalar|avx2|avx512 forces a lower path (tests force each one in turn).
#pragma once

#include <string>

namespace fennec::kernels {

enum class SimdLevel { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Highest level this CPU supports.
SimdLevel detect_simd_level();
// The level in force: detect_simd_level() lowered by FENNEC_CPU if set. Cached after first call.
SimdLevel active_simd_level();
// Overrides the active level (tests); clamps to what the CPU supports.
void set_simd_level(SimdLevel level);
const char* simd_level_name(SimdLevel level);

// The CPU's maker and family (CPUID leaf 0's vendor string and leaf 1's base plus extended
// family: 0x19 for AMD Zen 3 and 4, 0x1A for Zen 5), for the choices that depend on the
// microarchitecture rather than on a feature flag (the products' prefetch plan, repack.cpp).
enum class CpuVendor { kOther, kIntel, kAmd };
struct CpuModel {
  CpuVendor vendor = CpuVendor::kOther;
  unsigned family = 0;
};
CpuModel cpu_model();

// Whether the AVX-512 products may use AMX-INT8 tiles (repack_avx512.cpp): the CPU has AMX-TILE and
// AMX-INT8, the kernel enables their state (XCR0 bits 17 and 18) and grants this process the
// tile data (Linux arch_prctl ARCH_REQ_XCOMP_PERM, asked once), the active level is AVX-512, and
// FENNEC_AMX is not 0. set_amx_enabled(false) turns it off (tests, comparisons).
bool amx_usable();
void set_amx_enabled(bool on);

}  // namespace fennec::kernels
