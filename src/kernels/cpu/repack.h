// Weight matrices repacked at load into 16-row interleaved tiles, and the products that read
// them. One SIMD lane per output row: a block of 32 columns of 16 rows is a few 64-byte vectors
// whose int32 lane r gathers 4 consecutive bytes of row r, so one vpdpbusd with 4 activation
// bytes broadcast advances 16 outputs by 4 columns. The block's integer sum is exact; then
//   acc[r] = fma(float(isum[r]), d_w[r] * d_a, acc[r])      (block order, one chain per output)
// a single float chain per output where the per-output kernels of quant_dot.h keep eight lanes
// (ggml's order) and pay a convert and an fma per 8 columns. Every ISA path (scalar, AVX2,
// AVX-512) computes exactly these steps, so all give the same bits, for any number of tokens.
//
// Layout of group g (rows 16g .. 16g+15, missing rows zero) of a matrix with nb blocks per row:
// nb blocks of interleaved quants, then nb x 16 fp16 row scales, then padding to 64 bytes.
//   Q4_0: quants chunk j (0..3) of a block, 64 bytes, holds bytes 4j..4j+3 of each row's qs at
//         4r: low nibbles are columns 4j..4j+3, high nibbles columns 16+4j..16+4j+3.
//   Q8_0: chunk j (0..7) holds qs[4j..4j+3] of each row at 4r, stored as unsigned (x + 128).
// Memory: the bytes of the original rows (plus padding to 16 rows and 64 bytes); the originals
// of packed matrices are then no longer read.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "formats/ggml_type.h"
#include "kernels/cpu/ops.h"

namespace fennec::kernels {

inline constexpr int kPackRows = 16;

// Bytes of one 16-row group with nb blocks of `chunks` 64-byte quant vectors each: the quants,
// the fp16 scales, and padding to keep every group 64-byte aligned.
constexpr int64_t packed_group_stride(int chunks, int64_t nb) {
  return (nb * (chunks * 64 + kPackRows * 2) + 63) / 64 * 64;
}

// Types with a packed form: Q4_0 and Q8_0 (both with Q8_0 activations).
bool can_pack(formats::GgmlType t);
// Bytes of one 16-row group, and of the whole packed matrix.
int64_t packed_group_bytes(formats::GgmlType t, int64_t cols);
int64_t packed_bytes(formats::GgmlType t, int64_t rows, int64_t cols);
// Packs groups [g0, g1) of w (rows of w.row_bytes at w.data) into dst (packed_bytes() long).
void pack_groups(const WeightView& w, uint8_t* dst, int64_t g0, int64_t g1);

// Products with a packed matrix. Activations are Q8_0 rows (act + t * act_stride); act_d and
// act_sum hold, per token t and block b at [t * nb + b], the block's scale as float and the sum
// of its 32 bytes (packed_act_sides computes them). y[t * ldy + r] for rows r < rows.
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
};
// Computes the outputs of row groups [g0, g1) for every token.
using PackedGemmFn = void (*)(const PackedGemmArgs& a, int64_t g0, int64_t g1);
struct PackedGemmOps {
  PackedGemmFn q4_0, q8_0;
};
const PackedGemmOps& packed_gemm_ops();  // the active SIMD level's
const PackedGemmOps& packed_gemm_ops_scalar();
const PackedGemmOps& packed_gemm_ops_avx2();
const PackedGemmOps& packed_gemm_ops_avx512();
PackedGemmFn packed_gemm_pick(const PackedGemmOps& ops, formats::GgmlType t);

// The side data of one Q8_0 row of nb blocks.
void packed_act_sides(const uint8_t* q8_row, int64_t nb, float* d, int32_t* sum);

// Owns the packed copies of a model's matrices.
class PackedWeights {
 public:
  // Packs w (if can_pack(w.type) and packing is not disabled by FENNEC_REPACK=0) and points
  // w.packed at the copy. Groups are packed in parallel on pool.
  void pack(WeightView& w, ThreadPool& pool);
  int64_t bytes() const { return bytes_; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::vector<std::unique_ptr<uint8_t, Free>> bufs_;
  int64_t bytes_ = 0;
};

// False when FENNEC_REPACK=0 is set (read once) or after set_repack_enabled(false). Without
// packing, Q4_0/Q8_0 products keep ggml's per-output float order (quant_gemm.h).
bool repack_enabled();
void set_repack_enabled(bool on);  // for tests: affects models loaded afterwards

}  // namespace fennec::kernels
