// Packing into 16-row groups (repack_layout.h), and the scalar products that define the bits of
// the SIMD ones (repack_avx2.cpp, repack_avx512.cpp).
#include "kernels/cpu/repack.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <sys/mman.h>
#include <unistd.h>

#include "core/float_convert.h"
#include "core/huge_alloc.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/repack_layout.h"
#include "quant/blocks.h"
#include "quant/dequantize.h"

namespace fennec::kernels {

using formats::GgmlType;

namespace {

// One row's block of 32 columns in packed terms: u per column, the qh word (Q5_0), the scales
// (Q4_1: d, then m).
struct RowBlock {
  uint8_t u[32] = {};
  uint32_t qh = 0;
  uint16_t scale[2] = {};
};

// Reads block b (of 32 columns) of a row of type t.
RowBlock read_block(GgmlType t, const uint8_t* row, int64_t b) {
  RowBlock o;
  switch (t) {
    case GgmlType::Q4_0: {
      const auto& x = reinterpret_cast<const quant::BlockQ4_0*>(row)[b];
      for (int i = 0; i < 16; ++i) {
        o.u[i] = x.qs[i] & 0x0F;
        o.u[i + 16] = x.qs[i] >> 4;
      }
      o.scale[0] = x.d;
      break;
    }
    case GgmlType::Q4_1: {
      const auto& x = reinterpret_cast<const quant::BlockQ4_1*>(row)[b];
      for (int i = 0; i < 16; ++i) {
        o.u[i] = x.qs[i] & 0x0F;
        o.u[i + 16] = x.qs[i] >> 4;
      }
      o.scale[0] = x.d;
      o.scale[1] = x.m;
      break;
    }
    case GgmlType::Q5_0: {
      const auto& x = reinterpret_cast<const quant::BlockQ5_0*>(row)[b];
      for (int i = 0; i < 16; ++i) {
        o.u[i] = x.qs[i] & 0x0F;
        o.u[i + 16] = x.qs[i] >> 4;
      }
      std::memcpy(&o.qh, x.qh, 4);
      o.scale[0] = x.d;
      break;
    }
    case GgmlType::Q8_0: {
      const auto& x = reinterpret_cast<const quant::BlockQ8_0*>(row)[b];
      for (int i = 0; i < 32; ++i) o.u[i] = static_cast<uint8_t>(x.qs[i]) ^ 0x80;
      o.scale[0] = x.d;
      break;
    }
    case GgmlType::MXFP4: {
      const auto& x = reinterpret_cast<const quant::BlockMxfp4*>(row)[b];
      for (int i = 0; i < 16; ++i) {
        o.u[i] = x.qs[i] & 0x0F;
        o.u[i + 16] = x.qs[i] >> 4;
      }
      o.scale[0] = static_cast<uint16_t>(f32_to_bits(e8m0_to_f32_half(x.e)) >> 16);  // exact
      break;
    }
    case GgmlType::NVFP4: {
      // Packed block b is half b % 2 of NVFP4 block b / 2: its sub-blocks 2h and 2h + 1.
      const auto& x = reinterpret_cast<const quant::BlockNvfp4*>(row)[b / 2];
      const int h = static_cast<int>(b % 2);
      for (int s = 0; s < 2; ++s) {
        const int sb = 2 * h + s;
        const uint8_t* q = x.qs + 8 * sb;  // byte 8sb+j: column 16sb+j (low), 16sb+j+8 (high)
        for (int j = 0; j < 8; ++j) {
          o.u[16 * s + j] = q[j] & 0x0F;
          o.u[16 * s + j + 8] = q[j] >> 4;
        }
        o.scale[s] = f32_to_fp16(ue4m3_to_f32_half(x.d[sb]));  // exact: <= 3 mantissa bits
      }
      break;
    }
    default:
      break;
  }
  return o;
}

template <class L>
void pack_type(const WeightView& w, uint8_t* dst, int64_t g0, int64_t g1) {
  const int64_t nb = w.cols / quant::kQK;
  const int64_t gbytes = packed::group_stride<L>(nb);
  for (int64_t g = g0; g < g1; ++g) {
    uint8_t* grp = dst + g * gbytes;
    std::memset(grp, 0, static_cast<size_t>(gbytes));
    for (int r = 0; r < kPackRows; ++r) {
      const int64_t row = g * kPackRows + r;
      if (row >= w.rows) continue;  // missing rows: zero quants and zero scales
      for (int64_t b = 0; b < nb; ++b) {
        const RowBlock rb = read_block(w.type, w.data + row * w.row_bytes, b);
        const packed::BlockAt at = packed::block_at<L>(nb, b);
        uint8_t* q = grp + at.quants + 4 * r;
        auto* sc = reinterpret_cast<uint16_t*>(grp + at.scales);
        for (int j = 0; j < L::kChunks; ++j)
          for (int k = 0; k < 4; ++k)
            q[64 * j + k] = L::kChunks == 8 ? rb.u[4 * j + k]
                                            : static_cast<uint8_t>(rb.u[4 * j + k] | rb.u[16 + 4 * j + k] << 4);
        if constexpr (L::kQh) std::memcpy(q + 64 * L::kChunks, &rb.qh, 4);
        for (int s = 0; s < L::kScales + (L::kMin ? 1 : 0); ++s) sc[s * kPackRows + r] = rb.scale[s];
      }
    }
  }
}

// The loops shared by the K-quant packers: pack_block(blk, r, row's block sb) for every present
// row and super-block of groups [g0, g1); missing rows stay zero.
template <class K, class Block, class F>
void pack_kquant(const WeightView& w, uint8_t* dst, int64_t g0, int64_t g1, F pack_block) {
  const int64_t nsb = w.cols / quant::kQKK;
  for (int64_t g = g0; g < g1; ++g) {
    uint8_t* grp = dst + g * nsb * K::kBytes;
    std::memset(grp, 0, static_cast<size_t>(nsb * K::kBytes));
    for (int r = 0; r < kPackRows; ++r) {
      const int64_t row = g * kPackRows + r;
      if (row >= w.rows) continue;
      const auto* x = reinterpret_cast<const Block*>(w.data + row * w.row_bytes);
      for (int64_t sb = 0; sb < nsb; ++sb) pack_block(grp + sb * K::kBytes, r, x[sb]);
    }
  }
}

// The loops shared by the scalar K-quant products: acc = step(blk, r, activation block, acc)
// per super-block, in order, for every output.
template <class K, class F>
void gemm_kquant_scalar(const PackedGemmArgs& a, int64_t g0, int64_t g1, F step) {
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = a.w + g * a.nb * K::kBytes;
    const int nr = static_cast<int>(std::min<int64_t>(kPackRows, a.rows - g * kPackRows));
    for (int64_t t = 0; t < a.n_tokens; ++t) {
      const auto* y = reinterpret_cast<const quant::BlockQ8K*>(a.act + t * a.act_stride);
      for (int r = 0; r < nr; ++r) {
        float acc = 0.0f;
        for (int64_t sb = 0; sb < a.nb; ++sb) acc = step(grp + sb * K::kBytes, r, y[sb], acc);
        a.y[t * a.ldy + g * kPackRows + r] = acc;
      }
    }
  }
}

void pack_q4k(const WeightView& w, uint8_t* dst, int64_t g0, int64_t g1) {
  using packed::Q4K;
  pack_kquant<Q4K, quant::BlockQ4K>(w, dst, g0, g1, [](uint8_t* blk, int r, const quant::BlockQ4K& x) {
    for (int p = 0; p < 4; ++p)
      for (int j = 0; j < 8; ++j) std::memcpy(blk + 512 * p + 64 * j + 4 * r, x.qs + 32 * p + 4 * j, 4);
    uint8_t sc[8], mn[8];
    quant::ref::unpack_scale_min_k4(x.scales, sc, mn);
    for (int j = 0; j < 8; ++j) {
      blk[Q4K::kScales + 16 * j + r] = sc[j];
      blk[Q4K::kMins + 32 * (j / 2) + 2 * r + j % 2] = mn[j];
    }
    std::memcpy(blk + Q4K::kD + 2 * r, &x.d, 2);
    std::memcpy(blk + Q4K::kDmin + 2 * r, &x.dmin, 2);
  });
}

void gemm_q4k_scalar(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  using packed::Q4K;
  gemm_kquant_scalar<Q4K>(a, g0, g1, [](const uint8_t* blk, int r, const quant::BlockQ8K& y, float acc) {
    int32_t isum = 0, imin = 0;
    for (int j = 0; j < 8; ++j) {
      int32_t s = 0;
      for (int c = 0; c < 32; ++c) {
        const uint8_t byte = blk[512 * (j / 2) + 64 * (c / 4) + 4 * r + c % 4];
        s += ((j % 2) ? byte >> 4 : byte & 0x0F) * y.qs[32 * j + c];
      }
      isum += blk[Q4K::kScales + 16 * j + r] * s;
      imin += blk[Q4K::kMins + 32 * (j / 2) + 2 * r + j % 2] * (y.bsums[2 * j] + y.bsums[2 * j + 1]);
    }
    uint16_t d, dmin;
    std::memcpy(&d, blk + Q4K::kD + 2 * r, 2);
    std::memcpy(&dmin, blk + Q4K::kDmin + 2 * r, 2);
    acc = std::fma(static_cast<float>(isum), fp16_to_f32(d) * y.d, acc);
    return std::fma(-static_cast<float>(imin), fp16_to_f32(dmin) * y.d, acc);
  });
}

// Column e (0..255) of a Q6_K block: the 6-bit q (ggml's layout: halves of 128, in each the 32
// columns l, l+32, l+64, l+96 share ql[l], ql[l+32] and qh[l]).
uint8_t q6k_value(const quant::BlockQ6K& x, int e) {
  const int n = e / 128, i = (e % 128) / 32, l = e % 32;
  const uint8_t* ql = x.ql + 64 * n;
  const uint8_t* qh = x.qh + 32 * n;
  const uint8_t lo = (i % 2 == 0 ? ql[l] : ql[l + 32]) >> (4 * (i / 2)) & 0x0F;
  return static_cast<uint8_t>(lo | ((qh[l] >> (2 * i)) & 3) << 4);
}

void pack_q6k(const WeightView& w, uint8_t* dst, int64_t g0, int64_t g1) {
  using packed::Q6K;
  pack_kquant<Q6K, quant::BlockQ6K>(w, dst, g0, g1, [](uint8_t* blk, int r, const quant::BlockQ6K& x) {
    for (int j = 0; j < 8; ++j) {
      uint8_t u[32];
      uint32_t b4 = 0, b5 = 0;
      for (int c = 0; c < 32; ++c) {
        u[c] = q6k_value(x, 32 * j + c);
        b4 |= static_cast<uint32_t>((u[c] >> 4) & 1) << c;
        b5 |= static_cast<uint32_t>((u[c] >> 5) & 1) << c;
      }
      uint8_t* sub = blk + Q6K::kSub * j;
      for (int c = 0; c < 4; ++c)
        for (int k = 0; k < 4; ++k)
          sub[64 * c + 4 * r + k] = static_cast<uint8_t>((u[4 * c + k] & 0x0F) | (u[16 + 4 * c + k] & 0x0F) << 4);
      std::memcpy(sub + 256 + 4 * r, &b4, 4);
      std::memcpy(sub + 320 + 4 * r, &b5, 4);
    }
    for (int gi = 0; gi < 16; ++gi) blk[Q6K::kScales + 16 * gi + r] = static_cast<uint8_t>(x.scales[gi]);
    std::memcpy(blk + Q6K::kD + 2 * r, &x.d, 2);
  });
}

void gemm_q6k_scalar(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  using packed::Q6K;
  gemm_kquant_scalar<Q6K>(a, g0, g1, [](const uint8_t* blk, int r, const quant::BlockQ8K& y, float acc) {
    int32_t isum = 0;
    for (int gi = 0; gi < 16; ++gi) {
      const uint8_t* sub = blk + Q6K::kSub * (gi / 2);
      uint32_t b4, b5;
      std::memcpy(&b4, sub + 256 + 4 * r, 4);
      std::memcpy(&b5, sub + 320 + 4 * r, 4);
      int32_t dot = 0;
      for (int c = 16 * (gi % 2); c < 16 * (gi % 2) + 16; ++c) {
        const uint8_t byte = sub[64 * ((c % 16) / 4) + 4 * r + c % 4];
        const int u = (c < 16 ? byte & 0x0F : byte >> 4) | ((b4 >> c) & 1) << 4 | ((b5 >> c) & 1) << 5;
        dot += u * y.qs[16 * gi + c % 16];
      }
      isum += static_cast<int8_t>(blk[Q6K::kScales + 16 * gi + r]) * (dot - 32 * y.bsums[gi]);
    }
    uint16_t d;
    std::memcpy(&d, blk + Q6K::kD + 2 * r, 2);
    return std::fma(static_cast<float>(isum), fp16_to_f32(d) * y.d, acc);
  });
}

// The signed weight of column c of row r in packed block q (which starts at the block).
template <class L>
int32_t weight(const uint8_t* q, int r, int c) {
  const int j = (c / 4) % 8, k = c % 4;
  uint8_t u;
  if constexpr (L::kChunks == 8) {
    u = q[64 * j + 4 * r + k];
  } else {
    const uint8_t byte = q[64 * (j % 4) + 4 * r + k];
    u = j < 4 ? byte & 0x0F : byte >> 4;
  }
  if constexpr (L::kQh) {
    uint32_t qh;
    std::memcpy(&qh, q + 64 * L::kChunks + 4 * r, 4);
    u |= static_cast<uint8_t>(((qh >> c) & 1) << 4);
  }
  if constexpr (L::kLut) u = packed::kE2M1Unsigned[u];
  return static_cast<int32_t>(u) - L::kOffset;
}

// Q4_1 (kMin), in ggml's order with Q8_1 activations: per output, 8 float lanes, lane l the
// exact sum over columns 4l..4l+3 (packed step l), acc_l = fma(float(lane_l), d * d_y, acc_l),
// and summs = fma(m, s_y, summs) (ggml's summs += m * s, contracted as GCC compiles it); the
// output is ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7)) + summs.
template <class L>
void gemm_scalar_lanes(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  const int64_t gbytes = packed::group_stride<L>(a.nb);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = a.w + g * gbytes;
    const int nr = static_cast<int>(std::min<int64_t>(kPackRows, a.rows - g * kPackRows));
    for (int64_t t = 0; t < a.n_tokens; ++t) {
      const auto* act = reinterpret_cast<const quant::BlockQ8_1*>(a.act + t * a.act_stride);
      for (int r = 0; r < nr; ++r) {
        float acc[8] = {}, summs = 0.0f;
        for (int64_t b = 0; b < a.nb; ++b) {
          const packed::BlockAt at = packed::block_at<L>(a.nb, b);
          const uint8_t* q = grp + at.quants;
          const auto* sc = reinterpret_cast<const uint16_t*>(grp + at.scales);
          const float dd = fp16_to_f32(sc[r]) * fp16_to_f32(act[b].d);
          summs = std::fma(fp16_to_f32(sc[kPackRows + r]), fp16_to_f32(act[b].s), summs);
          for (int l = 0; l < 8; ++l) {
            int32_t lane = 0;
            for (int c = 4 * l; c < 4 * l + 4; ++c) lane += weight<L>(q, r, c) * act[b].qs[c];
            acc[l] = std::fma(static_cast<float>(lane), dd, acc[l]);
          }
        }
        a.y[t * a.ldy + g * kPackRows + r] =
            ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + summs;
      }
    }
  }
}

