#include "ras/abft_observer.h"

namespace fennec::ras {

void AbftObserver::after_matmul(const kernels::WeightView&, std::string_view name, const float* x,
                                int64_t n_tokens, const float* y, int64_t ldy) {
  if (const int64_t bad = checker_.check(name, x, n_tokens, y, ldy); bad > 0) failed_rows_ += bad;
}

}  // namespace fennec::ras
