#include "core/huge_alloc.h"

#include <sys/mman.h>

#include <cstdlib>
#include <string>

namespace fennec {

bool huge_pages_wanted() {
  static const bool on = [] {
    const char* v = std::getenv("FENNEC_HUGE_PAGES");
    return !(v && std::string(v) == "0");
  }();
  return on;
}

void* alloc_streamed(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t align = bytes >= kHuge && huge_pages_wanted() ? kHuge : 64;
  const size_t size = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, size > 0 ? size : align);
  if (p && align == kHuge) madvise(p, size, MADV_HUGEPAGE);  // failure changes nothing
  return p;
}

}  // namespace fennec
