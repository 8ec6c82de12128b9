// fennec doctor: checks the machine fennec runs on and prints a report (or JSON): CPU features
// and the SIMD path in force, a known-answer run of each vector-kernel path, memory bandwidth,
// every telemetry source with its values or why it is unavailable, GPUs through NVML, how energy
// will be metered, and the health the rules give the first reading. --record writes a telemetry
// trace (the replay format) for tests and bug reports.
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "core/thread_pool.h"
#include "engine/bench.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/vec.h"
#include "metering/meter.h"
#include "ras/health.h"
#include "ras/replay.h"
#include "ras/telemetry.h"
#include "tools/fennec/commands.h"

namespace fennec::cli {

namespace {

struct KernelCheck {
  std::string path;
  bool ok = true;
  std::string detail;
};

// Inputs whose products and sums are exact in float, so every path must give the same bits
// whatever its order of summation.
KernelCheck check_vec_ops(const kernels::VecOps& ops, const char* name) {
  constexpr int n = 1003;  // not a multiple of any vector width: the tails run too
  std::vector<float> a(n), b(n), y(n), y_ref(n);
  double dot_ref = 0;
  for (int i = 0; i < n; ++i) {
    a[i] = static_cast<float>(i % 7 - 3) * 0.25f;
    b[i] = static_cast<float>(i % 5 - 2) * 0.5f;
    dot_ref += static_cast<double>(a[i]) * b[i];
    y[i] = static_cast<float>(i % 3) * 0.125f;
    y_ref[i] = y[i] + 2.0f * a[i];
  }
  KernelCheck c{name, true, ""};
  const float d = ops.dot(a.data(), b.data(), n);
  if (static_cast<double>(d) != dot_ref) {
    c.ok = false;
    c.detail += "dot gave " + std::to_string(d) + ", expected " + std::to_string(dot_ref) + "; ";
  }
  ops.axpy(2.0f, a.data(), y.data(), n);
  if (y != y_ref) {
    c.ok = false;
    c.detail += "axpy differs; ";
  }
  std::vector<uint16_t> h(n);
  std::vector<float> back(n);
  ops.f32_to_fp16(a.data(), h.data(), n);
  ops.fp16_to_f32(h.data(), back.data(), n);
  if (back != a) {
    c.ok = false;
    c.detail += "fp16 round trip differs; ";
  }
  if (c.ok) c.detail = "dot, axpy, fp16 round trip: exact";
  return c;
}

std::vector<std::string> cpu_flags() {
  std::vector<std::string> v;
  __builtin_cpu_init();
#define FENNEC_FLAG(f) \
  if (__builtin_cpu_supports(f)) v.push_back(f);
  FENNEC_FLAG("sse4.2")
  FENNEC_FLAG("avx")
  FENNEC_FLAG("avx2")
  FENNEC_FLAG("fma")
  FENNEC_FLAG("f16c")
  FENNEC_FLAG("avx512f")
  FENNEC_FLAG("avx512bw")
  FENNEC_FLAG("avx512vl")
  FENNEC_FLAG("avx512dq")
  FENNEC_FLAG("avx512vnni")
  FENNEC_FLAG("avx512bf16")
#undef FENNEC_FLAG
  return v;
}

std::string format_value(const ras::Sample& s) {
  char buf[64];
  const double v = *s.value;
  switch (s.kind) {
    case ras::Kind::kEnergyUj:
      std::snprintf(buf, sizeof buf, "%.3f J (counter)", v * 1e-6);
      break;
    case ras::Kind::kPowerW:
      std::snprintf(buf, sizeof buf, "%.1f W", v);
      break;
    case ras::Kind::kTempC:
      std::snprintf(buf, sizeof buf, "%.1f C", v);
      break;
    case ras::Kind::kFreqMhz:
      std::snprintf(buf, sizeof buf, "%.0f MHz", v);
      break;
    default:
      std::snprintf(buf, sizeof buf, "%.0f", v);
      break;
  }
  return buf;
}

double now_s() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

}  // namespace

void add_doctor_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "doctor",
      "check this machine: CPU features, kernels, memory bandwidth, telemetry, GPUs, health");
  static bool json = false, no_bw = false;
  static std::string root = "/", record;
  static int frames = 10;
  static double interval = 1.0;
  cmd->add_flag("--json", json, "print JSON");
  cmd->add_flag("--no-bandwidth", no_bw, "skip the memory bandwidth measurement");
  cmd->add_option("--sysfs-root", root, "read /sys under this directory (default /)");
  cmd->add_option("--record", record, "write a telemetry trace (JSON lines) to this file");
  cmd->add_option("--frames", frames, "readings to record (default 10)");
  cmd->add_option("--interval", interval, "seconds between recorded readings (default 1)");
  cmd->callback([] {
    nlohmann::json j;
    bool ok = true;

    // CPU.
    const auto best = kernels::detect_simd_level();
    const auto active = kernels::active_simd_level();
    const unsigned n_cpu = std::max(1u, std::thread::hardware_concurrency());
    j["cpu"] = {{"model", engine::cpu_model_name()},
                {"logical_cpus", n_cpu},
                {"flags", cpu_flags()},
                {"simd_best", kernels::simd_level_name(best)},
                {"simd_active", kernels::simd_level_name(active)},
                {"amx_int8", kernels::amx_usable()}};

    // Known-answer run of each vector-kernel path this CPU has.
    std::vector<KernelCheck> checks{check_vec_ops(kernels::vec_ops_scalar(), "scalar")};
    if (best >= kernels::SimdLevel::kAvx2)
      checks.push_back(check_vec_ops(kernels::vec_ops_avx2(), "avx2"));
    if (best >= kernels::SimdLevel::kAvx512)
      checks.push_back(check_vec_ops(kernels::vec_ops_avx512(), "avx512"));
    j["kernels"] = nlohmann::json::array();
    for (const auto& c : checks) {
      ok = ok && c.ok;
      j["kernels"].push_back({{"path", c.path}, {"ok", c.ok}, {"detail", c.detail}});
    }

    // Memory bandwidth, as fennec bench measures it.
    if (!no_bw) {
      ThreadPool pool(static_cast<int>(n_cpu));
      j["memory_read_bandwidth_gbs"] =
          engine::measure_read_bandwidth(pool, int64_t{256} << 20, 3) / 1e9;
    }

    // Telemetry.
    auto sources = ras::make_system_sources(root);
    j["telemetry"] = nlohmann::json::array();
    std::vector<ras::Sample> all;
    for (const auto& src : sources) {
      std::vector<ras::Sample> samples;
      try {
        samples = src->read();
      } catch (const std::exception& e) {  // a source should not throw; report it if one does
        ras::Sample s;
        s.device = src->name();
        s.name = src->name();
        s.why = std::string("reading failed: ") + e.what();
        samples.push_back(std::move(s));
      }
      for (auto& s : samples) {
        nlohmann::json o{{"source", src->name()},
                         {"device", s.device},
                         {"name", s.name},
                         {"kind", ras::kind_name(s.kind)}};
        if (s.value) o["value"] = *s.value;
        if (!s.text.empty()) o["text"] = s.text;
        if (!s.available() && s.text.empty()) o["unavailable"] = s.why;
        j["telemetry"].push_back(std::move(o));
        all.push_back(std::move(s));
      }
    }

    // Energy metering.
    std::string why;
    auto counter = metering::EnergyCounter::find(root, &why);
    const double watts = metering::default_device_watts();
    if (counter)
      j["energy"] = {{"source", "measured"}, {"counter", "CPU package RAPL / amd_energy"}};
    else
      j["energy"] = {{"source", "estimated"},
                     {"why", why},
                     {"default_device_watts", watts},
                     {"hint", "set --device-watts to this machine's power under load"}};

    // Health of the first reading (a single reading only shows states, not rates).
    ras::HealthMonitor mon;
    mon.observe(0, all);
    j["health"] = nlohmann::json::array();
    for (const auto& d : mon.devices())
      j["health"].push_back(
          {{"device", d.device}, {"state", ras::health_state_name(d.state)}, {"reason", d.reason}});
    j["ok"] = ok;

    if (!record.empty()) {
      std::ofstream out(record);
      if (!out) {
        std::fprintf(stderr, "fennec doctor: cannot write %s\n", record.c_str());
        return set_exit_code(1);
      }
      const double t0 = now_s();
      for (int i = 0; i < frames; ++i) {
        if (i > 0) std::this_thread::sleep_for(std::chrono::duration<double>(interval));
        ras::Frame f;
        f.t = now_s() - t0;
        f.samples = ras::read_all(sources);
        out << ras::frame_to_json(f) << "\n";
      }
      j["recorded"] = {{"file", record}, {"frames", frames}};
    }

    if (json) {
      std::printf("%s\n", j.dump(2).c_str());
      return set_exit_code(ok ? 0 : 1);
    }
    const auto& cpu = j["cpu"];
    std::printf("fennec doctor\n\nCPU\n  model           %s\n  logical CPUs    %u\n",
                cpu["model"].get<std::string>().c_str(), n_cpu);
    std::string flags;
    for (const auto& f : cpu["flags"]) flags += f.get<std::string>() + " ";
    std::printf(
        "  features        %s\n  SIMD path       %s (best this CPU has: %s; FENNEC_CPU lowers "
        "it)\n  AMX-INT8        %s\n",
        flags.c_str(), kernels::simd_level_name(active), kernels::simd_level_name(best),
        cpu["amx_int8"].get<bool>() ? "used for prefill (FENNEC_AMX=0 turns it off)" : "not used");
    std::printf("\nKernels (known-answer run of each path)\n");
    for (const auto& c : checks)
      std::printf("  %-8s %s  %s\n", c.path.c_str(), c.ok ? "ok  " : "FAIL", c.detail.c_str());
    if (j.contains("memory_read_bandwidth_gbs"))
      std::printf("\nMemory\n  read bandwidth  %.1f GB/s (%u threads)\n",
                  j["memory_read_bandwidth_gbs"].get<double>(), n_cpu);
    std::printf("\nTelemetry\n");
    std::string last;
    for (const auto& t : j["telemetry"]) {
      const std::string src = t["source"];
      if (src != last) std::printf("  %s\n", src.c_str());
      last = src;
      std::string what;
      if (t.contains("value")) {
        ras::Sample s;
        s.kind = *ras::kind_from_name(t["kind"].get<std::string>());
        s.value = t["value"].get<double>();
        what = format_value(s);
      } else if (t.contains("text")) {
        what = t["text"].get<std::string>();
      } else {
        what = "unavailable: " + t["unavailable"].get<std::string>();
      }
      std::printf("    %-14s %-40s %s\n", t["device"].get<std::string>().c_str(),
                  t["name"].get<std::string>().c_str(), what.c_str());
    }
    std::printf("\nEnergy metering\n");
    if (counter)
      std::printf("  measured: CPU package energy counters, read before and after each step\n");
    else
      std::printf(
          "  estimated: %s\n  --device-watts defaults to %.0f W here (5 W per logical CPU, "
          "at least 10 W): set it to this machine's power under load\n",
          why.c_str(), watts);
    std::printf("\nHealth (first reading)\n");
    if (j["health"].empty()) std::printf("  no device reports health telemetry\n");
    for (const auto& h : j["health"]) {
      const std::string reason = h["reason"];
      std::printf("  %-14s %s%s%s\n", h["device"].get<std::string>().c_str(),
                  h["state"].get<std::string>().c_str(), reason.empty() ? "" : ": ",
                  reason.c_str());
    }
    if (!record.empty()) std::printf("\nRecorded %d readings to %s\n", frames, record.c_str());
    std::printf("\n%s\n", ok ? "OK" : "PROBLEMS FOUND (see above)");
    set_exit_code(ok ? 0 : 1);
  });
}

}  // namespace fennec::cli
