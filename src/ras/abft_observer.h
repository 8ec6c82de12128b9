// The ABFT check (abft.h) as the engine's MatmulObserver: every weight product of every forward
// pass is checked against its matrix's column checksums, and the scheduler asks after each pass
// whether any check failed (SchedulerOptions::step_failed), so a failed step is recomputed like
// a NaN step and fails its sequences cleanly if the recompute fails too (docs/ras.md).
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

#include "model/model.h"
#include "ras/abft.h"

namespace fennec::ras {

class AbftObserver final : public model::MatmulObserver {
 public:
  explicit AbftObserver(AbftChecker& checker) : checker_(checker) {}

  void on_matmul(const kernels::WeightView&, std::string_view, const float*, int64_t) override {}
  void after_matmul(const kernels::WeightView& w, std::string_view name, const float* x,
                    int64_t n_tokens, const float* y, int64_t ldy) override;

  // Whether a check failed since the last call (the forward pass just run is untrusted); resets.
  bool take_failed() { return failed_rows_.exchange(0) > 0; }
  AbftChecker& checker() { return checker_; }

 private:
  AbftChecker& checker_;
  std::atomic<int64_t> failed_rows_{0};  // since the last take_failed()
};

}  // namespace fennec::ras
