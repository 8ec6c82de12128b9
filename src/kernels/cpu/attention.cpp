#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/float_convert.h"
#include "kernels/cpu/vec.h"

namespace fennec::kernels {

namespace {
constexpr int32_t kQueryChunk = 32;

struct WorkItem {
  int seq;
  int kv_head;
  int32_t q_begin;
  int32_t q_end;
};
}  // namespace

void paged_attention(const float* q, int64_t ldq, const AttnSequence* seqs, int n_seqs,
                     const uint16_t* k_cache, const uint16_t* v_cache, const AttnParams& p,
                     float* out, int64_t ldo, ThreadPool& pool) {
  std::vector<WorkItem> items;
  for (int s = 0; s < n_seqs; ++s)
    for (int h = 0; h < p.n_kv_heads; ++h)
      for (int32_t b = 0; b < seqs[s].n_queries; b += kQueryChunk)
        items.push_back({s, h, b, std::min(seqs[s].n_queries, b + kQueryChunk)});

  const int group = p.n_heads / p.n_kv_heads;
  const int64_t k_stride = static_cast<int64_t>(p.n_kv_heads) * p.head_dim_k;
  const int64_t v_stride = static_cast<int64_t>(p.n_kv_heads) * p.head_dim_v;
  const VecOps& vo = vec_ops();

  pool.parallel_for(static_cast<int64_t>(items.size()), [&](int64_t i0, int64_t i1) {
    thread_local std::vector<float> keys, values, scores, qh;
    qh.resize(static_cast<size_t>(p.head_dim_k));
    thread_local std::vector<uint16_t> tmp16;
    tmp16.resize(static_cast<size_t>(std::max(p.head_dim_k, 1)));
    for (int64_t it = i0; it < i1; ++it) {
      const WorkItem& w = items[it];
      const AttnSequence& sq = seqs[w.seq];
      const int32_t first_pos = sq.pos0 + w.q_begin;
      const int32_t last_pos = sq.pos0 + w.q_end - 1;
      const int32_t k_lo = p.window > 0 ? std::max(0, first_pos - p.window + 1) : 0;
      const int32_t n_keys = last_pos + 1 - k_lo;
      keys.resize(static_cast<size_t>(n_keys) * p.head_dim_k);
      values.resize(static_cast<size_t>(n_keys) * p.head_dim_v);
      scores.resize(static_cast<size_t>(n_keys));
      // Gather this head's keys and values once, converted to f32; all queries of the chunk and
      // all query heads of the group reuse them.
      for (int32_t j = 0; j < n_keys; ++j) {
        const int32_t kp = k_lo + j;
        const int64_t slot =
            static_cast<int64_t>(sq.block_table[kp / p.block_size]) * p.block_size + kp % p.block_size;
        vo.fp16_to_f32(k_cache + slot * k_stride + static_cast<int64_t>(w.kv_head) * p.head_dim_k,
                       keys.data() + static_cast<int64_t>(j) * p.head_dim_k, p.head_dim_k);
        vo.fp16_to_f32(v_cache + slot * v_stride + static_cast<int64_t>(w.kv_head) * p.head_dim_v,
                       values.data() + static_cast<int64_t>(j) * p.head_dim_v, p.head_dim_v);
      }
      for (int32_t qi = w.q_begin; qi < w.q_end; ++qi) {
        const int32_t pos = sq.pos0 + qi;
        const int32_t lo = p.window > 0 ? std::max(0, pos - p.window + 1) : 0;
        const int32_t j0 = lo - k_lo;
        const int32_t j1 = pos - k_lo + 1;  // exclusive
        const int64_t row = sq.row + qi;
        for (int g = 0; g < group; ++g) {
          const int head = w.kv_head * group + g;
          // Q meets fp16 keys as fp16 (as ggml's f16 K x f32 Q product rounds it).
          vo.f32_to_fp16(q + row * ldq + static_cast<int64_t>(head) * p.head_dim_k, tmp16.data(), p.head_dim_k);
          vo.fp16_to_f32(tmp16.data(), qh.data(), p.head_dim_k);
          const float* qv = qh.data();
          float m = -INFINITY;
          for (int32_t j = j0; j < j1; ++j) {
            float s = vo.dot(qv, keys.data() + static_cast<int64_t>(j) * p.head_dim_k, p.head_dim_k) * p.scale;
            if (p.softcap > 0) s = p.softcap * std::tanh(s / p.softcap);
            scores[j] = s;
            m = std::max(m, s);
          }
          float sum = 0;
          for (int32_t j = j0; j < j1; ++j) {
            scores[j] = std::exp(scores[j] - m);
            sum += scores[j];
          }
          const float inv = 1.0f / sum;
          // The weights meet fp16 values as fp16 too.
          for (int32_t j = j0; j < j1; ++j) scores[j] = fp16_to_f32(f32_to_fp16(scores[j] * inv));
          float* o = out + row * ldo + static_cast<int64_t>(head) * p.head_dim_v;
          std::fill(o, o + p.head_dim_v, 0.0f);
          for (int32_t j = j0; j < j1; ++j)
            vo.axpy(scores[j], values.data() + static_cast<int64_t>(j) * p.head_dim_v, o,
                    p.head_dim_v);
        }
      }
    }
  });
}

}  // namespace fennec::kernels
