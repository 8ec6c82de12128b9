// The per-ISA body of paged_attention (attention.h): one work item is one sequence, one KV head
// (a range of KV heads for the vector bodies) and a run of that sequence's queries. attention.cpp
// holds the driver and the portable body; attention_simd_impl.h the vector one (AVX2 and
// AVX-512VL), which gives the same bits (kernel_test compares them).
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace fennec::kernels {

struct AttnItem {
  const AttnSequence* seq = nullptr;
  int kv_head = 0;
  int32_t q_begin = 0;  // queries q_begin .. q_end-1 of the sequence
  int32_t q_end = 0;
  int kv_head_end = 0;  // vector bodies: KV heads kv_head .. kv_head_end-1 (0: kv_head .. the last)
  // Vector bodies, a sequence that decodes_by_query_heads: query heads head_begin .. head_end-1,
  // all of them heads of kv_head .. kv_head_end-1 (0: every query head of those KV heads).
  int head_begin = 0;
  int head_end = 0;
};

struct AttnArgs {
  const float* q = nullptr;
  int64_t ldq = 0;
  const void* k_cache = nullptr;  // values of p->k_type
  const void* v_cache = nullptr;
  const AttnParams* p = nullptr;
  float* out = nullptr;
  int64_t ldo = 0;
};

using AttnItemFn = void (*)(const AttnArgs&, const AttnItem&);

// v rounded up to a multiple of m (the padded lengths both bodies share).
inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Whether the vector bodies take this sequence as a decode step (one query, ggml's 64-lane dot
// order): its work items may then cover any range of query heads (AttnItem::head_begin), each
// query head's result being independent of which others share its item.
inline bool decodes_by_query_heads(const AttnParams& p, const AttnSequence& s) {
  return s.n_queries == 1 && p.head_dim_k % 64 == 0;
}

// The address of value `first` of cache row `slot`, for one layer's cache at base with rows of
// `width` values of type t (for Q8_0, width and first are multiples of 32).
inline const uint8_t* kv_at(const void* base, KvType t, int64_t width, int64_t slot, int64_t first) {
  return static_cast<const uint8_t*>(base) + kv_bytes(t, slot * width + first);
}

AttnItemFn attention_item_scalar();
// Needs head_dim_k % 16 == 0 and head_dim_v % 8 == 0 (paged_attention checks). Covers the KV
// heads kv_head .. kv_head_end-1 of the sequence in one call (reading whole cache rows).
AttnItemFn attention_item_avx2();
// The same operations with AVX-512VL's 32 registers (same conditions, same bits).
AttnItemFn attention_item_avx512();

}  // namespace fennec::kernels
