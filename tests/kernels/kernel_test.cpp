// Kernel paths against plain references: every SIMD level this CPU has (and the one FENNEC_CPU
// forces) must agree with scalar code within a stated tolerance.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/aligned_vector.h"
#include "core/float_convert.h"
#include "core/thread_pool.h"
#include "kernels/cpu/activation_quant.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/vec.h"
#include "quant/dequantize.h"

namespace fennec::kernels {
namespace {

std::vector<float> random_vec(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<const VecOps*> available_paths() {
  std::vector<const VecOps*> paths{&vec_ops_scalar()};
  const SimdLevel best = detect_simd_level();
  if (best >= SimdLevel::kAvx2) paths.push_back(&vec_ops_avx2());
  if (best >= SimdLevel::kAvx512) paths.push_back(&vec_ops_avx512());
  paths.push_back(&vec_ops());
  return paths;
}

// The kernels' scratch rows (attention's gathered keys and values) rely on it: a 32-byte load at
// malloc's 16-byte offset splits a cache line every fourth time.
TEST(AlignedVectorTest, ElementsStartOnACacheLineAtEverySize) {
  for (size_t n : {size_t{1}, size_t{3}, size_t{17}, size_t{4096}, size_t{1} << 20}) {
    aligned_vector<float> v(n, 1.0f);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % 64, 0u) << n;
    v.resize(3 * n + 5);  // reallocation keeps it
    EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data()) % 64, 0u) << n;
    EXPECT_EQ(v[0], 1.0f);
  }
}

TEST(VecKernelTest, DotAndAxpyAgreeWithReferenceOnEveryPath) {
  for (int64_t n : {1, 7, 8, 31, 64, 100, 576, 1537}) {
    auto a = random_vec(static_cast<size_t>(n), 1), b = random_vec(static_cast<size_t>(n), 2);
    double ref = 0;
    for (int64_t i = 0; i < n; ++i) ref += static_cast<double>(a[i]) * b[i];
    for (const VecOps* v : available_paths()) {
      EXPECT_NEAR(v->dot(a.data(), b.data(), n), ref,
                  1e-5 * std::sqrt(static_cast<double>(n)) + 1e-6)
          << n;
      std::vector<float> y(b);
      v->axpy(0.5f, a.data(), y.data(), n);
      for (int64_t i = 0; i < n; ++i) EXPECT_FLOAT_EQ(y[i], b[i] + 0.5f * a[i]);
    }
  }
}

// The bandwidth probe's read (engine/bench.cpp): whatever it prefetches, every path sums every word
// once, tails shorter than a line included.
TEST(VecKernelTest, ReadSumAddsEveryWordOnEveryPath) {
  aligned_vector<uint64_t> w(4096 + 5);
  std::mt19937_64 rng(7);
  for (auto& x : w) x = rng();
  for (int64_t n : {0, 1, 7, 8, 9, 64, 4095, 4101}) {
    uint64_t ref = 0;
    for (int64_t i = 0; i < n; ++i) ref += w[static_cast<size_t>(i)];
    for (const VecOps* v : available_paths())
      for (auto [far, near] : {std::pair<int64_t, int64_t>{0, 0}, {0, 1024}, {32768, 4096}, {256, 0}})
        EXPECT_EQ(v->read_sum(w.data(), n, far, near), ref) << n << " " << far << "," << near;
  }
}

TEST(VecKernelTest, Fp16ConversionsAreExactOnEveryPath) {
  auto x = random_vec(1000, 3, 100.0f);
  x.push_back(65504.0f);
  x.push_back(1e-7f);  // fp16 subnormal
  x.push_back(-0.0f);
  for (const VecOps* v : available_paths()) {
    std::vector<uint16_t> h(x.size());
    std::vector<float> back(x.size());
    v->f32_to_fp16(x.data(), h.data(), static_cast<int64_t>(x.size()));
    v->fp16_to_f32(h.data(), back.data(), static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      EXPECT_EQ(h[i], f32_to_fp16(x[i])) << x[i];
      EXPECT_EQ(f32_to_bits(back[i]), f32_to_bits(fp16_to_f32(h[i])));
    }
  }
}

TEST(OpsKernelTest, MatmulF32MatchesNaive) {
  const int64_t rows = 37, cols = 96, n_tok = 5;
  auto w = random_vec(static_cast<size_t>(rows * cols), 4);
  auto x = random_vec(static_cast<size_t>(n_tok * cols), 5);
  WeightView wv{formats::GgmlType::F32, reinterpret_cast<const uint8_t*>(w.data()), rows, cols,
                cols * 4};
  ThreadPool pool(2);
  std::vector<float> y(static_cast<size_t>(n_tok * rows));
  matmul(wv, x.data(), n_tok, y.data(), pool);
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0;
      for (int64_t c = 0; c < cols; ++c)
        ref += static_cast<double>(w[r * cols + c]) * x[t * cols + c];
      EXPECT_NEAR(y[t * rows + r], ref, 1e-4);
    }
}

