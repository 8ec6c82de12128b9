// Quantizers: ggml's reference rounding (conversions checked exhaustively, round trips), the
// range-managed FP4 search (never worse than ggml's rounding per block, ties to even, scales in
// range), imatrix files, and the whole-file driver (policy, .scale tensors, errors, no partial
// output). Byte-exactness against the Python gguf package is in tests/py/test_quantize.py.
#include "quant/quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "core/float_convert.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "quant/dequantize.h"
#include "quant/fp4_quantize.h"
#include "quant/imatrix_file.h"
#include "quant/quantize_model.h"

namespace fennec::quant {
namespace {

using formats::GgmlType;

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("fennec_quantize_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

std::vector<float> random_weights(size_t n, uint32_t seed, float scale = 0.05f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(rng);
  // A few outliers, as real weights have.
  for (size_t i = 0; i < n; i += 97) x[i] *= 8.0f;
  return x;
}

double sq_err(const std::vector<float>& a, const std::vector<float>& b, size_t off, size_t n,
              float g = 1.0f) {
  double e = 0;
  for (size_t i = off; i < off + n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]) * g;
    e += d * d;
  }
  return e;
}

TEST(Quantize, Ue4m3RoundToNearestEvenIsExhaustive) {
  // Every code is its own fixed point, and midpoints go to the even code.
  for (int c = 1; c <= 0x7e; ++c) {
    const float v = ue4m3_to_f32(static_cast<uint8_t>(c));
    EXPECT_EQ(f32_to_ue4m3_rne(v), c);
    if (c < 0x7e) {
      const float next = ue4m3_to_f32(static_cast<uint8_t>(c + 1));
      const float mid = 0.5f * (v + next);
      EXPECT_EQ(f32_to_ue4m3_rne(mid), (c % 2 == 0) ? c : c + 1) << c;
      EXPECT_EQ(f32_to_ue4m3_rne(std::nextafter(mid, 0.0f)), c);
      EXPECT_EQ(f32_to_ue4m3_rne(std::nextafter(mid, 1e9f)), c + 1);
    }
  }
  EXPECT_EQ(f32_to_ue4m3_rne(0.0f), 0);
  EXPECT_EQ(f32_to_ue4m3_rne(1e9f), 0x7e);  // saturates at 448, never 0x7f
  EXPECT_EQ(ue4m3_to_f32(0x7e), 448.0f);
}

TEST(Quantize, GgmlUe4m3ConversionRoundsHalfUp) {
  // ggml rounds the mantissa on one bit: 1.0625 (half-way 1 and 1.125) goes up.
  EXPECT_EQ(ref::f32_to_ue4m3_ggml(1.0625f), f32_to_ue4m3_rne(1.125f));
  EXPECT_EQ(f32_to_ue4m3_rne(1.0625f), f32_to_ue4m3_rne(1.0f));  // ties to even
  EXPECT_EQ(ref::f32_to_ue4m3_ggml(1000.0f), 0x7e);
  EXPECT_EQ(ref::f32_to_ue4m3_ggml(0.0f), 0);
}

TEST(Quantize, E2m1TiesToEven) {
  EXPECT_EQ(f32_to_e2m1_rne(0.25f), 0);   // 0 vs 0.5 -> 0 (even)
  EXPECT_EQ(f32_to_e2m1_rne(0.75f), 2);   // 0.5 vs 1 -> 1.0
  EXPECT_EQ(f32_to_e2m1_rne(1.25f), 2);   // 1 vs 1.5 -> 1.0
  EXPECT_EQ(f32_to_e2m1_rne(1.75f), 4);   // 1.5 vs 2 -> 2.0
  EXPECT_EQ(f32_to_e2m1_rne(2.5f), 4);    // 2 vs 3 -> 2
  EXPECT_EQ(f32_to_e2m1_rne(3.5f), 6);    // 3 vs 4 -> 4
  EXPECT_EQ(f32_to_e2m1_rne(5.0f), 6);    // 4 vs 6 -> 4
  EXPECT_EQ(f32_to_e2m1_rne(100.0f), 7);  // saturates at 6
  EXPECT_EQ(f32_to_e2m1_rne(-3.0f), 13);
  EXPECT_EQ(f32_to_e2m1_rne(-0.1f), 0);  // -0 coded +0, as ggml does
}

TEST(Quantize, ReferenceTypesRoundTripWithinTheirStep) {
  const auto x = random_weights(4096, 1);
  for (GgmlType t : {GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1,
                     GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q4_K, GgmlType::Q6_K,
                     GgmlType::MXFP4, GgmlType::NVFP4}) {
    const auto tr = *formats::type_traits(static_cast<uint32_t>(t));
    std::vector<uint8_t> q(formats::row_bytes(tr, x.size()));
    ASSERT_TRUE(quantize_row_ref(t, x.data(), q.data(), static_cast<int64_t>(x.size())));
    std::vector<float> y(x.size());
    ASSERT_TRUE(dequantize_row(t, q.data(), y.data(), static_cast<int64_t>(x.size())));
    const double rel =
        std::sqrt(sq_err(x, y, 0, x.size()) / sq_err(x, std::vector<float>(x.size()), 0, x.size()));
    // 4-bit types ~0.1, 5/6-bit ~0.03, 8-bit and 16-bit floats far below.
    EXPECT_LT(rel, 0.16) << tr.name;
    EXPECT_GT(rel, 0.0) << tr.name;
  }
}

TEST(Quantize, Q8_0MatchesExistingReference) {
  const auto x = random_weights(1024, 2);
  std::vector<BlockQ8_0> a(32), b(32);
  ASSERT_TRUE(quantize_row_ref(GgmlType::Q8_0, x.data(), a.data(), 1024));
  ASSERT_TRUE(quantize_row_q8_0(x.data(), b.data(), 1024));
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(BlockQ8_0) * 32), 0);
}

