// The serving scheduler: prefix-cache bookkeeping, continuous batching that leaves each
// sequence's tokens unchanged, prefix-cache hits, preemption under a small KV budget, and
// cancellation freeing pages.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>

#include "engine/block_manager.h"
#include "engine/generator.h"
#include "engine/loaded_model.h"
#include "engine/scheduler.h"
#include "test_util.h"

namespace fennec::engine {
namespace {

TEST(BlockManager, SharesFullPagesOfACommonPrefixAndEvictsLeastRecentlyUsed) {
  BlockManager bm(8, 4);
  std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  std::vector<int32_t> table;
  for (int i = 0; i < 3; ++i) table.push_back(bm.allocate());
  EXPECT_EQ(bm.n_available(), 5);
  // Nothing cached yet.
  EXPECT_TRUE(bm.match_prefix(a, 10).empty());
  bm.register_page(a, table, 0);
  bm.register_page(a, table, 1);
  bm.register_page(a, table, 2);  // page 2 is not full: ignored
  EXPECT_EQ(bm.n_cached(), 2);
  std::vector<int32_t> b = {1, 2, 3, 4, 5, 6, 7, 9};
  auto m = bm.match_prefix(b, 10);
  ASSERT_EQ(m.size(), 1u);  // the second page differs in its last token
  EXPECT_EQ(m[0], table[0]);
  EXPECT_EQ(bm.ref_count(table[0]), 2);
  EXPECT_EQ(bm.match_prefix(a, 1).size(), 1u);  // max_pages bounds the match
  bm.release(std::vector<int32_t>{table[0]});
  // The first sequence ends: cached pages stay, unreferenced (evictable); the partial page is free.
  bm.release(m);
  bm.release(table);
  EXPECT_EQ(bm.n_used(), 0);
  EXPECT_EQ(bm.n_available(), 8);
  auto again = bm.match_prefix(a, 10);
  EXPECT_EQ(again.size(), 2u);
  bm.release(again);
  // Taking every page evicts the cached ones last (free pages first), then LRU.
  std::vector<int32_t> all;
  for (int i = 0; i < 8; ++i) all.push_back(bm.allocate());
  EXPECT_EQ(bm.allocate(), -1);
  EXPECT_EQ(bm.n_cached(), 0);
  EXPECT_TRUE(bm.match_prefix(a, 10).empty());
}

TEST(BlockManager, PageWithADifferentParentIsNotShared) {
  BlockManager bm(8, 2);
  std::vector<int32_t> a = {1, 2, 3, 4}, b = {9, 9, 3, 4};
  std::vector<int32_t> ta = {bm.allocate(), bm.allocate()};
  bm.register_page(a, ta, 0);
  bm.register_page(a, ta, 1);
  std::vector<int32_t> tb = {bm.allocate(), bm.allocate()};
  bm.register_page(b, tb, 0);
  bm.register_page(b, tb, 1);
  EXPECT_EQ(bm.n_cached(), 4);
  auto m = bm.match_prefix(b, 2);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[1], tb[1]);
  bm.release(m);
}

struct Collected {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  std::string text;
  SeqFinish finish = SeqFinish::kNone;
  int n_cached = -1;
  int events = 0;
  SeqCallback callback() {
    return [this](const SeqEvent& ev) {
      std::lock_guard<std::mutex> lk(mu);
      for (const auto& t : ev.tokens) tokens.push_back(t.id);
      text += ev.text;
      n_cached = ev.n_cached;
      ++events;
      if (ev.finish != SeqFinish::kNone) {
        finish = ev.finish;
        cv.notify_all();
      }
    };
  }
  bool wait(double seconds = 120) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, std::chrono::duration<double>(seconds), [&] { return finish != SeqFinish::kNone; });
  }
};

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::model_exists(test::kSmolLM2)) GTEST_SKIP() << "model not found: run scripts/fetch_models.sh";
  }
  std::unique_ptr<LoadedModel> load(int64_t kv_bytes = 0, int n_ctx = 512) {
    LoadOptions o;
    o.n_ctx = n_ctx;
    o.n_seqs = 8;
    o.kv_bytes = kv_bytes;
    auto lm = LoadedModel::load(test::model_path(test::kSmolLM2), o);
    EXPECT_TRUE(lm) << lm.error().message;
    return std::move(*lm);
  }
  static std::vector<std::vector<int32_t>> prompts(const LoadedModel& lm) {
    const char* texts[] = {"What is the capital of France?", "List three primary colors.",
                           "Write a haiku about autumn leaves.", "Explain why the sky is blue.",
                           "What is 17 plus 25?", "Name a famous playwright.",
                           "Give me a short poem about the sea.", "How many days are in a leap year?"};
    std::vector<std::vector<int32_t>> out;
    for (const char* t : texts) {
      nlohmann::json msgs = nlohmann::json::array({{{"role", "user"}, {"content", t}}});
      out.push_back(*lm.tokenize_chat(msgs, true));
    }
    return out;
  }
  static SeqRequest greedy(std::vector<int32_t> prompt, int max_tokens) {
    SeqRequest r;
    r.prompt = std::move(prompt);
    r.max_tokens = max_tokens;
    r.sampling.temperature = 0;
    return r;
  }
};

