// Packed products (kernels/cpu/repack.h): every ISA path gives the scalar path's bits for every
// shape and token count; the scalar path equals an independent evaluation of its contract
// (exact integer block sums from the original unpacked blocks, then one fma chain per output);
// and matmul through a packed view agrees with the unpacked kernels to float rounding.
#include "kernels/cpu/repack.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

#include "core/float_convert.h"
#include "core/thread_pool.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/repack_layout.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_dot.h"
#include "quant/blocks.h"
#include "quant/dequantize.h"

namespace fennec::kernels {
namespace {

using formats::GgmlType;

int64_t block_cols(GgmlType t) {
  return t == GgmlType::NVFP4 ? 64 : t == GgmlType::Q4_K || t == GgmlType::Q6_K ? 256 : 32;
}
int64_t block_size(GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: return 18;
    case GgmlType::Q4_1: return 20;
    case GgmlType::Q5_0: return 22;
    case GgmlType::Q8_0: return 34;
    case GgmlType::MXFP4: return 17;
    case GgmlType::Q4_K: return 144;
    case GgmlType::Q6_K: return 210;
    default: return 36;  // NVFP4
  }
}
int64_t row_bytes(GgmlType t, int64_t cols) { return cols / block_cols(t) * block_size(t); }

// Random blocks with moderate scales; the random quant bytes cover every nibble, bit and byte
// (Q8_0's include -128).
std::vector<uint8_t> random_rows(GgmlType t, int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<uint8_t> m(static_cast<size_t>(rows * row_bytes(t, cols)));
  std::mt19937 rng(seed);
  for (auto& b : m) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u(0.001f, 0.05f);
  const size_t bs = static_cast<size_t>(block_size(t));
  for (size_t o = 0; o < m.size(); o += bs) {
    if (t == GgmlType::MXFP4) {
      m[o] = static_cast<uint8_t>(118 + rng() % 12);  // 2^-10 .. 2^1
    } else if (t == GgmlType::NVFP4) {
      for (int s = 0; s < 4; ++s) m[o + s] = static_cast<uint8_t>(rng() % 0x7f);  // incl. 0 and subnormals
    } else if (t == GgmlType::Q6_K) {
      const uint16_t h = f32_to_fp16(u(rng) / 16);
      std::memcpy(m.data() + o + 208, &h, 2);
    } else if (t == GgmlType::Q4_K) {
      for (int k = 0; k < 2; ++k) {
        const uint16_t h = f32_to_fp16(u(rng) / 16);
        std::memcpy(m.data() + o + 2 * k, &h, 2);
      }
    } else {
      const uint16_t h = f32_to_fp16(u(rng));
      std::memcpy(m.data() + o, &h, 2);
      if (t == GgmlType::Q4_1) {  // m: a block's minimum, so usually negative
        const uint16_t mn = f32_to_fp16(-8 * u(rng) + 0.01f);
        std::memcpy(m.data() + o + 2, &mn, 2);
      }
    }
  }
  return m;
}

// Column c of a row: the signed integer weight and the float scale it is multiplied by,
// decoded from ggml's block layouts (independently of the packer).
std::pair<int32_t, float> decode(GgmlType t, const uint8_t* row, int64_t c) {
  const int64_t b = c / block_cols(t), i = c % block_cols(t);
  const uint8_t* blk = row + b * block_size(t);
  auto nib = [](const uint8_t* qs, int64_t i, int64_t half) { return i < half ? qs[i] & 0x0F : qs[i - half] >> 4; };
  switch (t) {
    case GgmlType::Q4_0: {
      const auto* x = reinterpret_cast<const quant::BlockQ4_0*>(blk);
      return {nib(x->qs, i, 16) - 8, fp16_to_f32(x->d)};
    }
    case GgmlType::Q4_1: {  // x = d * u + m: the m of block_min()
      const auto* x = reinterpret_cast<const quant::BlockQ4_1*>(blk);
      return {nib(x->qs, i, 16), fp16_to_f32(x->d)};
    }
    case GgmlType::Q5_0: {
      const auto* x = reinterpret_cast<const quant::BlockQ5_0*>(blk);
      uint32_t qh;
      std::memcpy(&qh, x->qh, 4);
      return {(nib(x->qs, i, 16) | static_cast<int>((qh >> i) & 1) << 4) - 16, fp16_to_f32(x->d)};
    }
    case GgmlType::Q8_0: {
      const auto* x = reinterpret_cast<const quant::BlockQ8_0*>(blk);
      return {x->qs[i], fp16_to_f32(x->d)};
    }
    case GgmlType::MXFP4: {
      const auto* x = reinterpret_cast<const quant::BlockMxfp4*>(blk);
      return {kE2M1Doubled[nib(x->qs, i, 16)], e8m0_to_f32_half(x->e)};
    }
    default: {  // NVFP4: sub-block s = i / 16, byte 8s+j holds columns 16s+j and 16s+j+8
      const auto* x = reinterpret_cast<const quant::BlockNvfp4*>(blk);
      const int64_t s = i / 16, j = i % 16;
      return {kE2M1Doubled[nib(x->qs + 8 * s, j, 8)], ue4m3_to_f32_half(x->d[s])};
    }
  }
}

// Q4_1's m of the block holding column c (0 for the other types).
float block_min(GgmlType t, const uint8_t* row, int64_t c) {
  if (t != GgmlType::Q4_1) return 0.f;
  return fp16_to_f32(reinterpret_cast<const quant::BlockQ4_1*>(row)[c / 32].m);
}

struct Act {
  std::vector<uint8_t> q8;
  std::vector<float> d;
  std::vector<int32_t> sum;
  int64_t stride = 0;
};

// Q8_0 rows with their side data, or for Q4_1 (ggml's order) Q8_1 rows.
Act make_act(int64_t n_tokens, int64_t cols, uint32_t seed, ActFormat fmt = ActFormat::kQ8_0) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  Act a;
  a.stride = quantized_act_bytes(fmt, cols);
  a.q8.resize(static_cast<size_t>(n_tokens * a.stride));
  const int64_t nb = cols / 32;
  a.d.resize(static_cast<size_t>(n_tokens * nb));
  a.sum.resize(static_cast<size_t>(2 * n_tokens * nb));
  std::vector<float> x(static_cast<size_t>(cols));
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (auto& v : x) v = nd(rng) * (t % 3 == 0 ? 10.f : 1.f);
    quantize_act(fmt, x.data(), a.q8.data() + t * a.stride, cols);
    if (fmt == ActFormat::kQ8_0)
      packed_act_sides(a.q8.data() + t * a.stride, nb, a.d.data() + t * nb, a.sum.data() + 2 * t * nb);
  }
  return a;
}

