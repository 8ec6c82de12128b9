#include "ras/service.h"

#include <chrono>
#include <exception>

namespace fennec::ras {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Expected<std::unique_ptr<RasService>> RasService::create(const RasOptions& opts) {
  if (!(opts.interval_s > 0)) return make_error("--ras-interval must be positive");
  std::vector<std::unique_ptr<TelemetrySource>> sources;
  if (!opts.trace.empty()) {
    auto frames = load_trace(opts.trace);
    if (!frames) return frames.error();
    sources.push_back(std::make_unique<ReplaySource>(std::move(*frames), "trace"));
  } else {
    sources = make_system_sources(opts.sysfs_root);
  }
  return std::make_unique<RasService>(std::move(sources), opts);
}

RasService::RasService(std::vector<std::unique_ptr<TelemetrySource>> sources, RasOptions opts)
    : opts_(std::move(opts)), sources_(std::move(sources)), monitor_(opts_.rules), t0_(now_s()) {
  if (sources_.size() == 1) replay_ = dynamic_cast<ReplaySource*>(sources_[0].get());
}

RasService::~RasService() { stop(); }

void RasService::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stopping_) {
      lk.unlock();
      try {
        poll();
      } catch (...) {  // telemetry never takes the server down
      }
      lk.lock();
      cv_.wait_for(lk, std::chrono::duration<double>(opts_.interval_s), [&] { return stopping_; });
    }
  });
}

void RasService::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RasService::poll() {
  std::unique_lock<std::mutex> slk(sources_mu_);
  if (replay_ && replay_->done()) return;  // a finished trace leaves its last state
  auto samples = read_all(sources_);
  const double t = replay_ ? replay_->time() : now_s() - t0_;
  slk.unlock();
  monitor_.observe(t, samples);
  std::lock_guard<std::mutex> lk(mu_);
  last_ = std::move(samples);
  ++readings_;
}

void RasService::add_source(std::unique_ptr<TelemetrySource> source) {
  std::lock_guard<std::mutex> lk(sources_mu_);
  sources_.push_back(std::move(source));
}

std::vector<Sample> RasService::last_samples() const {
  std::lock_guard<std::mutex> lk(mu_);
  return last_;
}

nlohmann::json RasService::to_json() const {
  using nlohmann::json;
  json j;
  j["source"] = replay_ ? "trace" : "machine";
  j["state"] = health_state_name(worst());
  j["devices"] = json::array();
  for (const auto& d : monitor_.devices())
    j["devices"].push_back({{"device", d.device},
                            {"state", health_state_name(d.state)},
                            {"reason", d.reason},
                            {"since", d.since}});
  j["events"] = json::array();
  for (const auto& e : monitor_.events())
    j["events"].push_back({{"t", e.t},
                           {"device", e.device},
                           {"from", health_state_name(e.from)},
                           {"to", health_state_name(e.to)},
                           {"reason", e.reason}});
  j["telemetry"] = json::array();
  std::lock_guard<std::mutex> lk(mu_);
  j["readings"] = readings_;
  for (const auto& s : last_) {
    json o{{"device", s.device}, {"name", s.name}, {"kind", kind_name(s.kind)}};
    if (s.value) o["value"] = *s.value;
    if (!s.text.empty()) o["text"] = s.text;
    if (!s.available() && s.text.empty()) o["unavailable"] = s.why;
    j["telemetry"].push_back(std::move(o));
  }
  return j;
}

}  // namespace fennec::ras
