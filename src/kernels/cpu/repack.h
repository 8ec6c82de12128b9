// Weight matrices repacked at load into 16-row interleaved groups, and the products that read
// them. One SIMD lane per output row: a block of 32 columns of 16 rows is a few 64-byte vectors
// whose int32 lane r gathers 4 consecutive columns of row r, so one vpdpbusd with 4 activation
// bytes broadcast advances 16 outputs by 4 columns (layout: repack_layout.h). The block's integer
// sum is exact; then, per output,
//   acc = fma(float(isum), d_w * d_a, acc)                        (block order, one chain)
// (two such steps per block where its two 16-column halves have their own scale: NVFP4). The
// per-output kernels of quant_dot.h keep eight float lanes per output instead (ggml's order) and
// pay a convert and an fma per 8 columns. Every ISA path (scalar, AVX2, AVX-512) computes exactly
// these steps, so all give the same bits, for any number of tokens (batch invariance).
//
// Q4_1 (its fp16 d and m per 32 columns) is the exception: its products keep ggml's float order
// exactly, with Q8_1 activations (ggml_vec_dot_q4_1_q8_1: 8 float lanes per output, lane l over
// columns 4l..4l+3 of each block, which is packed step l; the m terms' chain fma(m, s_y, summs);
// repack.cpp's gemm_scalar_lanes defines it), so the default SmolLM2 Q4_1 matches llama.cpp
// bit for bit packed or not.
// Types: Q4_0, Q5_0, Q8_0 (ggml's layouts, one fp16 scale per 32 columns), Q4_1, the FP4 types
// MXFP4 (E8M0 scale per 32) and NVFP4 (UE4M3 scale per 16), whose products exist only packed,
// and Q4_K (per super-block of 256 columns: exact integer sums over its 8 scaled sub-blocks,
// then two fma steps, for the scales and for the mins; Q4_K takes 2.8% more memory) and Q6_K
// (exact integer sums over its 16 scaled groups, one fma step; 1% more memory).
// Memory: Q4_0, Q4_1, Q5_0 and Q8_0 take the bytes of the original rows; MXFP4 18 bytes per 32 columns
// instead of 17 and NVFP4 20 instead of 18 (their scales widened to bf16 / fp16); Q6_K 1% and Q4_K
// 2.8% more; plus padding to 16 rows and 64 bytes. The mmapped originals of packed matrices are
// then not read.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <vector>

#include "core/thread_pool.h"
#include "formats/ggml_type.h"
#include "kernels/cpu/ops.h"