// The contract: per scale group (32 columns, or 16 for NVFP4), the exact integer sum, then
// acc = fma(float(isum), scale * d_a, acc) in column order; Q4_1 in ggml's order (below).
float expected_output(GgmlType t, const uint8_t* row, const uint8_t* act, int64_t cols) {
  if (t == GgmlType::Q4_1) {
    // ggml's order (ggml_vec_dot_q4_1_q8_1 as GCC compiles it): 8 float lanes, lane l the exact
    // sum over columns 4l..4l+3 of each block, acc_l = fma(lane, d * d_y, acc_l); summs =
    // fma(m, s_y, summs); out = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) + summs.
    const auto* y = reinterpret_cast<const quant::BlockQ8_1*>(act);
    float lanes[8] = {}, summs = 0.f;
    for (int64_t b = 0; b < cols / 32; ++b) {
      const float dd = decode(t, row, 32 * b).second * fp16_to_f32(y[b].d);
      summs = std::fma(block_min(t, row, 32 * b), fp16_to_f32(y[b].s), summs);
      for (int l = 0; l < 8; ++l) {
        int32_t lane = 0;
        for (int64_t c = 32 * b + 4 * l; c < 32 * b + 4 * l + 4; ++c) lane += decode(t, row, c).first * y[b].qs[c % 32];
        lanes[l] = std::fma(static_cast<float>(lane), dd, lanes[l]);
      }
    }
    return ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7])) + summs;
  }
  const int64_t group = t == GgmlType::NVFP4 ? 16 : 32;
  const auto* y = reinterpret_cast<const quant::BlockQ8_0*>(act);
  float acc = 0.f;
  for (int64_t c0 = 0; c0 < cols; c0 += group) {
    int32_t isum = 0;
    for (int64_t c = c0; c < c0 + group; ++c) isum += decode(t, row, c).first * y[c / 32].qs[c % 32];
    acc = std::fma(static_cast<float>(isum), decode(t, row, c0).second * fp16_to_f32(y[c0 / 32].d), acc);
  }
  return acc;
}