TEST(OpsKernelTest, Q8ActivationRoundingFollowsGgml) {
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>(i - 16) * 0.25f;
  std::vector<float> out(32);
  round_activations(ActFormat::kQ8_0, x.data(), out.data(), 32);
  // amax = 4, d = 4/127 stored as fp16; q = round(x * 127/4).
  const float dh = fp16_to_f32(f32_to_fp16(4.0f / 127.0f));
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], dh * std::nearbyint(x[i] * (127.0f / 4.0f))) << i;
  EXPECT_EQ(activation_format(formats::GgmlType::Q4_K), ActFormat::kQ8_K);
  EXPECT_EQ(activation_format(formats::GgmlType::Q4_1), ActFormat::kQ8_1);
  EXPECT_EQ(activation_format(formats::GgmlType::F32), ActFormat::kF32);
}

TEST(OpsKernelTest, RopeNeoxAndNormalRotatePairs) {
  std::vector<float> x = {1, 0, 0, 1};
  const int32_t pos = 1;
  RopeParams p;
  p.n_dims = 4;
  p.freq_base = 10000.f;
  p.style = RopeStyle::kNormal;
  std::vector<float> a(x);
  rope(a.data(), 1, 4, 1, 4, &pos, p);
  // pair (0,1) rotates by 1 rad; pair (2,3) by 1e-2 rad.
  EXPECT_NEAR(a[0], std::cos(1.0f), 1e-6);
  EXPECT_NEAR(a[1], std::sin(1.0f), 1e-6);
  EXPECT_NEAR(a[2], -std::sin(0.01f), 1e-6);
  EXPECT_NEAR(a[3], std::cos(0.01f), 1e-6);
  p.style = RopeStyle::kNeox;
  std::vector<float> b(x);
  rope(b.data(), 1, 4, 1, 4, &pos, p);
  // pairs (0,2) by 1 rad and (1,3) by 1e-2 rad.
  EXPECT_NEAR(b[0], std::cos(1.0f), 1e-6);
  EXPECT_NEAR(b[2], std::sin(1.0f), 1e-6);
  EXPECT_NEAR(b[1], -std::sin(0.01f), 1e-6);
  EXPECT_NEAR(b[3], std::cos(0.01f), 1e-6);
}

// rms_norm is ggml's: the sum of squares in double in element order, then x * s * weight in float;
// in place too (the model normalizes q and k heads in place). Token counts around the four-token
// groups, with and without a weight.
TEST(OpsKernelTest, RmsNormMatchesGgmlOrderBitForBit) {
  const int64_t dim = 72;
  const auto w = random_vec(dim, 41);
  for (int64_t n : {1, 3, 4, 5, 9}) {
    const auto x = random_vec(static_cast<size_t>(n * dim), static_cast<uint32_t>(40 + n), 5.0f);
    for (const float* weight : {w.data(), static_cast<const float*>(nullptr)}) {
      std::vector<float> want(x.size());
      for (int64_t t = 0; t < n; ++t) {
        double ss = 0;
        for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[t * dim + i] * x[t * dim + i]);
        const float s = 1.0f / std::sqrt(static_cast<float>(ss / dim) + 1e-6f);
        for (int64_t i = 0; i < dim; ++i) want[t * dim + i] = weight ? x[t * dim + i] * s * weight[i] : x[t * dim + i] * s;
      }
      std::vector<float> got(x.size()), inplace = x;
      rms_norm(x.data(), weight, n, dim, 1e-6f, got.data());
      rms_norm(inplace.data(), weight, n, dim, 1e-6f, inplace.data());
      for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_EQ(f32_to_bits(want[i]), f32_to_bits(got[i])) << "tokens " << n << " at " << i;
        ASSERT_EQ(f32_to_bits(want[i]), f32_to_bits(inplace[i])) << "in place, tokens " << n << " at " << i;
      }
    }
  }
}

