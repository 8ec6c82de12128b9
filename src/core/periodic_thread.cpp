#include "core/periodic_thread.h"

#include <chrono>
#include <utility>

namespace fennec {

PeriodicThread::~PeriodicThread() { stop(); }

void PeriodicThread::start(double interval_s, std::function<void()> fn) {
  if (thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = false;
  }
  thread_ = std::thread([this, interval_s, fn = std::move(fn)] {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
      lk.unlock();
      fn();
      lk.lock();
      cv_.wait_for(lk, std::chrono::duration<double>(interval_s), [this] { return stop_; });
    }
  });
}

void PeriodicThread::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace fennec