TEST(Quantize, RejectsBadSizesAndTypes) {
  float x[48] = {};
  uint8_t out[256];
  EXPECT_FALSE(quantize_row_ref(GgmlType::Q4_0, x, out, 48));
  EXPECT_FALSE(quantize_row_ref(GgmlType::IQ2_XS, x, out, 256));
  EXPECT_EQ(parse_quant_type("NVFP4"), GgmlType::NVFP4);
  EXPECT_EQ(parse_quant_type("q4_k"), GgmlType::Q4_K);
  EXPECT_FALSE(parse_quant_type("q3_k_m"));
}

// Per 16-value sub-block (g = 1), the range-managed NVFP4 error is never above ggml's: its
// candidates include the codes next to ggml's amax/6 code.
TEST(Fp4Quantize, Nvfp4NeverWorseThanGgmlPerSubBlock) {
  for (uint32_t seed = 0; seed < 4; ++seed) {
    const auto x = random_weights(64 * 64, seed, seed == 3 ? 0.001f : 0.05f);
    std::vector<BlockNvfp4> a(64), b(64);
    ref::quantize_nvfp4(x.data(), a.data(), 64);
    quantize_nvfp4_rows(x.data(), b.data(), 1, 64 * 64, 1.0f, nullptr);
    std::vector<float> ya(x.size()), yb(x.size());
    ref::dequantize_nvfp4(a.data(), ya.data(), 64);
    ref::dequantize_nvfp4(b.data(), yb.data(), 64);
    double ea = 0, eb = 0;
    for (size_t s = 0; s < x.size(); s += 16) {
      const double sa = sq_err(x, ya, s, 16), sb = sq_err(x, yb, s, 16);
      EXPECT_LE(sb, sa * (1 + 1e-6) + 1e-30) << "seed " << seed << " sub-block " << s / 16;
      ea += sa;
      eb += sb;
    }
    EXPECT_LT(eb, ea) << "seed " << seed;
  }
}

