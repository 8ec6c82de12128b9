// The tiled quantized matmul kernels against the per-output kernels: the same bits for every
// weight type, shape and ISA path; the F16C fp16 conversion they use against the scalar one; and
// the spinning thread pool that runs them.
#include "kernels/cpu/quant_gemm.h"

#include <gtest/gtest.h>
#include <immintrin.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "core/float_convert.h"
#include "core/huge_alloc.h"
#include "core/thread_pool.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/quant_dot_impl.h"

namespace fennec::kernels {
namespace {

using formats::GgmlType;

constexpr GgmlType kTypes[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                               GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K};

bool is_k_quant(GgmlType t) { return t == GgmlType::Q4_K || t == GgmlType::Q6_K; }

// A matrix of random blocks whose fp16 scales are finite and moderate (the random bytes
// elsewhere cover every nibble, bit and int8 scale).
std::vector<uint8_t> random_matrix(GgmlType t, int64_t rows, int64_t n, uint32_t seed) {
  const auto tr = *formats::type_traits(static_cast<uint32_t>(t));
  const size_t rb = formats::row_bytes(tr, static_cast<uint64_t>(n));
  std::vector<uint8_t> m(rb * static_cast<size_t>(rows));
  std::mt19937 rng(seed);
  for (auto& b : m) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u(0.001f, 0.05f);
  auto put = [&](size_t off, float v) {
    const uint16_t h = f32_to_fp16(v);
    std::memcpy(m.data() + off, &h, 2);
  };
  for (size_t o = 0; o < m.size(); o += tr.type_size) {
    switch (t) {
      case GgmlType::Q4_0:
      case GgmlType::Q5_0:
      case GgmlType::Q8_0:
        put(o, u(rng));
        break;
      case GgmlType::Q4_1:
      case GgmlType::Q5_1:
        put(o, u(rng));
        put(o + 2, -u(rng) * 8);
        break;
      case GgmlType::Q4_K:
        put(o, u(rng) / 16);
        put(o + 2, u(rng) / 16);
        break;
      case GgmlType::Q6_K:
        put(o + tr.type_size - 2, u(rng) / 16);
        break;
      default:
        break;
    }
  }
  return m;
}

struct Paths {
  std::vector<const QuantGemmOps*> gemm;
  std::vector<const char*> names;
};

Paths gemm_paths() {
  Paths p;
  p.gemm.push_back(&quant_gemm_ops_scalar());
  p.names.push_back("scalar");
  const SimdLevel best = detect_simd_level();
  if (best >= SimdLevel::kAvx2) {
    p.gemm.push_back(&quant_gemm_ops_avx2());
    p.names.push_back("avx2");
  }
  if (best >= SimdLevel::kAvx512) {
    p.gemm.push_back(&quant_gemm_ops_avx512());
    p.names.push_back("avx512");
  }
  p.gemm.push_back(&quant_gemm_ops());
  p.names.push_back("active");
  return p;
}

std::vector<uint8_t> quantized_acts(GgmlType t, int64_t n, int64_t n_tokens, uint32_t seed) {
  const ActFormat af = activation_format(t);
  const int64_t ab = quantized_act_bytes(af, n);
  std::vector<uint8_t> act(static_cast<size_t>(ab * n_tokens));
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t tk = 0; tk < n_tokens; ++tk) {
    const float scale = std::ldexp(1.0f, static_cast<int>(tk % 5) - 2);  // varied magnitudes
    for (auto& v : x) v = nd(rng) * scale;
    if (tk == 3) std::fill(x.begin(), x.begin() + 32, 0.0f);  // an all-zero block
    quantize_act(af, x.data(), act.data() + tk * ab, n);
  }
  return act;
}

// Every tile shape the kernels have: row counts around the 4-row tile, 1..64 tokens (the direct
// tiles for 1 and 2, every remainder of the token tiles, batches of up to 64), sub-ranges of rows, and y with a row stride wider than the matrix, checking
// that nothing outside [r0, r1) x tokens is written.
TEST(QuantGemmKernelTest, TilesEqualThePerOutputKernelBitForBit) {
  const Paths paths = gemm_paths();
  for (GgmlType t : kTypes) {
    const ActFormat af = activation_format(t);
    for (int64_t n :
         is_k_quant(t) ? std::vector<int64_t>{256, 768} : std::vector<int64_t>{32, 96, 576}) {
      for (int64_t rows : {1, 2, 3, 4, 5, 7, 8, 13, 16, 24}) {
        const auto tr = *formats::type_traits(static_cast<uint32_t>(t));
        const int64_t rb = static_cast<int64_t>(formats::row_bytes(tr, static_cast<uint64_t>(n)));
        const auto w = random_matrix(t, rows, n, static_cast<uint32_t>(rows * 1000 + n));
        const int64_t ab = quantized_act_bytes(af, n);
        const int64_t max_tokens = 64;
        const auto act = quantized_acts(t, n, max_tokens, static_cast<uint32_t>(rows + n));
        const QuantDotFn dot = quant_dot_fn(t, rows);
        const QuantDotFn dot_scalar = pick_kernel(quant_dot_ops_scalar(), t, rows);
        std::vector<float> ref(static_cast<size_t>(max_tokens * rows));
        for (int64_t tk = 0; tk < max_tokens; ++tk)
          for (int64_t r = 0; r < rows; ++r) {
            const float v = dot_scalar(w.data() + r * rb, act.data() + tk * ab, n);
            ASSERT_EQ(f32_to_bits(v), f32_to_bits(dot(w.data() + r * rb, act.data() + tk * ab, n)))
                << formats::type_name(t) << " per-output paths differ";
            ref[static_cast<size_t>(tk * rows + r)] = v;
          }
        for (size_t p = 0; p < paths.gemm.size(); ++p) {
          const QuantGemmFn gemm = quant_gemm_pick(*paths.gemm[p], t, rows);
          ASSERT_NE(gemm, nullptr);
          for (int64_t nt = 1; nt <= max_tokens; ++nt) {
            const int64_t ldy = rows + 3;
            const int64_t r0 = rows > 4 ? 1 : 0, r1 = rows > 8 ? rows - 2 : rows;
            const float kSentinel = -12345.0f;
            std::vector<float> y(static_cast<size_t>(nt * ldy), kSentinel);
            const QuantGemmArgs args{w.data(), rb, act.data(), ab, n, nt, y.data(), ldy};
            gemm(args, r0, r1);
            for (int64_t tk = 0; tk < nt; ++tk)
              for (int64_t r = 0; r < ldy; ++r) {
                const float got = y[static_cast<size_t>(tk * ldy + r)];
                if (r < r0 || r >= r1) {
                  ASSERT_EQ(got, kSentinel) << "wrote outside its rows: row " << r;
                  continue;
                }
                ASSERT_EQ(f32_to_bits(got), f32_to_bits(ref[static_cast<size_t>(tk * rows + r)]))
                    << formats::type_name(t) << " path " << paths.names[p] << " n " << n << " rows "
                    << rows << " tokens " << nt << " row " << r << " token " << tk;
              }
          }
        }
      }
    }
  }
}

// matmul() on a pool, with 1 token (rows split across the threads) and several: the same bits.
TEST(QuantGemmKernelTest, MatmulEqualsPerOutputKernel) {
  ThreadPool pool(2);
  for (GgmlType t : kTypes) {
    const int64_t n = is_k_quant(t) ? 512 : 160, rows = 72;
    const auto tr = *formats::type_traits(static_cast<uint32_t>(t));
    const int64_t rb = static_cast<int64_t>(formats::row_bytes(tr, static_cast<uint64_t>(n)));
    const auto w = random_matrix(t, rows, n, 7);
    const WeightView wv{t, w.data(), rows, n, rb};
    const ActFormat af = activation_format(t);
    const int64_t ab = quantized_act_bytes(af, n);
    for (int64_t nt : {1, 6}) {
      std::mt19937 rng(static_cast<uint32_t>(nt));
      std::normal_distribution<float> nd;
      std::vector<float> x(static_cast<size_t>(nt * n));
      for (auto& v : x) v = nd(rng);
      std::vector<float> y(static_cast<size_t>(nt * rows));
      matmul(wv, x.data(), nt, y.data(), pool);
      std::vector<uint8_t> act(static_cast<size_t>(ab));
      const QuantDotFn dot = quant_dot_fn(t, rows);
      for (int64_t tk = 0; tk < nt; ++tk) {
        quantize_act(af, x.data() + tk * n, act.data(), n);
        for (int64_t r = 0; r < rows; ++r)
          ASSERT_EQ(f32_to_bits(y[static_cast<size_t>(tk * rows + r)]),
                    f32_to_bits(dot(w.data() + r * rb, act.data(), n)))
              << formats::type_name(t) << " tokens " << nt << " row " << r;
      }
    }
  }
}

// The SIMD activation quantizers write the scalar one's bytes: maxima (first of equal
// magnitudes for Q8_K), round-half-even ties, all-zero blocks, the block sums.
TEST(QuantGemmKernelTest, ActivationQuantizersWriteTheSameBytesOnEveryPath) {
  if (detect_simd_level() < SimdLevel::kAvx2) GTEST_SKIP() << "no AVX2";
  const int64_t n = 1024;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> x(static_cast<size_t>(n));
    const float scale = std::ldexp(1.0f, trial % 40 - 20);
    for (auto& v : x) v = nd(rng) * scale;
    if (trial % 4 == 1) std::fill(x.begin() + 256, x.begin() + 512, 0.0f);
    if (trial % 4 == 2)  // ties: values that scale to k + 0.5, and one magnitude with both signs
      for (int64_t i = 0; i < n; ++i)
        x[static_cast<size_t>(i)] = (static_cast<float>(i % 255) - 127.0f) * 0.5f * scale;
    if (trial % 4 == 3) {
      x[5] = -8 * scale;
      x[9] = 8 * scale;
      x[300] = 8 * scale;
      x[301] = -8 * scale;
    }
    for (ActFormat af : {ActFormat::kQ8_0, ActFormat::kQ8_1, ActFormat::kQ8_K}) {
      const size_t bytes = static_cast<size_t>(quantized_act_bytes(af, n));
      std::vector<uint8_t> a(bytes), b(bytes);
      quant_dot_ops_scalar().quantize(af, x.data(), a.data(), n);
      quant_dot_ops_avx2().quantize(af, x.data(), b.data(), n);
      ASSERT_EQ(a, b) << "format " << static_cast<int>(af) << " trial " << trial;
    }
  }
}