class RepackKernelTest : public ::testing::TestWithParam<GgmlType> {};

// Puts the process's prefetch plan back however the test ends.
struct PlanGuard {
  packed::PrefetchPlan was = packed::prefetch_plan();
  ~PlanGuard() { packed::set_prefetch_plan(was); }
};

TEST_P(RepackKernelTest, EveryPathMatchesTheContractBitForBit) {
  const GgmlType t = GetParam();
  if (t == GgmlType::Q4_K || t == GgmlType::Q6_K) GTEST_SKIP() << "Q8_K activations: RepackQ4KKernelTest, RepackQ6KKernelTest";
  std::vector<std::pair<const PackedGemmOps*, const char*>> paths{{&packed_gemm_ops_scalar(), "scalar"}};
  if (detect_simd_level() >= SimdLevel::kAvx2) paths.push_back({&packed_gemm_ops_avx2(), "avx2"});
  if (detect_simd_level() >= SimdLevel::kAvx512) paths.push_back({&packed_gemm_ops_avx512(), "avx512"});
  for (int64_t rows : {16, 37, 64}) {
    for (int64_t cols : {32, 96, 512, 2080}) {  // 2080: 65 blocks, past the prefill kernels' runs
      if (cols % block_cols(t)) continue;
      const int64_t nb = cols / 32;
      const int64_t rb = row_bytes(t, cols);
      const auto m = random_rows(t, rows, cols, static_cast<uint32_t>(rows * 1000 + cols));
      WeightView w{t, m.data(), rows, cols, rb};
      // The decoder agrees with the reference dequantizer (checked against the gguf package).
      std::vector<float> deq(static_cast<size_t>(cols));
      ASSERT_TRUE(quant::dequantize_row(t, m.data(), deq.data(), cols).has_value());
      for (int64_t c = 0; c < cols; ++c) {
        const auto [x, sc] = decode(t, m.data(), c);
        if (t == GgmlType::Q4_1)
          ASSERT_FLOAT_EQ(static_cast<float>(x) * sc + block_min(t, m.data(), c), deq[static_cast<size_t>(c)]) << "column " << c;
        else
          ASSERT_EQ(static_cast<float>(x) * sc, deq[static_cast<size_t>(c)]) << "column " << c;
      }
      std::vector<uint8_t> packed(static_cast<size_t>(packed_bytes(t, rows, cols)) + 64);
      uint8_t* p = packed.data() + (64 - reinterpret_cast<uintptr_t>(packed.data()) % 64) % 64;
      const int64_t groups = (rows + kPackRows - 1) / kPackRows;
      pack_groups(w, p, 0, groups);
      // 1-8: the decode kernels (a step of up to eight sequences); 9: a prefill tile and a rest;
      // 17, 32: AMX tiles of 16 tokens (with a rest).
      for (int64_t n_tokens : {1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 32}) {
        const Act a = make_act(n_tokens, cols, static_cast<uint32_t>(n_tokens),
                               t == GgmlType::Q4_1 ? ActFormat::kQ8_1 : ActFormat::kQ8_0);
        // The decode kernels prefetch by the process's plan: each kind of plan (both streams, L1
        // alone, L2 alone) leaves the bits alone.
        std::vector<packed::PrefetchPlan> plans{packed::prefetch_plan()};
        if (n_tokens == 1 || n_tokens == 4)
          plans.insert(plans.end(),
                       {{packed::kPrefetchAhead, packed::kPrefetchNear}, {0, 1024}, {packed::kPrefetchAhead, 0}});
        const PlanGuard keep;
        for (const packed::PrefetchPlan plan : plans)
        for (auto [ops, name] : paths) {
          packed::set_prefetch_plan(plan);
          const int64_t ldy = rows + 3;
          std::vector<float> y(static_cast<size_t>(n_tokens * ldy), -1.f);
          const PackedGemmArgs args{p, nb, a.q8.data(), a.stride, a.d.data(), a.sum.data(), n_tokens, y.data(), ldy, rows};
          // Two calls over split group ranges, as the thread pool issues them.
          packed_gemm_pick(*ops, t)(args, 0, groups / 2);
          packed_gemm_pick(*ops, t)(args, groups / 2, groups);
          for (int64_t tok = 0; tok < n_tokens; ++tok) {
            for (int64_t r = 0; r < rows; ++r) {
              const float e = expected_output(t, m.data() + r * rb, a.q8.data() + tok * a.stride, cols);
              const float got = y[static_cast<size_t>(tok * ldy + r)];
              ASSERT_EQ(f32_to_bits(got), f32_to_bits(e))
                  << name << " " << formats::type_name(t) << " rows " << rows << " cols " << cols << " tokens "
                  << n_tokens << " at (" << tok << ", " << r << "): " << got << " vs " << e;
            }
            for (int64_t r = rows; r < ldy; ++r) ASSERT_EQ(y[static_cast<size_t>(tok * ldy + r)], -1.f) << "wrote past rows";
          }
        }
      }
    }
  }
}