// rope against ggml's definition computed here, bit for bit, on the active path (CI forces each):
// both styles, all dimensions rotated or part of them, pair counts with a tail past the vector
// width, and calls that alternate positions and bases (rope keeps the last angles per thread;
// a reused or replaced table must give what a fresh one gives).
TEST(OpsKernelTest, RopeMatchesGgmlDefinitionBitForBit) {
  auto expected = [](std::vector<float> x, int64_t ld, int n_heads, int head_dim, const std::vector<int32_t>& pos,
                     const RopeParams& p) {
    const int half = p.n_dims / 2;
    const float theta_scale = std::pow(p.freq_base, -2.0f / static_cast<float>(p.n_dims));
    for (size_t t = 0; t < pos.size(); ++t) {
      float theta = static_cast<float>(pos[t]);
      for (int i = 0; i < half; ++i) {
        const float th = p.freq_scale * (theta / (p.freq_factors ? p.freq_factors[i] : 1.0f));
        const float c = std::cos(th), s = std::sin(th);
        theta *= theta_scale;
        for (int h = 0; h < n_heads; ++h) {
          float* v = x.data() + static_cast<int64_t>(t) * ld + static_cast<int64_t>(h) * head_dim;
          const int a = p.style == RopeStyle::kNeox ? i : 2 * i, b = p.style == RopeStyle::kNeox ? i + half : 2 * i + 1;
          const float x0 = v[a], x1 = v[b];
          v[a] = std::fma(x0, c, -(x1 * s));
          v[b] = std::fma(x0, s, x1 * c);
        }
      }
    }
    return x;
  };
  const std::vector<float> factors = [] {
    std::vector<float> f(40);
    for (size_t i = 0; i < f.size(); ++i) f[i] = 1.0f + 0.37f * static_cast<float>(i);
    return f;
  }();
  struct Case {
    RopeStyle style;
    int head_dim, n_dims, n_heads;
    float base, scale;
    const float* factors;
  };
  const Case cases[] = {{RopeStyle::kNormal, 64, 64, 3, 10000.f, 1.0f, nullptr},
                        {RopeStyle::kNeox, 64, 64, 3, 1000000.f, 1.0f, nullptr},
                        {RopeStyle::kNeox, 80, 80, 2, 10000.f, 0.5f, nullptr},   // 40 pairs: a tail of 8
                        {RopeStyle::kNormal, 72, 72, 2, 500000.f, 1.0f, factors.data()},  // 36 pairs
                        {RopeStyle::kNeox, 128, 32, 2, 10000.f, 1.0f, nullptr},  // partial rotation
                        {RopeStyle::kNormal, 64, 20, 1, 10000.f, 1.0f, nullptr}};
  for (const Case& c : cases) {
    RopeParams p;
    p.style = c.style;
    p.n_dims = c.n_dims;
    p.freq_base = c.base;
    p.freq_scale = c.scale;
    p.freq_factors = c.factors;
    RopeParams other = p;
    other.freq_base = c.base * 3;
    const int64_t ld = static_cast<int64_t>(c.n_heads) * c.head_dim + 5;
    const std::vector<std::vector<int32_t>> runs = {{0, 1, 2, 77, 4095}, {3, 9}, {0, 1, 2, 77, 4095}};
    for (size_t r = 0; r < runs.size(); ++r) {
      const auto& pos = runs[r];
      const auto x = random_vec(static_cast<size_t>(ld) * pos.size(), static_cast<uint32_t>(30 + r), 3.0f);
      for (const RopeParams* q : {&p, &other, &p}) {
        std::vector<float> got = x;
        rope(got.data(), static_cast<int64_t>(pos.size()), ld, c.n_heads, c.head_dim, pos.data(), *q);
        const auto want = expected(x, ld, c.n_heads, c.head_dim, pos, *q);
        for (size_t i = 0; i < x.size(); ++i)
          ASSERT_EQ(f32_to_bits(want[i]), f32_to_bits(got[i]))
              << "dims " << c.n_dims << " of " << c.head_dim << " run " << r << " at " << i;
      }
    }
  }
}

// Cache bytes holding the values x as type t: fp16, or Q8_0 blocks quantized as the model
// stores them (quantize_act, ggml's quantize_row_q8_0).
std::vector<uint8_t> cache_of(KvType t, const std::vector<float>& x) {
  std::vector<uint8_t> c(static_cast<size_t>(kv_bytes(t, static_cast<int64_t>(x.size()))));
  if (t == KvType::kF16) {
    for (size_t i = 0; i < x.size(); ++i) {
      const uint16_t h = f32_to_fp16(x[i]);
      std::memcpy(c.data() + 2 * i, &h, 2);
    }
  } else {
    quantize_act(ActFormat::kQ8_0, x.data(), c.data(), static_cast<int64_t>(x.size()));
  }
  return c;
}

// The float values a cache of type t holds for x, by the reference dequantizer (quant/).
std::vector<float> cache_values(KvType t, const std::vector<float>& x) {
  const std::vector<uint8_t> c = cache_of(t, x);
  std::vector<float> v(x.size());
  const auto ty = t == KvType::kF16 ? formats::GgmlType::F16 : formats::GgmlType::Q8_0;
  EXPECT_TRUE(quant::dequantize_row(ty, c.data(), v.data(), static_cast<int64_t>(v.size())).has_value());
  return v;
}

const char* kv_name(KvType t) { return t == KvType::kF16 ? "f16" : "q8_0"; }

