#include "engine/kv_cache.h"

#include <sys/mman.h>

#include <string>

namespace fennec::engine {

const char* kv_type_name(kernels::KvType t) { return t == kernels::KvType::kQ8_0 ? "q8_0" : "f16"; }

Expected<kernels::KvType> parse_kv_type(const std::string& name) {
  if (name == "f16") return kernels::KvType::kF16;
  if (name == "q8_0") return kernels::KvType::kQ8_0;
  return make_error("KV cache type '" + name + "' is not one of: f16, q8_0");
}

int64_t KvCache::bytes_per_block(const KvCacheShape& s) {
  const int64_t slots = static_cast<int64_t>(s.n_layers) * s.block_size * s.n_kv_heads;
  return slots * (kernels::kv_bytes(s.k_type, s.head_dim_k) + kernels::kv_bytes(s.v_type, s.head_dim_v));
}

Expected<std::unique_ptr<KvCache>> KvCache::create(const KvCacheShape& shape, int64_t n_blocks) {
  if (shape.n_layers <= 0 || shape.n_kv_heads <= 0 || shape.head_dim_k <= 0 ||
      shape.head_dim_v <= 0 || shape.block_size <= 0 || n_blocks <= 0)
    return make_error("KV cache: invalid shape or block count");
  const auto q8_fits = [](kernels::KvType t, int head_dim) { return t != kernels::KvType::kQ8_0 || head_dim % 32 == 0; };
  if (!q8_fits(shape.k_type, shape.head_dim_k) || !q8_fits(shape.v_type, shape.head_dim_v))
    return make_error("KV cache: q8_0 needs head sizes that are multiples of 32 (this model's: K " +
                      std::to_string(shape.head_dim_k) + ", V " + std::to_string(shape.head_dim_v) + "): use f16");
  std::unique_ptr<KvCache> c(new KvCache());
  c->shape_ = shape;
  c->n_blocks_ = n_blocks;
  const int64_t slots = n_blocks * shape.block_size * shape.n_kv_heads;
  c->layer_k_bytes_ = slots * kernels::kv_bytes(shape.k_type, shape.head_dim_k);
  c->layer_v_bytes_ = slots * kernels::kv_bytes(shape.v_type, shape.head_dim_v);
  auto map = [](Pages& p, int64_t bytes) {
    p.bytes = static_cast<size_t>(bytes);
    void* m = mmap(nullptr, p.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      p.bytes = 0;
      return false;
    }
    p.ptr = static_cast<uint8_t*>(m);
    madvise(m, p.bytes, MADV_HUGEPAGE);
    return true;
  };
  if (!map(c->k_, c->layer_k_bytes_ * shape.n_layers) || !map(c->v_, c->layer_v_bytes_ * shape.n_layers))
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