// The defining computation: per output and block, the exact integer sums, then the fma chain.
template <class L>
void gemm_scalar(const PackedGemmArgs& a, int64_t g0, int64_t g1) {
  if constexpr (L::kMin) return gemm_scalar_lanes<L>(a, g0, g1);
  const int64_t gbytes = packed::group_stride<L>(a.nb);
  constexpr int kCols = 32 / L::kScales;  // columns per scale
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = a.w + g * gbytes;
    const int nr = static_cast<int>(std::min<int64_t>(kPackRows, a.rows - g * kPackRows));
    for (int64_t t = 0; t < a.n_tokens; ++t) {
      const auto* act = reinterpret_cast<const quant::BlockQ8_0*>(a.act + t * a.act_stride);
      for (int r = 0; r < nr; ++r) {
        float acc = 0.0f;
        for (int64_t b = 0; b < a.nb; ++b) {
          const packed::BlockAt at = packed::block_at<L>(a.nb, b);
          const uint8_t* q = grp + at.quants;
          const auto* sc = reinterpret_cast<const uint16_t*>(grp + at.scales);
          for (int s = 0; s < L::kScales; ++s) {
            int32_t isum = 0;
            for (int c = kCols * s; c < kCols * (s + 1); ++c) isum += weight<L>(q, r, c) * act[b].qs[c];
            const float dd = packed::scale_value<L>(sc[s * kPackRows + r]) * a.act_d[t * a.nb + b];
            acc = std::fma(static_cast<float>(isum), dd, acc);
          }
        }
        a.y[t * a.ldy + g * kPackRows + r] = acc;
      }
    }
  }
}

