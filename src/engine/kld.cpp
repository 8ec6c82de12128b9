#include "engine/kld.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "engine/perplexity.h"

namespace fennec::engine {

namespace {

// ln(sum_i exp(x_i)) in double; also the index of the first maximum.
double log_sum_exp(const float* x, int n, int& argmax) {
  float m = x[0];
  argmax = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > m) {
      m = x[i];
      argmax = i;
    }
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - m);
  return m + std::log(sum);
}

// llama-perplexity's estimate: the mean and the standard error of the mean (0 below 11 values).
ValueAndError mean_and_error(double sum, double sum2, int64_t n) {
  if (n < 1) return {};
  const double mean = sum / static_cast<double>(n);
  const double var = sum2 / static_cast<double>(n) - mean * mean;
  return {mean, var > 0 && n > 10 ? std::sqrt(var / static_cast<double>(n - 1)) : 0.0};
}

double covariance(double sum_a, double sum_b, double sum_ab, int64_t n) {
  if (n < 10) return 0;
  const double dn = static_cast<double>(n);
  return (sum_ab / dn - (sum_a / dn) * (sum_b / dn)) / (dn - 1);
}

// Linear interpolation between the two nearest ranks of sorted values (as llama-perplexity).
double percentile(const std::vector<float>& sorted, double fraction) {
  if (fraction <= 0) return sorted.front();
  if (fraction >= 1) return sorted.back();
  double p = fraction * static_cast<double>(sorted.size() - 1);
  const size_t i = static_cast<size_t>(p);
  p -= static_cast<double>(i);
  return (1 - p) * sorted[i] + p * sorted[std::min(i + 1, sorted.size() - 1)];
}

double median(const std::vector<float>& sorted) {
  const size_t n = sorted.size();
  return n % 2 ? sorted[n / 2] : 0.5 * (static_cast<double>(sorted[n / 2]) + sorted[n / 2 - 1]);
}

}  // namespace

TokenKld token_kld(const float* base, const float* model, int n_vocab, int32_t next_token) {
  int top_base = 0, top_model = 0;
  const double lse_base = log_sum_exp(base, n_vocab, top_base);
  const double lse_model = log_sum_exp(model, n_vocab, top_model);
  double kld = 0;
  for (int i = 0; i < n_vocab; ++i) {
    const double lp_base = static_cast<double>(base[i]) - lse_base;
    const double lp_model = static_cast<double>(model[i]) - lse_model;
    kld += std::exp(lp_base) * (lp_base - lp_model);
  }
  TokenKld t;
  t.kld = kld;
  t.nll_base = lse_base - base[next_token];
  t.nll_model = lse_model - model[next_token];
  t.same_top = top_base == top_model;
  return t;
}

void KldAccumulator::add(const TokenKld& t) {
  ++count_;
  n_same_top_ += t.same_top;
  sum_nll_ += t.nll_model;
  sum_nll2_ += t.nll_model * t.nll_model;
  sum_nll_base_ += t.nll_base;
  sum_nll_base2_ += t.nll_base * t.nll_base;
  sum_nll_cross_ += t.nll_model * t.nll_base;
  sum_kld_ += t.kld;
  sum_kld2_ += t.kld * t.kld;
  const double dp = std::exp(-t.nll_model) - std::exp(-t.nll_base);
  sum_dp_ += dp;
  sum_dp2_ += dp * dp;
  sum_dp4_ += dp * dp * dp * dp;
  kld_.push_back(static_cast<float>(t.kld));
  dp_.push_back(static_cast<float>(dp));
}

