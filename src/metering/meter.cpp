#include "metering/meter.h"

#include <algorithm>
#include <regex>
#include <thread>

namespace fennec::metering {

const char* energy_source_name(EnergySource s) {
  return s == EnergySource::kMeasured ? "measured" : "estimated";
}

double default_device_watts() {
  const unsigned n = std::max(1u, std::thread::hardware_concurrency());
  return std::max(10.0, 5.0 * n);
}

void Usage::add(const Usage& u) {
  if (u.empty) return;
  joules += u.joules;
  busy_s += u.busy_s;
  cost_usd += u.cost_usd;
  if (empty)
    source = u.source;
  else if (u.source == EnergySource::kEstimated)
    source = EnergySource::kEstimated;
  empty = false;
}

bool EnergyCounter::is_package(const ras::Sample& s) {
  if (s.kind != ras::Kind::kEnergyUj) return false;
  // powercap: "intel-rapl:0/package-0" (the mmio zone duplicates the package zone: skipped);
  // amd_energy (hwmon): "amd_energy/Esocket0".
  static const std::regex powercap(R"(^intel-rapl:\d+/package-\d+$)");
  static const std::regex amd(R"(^amd_energy/Esocket\d+$)");
  return std::regex_match(s.name, powercap) || std::regex_match(s.name, amd);
}

std::optional<double> EnergyCounter::advance() {
  std::vector<ras::Sample> samples;
  try {
    samples = source_->read();
  } catch (...) {
    why_ = "the energy source failed";
    last_.clear();
    return std::nullopt;
  }
  std::vector<std::pair<std::string, double>> now;
  std::vector<double> wraps;
  std::string other;  // why an energy sample that is not a package was unavailable
  for (const auto& s : samples) {
    if (!s.available() && other.empty()) other = s.why;
    if (!is_package(s)) continue;
    if (!s.available()) {
      why_ = s.name + ": " + s.why;
      last_.clear();
      return std::nullopt;
    }
    now.emplace_back(s.device + "/" + s.name, *s.value);
    wraps.push_back(s.wrap);
  }
  if (now.empty()) {
    why_ = "no CPU package energy counter" + (other.empty() ? "" : " (" + other + ")");
    last_.clear();
    return std::nullopt;
  }
  const bool same = now.size() == last_.size() &&
                    std::equal(now.begin(), now.end(), last_.begin(),
                               [](const auto& a, const auto& b) { return a.first == b.first; });
  std::optional<double> joules;
  if (!same) {
    why_ = "first reading";
  } else {
    double uj = 0;
    bool ok = true;
    for (size_t i = 0; i < now.size(); ++i) {
      auto d = ras::counter_delta(last_[i].second, now[i].second, wraps[i]);
      if (!d) {
        ok = false;
        why_ = now[i].first + " went back without a known wrap (counter reset)";
        break;
      }
      uj += *d;
    }
    if (ok) {
      joules = uj * 1e-6;
      why_.clear();
    }
  }
  last_ = std::move(now);
  return joules;
}

std::unique_ptr<EnergyCounter> EnergyCounter::find(const std::string& root, std::string* why) {
  std::string tried;
  auto try_source = [&](std::unique_ptr<ras::TelemetrySource> src,
                        const char* label) -> std::unique_ptr<EnergyCounter> {
    std::vector<ras::Sample> packages;
    for (auto& s : src->read())
      if (is_package(s)) packages.push_back(std::move(s));
    auto c = std::make_unique<EnergyCounter>(std::move(src));
    (void)c->advance();
    if (c->why() == "first reading") {
      // Found and readable: from now on read just those files, twice per engine step.
      c = std::make_unique<EnergyCounter>(
          ras::make_file_source("package energy", std::move(packages)));
      (void)c->advance();
      if (c->why() == "first reading") return c;
    }
    if (!tried.empty()) tried += "; ";
    tried += std::string(label) + ": " + c->why();
    return nullptr;
  };
  if (auto c = try_source(ras::make_powercap_source(root), "powercap (RAPL)")) return c;
  if (auto c = try_source(ras::make_hwmon_source(root), "hwmon (amd_energy)")) return c;
  if (why) *why = tried;
  return nullptr;
}

StepMeter::StepMeter(MeterOptions opts, std::unique_ptr<EnergyCounter> counter)
    : opts_(opts), counter_(std::move(counter)) {
  if (opts_.device_watts <= 0) opts_.device_watts = default_device_watts();
}

double StepMeter::cost_of(double joules, double busy_s) const {
  return joules / 3.6e6 * opts_.price_kwh + busy_s / 3600.0 * opts_.price_hour;
}

void StepMeter::begin_step() {
  if (counter_) (void)counter_->advance();
}

std::vector<Usage> StepMeter::end_step(double busy_s, std::span<const Share> shares) {
  busy_s = std::max(0.0, busy_s);
  std::optional<double> measured;
  if (counter_) measured = counter_->advance();
  const EnergySource src = measured ? EnergySource::kMeasured : EnergySource::kEstimated;
  const double joules = measured ? *measured : opts_.device_watts * busy_s;
  int64_t total_tokens = 0;
  for (const auto& s : shares) total_tokens += std::max<int64_t>(0, s.tokens);
  std::vector<Usage> out;
  out.reserve(shares.size());
  for (const auto& s : shares) {
    const double f = total_tokens > 0
                         ? static_cast<double>(std::max<int64_t>(0, s.tokens)) / total_tokens
                         : 1.0 / static_cast<double>(shares.size());
    Usage u;
    u.joules = joules * f;
    u.busy_s = busy_s * f;
    u.cost_usd = cost_of(u.joules, u.busy_s);
    u.source = src;
    u.empty = false;
    out.push_back(u);
  }
  std::lock_guard<std::mutex> lk(mu_);
  (measured ? totals_.measured_joules : totals_.estimated_joules) += joules;
  totals_.cost_usd += cost_of(joules, busy_s);
  totals_.busy_s += busy_s;
  return out;
}

StepMeter::Totals StepMeter::totals() const {
  std::lock_guard<std::mutex> lk(mu_);
  return totals_;
}

}  // namespace fennec::metering
