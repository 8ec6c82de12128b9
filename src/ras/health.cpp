#include "ras/health.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace fennec::ras {

const char* health_state_name(HealthState s) {
  switch (s) {
    case HealthState::kHealthy:
      return "healthy";
    case HealthState::kSuspect:
      return "suspect";
    case HealthState::kUnhealthy:
      return "unhealthy";
    case HealthState::kDrained:
      return "drained";
  }
  return "?";
}

namespace {

bool is_cumulative(Kind k) {
  return k == Kind::kCeCount || k == Kind::kUeCount || k == Kind::kCriticalEvents ||
         k == Kind::kThrottleCount || k == Kind::kRemappedRows;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// What one reading showed for one device.
struct Tick {
  double ce = 0, ue = 0, critical = 0;
  std::string ue_from, critical_from;
  bool throttled = false, pending_remap = false, remap_failed = false;
  std::string missing;  // a reason when S5 fires
  bool missing_active = false;
};

}  // namespace

void HealthMonitor::change(Device& d, double t, HealthState to, const std::string& reason,
                           std::vector<HealthEvent>& out) {
  HealthEvent e{t, d.h.device, d.h.state, to, reason};
  d.h.state = to;
  d.h.reason = reason;
  d.h.since = t;
  out.push_back(e);
  events_.push_back(std::move(e));
  while (events_.size() > 256) events_.pop_front();
}

std::vector<HealthEvent> HealthMonitor::observe(double t, const std::vector<Sample>& samples) {
  std::lock_guard<std::mutex> lk(mu_);
  std::map<std::string, Tick> ticks;
  for (auto& [key, s] : series_) s.seen = false;

  auto on_missing = [&](const std::string& device, const std::string& name, Series& s,
                        const std::string& why) {
    if (!s.ever) return;
    if (++s.missing < rules_.missing_suspect_reads) return;
    Tick& tk = ticks[device];
    tk.missing_active = true;  // still missing: keeps a suspect device suspect
    if (s.missing == rules_.missing_suspect_reads)
      tk.missing = "telemetry missing: " + name + " unavailable for " + std::to_string(s.missing) +
                   " readings (" + why + ")";
  };

  for (const Sample& smp : samples) {
    if (smp.kind == Kind::kInfo) continue;
    Series& s = series_[smp.device + "\n" + smp.name];
    s.seen = true;
    s.kind = smp.kind;
    if (!devices_.count(smp.device) && smp.available()) {
      Device d;
      d.h.device = smp.device;
      d.h.since = t;
      devices_.emplace(smp.device, std::move(d));
    }
    if (!smp.available()) {
      on_missing(smp.device, smp.name, s, smp.why);
      continue;
    }
    const double v = *smp.value;
    Tick& tk = ticks[smp.device];
    if (is_cumulative(smp.kind) && s.last) {
      const double d = counter_delta(*s.last, v, smp.wrap).value_or(0);  // reset: no events
      switch (smp.kind) {
        case Kind::kCeCount:
          tk.ce = std::max(tk.ce, d);
          break;
        case Kind::kUeCount:
          if (d > tk.ue) tk.ue = d, tk.ue_from = smp.name;
          break;
        case Kind::kCriticalEvents:
          if (d > tk.critical)
            tk.critical = d,
            tk.critical_from = smp.text.empty() ? smp.name : smp.name + ": " + smp.text;
          break;
        case Kind::kThrottleCount:
          if (d > 0) tk.throttled = true;
          break;
        default:
          break;
      }
    }
    if (smp.kind == Kind::kThrottleActive && v > 0) tk.throttled = true;
    if (smp.kind == Kind::kPendingRemaps && v > 0) tk.pending_remap = true;
    if (smp.kind == Kind::kRemapFailure && v > 0) tk.remap_failed = true;
    s.last = v;
    s.ever = true;
    s.missing = 0;
  }
  // Series reported before but absent now have gone missing too.
  for (auto& [key, s] : series_) {
    if (s.seen) continue;
    const auto nl = key.find('\n');
    on_missing(key.substr(0, nl), key.substr(nl + 1), s, "no longer reported");
  }

  std::vector<HealthEvent> out;
  for (auto& [name, d] : devices_) {
    if (d.h.state == HealthState::kDrained) continue;
    auto it = ticks.find(name);
    const Tick tk = it != ticks.end() ? it->second : Tick{};
    // Windows of recent corrected errors and throttled readings.
    if (tk.ce > 0) d.ce.emplace_back(t, tk.ce);
    while (!d.ce.empty() && d.ce.front().first <= t - rules_.ce_window_s) d.ce.pop_front();
    if (tk.throttled) d.throttled.push_back(t);
    while (!d.throttled.empty() && d.throttled.front() <= t - rules_.throttle_window_s)
      d.throttled.pop_front();

    std::string bad;  // unhealthy reason
    if (tk.ue > 0)
      bad = num(tk.ue) + " uncorrected error(s) (" + tk.ue_from + ")";
    else if (tk.remap_failed)
      bad = "a row remap failed: the memory has no spare rows left";
    else if (tk.critical > 0)
      bad = num(tk.critical) + " critical event(s) (" + tk.critical_from + ")";
    if (!bad.empty() && d.h.state < HealthState::kUnhealthy) {
      change(d, t, HealthState::kUnhealthy, bad, out);
      continue;
    }
    if (d.h.state == HealthState::kUnhealthy) continue;

    std::string warn;  // suspect reason
    double in_window = 0, newer = 0, older = 0;
    const double half = t - rules_.ce_window_s / 2;
    for (const auto& [when, n] : d.ce) {
      in_window += n;
      (when > half ? newer : older) += n;
    }
    if (tk.ce > 0 && in_window >= rules_.ce_suspect_count)
      warn = "corrected errors: " + num(in_window) + " in the last " +
             num(rules_.ce_window_s) + " s (threshold " + num(rules_.ce_suspect_count) + ")";
    else if (tk.ce > 0 && newer >= rules_.ce_accel_min && newer > rules_.ce_accel_factor * older)
      warn = "corrected errors accelerating: " + num(newer) + " in the last " +
             num(rules_.ce_window_s / 2) + " s against " + num(older) + " in the " +
             num(rules_.ce_window_s / 2) + " s before";
    else if (tk.pending_remap)
      warn = "a row remap is pending: reset the GPU to apply it";
    else if (tk.throttled && static_cast<int>(d.throttled.size()) >= rules_.throttle_suspect_events)
      warn = "throttled in " + std::to_string(d.throttled.size()) + " readings in the last " +
             num(rules_.throttle_window_s) + " s (thermal or power limit)";
    else if (!tk.missing.empty())
      warn = tk.missing;
    if (!warn.empty() || tk.missing_active) {
      d.last_fire = t;
      if (!warn.empty() && d.h.state == HealthState::kHealthy)
        change(d, t, HealthState::kSuspect, warn, out);
    } else if (d.h.state == HealthState::kSuspect && t - d.last_fire >= rules_.suspect_clear_s) {
      change(d, t, HealthState::kHealthy, "no warning for " + num(t - d.last_fire) + " s", out);
    }
  }
  return out;
}

std::optional<HealthEvent> HealthMonitor::recover(const std::string& device, double t,
                                                  const std::string& reason) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = devices_.find(device);
  if (it == devices_.end() || it->second.h.state != HealthState::kUnhealthy) return std::nullopt;
  std::vector<HealthEvent> out;
  change(it->second, t, HealthState::kHealthy, reason, out);
  it->second.ce.clear();
  it->second.throttled.clear();
  return out.front();
}

