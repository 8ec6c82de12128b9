#include "engine/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

namespace fennec::engine {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The two passes over the whole vocabulary are built for AVX2+FMA as well as the baseline, and
// the loader picks one per machine (GCC function multi-versioning): the baseline build is SSE2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FENNEC_VOCAB_LOOP __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FENNEC_VOCAB_LOOP
#endif

// A strict total order on (logit, id): higher logit first, lower id first among ties. Keeps
// top-k and top_logprobs deterministic when logits tie.
template <class T>
bool ranks_before(float la, T ia, float lb, T ib) {
  return la > lb || (la == lb && ia < ib);
}

std::string num(double v) {
  std::string s = std::to_string(v);
  // to_string prints 6 decimals; trim the zeros so messages read "1.5", not "1.500000".
  if (s.find('.') != std::string::npos) {
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
  }
  return s;
}

Status field_error(const std::string& what) { return make_error("sampling: " + what); }

}  // namespace

Status SamplingParams::validate(int n_vocab) const {
  if (n_vocab <= 0) return field_error("vocabulary is empty (n_vocab=" + num(n_vocab) + ")");
  if (!std::isfinite(temperature) || temperature < 0.0f)
    return field_error("temperature must be a finite number >= 0 (got " + num(temperature) +
                       "); use 0 for greedy decoding");
  if (top_k < 0)
    return field_error("top_k must be >= 0 (got " + num(top_k) + "); use 0 to disable it");
  if (!(top_p > 0.0f && top_p <= 1.0f))
    return field_error("top_p must be in (0, 1] (got " + num(top_p) + "); use 1 to disable it");
  if (!(min_p >= 0.0f && min_p <= 1.0f))
    return field_error("min_p must be in [0, 1] (got " + num(min_p) + "); use 0 to disable it");
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0.0f)
    return field_error("repetition_penalty must be a finite number > 0 (got " +
                       num(repetition_penalty) + "); use 1 to disable it");
  if (repeat_last_n < -1)
    return field_error("repeat_last_n must be >= -1 (got " + num(repeat_last_n) +
                       "); -1 means the whole history, 0 disables penalties");
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    return field_error("presence_penalty must be in [-2, 2] (got " + num(presence_penalty) + ")");
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    return field_error("frequency_penalty must be in [-2, 2] (got " + num(frequency_penalty) + ")");
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || id >= n_vocab)
      return field_error("logit_bias token id " + num(id) + " is outside the vocabulary [0, " +
                         num(n_vocab) + ")");
    if (!(bias >= -100.0f && bias <= 100.0f))
      return field_error("logit_bias for token " + num(id) + " must be in [-100, 100] (got " +
                         num(bias) + ")");
  }
  return {};
}

