// Energy and cost per engine step, split across the sequences of the step by their tokens.
//
// Energy is "measured" when a hardware counter gives it: the CPU packages' RAPL energy (powercap
// zones "package-N", or amd_energy's sockets) read before and after the step, wrap-aware. It is
// the whole package's energy while the step ran, other processes' share included: on a machine
// that serves only fennec that is the truth that matters, on a shared one it is an upper bound.
// Where no counter can be read (this VM, a kernel that keeps energy_uj root-only), energy is
// "estimated": the declared --device-watts times the step's busy time. Every output says which;
// a request with any estimated step is "estimated".
//
// Cost = energy (kWh) x --price-kwh + the step's busy time (h) x --price-hour, the machine's
// price per hour: busy time is what a request uses, so idle time is not charged to anyone.
// Defaults: --price-kwh 0.15 USD (about the average US commercial tariff), --price-hour 0 (only
// the owner knows it), --device-watts 5 W per logical CPU, at least 10 W (a server part draws
// 2-4 W per hardware thread at full load, a desktop part 6-10 W).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ras/telemetry.h"

namespace fennec::metering {

enum class EnergySource { kMeasured, kEstimated };
const char* energy_source_name(EnergySource s);  // "measured", "estimated"

struct MeterOptions {
  double device_watts = 0;  // <= 0: default_device_watts()
  double price_kwh = 0.15;  // USD per kWh
  double price_hour = 0;    // USD per hour of the machine
};
double default_device_watts();

// What a sequence (or a step, or the process) used.
struct Usage {
  double joules = 0;
  double busy_s = 0;
  double cost_usd = 0;
  EnergySource source = EnergySource::kMeasured;
  bool empty = true;  // nothing added yet

  void add(const Usage& u);  // sums; estimated wins over measured
};

// The CPU packages' cumulative energy from a telemetry source (the powercap or hwmon source,
// or a replay).
class EnergyCounter {
 public:
  explicit EnergyCounter(std::unique_ptr<ras::TelemetrySource> source)
      : source_(std::move(source)) {}
  // Joules since the previous call; nullopt on the first call, when a package counter cannot be
  // read, when the set of packages changed, or when a counter went back without a known wrap.
  std::optional<double> advance();
  // Why the last advance() gave nothing ("" when it gave a value).
  const std::string& why() const { return why_; }
  // A whole-package energy counter: powercap "…/package-N", amd_energy "…/Esocket<N>".
  static bool is_package(const ras::Sample& s);
  // The system's counter if one is readable now (powercap first, then amd_energy), else null
  // and *why says what was tried.
  static std::unique_ptr<EnergyCounter> find(const std::string& root = "/",
                                             std::string* why = nullptr);

 private:
  std::unique_ptr<ras::TelemetrySource> source_;
  std::vector<std::pair<std::string, double>> last_;  // package -> microjoules
  std::string why_;
};

// Meters the engine's steps. Used from the engine thread; totals() from any thread.
class StepMeter {
 public:
  // counter: null means estimate always.
  StepMeter(MeterOptions opts, std::unique_ptr<EnergyCounter> counter);

  struct Share {
    uint64_t seq = 0;
    int64_t tokens = 0;  // tokens of this sequence computed in the step
  };
  // Call right before the step's compute: reads the counter, so idle energy is not charged.
  void begin_step();
  // Call right after it: the step kept the device busy for busy_s. Returns one Usage per share,
  // in order, splitting energy and cost by tokens.
  std::vector<Usage> end_step(double busy_s, std::span<const Share> shares);

  struct Totals {
    double measured_joules = 0, estimated_joules = 0, cost_usd = 0, busy_s = 0;
  };
  Totals totals() const;
  EnergySource source() const {
    return counter_ ? EnergySource::kMeasured : EnergySource::kEstimated;
  }
  const MeterOptions& options() const { return opts_; }
  double cost_of(double joules, double busy_s) const;

 private:
  MeterOptions opts_;
  std::unique_ptr<EnergyCounter> counter_;
  mutable std::mutex mu_;
  Totals totals_;
};

}  // namespace fennec::metering
