// The packed layout of each type (repack.h), shared by the packer and the per-ISA kernels.
//
// Every packed block covers 32 columns (one Q8_0 activation block) of 16 rows. Its quants form
// eight "steps": step j holds, in int32 lane r, 4 unsigned bytes u for columns 4j..4j+3 of row r,
// and the signed weight is x = u - kOffset, or, for the FP4 types, x = kE2M1Doubled[u]
// (through a 16-byte table, u being the E2M1 code). Stored as:
//   kChunks == 8: eight 64-byte vectors, step j = vector j (Q8_0, u = x + 128);
//   kChunks == 4: four 64-byte vectors of nibbles, step j = low nibbles of vector j, step j + 4 =
//                 high nibbles of vector j (so byte 4r+k of vector j holds columns 4j+k and
//                 16+4j+k, as a ggml Q4_0 block holds columns i and i+16 in byte i);
//   kQh: then one 64-byte vector of 5th bits, dword r = the row's 32 qh bits (bit c = column c).
// A block's scales are kScales x 16 values ([s][r]): fp16, or bf16 for MXFP4 (its power-of-two
// scales do not fit fp16). kScales == 2: columns 0..15 and 16..31 of the block have their own
// scale (NVFP4's 16-column sub-blocks). kMin: then 16 more fp16, the rows' m (Q4_1's x = d*u + m);
// such a type's products keep ggml's 8 float lanes per output (repack.h). A group stores its blocks in pairs, each pair followed by
// the two blocks' scales, padded to 64 bytes (an odd last block: the block, its scales, padding),
// so that a product reads the group front to back as one stream. (With all scales after all
// blocks, the scales are a second stream 16 KB ahead of the first in a 2048-column group; on
// the machine measured, the hardware prefetchers alone read two such streams on one core at
// 21.6 GB/s and one at 34.) block_at() is the one place that knows the layout.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/float_convert.h"
#include "kernels/cpu/repack.h"