// matmul through the packed view, against the per-output (ggml order) kernels: the same
// integer sums in another float order, so equal to a few ulps of the output's magnitude.
// Q4_1 is packed unless FENNEC_PACK_Q4_1=0 (repack.h): these tests ask for it either way.
struct PackQ4_1 {
  bool was = pack_q4_1_enabled();
  PackQ4_1() { set_pack_q4_1_enabled(true); }
  ~PackQ4_1() { set_pack_q4_1_enabled(was); }
};

TEST_P(RepackKernelTest, MatmulWithPackedViewAgreesWithUnpacked) {
  const GgmlType t = GetParam();
  const PackQ4_1 q4_1;
  const int64_t rows = 50, cols = 256, n_tokens = 11;
  const auto m = random_rows(t, rows, cols, 7);
  WeightView w{t, m.data(), rows, cols, row_bytes(t, cols)};
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(n_tokens * cols));
  for (auto& v : x) v = nd(rng);
  ThreadPool pool(2);
  std::vector<float> y0(static_cast<size_t>(n_tokens * rows)), y1(y0.size());
  matmul(w, x.data(), n_tokens, y0.data(), pool);
  PackedWeights store;
  WeightView pw = w;
  store.pack(pw, pool);
  if (!repack_enabled()) GTEST_SKIP() << "FENNEC_REPACK=0";
  ASSERT_NE(pw.packed, nullptr);
  EXPECT_EQ(store.bytes(), packed_bytes(t, rows, cols));
  matmul(pw, x.data(), n_tokens, y1.data(), pool);
  double scale = 0;
  for (float v : y0) scale = std::max(scale, std::fabs(static_cast<double>(v)));
  // Q4_1's packed products keep ggml's order, as the unpacked ones do: the same bits.
  const double tol = t == GgmlType::Q4_1 ? 0 : 1e-5;
  for (size_t i = 0; i < y0.size(); ++i) EXPECT_NEAR(y1[i], y0[i], tol * scale) << i;
  // A per-tensor output scale (NVFP4's "<name>.scale") multiplies every output, packed or not.
  std::vector<float> y2(y0.size()), y3(y0.size());
  pw.out_scale = w.out_scale = 0.25f;
  matmul(pw, x.data(), n_tokens, y2.data(), pool);
  matmul(w, x.data(), n_tokens, y3.data(), pool);
  for (size_t i = 0; i < y0.size(); ++i) {
    EXPECT_EQ(y2[i], y1[i] * 0.25f) << i;
    EXPECT_EQ(y3[i], y0[i] * 0.25f) << i;
  }
}

