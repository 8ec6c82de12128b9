#include "kernels/cpu/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "core/float_convert.h"
#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/vec.h"
#include "quant/dequantize.h"

namespace fennec::kernels {

namespace {
constexpr int32_t kQueryChunk = 32;

// The arithmetic follows ggml's CPU attention without flash attention (what llama.cpp runs
// by default there), so logits match it: Q rounded to fp16 meets the fp16 keys in an f16
// dot in ggml's order; the softmax takes ggml's exp over chunks of 16 key positions counted
// from position 0; the weights are rounded to fp16 and meet V (per output dimension, over key
// positions) in the same f16 dot. Masked positions are zeros there, so the padding changes no
// sum. This is the reference body: plain loops over the per-output dot products of
// quant_dot_impl.h. The vector bodies (attention_simd_impl.h) compute the same operations in another loop order.
void attend_scalar(const AttnArgs& a, const AttnItem& w) {
  const AttnParams& p = *a.p;
  const AttnSequence& sq = *w.seq;
  const int group = p.n_heads / p.n_kv_heads;
  const int64_t k_width = static_cast<int64_t>(p.n_kv_heads) * p.head_dim_k;
  const int64_t v_width = static_cast<int64_t>(p.n_kv_heads) * p.head_dim_v;
  const VecOps& vo = vec_ops_scalar();
  const QuantDotOps& qo = quant_dot_ops_scalar();
  thread_local std::vector<float> keys, vt, scores, probs, qh, vrow;
  thread_local std::vector<uint16_t> tmp16;
  qh.resize(static_cast<size_t>(p.head_dim_k));
  vrow.resize(static_cast<size_t>(p.head_dim_v));
  tmp16.resize(static_cast<size_t>(std::max(p.head_dim_k, p.head_dim_v)));
  // llama.cpp's f16 products go through llamafile's GEMM (one fma chain per lane) when two or
  // more query tokens are evaluated and through ggml_vec_dot_f16 for one. fennec decides per
  // sequence, so a sequence's result never depends on what shares its batch.
  float (*dot)(const float*, const float*, int64_t) =
      sq.n_queries >= 2 ? qo.dot_f16_chain : qo.dot_f16;
  const int32_t first_pos = sq.pos0 + w.q_begin;
  const int32_t last_pos = sq.pos0 + w.q_end - 1;
  const int32_t k_lo = p.window > 0 ? std::max(0, first_pos - p.window + 1) : 0;
  const int32_t n_keys = last_pos + 1 - k_lo;
  const int64_t n_pad = round_up(last_pos + 1, 64);
  keys.resize(static_cast<size_t>(n_keys) * p.head_dim_k);
  vt.assign(static_cast<size_t>(p.head_dim_v * n_pad), 0.0f);
  scores.resize(static_cast<size_t>(n_pad));
  probs.resize(static_cast<size_t>(n_pad));
  // This head's keys, and its values transposed (dimension-major, absolute key position).
  for (int32_t j = 0; j < n_keys; ++j) {
    const int32_t kp = k_lo + j;
    const int64_t slot = cache_slot(sq.block_table, p.block_size, kp);
    kv_to_f32(p.k_type, kv_at(a.k_cache, p.k_type, k_width, slot, static_cast<int64_t>(w.kv_head) * p.head_dim_k),
              keys.data() + static_cast<int64_t>(j) * p.head_dim_k, p.head_dim_k);
    kv_to_f32(p.v_type, kv_at(a.v_cache, p.v_type, v_width, slot, static_cast<int64_t>(w.kv_head) * p.head_dim_v),
              vrow.data(), p.head_dim_v);
    for (int e = 0; e < p.head_dim_v; ++e)
      vt[static_cast<size_t>(e * n_pad + kp)] = vrow[static_cast<size_t>(e)];
  }
  for (int32_t qi = w.q_begin; qi < w.q_end; ++qi) {
    const int32_t pos = sq.pos0 + qi;
    const int32_t lo = p.window > 0 ? std::max(0, pos - p.window + 1) : 0;
    const int64_t m = round_up(pos + 1, 16);  // softmax row: whole chunks of 16
    const int64_t row = sq.row + qi;
    for (int g = 0; g < group; ++g) {
      const int head = w.kv_head * group + g;
      vo.f32_to_fp16(a.q + row * a.ldq + static_cast<int64_t>(head) * p.head_dim_k, tmp16.data(),
                     p.head_dim_k);
      vo.fp16_to_f32(tmp16.data(), qh.data(), p.head_dim_k);
      float mx = -INFINITY;
      for (int64_t j = 0; j < m; ++j) {
        if (j < lo || j > pos) {
          scores[j] = -INFINITY;
          continue;
        }
        float sc = dot(qh.data(), keys.data() + (j - k_lo) * p.head_dim_k, p.head_dim_k) * p.scale;
        if (p.softcap > 0) sc = p.softcap * std::tanh(sc / p.softcap);
        scores[j] = sc;
        mx = std::max(mx, sc);
      }
      const double sum = qo.softmax_exp(scores.data(), probs.data(), m, mx);
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < m; ++j) probs[j] = fp16_to_f32(f32_to_fp16(probs[j] * inv));
      std::fill(probs.begin() + m, probs.begin() + n_pad, 0.0f);
      float* o = a.out + row * a.ldo + static_cast<int64_t>(head) * p.head_dim_v;
      for (int e = 0; e < p.head_dim_v; ++e) o[e] = dot(probs.data(), vt.data() + e * n_pad, n_pad);
    }
  }
}

}  // namespace

