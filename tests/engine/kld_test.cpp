// KL divergence statistics: one token's KL against a hand computation, llama-perplexity's
// percentile and error formulas on known values, and on a real model: KLD(model, model) is
// exactly 0 with the same top token everywhere, and different vocabularies are refused.
// (fennec kld against llama-perplexity --kl-divergence on the same files: tests/py and the PR.)
#include "engine/kld.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "test_util.h"

namespace fennec::engine {
namespace {

TEST(TokenKld, MatchesHandComputation) {
  const std::vector<float> base = {1.0f, 2.0f, 0.5f, -1.0f};
  const std::vector<float> model = {1.5f, 1.0f, 0.5f, 0.0f};
  auto log_probs = [](const std::vector<float>& x) {
    double z = 0;
    for (float v : x) z += std::exp(static_cast<double>(v));
    std::vector<double> lp;
    for (float v : x) lp.push_back(v - std::log(z));
    return lp;
  };
  const auto lb = log_probs(base), lm = log_probs(model);
  double want = 0;
  for (size_t i = 0; i < lb.size(); ++i) want += std::exp(lb[i]) * (lb[i] - lm[i]);
  const TokenKld t = token_kld(base.data(), model.data(), 4, 2);
  EXPECT_NEAR(t.kld, want, 1e-12);
  EXPECT_GT(t.kld, 0);
  EXPECT_NEAR(t.nll_base, -lb[2], 1e-12);
  EXPECT_NEAR(t.nll_model, -lm[2], 1e-12);
  EXPECT_FALSE(t.same_top);  // argmax 1 vs 0
}

TEST(TokenKld, IdenticalRowsGiveExactlyZero) {
  std::vector<float> row(1000);
  for (size_t i = 0; i < row.size(); ++i) row[i] = std::sin(static_cast<float>(i)) * 8;
  const TokenKld t = token_kld(row.data(), row.data(), 1000, 7);
  EXPECT_EQ(t.kld, 0.0);
  EXPECT_TRUE(t.same_top);
  EXPECT_EQ(t.nll_base, t.nll_model);
}

TEST(TokenKld, ShiftInvariantAndLargeLogitsStayFinite) {
  // Softmax ignores a constant shift; logits far from 0 must not overflow.
  const std::vector<float> base = {1000.0f, 999.0f, 998.0f};
  const std::vector<float> model = {-50.0f, -51.0f, -52.0f};
  const TokenKld t = token_kld(base.data(), model.data(), 3, 0);
  EXPECT_NEAR(t.kld, 0.0, 1e-9);
  EXPECT_TRUE(std::isfinite(t.nll_base));
  EXPECT_TRUE(t.same_top);
}

TEST(KldAccumulator, PercentilesAndErrorsFollowLlamaPerplexity) {
  KldAccumulator acc;
  // KL values 0, 0.01, ..., 1.00 (101 tokens), every other token with the same top.
  for (int i = 0; i <= 100; ++i) {
    TokenKld t;
    t.kld = i / 100.0;
    t.nll_base = 1.0;
    t.nll_model = 1.0 + (i % 2 ? 0.5 : 0.0);
    t.same_top = i % 2 == 0;
    acc.add(t);
  }
  const KldResult r = acc.result();
  EXPECT_EQ(r.n_scored, 101);
  EXPECT_NEAR(r.kld_mean.value, 0.5, 1e-9);
  // Standard error of the mean: sqrt(var / (n - 1)) with the population variance.
  double var = 0;
  for (int i = 0; i <= 100; ++i) var += (i / 100.0 - 0.5) * (i / 100.0 - 0.5);
  var /= 101;
  EXPECT_NEAR(r.kld_mean.error, std::sqrt(var / 100), 1e-7);
  EXPECT_NEAR(r.kld_median, 0.5, 1e-6);
  EXPECT_NEAR(r.kld_p99, 0.99, 1e-6);     // rank 0.99 * 100 = 99
  EXPECT_NEAR(r.kld_p99_9, 0.999, 1e-6);  // between ranks 99 and 100
  EXPECT_NEAR(r.kld_max, 1.0, 1e-6);
  EXPECT_NEAR(r.kld_min, 0.0, 1e-9);
  EXPECT_NEAR(r.same_top.value, 51.0 / 101, 1e-12);
  EXPECT_NEAR(r.ppl_base.value, std::exp(1.0), 1e-9);
  EXPECT_NEAR(r.ppl_model.value, std::exp(1.0 + 0.5 * 50 / 101), 1e-9);
  EXPECT_NEAR(r.ppl_ratio.value, r.ppl_model.value / r.ppl_base.value, 1e-9);
}

TEST(KldAccumulator, EvenCountMedianIsTheMeanOfTheMiddleTwo) {
  KldAccumulator acc;
  for (double v : {0.4, 0.1, 0.3, 0.2}) acc.add({v, 1, 1, true});
  EXPECT_NEAR(acc.result().kld_median, 0.25, 1e-7);
}

LoadOptions small_options() {
  LoadOptions o;
  o.n_ctx = 64;
  o.n_threads = 1;
  return o;
}

TEST(KlDivergence, ModelAgainstItselfIsExactlyZero) {
  FENNEC_REQUIRE_MODEL(test::kSmolLM2);
  auto a = LoadedModel::load(test::model_path(test::kSmolLM2), small_options());
  auto b = LoadedModel::load(test::model_path(test::kSmolLM2), small_options());
  ASSERT_TRUE(a && b);
  const auto ids = (*a)->tokenizer().encode(
      test::read_file(test::source_path("tests/fixtures/reference/text.txt")), true, false);
  int chunks_seen = 0;
  auto r = kl_divergence(**a, **b, ids, 64, 2, [&](int, const KldResult&) { ++chunks_seen; });
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(chunks_seen, 2);
  EXPECT_EQ(r->n_chunks, 2);
  EXPECT_EQ(r->n_scored, 2 * (64 - 1 - 32));
  EXPECT_EQ(r->kld_mean.value, 0.0);
  EXPECT_EQ(r->kld_max, 0.0);
  EXPECT_EQ(r->same_top.value, 1.0);
  EXPECT_EQ(r->ppl_base.value, r->ppl_model.value);
  EXPECT_GT(r->ppl_base.value, 1.0);
}

TEST(KlDivergence, RefusesDifferentVocabularies) {
  FENNEC_REQUIRE_MODEL(test::kSmolLM2);
  FENNEC_REQUIRE_MODEL(test::kGemma3);
  auto a = LoadedModel::load(test::model_path(test::kSmolLM2), small_options());
  auto b = LoadedModel::load(test::model_path(test::kGemma3), small_options());
  ASSERT_TRUE(a && b);
  const std::vector<int32_t> ids(200, 1);
  auto r = kl_divergence(**a, **b, ids, 64);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("different vocabularies"), std::string::npos)
      << r.error().message;
}

TEST(KlDivergence, ShortTextIsAnError) {
  FENNEC_REQUIRE_MODEL(test::kSmolLM2);
  auto a = LoadedModel::load(test::model_path(test::kSmolLM2), small_options());
  auto b = LoadedModel::load(test::model_path(test::kSmolLM2), small_options());
  ASSERT_TRUE(a && b);
  auto r = kl_divergence(**a, **b, std::vector<int32_t>(10, 1), 64);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("fewer than one chunk"), std::string::npos);
}

}  // namespace
}  // namespace fennec::engine