KldResult KldAccumulator::result() const {
  KldResult r;
  r.n_scored = count_;
  if (count_ == 0) return r;
  const ValueAndError ln_model = mean_and_error(sum_nll_, sum_nll2_, count_);
  const ValueAndError ln_base = mean_and_error(sum_nll_base_, sum_nll_base2_, count_);
  r.ppl_model = {std::exp(ln_model.value), std::exp(ln_model.value) * ln_model.error};
  r.ppl_base = {std::exp(ln_base.value), std::exp(ln_base.value) * ln_base.error};
  const double cov = covariance(sum_nll_, sum_nll_base_, sum_nll_cross_, count_);
  if (ln_model.error > 0 && ln_base.error > 0)
    r.ppl_correlation = cov / (ln_model.error * ln_base.error);
  const double ratio_err2 =
      ln_model.error * ln_model.error + ln_base.error * ln_base.error - 2 * cov;
  r.ln_ppl_ratio = {ln_model.value - ln_base.value, std::sqrt(std::max(0.0, ratio_err2))};
  r.ppl_ratio = {std::exp(r.ln_ppl_ratio.value),
                 std::exp(r.ln_ppl_ratio.value) * r.ln_ppl_ratio.error};
  const double ppl_cov = r.ppl_model.value * r.ppl_base.value * cov;
  const double diff_err2 =
      r.ppl_model.error * r.ppl_model.error + r.ppl_base.error * r.ppl_base.error - 2 * ppl_cov;
  r.ppl_diff = {r.ppl_model.value - r.ppl_base.value, std::sqrt(std::max(0.0, diff_err2))};

  r.kld_mean = mean_and_error(sum_kld_, sum_kld2_, count_);
  std::vector<float> k = kld_;
  std::sort(k.begin(), k.end());
  r.kld_max = k.back();
  r.kld_p99_9 = percentile(k, 0.999);
  r.kld_p99 = percentile(k, 0.99);
  r.kld_p95 = percentile(k, 0.95);
  r.kld_p90 = percentile(k, 0.90);
  r.kld_median = median(k);
  r.kld_p10 = percentile(k, 0.10);
  r.kld_p5 = percentile(k, 0.05);
  r.kld_p1 = percentile(k, 0.01);
  r.kld_p0_1 = percentile(k, 0.001);
  r.kld_min = k.front();

  const double same = static_cast<double>(n_same_top_) / static_cast<double>(count_);
  r.same_top = {same,
                count_ > 1 ? std::sqrt(same * (1 - same) / static_cast<double>(count_ - 1)) : 0.0};
  r.dp_mean = mean_and_error(sum_dp_, sum_dp2_, count_);
  const ValueAndError mse = mean_and_error(sum_dp2_, sum_dp4_, count_);
  const double rms = std::sqrt(mse.value);
  r.dp_rms = {rms, rms > 0 ? 0.5 / rms * mse.error : 0.0};
  std::vector<float> d = dp_;
  std::sort(d.begin(), d.end());
  r.dp_max = d.back();
  r.dp_median = median(d);
  r.dp_min = d.front();
  return r;
}

Status check_same_vocab(const LoadedModel& base, const LoadedModel& model) {
  const auto& a = base.tokenizer();
  const auto& b = model.tokenizer();
  const std::string names = base.gguf().path() + " and " + model.gguf().path();
  const int na = base.model().hparams().n_vocab, nb = model.model().hparams().n_vocab;
  if (na != nb || a.n_vocab() != b.n_vocab())
    return make_error("kld: " + names + " have different vocabularies (" + std::to_string(na) +
                      " and " + std::to_string(nb) +
                      " tokens): compare quantizations of the same model");
  for (int32_t id = 0; id < a.n_vocab(); ++id)
    if (a.token_text(id) != b.token_text(id))
      return make_error("kld: " + names + " have different vocabularies (token " +
                        std::to_string(id) + " is '" + a.token_text(id) + "' and '" +
                        b.token_text(id) + "'): compare quantizations of the same model");
  if (a.bos_id() != b.bos_id() || a.add_bos() != b.add_bos())
    return make_error("kld: " + names +
                      " add BOS differently: compare quantizations of the same model");
  return {};
}

Expected<KldResult> kl_divergence(LoadedModel& base, LoadedModel& model,
                                  const std::vector<int32_t>& tokens, int n_ctx, int max_chunks,
                                  const std::function<void(int, const KldResult&)>& on_chunk) {
  if (auto s = check_same_vocab(base, model); !s) return s.error();
  auto n_chunks = count_chunks(base, tokens.size(), n_ctx, max_chunks, "kld");
  if (!n_chunks) return n_chunks.error();
  if (auto n = count_chunks(model, tokens.size(), n_ctx, max_chunks, "kld"); !n) return n.error();
  const int n_vocab = base.model().hparams().n_vocab;
  const int first = n_ctx / 2;
  const int n_scored = n_ctx - 1 - first;  // positions first .. n_ctx-2
  std::vector<float> logits_base, logits_model;
  std::vector<TokenKld> rows(static_cast<size_t>(n_scored));
  KldAccumulator acc;
  for (int c = 0; c < *n_chunks; ++c) {
    if (auto s = eval_chunk(base, tokens, n_ctx, c, n_ctx - first, logits_base); !s)
      return s.error();
    if (auto s = eval_chunk(model, tokens, n_ctx, c, n_ctx - first, logits_model); !s)
      return s.error();
    // Rows are independent: spread them over the pool, then add them in order (deterministic).
    const int32_t* next = tokens.data() + static_cast<int64_t>(c) * n_ctx + first + 1;
    base.pool().parallel_for(n_scored, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        rows[static_cast<size_t>(i)] = token_kld(
            logits_base.data() + i * n_vocab, logits_model.data() + i * n_vocab, n_vocab, next[i]);
    });
    for (const TokenKld& t : rows) acc.add(t);
    if (on_chunk) {
      KldResult running = acc.result();
      running.n_chunks = c + 1;
      running.n_ctx = n_ctx;
      on_chunk(c, running);
    }
  }
  KldResult r = acc.result();
  r.n_chunks = *n_chunks;
  r.n_ctx = n_ctx;
  return r;
}

}  // namespace fennec::engine
