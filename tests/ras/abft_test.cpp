// ABFT row-sum checks on kernels::matmul: no false alarm over 10^5 clean token products of every
// weight type, every injected single-element error above twice the tolerance caught, and the
// checker's counters as telemetry.
#include "ras/abft.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "core/thread_pool.h"
#include "formats/ggml_type.h"
#include "kernels/cpu/ops.h"
#include "quant/quantize.h"

namespace fennec::ras {
namespace {

using formats::GgmlType;

struct Matrix {
  std::vector<uint8_t> bytes;
  kernels::WeightView w;
};

Matrix make_matrix(GgmlType t, int64_t rows, int64_t cols, uint32_t seed) {
  const auto tr = *formats::type_traits(static_cast<uint32_t>(t));
  const int64_t rb = static_cast<int64_t>(formats::row_bytes(tr, static_cast<uint64_t>(cols)));
  Matrix m;
  m.bytes.resize(static_cast<size_t>(rb * rows));
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = nd(rng);
    row[static_cast<size_t>(rng() % cols)] =
        0.3f;  // an outlier weight per row, as real models have
    EXPECT_TRUE(quant::quantize_row_ref(t, row.data(), m.bytes.data() + r * rb, cols));
  }
  m.w = kernels::WeightView{t, m.bytes.data(), rows, cols, rb};
  return m;
}

// Activations like a transformer's: mostly small, a few large channels, scale varying by token.
void make_activations(std::mt19937& rng, std::vector<float>& x, int64_t n_tokens, int64_t cols) {
  x.resize(static_cast<size_t>(n_tokens * cols));
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> scale(0.05f, 20.0f);
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float s = scale(rng);
    for (int64_t k = 0; k < cols; ++k) x[static_cast<size_t>(t * cols + k)] = s * nd(rng);
    for (int i = 0; i < 3; ++i)
      x[static_cast<size_t>(t * cols + static_cast<int64_t>(rng() % cols))] *= 30.0f;
  }
}

constexpr GgmlType kTypes[] = {GgmlType::F32,   GgmlType::F16,  GgmlType::Q4_0, GgmlType::Q5_0,
                               GgmlType::Q8_0,  GgmlType::Q4_1, GgmlType::Q4_K, GgmlType::Q6_K,
                               GgmlType::MXFP4, GgmlType::NVFP4};

TEST(AbftTest, NoFalseAlarmOverManyCleanProducts) {
  ThreadPool pool(2);
  const int64_t rows = 96, cols = 256, n_tokens = 32;
  const int calls_per_type = 320;  // 10 types x 320 x 32 = 102400 token products
  int64_t products = 0, alarms = 0;
  double worst = 0;
  std::mt19937 rng(1);
  std::vector<float> x, y(static_cast<size_t>(rows * n_tokens)), scratch;
  for (GgmlType t : kTypes) {
    const Matrix m = make_matrix(t, rows, cols, static_cast<uint32_t>(t) + 11);
    const auto am = abft_prepare(m.w);
    ASSERT_TRUE(am) << am.error().message;
    double worst_t = 0;
    for (int c = 0; c < calls_per_type; ++c) {
      make_activations(rng, x, n_tokens, cols);
      kernels::matmul(m.w, x.data(), n_tokens, y.data(), pool);
      for (int64_t tk = 0; tk < n_tokens; ++tk) {
        const auto r = abft_check_row(*am, x.data() + tk * cols, y.data() + tk * rows,
                                      kAbftDefaultRelTol, scratch);
        ++products;
        if (!r.ok()) ++alarms;
        worst_t = std::max(worst_t, r.residual / r.tolerance);
      }
    }
    std::printf("abft clean %-6s max residual/tolerance %.4f\n", formats::type_name(t).c_str(),
                worst_t);
    worst = std::max(worst, worst_t);
  }
  std::printf("abft clean: %lld token products, %lld false alarms, max residual/tolerance %.4f\n",
              static_cast<long long>(products), static_cast<long long>(alarms), worst);
  EXPECT_GE(products, 100000);
  EXPECT_EQ(alarms, 0);
}

