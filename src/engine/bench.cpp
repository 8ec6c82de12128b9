#include "engine/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>

#include "core/huge_alloc.h"
#include "engine/kv_cache.h"
#include "kernels/cpu/repack_layout.h"
#include "kernels/cpu/vec.h"

namespace fennec::engine {

namespace {

using Clock = std::chrono::steady_clock;

int64_t blocks_for(int64_t tokens, int bs) { return (tokens + bs - 1) / bs; }

// One pass of the test; returns its wall time in ns.
Expected<int64_t> run_once(LoadedModel& lm, ThreadPool& pool, const BenchTest& t, std::mt19937& rng,
                           int n_gen_override = -1) {
  const auto& model = lm.model();
  const int n_vocab = model.hparams().n_vocab;
  const int bs = lm.kv().shape().block_size;
  std::uniform_int_distribution<int32_t> tok(0, n_vocab - 1);
  std::vector<float> logits;
  const int d = t.n_depth;
  // Tokens at positions pos0 .. of a sequence (block table `table`), n_batch per forward pass.
  auto eval = [&](const std::vector<int32_t>& tokens, int pos0, const std::vector<int32_t>& table) -> Status {
    const int n_tokens = static_cast<int>(tokens.size());
    for (int p = 0; p < n_tokens; p += t.n_batch) {
      const int n = std::min(t.n_batch, n_tokens - p);
      model::Batch batch;
      batch.add(std::span<const int32_t>(tokens.data() + p, static_cast<size_t>(n)), pos0 + p, table);
      if (auto s = model.forward(batch, lm.kv(), pool, logits); !s) return s;
    }
    return {};
  };
  auto random_tokens = [&](int n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (auto& x : v) x = tok(rng);
    return v;
  };
  // Positions 0 .. d-1 (untimed): random tokens, the first one `first` when that is >= 0.
  auto fill = [&](const std::vector<int32_t>& table, int32_t first) -> Status {
    std::vector<int32_t> prompt = random_tokens(d);
    if (d > 0 && first >= 0) prompt[0] = first;
    return eval(prompt, 0, table);
  };
  if (t.n_prompt > 0) {
    const int64_t nb = blocks_for(d + t.n_prompt, bs);
    std::vector<int32_t> table(static_cast<size_t>(nb));
    for (int64_t b = 0; b < nb; ++b) table[static_cast<size_t>(b)] = static_cast<int32_t>(b);
    if (auto s = fill(table, -1); !s) return s.error();
    const std::vector<int32_t> prompt = random_tokens(t.n_prompt);
    const auto t0 = Clock::now();
    if (auto s = eval(prompt, d, table); !s) return s.error();
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
  }
  const int n_gen = n_gen_override >= 0 ? n_gen_override : t.n_gen;
  const int np = t.n_parallel;
  const int64_t nb = blocks_for(d + std::max(n_gen, 1), bs);
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(np));
  for (int s = 0; s < np; ++s)
    for (int64_t b = 0; b < nb; ++b) tables[static_cast<size_t>(s)].push_back(static_cast<int32_t>(s * nb + b));
  const int32_t bos = lm.tokenizer().bos_id();
  const int32_t first = lm.tokenizer().add_bos() && bos >= 0 ? bos : -1;
  std::vector<int32_t> cur(static_cast<size_t>(np));
  for (int s = 0; s < np; ++s) {
    if (auto st = fill(tables[static_cast<size_t>(s)], first); !st) return st.error();
    cur[static_cast<size_t>(s)] = d == 0 && first >= 0 ? first : tok(rng);
  }
  const auto t0 = Clock::now();
  for (int i = 0; i < n_gen; ++i) {
    model::Batch batch;
    for (int s = 0; s < np; ++s)
      batch.add(std::span<const int32_t>(&cur[static_cast<size_t>(s)], 1), d + i, tables[static_cast<size_t>(s)]);
    if (auto st = model.forward(batch, lm.kv(), pool, logits); !st) return st.error();
    for (auto& x : cur) x = tok(rng);
  }
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
}

template <class T>
void mean_sd(const std::vector<T>& v, double& mean, double& sd) {
  mean = 0;
  for (T x : v) mean += static_cast<double>(x);
  mean /= static_cast<double>(v.size());
  double ss = 0;
  for (T x : v) ss += (static_cast<double>(x) - mean) * (static_cast<double>(x) - mean);
  sd = v.size() > 1 ? std::sqrt(ss / static_cast<double>(v.size() - 1)) : 0.0;  // llama-bench's
}

}  // namespace