// The AMX prefill (repack_avx512.cpp) through matmul and matmul_group, whose activations the
// caller lays out as tiles once per product, gives the bits of the AVX-512 VNNI path: 37 tokens
// (two tiles of 16 and a rest of 5), two threads, and two matrices in one pass.
TEST_P(RepackKernelTest, AmxPrefillThroughMatmulMatchesVnniBitForBit) {
  const GgmlType t = GetParam();
  if (!amx_usable()) GTEST_SKIP() << "no AMX-INT8 here (or FENNEC_AMX=0, or a lower SIMD level)";
  const PackQ4_1 q4_1;
  const int64_t rows = 50, cols = 352, n_tokens = 37;  // 11 blocks: an odd last one
  if (cols % block_cols(t)) GTEST_SKIP();
  const auto m = random_rows(t, rows, cols, 11);
  const auto m2 = random_rows(t, rows + 16, cols, 12);
  WeightView w{t, m.data(), rows, cols, row_bytes(t, cols)};
  WeightView w2{t, m2.data(), rows + 16, cols, row_bytes(t, cols)};
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(n_tokens * cols));
  for (auto& v : x) v = nd(rng);
  ThreadPool pool(2);
  PackedWeights store;
  WeightView* both[] = {&w, &w2};
  store.pack_all(both, pool);
  if (!w.packed) GTEST_SKIP() << "not packed";
  std::vector<float> on(static_cast<size_t>(n_tokens * (2 * rows + 16))), off(on.size(), -1.f);
  const auto run = [&](std::vector<float>& y) {
    MatmulJob jobs[] = {{&w, y.data(), 2 * rows + 16}, {&w2, y.data() + rows, 2 * rows + 16}};
    matmul_group(jobs, x.data(), n_tokens, pool);
  };
  run(on);
  set_amx_enabled(false);
  run(off);
  set_amx_enabled(true);
  for (size_t i = 0; i < on.size(); ++i) ASSERT_EQ(f32_to_bits(on[i]), f32_to_bits(off[i])) << formats::type_name(t) << " at " << i;
}

