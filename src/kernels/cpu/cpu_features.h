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

}  // namespace fennec::kernels