TEST(Fp4Quantize, Nvfp4TensorScaleKeepsSmallWeightsInRange) {
  // Weights ~1e-3: ggml's scales fall into UE4M3's subnormals; with g they use normal codes.
  const auto x = random_weights(64 * 256, 7, 0.001f);
  const float g = nvfp4_tensor_scale(x.data(), static_cast<int64_t>(x.size()));
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  EXPECT_FLOAT_EQ(g, amax / (6.0f * 448.0f));
  std::vector<BlockNvfp4> a(256), b(256);
  ref::quantize_nvfp4(x.data(), a.data(), 256);
  quantize_nvfp4_rows(x.data(), b.data(), 1, static_cast<int64_t>(x.size()), g, nullptr);
  std::vector<float> ya(x.size()), yb(x.size());
  ref::dequantize_nvfp4(a.data(), ya.data(), 256);
  ref::dequantize_nvfp4(b.data(), yb.data(), 256);
  const double ea = sq_err(x, ya, 0, x.size()), eb = sq_err(x, yb, 0, x.size(), g);
  EXPECT_LT(eb, 0.5 * ea);
  int max_code = 0;
  for (const auto& blk : b)
    for (uint8_t c : blk.d) {
      EXPECT_NE(c, 0x7f);
      EXPECT_LE(c, 0x7e);
      max_code = std::max<int>(max_code, c);
    }
  EXPECT_GE(max_code, 0x7c);  // the top of the range is used
}

TEST(Fp4Quantize, Mxfp4NeverWorseThanGgmlPerBlock) {
  const auto x = random_weights(32 * 512, 11);
  std::vector<BlockMxfp4> a(512), b(512);
  ref::quantize_mxfp4(x.data(), a.data(), 512);
  quantize_mxfp4_rows(x.data(), b.data(), 1, static_cast<int64_t>(x.size()), nullptr);
  std::vector<float> ya(x.size()), yb(x.size());
  ref::dequantize_mxfp4(a.data(), ya.data(), 512);
  ref::dequantize_mxfp4(b.data(), yb.data(), 512);
  double ea = 0, eb = 0;
  int changed = 0;
  for (size_t i = 0; i < 512; ++i) {
    const double sa = sq_err(x, ya, i * 32, 32), sb = sq_err(x, yb, i * 32, 32);
    EXPECT_LE(sb, sa * (1 + 1e-6) + 1e-30);
    changed += a[i].e != b[i].e;
    ea += sa;
    eb += sb;
  }
  EXPECT_LT(eb, ea);
  EXPECT_GT(changed, 0);
}

TEST(Fp4Quantize, ImportanceWeightsLowerTheWeightedError) {
  const int64_t n = 512;
  const auto x = random_weights(static_cast<size_t>(n) * 8, 5);
  std::vector<float> w(static_cast<size_t>(n));
  std::mt19937 rng(3);
  std::exponential_distribution<float> ed(1.0f);
  for (auto& v : w) v = ed(rng) * ed(rng) * 10.0f;
  for (GgmlType t : {GgmlType::NVFP4, GgmlType::MXFP4}) {
    const auto tr = *formats::type_traits(static_cast<uint32_t>(t));
    std::vector<uint8_t> qa(formats::row_bytes(tr, n) * 8), qb(qa.size());
    const float g = nvfp4_tensor_scale(x.data(), static_cast<int64_t>(x.size()));
    if (t == GgmlType::NVFP4) {
      quantize_nvfp4_rows(x.data(), reinterpret_cast<BlockNvfp4*>(qa.data()), 8, n, g, nullptr);
      quantize_nvfp4_rows(x.data(), reinterpret_cast<BlockNvfp4*>(qb.data()), 8, n, g, w.data());
    } else {
      quantize_mxfp4_rows(x.data(), reinterpret_cast<BlockMxfp4*>(qa.data()), 8, n, nullptr);
      quantize_mxfp4_rows(x.data(), reinterpret_cast<BlockMxfp4*>(qb.data()), 8, n, w.data());
    }
    std::vector<float> ya(x.size()), yb(x.size());
    ASSERT_TRUE(dequantize_row(t, qa.data(), ya.data(), static_cast<int64_t>(x.size())));
    ASSERT_TRUE(dequantize_row(t, qb.data(), yb.data(), static_cast<int64_t>(x.size())));
    const float gg = t == GgmlType::NVFP4 ? g : 1.0f;
    double ea = 0, eb = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double da = x[i] - ya[i] * gg, db = x[i] - yb[i] * gg;
      ea += w[i % n] * da * da;
      eb += w[i % n] * db * db;
    }
    EXPECT_LT(eb, ea) << tr.name;
  }
}

// ---- imatrix files ----