Expected<BenchSamples> run_bench(LoadedModel& lm, ThreadPool& pool, const BenchTest& t, int reps) {
  if ((t.n_prompt > 0) == (t.n_gen > 0))
    return make_error("bench: a test is either prompt processing (-p) or generation (-n)");
  if (t.n_parallel < 1 || t.n_batch < 1 || reps < 1)
    return make_error("bench: parallel, batch and repetitions must be at least 1");
  const int bs = lm.kv().shape().block_size;
  if (t.n_depth < 0) return make_error("bench: depth must not be negative");
  const int64_t need = t.n_prompt > 0 ? blocks_for(t.n_depth + t.n_prompt, bs)
                                      : blocks_for(t.n_depth + t.n_gen, bs) * t.n_parallel;
  if (need > lm.kv().n_blocks())
    return make_error("bench: the test needs " + std::to_string(need * bs) +
                      " KV slots but the cache holds " + std::to_string(lm.kv().n_blocks() * bs));
  std::mt19937 rng(1234);
  // Warm-up (as llama-bench: the whole prompt, or one generated token).
  if (auto w = run_once(lm, pool, t, rng, t.n_gen > 0 ? 1 : -1); !w) return w.error();
  BenchSamples r;
  const double tokens = t.n_prompt > 0 ? t.n_prompt : static_cast<double>(t.n_gen) * t.n_parallel;
  for (int i = 0; i < reps; ++i) {
    auto ns = run_once(lm, pool, t, rng);
    if (!ns) return ns.error();
    r.ns.push_back(*ns);
    r.ts.push_back(tokens * 1e9 / static_cast<double>(*ns));
  }
  mean_sd(r.ns, r.avg_ns, r.stddev_ns);
  mean_sd(r.ts, r.avg_ts, r.stddev_ts);
  return r;
}

int64_t model_n_params(const LoadedModel& lm) {
  int64_t n = 0;
  for (const auto& t : lm.gguf().tensors()) n += static_cast<int64_t>(t.n_elements());
  return n;
}

int64_t model_size_bytes(const LoadedModel& lm) {
  int64_t n = 0;
  for (const auto& t : lm.gguf().tensors()) n += static_cast<int64_t>(t.n_bytes);
  return n;
}

int64_t decode_bytes_per_token(const LoadedModel& lm) {
  const auto& g = lm.gguf();
  int64_t n = model_size_bytes(lm);
  const auto* embd = g.find_tensor("token_embd.weight");
  if (embd && g.find_tensor("output.weight"))
    n -= static_cast<int64_t>(embd->n_bytes - embd->n_bytes / std::max<uint64_t>(embd->n_rows(), 1));
  return n;
}