// kv_to_f32 (the attention bodies' conversion) gives the reference dequantizer's values.
TEST(AttentionKernelTest, CacheValuesMatchReferenceDequantizer) {
  const auto x = random_vec(256, 7, 3.0f);
  for (KvType t : {KvType::kF16, KvType::kQ8_0}) {
    const std::vector<uint8_t> c = cache_of(t, x);
    std::vector<float> got(x.size());
    kv_to_f32(t, c.data(), got.data(), static_cast<int64_t>(x.size()));
    const std::vector<float> want = cache_values(t, x);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(f32_to_bits(got[i]), f32_to_bits(want[i])) << kv_name(t) << " " << i;
    // Q8_0 keeps each value within half a step (d / 2, d = amax / 127 of its block of 32).
    if (t == KvType::kQ8_0)
      for (size_t b = 0; b < x.size(); b += 32) {
        float amax = 0;
        for (size_t i = b; i < b + 32; ++i) amax = std::max(amax, std::fabs(x[i]));
        for (size_t i = b; i < b + 32; ++i) EXPECT_NEAR(got[i], x[i], amax / 127 * 0.51 + 1e-6) << i;
      }
  }
}

// Paged attention against a dense causal reference (in double), with GQA, a shuffled block
// table, a chunk that starts mid-sequence, and a sliding window, for each cache type: the
// reference takes the values the cache holds (reference dequantizer).
TEST(AttentionKernelTest, PagedMatchesDenseReference) {
  const int n_heads = 4, n_kv = 2, hd = 32, bs = 4, n_pos = 11, pos0 = 5;
  const int n_q = n_pos - pos0;
  for (KvType kt : {KvType::kF16, KvType::kQ8_0})
    for (KvType vt : {KvType::kF16, KvType::kQ8_0})
      for (int window : {0, 3}) {
        std::vector<int32_t> table = {2, 0, 3};  // covers 12 slots
        const int n_blocks = 4;
        const int row = n_kv * hd;
        // Values by cache slot (slot 4..7, block 1, is never used).
        auto keys = random_vec(static_cast<size_t>(n_blocks * bs * row), 10 + window);
        auto vals = random_vec(static_cast<size_t>(n_blocks * bs * row), 20 + window);
        const std::vector<uint8_t> kc = cache_of(kt, keys), vc = cache_of(vt, vals);
        const std::vector<float> kx = cache_values(kt, keys), vx = cache_values(vt, vals);
        auto q = random_vec(static_cast<size_t>(n_q * n_heads * hd), 30);
        AttnSequence s{0, n_q, pos0, table.data()};
        AttnParams ap;
        ap.n_heads = n_heads;
        ap.n_kv_heads = n_kv;
        ap.head_dim_k = ap.head_dim_v = hd;
        ap.block_size = bs;
        ap.scale = 0.25f;
        ap.window = window;
        ap.k_type = kt;
        ap.v_type = vt;
        std::vector<float> out(static_cast<size_t>(n_q * n_heads * hd));
        ThreadPool pool(2);
        paged_attention(q.data(), n_heads * hd, &s, 1, kc.data(), vc.data(), ap, out.data(), n_heads * hd, pool);
        for (int i = 0; i < n_q; ++i)
          for (int h = 0; h < n_heads; ++h) {
            const int kvh = h / (n_heads / n_kv);
            const int pos = pos0 + i;
            const int lo = window ? std::max(0, pos - window + 1) : 0;
            auto at = [&](const std::vector<float>& v, int k, int e) {
              const int64_t slot = static_cast<int64_t>(table[static_cast<size_t>(k / bs)]) * bs + k % bs;
              return static_cast<double>(v[static_cast<size_t>(slot * row + kvh * hd + e)]);
            };
            std::vector<double> w;
            double m = -1e300;
            for (int k = lo; k <= pos; ++k) {
              double d = 0;
              for (int e = 0; e < hd; ++e) d += static_cast<double>(q[static_cast<size_t>((i * n_heads + h) * hd + e)]) * at(kx, k, e);
              w.push_back(d * 0.25);
              m = std::max(m, w.back());
            }
            double sum = 0;
            for (auto& x : w) sum += (x = std::exp(x - m));
            for (int e = 0; e < hd; ++e) {
              double ref = 0;
              for (int k = lo; k <= pos; ++k) ref += w[static_cast<size_t>(k - lo)] / sum * at(vx, k, e);
              // Q and the weights pass through fp16 (as in ggml): allow that rounding.
              EXPECT_NEAR(out[static_cast<size_t>((i * n_heads + h) * hd + e)], ref, 5e-3)
                  << "K " << kv_name(kt) << " V " << kv_name(vt) << " window " << window << " q " << i << " head " << h;
            }
          }
      }
}

