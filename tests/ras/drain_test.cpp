// Hold and recover (docs/ras.md): a held scheduler moves its running sequences back to the
// queue, computes nothing and refuses new work; released, every sequence continues from the
// tokens it already sent and ends exactly as an undisturbed run; fail_all ends each held
// sequence once with the error. Also RecoveryController's decisions and the scrubber's
// reverify().
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "engine/loaded_model.h"
#include "engine/scheduler.h"
#include "ras/recovery.h"
#include "ras/scrubber.h"
#include "ras/service.h"
#include "ras/small_model.h"
#include "test_util.h"

namespace fennec::engine {
namespace {

struct Stream {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  int n_events_after_hold = 0;
  int finishes = 0;
  SeqFinish finish = SeqFinish::kNone;
  std::string error;
  std::atomic<bool>* held = nullptr;
  SeqCallback callback() {
    return [this](const SeqEvent& ev) {
      std::lock_guard<std::mutex> lk(mu);
      if (held && held->load() && !ev.tokens.empty()) ++n_events_after_hold;
      for (const auto& t : ev.tokens) tokens.push_back(t.id);
      if (ev.finish != SeqFinish::kNone) {
        ++finishes;
        finish = ev.finish;
        error = ev.error;
      }
      cv.notify_all();
    };
  }
  template <class P>
  bool wait(P pred) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, std::chrono::seconds(120), [&] { return pred(*this); });
  }
};

class Drain : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::model_exists(test::kSmolLM2))
      GTEST_SKIP() << "model not found: run scripts/fetch_models.sh";
    auto l = test::load_small_smollm2(4);
    ASSERT_TRUE(l) << l.error().message;
    lm = std::move(*l);
    for (const char* q : {"Name a color.", "Count to five.", "Say hello."}) prompts.push_back(test::user_prompt(*lm, q));
  }
  SeqRequest req(size_t i) {
    SeqRequest r;
    r.prompt = prompts[i];
    r.max_tokens = 24;
    r.ignore_eos = true;
    r.sampling.temperature = 0;
    return r;
  }
  std::unique_ptr<LoadedModel> lm;
  std::vector<std::vector<int32_t>> prompts;
};

TEST_F(Drain, HeldSequencesResumeWithTheSameTokensAndNoDuplicate) {
  std::vector<std::vector<int32_t>> clean(prompts.size());
  {
    Scheduler s(*lm, {});
    s.start();
    std::vector<Stream> st(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) ASSERT_TRUE(s.submit(req(i), st[i].callback()));
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_TRUE(st[i].wait([](Stream& x) { return x.finishes > 0; }));
      clean[i] = st[i].tokens;
    }
  }
  Scheduler s(*lm, {});
  s.start();
  std::atomic<bool> held{false};
  std::vector<Stream> st(prompts.size());
  for (auto& x : st) x.held = &held;
  for (size_t i = 0; i < prompts.size(); ++i) ASSERT_TRUE(s.submit(req(i), st[i].callback()));
  ASSERT_TRUE(st[0].wait([](Stream& x) { return x.tokens.size() >= 3; }));
  s.hold(true);
  // The engine notices at its next step; what a step already computed is sent before it holds.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  held = true;
  std::vector<size_t> sent;
  for (auto& x : st) {
    std::lock_guard<std::mutex> lk(x.mu);
    sent.push_back(x.tokens.size());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  for (size_t i = 0; i < st.size(); ++i) {
    std::lock_guard<std::mutex> lk(st[i].mu);
    EXPECT_EQ(st[i].tokens.size(), sent[i]) << "a held sequence sent tokens";
    EXPECT_EQ(st[i].finishes, 0);
  }
  const auto hs = s.stats();
  EXPECT_TRUE(hs.held);
  EXPECT_EQ(hs.running, 0);
  EXPECT_GE(hs.held_requeued, 1);
  bool full = false;
  auto refused = s.submit(
      req(0), [](const SeqEvent&) { ADD_FAILURE() << "a refused request got an event"; }, &full);
  EXPECT_FALSE(refused);
  EXPECT_FALSE(full);
  held = false;
  s.hold(false);
  for (size_t i = 0; i < st.size(); ++i) {
    ASSERT_TRUE(st[i].wait([](Stream& x) { return x.finishes > 0; }));
    EXPECT_EQ(st[i].finishes, 1);
    EXPECT_EQ(st[i].finish, SeqFinish::kLength);
    EXPECT_EQ(st[i].tokens, clean[i]) << "prompt " << i;
  }
  EXPECT_FALSE(s.stats().held);
}