Imatrix sample_imatrix() {
  Imatrix im;
  im.datasets = {"wiki.txt"};
  im.chunk_count = 3;
  im.chunk_size = 512;
  ImatrixEntry e;
  e.sums = {1.0f, 4.0f, 9.0f, 0.5f};
  e.counts = {2};
  im.entries["blk.0.attn_q.weight"] = e;
  ImatrixEntry s;  // stacked: 2 experts x 2 columns
  s.sums = {1, 2, 3, 4};
  s.counts = {1, 4};
  im.entries["blk.0.ffn_up_exps.weight"] = s;
  return im;
}

TEST(ImatrixFile, GgufRoundTripAndLlamaCppLayout) {
  const std::string path = temp_path("im.gguf");
  ASSERT_TRUE(write_imatrix_gguf(path, sample_imatrix()));
  auto f = formats::GgufFile::open(path);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(f->get_string_or("general.type", ""), "imatrix");
  EXPECT_EQ(f->get_int_or("imatrix.chunk_size", 0), 512);
  const auto* sums = f->find_tensor("blk.0.ffn_up_exps.weight.in_sum2");
  const auto* counts = f->find_tensor("blk.0.ffn_up_exps.weight.counts");
  ASSERT_TRUE(sums && counts);
  EXPECT_EQ(sums->shape, (std::vector<uint64_t>{2, 2}));
  EXPECT_EQ(counts->shape, (std::vector<uint64_t>{1, 2}));
  auto im = read_imatrix(path);
  ASSERT_TRUE(im) << im.error().message;
  EXPECT_FALSE(im->is_legacy);
  ASSERT_EQ(im->entries.size(), 2u);
  const auto* e = im->find("blk.0.attn_q.weight");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->mean(), (std::vector<float>{0.5f, 2.0f, 4.5f, 0.25f}));
  EXPECT_EQ(im->find("blk.0.ffn_up_exps.weight")->mean(1), (std::vector<float>{0.75f, 1.0f}));
  EXPECT_EQ(im->datasets, std::vector<std::string>{"wiki.txt"});
  EXPECT_TRUE(check_imatrix_entry("blk.0.attn_q.weight", *e, 4, 1));
  auto bad = check_imatrix_entry("blk.0.attn_q.weight", *e, 576, 1);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("has 4 columns, tensor has 576"), std::string::npos);
  std::filesystem::remove(path);
}

TEST(ImatrixFile, LegacyRoundTripKeepsMeans) {
  const std::string path = temp_path("im.dat");
  ASSERT_TRUE(write_imatrix_legacy(path, sample_imatrix()));
  auto im = read_imatrix(path);
  ASSERT_TRUE(im) << im.error().message;
  EXPECT_TRUE(im->is_legacy);
  EXPECT_EQ(im->chunk_count, 3);
  const auto m = im->find("blk.0.attn_q.weight")->mean();
  ASSERT_EQ(m.size(), 4u);
  EXPECT_FLOAT_EQ(m[1], 2.0f);
  std::filesystem::remove(path);
}

TEST(ImatrixFile, BadFilesGiveClearErrors) {
  auto missing = read_imatrix(temp_path("nope.gguf"));
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("not found"), std::string::npos);

  const std::string path = temp_path("nan.gguf");
  Imatrix im = sample_imatrix();
  im.entries["blk.0.attn_q.weight"].sums[2] = NAN;
  ASSERT_TRUE(write_imatrix_gguf(path, im));
  auto r = read_imatrix(path);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("blk.0.attn_q.weight"), std::string::npos);
  EXPECT_NE(r.error().message.find("column 2"), std::string::npos);

  const std::string junk = temp_path("junk.dat");
  {
    std::ofstream o(junk, std::ios::binary);
    const int32_t n = 5, len = 3;
    o.write(reinterpret_cast<const char*>(&n), 4);
    o.write(reinterpret_cast<const char*>(&len), 4);
    o.write("abc", 3);
  }
  auto j = read_imatrix(junk);
  ASSERT_FALSE(j);
  EXPECT_NE(j.error().message.find("truncated"), std::string::npos) << j.error().message;
  std::filesystem::remove(path);
  std::filesystem::remove(junk);
}

// ---- the whole-file driver ----

