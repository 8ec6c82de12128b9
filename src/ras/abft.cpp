#include "ras/abft.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "core/float_convert.h"
#include "kernels/cpu/quant_dot.h"
#include "quant/blocks.h"

namespace fennec::ras {

Expected<AbftMatrix> abft_prepare(const kernels::WeightView& w) {
  if (w.rows <= 0 || w.cols <= 0 || !w.data) return make_error("abft: empty matrix");
  AbftMatrix m;
  m.rows = w.rows;
  m.cols = w.cols;
  m.act = kernels::activation_format(w.type);
  m.colsum.assign(static_cast<size_t>(w.cols), 0.0);
  m.abs_colsum.assign(static_cast<size_t>(w.cols), 0.0);
  // A few rows at a time: get_rows dequantizes every type the products accept.
  constexpr int64_t kRows = 16;
  std::vector<float> buf(static_cast<size_t>(kRows * w.cols));
  std::vector<int32_t> ids;
  for (int64_t r0 = 0; r0 < w.rows; r0 += kRows) {
    const int64_t n = std::min(kRows, w.rows - r0);
    ids.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(r0 + i);
    kernels::get_rows(w, ids, buf.data());
    for (int64_t i = 0; i < n; ++i) {
      const float* row = buf.data() + i * w.cols;
      for (int64_t k = 0; k < w.cols; ++k) {
        m.colsum[static_cast<size_t>(k)] += row[k];
        m.abs_colsum[static_cast<size_t>(k)] += std::fabs(row[k]);
      }
    }
  }
  if (w.type == formats::GgmlType::Q4_1 || w.type == formats::GgmlType::Q5_1) {
    // Both blocks start with fp16 d, fp16 m; 32 weights each.
    const int64_t nb = w.cols / 32, bb = w.row_bytes / std::max<int64_t>(1, nb);
    m.block_m.assign(static_cast<size_t>(nb), 0.0);
    for (int64_t r = 0; r < w.rows; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        uint16_t h;
        std::memcpy(&h, w.data + r * w.row_bytes + b * bb + 2, 2);
        m.block_m[static_cast<size_t>(b)] += fp16_to_f32(h);
      }
    for (auto& v : m.block_m) v *= w.out_scale;
  }
  const double s = w.out_scale;
  for (int64_t k = 0; k < w.cols; ++k) {
    m.colsum[static_cast<size_t>(k)] *= s;
    m.abs_colsum[static_cast<size_t>(k)] *= std::fabs(s);
  }
  return m;
}

AbftResidual abft_check_row(const AbftMatrix& m, const float* x, const float* y, double rel_tol,
                            std::vector<float>& scratch) {
  scratch.resize(static_cast<size_t>(m.cols));
  kernels::round_activations(m.act, x, scratch.data(), m.cols);
  // Four independent sums (the compiler keeps them in one vector register), then the tail.
  const double* c = m.colsum.data();
  const double* a = m.abs_colsum.data();
  const float* xs = scratch.data();
  double e4[4] = {0, 0, 0, 0}, m4[4] = {0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 4 <= m.cols; k += 4)
    for (int j = 0; j < 4; ++j) {
      const double xk = xs[k + j];
      e4[j] += c[k + j] * xk;
      m4[j] += a[k + j] * std::fabs(xk);
    }
  double expect = (e4[0] + e4[1]) + (e4[2] + e4[3]), mag = (m4[0] + m4[1]) + (m4[2] + m4[3]);
  for (; k < m.cols; ++k) {
    expect += c[k] * xs[k];
    mag += a[k] * std::fabs(xs[k]);
  }
  if (!m.block_m.empty()) {
    thread_local std::vector<quant::BlockQ8_1> q;
    q.resize(m.block_m.size());
    kernels::quantize_act(kernels::ActFormat::kQ8_1, x, q.data(), m.cols);
    for (size_t b = 0; b < q.size(); ++b) {
      double rounded = 0;
      for (int k = 0; k < 32; ++k) rounded += scratch[b * 32 + static_cast<size_t>(k)];
      expect += m.block_m[b] * (static_cast<double>(fp16_to_f32(q[b].s)) - rounded);
    }
  }
  double s4[4] = {0, 0, 0, 0};
  int64_t r = 0;
  for (; r + 4 <= m.rows; r += 4)
    for (int j = 0; j < 4; ++j) s4[j] += y[r + j];
  double sum = (s4[0] + s4[1]) + (s4[2] + s4[3]);
  for (; r < m.rows; ++r) sum += y[r];
  AbftResidual out;
  out.residual = std::fabs(sum - expect);
  if (!std::isfinite(sum)) out.residual = std::numeric_limits<double>::infinity();
  out.tolerance = rel_tol * mag;
  return out;
}

Status AbftChecker::prepare(std::string_view name, const kernels::WeightView& w) {
  auto m = abft_prepare(w);
  if (!m) return make_error(std::string(name) + ": " + m.error().message);
  mats_[std::string(name)] = std::move(*m);
  return {};
}

int64_t AbftChecker::check(std::string_view name, const float* x, int64_t n_tokens, const float* y,
                           int64_t ldy) {
  auto it = mats_.find(std::string(name));
  if (it == mats_.end()) return 0;
  const AbftMatrix& m = it->second;
  if (ldy == 0) ldy = m.rows;
  int64_t bad = 0;
  double worst = 0;
  std::string why;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const auto r = abft_check_row(m, x + t * m.cols, y + t * ldy, rel_tol_, scratch_);
    if (!r.ok()) {
      ++bad;
      char buf[256];
      std::snprintf(buf, sizeof buf, "%.*s token %lld: row sum off by %.3g (tolerance %.3g)",
                    static_cast<int>(name.size()), name.data(), static_cast<long long>(t),
                    r.residual, r.tolerance);
      why = buf;
    } else if (r.tolerance > 0) {
      worst = std::max(worst, r.residual / r.tolerance);
    }
  }
  checks_ += n_tokens;
  failures_ += bad;
  std::lock_guard<std::mutex> lk(mu_);
  max_ratio_ = std::max(max_ratio_, worst);
  if (bad) last_ = std::move(why);
  return bad;
}

std::vector<Sample> AbftChecker::read() {
  Sample f;
  f.device = "engine";
  f.name = "abft_failures";
  f.kind = Kind::kCeCount;
  f.value = static_cast<double>(failures_.load());
  Sample c;
  c.device = "engine";
  c.name = "abft_checks";
  c.kind = Kind::kInfo;
  c.text = std::to_string(checks_.load());
  std::lock_guard<std::mutex> lk(mu_);
  f.text = last_;
  return {f, c};
}

double AbftChecker::max_ratio() const {
  std::lock_guard<std::mutex> lk(mu_);
  return max_ratio_;
}

size_t AbftChecker::prepared_bytes() const {
  size_t n = 0;
  for (const auto& [k, m] : mats_) n += (m.colsum.size() + m.abs_colsum.size()) * sizeof(double);
  return n;
}

}  // namespace fennec::ras
