#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace fennec::engine {
namespace {

// Independent reference: log_softmax(logits / temperature) in double.
std::vector<double> log_softmax(const std::vector<float>& logits, double temperature = 1.0) {
  double mx = -std::numeric_limits<double>::infinity();
  for (float l : logits) mx = std::max(mx, l / temperature);
  double sum = 0.0;
  for (float l : logits) sum += std::exp(l / temperature - mx);
  std::vector<double> out;
  for (float l : logits) out.push_back(l / temperature - mx - std::log(sum));
  return out;
}

std::vector<float> random_logits(int n, uint32_t seed, float scale = 3.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

SamplingParams seeded(uint64_t seed) {
  SamplingParams p;
  p.seed = seed;
  p.has_seed = true;
  return p;
}

// Samples n times and checks that only tokens in `allowed` appear and that their frequencies
// follow `expected` (probabilities over allowed tokens). The chi-square bound is far in the tail
// (df <= 10 gives p < 1e-10 at 70); the seed is fixed, so the test is deterministic anyway.
void check_distribution(Sampler& s, const std::vector<float>& logits,
                        const std::map<int32_t, double>& expected, int n = 20000) {
  std::map<int32_t, int> counts;
  for (int i = 0; i < n; ++i) {
    auto r = s.sample(logits.data(), static_cast<int>(logits.size()), {});
    ASSERT_TRUE(expected.count(r.token)) << "token " << r.token << " is outside the support";
    ++counts[r.token];
  }
  double chi2 = 0.0;
  for (const auto& [tok, p] : expected) {
    const double e = p * n;
    const double d = counts[tok] - e;
    chi2 += d * d / e;
  }
  EXPECT_LT(chi2, 70.0) << "frequencies do not follow the expected probabilities";
}

// Renormalized softmax(logits / t) over a subset of ids.
std::map<int32_t, double> softmax_over(const std::vector<float>& logits,
                                       const std::vector<int32_t>& ids, double t) {
  std::map<int32_t, double> out;
  double sum = 0.0;
  for (int32_t id : ids) sum += std::exp(logits[id] / t);
  for (int32_t id : ids) out[id] = std::exp(logits[id] / t) / sum;
  return out;
}

// Logits whose softmax is exactly `probs` (up to a constant).
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(static_cast<float>(std::log(p)));
  return out;
}

TEST(Sampler, GreedyPicksArgmaxWithLowestIndexTieBreak) {
  SamplingParams p = seeded(1);
  p.temperature = 0.0f;
  Sampler s(p);
  std::vector<float> logits = random_logits(1000, 7);
  const int32_t want =
      static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  for (int i = 0; i < 5; ++i) {
    auto r = s.sample(logits.data(), 1000, {});
    EXPECT_EQ(r.token, want);
    EXPECT_NEAR(r.logprob, log_softmax(logits)[want], 1e-5);
  }
  std::vector<float> tie = {0.0f, 3.0f, 1.0f, 3.0f, 3.0f};
  EXPECT_EQ(s.sample(tie.data(), 5, {}).token, 1);
}

TEST(Sampler, TopK1EqualsGreedy) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    std::vector<float> logits = random_logits(5000, seed, 1.0f);
    SamplingParams g = seeded(seed);
    g.temperature = 0.0f;
    SamplingParams k = seeded(seed);
    k.temperature = 1.5f;
    k.top_k = 1;
    Sampler greedy(g), topk(k);
    EXPECT_EQ(topk.sample(logits.data(), 5000, {}).token,
              greedy.sample(logits.data(), 5000, {}).token);
  }
}

TEST(Sampler, PlainSamplingFollowsSoftmaxWithTemperature) {
  std::vector<float> logits = logits_of({0.4, 0.25, 0.15, 0.1, 0.06, 0.04});
  SamplingParams p = seeded(11);
  p.temperature = 0.7f;
  Sampler s(p);
  check_distribution(s, logits, softmax_over(logits, {0, 1, 2, 3, 4, 5}, 0.7));
}

TEST(Sampler, TopKRestrictsSupport) {
  std::vector<float> logits = logits_of({0.1, 0.3, 0.05, 0.25, 0.2, 0.1});
  SamplingParams p = seeded(3);
  p.top_k = 3;
  p.temperature = 1.3f;
  Sampler s(p);
  check_distribution(s, logits, softmax_over(logits, {1, 3, 4}, 1.3));
}

TEST(Sampler, TopPRestrictsSupport) {
  // Mass in order: 0.4, 0.7, 0.85, 0.95, 1.0; top_p 0.75 keeps the first three.
  std::vector<float> logits = logits_of({0.15, 0.4, 0.05, 0.3, 0.1});
  SamplingParams p = seeded(4);
  p.top_p = 0.75f;
  Sampler s(p);
  check_distribution(s, logits, softmax_over(logits, {1, 3, 0}, 1.0));
}