// The AVX2 and AVX-512 attention bodies reorder the loops but must give the scalar body's bits: decode
// (one query: ggml_vec_dot_f16 order) and chunks of queries (tinyBLAS chain order), GQA, head
// sizes 16/64/256 (64-multiple and not), sliding windows, softcap, long contexts, and scores
// spread wide enough that some weights underflow to fp16 subnormals or zero.
TEST(AttentionKernelTest, SimdBodiesMatchScalarBitForBit) {
  if (detect_simd_level() < SimdLevel::kAvx2) GTEST_SKIP() << "no AVX2 on this CPU";
  struct Shape {
    int n_heads, n_kv, dk, dv, window;
    float softcap, q_scale;
  };
  const Shape shapes[] = {{9, 3, 64, 64, 0, 0.0f, 1.0f},   {4, 1, 256, 256, 0, 0.0f, 0.5f},
                          {4, 2, 16, 16, 37, 0.0f, 3.0f},  {8, 4, 80, 80, 0, 0.0f, 1.0f},
                          {4, 1, 256, 256, 100, 30.0f, 2.0f}, {2, 2, 32, 48, 0, 0.0f, 8.0f},
                          // tiles of several queries with different windows; groups of 4 and
                          // of 8 heads (two weighted-value tiles per pass)
                          {6, 6, 64, 64, 20, 0.0f, 2.0f},  {32, 8, 64, 64, 0, 0.0f, 1.0f},
                          {16, 2, 64, 64, 50, 0.0f, 1.0f}, {3, 1, 128, 64, 0, 0.0f, 1.0f}};
  const int bs = 16;
  uint32_t seed = 100;
  const std::pair<KvType, KvType> kv_types[] = {
      {KvType::kF16, KvType::kF16}, {KvType::kQ8_0, KvType::kQ8_0}, {KvType::kQ8_0, KvType::kF16}, {KvType::kF16, KvType::kQ8_0}};
  for (const auto& [kt, vt] : kv_types)
  for (const Shape& sh : shapes) {
    if ((kt == KvType::kQ8_0 && sh.dk % 32 != 0) || (vt == KvType::kQ8_0 && sh.dv % 32 != 0)) continue;
    // Six sequences: decode steps at 333 and deeper at 1300 (several key and value blocks of
    // attend_decode), at 40 and at 200 (one block: pv_direct, with empty slot chains at 40), a
    // chunk of 45 queries starting at 130, and a short prompt from position 0.
    struct SeqSpec {
      int n_q, pos0;
    };
    // Two shapes (groups of 4 and 8 heads, the second windowed) also take a chunk of 40 queries
    // at 2200 (with K and V of one type: the kernel tests also run under QEMU): the scores and
    // weighted values then run over several key blocks of attend_rows, and the group of 8 over
    // two passes per chunk of 32 queries.
    std::vector<SeqSpec> specs = {{1, 333}, {1, 1300}, {1, 40}, {1, 200}, {45, 130}, {7, 0}};
    if (sh.dk == 64 && sh.n_heads / sh.n_kv >= 4 && kt == vt) specs.push_back({40, 2200});
    const int n_seqs = static_cast<int>(specs.size());
    int max_pos = 0;
    for (const SeqSpec& sp : specs) max_pos = std::max(max_pos, sp.pos0 + sp.n_q);
    const int blocks_per_seq = (max_pos + bs - 1) / bs;
    const int n_blocks = n_seqs * blocks_per_seq;
    const int64_t kw = static_cast<int64_t>(sh.n_kv) * sh.dk, vw = static_cast<int64_t>(sh.n_kv) * sh.dv;
    const std::vector<uint8_t> kc = cache_of(kt, random_vec(static_cast<size_t>(n_blocks * bs * kw), seed++));
    const std::vector<uint8_t> vc = cache_of(vt, random_vec(static_cast<size_t>(n_blocks * bs * vw), seed++));
    // Shuffled block tables.
    std::vector<int32_t> perm(static_cast<size_t>(n_blocks));
    for (int i = 0; i < n_blocks; ++i) perm[static_cast<size_t>(i)] = i;
    std::shuffle(perm.begin(), perm.end(), std::mt19937(seed++));
    std::vector<AttnSequence> seqs;
    int64_t rows = 0;
    for (int s = 0; s < n_seqs; ++s) {
      seqs.push_back({rows, specs[s].n_q, specs[s].pos0, perm.data() + s * blocks_per_seq});
      rows += specs[s].n_q;
    }
    const int64_t ldq = static_cast<int64_t>(sh.n_heads) * sh.dk, ldo = static_cast<int64_t>(sh.n_heads) * sh.dv;
    auto q = random_vec(static_cast<size_t>(rows * ldq), seed++, sh.q_scale);
    AttnParams ap;
    ap.n_heads = sh.n_heads;
    ap.n_kv_heads = sh.n_kv;
    ap.head_dim_k = sh.dk;
    ap.head_dim_v = sh.dv;
    ap.block_size = bs;
    ap.scale = 1.0f / std::sqrt(static_cast<float>(sh.dk));
    ap.window = sh.window;
    ap.softcap = sh.softcap;
    ap.k_type = kt;
    ap.v_type = vt;
    std::vector<float> ref(static_cast<size_t>(rows * ldo), -1.0f);
    const AttnArgs a_ref{q.data(), ldq, kc.data(), vc.data(), &ap, ref.data(), ldo};
    for (int s = 0; s < n_seqs; ++s)
      for (int h = 0; h < sh.n_kv; ++h)
        for (int32_t b = 0; b < seqs[static_cast<size_t>(s)].n_queries; b += 32)
          attention_item_scalar()(a_ref, {&seqs[static_cast<size_t>(s)], h, b,
                                          std::min(seqs[static_cast<size_t>(s)].n_queries, b + 32)});
    // Items: every KV head in one (mode 0), one per KV head (1), or decode steps split into 2
    // or 3 ranges of query heads (modes 2, 3; a range may end inside a KV head's group).
    for (int level = 1; level <= 2; ++level)
      for (int mode = 0; mode < 4; ++mode) {
        if (level == 2 && detect_simd_level() < SimdLevel::kAvx512) continue;
        const bool per_head = mode == 1;
        std::vector<float> got(ref.size(), -2.0f);
        const AttnArgs a_got{q.data(), ldq, kc.data(), vc.data(), &ap, got.data(), ldo};
        const AttnItemFn body = level == 2 ? attention_item_avx512() : attention_item_avx2();
        for (int s = 0; s < n_seqs; ++s) {
          const AttnSequence* sq = &seqs[static_cast<size_t>(s)];
          if (mode >= 2 && decodes_by_query_heads(ap, *sq)) {
            const int group = sh.n_heads / sh.n_kv;
            for (int part = 0; part < mode; ++part) {
              const int hb = sh.n_heads * part / mode, he = sh.n_heads * (part + 1) / mode;
              AttnItem it{sq, hb / group, 0, 1, (he - 1) / group + 1};
              it.head_begin = hb;
              it.head_end = he;
              if (hb < he) body(a_got, it);
            }
            continue;
          }
          for (int h = 0; h < (per_head ? sh.n_kv : 1); ++h)
            for (int32_t b = 0; b < sq->n_queries; b += 32)
              body(a_got, {sq, h, b, std::min(sq->n_queries, b + 32), per_head ? h + 1 : 0});
        }
        for (size_t i = 0; i < ref.size(); ++i)
          ASSERT_EQ(f32_to_bits(ref[i]), f32_to_bits(got[i]))
              << (level == 2 ? "avx512" : "avx2") << " item mode " << mode << " K " << kv_name(kt) << " V "
              << kv_name(vt) << " heads " << sh.n_heads
              << "/" << sh.n_kv << " dk " << sh.dk << " window " << sh.window << " output " << i << ": " << ref[i]
              << " vs " << got[i];
      }
  }
}

}  // namespace
}  // namespace fennec::kernels