template <class L>
int64_t stride_of(int64_t nb) {
  return packed::group_stride<L>(nb);
}

}  // namespace

bool can_pack(GgmlType t) {
  return t == GgmlType::Q4_0 || t == GgmlType::Q4_1 || t == GgmlType::Q5_0 || t == GgmlType::Q8_0 || t == GgmlType::MXFP4 ||
         t == GgmlType::NVFP4 || t == GgmlType::Q4_K || t == GgmlType::Q6_K;
}

int64_t packed_group_bytes(GgmlType t, int64_t cols) {
  const int64_t nb = cols / quant::kQK;
  switch (t) {
    case GgmlType::Q4_0: return stride_of<packed::Q4_0>(nb);
    case GgmlType::Q4_1: return stride_of<packed::Q4_1>(nb);
    case GgmlType::Q5_0: return stride_of<packed::Q5_0>(nb);
    case GgmlType::Q8_0: return stride_of<packed::Q8_0>(nb);
    case GgmlType::MXFP4: return stride_of<packed::Mxfp4>(nb);
    case GgmlType::NVFP4: return stride_of<packed::Nvfp4>(nb);
    case GgmlType::Q4_K: return cols / quant::kQKK * packed::Q4K::kBytes;
    case GgmlType::Q6_K: return cols / quant::kQKK * packed::Q6K::kBytes;
    default: return 0;
  }
}