namespace fennec::kernels::packed {

struct Q4_0 {
  static constexpr int kChunks = 4, kScales = 1, kOffset = 8;
  static constexpr bool kQh = false, kLut = false, kBf16Scale = false, kMin = false;
};
// Q4_1: x = d * u + m; the rows' m (fp16) follow their d in the block's scales (kMin). Its
// products take ggml's order with Q8_1 activations, whose s carries the m terms (8 float lanes
// per output: repack.h).
struct Q4_1 {
  static constexpr int kChunks = 4, kScales = 1, kOffset = 0;
  static constexpr bool kQh = false, kLut = false, kBf16Scale = false, kMin = true;
};
struct Q5_0 {
  static constexpr int kChunks = 4, kScales = 1, kOffset = 16;
  static constexpr bool kQh = true, kLut = false, kBf16Scale = false, kMin = false;
};
struct Q8_0 {
  static constexpr int kChunks = 8, kScales = 1, kOffset = 128;
  static constexpr bool kQh = false, kLut = false, kBf16Scale = false, kMin = false;
};
struct Mxfp4 {
  static constexpr int kChunks = 4, kScales = 1, kOffset = 12;
  static constexpr bool kQh = false, kLut = true, kBf16Scale = true, kMin = false;
};
struct Nvfp4 {
  static constexpr int kChunks = 4, kScales = 2, kOffset = 12;
  static constexpr bool kQh = false, kLut = true, kBf16Scale = false, kMin = false;
};

// Q4_K, per 256-column super-block of a group (2368 bytes, a multiple of 64): the quants as
// four pairs of sub-blocks, pair p = 8 vectors of 64 bytes whose byte 4r+k of vector j is byte
// 32p+4j+k of the row's qs (low nibble: column 4j+k of sub-block 2p, high: of sub-block 2p+1);
// then the 6-bit scales [8 sub-blocks][16 rows] as bytes, the mins [4 pairs][16 rows][2] as
// bytes, and the rows' d and dmin as fp16. Per output and super-block:
//   isum = sum_j scale_j * (exact dot of sub-block j),  imin = sum_j min_j * (activation sum of j)
//   acc = fma(float(isum), d * d_a, acc);  acc = fma(-float(imin), dmin * d_a, acc)
struct Q4K {
  static constexpr int64_t kQuants = 2048, kScales = kQuants, kMins = kScales + 128, kD = kMins + 128,
                           kDmin = kD + 32, kBytes = kDmin + 32;
};

// Q6_K, per 256-column super-block of a group (3392 bytes: 3360 and padding to 64): for each
// 32-column sub-block j, 4 vectors of nibbles (the 6-bit u = q + 32, low 4 bits, arranged as
// Q4_0's) and two vectors of bit planes (dword r = bit 4, then bit 5, of the row's 32 u: bit c =
// column c); then the int8 scales [16 groups of 16 columns][16 rows] and the rows' d as fp16.
// Per output and super-block:
//   isum = sum_g scale_g * (dot of u with the activations over group g - 32 * their sum)
//   acc = fma(float(isum), d * d_a, acc)
struct Q6K {
  static constexpr int64_t kSub = 6 * 64, kScales = 8 * kSub, kD = kScales + 256, kBytes = kD + 32 + 32;
};

// u for each E2M1 code: ggml's doubled values (kE2M1Doubled) + 12, so unsigned.
inline constexpr uint8_t kE2M1Unsigned[16] = {12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0};

template <class L>
constexpr int64_t block_bytes() {
  return L::kChunks * 64 + (L::kQh ? 64 : 0);
}
// One block's scales, and a pair of blocks with theirs.
template <class L>
constexpr int64_t scale_bytes() {
  return (L::kScales + (L::kMin ? 1 : 0)) * kPackRows * 2;
}
template <class L>
constexpr int64_t pair_bytes() {
  return 2 * block_bytes<L>() + (2 * scale_bytes<L>() + 63) / 64 * 64;
}
// Where block b of a group of nb blocks keeps its quants and its scales (byte offsets).
struct BlockAt {
  int64_t quants, scales;
};
template <class L>
constexpr BlockAt block_at(int64_t nb, int64_t b) {
  const int64_t pair = b / 2, second = b % 2;
  const int64_t in_pair = nb - 2 * pair < 2 ? 1 : 2;
  const int64_t base = pair * pair_bytes<L>();
  return {base + second * block_bytes<L>(), base + in_pair * block_bytes<L>() + second * scale_bytes<L>()};
}
template <class L>
constexpr int64_t group_stride(int64_t nb) {
  return nb / 2 * pair_bytes<L>() + nb % 2 * (block_bytes<L>() + (scale_bytes<L>() + 63) / 64 * 64);
}
template <class L>
inline float scale_value(uint16_t s) {
  if constexpr (L::kBf16Scale)
    return bf16_to_f32(s);
  else
    return fp16_to_f32(s);
}

// Software prefetch for the packed products. The hardware prefetchers of the machines measured
// (bench/micro/README.md) keep too few lines in flight for one core to stream weights from DRAM
// at full bandwidth: with the scales after all blocks (the layout before block_at()) a product
// streamed 8-9 GB/s without help where plain loads reached 26. In the paired layout a long run
// of products comes close to plain loads without help, but a decode step, whose products are
// short and have other work between them, still needs it: the 1.2B Q4_0 decodes 30-32 tokens/s
// at one thread without the software prefetch and 40-44 with it. So each product walks
// its weights kPrefetchAhead bytes ahead of where it reads, into L2 (prefetcht2: a prefetch into
// L1 holds one of L1's few miss buffers until the line arrives, and measured slower). A call
// covers its group range [begin, end) as one stream: step i of n_steps prefetches the lines that
// start in the i-th n_steps-th of [begin + ahead, end + ahead) clipped to end.
inline constexpr int64_t kPrefetchAhead = 32768;
// Where steps are small (the 32-column blocks, not the K-quants' super-blocks), the lines
// kPrefetchNear ahead are also asked into L1 (by then the L2 stream has brought them in, so an
// L1 miss buffer is held only briefly): one core's Q4_0 stream went from 22.5-23.5 to
// 25.0-25.1 GB/s and Q8_0's from 21.1-22.5 to 23.9 (bench/micro Stream/*); with the K-quants'
// 2.3 KB steps it cost 2-10%, so they keep the L2 stream alone (or, in a plan without it, take
// the L1 stream: Prefetcher).
inline constexpr int64_t kPrefetchNear = 4096, kNearMaxStep = 1024;
// The L1 stream alone, this far ahead, read best on the Intel Xeon measured (bench/micro/README.md,
// fourteenth session): Intel CPUs' default plan (repack.cpp) and one of the bandwidth probe's reads.
inline constexpr int64_t kPrefetchNearIntel = 1024;
// And on AMD Zen 5 (fifteenth session: an EPYC VM, family 1Ah), at 8 KB.
inline constexpr int64_t kPrefetchNearZen5 = 8192;
// Prefetches the line at p into L1 (kL1) or L2.
template <bool kL1>
inline void prefetch_line(uintptr_t p) {
#if defined(__x86_64__) || defined(__i386__)
  if constexpr (kL1)
    asm volatile("prefetcht0 %0" : : "m"(*reinterpret_cast<const char*>(p)));
  else
    asm volatile("prefetcht2 %0" : : "m"(*reinterpret_cast<const char*>(p)));
#else
  __builtin_prefetch(reinterpret_cast<const void*>(p), 0, kL1 ? 3 : 1);
#endif
}
// Prefetches [a, b) line by line into L1 (kL1) or L2. GCC deletes loops of __builtin_prefetch it
// finds free of side effects; asm volatile stays.
template <bool kL1>
inline void prefetch_lines(uintptr_t a, uintptr_t b) {
  for (uintptr_t p = (a + 63) & ~uintptr_t{63}; p < b; p += 64) prefetch_line<kL1>(p);
}
// The lines `far` bytes ahead of at (into L2) and `near` bytes ahead (into L1), each where it
// starts before end (0: no such prefetch): one line's share of a plan's two streams, as the
// bandwidth probe's reads take it (VecOps::read_sum).
inline void prefetch_ahead(uintptr_t at, int64_t far, int64_t near, uintptr_t end) {
  if (far > 0 && at + static_cast<uintptr_t>(far) < end) prefetch_line<false>(at + static_cast<uintptr_t>(far));
  if (near > 0 && at + static_cast<uintptr_t>(near) < end) prefetch_line<true>(at + static_cast<uintptr_t>(near));
}
// The distances the products prefetch at, in bytes ahead of where they read: far (into L2; 0:
// none) and near (into L1; 0: none). The process's plan starts as the constants above (on Intel
// CPUs and AMD Zen 5: no far stream, near at kPrefetchNearIntel or kPrefetchNearZen5;
// repack.cpp), or as FENNEC_PREFETCH=FAR,NEAR (for measuring another machine);
// set_prefetch_plan() changes it (tests, drivers). The AVX2 products take the near stream alone
// (repack_avx2.cpp).
struct PrefetchPlan {
  int64_t far = kPrefetchAhead;
  int64_t near = kPrefetchNear;
};
PrefetchPlan prefetch_plan();
void set_prefetch_plan(PrefetchPlan plan);

// A call that ends at its matrix's last group may prefetch on past it, up to limit: the packed
// matrices that the next products read (PackedWeights::pack_all lays them out in that order), so
// that their first kPrefetchAhead bytes are not left to demand misses. A call ending inside the
// matrix stops at its own end: the bytes after it are another thread's.
struct Prefetcher {
  uintptr_t base = 0;  // where this call's stream starts
  uintptr_t end = 0;
  int64_t q16 = 0;  // bytes per step, times 2^16
  int64_t far = 0, near_at = 0;
  bool near = false;
  Prefetcher(const uint8_t* begin, const uint8_t* stop, const uint8_t* limit, int64_t n_steps)
      : base(reinterpret_cast<uintptr_t>(begin)),
        end(reinterpret_cast<uintptr_t>(std::max(stop, limit))),
        q16(n_steps > 0 ? ((stop - begin) << 16) / n_steps : 0),
        far(prefetch_plan().far),
        near_at(prefetch_plan().near),
        near(near_at > 0 && (q16 <= (kNearMaxStep << 16) || far == 0)) {
    // Without the far stream the L1 stream is the only one, also where steps are large (the
    // K-quants' 2.3 KB): there it stays at least two steps ahead. On the Zen 5 VM (fifteenth
    // session) it took one core's one-token Q4_K product from 13 GB/s (no prefetch) to 32, and
    // Q6_K's from 16 to 38, a plain read's speed; with the plan's L2 stream they read 25.
    if (near && far == 0) near_at = std::max(near_at, 2 * (q16 >> 16));
  }
  // The prefetcher of groups [g0, g1) of a's matrix, group_bytes each, nb steps per group.
  static Prefetcher of_call(const PackedGemmArgs& a, int64_t group_bytes, int64_t g0, int64_t g1) {
    const uint8_t* stop = a.w + g1 * group_bytes;
    const bool last = g1 * kPackRows >= a.rows && a.run_on_end != nullptr;
    return Prefetcher(a.w + g0 * group_bytes, stop, last ? a.run_on_end : stop, (g1 - g0) * a.nb);
  }
  // Step i of the call (0 <= i < n_steps). kFar = false: the L1 stream alone (none where steps
  // are large and the plan has a far stream), for the machines where the L2 stream did not pay
  // (repack_avx2.cpp).
  template <bool kFar = true>
  void step(int64_t i) const {
    step_part<1, kFar>(i, 0);
  }
  // Part k of kParts of step i: the step's lines spread over its work instead of one burst.
  // Each line of the step falls in exactly one part. On the Zen 5 VM (sixteenth session) the
  // AVX-512 one-token products read 8-23% slower with each step's lines (5 to 52 of them) in
  // one burst than with the same lines spread over the step (decode_pairs, tile_lanes, q4k_tile,
  // q6k_tile in repack_avx512.cpp). The AVX2 products, run there, were not faster spread.
  template <int kParts, bool kFar = true>
  void step_part(int64_t i, int k) const {
    const uintptr_t a = base + static_cast<uintptr_t>((i * q16) >> 16);
    const uintptr_t b = base + static_cast<uintptr_t>(((i + 1) * q16) >> 16);
    const uintptr_t pa = a + (b - a) * static_cast<uintptr_t>(k) / kParts;
    const uintptr_t pb = a + (b - a) * static_cast<uintptr_t>(k + 1) / kParts;
    if (kFar && far > 0) prefetch_lines<false>(pa + far, std::min(pb + far, end));
    if (!near) return;
    prefetch_lines<true>(pa + near_at, std::min(pb + near_at, end));
  }
};

}  // namespace fennec::kernels::packed