namespace fennec::kernels {
namespace {

// Random weight blocks of type t (fp16 scales kept finite and moderate) for n elements.
std::vector<uint8_t> random_weight_row(formats::GgmlType t, int64_t n, uint32_t seed) {
  const auto tr = *formats::type_traits(static_cast<uint32_t>(t));
  std::vector<uint8_t> row(formats::row_bytes(tr, static_cast<uint64_t>(n)));
  std::mt19937 rng(seed);
  for (auto& b : row) b = static_cast<uint8_t>(rng());
  // Overwrite the fp16 scale fields with sane values (their offsets per type).
  auto put = [&](size_t off, float v) {
    const uint16_t h = f32_to_fp16(v);
    std::memcpy(row.data() + off, &h, 2);
  };
  std::uniform_real_distribution<float> u(0.001f, 0.05f);
  const size_t nb = row.size() / tr.type_size;
  for (size_t b = 0; b < nb; ++b) {
    const size_t o = b * tr.type_size;
    switch (t) {
      case formats::GgmlType::Q4_0:
      case formats::GgmlType::Q5_0:
      case formats::GgmlType::Q8_0:
        put(o, u(rng));
        break;
      case formats::GgmlType::Q4_1:
      case formats::GgmlType::Q5_1:
        put(o, u(rng));
        put(o + 2, -u(rng) * 8);
        break;
      case formats::GgmlType::Q4_K:
        put(o, u(rng) / 16);
        put(o + 2, u(rng) / 16);
        break;
      case formats::GgmlType::Q6_K:
        put(o + tr.type_size - 2, u(rng) / 16);
        break;
      default:
        break;
    }
  }
  return row;
}

// Every integer-dot path gives the same bits as the portable one, and agrees with a double
// dot of the dequantized weights and the dequantized activations.
TEST(QuantDotKernelTest, PathsAgreeBitExactlyAndMatchDequantizedReference) {
  using formats::GgmlType;
  const int64_t n = 512;
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0,
                     GgmlType::Q4_K, GgmlType::Q6_K})
    for (int64_t rows : {1, 8}) {  // Q4_K: a multiple of 8 rows takes the repacked order
      ASSERT_TRUE(has_quant_dot(t));
      for (uint32_t seed = 0; seed < 8; ++seed) {
        const auto w = random_weight_row(t, n, 100 + seed);
        const auto x = random_vec(static_cast<size_t>(n), 200 + seed);
        const ActFormat af = activation_format(t);
        std::vector<uint8_t> act(static_cast<size_t>(quantized_act_bytes(af, n)));
        quantize_act(af, x.data(), act.data(), n);
        // Independent reference: dequantize both sides (activations via round_activations).
        std::vector<float> wf(static_cast<size_t>(n)), xr(static_cast<size_t>(n));
        ASSERT_TRUE(quant::dequantize_row(t, w.data(), wf.data(), n).has_value());
        round_activations(af, x.data(), xr.data(), n);
        double ref = 0, mag = 0;
        for (int64_t i = 0; i < n; ++i) {
          ref += static_cast<double>(wf[i]) * xr[i];
          mag += std::fabs(static_cast<double>(wf[i]) * xr[i]);
        }
        const QuantDotOps* paths[] = {&quant_dot_ops_scalar(), &quant_dot_ops_avx2()};
        float results[2];
        for (int p = 0; p < (detect_simd_level() >= SimdLevel::kAvx2 ? 2 : 1); ++p) {
          const QuantDotOps& o = *paths[p];
          float (*fn)(const void*, const void*, int64_t) =
              t == GgmlType::Q4_0   ? o.q4_0
              : t == GgmlType::Q4_1 ? o.q4_1
              : t == GgmlType::Q5_0 ? o.q5_0
              : t == GgmlType::Q5_1 ? o.q5_1
              : t == GgmlType::Q8_0 ? o.q8_0
              : t == GgmlType::Q4_K ? (rows % 8 == 0 ? o.q4_k_8x8 : o.q4_k)
                                    : o.q6_k;
          results[p] = fn(w.data(), act.data(), n);
          // Q8_1's block sum is stored in fp16: allow that rounding on top of float summation.
          EXPECT_NEAR(results[p], ref, 2e-3 * mag + 1e-6) << formats::type_name(t) << " path " << p;
        }
        if (detect_simd_level() >= SimdLevel::kAvx2)
          EXPECT_EQ(f32_to_bits(results[0]), f32_to_bits(results[1]))
              << formats::type_name(t) << " seed " << seed;
        EXPECT_EQ(f32_to_bits(quant_dot_fn(t, rows)(w.data(), act.data(), n)),
                  f32_to_bits(results[detect_simd_level() >= SimdLevel::kAvx2 ? 1 : 0]));
      }
    }
}

