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
  n_machine_ = sources_.size();
  if (sources_.size() == 1) replay_ = dynamic_cast<ReplaySource*>(sources_[0].get());
  is_trace_ = replay_ != nullptr;
}

RasService::~RasService() { stop(); }

void RasService::start() {
  loop_.start(opts_.interval_s, [this] {
    try {
      poll();
      std::function<void()> after;
      {
        std::lock_guard<std::mutex> lk(mu_);
        after = after_poll_;
      }
      if (after) after();
    } catch (...) {  // telemetry never takes the server down
    }
  });
}

void RasService::stop() { loop_.stop(); }

void RasService::poll() {
  std::unique_lock<std::mutex> slk(sources_mu_);
  if (replay_ && replay_->done()) return;  // a finished trace leaves its last state
  auto samples = read_all(sources_);
  const double t = replay_ ? replay_->time() : now_s() - t0_;
  last_t_ = t;
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

Status RasService::use_trace(const std::string& path) {
  auto frames = load_trace(path);
  if (!frames) return frames.error();
  std::lock_guard<std::mutex> lk(sources_mu_);
  sources_.erase(sources_.begin(), sources_.begin() + static_cast<std::ptrdiff_t>(n_machine_));
  // One frame per reading at the service's own times (the other sources are live); the last
  // frame holds once the trace has ended.
  class HoldLast final : public TelemetrySource {
   public:
    explicit HoldLast(std::vector<Frame> f) : replay_(std::move(f), "trace") {}
    std::string name() const override { return "trace"; }
    std::vector<Sample> read() override {
      if (!replay_.done()) last_ = replay_.read();
      return last_;
    }

   private:
    ReplaySource replay_;
    std::vector<Sample> last_;
  };
  sources_.insert(sources_.begin(), std::make_unique<HoldLast>(std::move(*frames)));
  n_machine_ = 1;
  replay_ = nullptr;
  is_trace_ = true;
  return {};
}

void RasService::set_after_poll(std::function<void()> fn) {
  std::lock_guard<std::mutex> lk(mu_);
  after_poll_ = std::move(fn);
}

void RasService::recover(const std::string& device, const std::string& reason) {
  std::lock_guard<std::mutex> lk(sources_mu_);
  monitor_.recover(device, last_t_, reason);
}

void RasService::drain(const std::string& device, const std::string& reason) {
  std::lock_guard<std::mutex> lk(sources_mu_);
  monitor_.drain(device, last_t_, reason);
}

std::vector<Sample> RasService::last_samples() const {
  std::lock_guard<std::mutex> lk(mu_);
  return last_;
}

nlohmann::json RasService::to_json() const {
  using nlohmann::json;
  json j;
  j["source"] = is_trace_.load() ? "trace" : "machine";
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
