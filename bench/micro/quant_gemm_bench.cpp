// Micro benchmark of the quant_gemm tiles (quant_gemm.h): the legacy blocks on the shapes of a
// SmolLM2-135M decode step with continuous batching, the K-quants (Q4_K, Q6_K) on Gemma-3-270M's
// (attn_output 640x1024, ffn_down 640x2048); prints ns and TSC cycles per (row, token, block of
// 32 elements) for 1 and 2 threads. The ISA path is the active one (FENNEC_CPU lowers it).
//
// Build against a Release build of the library (no CMake target):
//   g++ -O2 -std=c++20 -I src bench/micro/quant_gemm_bench.cpp BUILD/libfennec_lib.a \
//       -lpcre2-8 -lpthread -o /tmp/quant_gemm_bench
// Run: /tmp/quant_gemm_bench [legacy|k] [tokens ...]   (default both, 4 8 16 32 64)
#include <x86intrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "core/float_convert.h"
#include "core/thread_pool.h"
#include "formats/ggml_type.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/quant_gemm.h"

using namespace fennec;
using namespace fennec::kernels;
using formats::GgmlType;

namespace {

std::vector<uint8_t> random_matrix(GgmlType t, int64_t rows, int64_t n) {
  const auto tr = *formats::type_traits(static_cast<uint32_t>(t));
  std::vector<uint8_t> m(formats::row_bytes(tr, static_cast<uint64_t>(n)) * rows);
  std::mt19937 rng(1);
  for (auto& b : m) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u(0.001f, 0.05f);
  for (size_t o = 0; o < m.size(); o += tr.type_size) {
    const uint16_t d = f32_to_fp16(u(rng)), mn = f32_to_fp16(-u(rng) * 8);
    std::memcpy(m.data() + o, &d, 2);
    if (t == GgmlType::Q4_1 || t == GgmlType::Q5_1 || t == GgmlType::Q4_K)
      std::memcpy(m.data() + o + 2, &mn, 2);
    if (t == GgmlType::Q6_K) std::memcpy(m.data() + o + tr.type_size - 2, &d, 2);
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> tokens;
  bool legacy = true, kquant = true;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "legacy") == 0) {
      kquant = false;
    } else if (std::strcmp(argv[i], "k") == 0) {
      legacy = false;
    } else {
      tokens.push_back(std::atoll(argv[i]));
    }
  }
  if (tokens.empty()) tokens = {4, 8, 16, 32, 64};
  std::printf("path %s\n", simd_level_name(active_simd_level()));
  struct Shape {
    GgmlType t;
    int64_t rows, n;
  };
  std::vector<Shape> shapes;
  if (legacy) {
    for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                       GgmlType::Q8_0})
      for (auto [rows, n] : {std::pair<int64_t, int64_t>{576, 576}, {1536, 576}, {576, 1536}})
        shapes.push_back({t, rows, n});
    shapes.push_back({GgmlType::Q8_0, 49152, 576});
  }
  if (kquant)  // 640 rows: Q4_K in the repacked (8x8) order, as quant_dot_fn picks it
    for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q6_K})
      for (auto [rows, n] : {std::pair<int64_t, int64_t>{640, 1024}, {640, 2048}})
        shapes.push_back({t, rows, n});
  ThreadPool pool1(1), pool2(2);
  constexpr int64_t kRowTile = 16;  // as ops.cpp's matmul
  for (const Shape& s : shapes) {
    const auto tr = *formats::type_traits(static_cast<uint32_t>(s.t));
    const int64_t rb = static_cast<int64_t>(formats::row_bytes(tr, static_cast<uint64_t>(s.n)));
    const auto w = random_matrix(s.t, s.rows, s.n);
    const ActFormat af = activation_format(s.t);
    const int64_t ab = quantized_act_bytes(af, s.n);
    const QuantGemmFn gemm = quant_gemm_fn(s.t, s.rows);
    for (int64_t nt : tokens) {
      std::vector<uint8_t> act(static_cast<size_t>(ab * nt));
      std::mt19937 rng(2);
      std::normal_distribution<float> nd;
      std::vector<float> x(static_cast<size_t>(s.n));
      for (int64_t t = 0; t < nt; ++t) {
        for (auto& v : x) v = nd(rng);
        quantize_act(af, x.data(), act.data() + t * ab, s.n);
      }
      std::vector<float> y(static_cast<size_t>(nt * s.rows));
      const QuantGemmArgs args{w.data(), rb, act.data(), ab, s.n, nt, y.data(), s.rows};
      std::printf("%-5s %5lldx%-5lld tok %3lld", formats::type_name(s.t).c_str(),
                  static_cast<long long>(s.rows), static_cast<long long>(s.n),
                  static_cast<long long>(nt));
      for (ThreadPool* pool : {&pool1, &pool2}) {
        const int64_t n_tiles = (s.rows + kRowTile - 1) / kRowTile;
        auto once = [&] {
          pool->parallel_for(n_tiles, [&](int64_t t0, int64_t t1) {
            gemm(args, t0 * kRowTile, std::min(s.rows, t1 * kRowTile));
          });
        };
        const double units = static_cast<double>(s.rows) * nt * (s.n / 32);
        const int reps = std::max<int>(3, static_cast<int>(4e8 / units));
        once();
        double best_ns = 1e30, best_cyc = 0;
        for (int trial = 0; trial < 5; ++trial) {
          const auto t0 = std::chrono::steady_clock::now();
          const uint64_t c0 = __rdtsc();
          for (int r = 0; r < reps; ++r) once();
          const uint64_t c1 = __rdtsc();
          const double ns = std::chrono::duration<double, std::nano>(
                                std::chrono::steady_clock::now() - t0)
                                .count();
          if (ns < best_ns) {
            best_ns = ns;
            best_cyc = static_cast<double>(c1 - c0);
          }
        }
        std::printf("  %dT %6.3f ns %6.3f cyc", pool->size(), best_ns / reps / units,
                    best_cyc / reps / units);
      }
      std::printf("   (per row*token*block)\n");
    }
  }
  return 0;
}
