// Google Benchmark micro-benchmarks of the CPU kernels, per weight type and batch size, through
// the entry points the model calls (kernels::matmul, paged_attention, the element-wise ops) at
// the active SIMD level (FENNEC_CPU=scalar|avx2 lowers it). Counters: GB/s of weight bytes read
// and GFLOP/s (2 * rows * cols * tokens per matmul).
//
//   build/fennec_kernels_bench --benchmark_filter='Matmul/Q4_1' --benchmark_min_time=0.2
//
// Shapes are SmolLM2-135M's (576 x 1536 FFN); threads: 1 and 2 (an argument of each benchmark).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "core/float_convert.h"
#include "core/thread_pool.h"
#include "formats/ggml_type.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/repack.h"
#include "quant/dequantize.h"

namespace {

using fennec::ThreadPool;
using fennec::formats::GgmlType;
namespace k = fennec::kernels;

ThreadPool& pool(int n) {
  static std::unique_ptr<ThreadPool> p1, p2;
  auto& p = n == 1 ? p1 : p2;
  if (!p) p = std::make_unique<ThreadPool>(n);
  return *p;
}

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A weight matrix of random blocks whose scale fields hold small finite values (random bytes
// elsewhere), so that every path computes on ordinary numbers.
std::vector<uint8_t> random_weights(GgmlType t, int64_t rows, int64_t cols) {
  const auto tr = *fennec::formats::type_traits(static_cast<uint32_t>(t));
  std::vector<uint8_t> m(fennec::formats::row_bytes(tr, static_cast<uint64_t>(cols)) * static_cast<size_t>(rows));
  std::mt19937 rng(7);
  for (auto& b : m) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u(0.001f, 0.05f);
  auto put16 = [&](size_t at, float v) {
    const uint16_t h = fennec::f32_to_fp16(v);
    std::memcpy(m.data() + at, &h, 2);
  };
  if (t == GgmlType::F16) {
    for (size_t o = 0; o < m.size(); o += 2) put16(o, u(rng) - 0.025f);
    return m;
  }
  if (t == GgmlType::F32) {
    for (size_t o = 0; o < m.size(); o += 4) {
      const float v = u(rng) - 0.025f;
      std::memcpy(m.data() + o, &v, 4);
    }
    return m;
  }
  for (size_t o = 0; o < m.size(); o += tr.type_size) {
    switch (t) {
      case GgmlType::Q4_1:
      case GgmlType::Q5_1:
      case GgmlType::Q4_K:
      case GgmlType::Q5_K:
        put16(o, u(rng));
        put16(o + 2, u(rng));
        break;
      case GgmlType::Q6_K:
        put16(o + tr.type_size - 2, u(rng));
        break;
      case GgmlType::MXFP4:
        m[o] = static_cast<uint8_t>(120 + rng() % 6);  // E8M0 exponent near 2^-5
        break;
      default:
        put16(o, u(rng));
    }
  }
  return m;
}

void BM_Matmul(benchmark::State& st, GgmlType t, int64_t rows, int64_t cols) {
  const int64_t tokens = st.range(0);
  const int threads = static_cast<int>(st.range(1));
  const auto tr = *fennec::formats::type_traits(static_cast<uint32_t>(t));
  const auto w = random_weights(t, rows, cols);
  k::WeightView wv{t, w.data(), rows, cols,
                   static_cast<int64_t>(fennec::formats::row_bytes(tr, static_cast<uint64_t>(cols)))};
  // Packed as a model's matrices are (unless FENNEC_REPACK=0): the products a model runs.
  k::PackedWeights packed;
  packed.pack(wv, pool(threads));
  const auto x = random_floats(static_cast<size_t>(tokens * cols), 3);
  std::vector<float> y(static_cast<size_t>(tokens * rows));
  for (auto _ : st) {
    k::matmul(wv, x.data(), tokens, y.data(), pool(threads));
    benchmark::DoNotOptimize(y.data());
  }
  const double iters = static_cast<double>(st.iterations());
  st.counters["GB"] = benchmark::Counter(static_cast<double>(w.size()) * iters / 1e9, benchmark::Counter::kIsRate);
  st.counters["GFLOP"] = benchmark::Counter(2.0 * rows * cols * tokens * iters / 1e9, benchmark::Counter::kIsRate);
}

// One decode token through weights far larger than the caches, as a 1B model's step reads them:
// 32 repacked 8192 x 2048 matrices (about 300 MB in Q4_0), each product reading the next matrix,
// so every byte comes from DRAM. "Stream/read" is a plain vector read of the same bytes, the
// bandwidth the products can approach. GB = weight bytes read per second.
struct StreamSet {
  static constexpr int64_t kRows = 8192, kCols = 2048, kMats = 32;
  GgmlType type;
  std::vector<std::vector<uint8_t>> originals;
  std::vector<k::WeightView> views;
  k::PackedWeights packed;
  int64_t bytes = 0;
  explicit StreamSet(GgmlType t) : type(t) {
    const auto tr = *fennec::formats::type_traits(static_cast<uint32_t>(t));
    const auto rb = static_cast<int64_t>(fennec::formats::row_bytes(tr, static_cast<uint64_t>(kCols)));
    const auto one = random_weights(t, kRows, kCols);
    originals.assign(kMats, one);  // packing reads them once; the products read the packed copies
    std::vector<k::WeightView*> order;
    for (const auto& o : originals) views.push_back(k::WeightView{t, o.data(), kRows, kCols, rb});
    for (auto& v : views) order.push_back(&v);
    // One buffer in reading order, as a model's (Model::pack_weights).
    packed.pack_all(order, pool(2));
    for (const auto& v : views) bytes += v.packed ? k::packed_bytes(t, kRows, kCols) : kRows * rb;
    originals.clear();  // the packed copies are all that is read
    for (auto& v : views)
      if (!v.packed) v.data = nullptr;
  }
};

void BM_Stream(benchmark::State& st, GgmlType t) {
  static std::unique_ptr<StreamSet> set;
  if (!set || set->type != t) {
    set.reset();
    set = std::make_unique<StreamSet>(t);
  }
  if (!set->views[0].packed) {
    st.SkipWithError("not packed (FENNEC_REPACK=0?)");
    return;
  }
  const int threads = static_cast<int>(st.range(0));
  const auto x = random_floats(StreamSet::kCols, 3);
  std::vector<float> y(StreamSet::kRows);
  for (auto _ : st) {
    for (const auto& v : set->views) k::matmul(v, x.data(), 1, y.data(), pool(threads));
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["GB"] = benchmark::Counter(static_cast<double>(set->bytes) * static_cast<double>(st.iterations()) / 1e9,
                                         benchmark::Counter::kIsRate);
}

// The same product on one packed 1024 x 1024 matrix that stays in L2 (576 KB in Q4_0): the
// kernel's own speed without DRAM, i.e. how much of a DRAM stream's time its instructions need.
void BM_StreamHot(benchmark::State& st, GgmlType t) {
  constexpr int64_t kN = 1024;
  const auto tr = *fennec::formats::type_traits(static_cast<uint32_t>(t));
  const auto rb = static_cast<int64_t>(fennec::formats::row_bytes(tr, static_cast<uint64_t>(kN)));
  const auto w = random_weights(t, kN, kN);
  k::WeightView v{t, w.data(), kN, kN, rb};
  k::PackedWeights packed;
  std::vector<k::WeightView*> order{&v};
  packed.pack_all(order, pool(1));
  if (!v.packed) {
    st.SkipWithError("not packed (FENNEC_REPACK=0?)");
    return;
  }
  const auto x = random_floats(kN, 3);
  std::vector<float> y(kN);
  for (auto _ : st) {
    k::matmul(v, x.data(), 1, y.data(), pool(1));
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["GB"] = benchmark::Counter(static_cast<double>(k::packed_bytes(t, kN, kN)) * static_cast<double>(st.iterations()) / 1e9,
                                         benchmark::Counter::kIsRate);
}

void BM_StreamRead(benchmark::State& st) {
  constexpr int64_t kBytes = int64_t{300} << 20;
  static std::vector<uint64_t> buf(kBytes / 8, 1);
  const int threads = static_cast<int>(st.range(0));
  std::vector<uint64_t> sums(2);
  for (auto _ : st) {
    pool(threads).parallel_for(kBytes / 4096, [&](int64_t c0, int64_t c1) {
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int64_t i = c0 * 512; i < c1 * 512; i += 4) {
        s0 += buf[i];
        s1 += buf[i + 1];
        s2 += buf[i + 2];
        s3 += buf[i + 3];
      }
      sums[c0 == 0 ? 0 : 1] += s0 + s1 + s2 + s3;
    });
    benchmark::DoNotOptimize(sums.data());
  }
  st.counters["GB"] = benchmark::Counter(static_cast<double>(kBytes) * static_cast<double>(st.iterations()) / 1e9,
                                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_StreamRead)->Name("Stream/read")->Arg(1)->Arg(2)->ArgName("threads")->UseRealTime();

void matmul_args(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2})
    for (int tokens : {1, 4, 32, 512}) b->Args({tokens, threads});
  b->ArgNames({"tokens", "threads"})->UseRealTime();
}

// One decode step of 32 sequences or of one (SmolLM2's heads), or one prompt chunk of 128
// queries, at `ctx` tokens of context. The cache holds enough layers to fill 96 MB, and each
// iteration takes the next layer, so that a deep context is read from memory as in a model's
// decode step (all its layers' K and V do not fit in the last-level cache) and not from a warm cache.
void BM_Attention(benchmark::State& st) {
  const int n_seqs = static_cast<int>(st.range(0)), n_q = static_cast<int>(st.range(1));
  const int threads = static_cast<int>(st.range(2)), ctx = static_cast<int>(st.range(3));
  const auto kv = st.range(4) == 0 ? k::KvType::kF16 : k::KvType::kQ8_0;
  const int bs = 16, n_heads = 9, n_kv = 3, hd = 64;
  const int blocks_per_seq = (ctx + n_q + bs - 1) / bs;
  const int n_blocks = n_seqs * blocks_per_seq;
  const size_t layer_vals = static_cast<size_t>(n_blocks) * bs * n_kv * hd;
  const int n_layers = static_cast<int>(std::max<size_t>(1, (size_t{96} << 20) / (layer_vals * 4)));
  // Each layer's K and V: the same random values, as fp16 or as Q8_0 blocks.
  const auto f = random_floats(layer_vals, 5);
  const auto layer_bytes = static_cast<size_t>(k::kv_bytes(kv, static_cast<int64_t>(layer_vals)));
  std::vector<uint8_t> one(layer_bytes);
  if (kv == k::KvType::kF16)
    for (size_t i = 0; i < layer_vals; ++i) {
      const uint16_t h = fennec::f32_to_fp16(f[i]);
      std::memcpy(one.data() + 2 * i, &h, 2);
    }
  else
    fennec::quant::ref::quantize_q8_0(f.data(), reinterpret_cast<fennec::quant::BlockQ8_0*>(one.data()),
                                      static_cast<int64_t>(layer_vals / 32));
  std::vector<uint8_t> kc(layer_bytes * n_layers);
  for (int l = 0; l < n_layers; ++l) std::memcpy(kc.data() + layer_bytes * l, one.data(), layer_bytes);
  const std::vector<uint8_t> vc = kc;
  std::vector<int32_t> table(static_cast<size_t>(n_blocks));
  for (int i = 0; i < n_blocks; ++i) table[static_cast<size_t>(i)] = i;
  std::vector<k::AttnSequence> seqs;
  for (int s = 0; s < n_seqs; ++s)
    seqs.push_back({static_cast<int64_t>(s) * n_q, n_q, ctx, table.data() + s * blocks_per_seq});
  const auto q = random_floats(static_cast<size_t>(n_seqs * n_q * n_heads * hd), 6);
  std::vector<float> out(q.size());
  k::AttnParams p;
  p.n_heads = n_heads;
  p.n_kv_heads = n_kv;
  p.head_dim_k = p.head_dim_v = hd;
  p.block_size = bs;
  p.scale = 0.125f;
  p.k_type = p.v_type = kv;
  int layer = 0;
  for (auto _ : st) {
    const size_t off = layer_bytes * static_cast<size_t>(layer);
    k::paged_attention(q.data(), n_heads * hd, seqs.data(), n_seqs, kc.data() + off, vc.data() + off, p,
                       out.data(), n_heads * hd, pool(threads));
    benchmark::DoNotOptimize(out.data());
    layer = (layer + 1) % n_layers;
  }
  // K and V bytes each query set reads, and its multiply-adds (q.k and p.v per head and key).
  const double keys = static_cast<double>(n_seqs) * (ctx + n_q);
  st.counters["GB"] = benchmark::Counter(keys * static_cast<double>(k::kv_bytes(kv, n_kv * hd)) * 2 * static_cast<double>(st.iterations()) / 1e9,
                                           benchmark::Counter::kIsRate);
  st.counters["GFLOP"] = benchmark::Counter(
      keys * n_q * n_heads * hd * 4.0 * static_cast<double>(st.iterations()) / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Attention)
    ->Args({32, 1, 1, 300, 0})->Args({32, 1, 2, 300, 0})->Args({1, 1, 1, 300, 0})->Args({1, 1, 2, 300, 0})
    ->Args({1, 128, 1, 300, 0})->Args({1, 128, 2, 300, 0})->Args({1, 1, 1, 4096, 0})->Args({1, 1, 2, 4096, 0})
    ->Args({1, 1, 1, 4096, 1})->Args({1, 1, 2, 4096, 1})->Args({32, 1, 1, 300, 1})
    ->ArgNames({"seqs", "queries", "threads", "ctx", "q8"})->UseRealTime();

void BM_Swiglu(benchmark::State& st) {
  const int64_t n = 1536 * 32;
  const auto g = random_floats(static_cast<size_t>(n), 1), u = random_floats(static_cast<size_t>(n), 2);
  std::vector<float> o(static_cast<size_t>(n));
  for (auto _ : st) {
    k::swiglu(g.data(), u.data(), o.data(), n);
    benchmark::DoNotOptimize(o.data());
  }
  st.counters["GB"] = benchmark::Counter(12.0 * n * static_cast<double>(st.iterations()) / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Swiglu);

void BM_RmsNorm(benchmark::State& st) {
  const int64_t dim = 576, tokens = 32;
  const auto x = random_floats(static_cast<size_t>(dim * tokens), 1), w = random_floats(static_cast<size_t>(dim), 2);
  std::vector<float> o(x.size());
  for (auto _ : st) {
    k::rms_norm(x.data(), w.data(), tokens, dim, 1e-5f, o.data());
    benchmark::DoNotOptimize(o.data());
  }
  st.counters["GB"] = benchmark::Counter(8.0 * dim * tokens * static_cast<double>(st.iterations()) / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_RmsNorm);

const int kRegistered = [] {
  const std::pair<GgmlType, const char*> types[] = {
      {GgmlType::Q4_0, "Q4_0"}, {GgmlType::Q4_1, "Q4_1"}, {GgmlType::Q5_0, "Q5_0"},
      {GgmlType::Q5_1, "Q5_1"}, {GgmlType::Q8_0, "Q8_0"}, {GgmlType::Q4_K, "Q4_K"},
      {GgmlType::Q6_K, "Q6_K"}, {GgmlType::MXFP4, "MXFP4"}, {GgmlType::F16, "F16"},
      {GgmlType::F32, "F32"}};
  for (const auto& [t, name] : types) {
    const int64_t cols = (t == GgmlType::Q4_K || t == GgmlType::Q6_K) ? 1536 : 576;
    const int64_t rows = cols == 1536 ? 576 : 1536;
    benchmark::RegisterBenchmark((std::string("Matmul/") + name).c_str(),
                                 [t, rows, cols](benchmark::State& st) { BM_Matmul(st, t, rows, cols); })
        ->Apply(matmul_args);
  }
  for (const auto& [t, name] : {std::pair{GgmlType::Q4_0, "Q4_0"}, {GgmlType::Q8_0, "Q8_0"}, {GgmlType::Q4_K, "Q4_K"}})
    benchmark::RegisterBenchmark((std::string("Stream/") + name).c_str(), [t](benchmark::State& st) { BM_Stream(st, t); })
        ->Arg(1)
        ->Arg(2)
        ->ArgName("threads")
        ->UseRealTime();
  for (const auto& [t, name] : {std::pair{GgmlType::Q4_0, "Q4_0"}, {GgmlType::Q8_0, "Q8_0"}, {GgmlType::Q4_K, "Q4_K"}})
    benchmark::RegisterBenchmark((std::string("StreamHot/") + name).c_str(), [t](benchmark::State& st) { BM_StreamHot(st, t); })
        ->UseRealTime();
  return 0;
}();

}  // namespace

BENCHMARK_MAIN();