__attribute__((target("avx,f16c"))) float f16c_to_f32(uint16_t h) { return _cvtsh_ss(h); }

TEST(QuantGemmKernelTest, F16cConversionEqualsScalarOnAllFp16Values) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C";
  for (uint32_t h = 0; h < 65536; ++h) {
    const float a = fp16_to_f32(static_cast<uint16_t>(h));
    const float b = f16c_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(a)) {
      // NaN payloads differ (F16C quiets signalling NaNs); no fp16 scale in a model is NaN.
      EXPECT_TRUE(std::isnan(b)) << h;
      continue;
    }
    ASSERT_EQ(f32_to_bits(a), f32_to_bits(b)) << "fp16 0x" << std::hex << h;
  }
}

// expf_ggml's power-of-two scaling rounds as std::ldexp does, into the subnormals and past the
// largest float.
TEST(QuantGemmKernelTest, ScalePow2RoundsAsLdexp) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0.5f, 2.0f);
  for (int k = 0; k < 2000; ++k) {
    const float j = k < 2 ? (k == 0 ? 0.5f : 1.9999999f) : u(rng);
    for (int n = -192; n <= 192; ++n)
      ASSERT_EQ(f32_to_bits(impl::scale_pow2(j, n)), f32_to_bits(std::ldexp(j, n)))
          << j << " * 2^" << n;
  }
}