std::optional<HealthEvent> HealthMonitor::drain(const std::string& device, double t,
                                                const std::string& reason) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = devices_.find(device);
  if (it == devices_.end()) {
    Device d;
    d.h.device = device;
    it = devices_.emplace(device, std::move(d)).first;
  }
  if (it->second.h.state == HealthState::kDrained) return std::nullopt;
  std::vector<HealthEvent> out;
  change(it->second, t, HealthState::kDrained, reason, out);
  return out.front();
}

std::vector<DeviceHealth> HealthMonitor::devices() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<DeviceHealth> v;
  for (const auto& [name, d] : devices_) v.push_back(d.h);
  return v;
}

std::optional<DeviceHealth> HealthMonitor::device(const std::string& name) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = devices_.find(name);
  if (it == devices_.end()) return std::nullopt;
  return it->second.h;
}

std::vector<HealthEvent> HealthMonitor::events() const {
  std::lock_guard<std::mutex> lk(mu_);
  return {events_.begin(), events_.end()};
}

HealthState HealthMonitor::worst() const {
  std::lock_guard<std::mutex> lk(mu_);
  HealthState w = HealthState::kHealthy;
  for (const auto& [name, d] : devices_) w = std::max(w, d.h.state);
  return w;
}

}  // namespace fennec::ras