std::string model_description(const LoadedModel& lm) {
  // llama.cpp's names for general.file_type (enum llama_ftype).
  static const std::pair<int, const char*> kNames[] = {
      {0, "all F32"},       {1, "F16"},           {2, "Q4_0"},          {3, "Q4_1"},
      {7, "Q8_0"},          {8, "Q5_0"},          {9, "Q5_1"},          {10, "Q2_K - Medium"},
      {11, "Q3_K - Small"}, {12, "Q3_K - Medium"}, {13, "Q3_K - Large"}, {14, "Q4_K - Small"},
      {15, "Q4_K - Medium"}, {16, "Q5_K - Small"}, {17, "Q5_K - Medium"}, {18, "Q6_K"},
      {32, "BF16"},         {38, "MXFP4 MoE"},    {39, "NVFP4"}};
  const int64_t ft = lm.gguf().get_int_or("general.file_type", -1);
  std::string type = "?";
  for (const auto& [k, name] : kNames)
    if (k == ft) type = name;
  const double p = static_cast<double>(model_n_params(lm));
  char size[32];
  if (p >= 1e9)
    std::snprintf(size, sizeof size, "%.1fB", p / 1e9);
  else
    std::snprintf(size, sizeof size, "%.0fM", p / 1e6);
  return lm.model().hparams().arch + " " + size + " " + type;
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      const size_t v = colon == std::string::npos ? colon : line.find_first_not_of(" \t", colon + 1);
      return v == std::string::npos ? "" : line.substr(v);
    }
  return "";
}

double measure_read_bandwidth(ThreadPool& pool, int64_t bytes, int reps) {
  const int64_t n = bytes / 8;
  // Placed as the packed weights are (alloc_streamed), so that the roofline compares like with like.
  std::unique_ptr<uint64_t, void (*)(void*)> buf(static_cast<uint64_t*>(alloc_streamed(static_cast<size_t>(n) * 8)),
                                                 std::free);
  if (!buf) return 0;
  // Each thread touches (and so places) the part it reads later.
  pool.parallel_for(n, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) buf.get()[static_cast<size_t>(i)] = static_cast<uint64_t>(i);
  });
  std::vector<uint64_t> sink(static_cast<size_t>(pool.size()));
  // Eight ways of reading, alternated, best of all: each of four prefetch schemes with 64-bit
  // loads and with the widest vector loads (kernels::VecOps::read_sum; on the Zen 4 measured on
  // 2026-12-07, 512-bit loads read 5-6% faster on one core). The schemes: the hardware
  // prefetchers alone; the software prefetch the packed products use (the process's plan,
  // packed::prefetch_plan(): each line asked into L2 `far` bytes ahead and into L1 `near` ahead;
  // on the Zen 5 measured on 2026-12-07 the L1 stream alone at 8 KB, which read faster there than
  // the other three); the L1 stream alone at kPrefetchNear, as the AVX2 products fetch
  // (repack_avx2.cpp: on the AMD Zen 3 measured, faster there than both streams); and the L1
  // stream alone at 1 KB (on the Intel Xeon with AVX-512 and AMX measured on 2026-12-07, 18 GB/s
  // on one core where the others read 14-15). The roofline is then the most a read of these
  // bytes was seen to reach, not a read slower than the products.
  const kernels::packed::PrefetchPlan plan = kernels::packed::prefetch_plan();
  const kernels::VecOps* ways[2] = {&kernels::vec_ops_scalar(), &kernels::vec_ops()};
  double best = 0;
  for (int r = 0; r < 8 * reps; ++r) {
    const int scheme = r % 4;  // 0: plain, 1: the plan, 2: near, 3: near at 1 KB
    const kernels::VecOps& v = *ways[(r / 4) % 2];
    const int64_t near = scheme == 0   ? 0
                         : scheme == 1 ? plan.near
                         : scheme == 3 ? kernels::packed::kPrefetchNearIntel
                                       : kernels::packed::kPrefetchNear;
    const int64_t far = scheme == 1 ? plan.far : 0;
    const auto t0 = Clock::now();
    pool.run_on_all([&](int ti, int nt) {
      // Each thread's part starts on a line; the last one takes the words after the last line.
      const int64_t a = n / 8 * ti / nt * 8, b = ti + 1 == nt ? n : n / 8 * (ti + 1) / nt * 8;
      sink[static_cast<size_t>(ti)] = v.read_sum(buf.get() + a, b - a, far, near);
    });
    const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, static_cast<double>(n * 8) / sec);
  }
  volatile uint64_t keep = 0;
  for (auto x : sink) keep = keep + x;
  return best;
}

}  // namespace fennec::engine