Sampler::Sampler(SamplingParams params) : params_(std::move(params)) {
  uint64_t seed = params_.seed;
  if (!params_.has_seed) {
    std::random_device rd;
    seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  rng_.seed(seed);
}

// 53 random bits -> [0, 1): the same on every standard library, unlike
// std::uniform_real_distribution, so a seed reproduces across platforms.
double Sampler::uniform01() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

void Sampler::apply_bias_and_penalties(int n_vocab, std::span<const int32_t> history) {
  float* l = logits_.data();
  for (const auto& [id, bias] : params_.logit_bias) {
    if (id >= 0 && id < n_vocab) l[id] += bias;
  }

  const SamplingParams& p = params_;
  const bool any_penalty =
      p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
  if (!any_penalty || p.repeat_last_n == 0 || history.empty()) return;

  std::span<const int32_t> window = history;
  if (p.repeat_last_n > 0 && window.size() > static_cast<size_t>(p.repeat_last_n))
    window = window.last(static_cast<size_t>(p.repeat_last_n));

  // counts_ is all zeros between calls: count the window, then visit it again, penalizing each
  // distinct token once and zeroing its count. Cost is O(window), never O(vocab).
  if (counts_.size() != static_cast<size_t>(n_vocab)) counts_.assign(n_vocab, 0);
  for (int32_t t : window) {
    if (t >= 0 && t < n_vocab) ++counts_[t];
  }
  for (int32_t t : window) {
    if (t < 0 || t >= n_vocab || counts_[t] == 0) continue;
    const int count = counts_[t];
    counts_[t] = 0;
    float v = l[t];
    if (v <= 0.0f) {
      v *= p.repetition_penalty;
    } else {
      v /= p.repetition_penalty;
    }
    v -= static_cast<float>(count) * p.frequency_penalty + p.presence_penalty;
    l[t] = v;
  }
}

namespace {

struct CandidateOrder {
  template <class C>
  bool operator()(const C& a, const C& b) const {
    return ranks_before(a.logit, a.id, b.logit, b.id);
  }
};

// exp(x) for x <= 0 as 2^n * p(r) (Cephes expf polynomial, relative error < 1e-7), written
// without calls or float branches so that GCC vectorizes the loops over the vocabulary (std::exp
// costs about a millisecond per token at 262144 tokens). Results below 2^-126 are exactly 0, so
// -inf (a banned token) weighs nothing; the integer mask also covers -inf and huge |x|.
inline float fast_exp(float x) {
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504088896341f + kShifter;
  const float n = t - kShifter;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;  // ln 2 split in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kShifter);
  const uint32_t keep = -static_cast<uint32_t>(ni >= -126);
  const uint32_t scale = (static_cast<uint32_t>(ni + 127) << 23) & keep;
  return std::bit_cast<float>(std::bit_cast<uint32_t>(y) & keep) * std::bit_cast<float>(scale);
}

// w[i] = exp((l[i] - max) * inv_t); returns their sum (in double: 262144 terms).
FENNEC_VOCAB_LOOP double exp_weights(const float* l, float* w, size_t n, float max_logit,
                                     float inv_t) {
  for (size_t i = 0; i < n; ++i) w[i] = fast_exp((l[i] - max_logit) * inv_t);
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (size_t j = 0; j < 4; ++j) acc[j] += w[i + j];
  }
  for (; i < n; ++i) acc[0] += w[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// NaN has no place in an order (nth_element would be undefined): it becomes -inf. +inf becomes
// the largest float so that l - max never computes inf - inf. Integer selects and lane-wise max
// keep both loops vectorized. Returns the max.
FENNEC_VOCAB_LOOP float sanitize_and_max(float* l, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint32_t b = std::bit_cast<uint32_t>(l[i]);
    const uint32_t magnitude = b & 0x7fffffffu;
    b = magnitude > 0x7f800000u ? 0xff800000u : b;  // NaN -> -inf
    b = b == 0x7f800000u ? 0x7f7fffffu : b;         // +inf -> FLT_MAX
    l[i] = std::bit_cast<float>(b);
  }
  float lanes[8];
  std::fill(lanes, lanes + 8, kNegInf);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (size_t j = 0; j < 8; ++j) lanes[j] = std::max(lanes[j], l[i + j]);
  }
  float m = kNegInf;
  for (; i < n; ++i) m = std::max(m, l[i]);
  for (float v : lanes) m = std::max(m, v);
  return m;
}

// top-p histogram: bin b holds logits in (max - (b+1)/32, max - b/32]; the last bin everything
// more than 32 below the max (probability < 1.3e-14 each), -inf included.
constexpr int kBinsPerUnit = 32;
constexpr int kBins = 32 * kBinsPerUnit + 1;
inline int bin_of(float below_max) {
  return below_max < 32.0f ? static_cast<int>(below_max * kBinsPerUnit) : kBins - 1;
}

// Beyond this k a bounded heap loses to nth_element.
constexpr int kHeapTopK = 4096;

}  // namespace

void Sampler::top_k_into_candidates(int n_vocab, int k) {
  const CandidateOrder order;
  if (k <= kHeapTopK) {
    // One pass with a bounded heap whose front is the worst kept: on real logits almost every
    // token fails the first comparison, so this is O(vocab) with O(k log k) heap work.
    cand_.clear();
    for (int i = 0; i < k; ++i) cand_.push_back(Candidate{logits_[i], i});
    std::make_heap(cand_.begin(), cand_.end(), order);
    for (int i = k; i < n_vocab; ++i) {
      const Candidate c{logits_[i], i};
      if (order(c, cand_.front())) {
        std::pop_heap(cand_.begin(), cand_.end(), order);
        cand_.back() = c;
        std::push_heap(cand_.begin(), cand_.end(), order);
      }
    }
    std::sort_heap(cand_.begin(), cand_.end(), order);  // best first
  } else {
    cand_.resize(n_vocab);
    for (int i = 0; i < n_vocab; ++i) cand_[i] = Candidate{logits_[i], i};
    std::nth_element(cand_.begin(), cand_.begin() + k, cand_.end(), order);
    std::sort(cand_.begin(), cand_.begin() + k, order);
  }
  n_cand_ = static_cast<size_t>(k);
}