int64_t packed_bytes(GgmlType t, int64_t rows, int64_t cols) {
  return (rows + kPackRows - 1) / kPackRows * packed_group_bytes(t, cols);
}

void pack_groups(const WeightView& w, uint8_t* dst, int64_t g0, int64_t g1) {
  switch (w.type) {
    case GgmlType::Q4_0: pack_type<packed::Q4_0>(w, dst, g0, g1); break;
    case GgmlType::Q4_1: pack_type<packed::Q4_1>(w, dst, g0, g1); break;
    case GgmlType::Q5_0: pack_type<packed::Q5_0>(w, dst, g0, g1); break;
    case GgmlType::Q8_0: pack_type<packed::Q8_0>(w, dst, g0, g1); break;
    case GgmlType::MXFP4: pack_type<packed::Mxfp4>(w, dst, g0, g1); break;
    case GgmlType::NVFP4: pack_type<packed::Nvfp4>(w, dst, g0, g1); break;
    case GgmlType::Q4_K: pack_q4k(w, dst, g0, g1); break;
    case GgmlType::Q6_K: pack_q6k(w, dst, g0, g1); break;
    default: break;
  }
}

void packed_act_sides(const uint8_t* q8_row, int64_t nb, float* d, int32_t* sum) {
  const auto* blk = reinterpret_cast<const quant::BlockQ8_0*>(q8_row);
  for (int64_t b = 0; b < nb; ++b) {
    d[b] = fp16_to_f32(blk[b].d);
    for (int h = 0; h < 2; ++h) {
      int32_t s = 0;
      for (int j = 16 * h; j < 16 * h + 16; ++j) s += blk[b].qs[j];
      sum[2 * b + h] = s;
    }
  }
}

