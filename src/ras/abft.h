// Algorithm-based fault tolerance (Huang and Abraham, 1984) for the weight products y = W x.
// Summing the rows of y gives  sum_r y[r] = sum_k c[k] x[k]  with c[k] = sum_r W[r][k], the
// column sums of W. fennec computes c once per matrix from the dequantized weights (in double)
// and, after a product, compares the two sides for every token row: a flipped bit in the product
// (a bad multiplier, a corrupted accumulator, a stale cache line) breaks the equality.
//
// What the two sides may differ by on a correct machine:
//  - the activations: the integer kernels multiply W by x rounded to their 8-bit (or fp16/bf16)
//    format (kernels/cpu/activation_quant.h). The check rounds x the same way, so c . x^ is what
//    the kernel computed up to float rounding; the 8-bit rounding costs nothing in the bound.
//  - float rounding of the kernel's sums: each y[r] is a float sum of block products, each wrong
//    by at most ~2^-24 of its magnitude, so |sum_r y[r] - c . x^| <= g * M with
//    M = sum_r sum_k |W[r][k] x^[k]| = sum_k a[k] |x^[k]| (a[k] = sum_r |W[r][k]|, also
//    precomputed) and g a small multiple of 2^-24 (the worst case grows with the number of
//    blocks; in practice the errors cancel like a random walk). `rel_tol` is g: its default was
//    set from the measured clean distribution with a wide margin (docs/ras.md).
// An error e added to one element of y is therefore caught whenever |e| > 2 * rel_tol * M (the
// clean residual is below rel_tol * M); smaller ones may pass, and are also too small to change
// a token in practice.
//
// Cost per product and token: rounding x again and two dot products of length cols, plus one
// sum over the rows of y: about 3/rows of the product itself.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/expected.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/ops.h"
#include "ras/telemetry.h"

namespace fennec::ras {

// The precomputed checksums of one weight matrix.
struct AbftMatrix {
  int64_t rows = 0, cols = 0;
  kernels::ActFormat act = kernels::ActFormat::kF32;
  std::vector<double> colsum;      // c[k] = out_scale * sum_r W[r][k]
  std::vector<double> abs_colsum;  // a[k] = |out_scale| * sum_r |W[r][k]|
  // Q4_1/Q5_1 (Q8_1 activations): sum over the rows of each 32-column block's offset m. Their
  // kernels multiply m by the activation block's sum as Q8_1 stores it (fp16), not by the sum
  // of the rounded values: the check applies the same difference.
  std::vector<double> block_m;
};

// Column sums of the dequantized matrix; an error if fennec cannot dequantize its type.
Expected<AbftMatrix> abft_prepare(const kernels::WeightView& w);

struct AbftResidual {
  double residual = 0;                               // |sum_r y[r] - c . x^|
  double tolerance = 0;                              // rel_tol * M
  bool ok() const { return residual <= tolerance; }  // false also for NaN
};

inline constexpr double kAbftDefaultRelTol = 64.0 / 16777216.0;  // 64 * 2^-24

// Checks token row t of a product: x is [n_tokens][cols], y is [n_tokens][ldy].
// scratch: cols floats the call may use (rounded activations).
AbftResidual abft_check_row(const AbftMatrix& m, const float* x, const float* y, double rel_tol,
                            std::vector<float>& scratch);

// Checks every product of a model: prepare() the matrices at load, then check() after each
// product. Counts checks and failures; read() reports the failures as corrected errors of device
// "engine" (health rules S1/S2: a burst makes the device suspect), so the server's RAS loop sees
// them like the NaN guard's recomputed steps. Thread-safe for check() from the forward thread
// against read() from the RAS thread.
class AbftChecker final : public TelemetrySource {
 public:
  explicit AbftChecker(double rel_tol = kAbftDefaultRelTol) : rel_tol_(rel_tol) {}

  // Precomputes the checksums of w under `name`; call for every matrix before the first check.
  Status prepare(std::string_view name, const kernels::WeightView& w);
  // Checks all n_tokens rows of y = W x for the matrix prepared as `name`; returns the number of
  // rows that failed (0 for a matrix never prepared: not checked).
  int64_t check(std::string_view name, const float* x, int64_t n_tokens, const float* y,
                int64_t ldy = 0);

  std::string name() const override { return "abft"; }
  // Device "engine": "abft_failures" (kCeCount, cumulative; text: the last failure), "abft_checks"
  // (kInfo, text: the count).
  std::vector<Sample> read() override;

  int64_t checks() const { return checks_.load(); }
  int64_t failures() const { return failures_.load(); }
  double max_ratio() const;  // largest residual / tolerance seen on a passing row (calibration)
  size_t prepared_bytes() const;

 private:
  double rel_tol_;
  std::unordered_map<std::string, AbftMatrix> mats_;
  std::atomic<int64_t> checks_{0}, failures_{0};
  mutable std::mutex mu_;  // last_, max_ratio_
  std::string last_;
  double max_ratio_ = 0;
  std::vector<float> scratch_;
};

}  // namespace fennec::ras
