// The engine's NaN guard under injected faults: a NaN in one step's logits is fixed by
// recomputing the step (the answer is unchanged, counted as recomputed); a fault that repeats
// ends the sequence with an error (counted as failed). Also: the scheduler meters each sequence
// (estimated energy, labelled) in its last event.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <limits>
#include <mutex>

#include "engine/loaded_model.h"
#include "engine/scheduler.h"
#include "metering/meter.h"
#include "ras/small_model.h"
#include "test_util.h"

namespace fennec::engine {
namespace {

struct Result {
  std::vector<int32_t> tokens;
  SeqFinish finish = SeqFinish::kNone;
  std::string error;
  double joules = 0, cost = 0;
  std::string source;
};

struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  Result r;
  SeqCallback callback() {
    return [this](const SeqEvent& ev) {
      std::lock_guard<std::mutex> lk(mu);
      for (const auto& t : ev.tokens) r.tokens.push_back(t.id);
      if (ev.finish != SeqFinish::kNone) {
        r.finish = ev.finish;
        r.error = ev.error;
        r.joules = ev.energy_joules;
        r.cost = ev.cost_usd;
        r.source = ev.energy_source ? ev.energy_source : "";
        cv.notify_all();
      }
    };
  }
  bool wait() {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, std::chrono::seconds(120), [&] { return r.finish != SeqFinish::kNone; });
  }
};

class NanGuard : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::model_exists(test::kSmolLM2))
      GTEST_SKIP() << "model not found: run scripts/fetch_models.sh";
    auto l = test::load_small_smollm2(2);
    ASSERT_TRUE(l) << l.error().message;
    lm = std::move(*l);
    prompt = test::user_prompt(*lm, "Name a color.");
  }
  // Greedy run of 12 tokens; `fault` corrupts the logits of step `at_step` on the attempts it
  // names (bit 0: first pass, bit 1: recompute).
  Result run(int at_step, int attempts_mask, SchedulerStats* stats,
             metering::StepMeter* meter = nullptr) {
    SchedulerOptions so;
    so.meter = meter;
    std::atomic<int> step{0};
    so.logits_fault = [&](std::vector<float>& logits, int attempt) {
      if (attempt == 0) ++step;
      if (step == at_step && (attempts_mask >> attempt) & 1)
        logits[logits.size() / 2] = std::numeric_limits<float>::quiet_NaN();
    };
    Scheduler sch(*lm, so);
    sch.start();
    Collector c;
    SeqRequest req;
    req.prompt = prompt;
    req.max_tokens = 12;
    req.sampling.temperature = 0;
    req.ignore_eos = true;
    EXPECT_TRUE(sch.submit(std::move(req), c.callback()));
    EXPECT_TRUE(c.wait());
    *stats = sch.stats();
    sch.stop();
    std::lock_guard<std::mutex> lk(c.mu);
    return c.r;
  }
  std::unique_ptr<LoadedModel> lm;
  std::vector<int32_t> prompt;
};

TEST_F(NanGuard, TransientFaultIsRecomputedAndLeavesTheAnswerUnchanged) {
  SchedulerStats clean_stats, stats;
  Result clean = run(-1, 0, &clean_stats);
  ASSERT_EQ(clean.finish, SeqFinish::kLength);
  EXPECT_EQ(clean_stats.numeric_recomputed, 0);
  Result faulty = run(4, 1, &stats);  // a NaN in the 4th step's first pass only
  EXPECT_EQ(faulty.finish, SeqFinish::kLength);
  EXPECT_EQ(faulty.tokens, clean.tokens);
  EXPECT_EQ(stats.numeric_recomputed, 1);
  EXPECT_EQ(stats.numeric_failed, 0);
}

TEST_F(NanGuard, RepeatedFaultEndsTheSequenceWithAnError) {
  SchedulerStats stats;
  Result r = run(3, 3, &stats);  // both passes of the 3rd step
  EXPECT_EQ(r.finish, SeqFinish::kError);
  EXPECT_NE(r.error.find("NaN/Inf"), std::string::npos) << r.error;
  EXPECT_EQ(stats.numeric_failed, 1);
  EXPECT_EQ(stats.numeric_recomputed, 0);
}

TEST_F(NanGuard, SchedulerMetersEachSequence) {
  metering::MeterOptions mo;
  mo.device_watts = 100;
  mo.price_kwh = 0.2;
  mo.price_hour = 36;  // 0.01 USD per busy second
  metering::StepMeter meter(mo, nullptr);
  SchedulerStats stats;
  Result r = run(-1, 0, &stats, &meter);
  ASSERT_EQ(r.finish, SeqFinish::kLength);
  EXPECT_EQ(r.source, "estimated");
  EXPECT_GT(r.joules, 0);
  // One sequence alone takes the whole of every step.
  EXPECT_DOUBLE_EQ(r.joules, meter.totals().estimated_joules);
  EXPECT_NEAR(r.cost, r.joules / 3.6e6 * 0.2 + r.joules / 100 * 0.01, 1e-12);
}

}  // namespace
}  // namespace fennec::engine
