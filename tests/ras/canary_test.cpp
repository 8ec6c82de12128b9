// The canary: a silent change in what the engine computes (injected into the logits, finite, so
// the NaN guard cannot see it) changes the canary's answer, which makes the engine unhealthy.
#include "ras/canary.h"

#include <gtest/gtest.h>

#include <atomic>

#include "engine/loaded_model.h"
#include "engine/scheduler.h"
#include "ras/health.h"
#include "ras/small_model.h"
#include "test_util.h"

namespace fennec::ras {
namespace {

TEST(Canary, ReferenceThenMismatchAtItsInterval) {
  double now = 0;
  std::vector<Expected<std::vector<int32_t>>> answers = {
      std::vector<int32_t>{5, 6, 7, 8}, std::vector<int32_t>{5, 6, 7, 8}, make_error("queue full"),
      std::vector<int32_t>{5, 6, 9, 8}};
  size_t next = 0;
  Canary c([&]() -> Expected<std::vector<int32_t>> { return answers[next++]; }, 100,
           [&] { return now; });
  HealthMonitor mon;
  auto s = c.read();  // reference
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].value, 0.0);
  mon.observe(now, s);
  now = 50;
  mon.observe(now, c.read());  // too soon: no run
  EXPECT_EQ(c.runs(), 1);
  now = 100;
  mon.observe(now, c.read());  // same answer
  now = 200;
  s = c.read();  // a failed run: unavailable, not zero
  EXPECT_FALSE(s[0].available());
  EXPECT_NE(s[0].why.find("queue full"), std::string::npos);
  mon.observe(now, s);
  EXPECT_EQ(mon.worst(), HealthState::kHealthy);
  now = 300;
  auto ev = mon.observe(now, c.read());
  EXPECT_EQ(c.mismatches(), 1);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].device, "engine");
  EXPECT_EQ(ev[0].to, HealthState::kUnhealthy);
  EXPECT_NE(ev[0].reason.find("canary answer changed at token 2: expected [7 8], got [9 8]"),
            std::string::npos)
      << ev[0].reason;
}

TEST(Canary, SilentLogitCorruptionIsCaughtThroughTheScheduler) {
  if (!test::model_exists(test::kSmolLM2))
    GTEST_SKIP() << "model not found: run scripts/fetch_models.sh";
  auto lm = test::load_small_smollm2(2);
  ASSERT_TRUE(lm) << lm.error().message;
  auto prompt = test::user_prompt(**lm, "Count to five.");
  std::atomic<bool> corrupt{false};
  engine::SchedulerOptions so;
  const int n_vocab = (*lm)->model().hparams().n_vocab;
  so.logits_fault = [&](std::vector<float>& logits, int) {
    if (!corrupt) return;
    // A finite, plausible-looking change: one token gets a large logit in every row.
    for (size_t r = 0; r + n_vocab <= logits.size(); r += n_vocab) logits[r + 1234] += 50.0f;
  };
  engine::Scheduler sch(**lm, so);
  sch.start();
  double now = 0;
  Canary c(scheduler_canary(sch, prompt, 10), 1, [&] { return now; });
  HealthMonitor mon;
  mon.observe(now, c.read());
  ASSERT_EQ(c.reference().size(), 10u);
  now = 1;
  mon.observe(now, c.read());
  EXPECT_EQ(c.mismatches(), 0);  // the same answer, now partly from the prefix cache
  corrupt = true;
  now = 2;
  auto ev = mon.observe(now, c.read());
  EXPECT_EQ(c.mismatches(), 1);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].to, HealthState::kUnhealthy);
  EXPECT_EQ(sch.stats().numeric_recomputed, 0);  // nothing the NaN guard could see
  sch.stop();
}

}  // namespace
}  // namespace fennec::ras