TEST(AbftTest, CatchesEverySingleElementErrorAboveTwiceTheTolerance) {
  ThreadPool pool(2);
  const int64_t rows = 96, cols = 256, n_tokens = 8;
  std::mt19937 rng(2);
  std::vector<float> x, y(static_cast<size_t>(rows * n_tokens)), scratch;
  int64_t injected = 0, above = 0, caught_above = 0, caught_flips = 0, flips_above = 0;
  for (GgmlType t : kTypes) {
    const Matrix m = make_matrix(t, rows, cols, static_cast<uint32_t>(t) + 5);
    const auto am = abft_prepare(m.w);
    ASSERT_TRUE(am);
    for (int c = 0; c < 100; ++c) {
      make_activations(rng, x, n_tokens, cols);
      kernels::matmul(m.w, x.data(), n_tokens, y.data(), pool);
      const int64_t tk = static_cast<int64_t>(rng() % n_tokens),
                    r = static_cast<int64_t>(rng() % rows);
      float* yp = y.data() + tk * rows;
      const float saved = yp[r];
      const auto clean = abft_check_row(*am, x.data() + tk * cols, yp, kAbftDefaultRelTol, scratch);
      ASSERT_TRUE(clean.ok());
      // An additive error of 2..1000 tolerances.
      const double mult = 2.0 * std::pow(500.0, std::uniform_real_distribution<double>(0, 1)(rng));
      yp[r] = static_cast<float>(saved + (rng() % 2 ? 1 : -1) * mult * clean.tolerance);
      const auto bad = abft_check_row(*am, x.data() + tk * cols, yp, kAbftDefaultRelTol, scratch);
      ++injected;
      if (std::fabs(static_cast<double>(yp[r]) - saved) > 2 * clean.tolerance) {
        ++above;
        if (!bad.ok()) ++caught_above;
      }
      // A single bit flip in the float (any of the 32 bits).
      uint32_t b;
      std::memcpy(&b, &saved, 4);
      b ^= 1u << (rng() % 32);
      std::memcpy(&yp[r], &b, 4);
      const auto flip = abft_check_row(*am, x.data() + tk * cols, yp, kAbftDefaultRelTol, scratch);
      const double delta = std::fabs(static_cast<double>(yp[r]) - saved);
      if (!std::isfinite(delta) || delta > 2 * clean.tolerance) {
        ++flips_above;
        if (!flip.ok()) ++caught_flips;
      }
      yp[r] = saved;
    }
  }
  std::printf(
      "abft injected: %lld additive errors, %lld above 2x tolerance, %lld caught; %lld bit flips "
      "above "
      "2x tolerance, %lld caught\n",
      static_cast<long long>(injected), static_cast<long long>(above),
      static_cast<long long>(caught_above), static_cast<long long>(flips_above),
      static_cast<long long>(caught_flips));
  EXPECT_EQ(caught_above, above);
  EXPECT_EQ(caught_flips, flips_above);
  EXPECT_GT(flips_above, 0);
}

TEST(AbftTest, CheckerCountsFailuresAsEngineCorrectedErrors) {
  ThreadPool pool(1);
  const Matrix m = make_matrix(GgmlType::Q8_0, 64, 128, 3);
  AbftChecker checker;
  ASSERT_TRUE(checker.prepare("blk.0.ffn_up.weight", m.w));
  std::mt19937 rng(3);
  std::vector<float> x, y(64 * 4);
  make_activations(rng, x, 4, 128);
  kernels::matmul(m.w, x.data(), 4, y.data(), pool);
  EXPECT_EQ(checker.check("blk.0.ffn_up.weight", x.data(), 4, y.data()), 0);
  EXPECT_EQ(checker.check("not.prepared", x.data(), 4, y.data()), 0);
  y[64 * 2 + 5] += 1000.0f;
  EXPECT_EQ(checker.check("blk.0.ffn_up.weight", x.data(), 4, y.data()), 1);
  y[64 * 3 + 1] = std::nanf("");
  EXPECT_EQ(checker.check("blk.0.ffn_up.weight", x.data(), 4, y.data()), 2);
  EXPECT_EQ(checker.checks(), 12);
  EXPECT_EQ(checker.failures(), 3);
  const auto s = checker.read();
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].device, "engine");
  EXPECT_EQ(s[0].kind, Kind::kCeCount);
  EXPECT_EQ(*s[0].value, 3);
  EXPECT_NE(s[0].text.find("blk.0.ffn_up.weight token 3"), std::string::npos);
}

// The check's cost against the product's, at a decode-sized product (one token) of a real
// layer's shape. Printed, not asserted (no timing assertions in tests).
TEST(AbftTest, OverheadAgainstTheProduct) {
  ThreadPool pool(2);
  const int64_t rows = 2048, cols = 2048;
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K}) {
    const Matrix m = make_matrix(t, rows, cols, 9);
    AbftChecker checker;
    ASSERT_TRUE(checker.prepare("w", m.w));
    std::mt19937 rng(4);
    std::vector<float> x, y(static_cast<size_t>(rows * 4));
    for (int64_t nt : {1, 4}) {
      make_activations(rng, x, nt, cols);
      const int reps = 200;
      using clk = std::chrono::steady_clock;
      auto t0 = clk::now();
      for (int i = 0; i < reps; ++i) kernels::matmul(m.w, x.data(), nt, y.data(), pool);
      const double mm = std::chrono::duration<double>(clk::now() - t0).count();
      t0 = clk::now();
      for (int i = 0; i < reps; ++i) checker.check("w", x.data(), nt, y.data());
      const double ck = std::chrono::duration<double>(clk::now() - t0).count();
      std::printf(
          "abft overhead %-5s %lldx%lld tokens=%lld: matmul %.1f us, check %.1f us (%.2f%%)\n",
          formats::type_name(t).c_str(), static_cast<long long>(rows), static_cast<long long>(cols),
          static_cast<long long>(nt), mm / reps * 1e6, ck / reps * 1e6, 100 * ck / mm);
    }
    EXPECT_EQ(checker.failures(), 0);
  }
}

}  // namespace
}  // namespace fennec::ras