TEST_F(SchedulerTest, ConcurrentGreedySequencesEqualEachAlone) {
  auto lm = load();
  auto ps = prompts(*lm);
  std::vector<std::vector<int32_t>> alone;
  {
    SchedulerOptions so;
    so.prefix_caching = false;
    Scheduler sch(*lm, so);
    sch.start();
    for (auto& p : ps) {
      Collected c;
      ASSERT_TRUE(sch.submit(greedy(p, 24), c.callback()));
      ASSERT_TRUE(c.wait());
      EXPECT_NE(c.finish, SeqFinish::kError);
      alone.push_back(c.tokens);
    }
  }
  // Together, with a small step budget so prompts are chunked and mixed with decodes, and the
  // prefix cache on (all prompts share the chat template's first page or so).
  SchedulerOptions so;
  so.max_batch_tokens = 40;
  Scheduler sch(*lm, so);
  sch.start();
  std::vector<std::unique_ptr<Collected>> cs;
  for (int round = 0; round < 2; ++round) {
    for (auto& p : ps) {
      cs.push_back(std::make_unique<Collected>());
      ASSERT_TRUE(sch.submit(greedy(p, 24), cs.back()->callback()));
    }
  }
  for (size_t i = 0; i < cs.size(); ++i) {
    ASSERT_TRUE(cs[i]->wait());
    EXPECT_EQ(cs[i]->tokens, alone[i % ps.size()]) << "prompt " << i % ps.size() << " round " << i / ps.size();
  }
  EXPECT_EQ(sch.stats().kv_blocks_used, 0);
  // All 16 were admitted in the first step, before any page was cached. The same prompt again is served from the prefix cache and gives the same tokens.
  Collected again;
  ASSERT_TRUE(sch.submit(greedy(ps[3], 24), again.callback()));
  ASSERT_TRUE(again.wait());
  EXPECT_GT(again.n_cached, 0);
  EXPECT_EQ(again.tokens, alone[3]);
  EXPECT_GT(sch.stats().prefix_hits, 0);
}

TEST_F(SchedulerTest, PreemptsUnderATightKvBudgetAndLosesNothing) {
  // Room for one context of 256 tokens (16 pages): eight sequences cannot all hold their pages.
  auto probe = load(0, 256);
  const int64_t per_block = KvCache::bytes_per_block(probe->model().kv_shape(16));
  probe.reset();
  auto lm = load(per_block * 16, 256);
  auto ps = prompts(*lm);
  SchedulerOptions so;
  so.max_batch_tokens = 64;
  Scheduler sch(*lm, so);
  sch.start();
  std::vector<std::unique_ptr<Collected>> cs;
  for (auto& p : ps) {
    cs.push_back(std::make_unique<Collected>());
    SeqRequest r = greedy(p, 64);
    r.ignore_eos = true;
    ASSERT_TRUE(sch.submit(std::move(r), cs.back()->callback()));
  }
  for (auto& c : cs) {
    ASSERT_TRUE(c->wait());
    EXPECT_EQ(c->finish, SeqFinish::kLength);
    EXPECT_EQ(c->tokens.size(), 64u);
  }
  const auto st = sch.stats();
  EXPECT_GT(st.preemptions, 0);
  EXPECT_EQ(st.kv_blocks_used, 0);
  std::printf("[ scheduler ] %lld preemptions, %lld steps\n", static_cast<long long>(st.preemptions),
              static_cast<long long>(st.steps));
}

TEST_F(SchedulerTest, CancelEndsWithAbortAndFreesPages) {
  auto lm = load();
  auto ps = prompts(*lm);
  Scheduler sch(*lm, SchedulerOptions{});
  sch.start();
  Collected c;
  std::promise<void> first;
  bool fired = false;
  auto inner = c.callback();
  auto id = sch.submit(greedy(ps[0], 400), [&](const SeqEvent& ev) {
    inner(ev);
    if (!fired) {
      fired = true;
      first.set_value();
    }
  });
  ASSERT_TRUE(id);
  first.get_future().wait();
  sch.cancel(*id);
  ASSERT_TRUE(c.wait());
  EXPECT_EQ(c.finish, SeqFinish::kAbort);
  EXPECT_LT(c.tokens.size(), 400u);
  EXPECT_EQ(sch.stats().kv_blocks_used, 0);
}

TEST_F(SchedulerTest, RefusesBadRequestsAndAFullQueue) {
  auto lm = load(0, 64);
  SchedulerOptions so;
  so.max_waiting = 1;
  Scheduler sch(*lm, so);  // not started: nothing leaves the queue
  Collected c;
  EXPECT_FALSE(sch.submit(greedy({}, 4), c.callback()));
  EXPECT_FALSE(sch.submit(greedy(std::vector<int32_t>(64, 1), 4), c.callback()));  // no room to generate
  EXPECT_FALSE(sch.submit(greedy({1, 2}, 0), c.callback()));
  EXPECT_FALSE(sch.submit(greedy({1, 1 << 30}, 4), c.callback()));
  bool full = false;
  EXPECT_TRUE(sch.submit(greedy({1, 2}, 4), c.callback(), &full));
  EXPECT_FALSE(full);
  EXPECT_FALSE(sch.submit(greedy({1, 2}, 4), c.callback(), &full));
  EXPECT_TRUE(full);
}

}  // namespace
}  // namespace fennec::engine
