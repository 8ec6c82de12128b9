// Pages of the KV cache for the scheduler, with automatic prefix caching (as vLLM does it): every
// full page of a prompt is identified by a hash of its tokens chained with the hash of the page
// before it, so two prompts that share a prefix share the pages of that prefix. Pages are
// reference-counted; a cached page nobody uses stays in the cache (evictable, least recently
// used first) until a new page is needed. Not thread-safe: the engine thread owns it.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

namespace fennec::engine {

class BlockManager {
 public:
  BlockManager(int64_t n_blocks, int block_size, bool prefix_caching = true);

  int block_size() const { return block_size_; }
  int64_t n_total() const { return static_cast<int64_t>(ref_.size()); }
  // Pages that allocate() can hand out: never used, or cached and unreferenced.
  int64_t n_available() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  // Pages referenced by at least one sequence.
  int64_t n_used() const { return n_total() - n_available(); }

  // One page for a sequence (ref count 1): a never-used page first, else the least recently
  // used cached page, which leaves the cache. -1 if every page is referenced.
  int32_t allocate();
  // Drops a sequence's reference to each page; a cached page at zero becomes evictable.
  void release(std::span<const int32_t> blocks);

  // The cached pages holding the longest run of full pages at the start of `tokens`, at most
  // max_pages of them; each gets a reference (release them like any other page).
  std::vector<int32_t> match_prefix(std::span<const int32_t> tokens, int64_t max_pages);
  // Records that page `index` of a sequence (tokens[index*bs, (index+1)*bs) of `tokens`, all
  // computed) lives in `block`, whose predecessors are `table[0..index)`. No-op if an equal
  // page is already cached or prefix caching is off.
  void register_page(std::span<const int32_t> tokens, std::span<const int32_t> table, int64_t index);

  int32_t ref_count(int32_t block) const { return ref_[static_cast<size_t>(block)]; }
  int64_t n_cached() const { return static_cast<int64_t>(by_hash_.size()); }

 private:
  struct Entry {
    uint64_t hash = 0;
    bool cached = false;
    std::vector<int32_t> tokens;  // the page's tokens, checked on lookup (no trust in the hash)
    uint64_t parent = 0;          // hash of the page before (0 for the first)
    std::list<int32_t>::iterator lru_it;
    bool in_lru = false;
  };
  uint64_t page_hash(uint64_t parent, std::span<const int32_t> page) const;
  void uncache(int32_t block);

  int block_size_;
  bool prefix_caching_;
  std::vector<int32_t> free_;
  std::vector<int32_t> ref_;
  std::vector<Entry> entry_;
  std::list<int32_t> lru_;  // cached, unreferenced pages; front = least recently used
  std::unordered_map<uint64_t, int32_t> by_hash_;
};

}  // namespace fennec::engine