TEST(Sampler, TopPUsesProbabilitiesBeforeTemperature) {
  // At temperature 1 token 0 alone holds 0.6 >= top_p 0.5; a high temperature must not widen
  // the support because temperature comes after truncation.
  std::vector<float> logits = logits_of({0.6, 0.3, 0.1});
  SamplingParams p = seeded(5);
  p.top_p = 0.5f;
  p.temperature = 5.0f;
  Sampler s(p);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(s.sample(logits.data(), 3, {}).token, 0);
}

TEST(Sampler, TopPOverLargeVocabularyMatchesFullSort) {
  // Flat enough that the nucleus holds hundreds of tokens: exercises several selection rounds.
  const int n = 8000;
  std::vector<float> logits = random_logits(n, 99, 1.5f);
  const float top_p = 0.6f;
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  const std::vector<double> lp = log_softmax(logits);
  std::set<int32_t> nucleus;
  double cum = 0.0;
  for (int32_t id : order) {
    nucleus.insert(id);
    cum += std::exp(lp[id]);
    if (cum >= top_p) break;
  }
  ASSERT_GT(nucleus.size(), 200u);
  ASSERT_LT(nucleus.size(), 7000u);

  SamplingParams p = seeded(6);
  p.top_p = top_p;
  Sampler s(p);
  std::set<int32_t> seen;
  for (int i = 0; i < 4000; ++i) {
    auto r = s.sample(logits.data(), n, {});
    ASSERT_TRUE(nucleus.count(r.token)) << r.token;
    seen.insert(r.token);
  }
  EXPECT_GT(seen.size(), nucleus.size() / 4) << nucleus.size();  // really sampled from
}

TEST(Sampler, MinPRestrictsSupport) {
  // min_p 0.3 with p_max 0.4: keeps p >= 0.12.
  std::vector<float> logits = logits_of({0.1, 0.4, 0.05, 0.3, 0.15});
  SamplingParams p = seeded(7);
  p.min_p = 0.3f;
  p.temperature = 0.9f;
  Sampler s(p);
  check_distribution(s, logits, softmax_over(logits, {1, 3, 4}, 0.9));
}

TEST(Sampler, TopKThenTopPThenMinPCompose) {
  // top_k 4 keeps {0.3, 0.25, 0.2, 0.1} (sum 0.85); renormalized, top_p 0.7 keeps the first
  // three (cumulative 0.353, 0.647, 0.882); min_p 0.7 then drops 0.2 < 0.7 * 0.3.
  std::vector<float> logits = logits_of({0.2, 0.05, 0.3, 0.1, 0.25, 0.05, 0.05});
  SamplingParams p = seeded(8);
  p.top_k = 4;
  p.top_p = 0.7f;
  p.min_p = 0.7f;
  Sampler s(p);
  check_distribution(s, logits, softmax_over(logits, {2, 4}, 1.0));
}

TEST(Sampler, PenaltiesChangeLogitsAsSpecified) {
  std::vector<float> logits = {2.0f, -1.0f, 0.5f, 1.5f, 0.0f, 3.0f};
  const std::vector<int32_t> history = {5, 0, 0, 1, 3, 4, 0};
  SamplingParams p = seeded(9);
  p.temperature = 0.0f;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  p.repeat_last_n = 6;  // token 5 at the start falls outside the window
  Sampler s(p);
  auto r = s.sample(logits.data(), 6, history);
  auto out = s.processed_logits();
  ASSERT_EQ(out.size(), 6u);
  EXPECT_FLOAT_EQ(out[0], 2.0f / 2 - (3 * 0.5f + 0.25f));   // count 3, positive: divided
  EXPECT_FLOAT_EQ(out[1], -1.0f * 2 - (1 * 0.5f + 0.25f));  // count 1, negative: multiplied
  EXPECT_FLOAT_EQ(out[2], 0.5f);                            // not in the window
  EXPECT_FLOAT_EQ(out[3], 1.5f / 2 - 0.75f);
  EXPECT_FLOAT_EQ(out[4], 0.0f * 2 - 0.75f);  // zero counts as non-positive
  EXPECT_FLOAT_EQ(out[5], 3.0f);              // outside repeat_last_n
  EXPECT_EQ(r.token, 5);
  EXPECT_EQ(logits[0], 2.0f);  // the caller's buffer is untouched

  // A second call starts from clean counts (they are reset after each call).
  s.sample(logits.data(), 6, std::span<const int32_t>(history).last(1));
  out = s.processed_logits();
  EXPECT_FLOAT_EQ(out[0], 2.0f / 2 - 0.75f);
  EXPECT_FLOAT_EQ(out[3], 1.5f);
}

