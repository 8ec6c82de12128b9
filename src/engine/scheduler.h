// The serving engine: one thread that owns the KV cache and runs continuous batching. Requests
// (one sequence each; the server submits n sequences for n choices) join the running batch at
// any step and leave it when they finish. A step carries one token for every decoding sequence
// plus chunks of prompts, up to a token budget. Prompt pages are shared between requests through
// the BlockManager's prefix cache. When pages run out, the newest running sequence is preempted:
// its pages are freed and it is recomputed later from its prompt plus what it has generated, so
// nothing is lost. Results stream back through a callback called on the engine thread, which
// must not block (the server posts the event to the connection's strand).
//
// A sequence's output does not depend on what else is in the batch or on how its prompt is
// chunked: matrix products are per token row, and prompt tokens always go through attention in
// chunks of two or more queries (never a lone prompt token, whose scores would take ggml's
// one-query order), so prefix-cache hits and different chunkings give the same bits.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/expected.h"
#include "engine/constraint.h"
#include "engine/sampler.h"
#include "model/model.h"

namespace fennec::metering {
class StepMeter;
}

namespace fennec::engine {

class LoadedModel;

enum class SeqFinish { kNone, kStop, kLength, kAbort, kError };
const char* seq_finish_name(SeqFinish f);  // "stop", "length", "abort", "error"

struct SeqRequest {
  std::vector<int32_t> prompt;
  int max_tokens = 16;  // >= 1; the scheduler also stops at the context size
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  int top_logprobs = -1;  // -1: no logprobs; 0..20: chosen token's logprob plus that many others
  std::unique_ptr<TokenConstraint> constraint;  // structured output, may be null
};

struct TokenOut {
  int32_t id = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;  // when top_logprobs > 0
};

// What one step produced for one sequence.
struct SeqEvent {
  std::string text;             // new text (stop strings held back / removed)
  std::vector<TokenOut> tokens;  // tokens sampled this step (EOS and stop tokens excluded)
  SeqFinish finish = SeqFinish::kNone;  // != kNone: this is the last event
  std::string error;            // for kError
  int n_prompt = 0;
  int n_generated = 0;          // sampled tokens, an ending EOS included (OpenAI usage)
  int n_cached = 0;             // prompt tokens served from the prefix cache
  // Metered runs (SchedulerOptions::meter), in the last event: the sequence's energy and cost.
  double energy_joules = 0, cost_usd = 0;
  const char* energy_source = nullptr;  // "measured" / "estimated"; null: not metered
};
using SeqCallback = std::function<void(const SeqEvent&)>;

struct SchedulerOptions {
  int max_seqs = 64;           // sequences in the running batch
  int max_batch_tokens = 512;  // tokens per step (decodes plus prompt chunks)
  int max_waiting = 4096;      // queued sequences beyond which submit() refuses
  bool prefix_caching = true;
  metering::StepMeter* meter = nullptr;  // energy and cost per step, split by tokens (may be null)
  // Fault injection (tests): sees the logits of every forward pass (attempt 0, and 1 when the
  // NaN guard recomputes the step) and may corrupt them.
  std::function<void(std::vector<float>& logits, int attempt)> logits_fault;
  // Sees every weight product of every step (e.g. the ABFT check, src/ras/abft.h); may be null.
  model::MatmulObserver* matmul_observer = nullptr;
  // Asked after every forward pass (first try and recompute): true when a check during the pass
  // failed (e.g. ras::AbftObserver::take_failed), so the pass is untrusted. The step is then
  // recomputed as the NaN guard does, and fails its sequences if the recompute fails too.
  std::function<bool()> step_failed;
};

struct SchedulerStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_total = 0, kv_blocks_used = 0;
  int64_t prefix_queries = 0, prefix_hits = 0;  // prompt tokens looked up / found
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t steps = 0;
  // NaN guard: steps whose logits had a NaN/Inf (or whose step_failed check failed), fixed by
  // recomputing the step / not fixed (their sequences end with an error). A RAS signal: see
  // docs/ras.md.
  int64_t numeric_recomputed = 0, numeric_failed = 0;
  // hold(): whether the engine is held, and the running sequences it moved back to the queue.
  bool held = false;
  int64_t held_requeued = 0;
};

class Scheduler {
 public:
  Scheduler(LoadedModel& model, SchedulerOptions opts);
  ~Scheduler();  // stop()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  void start();
  // Ends the engine thread; sequences still queued or running get a kAbort event.
  void stop();

  // Thread-safe. Checks the request (prompt not empty, prompt + 1 within the context, sampling
  // ranges) and queues it; errors are the caller's fault (400), except when the queue is full:
  // then *queue_full is set (the server answers 429). The callback is never called for a
  // request that submit() refused.
  Expected<uint64_t> submit(SeqRequest req, SeqCallback cb, bool* queue_full = nullptr);
  // Thread-safe. The sequence ends with kAbort and its pages are freed before the next step.
  void cancel(uint64_t id);

  // Thread-safe. While held (the device is unhealthy: docs/ras.md), the engine runs no step:
  // running sequences go back to the queue with their pages freed, keeping what they generated
  // (as a preemption does), and submit() refuses new requests. hold(false) resumes them: each
  // recomputes its prompt, then the tokens it already sent one per step as they were decoded
  // (same bits, no sampling), and continues, so no token is sent twice and none is lost.
  // Cancellations are still honoured while held.
  void hold(bool on);
  // Thread-safe. Ends every queued, held and running sequence with kError and `error` (recovery
  // failed); each gets its last event exactly once.
  void fail_all(std::string error);

  SchedulerStats stats() const;  // thread-safe snapshot
  int n_ctx() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fennec::engine
