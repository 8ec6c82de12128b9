// ABFT in the engine (src/ras/abft_observer.h, SchedulerOptions::step_failed): a weight product
// that fails its checksum makes the step untrusted. A transient fault (here: a bit of the packed
// output matrix's scale flipped, then restored by the time the step is recomputed) is recomputed
// and the answer equals the clean run; a fault that stays fails the recompute too and the
// sequence ends once with a clear error. A clean run raises no failure.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "engine/loaded_model.h"
#include "engine/scheduler.h"
#include "kernels/cpu/repack.h"
#include "kernels/cpu/repack_layout.h"
#include "ras/abft.h"
#include "ras/abft_observer.h"
#include "ras/small_model.h"
#include "test_util.h"

namespace fennec::ras {
namespace {

struct Result {
  std::vector<int32_t> tokens;
  engine::SeqFinish finish = engine::SeqFinish::kNone;
  std::string error;
  int finishes = 0;
};

// Restores the flipped byte after the first failed check: the recompute then runs on good weights.
class RestoringObserver final : public model::MatmulObserver {
 public:
  RestoringObserver(AbftObserver& inner, uint8_t* byte, uint8_t mask)
      : inner_(inner), byte_(byte), mask_(mask) {}
  void on_matmul(const kernels::WeightView&, std::string_view, const float*, int64_t) override {}
  void after_matmul(const kernels::WeightView& w, std::string_view name, const float* x, int64_t n,
                    const float* y, int64_t ldy) override {
    const int64_t before = inner_.checker().failures();
    inner_.after_matmul(w, name, x, n, y, ldy);
    if (byte_ && inner_.checker().failures() > before) {
      *byte_ ^= mask_;
      byte_ = nullptr;
    }
  }

 private:
  AbftObserver& inner_;
  uint8_t* byte_;
  uint8_t mask_;
};

class AbftRecompute : public ::testing::Test {
 protected:
  const bool pack_q4_1 = kernels::pack_q4_1_enabled();
  void SetUp() override {
    FENNEC_REQUIRE_MODEL(test::kSmolLM2);
    if (!kernels::repack_enabled()) GTEST_SKIP() << "FENNEC_REPACK=0: no packed copy to flip";
    // The Q4_1 matrices unpacked, so that the first packed copy is the tied embedding's (below).
    kernels::set_pack_q4_1_enabled(false);
    auto l = test::load_small_smollm2(2);
    kernels::set_pack_q4_1_enabled(pack_q4_1);
    ASSERT_TRUE(l) << l.error().message;
    lm = std::move(*l);
    prompt = test::user_prompt(*lm, "Name a color.");
    Status st = {};
    lm->model().for_each_matrix([&](const std::string& name, const kernels::WeightView& w) {
      if (st && w.data) st = checker.prepare(name, w);
    });
    ASSERT_TRUE(st) << st.error().message;
    // SmolLM2's output product reads the packed Q8_0 copy of the tied embedding. Its first 16-row
    // group of 18 blocks (repack_layout.h): the high byte of row 0's fp16 scale in block 0, bit
    // 6 = the exponent's top bit: that block's products grow by 2^16.
    const auto& copy = lm->model().packed_regions().front();
    ASSERT_EQ(copy.name, "token_embd.weight (packed)");
    scale_hi = const_cast<uint8_t*>(copy.data) + kernels::packed::block_at<kernels::packed::Q8_0>(18, 0).scales + 1;
  }
  Result run(model::MatmulObserver* observer, AbftObserver* abft, engine::SchedulerStats* stats) {
    engine::SchedulerOptions so;
    so.matmul_observer = observer;
    if (abft) so.step_failed = [abft] { return abft->take_failed(); };
    engine::Scheduler sch(*lm, so);
    sch.start();
    std::mutex mu;
    std::condition_variable cv;
    Result r;
    engine::SeqRequest req;
    req.prompt = prompt;
    req.max_tokens = 8;
    req.sampling.temperature = 0;
    req.ignore_eos = true;
    EXPECT_TRUE(sch.submit(std::move(req), [&](const engine::SeqEvent& ev) {
      std::lock_guard<std::mutex> lk(mu);
      for (const auto& t : ev.tokens) r.tokens.push_back(t.id);
      if (ev.finish != engine::SeqFinish::kNone) {
        r.finish = ev.finish;
        r.error = ev.error;
        ++r.finishes;
        cv.notify_all();
      }
    }));
    {
      std::unique_lock<std::mutex> lk(mu);
      EXPECT_TRUE(cv.wait_for(lk, std::chrono::seconds(300), [&] { return r.finishes > 0; }));
    }
    *stats = sch.stats();
    sch.stop();
    std::lock_guard<std::mutex> lk(mu);
    return r;
  }
  std::unique_ptr<engine::LoadedModel> lm;
  std::vector<int32_t> prompt;
  AbftChecker checker;
  uint8_t* scale_hi = nullptr;
};

TEST_F(AbftRecompute, CleanRunPassesEveryCheck) {
  AbftObserver obs(checker);
  engine::SchedulerStats stats;
  Result r = run(&obs, &obs, &stats);
  EXPECT_EQ(r.finish, engine::SeqFinish::kLength);
  EXPECT_EQ(r.tokens.size(), 8u);
  EXPECT_GT(checker.checks(), 0);
  EXPECT_EQ(checker.failures(), 0);
  EXPECT_EQ(stats.numeric_recomputed, 0);
  EXPECT_EQ(stats.numeric_failed, 0);
}

TEST_F(AbftRecompute, TransientFaultIsRecomputedToTheCleanAnswer) {
  engine::SchedulerStats clean_stats, stats;
  Result clean = run(nullptr, nullptr, &clean_stats);
  ASSERT_EQ(clean.finish, engine::SeqFinish::kLength);
  AbftObserver obs(checker);
  RestoringObserver restoring(obs, scale_hi, 0x40);
  *scale_hi ^= 0x40;  // the fault, in the memory the product reads
  Result r = run(&restoring, &obs, &stats);
  EXPECT_EQ(r.finish, engine::SeqFinish::kLength) << r.error;
  EXPECT_EQ(r.finishes, 1);
  EXPECT_EQ(r.tokens, clean.tokens);
  EXPECT_GE(checker.failures(), 1);
  EXPECT_EQ(stats.numeric_recomputed, 1);
  EXPECT_EQ(stats.numeric_failed, 0);
}

TEST_F(AbftRecompute, FaultThatStaysFailsTheSequenceOnce) {
  AbftObserver obs(checker);
  *scale_hi ^= 0x40;
  engine::SchedulerStats stats;
  Result r = run(&obs, &obs, &stats);
  *scale_hi ^= 0x40;
  EXPECT_EQ(r.finish, engine::SeqFinish::kError);
  EXPECT_EQ(r.finishes, 1);
  EXPECT_NE(r.error.find("ABFT"), std::string::npos) << r.error;
  EXPECT_EQ(stats.numeric_failed, 1);
  EXPECT_EQ(stats.numeric_recomputed, 0);
  EXPECT_GE(checker.failures(), 2);  // the first pass and the recompute
}

}  // namespace
}  // namespace fennec::ras