// The AVX2 swiglu vectorizes ggml's exp: it must give the portable body's bits, over a range
// wide enough to reach exp's overflow and underflow ends (|g| up to ~200) and a ragged tail.
TEST(QuantDotKernelTest, SwigluAvx2MatchesScalarBitForBit) {
  if (detect_simd_level() < SimdLevel::kAvx2) GTEST_SKIP() << "no AVX2 on this CPU";
  for (float scale : {1.0f, 8.0f, 60.0f}) {
    auto g = random_vec(1037, 11, scale), u = random_vec(1037, 12);
    g[5] = 200.0f;
    g[6] = -200.0f;
    g[7] = 0.0f;
    g[8] = -0.0f;
    std::vector<float> a(g.size()), b(g.size());
    quant_dot_ops_scalar().swiglu(g.data(), u.data(), a.data(), static_cast<int64_t>(g.size()));
    quant_dot_ops_avx2().swiglu(g.data(), u.data(), b.data(), static_cast<int64_t>(g.size()));
    for (size_t i = 0; i < g.size(); ++i)
      ASSERT_EQ(f32_to_bits(a[i]), f32_to_bits(b[i])) << "g " << g[i] << " at " << i;
  }
}

// gelu_mul is ggml_vec_geglu_f32: the GELU (tanh form) of the gate rounded to fp16, looked up
// as an fp16 value, times up; 0 at or below -10 and gate * up at or above 10. Checked on the
// active path (CI forces each) against that definition computed here, over the saturation
// edges, values at fp16 rounding ties, zeros, tiny values and a ragged tail.
TEST(QuantDotKernelTest, GeluMulMatchesGgmlDefinitionBitForBit) {
  auto g = random_vec(1029, 21, 4.0f), u = random_vec(1029, 22);
  const float edges[] = {-10.0f, 10.0f, std::nextafter(-10.0f, 0.0f), std::nextafter(10.0f, 0.0f), -11.0f, 12.5f,
                         0.0f, -0.0f, 1e-30f, -3e-8f, 1.0f + 1.0f / 2048, 2.0f + 3.0f / 1024 + 1.0f / 2048};
  for (size_t i = 0; i < std::size(edges); ++i) g[i * 3] = edges[i];
  std::vector<float> out(g.size());
  gelu_mul(g.data(), u.data(), out.data(), static_cast<int64_t>(g.size()));
  for (size_t i = 0; i < g.size(); ++i) {
    float want;
    if (g[i] <= -10.0f) {
      want = 0.0f;
    } else if (g[i] >= 10.0f) {
      want = g[i] * u[i];
    } else {
      const float x = fp16_to_f32(f32_to_fp16(g[i]));
      const float gelu = 0.5f * x * (1.0f + std::tanh(0.79788456080286535587989211986876f * x * (1.0f + 0.044715f * x * x)));
      want = fp16_to_f32(f32_to_fp16(gelu)) * u[i];
    }
    ASSERT_EQ(f32_to_bits(want), f32_to_bits(out[i])) << "g " << g[i] << " at " << i;
  }
}