// pack_all: the packable matrices one after another in the order given, in one buffer whose end
// each one's packed_run_end names; a matrix listed twice is packed once, one that cannot be
// packed is left alone. The products (whose last-group calls now prefetch on into the next
// matrix) give the bits of separately packed copies, alone and as one matmul_group pass.
TEST_P(RepackKernelTest, PackAllLaysMatricesOutInReadingOrder) {
  const GgmlType t = GetParam();
  const PackQ4_1 q4_1;
  const int64_t cols = 512, n_tokens = 3;
  const int64_t rows[] = {50, 16, 33};
  std::vector<std::vector<uint8_t>> ms;
  std::vector<WeightView> ws, single;
  for (int i = 0; i < 3; ++i) ms.push_back(random_rows(t, rows[i], cols, 20 + static_cast<uint32_t>(i)));
  for (int i = 0; i < 3; ++i) ws.push_back(WeightView{t, ms[static_cast<size_t>(i)].data(), rows[i], cols, row_bytes(t, cols)});
  single = ws;
  std::vector<float> f32(static_cast<size_t>(8 * cols), 0.5f);
  WeightView plain{GgmlType::F32, reinterpret_cast<const uint8_t*>(f32.data()), 8, cols, cols * 4};
  ThreadPool pool(2);
  PackedWeights store, apart;
  std::vector<WeightView*> order{&ws[0], &plain, &ws[1], &ws[0], &ws[2]};
  store.pack_all(order, pool);
  if (!repack_enabled()) GTEST_SKIP() << "FENNEC_REPACK=0";
  EXPECT_EQ(plain.packed, nullptr);
  int64_t total = 0;
  for (int i = 0; i < 3; ++i) total += packed_bytes(t, rows[i], cols);
  EXPECT_EQ(store.bytes(), total);
  ASSERT_NE(ws[0].packed, nullptr);
  EXPECT_EQ(ws[1].packed, ws[0].packed + packed_bytes(t, rows[0], cols));
  EXPECT_EQ(ws[2].packed, ws[1].packed + packed_bytes(t, rows[1], cols));
  for (const auto& w : ws) EXPECT_EQ(w.packed_run_end, ws[0].packed + total);
  for (auto& w : single) apart.pack(w, pool);
  for (const auto& w : single) EXPECT_EQ(w.packed_run_end, w.packed + packed_bytes(t, w.rows, cols));
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(n_tokens * cols));
  for (auto& v : x) v = nd(rng);
  std::vector<std::vector<float>> ya(3), yb(3), yc(3);
  std::vector<MatmulJob> jobs;
  for (size_t i = 0; i < 3; ++i) {
    ya[i].resize(static_cast<size_t>(n_tokens * rows[i]));
    yb[i] = ya[i];
    yc[i] = ya[i];
    matmul(ws[i], x.data(), n_tokens, ya[i].data(), pool);
    matmul(single[i], x.data(), n_tokens, yb[i].data(), pool);
    jobs.push_back({&ws[i], yc[i].data(), 0});
  }
  matmul_group(jobs, x.data(), n_tokens, pool);
  for (size_t i = 0; i < 3; ++i)
    for (size_t k = 0; k < ya[i].size(); ++k) {
      ASSERT_EQ(f32_to_bits(ya[i][k]), f32_to_bits(yb[i][k])) << i << " " << k;
      ASSERT_EQ(f32_to_bits(yc[i][k]), f32_to_bits(yb[i][k])) << i << " " << k;
    }
}

// Packs m (rows x cols of K-quant type t) and runs every path's product on random Q8_K
// activations for several token counts; each output must equal expected(row, activation
// blocks) bit for bit.
template <class F>
void expect_kquant_paths(GgmlType t, const std::vector<uint8_t>& m, int64_t rows, int64_t cols, std::mt19937& rng,
                         F expected) {
  std::vector<std::pair<const PackedGemmOps*, const char*>> paths{{&packed_gemm_ops_scalar(), "scalar"}};
  if (detect_simd_level() >= SimdLevel::kAvx2) paths.push_back({&packed_gemm_ops_avx2(), "avx2"});
  if (detect_simd_level() >= SimdLevel::kAvx512) paths.push_back({&packed_gemm_ops_avx512(), "avx512"});
  const int64_t nsb = cols / 256;
  const WeightView w{t, m.data(), rows, cols, static_cast<int64_t>(m.size()) / rows};
  std::vector<uint8_t> packed(static_cast<size_t>(packed_bytes(t, rows, cols)) + 64);
  uint8_t* p = packed.data() + (64 - reinterpret_cast<uintptr_t>(packed.data()) % 64) % 64;
  const int64_t groups = (rows + kPackRows - 1) / kPackRows;
  pack_groups(w, p, 0, groups);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t n_tokens : {1, 2, 3, 5, 9}) {
    const int64_t stride = quantized_act_bytes(ActFormat::kQ8_K, cols);
    std::vector<uint8_t> act(static_cast<size_t>(n_tokens * stride));
    std::vector<float> xv(static_cast<size_t>(cols));
    for (int64_t tok = 0; tok < n_tokens; ++tok) {
      for (auto& v : xv) v = nd(rng);
      quantize_act(ActFormat::kQ8_K, xv.data(), act.data() + tok * stride, cols);
    }
    for (auto [ops, name] : paths) {
      std::vector<float> y(static_cast<size_t>(n_tokens * rows), -1.f);
      const PackedGemmArgs args{p, nsb, act.data(), stride, nullptr, nullptr, n_tokens, y.data(), rows, rows};
      packed_gemm_pick(*ops, t)(args, 0, groups);
      for (int64_t tok = 0; tok < n_tokens; ++tok)
        for (int64_t r = 0; r < rows; ++r) {
          const float e = expected(r, reinterpret_cast<const quant::BlockQ8K*>(act.data() + tok * stride));
          ASSERT_EQ(f32_to_bits(y[static_cast<size_t>(tok * rows + r)]), f32_to_bits(e))
              << name << " " << formats::type_name(t) << " rows " << rows << " cols " << cols << " tokens "
              << n_tokens << " at (" << tok << ", " << r << ")";
        }
    }
  }
}

