// Paged KV cache storage: a fixed pool of blocks, each holding `block_size` token slots of K and
// V for every layer, each in fp16 or Q8_0 (kernels::KvType: Q8_0 takes 34 bytes per 32 values,
// 53% of fp16, so the same memory holds 1.88x the tokens). Sequences own blocks through block
// tables; the BlockAllocator hands blocks out and takes them back (reference-counted, so a later
// prefix cache can share them).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/expected.h"
#include "kernels/cpu/attention.h"

namespace fennec::engine {

struct KvCacheShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim_k = 0;
  int head_dim_v = 0;
  int block_size = 16;
  kernels::KvType k_type = kernels::KvType::kF16;
  kernels::KvType v_type = kernels::KvType::kF16;
};

// "f16" or "q8_0" (llama.cpp's --cache-type-k / --cache-type-v names).
const char* kv_type_name(kernels::KvType t);
Expected<kernels::KvType> parse_kv_type(const std::string& name);

class KvCache {
 public:
  // Allocates n_blocks blocks; fails with a clear error if the memory cannot be had, or if a
  // Q8_0 K or V meets a head size that is not a multiple of 32.
  static Expected<std::unique_ptr<KvCache>> create(const KvCacheShape& shape, int64_t n_blocks);
  // Bytes one block takes over all layers.
  static int64_t bytes_per_block(const KvCacheShape& shape);

  const KvCacheShape& shape() const { return shape_; }
  int64_t n_blocks() const { return n_blocks_; }
  int64_t bytes() const { return n_blocks_ * bytes_per_block(shape_); }

  // One layer's K (or V) blocks: [n_blocks][block_size][n_kv_heads * head_dim] values of
  // shape().k_type (v_type).
  uint8_t* k_layer(int layer) { return k_.data() + layer * layer_k_bytes_; }
  uint8_t* v_layer(int layer) { return v_.data() + layer * layer_v_bytes_; }

 private:
  KvCacheShape shape_;
  int64_t n_blocks_ = 0;
  int64_t layer_k_bytes_ = 0;
  int64_t layer_v_bytes_ = 0;
  // Anonymous mappings: zero pages that the OS commits only when a block is first written, so a
  // large --kv-mem costs resident memory only as far as it is used.
  struct Pages {
    uint8_t* ptr = nullptr;
    size_t bytes = 0;
    Pages() = default;
    Pages(const Pages&) = delete;
    Pages& operator=(const Pages&) = delete;
    ~Pages();
    uint8_t* data() { return ptr; }
  };
  Pages k_;
  Pages v_;
};

class BlockAllocator {
 public:
  explicit BlockAllocator(int64_t n_blocks);
  int64_t n_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t n_total() const { return static_cast<int64_t>(ref_.size()); }
  // Takes one free block (ref count 1), or -1 if none is free.
  int32_t allocate();
  void add_ref(int32_t block);
  // Drops one reference; the block returns to the free list at zero.
  void release(int32_t block);
  int32_t ref_count(int32_t block) const { return ref_[block]; }

 private:
  std::vector<int32_t> free_;
  std::vector<int32_t> ref_;
};

}  // namespace fennec::engine
