#include "ras/telemetry.h"

#include <array>
#include <exception>
#include <utility>

namespace fennec::ras {

namespace {
constexpr std::array<std::pair<Kind, const char*>, 13> kKindNames{{
    {Kind::kEnergyUj, "energy_uj"},
    {Kind::kPowerW, "power_w"},
    {Kind::kTempC, "temp_c"},
    {Kind::kFreqMhz, "freq_mhz"},
    {Kind::kThrottleCount, "throttle_count"},
    {Kind::kThrottleActive, "throttle_active"},
    {Kind::kCeCount, "ce_count"},
    {Kind::kUeCount, "ue_count"},
    {Kind::kRemappedRows, "remapped_rows"},
    {Kind::kPendingRemaps, "pending_remaps"},
    {Kind::kRemapFailure, "remap_failure"},
    {Kind::kCriticalEvents, "critical_events"},
    {Kind::kInfo, "info"},
}};
}  // namespace

const char* kind_name(Kind k) {
  for (const auto& [kind, name] : kKindNames)
    if (kind == k) return name;
  return "?";
}

std::optional<Kind> kind_from_name(const std::string& name) {
  for (const auto& [kind, n] : kKindNames)
    if (name == n) return kind;
  return std::nullopt;
}

std::optional<double> counter_delta(double prev, double cur, double wrap) {
  if (cur >= prev) return cur - prev;
  // The counter counts 0..wrap and starts again at 0: what was left before the wrap plus what
  // came after it. A drop without a known range, or a "previous" value beyond the range, is a
  // reset, and no delta can be trusted.
  if (wrap > 0 && prev <= wrap) return (wrap - prev) + cur;
  return std::nullopt;
}

std::vector<Sample> read_all(const std::vector<std::unique_ptr<TelemetrySource>>& sources) {
  std::vector<Sample> out;
  for (const auto& src : sources) {
    try {
      auto s = src->read();
      for (auto& x : s) out.push_back(std::move(x));
    } catch (const std::exception& e) {
      Sample s;
      s.device = src->name();
      s.name = src->name();
      s.why = std::string("reading failed: ") + e.what();
      out.push_back(std::move(s));
    } catch (...) {
      Sample s;
      s.device = src->name();
      s.name = src->name();
      s.why = "reading failed";
      out.push_back(std::move(s));
    }
  }
  return out;
}

namespace {
class CallbackSource final : public TelemetrySource {
 public:
  CallbackSource(std::string name, std::function<std::vector<Sample>()> fn)
      : name_(std::move(name)), fn_(std::move(fn)) {}
  std::string name() const override { return name_; }
  std::vector<Sample> read() override { return fn_(); }

 private:
  std::string name_;
  std::function<std::vector<Sample>()> fn_;
};
}  // namespace

std::unique_ptr<TelemetrySource> make_callback_source(std::string name,
                                                      std::function<std::vector<Sample>()> read) {
  return std::make_unique<CallbackSource>(std::move(name), std::move(read));
}

std::vector<std::unique_ptr<TelemetrySource>> make_system_sources(const std::string& root) {
  std::vector<std::unique_ptr<TelemetrySource>> v;
  v.push_back(make_powercap_source(root));
  v.push_back(make_hwmon_source(root));
  v.push_back(make_thermal_source(root));
  v.push_back(make_edac_source(root));
  v.push_back(make_cpufreq_source(root));
  v.push_back(make_nvml_source());
  return v;
}

}  // namespace fennec::ras