TEST_F(Drain, FailAllEndsEveryHeldSequenceOnceWithTheError) {
  SchedulerOptions so;
  so.max_seqs = 1;  // the others wait in the queue
  Scheduler s(*lm, so);
  s.start();
  std::vector<Stream> st(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) ASSERT_TRUE(s.submit(req(i), st[i].callback()));
  ASSERT_TRUE(st[0].wait([](Stream& x) { return !x.tokens.empty(); }));
  s.hold(true);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  s.fail_all("weights changed: retry elsewhere");
  for (auto& x : st) {
    ASSERT_TRUE(x.wait([](Stream& y) { return y.finishes > 0; }));
    EXPECT_EQ(x.finish, SeqFinish::kError);
    EXPECT_EQ(x.error, "weights changed: retry elsewhere");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (auto& x : st) EXPECT_EQ(x.finishes, 1);
  const auto stats = s.stats();
  EXPECT_EQ(stats.waiting, 0);
  EXPECT_EQ(stats.running, 0);
}

}  // namespace
}  // namespace fennec::engine

namespace fennec::ras {
namespace {

TEST(ScrubberReverify, ARestoredChunkIsRepairedNotANewFault) {
  std::vector<uint8_t> mem(4096, 7);
  WeightScrubber sc({{"w", mem.data(), mem.size()}}, mem.size(), 1024);
  sc.scrub(mem.size());  // reference
  mem[1500] ^= 1;
  EXPECT_EQ(sc.scrub(mem.size()).size(), 1u);
  EXPECT_EQ(sc.dirty(), 1u);
  EXPECT_EQ(sc.reverify(), 1u);
  mem[1500] ^= 1;
  EXPECT_EQ(sc.reverify(), 0u);
  EXPECT_EQ(sc.scrub(mem.size()).size(), 0u);  // back to the loaded bytes: not a change
  EXPECT_EQ(sc.mismatches(), 1);
  // Restored between two visits: the scrubber itself clears it.
  mem[10] ^= 4;
  EXPECT_EQ(sc.scrub(mem.size()).size(), 1u);
  mem[10] ^= 4;
  EXPECT_EQ(sc.scrub(mem.size()).size(), 0u);
  EXPECT_EQ(sc.dirty(), 0u);
}

std::unique_ptr<TelemetrySource> counter(std::shared_ptr<double> v, std::string device, Kind kind) {
  return make_callback_source(device, [v, device, kind] {
    Sample s;
    s.device = device;
    s.name = "n";
    s.kind = kind;
    s.value = *v;
    return std::vector<Sample>{s};
  });
}

TEST(RecoveryControllerTest, HoldsOnWeightsThenRecoversOrFails) {
  auto crit = std::make_shared<double>(0);
  std::vector<std::unique_ptr<TelemetrySource>> srcs;
  srcs.push_back(counter(crit, "weights", Kind::kCriticalEvents));
  RasOptions o;
  RasService ras(std::move(srcs), o);
  std::vector<bool> holds;
  std::vector<std::string> fails;
  size_t dirty = 1;
  RecoveryHooks h;
  h.hold = [&](bool on) { holds.push_back(on); };
  h.fail_all = [&](const std::string& why) { fails.push_back(why); };
  h.reverify_weights = [&] { return dirty; };
  RecoveryController rc(ras, h, 0.2);
  ras.poll();
  rc.after_poll();
  EXPECT_TRUE(holds.empty());
  *crit = 1;  // the scrubber found a change: U3
  ras.poll();
  rc.after_poll();
  ASSERT_EQ(holds, std::vector<bool>{true});
  EXPECT_TRUE(rc.holding());
  dirty = 0;  // the bytes are back
  ras.poll();
  rc.after_poll();
  EXPECT_EQ(holds, (std::vector<bool>{true, false}));
  EXPECT_EQ(ras.worst(), HealthState::kHealthy);
  EXPECT_EQ(rc.recoveries(), 1);
  // A second change that stays: fails after the timeout, drained, held for good.
  *crit = 2;
  dirty = 1;
  ras.poll();
  rc.after_poll();
  EXPECT_TRUE(rc.holding());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ras.poll();
  rc.after_poll();
  ASSERT_EQ(fails.size(), 1u);
  EXPECT_NE(fails[0].find("did not recover"), std::string::npos);
  EXPECT_TRUE(rc.failed());
  EXPECT_EQ(ras.worst(), HealthState::kDrained);
  ras.poll();
  rc.after_poll();
  EXPECT_EQ(fails.size(), 1u);
  EXPECT_EQ(holds.back(), true);
}

TEST(RecoveryControllerTest, OtherDevicesOnlyTakeReadinessOff) {
  auto ue = std::make_shared<double>(0);
  std::vector<std::unique_ptr<TelemetrySource>> srcs;
  srcs.push_back(counter(ue, "mem:mc0", Kind::kUeCount));
  RasService ras(std::move(srcs), {});
  int holds = 0;
  RecoveryHooks h;
  h.hold = [&](bool) { ++holds; };
  RecoveryController rc(ras, h, 0.1);
  ras.poll();
  *ue = 1;
  ras.poll();
  rc.after_poll();
  EXPECT_EQ(ras.worst(), HealthState::kUnhealthy);
  EXPECT_EQ(holds, 0);
}

}  // namespace
}  // namespace fennec::ras