void kv_to_f32(KvType t, const void* src, float* dst, int64_t n) {
  if (t == KvType::kF16)
    quant::ref::dequantize_f16(static_cast<const uint16_t*>(src), dst, n);
  else
    quant::ref::dequantize_q8_0(static_cast<const quant::BlockQ8_0*>(src), dst, n / 32);
}

AttnItemFn attention_item_scalar() { return &attend_scalar; }

void paged_attention(const float* q, int64_t ldq, const AttnSequence* seqs, int n_seqs,
                     const void* k_cache, const void* v_cache, const AttnParams& p,
                     float* out, int64_t ldo, ThreadPool& pool) {
  const bool simd = active_simd_level() >= SimdLevel::kAvx2 && p.head_dim_k % 16 == 0 &&
                    p.head_dim_v % 8 == 0;
  const AttnItemFn fn = !simd ? attention_item_scalar()
                        : active_simd_level() >= SimdLevel::kAvx512 ? attention_item_avx512()
                                                                     : attention_item_avx2();
  // The vector bodies take every KV head of a sequence in one item (a chunk of queries converts
  // whole cache rows once). A decode step reads each key once, so when there are too few items
  // to keep the threads busy (one sequence: one item), each decode step is split by KV heads,
  // or, with fewer KV heads than twice the threads, into one range of query heads per thread
  // (decodes_by_query_heads; two ranges may share the reads of a KV head). Measured on two
  // threads at 4096 tokens of context, attention time per step on alternate steps of one run:
  // Gemma 3 270M (1 KV head) 99-113 us against 155-160 on one thread; SmolLM2 (3 KV heads)
  // 208-293 against 250-260 (two items of one and two KV heads against three of one); a Llama
  // 1.2B (8 KV heads) 15-20% slower split in two ranges of four KV heads than in four of two.
  // One thread takes a decode step whole: split in two items for a thread alone, SmolLM2 (3 KV
  // heads) decoded 2.6-3.3% slower and the 1.2B 0.4-1.2% (Zen 5 VM, sixteenth session,
  // alternating in one process): each item starts its key stream cold.
  int64_t n_chunks = 0;
  for (int s = 0; s < n_seqs; ++s) n_chunks += (seqs[s].n_queries + kQueryChunk - 1) / kQueryChunk;
  const int threads = pool.size();
  const int kv_parts =
      simd && threads > 1 && n_chunks < 2 * threads
          ? static_cast<int>(std::min<int64_t>(p.n_kv_heads, (2 * threads + n_chunks - 1) / std::max<int64_t>(1, n_chunks)))
          : 1;
  const int head_parts = simd && n_chunks < threads && p.n_kv_heads < 2 * threads
                             ? static_cast<int>(std::min<int64_t>(p.n_heads, (threads + n_chunks - 1) / n_chunks))
                             : 1;
  const int group = p.n_heads / p.n_kv_heads;
  thread_local std::vector<AttnItem> items;  // kept: a decode step calls this once per layer
  items.clear();
  for (int s = 0; s < n_seqs; ++s) {
    const AttnSequence* sq = &seqs[s];
    if (head_parts > 1 && decodes_by_query_heads(p, *sq)) {
      for (int h = 0; h < head_parts; ++h) {
        const int hb = p.n_heads * h / head_parts, he = p.n_heads * (h + 1) / head_parts;
        if (hb == he) continue;
        AttnItem it{sq, hb / group, 0, 1, (he - 1) / group + 1};
        it.head_begin = hb;
        it.head_end = he;
        items.push_back(it);
      }
      continue;
    }
    const int parts = !simd ? p.n_kv_heads : sq->n_queries == 1 ? kv_parts : 1;
    for (int h = 0; h < parts; ++h) {
      const int h0 = p.n_kv_heads * h / parts, h1 = p.n_kv_heads * (h + 1) / parts;
      if (h0 == h1) continue;
      for (int32_t b = 0; b < sq->n_queries; b += kQueryChunk)
        items.push_back({sq, h0, b, std::min(sq->n_queries, b + kQueryChunk), simd ? h1 : 0});
    }
  }
  // Items differ widely in cost (a decode step against a chunk of 32 prompt queries): the
  // costliest first, each thread taking the next one free.
  auto cost = [](const AttnItem& it) {
    return static_cast<int64_t>(it.q_end - it.q_begin) * (it.seq->pos0 + it.q_end);
  };
  auto costlier = [&](const AttnItem& x, const AttnItem& y) { return cost(x) > cost(y); };
  if (items.size() <= 16) {  // a decode step's few items: no temporary buffer (stable_sort allocates one)
    for (size_t i = 1; i < items.size(); ++i)
      for (size_t j = i; j > 0 && costlier(items[j], items[j - 1]); --j) std::swap(items[j], items[j - 1]);
  } else {
    std::stable_sort(items.begin(), items.end(), costlier);
  }
  const AttnArgs args{q, ldq, k_cache, v_cache, &p, out, ldo};
  std::atomic<size_t> next{0};
  // A pointer, not the thread_local name: in a worker, `items` is that thread's own (empty) vector.
  const AttnItem* const list = items.data();
  const size_t n_items = items.size();
  pool.run_on_all([&](int, int) {
    for (size_t it; (it = next.fetch_add(1, std::memory_order_relaxed)) < n_items;) fn(args, list[it]);
  });
}

}  // namespace fennec::kernels