void packed_act_tiles(const uint8_t* q8_row, int64_t nb, int64_t t, uint8_t* tiles, float* d) {
  const auto* blk = reinterpret_cast<const quant::BlockQ8_0*>(q8_row);
  for (int64_t b = 0; b < nb; ++b) {
    const auto i = static_cast<size_t>((t / 16 * nb + b) * 16 + t % 16);
    std::memcpy(tiles + 32 * i, blk[b].qs, 32);
    d[i] = fp16_to_f32(blk[b].d);
  }
}

bool packed_amx_wanted(int64_t n_tokens) { return n_tokens >= 16 && amx_usable(); }

const PackedGemmOps& packed_gemm_ops_scalar() {
  static const PackedGemmOps ops{&gemm_scalar<packed::Q4_0>, &gemm_scalar<packed::Q4_1>, &gemm_scalar<packed::Q5_0>,
                                 &gemm_scalar<packed::Q8_0>, &gemm_scalar<packed::Mxfp4>,
                                 &gemm_scalar<packed::Nvfp4>, &gemm_q4k_scalar, &gemm_q6k_scalar};
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
    case GgmlType::Q4_0: return ops.q4_0;
    case GgmlType::Q4_1: return ops.q4_1;
    case GgmlType::Q5_0: return ops.q5_0;
    case GgmlType::Q8_0: return ops.q8_0;
    case GgmlType::MXFP4: return ops.mxfp4;
    case GgmlType::NVFP4: return ops.nvfp4;
    case GgmlType::Q4_K: return ops.q4_k;
    case GgmlType::Q6_K: return ops.q6_k;
    default: return nullptr;
  }
}

