#include "engine/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/block_manager.h"
#include "engine/loaded_model.h"
#include "engine/stop_matcher.h"
#include "metering/meter.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace fennec::engine {

const char* seq_finish_name(SeqFinish f) {
  switch (f) {
    case SeqFinish::kStop: return "stop";
    case SeqFinish::kLength: return "length";
    case SeqFinish::kAbort: return "abort";
    case SeqFinish::kError: return "error";
    case SeqFinish::kNone: break;
  }
  return "none";
}

namespace {

// No NaN or Inf (exponent bits all ones) among the values.
bool all_finite(const std::vector<float>& v) {
  uint32_t bad = 0;
  for (float x : v) {
    uint32_t b;
    std::memcpy(&b, &x, 4);
    bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

struct Seq {
  uint64_t id = 0;
  SeqRequest req;
  SeqCallback cb;
  std::vector<int32_t> history;  // prompt + generated
  int32_t n_prompt = 0;          // the request's prompt
  int32_t n_feed = 0;            // tokens fed as prompt (prompt, plus generated ones after a preemption)
  int32_t n_done = 0;            // tokens whose K/V are in the cache
  // Held and resumed (hold()): history[n_feed, n_replay) were sent already and are fed again one
  // per step, as they were decoded, without sampling: the same bits as before the hold.
  int32_t n_replay = 0;
  std::vector<int32_t> blocks;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<tokenizer::IncrementalDetokenizer> detok;
  std::unique_ptr<StopMatcher> stop;
  int n_generated = 0;
  int n_cached = 0;
  bool admitted_once = false;
  SeqEvent ev;  // the event being built this step
  bool done = false;
  metering::Usage usage;  // energy and cost so far (metered runs)
};

}  // namespace

struct Scheduler::Impl {
  Impl(LoadedModel& m, SchedulerOptions o)
      : lm(m), opts(o), bm(m.kv().n_blocks(), m.kv().shape().block_size, o.prefix_caching) {}

  LoadedModel& lm;
  SchedulerOptions opts;
  BlockManager bm;

  // Shared with other threads.
  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Seq>> inbox;
  std::vector<uint64_t> cancels;
  bool stopping = false;
  bool holding = false;      // hold()
  bool fail_pending = false;  // fail_all(), done at the next step
  std::string fail_error;
  uint64_t next_id = 1;
  int64_t n_queued = 0;  // inbox + waiting, for admission control
  SchedulerStats stats;
  std::thread thread;

  // Engine thread only.
  std::deque<std::unique_ptr<Seq>> waiting;
  std::vector<std::unique_ptr<Seq>> running;  // in admission order
  std::vector<float> logits;

  void run();
  bool step();
  bool admit(Seq& s);
  void preempt(size_t running_index, bool replay = false);
  void finish(Seq& s, SeqFinish f, std::string error = {});
  void add_text(Seq& s, const std::string& piece);
  bool ensure_page(size_t running_index, int32_t pos);
  void publish_stats();
};

Scheduler::Scheduler(LoadedModel& model, SchedulerOptions opts) {
  opts.max_seqs = std::max(1, opts.max_seqs);
  opts.max_batch_tokens = std::max(opts.max_batch_tokens, opts.max_seqs + 2);
  impl_ = std::make_unique<Impl>(model, opts);
  impl_->stats.kv_blocks_total = model.kv().n_blocks();
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::start() {
  if (impl_->thread.joinable()) return;
  impl_->thread = std::thread([this] { impl_->run(); });
}

void Scheduler::stop() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int Scheduler::n_ctx() const { return impl_->lm.n_ctx(); }

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->stats;
}

Expected<uint64_t> Scheduler::submit(SeqRequest req, SeqCallback cb, bool* queue_full) {
  if (queue_full) *queue_full = false;
  const int n_ctx = impl_->lm.n_ctx();
  const int n_vocab = impl_->lm.model().hparams().n_vocab;
  if (req.prompt.empty()) return make_error("the prompt is empty");
  for (int32_t t : req.prompt)
    if (t < 0 || t >= n_vocab)
      return make_error("prompt token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                        std::to_string(n_vocab - 1) + ")");
  if (static_cast<int64_t>(req.prompt.size()) + 1 > n_ctx)
    return make_error("the prompt is " + std::to_string(req.prompt.size()) + " tokens and the context is " +
                      std::to_string(n_ctx) + ": shorten the prompt or raise --ctx");
  if (req.max_tokens < 1) return make_error("max_tokens must be at least 1");
  if (auto s = req.sampling.validate(n_vocab); !s) return s.error();
  auto seq = std::make_unique<Seq>();
  seq->history = req.prompt;
  seq->n_prompt = static_cast<int32_t>(req.prompt.size());
  seq->n_feed = seq->n_prompt;
  seq->sampler = std::make_unique<Sampler>(req.sampling);
  seq->detok = std::make_unique<tokenizer::IncrementalDetokenizer>(impl_->lm.tokenizer(), true);
  seq->stop = std::make_unique<StopMatcher>(req.stop);
  seq->req = std::move(req);
  seq->cb = std::move(cb);
  uint64_t id;
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    if (impl_->stopping) return make_error("the server is shutting down");
    if (impl_->holding)
      return make_error("the device is unhealthy and the engine is held (docs/ras.md): retry later");
    if (impl_->n_queued >= impl_->opts.max_waiting) {
      if (queue_full) *queue_full = true;
      return make_error("the request queue is full (" + std::to_string(impl_->opts.max_waiting) +
                        " waiting): retry later");
    }
    id = impl_->next_id++;
    seq->id = id;
    impl_->inbox.push_back(std::move(seq));
    ++impl_->n_queued;
  }
  impl_->cv.notify_one();
  return id;
}

void Scheduler::hold(bool on) {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->holding = on;
    impl_->stats.held = on;
  }
  impl_->cv.notify_one();
}

