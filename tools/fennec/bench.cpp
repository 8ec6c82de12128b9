// fennec bench: llama-bench's tests, table and JSON, plus memory bandwidth and decode roofline.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/bench.h"
#include "kernels/cpu/cpu_features.h"
#include "metering/meter.h"
#include "ras/scrubber.h"
#include "ras/weight_regions.h"
#include "tools/fennec/commands.h"

namespace fennec::cli {

namespace {

std::string iso_time() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

struct Row {
  std::string model_file, model_type;
  int64_t size = 0, params = 0, bytes_per_token = 0;
  int threads = 0;
  engine::BenchTest test;
  engine::BenchSamples s;
  double bandwidth = 0;  // bytes/s at this thread count; for tg tests the best probe around the test (0: none)
  double roofline = 0;   // decode steps/s the bandwidth allows (tg tests with a bandwidth)
  double joules_per_token = 0;
  bool energy_measured = false;  // from the CPU package counters, else --device-watts x time
  double usd_per_mtok = 0;       // energy at --price-kwh plus busy time at --price-hour
};

std::string test_name(const engine::BenchTest& t) {
  std::string n = t.n_prompt > 0 ? "pp" + std::to_string(t.n_prompt) : "tg" + std::to_string(t.n_gen);
  if (t.n_gen > 0 && t.n_parallel > 1) n += "x" + std::to_string(t.n_parallel);
  if (t.n_depth > 0) n += " @ d" + std::to_string(t.n_depth);  // llama-bench's name
  return n;
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "bench", "prompt and generation speed (llama-bench's tests and output), memory bandwidth, roofline");
  static std::vector<std::string> models;
  static std::vector<int> prompts{512}, gens{128}, threads, parallels{1}, depths{0};
  static int reps = 5, n_batch = 2048;
  static std::string output = "md";
  static bool json = false, no_bw = false;
  static metering::MeterOptions mo;
  static int scrub_mb = 0;
  static KvTypeFlags kv;
  static double scrub_interval = 10;
  cmd->add_option("-m,--model", models, "GGUF model file(s)")->required()->delimiter(',');
  cmd->add_option("-p,--n-prompt", prompts, "prompt lengths (default 512; 0: none)")->delimiter(',');
  cmd->add_option("-n,--n-gen", gens, "tokens to generate (default 128; 0: none)")->delimiter(',');
  cmd->add_option("-t,--threads", threads, "thread counts (default: all cores)")->delimiter(',');
  cmd->add_option("-d,--n-depth", depths,
                  "tokens already in the context before each test, evaluated untimed (default 0)")
      ->delimiter(',');
  cmd->add_option("-r,--repetitions", reps, "timed repetitions per test (default 5)");
  cmd->add_option("-b,--batch-size", n_batch, "prompt tokens per forward pass (default 2048)");
  cmd->add_option("--parallel", parallels,
                  "sequences decoded together in tg tests (default 1, llama-bench's tg)")
      ->delimiter(',');
  cmd->add_option("-o,--output", output, "md or json (default md)");
  cmd->add_flag("--json", json, "same as -o json");
  cmd->add_flag("--no-bandwidth", no_bw, "skip the memory bandwidth measurement");
  cmd->add_option("--device-watts", mo.device_watts,
                  "declared power for the energy estimate where no energy counter exists (default: 5 W per "
                  "logical CPU, at least 10 W)");
  cmd->add_option("--price-kwh", mo.price_kwh, "USD per kWh for the cost per token (default 0.15)");
  cmd->add_option("--price-hour", mo.price_hour, "USD per hour of the machine (default 0)");
  cmd->add_option(
      "--scrub-mb", scrub_mb,
      "scrub the weights as `fennec serve` does, this many MiB every --scrub-interval s on a "
      "thread of its own, during the tests (default 0: off)");
  cmd->add_option("--scrub-interval", scrub_interval,
                  "seconds between scrub slices (default 10, as serve's --ras-interval)");
  add_kv_type_options(cmd, kv);
  cmd->callback([] {
    if (json) output = "json";
    if (output != "md" && output != "json") {
      std::fprintf(stderr, "fennec bench: -o must be md or json\n");
      return set_exit_code(2);
    }
    if (threads.empty()) threads.push_back(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    std::vector<engine::BenchTest> tests;
    for (int d : depths) {
      if (d < 0) {
        std::fprintf(stderr, "fennec bench: -d must not be negative\n");
        return set_exit_code(2);
      }
      for (int p : prompts)
        if (p > 0) tests.push_back({p, 0, 1, n_batch, d});
      for (int n : gens)
        if (n > 0)
          for (int np : parallels) tests.push_back({0, n, np, n_batch, d});
    }
    if (tests.empty()) {
      std::fprintf(stderr, "fennec bench: no test (-p and -n are all 0)\n");
      return set_exit_code(2);
    }
    int max_ctx = 16, max_par = 1;
    for (const auto& t : tests) {
      max_ctx = std::max({max_ctx, t.n_depth + t.n_prompt, t.n_depth + t.n_gen});
      max_par = std::max(max_par, t.n_parallel);
    }
    const bool md = output == "md";
    if (md) {
      std::printf("| %-30s | %10s | %10s | %-10s | %7s | %15s | %20s |\n", "model", "size", "params",
                  "backend", "threads", "test", "t/s");
      std::printf("| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: |\n");
      std::fflush(stdout);
    }
    std::vector<Row> rows;
    std::vector<std::string> scrub_notes;
    std::vector<std::pair<int, double>> bw_by_threads;
    // Energy per token: measured from the package counters over each test (warm-up included, so
    // per token it is the whole run's energy over all its tokens), else estimated.
    std::string no_counter;
    auto counter = metering::EnergyCounter::find("/", &no_counter);
    const metering::StepMeter meter(mo, nullptr);  // for cost_of() and the default watts
    const double watts = mo.device_watts > 0 ? mo.device_watts : metering::default_device_watts();
    for (const auto& path : models) {
      engine::LoadOptions o;
      o.n_threads = 1;
      o.n_ctx = max_ctx;
      o.n_seqs = max_par;
      kv.apply(o);
      auto lm = engine::LoadedModel::load(path, o);
      if (!lm) {
        std::fprintf(stderr, "fennec bench: %s\n", lm.error().message.c_str());
        return set_exit_code(1);
      }
      // Background scrubbing over the regions the server scrubs, for what it costs (docs/ras.md).
      std::unique_ptr<ras::WeightScrubber> scrubber;
      std::unique_ptr<ras::ScrubThread> scrub_thread;
      if (scrub_mb > 0) {
        scrubber = std::make_unique<ras::WeightScrubber>(ras::weight_scrub_regions((*lm)->model()),
                                                         static_cast<size_t>(scrub_mb) << 20);
        scrub_thread = std::make_unique<ras::ScrubThread>(*scrubber, scrub_interval);
      }
      const auto t_model = std::chrono::steady_clock::now();
      for (int nt : threads) {
        ThreadPool pool(nt, pin_requested_by_env());
        double bw = 0;
        if (!no_bw) {
          auto it = std::find_if(bw_by_threads.begin(), bw_by_threads.end(),
                                 [&](const auto& x) { return x.first == nt; });
          if (it == bw_by_threads.end()) {
            bw_by_threads.emplace_back(nt, engine::measure_read_bandwidth(pool));
            it = bw_by_threads.end() - 1;
          }
          bw = it->second;
        }
        for (const auto& t : tests) {
          // A generation test's roofline takes the bandwidth measured just before and just after
          // it (the better of the two): the speed of a shared machine drifts over minutes, and a
          // probe taken at another time would compare the run with another machine.
          const bool bracket = bw > 0 && t.n_gen > 0;
          const double bw_before = bracket ? engine::measure_read_bandwidth(pool) : 0;
          if (counter) counter->advance();
          const auto t0 = std::chrono::steady_clock::now();
          auto s = engine::run_bench(**lm, pool, t, reps);
          const double run_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          const std::optional<double> run_j = counter ? counter->advance() : std::nullopt;
          const double bw_test = bracket ? std::max(bw_before, engine::measure_read_bandwidth(pool)) : bw;
          if (!s) {
            std::fprintf(stderr, "fennec bench: %s\n", s.error().message.c_str());
            return set_exit_code(1);
          }
          Row r{path, engine::model_description(**lm), engine::model_size_bytes(**lm),
                engine::model_n_params(**lm), engine::decode_bytes_per_token(**lm), nt, t, *s, bw_test};
          if (bracket) r.roofline = bw_test / static_cast<double>(r.bytes_per_token);
          if (r.s.avg_ts > 0) {
            const double tokens_per_run = static_cast<double>(t.n_prompt > 0 ? t.n_prompt : t.n_gen * t.n_parallel);
            r.energy_measured = run_j.has_value() && *run_j > 0 && run_s > 0;
            r.joules_per_token = r.energy_measured ? *run_j / (tokens_per_run * (reps + 1)) : watts / r.s.avg_ts;
            r.usd_per_mtok = 1e6 * meter.cost_of(r.joules_per_token, 1.0 / r.s.avg_ts);
          }
          if (md) {
            char tps[64];
            std::snprintf(tps, sizeof tps, "%.2f ± %.2f", r.s.avg_ts, r.s.stddev_ts);
            char size[32], params[32];
            std::snprintf(size, sizeof size, "%.2f MiB", static_cast<double>(r.size) / (1 << 20));
            std::snprintf(params, sizeof params, "%.2f M", static_cast<double>(r.params) / 1e6);
            std::printf("| %-30s | %10s | %10s | %-10s | %7d | %15s | %20s |\n", r.model_type.c_str(),
                        size, params, "CPU", nt, test_name(t).c_str(), tps);
            std::fflush(stdout);
          }
          rows.push_back(std::move(r));
        }
      }
      if (scrub_thread) {
        scrub_thread->stop();
        const double wall =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t_model).count();
        const double total_mib = static_cast<double>(scrubber->total_bytes()) / (1 << 20);
        char note[512];
        std::snprintf(
            note, sizeof note,
            "scrub %s: %d MiB every %.1f s over %.1f MiB of weights (a full pass every %.1f s): "
            "%lld slices, %.3f s busy (%.3f s CPU) in %.1f s = %.2f%% of one core (CPU time)",
            path.c_str(), scrub_mb, scrub_interval, total_mib,
            scrubber->pass_s(scrub_interval),
            static_cast<long long>(scrub_thread->reads()), scrub_thread->busy_s(),
            scrub_thread->cpu_s(), wall, wall > 0 ? 100.0 * scrub_thread->cpu_s() / wall : 0.0);
        scrub_notes.emplace_back(note);
        if (!md) std::fprintf(stderr, "%s\n", note);
      }
    }
    if (md) {
      std::printf("\nSIMD: %s%s\n", kernels::simd_level_name(kernels::active_simd_level()),
                  kernels::amx_usable() ? " + AMX-INT8 (prefill)" : "");
      for (const auto& [nt, bw] : bw_by_threads)
        std::printf("memory read bandwidth: %.1f GB/s with %d thread%s\n", bw / 1e9, nt, nt == 1 ? "" : "s");
      for (const auto& r : rows) {
        if (r.roofline <= 0) continue;
        const double roof = r.roofline;
        std::printf("decode roofline %s, %d thread%s, %s: %.1f MB of weights per step at %.1f GB/s (measured "
                    "around the test) -> %.1f steps/s; measured %.1f steps/s = %.0f%% of it\n",
                    r.model_type.c_str(), r.threads, r.threads == 1 ? "" : "s", test_name(r.test).c_str(),
                    static_cast<double>(r.bytes_per_token) / 1e6, r.bandwidth / 1e9, roof, r.s.avg_ts / r.test.n_parallel,
                    100.0 * r.s.avg_ts / r.test.n_parallel / roof);
      }
      for (const auto& n : scrub_notes) std::printf("%s\n", n.c_str());
      bool any_estimate = false;
      for (const auto& r : rows) any_estimate = any_estimate || (r.joules_per_token > 0 && !r.energy_measured);
      if (any_estimate)
        std::printf("energy: estimated at %.0f W declared (--device-watts) times the run time: %s\n", watts,
                    no_counter.c_str());
      for (const auto& r : rows)
        if (r.joules_per_token > 0)
          std::printf("energy %s, %d thread%s, %s: %.4f J/token (%s), $%.4f per million tokens\n",
                      r.model_type.c_str(), r.threads, r.threads == 1 ? "" : "s", test_name(r.test).c_str(),
                      r.joules_per_token, r.energy_measured ? "measured" : "estimated", r.usd_per_mtok);
      return;
    }
    nlohmann::ordered_json arr = nlohmann::ordered_json::array();
    const std::string cpu = engine::cpu_model_name();
    for (const auto& r : rows) {
      nlohmann::ordered_json j;
      j["build_commit"] = "fennec";
      j["build_number"] = 0;
      j["cpu_info"] = cpu;
      j["gpu_info"] = "";
      j["backends"] = "CPU";
      j["model_filename"] = r.model_file;
      j["model_type"] = r.model_type;
      j["model_size"] = r.size;
      j["model_n_params"] = r.params;
      j["n_batch"] = r.test.n_batch;
      j["n_ubatch"] = r.test.n_batch;
      j["n_threads"] = r.threads;
      j["type_k"] = kv.k;
      j["type_v"] = kv.v;
      j["n_gpu_layers"] = 0;
      j["flash_attn"] = 0;
      j["load_mode"] = "mmap";
      j["embeddings"] = false;
      j["n_prompt"] = r.test.n_prompt;
      j["n_gen"] = r.test.n_gen;
      j["n_depth"] = r.test.n_depth;
      j["n_parallel"] = r.test.n_parallel;
      j["test_time"] = iso_time();
      j["avg_ns"] = static_cast<int64_t>(r.s.avg_ns);
      j["stddev_ns"] = static_cast<int64_t>(r.s.stddev_ns);
      j["avg_ts"] = r.s.avg_ts;
      j["stddev_ts"] = r.s.stddev_ts;
      j["samples_ns"] = r.s.ns;
      j["samples_ts"] = r.s.ts;
      j["simd"] = kernels::simd_level_name(kernels::active_simd_level());
      if (scrub_mb > 0) {
        j["scrub_mb"] = scrub_mb;
        j["scrub_interval_s"] = scrub_interval;
      }
      if (r.joules_per_token > 0) {
        j["joules_per_token"] = r.joules_per_token;
        j["energy_source"] = r.energy_measured ? "measured" : "estimated";
        j["usd_per_mtok"] = r.usd_per_mtok;
      }
      if (r.bandwidth > 0) {
        j["mem_bandwidth_gbs"] = r.bandwidth / 1e9;
        if (r.roofline > 0) {
          j["decode_bytes_per_token"] = r.bytes_per_token;
          j["roofline_steps_per_s"] = r.roofline;
          j["roofline_share"] = r.s.avg_ts / r.test.n_parallel / r.roofline;
        }
      }
      arr.push_back(std::move(j));
    }
    std::printf("%s\n", arr.dump(2).c_str());
  });
}

}  // namespace fennec::cli