// A tiny llama-like F32 model: embeddings, one attention and one FFN matrix, a norm, and a
// matrix whose rows (96) are not a multiple of NVFP4's 64.
std::string write_tiny_model(const std::string& name, bool with_nan = false) {
  const std::string path = temp_path(name);
  formats::GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string_array("tokenizer.ggml.tokens", {"a", "b"});
  w.set_u32("general.file_type", 0);
  struct T {
    const char* name;
    std::vector<uint64_t> shape;
  };
  const std::vector<T> ts = {{"token_embd.weight", {128, 16}},
                             {"blk.0.attn_norm.weight", {128}},
                             {"blk.0.attn_q.weight", {128, 64}},
                             {"blk.0.ffn_down.weight", {96, 128}},
                             {"blk.0.ffn_up.weight", {128, 96}}};
  std::vector<std::vector<float>> data;
  uint32_t seed = 100;
  for (const auto& t : ts) {
    size_t n = 1;
    for (auto d : t.shape) n *= d;
    data.push_back(random_weights(n, seed++, 0.002f));
    EXPECT_TRUE(w.add_tensor(t.name, GgmlType::F32, t.shape));
  }
  if (with_nan) data[2][3 * 128 + 5] = NAN;
  std::vector<const void*> ptrs;
  for (auto& d : data) ptrs.push_back(d.data());
  EXPECT_TRUE(formats::write_gguf(w, path, ptrs));
  return path;
}

std::vector<float> read_f32(const formats::GgufTensor& t) {
  std::vector<float> v(t.n_elements());
  EXPECT_TRUE(dequantize_row(t.type, t.data, v.data(), static_cast<int64_t>(v.size())));
  return v;
}

TEST(QuantizeModel, Nvfp4PolicyScalesAndErrors) {
  const std::string in = write_tiny_model("tiny.gguf");
  const std::string out = temp_path("tiny-nvfp4.gguf");
  QuantizeOptions o;
  o.input = in;
  o.output = out;
  o.type = GgmlType::NVFP4;
  o.n_threads = 2;
  o.log = nullptr;
  auto rep = quantize_model(o);
  ASSERT_TRUE(rep) << rep.error().message;
  auto f = formats::GgufFile::open(out);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(f->get_int_or("general.file_type", -1), 39);
  EXPECT_EQ(f->find("tokenizer.ggml.tokens")->strings.size(), 2u);
  EXPECT_EQ(f->find_tensor("token_embd.weight")->type, GgmlType::Q8_0);
  EXPECT_EQ(f->find_tensor("blk.0.attn_norm.weight")->type, GgmlType::F32);
  EXPECT_EQ(f->find_tensor("blk.0.attn_q.weight")->type, GgmlType::NVFP4);
  EXPECT_EQ(f->find_tensor("blk.0.ffn_down.weight")->type, GgmlType::MXFP4);  // 96 % 64 != 0
  EXPECT_EQ(f->find_tensor("blk.0.ffn_up.weight")->type, GgmlType::NVFP4);
  // Per-tensor scales where llama.cpp applies them (llama applies FFN scales too).
  const auto* sq = f->find_tensor("blk.0.attn_q.scale");
  ASSERT_TRUE(sq);
  EXPECT_EQ(sq->shape, std::vector<uint64_t>{1});
  EXPECT_TRUE(f->find_tensor("blk.0.ffn_up.scale"));
  EXPECT_FALSE(f->find_tensor("blk.0.ffn_down.scale"));  // MXFP4: no scale
  // Dequantized * scale approximates the input.
  auto fin = formats::GgufFile::open(in);
  const auto x = read_f32(*fin->find_tensor("blk.0.attn_q.weight"));
  const auto y = read_f32(*f->find_tensor("blk.0.attn_q.weight"));
  float g;
  std::memcpy(&g, sq->data, 4);
  double e = 0, s = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    e += (x[i] - y[i] * g) * (x[i] - y[i] * g);
    s += x[i] * x[i];
  }
  EXPECT_LT(std::sqrt(e / s), 0.15);
  bool found = false;
  for (const auto& t : rep->tensors)
    if (t.name == "blk.0.attn_q.weight") {
      found = true;
      EXPECT_NEAR(t.rel_rmse, std::sqrt(e / s), 1e-6);
      EXPECT_EQ(t.tensor_scale, g);
    }
  EXPECT_TRUE(found);
  std::filesystem::remove(out);

  // --naive: ggml's rounding, no .scale tensors.
  o.naive = true;
  ASSERT_TRUE(quantize_model(o));
  auto fn = formats::GgufFile::open(out);
  ASSERT_TRUE(fn);
  EXPECT_FALSE(fn->find_tensor("blk.0.attn_q.scale"));
  std::filesystem::remove(out);

  // Rules: regex and glob.
  o.naive = false;
  o.rules = {{"attn_q", GgmlType::Q8_0}, {"blk.*.ffn_up.weight", GgmlType::Q4_0}};
  ASSERT_TRUE(quantize_model(o));
  auto fr = formats::GgufFile::open(out);
  EXPECT_EQ(fr->find_tensor("blk.0.attn_q.weight")->type, GgmlType::Q8_0);
  EXPECT_EQ(fr->find_tensor("blk.0.ffn_up.weight")->type, GgmlType::Q4_0);
  std::filesystem::remove(out);
  std::filesystem::remove(in);
}