void Scheduler::fail_all(std::string error) {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->fail_pending = true;
    impl_->fail_error = std::move(error);
  }
  impl_->cv.notify_one();
}

void Scheduler::cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->cancels.push_back(id);
  }
  impl_->cv.notify_one();
}

void Scheduler::Impl::add_text(Seq& s, const std::string& piece) {
  if (piece.empty()) return;
  auto out = s.stop->push(piece);
  s.ev.text += out.text;
  if (out.stopped) s.done = true;
}

void Scheduler::Impl::finish(Seq& s, SeqFinish f, std::string error) {
  if (f == SeqFinish::kStop || f == SeqFinish::kLength) {
    add_text(s, s.detok->flush());
    if (!s.stop->stopped()) s.ev.text += s.stop->flush();
  }
  s.ev.finish = f;
  s.ev.error = std::move(error);
  s.done = true;
  bm.release(s.blocks);
  s.blocks.clear();
}

bool Scheduler::Impl::admit(Seq& s) {
  const int bs = bm.block_size();
  const int64_t len = static_cast<int64_t>(s.history.size());
  // Leave at least two tokens to compute, so no prompt token ever runs as a lone query.
  const int64_t max_pages = len >= 2 ? (len - 2) / bs : 0;
  std::vector<int32_t> got = bm.match_prefix(s.history, max_pages);
  const int64_t n_matched = static_cast<int64_t>(got.size());
  const int64_t need = (len + bs - 1) / bs;
  while (static_cast<int64_t>(got.size()) < need) {
    const int32_t b = bm.allocate();
    if (b < 0) {
      bm.release(got);
      return false;
    }
    got.push_back(b);
  }
  s.blocks = std::move(got);
  s.n_done = static_cast<int32_t>(n_matched * bs);
  if (!s.admitted_once) {
    s.n_cached = s.n_done;
    s.admitted_once = true;
    std::lock_guard<std::mutex> lk(mu);
    stats.prefix_queries += len;
    stats.prefix_hits += s.n_done;
  }
  return true;
}

void Scheduler::Impl::preempt(size_t i, bool replay) {
  std::unique_ptr<Seq> s = std::move(running[i]);
  running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
  bm.release(s->blocks);
  s->blocks.clear();
  s->n_done = 0;
  if (replay) {
    // The prompt as it was fed, then the generated tokens one per step, as they were decoded:
    // the K/V and the next logits come out bit for bit as they were (a prompt chunk's attention
    // sums in another order than a one-query decode).
    s->n_replay = static_cast<int32_t>(s->history.size());
  } else {
    s->n_feed = static_cast<int32_t>(s->history.size());
    s->n_replay = 0;
  }
  waiting.push_front(std::move(s));
  std::lock_guard<std::mutex> lk(mu);
  ++stats.preemptions;
  ++n_queued;
}