TEST(Sampler, PenaltyWindowWholeHistoryAndOff) {
  std::vector<float> logits = {1.0f, 1.0f, 1.0f};
  const std::vector<int32_t> history = {0, 1, 1, 2, 7, -3};  // bad ids are ignored
  SamplingParams p = seeded(10);
  p.temperature = 0.0f;
  p.frequency_penalty = 1.0f;
  p.repeat_last_n = -1;
  Sampler all(p);
  all.sample(logits.data(), 3, history);
  EXPECT_FLOAT_EQ(all.processed_logits()[0], 0.0f);
  EXPECT_FLOAT_EQ(all.processed_logits()[1], -1.0f);
  EXPECT_FLOAT_EQ(all.processed_logits()[2], 0.0f);
  p.repeat_last_n = 0;
  Sampler off(p);
  off.sample(logits.data(), 3, history);
  EXPECT_FLOAT_EQ(off.processed_logits()[1], 1.0f);
}

TEST(Sampler, LogitBiasBansAndForces) {
  std::vector<float> logits(8, 0.0f);
  SamplingParams p = seeded(12);
  p.logit_bias = {{2, -100.0f}, {5, -100.0f}};
  Sampler s(p);
  std::set<int32_t> seen;
  for (int i = 0; i < 5000; ++i) seen.insert(s.sample(logits.data(), 8, {}).token);
  EXPECT_EQ(seen, (std::set<int32_t>{0, 1, 3, 4, 6, 7}));

  SamplingParams f = seeded(13);
  f.logit_bias = {{6, 100.0f}};
  Sampler forced(f);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(forced.sample(logits.data(), 8, {}).token, 6);
}

TEST(Sampler, BiasComesBeforePenalties) {
  std::vector<float> logits = {1.0f, 0.0f};
  SamplingParams p = seeded(14);
  p.temperature = 0.0f;
  p.logit_bias = {{0, -3.0f}};
  p.repetition_penalty = 2.0f;
  Sampler s(p);
  const std::vector<int32_t> history = {0};
  s.sample(logits.data(), 2, history);
  EXPECT_FLOAT_EQ(s.processed_logits()[0], (1.0f - 3.0f) * 2.0f);  // negative after bias
}

TEST(Sampler, SameSeedSameSequenceDifferentSeedDiffers) {
  std::vector<float> logits(1000, 0.0f);
  auto run = [&](uint64_t seed) {
    SamplingParams p = seeded(seed);
    p.top_k = 500;
    p.top_p = 0.9f;
    Sampler s(p);
    std::vector<int32_t> out, history;
    for (int i = 0; i < 200; ++i) {
      out.push_back(s.sample(logits.data(), 1000, history).token);
      history.push_back(out.back());
    }
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));

  // Unseeded samplers draw their seed from random_device.
  SamplingParams u;
  Sampler a(u), b(u);
  std::vector<int32_t> sa, sb;
  for (int i = 0; i < 100; ++i) {
    sa.push_back(a.sample(logits.data(), 1000, {}).token);
    sb.push_back(b.sample(logits.data(), 1000, {}).token);
  }
  EXPECT_NE(sa, sb);
}

TEST(Sampler, ValidateRejectsBadParamsWithClearMessages) {
  EXPECT_TRUE(SamplingParams{}.validate(100).has_value());
  auto expect_error = [](SamplingParams p, const std::string& needle) {
    Status st = p.validate(100);
    ASSERT_FALSE(st.has_value()) << needle;
    EXPECT_NE(st.error().message.find(needle), std::string::npos) << st.error().message;
  };
  SamplingParams p;
  p.temperature = -0.5f;
  expect_error(p, "temperature must be a finite number >= 0 (got -0.5)");
  p = {};
  p.temperature = std::numeric_limits<float>::quiet_NaN();
  expect_error(p, "temperature");
  p = {};
  p.top_k = -1;
  expect_error(p, "top_k must be >= 0");
  p = {};
  p.top_p = 0.0f;
  expect_error(p, "top_p must be in (0, 1]");
  p.top_p = 1.5f;
  expect_error(p, "top_p must be in (0, 1] (got 1.5)");
  p = {};
  p.min_p = -0.1f;
  expect_error(p, "min_p must be in [0, 1]");
  p = {};
  p.repetition_penalty = 0.0f;
  expect_error(p, "repetition_penalty must be a finite number > 0");
  p = {};
  p.repeat_last_n = -2;
  expect_error(p, "repeat_last_n must be >= -1");
  p = {};
  p.presence_penalty = 2.5f;
  expect_error(p, "presence_penalty must be in [-2, 2]");
  p = {};
  p.frequency_penalty = -3.0f;
  expect_error(p, "frequency_penalty must be in [-2, 2]");
  p = {};
  p.logit_bias = {{100, 1.0f}};
  expect_error(p, "logit_bias token id 100 is outside the vocabulary [0, 100)");
  p.logit_bias = {{-1, 1.0f}};
  expect_error(p, "logit_bias token id -1");
  p.logit_bias = {{3, 150.0f}};
  expect_error(p, "logit_bias for token 3 must be in [-100, 100]");
  EXPECT_FALSE(SamplingParams{}.validate(0).has_value());
}