namespace fennec::kernels {

inline constexpr int kPackRows = 16;

// Types with a packed form: Q4_K and Q6_K (Q8_K activations, nb = super-blocks of 256 columns,
// no side data) and the others (Q8_0 activations).
bool can_pack(formats::GgmlType t);
// Bytes of one 16-row group, and of the whole packed matrix.
int64_t packed_group_bytes(formats::GgmlType t, int64_t cols);
int64_t packed_bytes(formats::GgmlType t, int64_t rows, int64_t cols);
// Packs groups [g0, g1) of w (rows of w.row_bytes at w.data) into dst (packed_bytes() long).
void pack_groups(const WeightView& w, uint8_t* dst, int64_t g0, int64_t g1);

// Products with a packed matrix. Activations are Q8_0 rows (act + t * act_stride); act_d holds
// per token t and block b, at [t * nb + b], the block's scale as float, and act_sum the sums of
// its bytes 0..15 and 16..31 at [2 * (t * nb + b)] and [2 * (t * nb + b) + 1]
// (packed_act_sides computes them). y[t * ldy + r] for rows r < rows.
struct PackedGemmArgs {
  const uint8_t* w = nullptr;
  int64_t nb = 0;
  const uint8_t* act = nullptr;
  int64_t act_stride = 0;
  const float* act_d = nullptr;
  const int32_t* act_sum = nullptr;
  int64_t n_tokens = 0;
  float* y = nullptr;
  int64_t ldy = 0;
  int64_t rows = 0;
  // Where the packed matrices read after this one end, when they follow it in memory
  // (WeightView::packed_run_end): the call that ends at the last group prefetches on into them.
  const uint8_t* run_on_end = nullptr;
  // Optional, for the AMX prefill (repack_avx512.cpp): the Q8_0 activations of tokens
  // [0, n_tokens / 16 * 16) laid out as AMX A tiles by packed_act_tiles(), once per product for
  // every thread. Null: the kernel lays them out itself.
  const uint8_t* act_tiles = nullptr;
  const float* act_tile_d = nullptr;
};
// Computes the outputs of row groups [g0, g1) for every token.
using PackedGemmFn = void (*)(const PackedGemmArgs& a, int64_t g0, int64_t g1);
struct PackedGemmOps {
  PackedGemmFn q4_0, q4_1, q5_0, q8_0, mxfp4, nvfp4, q4_k, q6_k;
};
const PackedGemmOps& packed_gemm_ops();  // the active SIMD level's
const PackedGemmOps& packed_gemm_ops_scalar();
const PackedGemmOps& packed_gemm_ops_avx2();
const PackedGemmOps& packed_gemm_ops_avx512();
PackedGemmFn packed_gemm_pick(const PackedGemmOps& ops, formats::GgmlType t);

// The side data of one Q8_0 row of nb blocks: nb scales, 2 * nb half-block sums.
void packed_act_sides(const uint8_t* q8_row, int64_t nb, float* d, int32_t* sum);
// Token t's Q8_0 row of nb blocks in the AMX tile layout: its 32 bytes of block b at
// tiles[((t / 16 * nb + b) * 16 + t % 16) * 32], the block's scale at d[(t / 16 * nb + b) * 16 + t % 16]
// ([token tile][block][16 tokens]: an A tile of 16 tokens is 512 contiguous bytes).
void packed_act_tiles(const uint8_t* q8_row, int64_t nb, int64_t t, uint8_t* tiles, float* d);
// Whether products of n_tokens tokens may take the AMX prefill (and so want packed_act_tiles).
bool packed_amx_wanted(int64_t n_tokens);

// Owns the packed copies of a model's matrices.
class PackedWeights {
 public:
  // Packs w (if can_pack(w.type) and packing is not disabled by FENNEC_REPACK=0) and points
  // w.packed at the copy. Groups are packed in parallel on pool. With release_mapped (w.data
  // lies in a read-only file map), the original's pages are then released (madvise DONTNEED:
  // they stay in the page cache and are read again if touched), so resident memory holds one
  // copy; never for memory that is not a file map, whose contents DONTNEED would discard.
  void pack(WeightView& w, ThreadPool& pool, bool release_mapped = false);
  // Packs those of ws that can be packed into one buffer, one after another in the order given,
  // which should be the order the products read them (a model's decode step): each one's
  // packed_run_end is the buffer's end, so a product's prefetch runs on from one matrix into the
  // next, and matrices smaller than a huge page share huge pages. Otherwise as pack() of each.
  void pack_all(std::span<WeightView* const> ws, ThreadPool& pool, bool release_mapped = false);
  int64_t bytes() const { return bytes_; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::vector<std::unique_ptr<uint8_t, Free>> bufs_;
  int64_t bytes_ = 0;
};

// False when FENNEC_REPACK=0 is set (read once) or after set_repack_enabled(false). Without
// packing, Q4_0/Q5_0/Q8_0 products keep ggml's per-output float order (quant_gemm.h) and the FP4
// types fall back to dequantized float dots.
bool repack_enabled();
void set_repack_enabled(bool on);  // for tests: affects models loaded afterwards

// Q4_1 matrices are packed unless FENNEC_PACK_Q4_1=0 (or set_pack_q4_1_enabled(false)). Packed,
// SmolLM2 Q4_1 decodes 25-100% faster, and prefills 8-30% slower: a pass takes at most two
// tokens (AVX-512; one on AVX2) where the unpacked kernel tiles many (bench/vs-llamacpp).
bool pack_q4_1_enabled();
void set_pack_q4_1_enabled(bool on);

}  // namespace fennec::kernels