// Keeps the shortest prefix of the (sorted) candidates whose probability mass, renormalized
// over the candidates as llama.cpp does, reaches top_p.
void Sampler::top_p_over_candidates(float max_logit) {
  double total = 0.0;
  for (size_t i = 0; i < n_cand_; ++i) total += std::exp(cand_[i].logit - max_logit);
  const double target = static_cast<double>(params_.top_p) * total;
  double cum = 0.0;
  for (size_t i = 0; i < n_cand_; ++i) {
    cum += std::exp(cand_[i].logit - max_logit);
    if (cum >= target) {
      n_cand_ = i + 1;
      return;
    }
  }
}

// top-p over the whole vocabulary without sorting it: a histogram of probability mass by logit
// finds the bin where the cumulative mass crosses top_p; tokens above that bin are kept
// unsorted, and only the tokens inside it are sorted to place the exact cut. The result equals
// llama.cpp's full sort, at O(vocab) plus a sort of one narrow bin.
void Sampler::top_p_over_vocab(int n_vocab, float max_logit, bool weights_at_t1) {
  auto weight_t1 = [&](const Candidate& c) {
    return weights_at_t1 ? weights_[c.id] : fast_exp(c.logit - max_logit);
  };
  bins_.assign(kBins, 0.0);
  for (int i = 0; i < n_vocab; ++i) {
    bins_[bin_of(max_logit - logits_[i])] += weight_t1(Candidate{logits_[i], i});
  }
  double total = 0.0;
  for (double m : bins_) total += m;
  const double target = static_cast<double>(params_.top_p) * total;
  double above = 0.0;
  int cut_bin = 0;
  for (; cut_bin < kBins - 1; ++cut_bin) {
    if (above + bins_[cut_bin] >= target) break;
    above += bins_[cut_bin];
  }

  // Kept tokens fill cand_ from the front, the cut bin's tokens from the back.
  const size_t n = static_cast<size_t>(n_vocab);
  cand_.resize(n);
  size_t n_kept = 0, n_edge = 0;
  for (int i = 0; i < n_vocab; ++i) {
    const int b = bin_of(max_logit - logits_[i]);
    if (b < cut_bin) {
      cand_[n_kept++] = Candidate{logits_[i], i};
    } else if (b == cut_bin) {
      cand_[n - 1 - n_edge++] = Candidate{logits_[i], i};
    }
  }
  Candidate* edge = cand_.data() + (n - n_edge);
  std::sort(edge, edge + n_edge, CandidateOrder{});
  double cum = above;
  size_t keep = n_edge;
  for (size_t j = 0; j < n_edge; ++j) {
    cum += weight_t1(edge[j]);
    if (cum >= target) {
      keep = j + 1;
      break;
    }
  }
  std::memmove(cand_.data() + n_kept, edge, keep * sizeof(Candidate));
  n_cand_ = n_kept + keep;
}

// Draws among the first n candidates with logit >= min_logit; weights_ holds every token's
// exp((l - max) / T).
int32_t Sampler::draw(size_t n, float min_logit, int32_t fallback) {
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    if (cand_[i].logit >= min_logit) total += weights_[cand_[i].id];
  }
  const double u = uniform01() * total;
  double cum = 0.0;
  int32_t last_kept = fallback;
  for (size_t i = 0; i < n; ++i) {
    const Candidate c = cand_[i];
    if (c.logit < min_logit || weights_[c.id] <= 0.0f) continue;
    cum += weights_[c.id];
    last_kept = c.id;
    if (u < cum) return c.id;
  }
  return last_kept;  // only when rounding left u at the very end of the mass
}

