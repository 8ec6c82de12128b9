// The server's RAS loop: a background thread that reads every telemetry source each interval,
// feeds the HealthMonitor, and keeps the last reading for /v1/ras and /metrics. With a trace
// (--ras-trace) it replays the trace instead of the machine, one frame per interval, with the
// trace's own times, so tests can drive the server through suspect and unhealthy.
//
// Never stops the server: a source that fails is an unavailable sample, and the thread catches
// anything a source throws.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/expected.h"
#include "core/periodic_thread.h"
#include "ras/health.h"
#include "ras/replay.h"
#include "ras/telemetry.h"

namespace fennec::ras {

struct RasOptions {
  double interval_s = 10;  // between readings
  std::string sysfs_root = "/";
  std::string trace;  // replay this trace instead of reading the machine
  HealthRules rules;
};

class RasService {
 public:
  static Expected<std::unique_ptr<RasService>> create(const RasOptions& opts);
  // Any sources (tests); a single ReplaySource is read with its own times.
  RasService(std::vector<std::unique_ptr<TelemetrySource>> sources, RasOptions opts);
  ~RasService();  // stop()
  RasService(const RasService&) = delete;
  RasService& operator=(const RasService&) = delete;

  void start();  // first reading now, then one per interval
  void stop();
  void poll();  // one reading (the thread's work; tests call it directly)
  // Another source from the next reading on (e.g. the weight scrubber once the model is loaded).
  void add_source(std::unique_ptr<TelemetrySource> source);
  // Replays this trace instead of the machine's sources from the next reading on (the sources
  // added with add_source stay): fault injection (docs/ras.md).
  Status use_trace(const std::string& path);
  // Called on the RAS thread after every reading (the server's hold-and-recover logic).
  void set_after_poll(std::function<void()> fn);
  // HealthMonitor::recover / drain at the service's current time.
  void recover(const std::string& device, const std::string& reason);
  void drain(const std::string& device, const std::string& reason);

  HealthState worst() const { return monitor_.worst(); }
  std::vector<DeviceHealth> devices() const { return monitor_.devices(); }
  std::vector<Sample> last_samples() const;
  // {"devices": [{device, state, reason, since}], "events": [...], "telemetry": [...],
  //  "readings": n, "source": "machine"|"trace"}
  nlohmann::json to_json() const;

 private:
  RasOptions opts_;
  std::mutex sources_mu_;  // poll() against add_source()
  std::vector<std::unique_ptr<TelemetrySource>> sources_;
  ReplaySource* replay_ = nullptr;     // when sources_ is one trace
  std::atomic<bool> is_trace_{false};  // a trace, not the machine, supplies the telemetry
  double last_t_ = 0;                  // time of the last reading (under sources_mu_)
  size_t n_machine_ = 0;               // sources_[0, n_machine_): the machine's (or the trace's)
  std::function<void()> after_poll_;   // under mu_
  HealthMonitor monitor_;
  double t0_ = 0;
  mutable std::mutex mu_;
  std::vector<Sample> last_;
  int64_t readings_ = 0;
  PeriodicThread loop_;  // poll() every opts_.interval_s; last, so it stops before the rest goes
};

}  // namespace fennec::ras