// Makes sure running[i] has a page for position pos, preempting the newest sequences if pages
// have run out. Returns false if running[i] itself was preempted.
bool Scheduler::Impl::ensure_page(size_t i, int32_t pos) {
  const int bs = bm.block_size();
  Seq* s = running[i].get();
  while (static_cast<int64_t>(s->blocks.size()) * bs <= pos) {
    const int32_t b = bm.allocate();
    if (b >= 0) {
      s->blocks.push_back(b);
      continue;
    }
    const size_t victim = running.size() - 1;
    preempt(victim);
    if (victim == i) return false;
  }
  return true;
}

void Scheduler::Impl::publish_stats() {
  std::lock_guard<std::mutex> lk(mu);
  stats.running = static_cast<int64_t>(running.size());
  stats.waiting = n_queued;
  stats.kv_blocks_used = bm.n_used();
}

bool Scheduler::Impl::step() {
  // 1. New requests and cancellations.
  std::vector<uint64_t> cancel_ids;
  {
    std::lock_guard<std::mutex> lk(mu);
    while (!inbox.empty()) {
      waiting.push_back(std::move(inbox.front()));
      inbox.pop_front();
    }
    cancel_ids.swap(cancels);
  }
  std::vector<std::unique_ptr<Seq>> ended;
  if (!cancel_ids.empty()) {
    auto cancelled = [&](const Seq& s) {
      return std::find(cancel_ids.begin(), cancel_ids.end(), s.id) != cancel_ids.end();
    };
    for (size_t i = 0; i < running.size();) {
      if (cancelled(*running[i])) {
        finish(*running[i], SeqFinish::kAbort);
        ended.push_back(std::move(running[i]));
        running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
    for (size_t i = 0; i < waiting.size();) {
      if (cancelled(*waiting[i])) {
        finish(*waiting[i], SeqFinish::kAbort);
        ended.push_back(std::move(waiting[i]));
        waiting.erase(waiting.begin() + static_cast<std::ptrdiff_t>(i));
        std::lock_guard<std::mutex> lk(mu);
        --n_queued;
      } else {
        ++i;
      }
    }
  }

  // Held or failed (docs/ras.md): nothing is computed on an unhealthy device.
  bool held = false, fail = false;
  std::string fail_msg;
  {
    std::lock_guard<std::mutex> lk(mu);
    held = holding;
    fail = fail_pending;
    fail_pending = false;
    fail_msg = fail_error;
  }
  if (fail) {
    for (auto& s : running) {
      finish(*s, SeqFinish::kError, fail_msg);
      ended.push_back(std::move(s));
    }
    running.clear();
    for (auto& s : waiting) {
      finish(*s, SeqFinish::kError, fail_msg);
      ended.push_back(std::move(s));
      std::lock_guard<std::mutex> lk(mu);
      --n_queued;
    }
    waiting.clear();
  }
  if (held && !running.empty()) {
    const auto n = static_cast<int64_t>(running.size());
    for (size_t i = running.size(); i-- > 0;) preempt(i, true);  // newest first: the queue keeps their order
    std::lock_guard<std::mutex> lk(mu);
    stats.held_requeued += n;
  }

  // 2. Admission, first come first served.
  while (!held && static_cast<int>(running.size()) < opts.max_seqs && !waiting.empty()) {
    if (!admit(*waiting.front())) break;
    running.push_back(std::move(waiting.front()));
    waiting.pop_front();
    std::lock_guard<std::mutex> lk(mu);
    --n_queued;
  }

  // 3. The step's batch: one token per decoding sequence, then prompt chunks.
  model::Batch batch;
  std::vector<Seq*> members;
  int64_t budget = opts.max_batch_tokens;
  for (size_t i = 0; i < running.size();) {
    Seq* s = running[i].get();
    if (s->n_done < s->n_feed) {
      ++i;
      continue;
    }
    if (!ensure_page(i, s->n_done)) continue;  // s was preempted
    ++i;
  }
  for (auto& up : running) {
    Seq* s = up.get();
    if (s->n_done < s->n_feed) continue;
    batch.add(std::span<const int32_t>(s->history.data() + s->n_done, 1), s->n_done, s->blocks, 1);
    members.push_back(s);
    --budget;
  }
  for (auto& up : running) {
    Seq* s = up.get();
    if (s->n_done >= s->n_feed) continue;
    const int64_t pending = s->n_feed - s->n_done;
    int64_t take = std::min(pending, budget);
    if (pending > 1) {
      if (pending - take == 1) --take;  // never leave a lone prompt token for later
      if (take < 2) continue;
    }
    if (take <= 0) continue;
    const bool completes = take == pending;
    batch.add(std::span<const int32_t>(s->history.data() + s->n_done, static_cast<size_t>(take)), s->n_done,
              s->blocks, completes ? 1 : 0);
    members.push_back(s);
    budget -= take;
  }

  if (!members.empty()) {
    const auto& tok = lm.tokenizer();
    const int n_vocab = lm.model().hparams().n_vocab;
    if (opts.meter) opts.meter->begin_step();
    const auto t_step = std::chrono::steady_clock::now();
    auto st = lm.model().forward(batch, lm.kv(), lm.pool(), logits, opts.matmul_observer);
    // NaN guard: a non-finite logit is a fault (a flipped bit, a bad kernel path), never a
    // valid output. The step is recomputed once: it rewrites the same K/V positions, so a
    // transient fault leaves no trace; a fault that repeats ends the step's sequences with an
    // error. A failed step_failed check (ABFT) is treated the same way.
    if (st && opts.logits_fault) opts.logits_fault(logits, 0);
    bool check_failed = opts.step_failed && opts.step_failed();  // asked every pass: it resets
    if (st && (check_failed || !all_finite(logits))) {
      st = lm.model().forward(batch, lm.kv(), lm.pool(), logits, opts.matmul_observer);
      if (st && opts.logits_fault) opts.logits_fault(logits, 1);
      check_failed = opts.step_failed && opts.step_failed();
      const bool finite = all_finite(logits);
      const bool fixed = st && finite && !check_failed;
      {
        std::lock_guard<std::mutex> lk(mu);
        ++(fixed ? stats.numeric_recomputed : stats.numeric_failed);
      }
      if (st && !fixed)
        st = make_error(
            !finite
                ? "the model produced NaN/Inf logits twice for the same step (a numerical fault on "
                  "this machine): retry the request"
                : "a weight product failed its checksum (ABFT) twice in the same step (a "
                  "numerical fault on this machine): retry the request");
    }
    // Sampling runs in parallel over the sequences (each has its own sampler and constraint;
    // a full-vocabulary pass per sequence is the bulk of it); what follows is serial.
    struct Pick {
      int64_t row = -1;  // logits row, -1: no token this step
      bool dead_end = false;
      Sampler::Result r{};
      std::vector<std::pair<int32_t, float>> top;
    };
    std::vector<Pick> picks(members.size());
    if (st) {
      int64_t next_row = 0;
      for (size_t m = 0; m < members.size(); ++m)
        if (batch.seqs[m].n_logits > 0) {
          const int64_t row = next_row++;
          // A replayed token's successor is known: no sampling (hold()).
          if (members[m]->n_done + batch.seqs[m].n_tokens >= members[m]->n_replay) picks[m].row = row;
        }
      lm.pool().parallel_for(static_cast<int64_t>(members.size()), [&](int64_t m0, int64_t m1) {
        thread_local std::vector<uint8_t> allowed;
        for (int64_t m = m0; m < m1; ++m) {
          Pick& pk = picks[static_cast<size_t>(m)];
          if (pk.row < 0) continue;
          Seq& s = *members[static_cast<size_t>(m)];
          float* row = logits.data() + pk.row * n_vocab;
          if (s.req.constraint) {
            allowed.assign(static_cast<size_t>(n_vocab), 0);
            s.req.constraint->allowed_tokens(allowed);
            bool any = false;
            for (int v = 0; v < n_vocab; ++v) {
              if (!allowed[static_cast<size_t>(v)]) {
                row[v] = -std::numeric_limits<float>::infinity();
              } else {
                any = true;
              }
            }
            if (!any) {
              pk.dead_end = true;
              continue;
            }
          }
          pk.r = s.sampler->sample(row, n_vocab, s.history);
          if (s.req.top_logprobs > 0)
            pk.top = Sampler::top_logprobs(s.sampler->processed_logits().data(), n_vocab, s.req.top_logprobs);
        }
      });
    }
    if (opts.meter) {
      const double busy = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_step).count();
      std::vector<metering::StepMeter::Share> shares(members.size());
      for (size_t m = 0; m < members.size(); ++m) shares[m] = {members[m]->id, batch.seqs[m].n_tokens};
      const auto used = opts.meter->end_step(busy, shares);
      for (size_t m = 0; m < members.size(); ++m) members[m]->usage.add(used[m]);
    }
    int64_t n_prompt_tok = 0, n_gen_tok = 0;
    for (size_t m = 0; m < members.size(); ++m) {
      Seq& s = *members[m];
      const auto& sq = batch.seqs[m];
      if (!st) {
        finish(s, SeqFinish::kError, st.error().message);
        continue;
      }
      s.n_done += sq.n_tokens;
      if (sq.n_tokens > 1 || s.n_done <= s.n_feed) n_prompt_tok += sq.n_tokens;
      // Full pages of fed tokens are now computed: offer them to the prefix cache.
      const int bs = bm.block_size();
      const int64_t full = std::min(s.n_done, s.n_feed) / bs;
      for (int64_t p = (s.n_done - sq.n_tokens) / bs; p < full; ++p) bm.register_page(s.history, s.blocks, p);
      Pick& pk = picks[m];
      if (pk.row < 0) continue;
      if (pk.dead_end) {
        finish(s, s.req.constraint->is_complete() ? SeqFinish::kStop : SeqFinish::kError,
               s.req.constraint->is_complete() ? "" : "structured output: no token can continue the output");
        continue;
      }
      const auto& r = pk.r;
      ++n_gen_tok;
      if (tok.is_eog(r.token) && (!s.req.ignore_eos || s.req.constraint)) {
        ++s.n_generated;  // counted in usage as vLLM counts it, but not streamed as text
        finish(s, SeqFinish::kStop);
        continue;
      }
      TokenOut out{r.token, r.logprob, std::move(pk.top)};
      s.ev.tokens.push_back(std::move(out));
      s.history.push_back(r.token);
      ++s.n_generated;
      if (s.req.constraint) s.req.constraint->accept(r.token);
      add_text(s, s.detok->push(r.token));
      if (s.done) {
        finish(s, SeqFinish::kStop);
      } else if (s.n_generated >= s.req.max_tokens ||
                 static_cast<int64_t>(s.history.size()) >= lm.n_ctx()) {
        finish(s, SeqFinish::kLength);
      }
    }
    std::lock_guard<std::mutex> lk(mu);
    ++stats.steps;
    stats.prompt_tokens += n_prompt_tok;
    stats.generated_tokens += n_gen_tok;
  }

  // 4. Events, then drop finished sequences.
  for (size_t i = 0; i < running.size();) {
    Seq& s = *running[i];
    if (s.done) {
      ended.push_back(std::move(running[i]));
      running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    }
    if (!s.ev.tokens.empty() || !s.ev.text.empty()) {
      s.ev.n_prompt = s.n_prompt;
      s.ev.n_generated = s.n_generated;
      s.ev.n_cached = s.n_cached;
      s.cb(s.ev);
    }
    s.ev = SeqEvent{};
    ++i;
  }
  publish_stats();
  for (auto& s : ended) {
    s->ev.n_prompt = s->n_prompt;
    s->ev.n_generated = s->n_generated;
    s->ev.n_cached = s->n_cached;
    if (opts.meter) {
      s->ev.energy_joules = s->usage.joules;
      s->ev.cost_usd = s->usage.cost_usd;
      s->ev.energy_source = metering::energy_source_name(s->usage.empty ? opts.meter->source() : s->usage.source);
    }
    s->cb(s->ev);
  }
  return !members.empty() || !ended.empty();
}

void Scheduler::Impl::run() {
  while (true) {
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait(lk, [&] {
        return stopping || !cancels.empty() || fail_pending || !running.empty() ||
               (!holding && (!inbox.empty() || !waiting.empty()));
      });
      if (stopping) break;
    }
    step();
  }
  // Shutdown: everything still here ends as aborted.
  {
    std::lock_guard<std::mutex> lk(mu);
    while (!inbox.empty()) {
      waiting.push_back(std::move(inbox.front()));
      inbox.pop_front();
    }
  }
  for (auto& s : running) {
    finish(*s, SeqFinish::kAbort);
    s->cb(s->ev);
  }
  running.clear();
  for (auto& s : waiting) {
    finish(*s, SeqFinish::kAbort);
    s->cb(s->ev);
  }
  waiting.clear();
  std::lock_guard<std::mutex> lk(mu);
  n_queued = 0;
  stats.running = stats.waiting = 0;
}

}  // namespace fennec::engine