TEST(QuantizeModel, NanWeightsAndBadImatrixLeaveNoOutput) {
  const std::string in = write_tiny_model("tiny-nan.gguf", /*with_nan=*/true);
  const std::string out = temp_path("tiny-nan-out.gguf");
  QuantizeOptions o;
  o.input = in;
  o.output = out;
  o.type = GgmlType::Q4_0;
  o.log = nullptr;
  auto r = quantize_model(o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("tensor 'blk.0.attn_q.weight' has NaN at row 3, column 5"),
            std::string::npos)
      << r.error().message;
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_FALSE(std::filesystem::exists(out + ".tmp"));
  std::filesystem::remove(in);

  const std::string in2 = write_tiny_model("tiny-ok.gguf");
  const std::string imp = temp_path("tiny-bad-im.gguf");
  Imatrix im;
  im.entries["blk.0.attn_q.weight"] = ImatrixEntry{std::vector<float>(100, 1.0f), {1}};
  ASSERT_TRUE(write_imatrix_gguf(imp, im));
  o.input = in2;
  o.imatrix_path = imp;
  o.type = GgmlType::NVFP4;
  auto r2 = quantize_model(o);
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.error().message.find("has 100 columns, tensor has 128"), std::string::npos)
      << r2.error().message;
  EXPECT_FALSE(std::filesystem::exists(out));
  o.imatrix_path = temp_path("missing-im.gguf");
  EXPECT_FALSE(quantize_model(o));

  // A good imatrix: statistics become weighted.
  im.entries["blk.0.attn_q.weight"] = ImatrixEntry{std::vector<float>(128, 2.0f), {4}};
  ASSERT_TRUE(write_imatrix_gguf(imp, im));
  o.imatrix_path = imp;
  auto r3 = quantize_model(o);
  ASSERT_TRUE(r3) << r3.error().message;
  for (const auto& t : r3->tensors)
    EXPECT_EQ(t.weighted, t.name == "blk.0.attn_q.weight") << t.name;
  auto f = formats::GgufFile::open(out);
  EXPECT_EQ(f->get_string_or("quantize.imatrix.file", ""), imp);
  std::filesystem::remove(out);
  std::filesystem::remove(in2);
  std::filesystem::remove(imp);
}

