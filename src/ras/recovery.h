// What the server does when a device it computes with turns unhealthy: hold, then recover or
// fail, so that every request is answered exactly once (docs/ras.md, "Drain and requeue").
//
// The devices that hold the engine are fennec's own data: "weights" (the scrubber found the
// mapped weights changed) and "engine" (a NaN step that could not be fixed, a canary whose answer
// changed, ABFT). Other unhealthy devices (memory controllers, GPUs by their telemetry) only take
// readiness off, as before: a load balancer routes away and work in flight goes on.
//
// On hold, the scheduler stops computing: running sequences go back to the queue keeping the
// tokens they already sent, and new requests are refused (the API answers 503). Then, after
// every telemetry reading:
//  - recovered: only "weights" is unhealthy and every chunk matches its load-time checksum again
//    (the fault was transient, or an operator restored the file): the device returns to healthy
//    and the held requests resume where they were (each recomputes its prompt plus the tokens it
//    already sent, so no token is sent twice and none is lost);
//  - not recovered within timeout_s: every held request ends with a clear error, the unhealthy
//    devices are drained, and the server refuses work until it is restarted (the mapped file is
//    the only copy of the weights fennec has, so it cannot re-load a good one by itself).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

namespace fennec::ras {

class RasService;

struct RecoveryHooks {
  std::function<void(bool)> hold;                    // Scheduler::hold
  std::function<void(const std::string&)> fail_all;  // Scheduler::fail_all
  std::function<size_t()> reverify_weights;          // chunks still changed (null: no scrubber)
};

class RecoveryController {
 public:
  RecoveryController(RasService& ras, RecoveryHooks hooks, double timeout_s = 60);
  // After each telemetry reading, on the RAS thread (RasService::set_after_poll).
  void after_poll();

  bool holding() const;
  bool failed() const;  // recovery timed out: held for good
  int64_t recoveries() const;

 private:
  RasService& ras_;
  RecoveryHooks hooks_;
  double timeout_s_;
  mutable std::mutex mu_;
  bool holding_ = false, failed_ = false;
  double since_ = 0;  // steady clock seconds when the hold began
  int64_t recoveries_ = 0;
};

}  // namespace fennec::ras
