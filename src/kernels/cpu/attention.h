// Causal attention of a batch of sequences over a paged KV cache (fp16 K/V).
// Key position p of a sequence lives in block block_table[p / block_size], slot p % block_size.
#pragma once

#include <cstdint>

#include "core/thread_pool.h"

namespace fennec::kernels {

// The cache row (block * block_size + slot) of key position pos.
inline int64_t cache_slot(const int32_t* block_table, int block_size, int32_t pos) {
  return static_cast<int64_t>(block_table[pos / block_size]) * block_size + pos % block_size;
}

struct AttnSequence {
  int64_t row = 0;                   // first row of this sequence's queries in q / out
  int32_t n_queries = 0;             // new tokens; their positions are pos0 .. pos0+n_queries-1
  int32_t pos0 = 0;
  const int32_t* block_table = nullptr;
};

struct AttnParams {
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim_k = 0;
  int head_dim_v = 0;
  int block_size = 16;
  float scale = 1.0f;      // applied to q.k
  int window = 0;          // sliding window: query at p sees keys k with p - k < window (0: all)
  float softcap = 0.0f;    // 0: none
};

// q: [rows][n_heads*head_dim_k] (stride ldq); k_cache/v_cache: one layer's blocks, each
// [block_size][n_kv_heads*head_dim]; out: [rows][n_heads*head_dim_v] (stride ldo).
void paged_attention(const float* q, int64_t ldq, const AttnSequence* seqs, int n_seqs,
                     const uint16_t* k_cache, const uint16_t* v_cache, const AttnParams& p,
                     float* out, int64_t ldo, ThreadPool& pool);

}  // namespace fennec::kernels
