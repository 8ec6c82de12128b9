// Telemetry: what the machine says about its own health and energy, one reading at a time.
//
// Every source (RAPL/powercap, hwmon, thermal zones, EDAC, cpufreq, NVML, or a replayed trace)
// sits behind TelemetrySource. read() never throws and never stops the caller: anything that
// cannot be read (no permission, no device, no driver) comes back as a Sample without a value
// and with the reason, never as a zero. Counters are raw and cumulative; the consumers (health
// rules, energy metering) take deltas, with wrap-around for counters that wrap (RAPL wraps at
// max_energy_range_uj).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fennec::ras {

enum class Kind {
  kEnergyUj,        // cumulative energy, microjoules (wraps at Sample::wrap when > 0)
  kPowerW,          // instantaneous power, watts
  kTempC,           // temperature, degrees Celsius
  kFreqMhz,         // current clock, MHz
  kThrottleCount,   // cumulative throttle events (thermal_throttle counters)
  kThrottleActive,  // 1 while clocks are held down by a thermal/power reason (NVML), else 0
  kCeCount,         // cumulative corrected memory errors
  kUeCount,         // cumulative uncorrected memory errors
  kRemappedRows,    // rows remapped so far (NVML, Ampere+)
  kPendingRemaps,   // 1 when a row remap waits for a GPU reset
  kRemapFailure,    // 1 when a row remap failed (the memory is out of spare rows)
  kCriticalEvents,  // cumulative Xid-like critical events
  kInfo,            // not a number: the value is absent and `text` says something (driver, name)
};
const char* kind_name(Kind k);  // "energy_uj", "temp_c", ...
std::optional<Kind> kind_from_name(const std::string& name);

struct Sample {
  std::string device;  // "cpu", "cpu:package-0", "mem:mc0", "gpu:0"
  std::string name;    // what exactly was read: "intel-rapl:0/energy_uj", "dram_ce_volatile"
  Kind kind = Kind::kInfo;
  std::optional<double> value;  // absent: unavailable
  std::string why;              // when unavailable: why, in words a user can act on
  std::string text;             // kInfo only
  double wrap = 0;              // counters that wrap: the value at which they go back to 0
  std::string path;             // the file it came from (sysfs sources), for make_file_source
  double scale = 1;             // value = the file's number x scale (sysfs sources)

  bool available() const { return value.has_value(); }
};

// Joules (or any unit) a wrapping counter advanced from `prev` to `cur`; a counter that went
// back without a known wrap (reset, reload of the driver) gives nullopt rather than a guess.
std::optional<double> counter_delta(double prev, double cur, double wrap);

class TelemetrySource {
 public:
  virtual ~TelemetrySource() = default;
  virtual std::string name() const = 0;  // "powercap", "hwmon", "thermal", "edac", "nvml", ...
  // One reading of everything the source knows. A source with nothing to read returns one
  // unavailable sample saying why (so a report can list it).
  virtual std::vector<Sample> read() = 0;
};

// The Linux sources; `root` is prepended to every path ("/" on a real machine, a fake sysfs
// tree in tests).
std::unique_ptr<TelemetrySource> make_powercap_source(std::string root = "/");
std::unique_ptr<TelemetrySource> make_hwmon_source(std::string root = "/");
std::unique_ptr<TelemetrySource> make_thermal_source(std::string root = "/");
std::unique_ptr<TelemetrySource> make_edac_source(std::string root = "/");
std::unique_ptr<TelemetrySource> make_cpufreq_source(std::string root = "/");
// NVIDIA GPUs through NVML, loaded at run time (see nvml.h).
std::unique_ptr<TelemetrySource> make_nvml_source();

// The same samples again, re-read from their files only (no directory scan): the cheap way to
// read a few counters often, e.g. energy before and after every engine step. Samples without a
// path are dropped.
std::unique_ptr<TelemetrySource> make_file_source(std::string name, std::vector<Sample> samples);

// A source whose samples come from a function (e.g. the engine's own fault counters).
std::unique_ptr<TelemetrySource> make_callback_source(std::string name,
                                                      std::function<std::vector<Sample>()> read);

// Every source this build knows, reading the machine under `root`.
std::vector<std::unique_ptr<TelemetrySource>> make_system_sources(const std::string& root = "/");

// Reads every source; a source that throws (it should not) becomes one unavailable sample.
std::vector<Sample> read_all(const std::vector<std::unique_ptr<TelemetrySource>>& sources);

}  // namespace fennec::ras