// Q4_K: every path against the contract of repack_layout.h, computed from ggml's block layout
// (whose decoding is checked against the reference dequantizer), with Q8_K activations.
TEST(RepackQ4KKernelTest, EveryPathMatchesTheContractBitForBit) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.0005f, 0.005f);
  for (int64_t rows : {16, 40}) {
    for (int64_t cols : {256, 768}) {
      const int64_t nsb = cols / 256, rb = nsb * static_cast<int64_t>(sizeof(quant::BlockQ4K));
      std::vector<uint8_t> m(static_cast<size_t>(rows * rb));
      for (auto& b : m) b = static_cast<uint8_t>(rng());
      for (int64_t o = 0; o < static_cast<int64_t>(m.size()); o += static_cast<int64_t>(sizeof(quant::BlockQ4K))) {
        const uint16_t d = f32_to_fp16(u(rng)), dmin = f32_to_fp16(u(rng));
        std::memcpy(m.data() + o, &d, 2);
        std::memcpy(m.data() + o + 2, &dmin, 2);
      }
      // Independent decode: x = d * sc * q - dmin * mn, against the reference dequantizer.
      std::vector<float> deq(static_cast<size_t>(cols));
      ASSERT_TRUE(quant::dequantize_row(GgmlType::Q4_K, m.data(), deq.data(), cols).has_value());
      for (int64_t sb = 0; sb < nsb; ++sb) {
        const auto& x = reinterpret_cast<const quant::BlockQ4K*>(m.data())[sb];
        uint8_t sc[8], mn[8];
        quant::ref::unpack_scale_min_k4(x.scales, sc, mn);
        for (int c = 0; c < 256; ++c) {
          const int j = c / 32;
          const int q = (x.qs[32 * (j / 2) + c % 32] >> (4 * (j % 2))) & 0x0F;
          const float want = fp16_to_f32(x.d) * sc[j] * q - fp16_to_f32(x.dmin) * mn[j];
          ASSERT_EQ(want, deq[static_cast<size_t>(sb * 256 + c)]) << c;
        }
      }
      expect_kquant_paths(GgmlType::Q4_K, m, rows, cols, rng, [&](int64_t r, const quant::BlockQ8K* ya) {
        const auto* x = reinterpret_cast<const quant::BlockQ4K*>(m.data() + r * rb);
        float acc = 0.f;
        for (int64_t sb = 0; sb < nsb; ++sb) {
          uint8_t sc[8], mn[8];
          quant::ref::unpack_scale_min_k4(x[sb].scales, sc, mn);
          int32_t isum = 0, imin = 0;
          for (int j = 0; j < 8; ++j) {
            int32_t dot = 0;
            for (int c = 0; c < 32; ++c)
              dot += ((x[sb].qs[32 * (j / 2) + c] >> (4 * (j % 2))) & 0x0F) * ya[sb].qs[32 * j + c];
            isum += sc[j] * dot;
            imin += mn[j] * (ya[sb].bsums[2 * j] + ya[sb].bsums[2 * j + 1]);
          }
          acc = std::fma(static_cast<float>(isum), fp16_to_f32(x[sb].d) * ya[sb].d, acc);
          acc = std::fma(-static_cast<float>(imin), fp16_to_f32(x[sb].dmin) * ya[sb].d, acc);
        }
        return acc;
      });
    }
  }
}

