// How often this core issues a 256-bit and a 512-bit fma: 12 independent chains of each, so the
// time per fma is the issue rate, not the latency. The arithmetic ceiling attention and the float
// products run against (bench/vs-llamacpp/README.md).
//   g++ -O2 -march=native bench/micro/fma_probe.cpp -o /tmp/fma_probe && /tmp/fma_probe
#include <immintrin.h>

#include <chrono>
#include <cstdio>

int main() {
  constexpr long kRounds = 200'000'000 / 16;
  __m512 z[12];
  __m256 y[12];
  for (int i = 0; i < 12; ++i) {
    z[i] = _mm512_set1_ps(static_cast<float>(i) * 0.001f);
    y[i] = _mm256_set1_ps(static_cast<float>(i) * 0.001f);
  }
  const __m512 zb = _mm512_set1_ps(0.999f), zc = _mm512_set1_ps(0.0001f);
  const __m256 yb = _mm256_set1_ps(0.999f), yc = _mm256_set1_ps(0.0001f);
  auto t0 = std::chrono::steady_clock::now();
  for (long k = 0; k < kRounds; ++k) {
#pragma GCC unroll 12
    for (auto& v : z) v = _mm512_fmadd_ps(v, zb, zc);
    // Keeps the chains in registers and in the loop.
    asm volatile("" : "+v"(z[0]), "+v"(z[1]), "+v"(z[2]), "+v"(z[3]), "+v"(z[4]), "+v"(z[5]), "+v"(z[6]),
                 "+v"(z[7]), "+v"(z[8]), "+v"(z[9]), "+v"(z[10]), "+v"(z[11]));
  }
  const double zs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t0 = std::chrono::steady_clock::now();
  for (long k = 0; k < kRounds; ++k) {
#pragma GCC unroll 12
    for (auto& v : y) v = _mm256_fmadd_ps(v, yb, yc);
    asm volatile("" : "+x"(y[0]), "+x"(y[1]), "+x"(y[2]), "+x"(y[3]), "+x"(y[4]), "+x"(y[5]), "+x"(y[6]),
                 "+x"(y[7]), "+x"(y[8]), "+x"(y[9]), "+x"(y[10]), "+x"(y[11]));
  }
  const double ys = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  alignas(64) float out[16];
  _mm512_store_ps(out, z[3]);
  const float keep = out[0];
  _mm256_store_ps(out, y[3]);
  std::printf("zmm fma: %.3f ns each, ymm fma: %.3f ns each (%g %g)\n", zs / (kRounds * 12.0) * 1e9,
              ys / (kRounds * 12.0) * 1e9, static_cast<double>(keep), static_cast<double>(out[0]));
  return 0;
}