int32_t Sampler::draw_vocab(int n_vocab, float min_logit, double total_weight, int32_t fallback) {
  double total = 0.0;
  if (min_logit == kNegInf) {
    total = total_weight;
  } else {
    for (int i = 0; i < n_vocab; ++i) {
      if (logits_[i] >= min_logit) total += weights_[i];
    }
  }
  const double u = uniform01() * total;
  double cum = 0.0;
  int32_t last_kept = fallback;
  for (int i = 0; i < n_vocab; ++i) {
    if (logits_[i] < min_logit || weights_[i] <= 0.0f) continue;
    cum += weights_[i];
    last_kept = i;
    if (u < cum) return i;
  }
  return last_kept;
}

Sampler::Result Sampler::sample(const float* logits, int n_vocab,
                                std::span<const int32_t> history) {
  if (n_vocab <= 0) return Result{-1, kNegInf};
  const size_t nv = static_cast<size_t>(n_vocab);
  if (logits_.size() != nv) logits_.resize(nv);
  std::copy(logits, logits + nv, logits_.begin());

  apply_bias_and_penalties(n_vocab, history);

  const float max_logit = sanitize_and_max(logits_.data(), nv);
  int32_t best = 0;  // argmax: the lowest id holding the max
  while (logits_[best] != max_logit) ++best;
  if (max_logit == kNegInf) return Result{best, kNegInf};  // every token is banned

  // Weights and log-normalizer of the full distribution at the sampling temperature (1 for
  // greedy): Result::logprob comes from them, and the draw reuses the weights.
  const bool greedy = params_.temperature == 0.0f;
  const float inv_t = greedy ? 1.0f : 1.0f / params_.temperature;
  if (weights_.size() < nv) weights_.resize(nv);
  const double total_weight = exp_weights(logits_.data(), weights_.data(), nv, max_logit, inv_t);
  const double log_z = std::log(total_weight);
  auto logprob_of = [&](int32_t t) {
    return static_cast<float>(static_cast<double>((logits_[t] - max_logit) * inv_t) - log_z);
  };

  if (greedy) return Result{best, logprob_of(best)};

  const float min_logit = params_.min_p > 0.0f ? max_logit + std::log(params_.min_p) : kNegInf;

  n_cand_ = 0;
  if (params_.top_k > 0 && params_.top_k < n_vocab) top_k_into_candidates(n_vocab, params_.top_k);
  if (params_.top_p < 1.0f) {
    if (n_cand_ > 0) {
      top_p_over_candidates(max_logit);
    } else {
      top_p_over_vocab(n_vocab, max_logit, inv_t == 1.0f);
    }
  }

  const int32_t token = n_cand_ > 0 ? draw(n_cand_, min_logit, best)
                                    : draw_vocab(n_vocab, min_logit, total_weight, best);
  return Result{token, logprob_of(token)};
}

std::vector<std::pair<int32_t, float>> Sampler::top_logprobs(const float* logits, int n_vocab,
                                                             int n) {
  std::vector<std::pair<int32_t, float>> out;
  if (n_vocab <= 0 || n <= 0) return out;
  n = std::min(n, n_vocab);
  auto clean = [&](int i) { return std::isnan(logits[i]) ? kNegInf : logits[i]; };

  float max_logit = kNegInf;
  for (int i = 0; i < n_vocab; ++i) max_logit = std::max(max_logit, clean(i));

  // Bounded heap of the n best (logit, id): its front is the worst of those kept.
  struct Entry {
    float logit;
    int32_t id;
  };
  std::vector<Entry> heap;
  heap.reserve(n);
  const CandidateOrder order;
  for (int i = 0; i < n_vocab; ++i) {
    const Entry e{clean(i), i};
    if (heap.size() < static_cast<size_t>(n)) {
      heap.push_back(e);
      std::push_heap(heap.begin(), heap.end(), order);
    } else if (order(e, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), order);
      heap.back() = e;
      std::push_heap(heap.begin(), heap.end(), order);
    }
  }
  std::sort_heap(heap.begin(), heap.end(), order);  // best first

  out.reserve(heap.size());
  if (max_logit == kNegInf) {
    for (const Entry& e : heap) out.emplace_back(e.id, kNegInf);
    return out;
  }
  double total = 0.0;
  for (int i = 0; i < n_vocab; ++i) total += std::exp(static_cast<double>(clean(i) - max_logit));
  const double log_z = std::log(total);
  for (const Entry& e : heap)
    out.emplace_back(e.id, static_cast<float>((e.logit - max_logit) - log_z));
  return out;
}

}  // namespace fennec::engine
