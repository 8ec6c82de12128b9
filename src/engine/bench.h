// `fennec bench`: prompt-processing and generation speed measured the way llama-bench measures
// them, plus the machine's memory read bandwidth and the decode roofline it implies.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/expected.h"
#include "core/thread_pool.h"
#include "engine/loaded_model.h"

namespace fennec::engine {

struct BenchTest {
  int n_prompt = 0;    // pp test: one sequence of n_prompt tokens, one forward pass per n_batch
  int n_gen = 0;       // tg test: n_gen steps of one new token per sequence
  int n_parallel = 1;  // tg: sequences decoded together in each step (1 = llama-bench's tg)
  int n_batch = 2048;  // pp: tokens per forward pass
  int n_depth = 0;     // tokens each sequence already holds, evaluated untimed first (llama-bench's -d)
};

struct BenchSamples {
  std::vector<int64_t> ns;   // wall time of each repetition
  std::vector<double> ts;    // tokens per second of each repetition
  double avg_ns = 0, stddev_ns = 0, avg_ts = 0, stddev_ts = 0;
};

// Runs one warm-up pass, then `reps` timed repetitions, each from an empty KV cache (then, with
// n_depth, filled with n_depth tokens, untimed). Tokens are
// random (fixed seed), as llama-bench's; a tg test starts from BOS when the model adds one.
Expected<BenchSamples> run_bench(LoadedModel& lm, ThreadPool& pool, const BenchTest& test, int reps);

// Bytes of weights a decode step reads per token: every tensor, except that an untied token
// embedding contributes one row (the lookup), not the whole matrix.
int64_t decode_bytes_per_token(const LoadedModel& lm);

// Sustained read bandwidth of main memory in bytes/s: `bytes` (much larger than the caches)
// read by every thread of the pool, best of `reps` passes each of a plain read and of a read
// with the packed products' software prefetch (the faster of the two on the machines measured).
double measure_read_bandwidth(ThreadPool& pool, int64_t bytes = int64_t{512} << 20, int reps = 5);

// The CPU's model name from /proc/cpuinfo ("" if unknown).
std::string cpu_model_name();

// "llama 135M Q4_1": architecture, parameter count, file type (llama.cpp's names).
std::string model_description(const LoadedModel& lm);
int64_t model_n_params(const LoadedModel& lm);
int64_t model_size_bytes(const LoadedModel& lm);

}  // namespace fennec::engine