TEST(QuantDotKernelTest, SwigluMatchesLibmWithinUlps) {
  auto g = random_vec(100, 7, 4.0f), u = random_vec(100, 8);
  std::vector<float> out(100);
  for (const QuantDotOps* o : {&quant_dot_ops_scalar(), &quant_dot_ops_avx2()}) {
    if (o == &quant_dot_ops_avx2() && detect_simd_level() < SimdLevel::kAvx2) continue;
    o->swiglu(g.data(), u.data(), out.data(), 100);
    for (int i = 0; i < 100; ++i) {
      const double ref = g[i] / (1 + std::exp(-static_cast<double>(g[i]))) * u[i];
      EXPECT_NEAR(out[i], ref, 1e-6 * (std::fabs(ref) + 1e-3)) << i;
    }
  }
}

// matmul_group (one pass for Q/K/V or gate/up) writes exactly what separate matmul() calls
// write: mixed types sharing an activation format or not, a type without an integer dot (the
// fallback), 1 and 7 tokens, row counts that are not multiples of the 16-row tile.
TEST(MatmulGroupKernelTest, EqualsSeparateMatmulsBitForBit) {
  using formats::GgmlType;
  const int64_t cols = 256;
  struct Spec {
    GgmlType t;
    int64_t rows;
  };
  const std::vector<std::vector<Spec>> groups = {
      {{GgmlType::Q4_1, 40}, {GgmlType::Q4_1, 24}, {GgmlType::Q4_1, 24}},
      {{GgmlType::Q4_K, 48}, {GgmlType::Q4_K, 16}, {GgmlType::Q6_K, 33}},
      {{GgmlType::Q8_0, 17}, {GgmlType::Q4_0, 64}},
      {{GgmlType::Q5_0, 32}, {GgmlType::F16, 16}}};
  ThreadPool pool(2);
  uint32_t seed = 500;
  for (const auto& g : groups)
    for (int64_t n_tokens : {1, 7}) {
      std::vector<std::vector<uint8_t>> data;
      std::vector<WeightView> views;
      for (const Spec& sp : g) {
        const auto tr = *formats::type_traits(static_cast<uint32_t>(sp.t));
        const int64_t rb = static_cast<int64_t>(formats::row_bytes(tr, cols));
        std::vector<uint8_t> m;
        for (int64_t r = 0; r < sp.rows; ++r) {
          std::vector<uint8_t> row;
          if (sp.t == GgmlType::F16) {
            const auto f = random_vec(static_cast<size_t>(cols), seed++, 0.05f);
            row.resize(static_cast<size_t>(rb));
            for (int64_t c = 0; c < cols; ++c) {
              const uint16_t h = f32_to_fp16(f[static_cast<size_t>(c)]);
              std::memcpy(row.data() + 2 * c, &h, 2);
            }
          } else {
            row = random_weight_row(sp.t, cols, seed++);
          }
          m.insert(m.end(), row.begin(), row.end());
        }
        data.push_back(std::move(m));
      }
      for (size_t i = 0; i < g.size(); ++i) {
        const auto tr = *formats::type_traits(static_cast<uint32_t>(g[i].t));
        views.push_back({g[i].t, data[i].data(), g[i].rows, cols,
                         static_cast<int64_t>(formats::row_bytes(tr, cols))});
      }
      const auto x = random_vec(static_cast<size_t>(n_tokens * cols), seed++);
      std::vector<std::vector<float>> ref(g.size()), got(g.size());
      std::vector<MatmulJob> jobs;
      for (size_t i = 0; i < g.size(); ++i) {
        ref[i].assign(static_cast<size_t>(n_tokens * g[i].rows), 1.0f);
        got[i].assign(ref[i].size(), 2.0f);
        matmul(views[i], x.data(), n_tokens, ref[i].data(), pool);
        jobs.push_back({&views[i], got[i].data()});
      }
      matmul_group(jobs, x.data(), n_tokens, pool);
      for (size_t i = 0; i < g.size(); ++i)
        for (size_t e = 0; e < ref[i].size(); ++e)
          ASSERT_EQ(f32_to_bits(ref[i][e]), f32_to_bits(got[i][e]))
              << formats::type_name(g[i].t) << " job " << i << " tokens " << n_tokens << " at " << e;
    }
}

}  // namespace
}  // namespace fennec::kernels
