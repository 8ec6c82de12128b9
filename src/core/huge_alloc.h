// Large buffers that are streamed whole (packed weights, the bandwidth probe) on transparent huge
// pages: 2 MB aligned, with MADV_HUGEPAGE (the kernel's default policy is often "madvise").
// Streaming a buffer on 4 KB pages also walks the page tables for every 4 KB of it.
#pragma once

#include <cstddef>

namespace fennec {

// Like std::aligned_alloc(64, bytes); buffers of 2 MB and more start on a 2 MB boundary, are
// rounded up to whole 2 MB and ask for huge pages (advice only). Free with std::free. Where the
// kernel gives huge pages, writing into the last, partly used 2 MB backs all of it: up to 2 MB
// per buffer, so many small matrices belong in one buffer (PackedWeights::pack_all).
// nullptr when out of memory.
void* alloc_streamed(size_t bytes);
// False when FENNEC_HUGE_PAGES=0 is set: alloc_streamed then aligns to 64 bytes only.
bool huge_pages_wanted();

}  // namespace fennec
