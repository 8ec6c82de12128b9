#include "ras/canary.h"

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>

#include "engine/scheduler.h"

namespace fennec::ras {

namespace {

double steady_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string tokens_text(const std::vector<int32_t>& t, size_t from) {
  std::string s;
  for (size_t i = from; i < t.size() && i < from + 4; ++i) {
    if (!s.empty()) s += ' ';
    s += std::to_string(t[i]);
  }
  return s;
}

}  // namespace

Canary::Canary(RunFn run, double every_s, std::function<double()> clock)
    : run_(std::move(run)), every_s_(every_s), clock_(clock ? std::move(clock) : steady_s) {}

std::vector<Sample> Canary::read() {
  const double now = clock_();
  if (runs_ == 0 || now - last_run_ >= every_s_) {
    last_run_ = now;
    ++runs_;
    auto got = run_();
    if (!got) {
      last_error_ = "the canary run failed: " + got.error().message;
    } else if (!have_reference_) {
      reference_ = std::move(*got);
      have_reference_ = true;
      last_error_.clear();
    } else {
      last_error_.clear();
      if (*got != reference_) {
        ++mismatches_;
        size_t i = 0;
        while (i < got->size() && i < reference_.size() && (*got)[i] == reference_[i]) ++i;
        last_mismatch_ = "canary answer changed at token " + std::to_string(i) + ": expected [" +
                         tokens_text(reference_, i) + "], got [" + tokens_text(*got, i) + "]";
      }
    }
  }
  Sample s;
  s.device = "engine";
  s.name = "canary_mismatches";
  s.kind = Kind::kCriticalEvents;
  s.text = last_mismatch_;
  if (!last_error_.empty())
    s.why = last_error_;
  else if (!have_reference_)
    s.why = "no reference answer yet";
  else
    s.value = static_cast<double>(mismatches_);
  return {s};
}

Canary::RunFn scheduler_canary(engine::Scheduler& scheduler, std::vector<int32_t> prompt,
                               int n_tokens, double timeout_s) {
  return [&scheduler, prompt = std::move(prompt), n_tokens,
          timeout_s]() -> Expected<std::vector<int32_t>> {
    // Shared with the callback, which may outlive a timed-out wait.
    struct State {
      std::mutex mu;
      std::condition_variable cv;
      std::vector<int32_t> tokens;
      engine::SeqFinish finish = engine::SeqFinish::kNone;
      std::string error;
    };
    auto st = std::make_shared<State>();
    engine::SeqRequest req;
    req.prompt = prompt;
    req.max_tokens = n_tokens;
    req.sampling.temperature = 0;
    req.ignore_eos = true;
    auto id = scheduler.submit(std::move(req), [st](const engine::SeqEvent& ev) {
      std::lock_guard<std::mutex> lk(st->mu);
      for (const auto& t : ev.tokens) st->tokens.push_back(t.id);
      if (ev.finish != engine::SeqFinish::kNone) {
        st->finish = ev.finish;
        st->error = ev.error;
        st->cv.notify_all();
      }
    });
    if (!id) return id.error();
    std::unique_lock<std::mutex> lk(st->mu);
    if (!st->cv.wait_for(lk, std::chrono::duration<double>(timeout_s),
                         [&] { return st->finish != engine::SeqFinish::kNone; })) {
      lk.unlock();
      scheduler.cancel(*id);
      return make_error("no answer within " + std::to_string(static_cast<int>(timeout_s)) + " s");
    }
    if (st->finish != engine::SeqFinish::kLength)
      return make_error(std::string("the canary ended with ") +
                        engine::seq_finish_name(st->finish) +
                        (st->error.empty() ? "" : ": " + st->error));
    return st->tokens;
  };
}

}  // namespace fennec::ras