// The pool's spin-then-sleep hand-off: many back-to-back jobs (the spinning path), jobs after
// pauses longer than the spin (the futex path), and uneven work (the caller waits on workers).
TEST(ThreadPoolKernelTest, BackToBackAndSleepingJobsAllComplete) {
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    std::vector<int64_t> data(1000);
    for (int round = 0; round < 3000; ++round) {
      const int64_t n = 1 + round % 37;
      std::atomic<int64_t> sum{0};
      pool.parallel_for(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          data[static_cast<size_t>(i)] = round;
          sum += i;
        }
        if (round % 100 == 1 && b == 0)  // the caller's share runs long: workers finish first
          std::this_thread::sleep_for(std::chrono::microseconds(200));
      });
      ASSERT_EQ(sum.load(), n * (n - 1) / 2) << "round " << round;
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(data[static_cast<size_t>(i)], round);
      if (round % 500 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::atomic<int> hits{0};
    pool.run_on_all([&](int i, int nt) {
      EXPECT_EQ(nt, threads);
      hits += 1 << i;
      if (i != 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // caller sleeps
    });
    EXPECT_EQ(hits.load(), (1 << threads) - 1);
  }
}

// FunctionRef (the pool's job type) calls the very callable it was made from: a lambda with many
// captures (which a std::function would copy to the heap), a mutable one whose state the calls
// change, and a named std::function, whose target is not copied either.
TEST(ThreadPoolKernelTest, FunctionRefCallsTheCallableItRefersTo) {
  int64_t a = 1, b = 2, c = 3, d = 4, e = 5;
  auto many = [&](int64_t x, int64_t y) { return a + b + c + d + e + x * y; };
  const FunctionRef<int64_t(int64_t, int64_t)> r(many);
  EXPECT_EQ(r(6, 7), 15 + 42);
  a = 100;  // a reference, not a copy: the change shows
  EXPECT_EQ(r(0, 0), 114);
  int calls = 0;
  auto counter = [calls](int) mutable { return ++calls; };
  const FunctionRef<int(int)> rc(counter);
  rc(0);
  EXPECT_EQ(rc(0), 2);
  EXPECT_EQ(counter(0), 3);  // the same object's state
  std::function<void(int64_t, int64_t)> named = [&](int64_t x, int64_t y) { e = x + y; };
  ThreadPool pool(2);
  pool.parallel_for(1, named);
  EXPECT_EQ(e, 1);
}

