#include "engine/kv_cache.h"

#include <sys/mman.h>

#include <string>

namespace fennec::engine {

int64_t KvCache::bytes_per_block(const KvCacheShape& s) {
  return static_cast<int64_t>(s.n_layers) * s.block_size * s.n_kv_heads *
         (s.head_dim_k + s.head_dim_v) * static_cast<int64_t>(sizeof(uint16_t));
}

Expected<std::unique_ptr<KvCache>> KvCache::create(const KvCacheShape& shape, int64_t n_blocks) {
  if (shape.n_layers <= 0 || shape.n_kv_heads <= 0 || shape.head_dim_k <= 0 ||
      shape.head_dim_v <= 0 || shape.block_size <= 0 || n_blocks <= 0)
    return make_error("KV cache: invalid shape or block count");
  std::unique_ptr<KvCache> c(new KvCache());
  c->shape_ = shape;
  c->n_blocks_ = n_blocks;
  c->layer_k_elems_ = n_blocks * shape.block_size * shape.n_kv_heads * shape.head_dim_k;
  c->layer_v_elems_ = n_blocks * shape.block_size * shape.n_kv_heads * shape.head_dim_v;
  auto map = [](Pages& p, int64_t elems) {
    p.bytes = static_cast<size_t>(elems) * sizeof(uint16_t);
    void* m = mmap(nullptr, p.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      p.bytes = 0;
      return false;
    }
    p.ptr = static_cast<uint16_t*>(m);
    return true;
  };
  if (!map(c->k_, c->layer_k_elems_ * shape.n_layers) || !map(c->v_, c->layer_v_elems_ * shape.n_layers))
    return make_error("KV cache: cannot allocate " + std::to_string(n_blocks * bytes_per_block(shape) >> 20) +
                      " MiB: lower --ctx or --kv-mem");
  return c;
}

KvCache::Pages::~Pages() {
  if (ptr) munmap(ptr, bytes);
}

BlockAllocator::BlockAllocator(int64_t n_blocks) : ref_(static_cast<size_t>(n_blocks), 0) {
  free_.reserve(static_cast<size_t>(n_blocks));
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

int32_t BlockAllocator::allocate() {
  if (free_.empty()) return -1;
  const int32_t b = free_.back();
  free_.pop_back();
  ref_[b] = 1;
  return b;
}

void BlockAllocator::add_ref(int32_t block) { ++ref_[block]; }

void BlockAllocator::release(int32_t block) {
  if (ref_[block] > 0 && --ref_[block] == 0) free_.push_back(block);
}

}  // namespace fennec::engine
