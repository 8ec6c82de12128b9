// Packing of Q4_0 / Q8_0 matrices into 16-row groups, and the scalar products that define the
// bits of the SIMD ones (repack_avx2.cpp, repack_avx512.cpp).
#include "kernels/cpu/repack.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "core/float_convert.h"
#include "kernels/cpu/cpu_features.h"
#include "quant/blocks.h"

namespace fennec::kernels {

using formats::GgmlType;
using quant::BlockQ4_0;
using quant::BlockQ8_0;

namespace {

constexpr int64_t kQ4Qs = 4 * 64;  // interleaved quant bytes per block of a group
constexpr int64_t kQ8Qs = 8 * 64;

int64_t qs_bytes(GgmlType t) { return t == GgmlType::Q4_0 ? kQ4Qs : kQ8Qs; }

template <class Block, int kChunks, uint8_t kXor>
void pack_type(const WeightView& w, uint8_t* dst, int64_t g0, int64_t g1) {
  const int64_t nb = w.cols / quant::kQK;
  const int64_t gbytes = packed_group_stride(kChunks, nb);
  for (int64_t g = g0; g < g1; ++g) {
    uint8_t* qs = dst + g * gbytes;
    uint16_t* d = reinterpret_cast<uint16_t*>(qs + nb * kChunks * 64);
    for (int r = 0; r < kPackRows; ++r) {
      const int64_t row = g * kPackRows + r;
      const Block* src = row < w.rows ? reinterpret_cast<const Block*>(w.data + row * w.row_bytes) : nullptr;
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* q = qs + b * kChunks * 64 + 4 * r;
        d[b * kPackRows + r] = src ? src[b].d : 0;
        for (int j = 0; j < kChunks; ++j)
          for (int k = 0; k < 4; ++k) {
            // Missing rows: zero weights (Q4_0's nibble 8, Q8_0's unsigned 128) and zero scale.
            const uint8_t v = src ? static_cast<uint8_t>(src[b].qs[4 * j + k]) : (kXor ? 0 : 0x88);
            q[j * 64 + k] = v ^ kXor;
          }
      }
    }
  }
}

// The defining computation: per output, the block's exact integer sum, then one fma chain.
template <bool kQ4>
void gemm_scalar(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  constexpr int kChunks = kQ4 ? 4 : 8;
  const int64_t gbytes = packed_group_stride(kChunks, a.nb);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* qs = a.w + g * gbytes;
    const uint16_t* d = reinterpret_cast<const uint16_t*>(qs + a.nb * kChunks * 64);
    const int nr = static_cast<int>(std::min<int64_t>(kPackRows, a.rows - g * kPackRows));
    for (int64_t t = 0; t < a.n_tokens; ++t) {
      const auto* act = reinterpret_cast<const BlockQ8_0*>(a.act + t * a.act_stride);
      for (int r = 0; r < nr; ++r) {
        float acc = 0.0f;
        for (int64_t b = 0; b < a.nb; ++b) {
          const uint8_t* q = qs + b * kChunks * 64 + 4 * r;
          const int8_t* y = act[b].qs;
          int32_t isum = 0;
          for (int j = 0; j < 4 * kChunks; ++j) {
            const uint8_t v = q[(j / 4) * 64 + j % 4];
            if constexpr (kQ4) {
              isum += ((v & 0x0F) - 8) * y[j];
              isum += ((v >> 4) - 8) * y[j + 16];
            } else {
              isum += (static_cast<int32_t>(v) - 128) * y[j];
            }
          }
          const float dd = fp16_to_f32(d[b * kPackRows + r]) * a.act_d[t * a.nb + b];
          acc = std::fma(static_cast<float>(isum), dd, acc);
        }
        a.y[t * a.ldy + g * kPackRows + r] = acc;
      }
    }
  }
}

}  // namespace

bool can_pack(GgmlType t) { return t == GgmlType::Q4_0 || t == GgmlType::Q8_0; }

int64_t packed_group_bytes(GgmlType t, int64_t cols) {
  return packed_group_stride(static_cast<int>(qs_bytes(t) / 64), cols / quant::kQK);
}

int64_t packed_bytes(GgmlType t, int64_t rows, int64_t cols) {
  return (rows + kPackRows - 1) / kPackRows * packed_group_bytes(t, cols);
}

void pack_groups(const WeightView& w, uint8_t* dst, int64_t g0, int64_t g1) {
  if (w.type == GgmlType::Q4_0)
    pack_type<BlockQ4_0, 4, 0>(w, dst, g0, g1);
  else
    pack_type<BlockQ8_0, 8, 0x80>(w, dst, g0, g1);
}

void packed_act_sides(const uint8_t* q8_row, int64_t nb, float* d, int32_t* sum) {
  const auto* blk = reinterpret_cast<const BlockQ8_0*>(q8_row);
  for (int64_t b = 0; b < nb; ++b) {
    d[b] = fp16_to_f32(blk[b].d);
    int32_t s = 0;
    for (int j = 0; j < quant::kQK; ++j) s += blk[b].qs[j];
    sum[b] = s;
  }
}

const PackedGemmOps& packed_gemm_ops_scalar() {
  static const PackedGemmOps ops{&gemm_scalar<true>, &gemm_scalar<false>};
  return ops;
}

const PackedGemmOps& packed_gemm_ops() {
  switch (active_simd_level()) {
    case SimdLevel::kAvx512:
      return packed_gemm_ops_avx512();
    case SimdLevel::kAvx2:
      return packed_gemm_ops_avx2();
    default:
      return packed_gemm_ops_scalar();
  }
}

PackedGemmFn packed_gemm_pick(const PackedGemmOps& ops, GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0:
      return ops.q4_0;
    case GgmlType::Q8_0:
      return ops.q8_0;
    default:
      return nullptr;
  }
}

namespace {
std::atomic<bool>& repack_flag() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("FENNEC_REPACK");
    return !(e && std::strcmp(e, "0") == 0);
  }()};
  return on;
}
}  // namespace

bool repack_enabled() { return repack_flag().load(std::memory_order_relaxed); }
void set_repack_enabled(bool on) { repack_flag().store(on, std::memory_order_relaxed); }

void PackedWeights::pack(WeightView& w, ThreadPool& pool) {
  if (!repack_enabled() || !can_pack(w.type) || w.packed || w.cols % quant::kQK != 0) return;
  const int64_t bytes = packed_bytes(w.type, w.rows, w.cols);
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, static_cast<size_t>((bytes + 63) / 64 * 64)));
  if (!p) return;  // keep the unpacked path
  const int64_t groups = (w.rows + kPackRows - 1) / kPackRows;
  pool.parallel_for(groups, [&](int64_t g0, int64_t g1) { pack_groups(w, p, g0, g1); });
  bufs_.emplace_back(p);
  bytes_ += bytes;
  w.packed = p;
}

}  // namespace fennec::kernels