TEST(AutoImportance, InputNormByTensorName) {
  EXPECT_EQ(input_norm_of("blk.0.attn_q.weight"), "blk.0.attn_norm.weight");
  EXPECT_EQ(input_norm_of("blk.12.attn_k.weight"), "blk.12.attn_norm.weight");
  EXPECT_EQ(input_norm_of("blk.3.attn_v.weight"), "blk.3.attn_norm.weight");
  EXPECT_EQ(input_norm_of("blk.3.attn_qkv.weight"), "blk.3.attn_norm.weight");
  EXPECT_EQ(input_norm_of("blk.7.ffn_gate.weight"), "blk.7.ffn_norm.weight");
  EXPECT_EQ(input_norm_of("blk.7.ffn_up.weight"), "blk.7.ffn_norm.weight");
  EXPECT_EQ(input_norm_of("blk.7.ffn_up_exps.weight"), "blk.7.ffn_norm.weight");
  EXPECT_EQ(input_norm_of("blk.7.ffn_gate_shexp.weight"), "blk.7.ffn_norm.weight");
  EXPECT_EQ(input_norm_of("blk.7.ffn_gate_inp.weight"), "blk.7.ffn_norm.weight");
  // No norm in front of these: uniform.
  EXPECT_EQ(input_norm_of("blk.0.attn_output.weight"), "");
  EXPECT_EQ(input_norm_of("blk.0.ffn_down.weight"), "");
  EXPECT_EQ(input_norm_of("token_embd.weight"), "");
  EXPECT_EQ(input_norm_of("output.weight"), "");
  EXPECT_EQ(input_norm_of("blk.0.attn_q.bias"), "");
}

TEST(AutoImportance, NormWeightsSquaredPlusBiasMeanOne) {
  const float g[4] = {1.0f, -2.0f, 0.0f, 1.0f};
  const auto w = norm_importance(g, nullptr, 4);  // 1, 4, 0, 1: mean 1.5
  ASSERT_EQ(w.size(), 4u);
  EXPECT_FLOAT_EQ(w[0], 1.0f / 1.5f);
  EXPECT_FLOAT_EQ(w[1], 4.0f / 1.5f);
  EXPECT_FLOAT_EQ(w[2], 0.0f);
  const float b[4] = {0.0f, 0.0f, 2.0f, 0.0f};
  const auto wb = norm_importance(g, b, 4);  // 1, 4, 4, 1: mean 2.5
  EXPECT_FLOAT_EQ(wb[2], 4.0f / 2.5f);
  const float z[3] = {0.0f, 0.0f, 0.0f};
  EXPECT_EQ(norm_importance(z, nullptr, 3), std::vector<float>(3, 1.0f));
}

TEST(AutoImportance, ColumnKurtosisWeights) {
  // Three columns: +-1 (kurtosis 1), one spike (0, 0, 0, 2: mean x^2 = 1, mean x^4 = 4), zeros.
  ColumnKurtosis k(3);
  EXPECT_EQ(k.weights(1.0), std::vector<float>(3, 1.0f));  // no rows yet
  const float rows[4][3] = {{1, 0, 0}, {-1, 0, 0}, {1, 0, 0}, {-1, 2, 0}};
  ColumnKurtosis a(3), b(3);
  a.add_row(rows[0]);
  a.add_row(rows[1]);
  b.add_row(rows[2]);
  b.add_row(rows[3]);
  a.merge(b);
  const auto w = a.weights(1.0);  // 1, 4, 1 (zero column): mean 2
  ASSERT_EQ(w.size(), 3u);
  EXPECT_FLOAT_EQ(w[0], 0.5f);
  EXPECT_FLOAT_EQ(w[1], 2.0f);
  EXPECT_FLOAT_EQ(w[2], 0.5f);
  const auto w2 = a.weights(2.0);  // 1, 16, 1: mean 6
  EXPECT_FLOAT_EQ(w2[1], 16.0f / 6.0f);
}