// parallel_for_guided covers [0, n) exactly once in non-empty chunks of at least `grain` (the
// last may be shorter), for counts below, at and far above threads * grain, and still when one
// thread runs slow (the others take the rest).
TEST(ThreadPoolKernelTest, GuidedChunksCoverEveryIndexOnce) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int64_t grain : {1, 8}) {
      for (int64_t n : {1, 2, 7, 16, 17, 100, 1000, 4099}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::atomic<int> short_chunks{0};
        pool.parallel_for_guided(n, grain, [&](int64_t b, int64_t e) {
          ASSERT_LT(b, e);
          if (e - b < grain && e != n) short_chunks += 1;
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)] += 1;
          if (b == 0 && n >= 100) std::this_thread::sleep_for(std::chrono::milliseconds(2));
        });
        for (int64_t i = 0; i < n; ++i)
          ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "threads " << threads << " n " << n << " at " << i;
        EXPECT_EQ(short_chunks.load(), 0) << "threads " << threads << " n " << n;
      }
    }
  }
}

// Oversubscribed (twice as many busy threads as CPUs beside the pool), the pool notices that its
// threads wait in the run queue and stops spinning, and its jobs stay correct throughout; a
// second calling thread takes over the caller's slot.
TEST(ThreadPoolKernelTest, NoticesOversubscriptionAndStaysCorrect) {
  if (access("/proc/thread-self/schedstat", R_OK) != 0) GTEST_SKIP() << "no schedstat in /proc";
  ThreadPool pool(2);
  std::atomic<bool> stop{false};
  std::vector<std::thread> busy;
  const int n_busy = 2 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 0; i < n_busy; ++i)
    busy.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  bool seen = false;
  auto run_jobs = [&] {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!seen && std::chrono::steady_clock::now() < until) {
      std::atomic<int64_t> sum{0};
      pool.parallel_for(1000, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) sum += i;
      });
      ASSERT_EQ(sum.load(), 1000 * 999 / 2);
      seen = pool.contended();
    }
  };
  run_jobs();
  const bool seen_first = seen;
  seen = false;
  std::thread other(run_jobs);  // another caller: its own schedstat file
  other.join();
  stop = true;
  for (auto& t : busy) t.join();
  EXPECT_TRUE(seen_first);
  EXPECT_TRUE(seen);
}

// Large streamed buffers start on a 2 MB boundary (huge pages), small ones on a cache line.
TEST(ThreadPoolKernelTest, StreamedBuffersAreAligned) {
  for (size_t bytes : {size_t{100}, size_t{3} << 20}) {
    void* p = alloc_streamed(bytes);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % (bytes >= (size_t{2} << 20) ? (size_t{2} << 20) : 64), 0u);
    std::memset(p, 7, bytes);
    std::free(p);
  }
}

// Pinning: each thread of a pinned pool runs on exactly its CPU of pin_cpus() during a job, the
// list holds every CPU the process may use once, and the caller's affinity comes back after.
TEST(ThreadPoolKernelTest, PinnedThreadsRunOnTheirCpus) {
  cpu_set_t saved;
  CPU_ZERO(&saved);
  ASSERT_EQ(sched_getaffinity(0, sizeof(saved), &saved), 0);
  const std::vector<int> cpus = pin_cpus();
  ASSERT_EQ(static_cast<int>(cpus.size()), CPU_COUNT(&saved));
  EXPECT_EQ(std::set<int>(cpus.begin(), cpus.end()).size(), cpus.size());
  {
    ThreadPool pool(3, /*pin=*/true);
    std::vector<int> seen(3, -2);
    pool.run_on_all([&](int i, int) {
      cpu_set_t mine;
      CPU_ZERO(&mine);
      if (sched_getaffinity(0, sizeof(mine), &mine) != 0 || CPU_COUNT(&mine) != 1) return;
      for (int c = 0; c < CPU_SETSIZE; ++c)
        if (CPU_ISSET(c, &mine)) seen[static_cast<size_t>(i)] = c;
    });
    for (int i = 0; i < 3; ++i) EXPECT_EQ(seen[static_cast<size_t>(i)], cpus[static_cast<size_t>(i) % cpus.size()]) << i;
  }
  ASSERT_EQ(sched_setaffinity(0, sizeof(saved), &saved), 0);
}

}  // namespace
}  // namespace fennec::kernels
