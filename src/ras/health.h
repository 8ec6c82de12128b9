// Device health: healthy -> suspect -> unhealthy -> drained, each change with its reason.
//
// HealthMonitor is fed telemetry readings (live or replayed) and applies these rules, per device
// ("cpu", "mem:mc0", "gpu:0", ...). Cumulative counters count by their increase between two
// readings (wrap-aware); counts already present at the first reading are the baseline, because
// aggregate counters may hold errors from years ago that say nothing about today. When a device
// reports the same kind of counter several times (NVML: volatile and aggregate, DRAM and SRAM),
// the largest increase among them is taken, so one error is not counted twice.
//
// -> unhealthy (the device may already be returning wrong results; stop trusting it):
//   U1. any uncorrected error (EDAC ue_count, NVML uncorrected ECC, volatile or aggregate, DRAM
//       or SRAM; a step the engine's NaN guard could not fix): the data it held is lost, and
//       whatever read it computed with it.
//   U2. a failed row remap (NVML remap_failure): the memory has no spare rows left, so the next
//       bad row stays bad.
//   U3. a critical event (Xid-like: a GPU that fell off the bus; weights that changed in memory,
//       found by the scrubber; a canary prompt whose answer changed).
// -> suspect (failure is more likely soon; keep serving, alert, plan to drain). Field studies of
// DRAM (Schroeder et al., SIGMETRICS 2009; Sridharan et al., ASPLOS 2015) and of GPUs in
// production (Ostrouchov et al., SC 2020) find that corrected errors cluster on the devices that
// later fail and that a rising rate predicts uncorrected ones:
//   S1. corrected errors (memory ECC, or steps the NaN guard fixed by recomputing): at least
//       ce_suspect_count in the last ce_window_s seconds.
//   S2. corrected errors accelerating: at least ce_accel_min in the newer half of the window and
//       more than ce_accel_factor times as many as in the older half.
//   S3. a row remap pending (NVML): rows have failed and the fix needs a GPU reset; until then
//       the bad rows are only contained.
//   S4. repeated throttling: throttled (thermal_throttle counters rose, or NVML reports a thermal
//       or power slowdown) in at least throttle_suspect_events readings within
//       throttle_window_s: cooling or power delivery is failing, and results slow or worse.
//   S5. telemetry that goes missing: a value that was readable is unavailable (or no longer
//       reported) for missing_suspect_reads readings in a row; a dying device or driver often
//       stops answering first. A value that was never readable (this VM) is not suspect.
// A suspect device on which no rule fired for suspect_clear_s returns to healthy. Unhealthy is
// kept until the fault is repaired and verified (recover()) or the device is drained (drain());
// drained is final for this process.
//
// Thread-safe: one thread observes, any thread reads.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ras/telemetry.h"

namespace fennec::ras {

enum class HealthState { kHealthy = 0, kSuspect = 1, kUnhealthy = 2, kDrained = 3 };
const char* health_state_name(HealthState s);  // "healthy", "suspect", "unhealthy", "drained"

struct HealthRules {
  double ce_window_s = 600;
  double ce_suspect_count = 10;
  double ce_accel_min = 4;
  double ce_accel_factor = 2;
  double throttle_window_s = 300;
  int throttle_suspect_events = 3;
  int missing_suspect_reads = 3;
  double suspect_clear_s = 3600;
};

struct HealthEvent {
  double t = 0;
  std::string device;
  HealthState from = HealthState::kHealthy, to = HealthState::kHealthy;
  std::string reason;
};

struct DeviceHealth {
  std::string device;
  HealthState state = HealthState::kHealthy;
  std::string reason;  // why it is in this state ("" while healthy from the start)
  double since = 0;    // time of the last change (or of the first reading)
};

class HealthMonitor {
 public:
  explicit HealthMonitor(HealthRules rules = {}) : rules_(rules) {}

  // One reading of every source, taken at time t (seconds, never decreasing). Returns the state
  // changes it caused, also kept in events().
  std::vector<HealthEvent> observe(double t, const std::vector<Sample>& samples);
  // The device takes no more work (an operator's or the server's decision).
  std::optional<HealthEvent> drain(const std::string& device, double t, const std::string& reason);
  // An unhealthy device whose fault was repaired and verified (weights that match their load-time
  // checksums again) returns to healthy; nothing happens in any other state.
  std::optional<HealthEvent> recover(const std::string& device, double t,
                                     const std::string& reason);

  std::vector<DeviceHealth> devices() const;
  std::optional<DeviceHealth> device(const std::string& name) const;
  std::vector<HealthEvent> events() const;  // the most recent changes, oldest first (at most 256)
  HealthState worst() const;                // of all devices; healthy when there are none
  const HealthRules& rules() const { return rules_; }

 private:
  struct Series {
    Kind kind = Kind::kInfo;
    std::optional<double> last;
    bool ever = false;  // had a value once
    int missing = 0;    // readings in a row without a value since
    bool seen = false;  // reported in the current reading
  };
  struct Device {
    DeviceHealth h;
    std::deque<std::pair<double, double>> ce;  // (time, corrected errors at that reading)
    std::deque<double> throttled;              // times of readings that showed throttling
    double last_fire = 0;                      // last time a suspect rule fired
  };

  void change(Device& d, double t, HealthState to, const std::string& reason,
              std::vector<HealthEvent>& out);

  HealthRules rules_;
  mutable std::mutex mu_;
  std::map<std::string, Series> series_;  // device + '\n' + name
  std::map<std::string, Device> devices_;
  std::deque<HealthEvent> events_;
};

}  // namespace fennec::ras
