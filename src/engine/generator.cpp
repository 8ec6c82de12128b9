#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include "engine/stop_matcher.h"

namespace fennec::engine {

const char* finish_reason_name(FinishReason r) { return r == FinishReason::kStop ? "stop" : "length"; }

Generator::Generator(const model::Model& model, const tokenizer::Tokenizer& tok, KvCache& kv,
                     ThreadPool& pool, int max_batch_tokens)
    : model_(model), tok_(tok), kv_(kv), pool_(pool), max_batch_tokens_(std::max(1, max_batch_tokens)) {}

namespace {

struct Active {
  const GenerationRequest* req;
  std::vector<int32_t> blocks;
  std::vector<int32_t> history;  // prompt + generated
  int32_t n_done = 0;            // tokens whose K/V are in the cache
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<tokenizer::IncrementalDetokenizer> detok;
  std::unique_ptr<StopMatcher> stop;
  GenerationResult result;
  bool finished = false;
};

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

Expected<std::vector<GenerationResult>> Generator::generate(const std::vector<GenerationRequest>& reqs,
                                                            const TextCallback& on_text) {
  const int n_vocab = model_.hparams().n_vocab;
  const int bs = kv_.shape().block_size;
  BlockAllocator alloc(kv_.n_blocks());
  std::vector<Active> act(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const GenerationRequest& r = reqs[i];
    if (r.prompt.empty()) return make_error("request " + std::to_string(i) + ": empty prompt");
    if (r.max_tokens < 0) return make_error("request " + std::to_string(i) + ": max_tokens must be >= 0");
    if (auto s = r.sampling.validate(n_vocab); !s) return s.error();
    const int64_t need_tokens = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
    const int64_t need_blocks = (need_tokens + bs - 1) / bs;
    if (need_blocks > alloc.n_free())
      return make_error("request " + std::to_string(i) + ": prompt (" + std::to_string(r.prompt.size()) +
                        " tokens) plus max_tokens (" + std::to_string(r.max_tokens) + ") needs " +
                        std::to_string(need_tokens) + " KV slots, only " +
                        std::to_string(alloc.n_free() * bs) + " are free: raise --ctx or lower -n");
    Active& a = act[i];
    a.req = &r;
    for (int64_t b = 0; b < need_blocks; ++b) a.blocks.push_back(alloc.allocate());
    a.history = r.prompt;
    a.sampler = std::make_unique<Sampler>(r.sampling);
    a.detok = std::make_unique<tokenizer::IncrementalDetokenizer>(tok_, true);
    a.stop = std::make_unique<StopMatcher>(r.stop);
    a.result.n_prompt = static_cast<int>(r.prompt.size());
    if (r.max_tokens == 0) a.finished = true;
  }

  auto emit = [&](size_t i, const std::string& piece) {
    Active& a = act[i];
    auto out = a.stop->push(piece);
    a.result.text += out.text;
    if (on_text && !out.text.empty()) on_text(i, out.text);
    if (out.stopped) {
      a.finished = true;
      a.result.finish = FinishReason::kStop;
    }
  };
  auto finish = [&](size_t i) {
    Active& a = act[i];
    std::string tail = a.detok->flush();
    if (!tail.empty()) emit(i, tail);
    if (!a.stop->stopped()) {
      std::string rest = a.stop->flush();
      a.result.text += rest;
      if (on_text && !rest.empty()) on_text(i, rest);
    }
  };

  std::vector<float> logits;
  model::Batch batch;
  while (true) {
    // Build one step: unfinished prefills first (chunked under the token budget), then one token
    // for each sequence that is decoding.
    batch.tokens.clear();
    batch.seqs.clear();
    std::vector<size_t> members;
    int64_t budget = max_batch_tokens_;
    bool prefilling = false;
    for (size_t i = 0; i < act.size(); ++i) {
      Active& a = act[i];
      if (a.finished) continue;
      const int32_t pending = static_cast<int32_t>(a.history.size()) - a.n_done;
      if (pending <= 0) continue;
      if (pending > 1) prefilling = true;
      const int32_t take = static_cast<int32_t>(std::min<int64_t>(pending, budget));
      if (take <= 0) break;
      std::span<const int32_t> toks(a.history.data() + a.n_done, static_cast<size_t>(take));
      const bool completes = take == pending;
      batch.add(toks, a.n_done, a.blocks, completes ? 1 : 0);
      members.push_back(i);
      budget -= take;
    }
    if (members.empty()) break;
    const auto t0 = std::chrono::steady_clock::now();
    if (auto s = model_.forward(batch, kv_, pool_, logits); !s) return s.error();
    const double dt = seconds_since(t0);
    if (prefilling) {
      stats_.prompt_seconds += dt;
    } else {
      stats_.generation_seconds += dt;
    }
    int64_t out_row = 0;
    for (size_t m = 0; m < members.size(); ++m) {
      Active& a = act[members[m]];
      const auto& sq = batch.seqs[m];
      a.n_done += sq.n_tokens;
      if (static_cast<size_t>(a.n_done) <= a.req->prompt.size()) stats_.prompt_tokens += sq.n_tokens;
      if (sq.n_logits == 0) continue;
      const float* row = logits.data() + out_row * n_vocab;
      ++out_row;
      auto r = a.sampler->sample(row, n_vocab, a.history);
      stats_.generated_tokens += 1;
      if (!a.req->ignore_eos && tok_.is_eog(r.token)) {
        a.finished = true;
        a.result.finish = FinishReason::kStop;
        finish(members[m]);
        continue;
      }
      a.result.tokens.push_back(r.token);
      a.history.push_back(r.token);
      emit(members[m], a.detok->push(r.token));
      if (a.finished) continue;  // stop string
      if (static_cast<int>(a.result.tokens.size()) >= a.req->max_tokens) {
        a.finished = true;
        a.result.finish = FinishReason::kLength;
        finish(members[m]);
      }
    }
  }
  std::vector<GenerationResult> results;
  results.reserve(act.size());
  for (auto& a : act) results.push_back(std::move(a.result));
  return results;
}

}  // namespace fennec::engine
