// Causal attention of a batch of sequences over a paged KV cache (K and V each in fp16 or Q8_0).
// Key position p of a sequence lives in block block_table[p / block_size], slot p % block_size.
#pragma once

#include <cstdint>

#include "core/thread_pool.h"

namespace fennec::kernels {

// The cache row (block * block_size + slot) of key position pos.
inline int64_t cache_slot(const int32_t* block_table, int block_size, int32_t pos) {
  return static_cast<int64_t>(block_table[pos / block_size]) * block_size + pos % block_size;
}

// How the cache stores K or V rows: fp16, or ggml's Q8_0 blocks (32 values: an fp16 scale d and
// 32 int8 q, value d * q) per 32 values of each head (the head size a multiple of 32).
enum class KvType : uint8_t { kF16, kQ8_0 };

// Bytes of n cache values of type t (n % 32 == 0 for kQ8_0).
inline int64_t kv_bytes(KvType t, int64_t n) { return t == KvType::kF16 ? 2 * n : n / 32 * 34; }

// Converts n values of type t at src (n % 32 == 0 for kQ8_0) to float with the reference
// dequantizers (quant/dequantize.h): fp16 exactly, Q8_0 as d * q (exact in float).
void kv_to_f32(KvType t, const void* src, float* dst, int64_t n);

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
  KvType k_type = KvType::kF16;
  KvType v_type = KvType::kF16;
};

// q: [rows][n_heads*head_dim_k] (stride ldq); k_cache/v_cache: one layer's blocks, each
// [block_size][n_kv_heads*head_dim] values of p.k_type / p.v_type; out: [rows][n_heads*head_dim_v]
// (stride ldo). A Q8_0 cache's values take part as their float values d * q: the result is the
// one an f32 cache holding those values would give. A Q8_0 K (V) needs head_dim_k (head_dim_v)
// a multiple of 32, which KvCache::create checks.
void paged_attention(const float* q, int64_t ldq, const AttnSequence* seqs, int n_seqs,
                     const void* k_cache, const void* v_cache, const AttnParams& p,
                     float* out, int64_t ldo, ThreadPool& pool);

}  // namespace fennec::kernels
