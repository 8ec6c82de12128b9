// Paged KV cache storage: a fixed pool of blocks, each holding `block_size` token slots of K and
// V (fp16) for every layer. Sequences own blocks through block tables; the BlockAllocator hands
// blocks out and takes them back (reference-counted, so a later prefix cache can share them).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/expected.h"

namespace fennec::engine {

struct KvCacheShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim_k = 0;
  int head_dim_v = 0;
  int block_size = 16;
};

class KvCache {
 public:
  // Allocates n_blocks blocks; fails with a clear error if the memory cannot be had.
  static Expected<std::unique_ptr<KvCache>> create(const KvCacheShape& shape, int64_t n_blocks);
  // Bytes one block takes over all layers.
  static int64_t bytes_per_block(const KvCacheShape& shape);

  const KvCacheShape& shape() const { return shape_; }
  int64_t n_blocks() const { return n_blocks_; }
  int64_t bytes() const { return n_blocks_ * bytes_per_block(shape_); }

  // One layer's K (or V) blocks: [n_blocks][block_size][n_kv_heads * head_dim].
  uint16_t* k_layer(int layer) { return k_.data() + layer * layer_k_elems_; }
  uint16_t* v_layer(int layer) { return v_.data() + layer * layer_v_elems_; }

 private:
  KvCacheShape shape_;
  int64_t n_blocks_ = 0;
  int64_t layer_k_elems_ = 0;
  int64_t layer_v_elems_ = 0;
  // Anonymous mappings: zero pages that the OS commits only when a block is first written, so a
  // large --kv-mem costs resident memory only as far as it is used.
  struct Pages {
    uint16_t* ptr = nullptr;
    size_t bytes = 0;
    Pages() = default;
    Pages(const Pages&) = delete;
    Pages& operator=(const Pages&) = delete;
    ~Pages();
    uint16_t* data() { return ptr; }
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
