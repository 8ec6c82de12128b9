#include "ras/recovery.h"

#include <chrono>
#include <cstdio>
#include <vector>

#include "ras/service.h"

namespace fennec::ras {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
bool holds_engine(const std::string& device) { return device == "weights" || device == "engine"; }
}  // namespace

RecoveryController::RecoveryController(RasService& ras, RecoveryHooks hooks, double timeout_s)
    : ras_(ras), hooks_(std::move(hooks)), timeout_s_(timeout_s) {}

void RecoveryController::after_poll() {
  std::vector<DeviceHealth> bad;
  for (auto& d : ras_.devices())
    if (holds_engine(d.device) && d.state >= HealthState::kUnhealthy) bad.push_back(std::move(d));
  std::lock_guard<std::mutex> lk(mu_);
  if (failed_) return;
  if (!holding_) {
    if (bad.empty()) return;
    holding_ = true;
    since_ = now_s();
    if (hooks_.hold) hooks_.hold(true);
    std::fprintf(stderr,
                 "fennec: ras: %s is unhealthy (%s): holding every request until it recovers\n",
                 bad.front().device.c_str(), bad.front().reason.c_str());
  }
  bool only_weights = !bad.empty();
  for (const auto& d : bad)
    only_weights = only_weights && d.device == "weights" && d.state == HealthState::kUnhealthy;
  if (bad.empty() || (only_weights && hooks_.reverify_weights && hooks_.reverify_weights() == 0)) {
    if (!bad.empty())
      ras_.recover("weights", "every weight chunk matches its load-time checksum again");
    holding_ = false;
    ++recoveries_;
    if (hooks_.hold) hooks_.hold(false);
    std::fprintf(stderr, "fennec: ras: recovered: the held requests resume\n");
    return;
  }
  if (now_s() - since_ < timeout_s_) return;
  failed_ = true;
  std::string why;
  for (const auto& d : bad) why += (why.empty() ? "" : "; ") + d.device + ": " + d.reason;
  const std::string msg = "the device turned unhealthy (" + why + ") and did not recover within " +
                          std::to_string(static_cast<int>(timeout_s_)) +
                          " s: this request could not be completed; retry it on another replica";
  if (hooks_.fail_all) hooks_.fail_all(msg);
  for (const auto& d : bad)
    ras_.drain(d.device,
               "not recovered within " + std::to_string(static_cast<int>(timeout_s_)) + " s");
  std::fprintf(stderr, "fennec: ras: %s\n", msg.c_str());
}

bool RecoveryController::holding() const {
  std::lock_guard<std::mutex> lk(mu_);
  return holding_;
}

bool RecoveryController::failed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return failed_;
}

int64_t RecoveryController::recoveries() const {
  std::lock_guard<std::mutex> lk(mu_);
  return recoveries_;
}

}  // namespace fennec::ras
