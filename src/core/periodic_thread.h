// A background thread that runs a function now and then again a fixed time after each run ends,
// until stopped: the RAS telemetry loop and the weight scrubber's loop.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace fennec {

class PeriodicThread {
 public:
  PeriodicThread() = default;
  ~PeriodicThread();  // stop()
  PeriodicThread(const PeriodicThread&) = delete;
  PeriodicThread& operator=(const PeriodicThread&) = delete;

  // Starts the thread: fn() at once, then interval_s seconds after each call returns. Does
  // nothing while a thread started earlier still runs; a stopped one can be started again.
  void start(double interval_s, std::function<void()> fn);
  // Wakes the wait and joins: returns once a call in progress has returned, not after a whole
  // interval.
  void stop();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace fennec