TEST(QuantizeModel, AutoImportanceSources) {
  const std::string in = write_tiny_model("tiny-auto.gguf");
  const std::string out = temp_path("tiny-auto-out.gguf");
  QuantizeOptions o;
  o.input = in;
  o.output = out;
  o.type = GgmlType::NVFP4;
  o.tensor_scale = false;
  o.n_threads = 2;
  o.log = nullptr;
  auto importance_of = [](const QuantizeReport& r, const std::string& name) {
    for (const auto& t : r.tensors)
      if (t.name == name) return t.importance;
    return std::string("?");
  };
  auto fin = formats::GgufFile::open(in);
  ASSERT_TRUE(fin);
  const auto x = read_f32(*fin->find_tensor("blk.0.attn_q.weight"));  // 64 rows of 128
  const auto g = read_f32(*fin->find_tensor("blk.0.attn_norm.weight"));
  auto quantized_q = [&] {
    auto f = formats::GgufFile::open(out);
    const auto* t = f->find_tensor("blk.0.attn_q.weight");
    return std::vector<uint8_t>(t->data, t->data + t->n_bytes);
  };
  auto expected_q = [&](const float* w) {
    std::vector<BlockNvfp4> y(x.size() / kQKNvfp4);
    quantize_nvfp4_rows(x.data(), y.data(), 64, 128, 1.0f, w);
    std::vector<uint8_t> bytes(y.size() * sizeof(BlockNvfp4));
    std::memcpy(bytes.data(), y.data(), bytes.size());
    return bytes;
  };

  // Default: the column kurtosis of each matrix.
  auto rep = quantize_model(o);
  ASSERT_TRUE(rep) << rep.error().message;
  EXPECT_EQ(importance_of(*rep, "blk.0.attn_q.weight"), "kurtosis");
  EXPECT_EQ(importance_of(*rep, "blk.0.ffn_down.weight"), "kurtosis");  // MXFP4 (fallback)
  EXPECT_EQ(importance_of(*rep, "token_embd.weight"), "");              // Q8_0: no FP4 search
  ColumnKurtosis k(128);
  for (int r = 0; r < 64; ++r) k.add_row(x.data() + r * 128);
  const auto kw = k.weights(ColumnKurtosis::kNvfp4Power);
  EXPECT_EQ(quantized_q(), expected_q(kw.data()));
  EXPECT_NE(quantized_q(), expected_q(nullptr));
  for (const auto& t : rep->tensors) EXPECT_FALSE(t.weighted) << t.name;  // stats unweighted
  std::filesystem::remove(out);

  // Norm: attn_q reads attn_norm's output, so its columns are weighted by g^2.
  o.auto_importance = AutoImportance::kNorm;
  auto norm = quantize_model(o);
  ASSERT_TRUE(norm) << norm.error().message;
  EXPECT_EQ(importance_of(*norm, "blk.0.attn_q.weight"), "norm (blk.0.attn_norm.weight)");
  EXPECT_EQ(importance_of(*norm, "blk.0.ffn_down.weight"), "uniform (no norm in front)");
  // ffn_up reads ffn_norm, which this model lacks: uniform.
  EXPECT_EQ(importance_of(*norm, "blk.0.ffn_up.weight"),
            "uniform (no usable blk.0.ffn_norm.weight)");
  const auto nw = norm_importance(g.data(), nullptr, 128);
  EXPECT_EQ(quantized_q(), expected_q(nw.data()));
  std::filesystem::remove(out);

  // None: uniform weights.
  o.auto_importance = AutoImportance::kNone;
  auto off = quantize_model(o);
  ASSERT_TRUE(off) << off.error().message;
  EXPECT_EQ(importance_of(*off, "blk.0.attn_q.weight"), "uniform");
  EXPECT_EQ(quantized_q(), expected_q(nullptr));
  std::filesystem::remove(out);

  // An imatrix entry wins; tensors without one get the automatic weights.
  o.auto_importance = AutoImportance::kKurtosis;
  const std::string imp = temp_path("tiny-auto-im.gguf");
  Imatrix im;
  im.entries["blk.0.attn_q.weight"] = ImatrixEntry{std::vector<float>(128, 3.0f), {3}};
  ASSERT_TRUE(write_imatrix_gguf(imp, im));
  o.imatrix_path = imp;
  auto withim = quantize_model(o);
  ASSERT_TRUE(withim) << withim.error().message;
  EXPECT_EQ(importance_of(*withim, "blk.0.attn_q.weight"), "imatrix");
  EXPECT_EQ(importance_of(*withim, "blk.0.ffn_up.weight"), "kurtosis");
  EXPECT_EQ(quantized_q(), expected_q(std::vector<float>(128, 1.0f).data()));
  std::filesystem::remove(out);
  std::filesystem::remove(imp);

  // --naive ignores every importance.
  o.imatrix_path.clear();
  o.naive = true;
  auto naive = quantize_model(o);
  ASSERT_TRUE(naive);
  EXPECT_EQ(importance_of(*naive, "blk.0.attn_q.weight"), "");
  std::filesystem::remove(out);
  std::filesystem::remove(in);
}

}  // namespace
}  // namespace fennec::quant
