// Canary: a fixed greedy prompt run through the engine now and then. fennec's outputs do not
// depend on the batch, the chunking or the prefix cache (see engine/scheduler.h), so the answer
// must be, token for token, the one the first run gave. A different answer means the machine
// computed something wrong without any error to show for it (silent data corruption: a flaky
// core, a flipped bit in a buffer the scrubber does not cover): a critical event (health rule U3,
// unhealthy). A run that fails is unavailable telemetry (rule S5 if it keeps failing).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/expected.h"
#include "ras/telemetry.h"

namespace fennec::engine {
class Scheduler;
}

namespace fennec::ras {

class Canary final : public TelemetrySource {
 public:
  using RunFn = std::function<Expected<std::vector<int32_t>>()>;
  // Runs at the first read() (the reference), then at reads at least every_s seconds apart
  // (clock: seconds, monotonic; empty: the steady clock).
  Canary(RunFn run, double every_s, std::function<double()> clock = {});

  std::string name() const override { return "canary"; }
  // Device "engine": "canary_mismatches" (kCriticalEvents, cumulative; text: the last mismatch).
  std::vector<Sample> read() override;

  int64_t runs() const { return runs_; }
  int64_t mismatches() const { return mismatches_; }
  const std::vector<int32_t>& reference() const { return reference_; }

 private:
  RunFn run_;
  double every_s_;
  std::function<double()> clock_;
  double last_run_ = 0;
  int64_t runs_ = 0, mismatches_ = 0;
  bool have_reference_ = false;
  std::vector<int32_t> reference_;
  std::string last_error_, last_mismatch_;
};

// A RunFn that submits `prompt` to the scheduler (greedy, n_tokens, EOS ignored) and waits for
// the answer's tokens, up to timeout_s.
Canary::RunFn scheduler_canary(engine::Scheduler& scheduler, std::vector<int32_t> prompt,
                               int n_tokens, double timeout_s = 60);

}  // namespace fennec::ras