TEST(Sampler, LogprobEqualsIndependentLogSoftmax) {
  const int n = 3000;
  std::vector<float> logits = random_logits(n, 21);
  for (float t : {0.5f, 1.0f, 1.7f}) {
    SamplingParams p = seeded(15);
    p.temperature = t;
    p.top_k = 50;  // truncation must not change the reported logprob
    Sampler s(p);
    const std::vector<double> ref = log_softmax(logits, t);
    for (int i = 0; i < 50; ++i) {
      auto r = s.sample(logits.data(), n, {});
      ASSERT_GE(r.token, 0);
      EXPECT_NEAR(r.logprob, ref[r.token], 1e-4) << "temperature " << t;
    }
  }
  // With bias and penalties, the reference is the log-softmax of the processed logits.
  SamplingParams p = seeded(16);
  p.logit_bias = {{4, 2.0f}};
  p.repetition_penalty = 1.3f;
  Sampler s(p);
  const std::vector<int32_t> history = {1, 2, 3, 4};
  for (int i = 0; i < 20; ++i) {
    auto r = s.sample(logits.data(), n, history);
    std::vector<float> processed(s.processed_logits().begin(), s.processed_logits().end());
    EXPECT_NEAR(r.logprob, log_softmax(processed)[r.token], 1e-4);
  }
}

TEST(Sampler, TopLogprobsMatchesSortedLogSoftmax) {
  const int n = 5000;
  std::vector<float> logits = random_logits(n, 31);
  logits[17] = logits[4000] = 20.0f;  // a tie at the top: lower id first
  const std::vector<double> ref = log_softmax(logits);
  auto top = Sampler::top_logprobs(logits.data(), n, 5);
  ASSERT_EQ(top.size(), 5u);
  EXPECT_EQ(top[0].first, 17);
  EXPECT_EQ(top[1].first, 4000);
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(top[i].first, order[i]);
    EXPECT_NEAR(top[i].second, ref[order[i]], 1e-4);
  }
  EXPECT_EQ(Sampler::top_logprobs(logits.data(), 3, 10).size(), 3u);
  EXPECT_TRUE(Sampler::top_logprobs(logits.data(), n, 0).empty());
}

TEST(Sampler, NonFiniteLogitsNeverCrash) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> logits = {nan, 1.0f, inf, -inf, nan, 2.0f};
  SamplingParams p = seeded(17);
  p.top_k = 3;
  p.top_p = 0.9f;
  Sampler s(p);
  for (int i = 0; i < 100; ++i) {
    auto r = s.sample(logits.data(), 6, {});
    EXPECT_EQ(r.token, 2);
    EXPECT_FALSE(std::isnan(r.logprob));
  }
  std::vector<float> banned(4, -inf);
  auto r = s.sample(banned.data(), 4, {});
  EXPECT_GE(r.token, 0);
  EXPECT_LT(r.token, 4);
}

TEST(Sampler, LargeVocabularyAllPaths) {
  const int n = 262144;
  std::vector<float> logits = random_logits(n, 41);
  std::vector<int32_t> history(100);
  std::iota(history.begin(), history.end(), 0);
  const int32_t argmax =
      static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  struct Case {
    int top_k;
    float top_p, min_p, temperature;
  };
  for (Case c :
       {Case{0, 1.0f, 0.0f, 1.0f}, Case{40, 1.0f, 0.0f, 0.8f}, Case{0, 0.95f, 0.0f, 0.8f},
        Case{40, 0.9f, 0.05f, 0.7f}, Case{0, 1.0f, 0.1f, 1.0f}, Case{1, 1.0f, 0.0f, 1.0f}}) {
    SamplingParams p = seeded(18);
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    p.min_p = c.min_p;
    p.temperature = c.temperature;
    p.repetition_penalty = 1.1f;
    Sampler s(p);
    for (int i = 0; i < 5; ++i) {
      auto r = s.sample(logits.data(), n, history);
      ASSERT_GE(r.token, 0);
      ASSERT_LT(r.token, n);
      EXPECT_LE(r.logprob, 0.0f);
      if (c.top_k == 1) {
        EXPECT_EQ(r.token, argmax);
      }
    }
  }
}

}  // namespace
}  // namespace fennec::engine