namespace {
// On unless the environment variable is "0".
bool env_not_zero(const char* name) {
  const char* e = std::getenv(name);
  return !(e && std::strcmp(e, "0") == 0);
}
std::atomic<bool>& repack_flag() {
  static std::atomic<bool> on{env_not_zero("FENNEC_REPACK")};
  return on;
}
std::atomic<bool>& pack_q4_1_flag() {
  static std::atomic<bool> on{env_not_zero("FENNEC_PACK_Q4_1")};
  return on;
}
}  // namespace

namespace {
// The default plan: the constants (measured on AMD Zen 3 and, before the AVX-512 one-token
// products spread their prefetches over each step, Zen 4), except
// - on Intel CPUs, where the L1 stream alone at 1 KB read best (bench/micro/README.md, fourteenth
//   session: a Xeon with AVX-512 and AMX). There the AVX2 products decoded the 1.2B Q4_0 at
//   21.9-22.8 t/s with it against 17.2-17.4 with 4 KB; the AVX-512 ones were as fast either way;
// - on AMD family 1Ah (Zen 5) and later, where the L2 stream cost a fifth of the one-token
//   product's read and the L1 stream alone at 8 KB read best (fifteenth session: one core's
//   product 29 -> 37 GB/s against a plain read of 36-38; the 1.2B Q4_0 decode 42-47 -> 53-57 t/s);
// - on AMD Zen 4 (family 19h, running the AVX-512 products), where since that change the L1
//   stream alone at kPrefetchNear read best (seventeenth session, alternating plans per decode
//   step: the 1.2B Q4_0 decode 35.4 -> 44.1 t/s at one thread, 50.9 -> 55.6 at two; Gemma 3
//   78 -> 86; SmolLM2 Q4_0 212 -> 243, Q8_0 120 -> 128, Q4_1 204 -> 201; prefill as fast or
//   faster; 3-12 KB within 3% of 4 KB). The AVX2 products (Zen 3, or FENNEC_CPU=avx2) keep the
//   constants: they take no far stream, and with one in the plan their K-quants take no near
//   stream either, which on Zen 4 under FENNEC_CPU=avx2 decoded Gemma 3 5% faster (84.3 against
//   79.3 t/s) than the near stream.
packed::PrefetchPlan plan_from_env() {
  packed::PrefetchPlan p;
  const CpuModel cpu = cpu_model();
  if (cpu.vendor == CpuVendor::kIntel)
    p = {0, packed::kPrefetchNearIntel};
  else if (cpu.vendor == CpuVendor::kAmd && cpu.family >= 0x1A)
    p = {0, packed::kPrefetchNearZen5};
  else if (cpu.vendor == CpuVendor::kAmd && active_simd_level() == SimdLevel::kAvx512)
    p = {0, packed::kPrefetchNear};
  long far = 0, near = 0;
  if (const char* e = std::getenv("FENNEC_PREFETCH"); e && std::sscanf(e, "%ld,%ld", &far, &near) == 2 && far >= 0 && near >= 0)
    p = {far, near};
  return p;
}
// The process's plan, from plan_from_env() at first use.
struct PlanState {
  std::atomic<int64_t> far, near;
  explicit PlanState(packed::PrefetchPlan p) : far(p.far), near(p.near) {}
};
PlanState& plan_state() {
  static PlanState s(plan_from_env());
  return s;
}
}  // namespace

