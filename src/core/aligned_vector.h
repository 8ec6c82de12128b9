// std::vector whose elements start on a 64-byte boundary (a cache line, and the alignment a
// 32- or 64-byte vector load needs not to split a line). For the kernels' scratch rows: the f32
// keys that attention prefill gathers were at malloc's 16-byte offset, and there every fourth
// 32-byte load crossed a cache line (q.k at 12 cycles per key and query against 7.6 aligned,
// bench/micro/README.md).
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace fennec {

template <class T>
struct CacheAlignedAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheAlignedAllocator() = default;
  template <class U>
  CacheAlignedAllocator(const CacheAlignedAllocator<U>&) noexcept {}  // NOLINT(google-explicit-constructor)
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const CacheAlignedAllocator<U>&) const noexcept {
    return true;
  }
};

template <class T>
using aligned_vector = std::vector<T, CacheAlignedAllocator<T>>;

}  // namespace fennec
