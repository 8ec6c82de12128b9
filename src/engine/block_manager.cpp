#include "engine/block_manager.h"

#include <algorithm>
#include <cassert>

namespace fennec::engine {

BlockManager::BlockManager(int64_t n_blocks, int block_size, bool prefix_caching)
    : block_size_(block_size), prefix_caching_(prefix_caching) {
  free_.reserve(static_cast<size_t>(n_blocks));
  for (int64_t b = n_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
  ref_.assign(static_cast<size_t>(n_blocks), 0);
  entry_.resize(static_cast<size_t>(n_blocks));
}

uint64_t BlockManager::page_hash(uint64_t parent, std::span<const int32_t> page) const {
  // FNV-1a over the parent hash and the token ids; never 0 (0 means "no parent").
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  mix(parent);
  for (int32_t t : page) mix(static_cast<uint32_t>(t));
  return h == 0 ? 1 : h;
}

void BlockManager::uncache(int32_t block) {
  Entry& e = entry_[static_cast<size_t>(block)];
  if (!e.cached) return;
  auto it = by_hash_.find(e.hash);
  if (it != by_hash_.end() && it->second == block) by_hash_.erase(it);
  if (e.in_lru) {
    lru_.erase(e.lru_it);
    e.in_lru = false;
  }
  e.cached = false;
  e.tokens.clear();
}

int32_t BlockManager::allocate() {
  int32_t b = -1;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {
    b = lru_.front();
    uncache(b);
  } else {
    return -1;
  }
  ref_[static_cast<size_t>(b)] = 1;
  return b;
}

void BlockManager::release(std::span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    int32_t& r = ref_[static_cast<size_t>(b)];
    assert(r > 0);
    if (--r > 0) continue;
    Entry& e = entry_[static_cast<size_t>(b)];
    if (e.cached) {
      e.lru_it = lru_.insert(lru_.end(), b);
      e.in_lru = true;
    } else {
      free_.push_back(b);
    }
  }
}

std::vector<int32_t> BlockManager::match_prefix(std::span<const int32_t> tokens, int64_t max_pages) {
  std::vector<int32_t> out;
  if (!prefix_caching_) return out;
  const int64_t bs = block_size_;
  const int64_t n_full = std::min<int64_t>(static_cast<int64_t>(tokens.size()) / bs, max_pages);
  uint64_t parent = 0;
  for (int64_t p = 0; p < n_full; ++p) {
    auto page = tokens.subspan(static_cast<size_t>(p * bs), static_cast<size_t>(bs));
    const uint64_t h = page_hash(parent, page);
    auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    const int32_t b = it->second;
    Entry& e = entry_[static_cast<size_t>(b)];
    if (e.parent != parent || !std::equal(page.begin(), page.end(), e.tokens.begin(), e.tokens.end())) break;
    if (e.in_lru) {
      lru_.erase(e.lru_it);
      e.in_lru = false;
    }
    ++ref_[static_cast<size_t>(b)];
    out.push_back(b);
    parent = h;
  }
  return out;
}

void BlockManager::register_page(std::span<const int32_t> tokens, std::span<const int32_t> table, int64_t index) {
  if (!prefix_caching_) return;
  const int64_t bs = block_size_;
  if (static_cast<int64_t>(tokens.size()) < (index + 1) * bs || static_cast<int64_t>(table.size()) <= index) return;
  // The parent hash is that of the page before, which must itself be registered (pages are
  // registered in order as a prompt's prefill completes them).
  uint64_t parent = 0;
  if (index > 0) {
    const Entry& pe = entry_[static_cast<size_t>(table[static_cast<size_t>(index - 1)])];
    if (!pe.cached) return;
    parent = pe.hash;
  }
  const int32_t b = table[static_cast<size_t>(index)];
  Entry& e = entry_[static_cast<size_t>(b)];
  if (e.cached) return;
  auto page = tokens.subspan(static_cast<size_t>(index * bs), static_cast<size_t>(bs));
  const uint64_t h = page_hash(parent, page);
  if (by_hash_.count(h)) return;  // an equal page (or a colliding one) is cached already
  e.hash = h;
  e.parent = parent;
  e.tokens.assign(page.begin(), page.end());
  e.cached = true;
  by_hash_.emplace(h, b);
}

}  // namespace fennec::engine