// Q6_K: every path against repack_layout.h's contract, from ggml's block layout (decoded in
// ggml's loop order and checked against the reference dequantizer), with Q8_K activations.
TEST(RepackQ6KKernelTest, EveryPathMatchesTheContractBitForBit) {
  std::mt19937 rng(12);
  std::uniform_real_distribution<float> u(0.0005f, 0.005f);
  for (int64_t rows : {16, 40}) {
    for (int64_t cols : {256, 768}) {
      const int64_t nsb = cols / 256, rb = nsb * static_cast<int64_t>(sizeof(quant::BlockQ6K));
      std::vector<uint8_t> m(static_cast<size_t>(rows * rb));
      for (auto& b : m) b = static_cast<uint8_t>(rng());  // int8 scales include -128
      for (int64_t o = 0; o < static_cast<int64_t>(m.size()); o += static_cast<int64_t>(sizeof(quant::BlockQ6K))) {
        const uint16_t d = f32_to_fp16(u(rng));
        std::memcpy(m.data() + o + offsetof(quant::BlockQ6K, d), &d, 2);
      }
      // q[row][column] in ggml's order: per half of 128, l < 32 gives columns l, l+32, l+64, l+96.
      std::vector<int> q(static_cast<size_t>(rows * cols));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t sb = 0; sb < nsb; ++sb) {
          const auto& x = reinterpret_cast<const quant::BlockQ6K*>(m.data() + r * rb)[sb];
          for (int n = 0; n < 2; ++n)
            for (int l = 0; l < 32; ++l) {
              const uint8_t* ql = x.ql + 64 * n;
              const uint8_t h = x.qh[32 * n + l];
              int* qq = q.data() + r * cols + sb * 256 + 128 * n + l;
              qq[0] = ((ql[l] & 0xF) | ((h >> 0) & 3) << 4) - 32;
              qq[32] = ((ql[l + 32] & 0xF) | ((h >> 2) & 3) << 4) - 32;
              qq[64] = ((ql[l] >> 4) | ((h >> 4) & 3) << 4) - 32;
              qq[96] = ((ql[l + 32] >> 4) | ((h >> 6) & 3) << 4) - 32;
            }
        }
      std::vector<float> deq(static_cast<size_t>(cols));
      ASSERT_TRUE(quant::dequantize_row(GgmlType::Q6_K, m.data(), deq.data(), cols).has_value());
      for (int64_t c = 0; c < cols; ++c) {
        const auto& x = reinterpret_cast<const quant::BlockQ6K*>(m.data())[c / 256];
        ASSERT_EQ(fp16_to_f32(x.d) * (x.scales[(c % 256) / 16] * q[static_cast<size_t>(c)]), deq[static_cast<size_t>(c)]) << c;
      }
      expect_kquant_paths(GgmlType::Q6_K, m, rows, cols, rng, [&](int64_t r, const quant::BlockQ8K* ya) {
        const auto* x = reinterpret_cast<const quant::BlockQ6K*>(m.data() + r * rb);
        float acc = 0.f;
        for (int64_t sb = 0; sb < nsb; ++sb) {
          int32_t isum = 0;
          for (int g = 0; g < 16; ++g) {
            int32_t dot = 0;
            for (int c = 16 * g; c < 16 * g + 16; ++c) dot += q[static_cast<size_t>(r * cols + sb * 256 + c)] * ya[sb].qs[c];
            isum += x[sb].scales[g] * dot;
          }
          acc = std::fma(static_cast<float>(isum), fp16_to_f32(x[sb].d) * ya[sb].d, acc);
        }
        return acc;
      });
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, RepackKernelTest,
                         ::testing::Values(GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::MXFP4,
                                           GgmlType::NVFP4, GgmlType::Q4_K, GgmlType::Q6_K),
                         [](const auto& info) { return std::string(formats::type_name(info.param)); });

}  // namespace
}  // namespace fennec::kernels