packed::PrefetchPlan packed::prefetch_plan() {
  PlanState& s = plan_state();
  return {s.far.load(std::memory_order_relaxed), s.near.load(std::memory_order_relaxed)};
}
void packed::set_prefetch_plan(PrefetchPlan plan) {
  PlanState& s = plan_state();
  s.far.store(plan.far, std::memory_order_relaxed);
  s.near.store(plan.near, std::memory_order_relaxed);
}

bool repack_enabled() { return repack_flag().load(std::memory_order_relaxed); }
void set_repack_enabled(bool on) { repack_flag().store(on, std::memory_order_relaxed); }

bool pack_q4_1_enabled() { return pack_q4_1_flag().load(std::memory_order_relaxed); }
void set_pack_q4_1_enabled(bool on) { pack_q4_1_flag().store(on, std::memory_order_relaxed); }

namespace {
bool packable(const WeightView& w) {
  if (!can_pack(w.type) || w.packed) return false;
  if (w.type == GgmlType::Q4_1 && !pack_q4_1_enabled()) return false;
  const int64_t per_block = w.type == GgmlType::NVFP4                                ? quant::kQKNvfp4
                            : w.type == GgmlType::Q4_K || w.type == GgmlType::Q6_K ? quant::kQKK
                                                                                   : quant::kQK;
  return w.cols % per_block == 0;
}
}  // namespace

void PackedWeights::pack(WeightView& w, ThreadPool& pool, bool release_mapped) {
  WeightView* one[] = {&w};
  pack_all(one, pool, release_mapped);
}

void PackedWeights::pack_all(std::span<WeightView* const> ws, ThreadPool& pool, bool release_mapped) {
  if (!repack_enabled()) return;
  std::vector<WeightView*> todo;
  int64_t total = 0;
  for (WeightView* w : ws)
    if (packable(*w) && std::find(todo.begin(), todo.end(), w) == todo.end()) {
      todo.push_back(w);
      total += packed_bytes(w->type, w->rows, w->cols);  // a multiple of 64: each matrix stays aligned
    }
  if (total == 0) return;
  // On huge pages where the kernel gives them: a decode step streams every packed byte once.
  auto* base = static_cast<uint8_t*>(alloc_streamed(static_cast<size_t>(total)));
  if (!base) return;  // keep the unpacked paths
  bufs_.emplace_back(base);
  bytes_ += total;
  uint8_t* p = base;
  for (WeightView* w : todo) {
    const int64_t groups = (w->rows + kPackRows - 1) / kPackRows;
    pool.parallel_for(groups, [&](int64_t g0, int64_t g1) { pack_groups(*w, p, g0, g1); });
    w->packed = p;
    w->packed_run_end = base + total;
    p += packed_bytes(w->type, w->rows, w->cols);
    if (!release_mapped) continue;
    // The products no longer read the mapped original: give its pages back (they stay in the page
    // cache; get_rows of a tied embedding faults in the few rows it reads).
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(w->data) + page - 1) / page * page;
    const uintptr_t hi =
        (reinterpret_cast<uintptr_t>(w->data) + static_cast<uintptr_t>(w->rows * w->row_bytes)) / page * page;
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
  }
}

}  // namespace fennec::kernels
