// Importance matrices: the collector's selection and sums on known inputs (llama-imatrix's
// rules), and on a real model the sums for layer 0's attention input against an independent
// computation (embedding rows dequantized from the file, RMS norm in double), the entry set, and
// a round trip through the GGUF imatrix file.
#include "engine/imatrix.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "quant/dequantize.h"
#include "test_util.h"

namespace fennec::engine {
namespace {

kernels::WeightView view(int64_t cols) {
  kernels::WeightView w;
  w.cols = cols;
  w.rows = 8;
  return w;
}

TEST(ImatrixCollector, SumsSquaresPerColumnAndCountsTokens) {
  ImatrixCollector c;
  std::vector<float> x(16 * 3);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 3) - 0.5f * (i / 3 % 2);
  c.on_matmul(view(3), "blk.0.attn_q.weight", x.data(), 16);
  c.on_matmul(view(3), "blk.0.attn_q.weight", x.data(), 16);
  const auto& s = c.stats().at("blk.0.attn_q.weight");
  ASSERT_EQ(s.sums.size(), 3u);
  EXPECT_EQ(s.count, 32);
  for (int j = 0; j < 3; ++j) {
    double want = 0;
    for (int t = 0; t < 16; ++t) want += 2.0 * x[t * 3 + j] * x[t * 3 + j];
    EXPECT_DOUBLE_EQ(s.sums[static_cast<size_t>(j)], want) << j;
  }
  const quant::Imatrix im = c.to_imatrix({"text.txt"}, 2, 16);
  ASSERT_EQ(im.entries.size(), 1u);
  const auto& e = im.entries.at("blk.0.attn_q.weight");
  EXPECT_EQ(e.counts, std::vector<int64_t>{32});
  EXPECT_EQ(e.n_cols(), 3);
  EXPECT_EQ(im.chunk_count, 2);
  EXPECT_EQ(im.chunk_size, 16);
  EXPECT_EQ(im.datasets, std::vector<std::string>{"text.txt"});
}

TEST(ImatrixCollector, SkipsWhatLlamaImatrixSkips) {
  std::vector<float> x(64 * 4, 1.0f);
  ImatrixCollector c;
  c.on_matmul(view(4), "blk.1.ffn_down.weight", x.data(), 15);  // fewer than 16 tokens
  c.on_matmul(view(4), "output.weight", x.data(), 64);          // output not asked for
  c.on_matmul(view(4), "token_embd.weight", x.data(), 64);      // tied output: never
  EXPECT_TRUE(c.stats().empty());
  ImatrixCollector with_output(/*process_output=*/true);
  with_output.on_matmul(view(4), "output.weight", x.data(), 64);
  with_output.on_matmul(view(4), "token_embd.weight", x.data(), 64);
  ASSERT_EQ(with_output.stats().size(), 1u);
  EXPECT_EQ(with_output.stats().at("output.weight").count, 64);
}

TEST(Imatrix, LayerZeroInputMatchesIndependentComputation) {
  FENNEC_REQUIRE_MODEL(test::kSmolLM2);
  LoadOptions o;
  o.n_ctx = 64;
  o.n_threads = 1;
  auto lm = LoadedModel::load(test::model_path(test::kSmolLM2), o);
  ASSERT_TRUE(lm) << lm.error().message;
  auto ids = (*lm)->tokenizer().encode(
      test::read_file(test::source_path("tests/fixtures/reference/text.txt")), true, false);
  ASSERT_GE(ids.size(), 128u);
  auto r = compute_imatrix(**lm, ids, 64, 2, false, "text.txt");
  ASSERT_TRUE(r) << r.error().message;
  const auto& hp = (*lm)->model().hparams();
  EXPECT_EQ(r->n_chunks, 2);
  EXPECT_GT(r->ppl, 1.0);
  // Seven matrices per layer, nothing else (SmolLM2 ties its output to the embedding).
  EXPECT_EQ(r->imatrix.entries.size(), static_cast<size_t>(7 * hp.n_layers));
  for (const auto& [name, e] : r->imatrix.entries) {
    EXPECT_EQ(e.counts, std::vector<int64_t>{128}) << name;
    for (float v : e.sums) ASSERT_TRUE(std::isfinite(v) && v >= 0) << name;
  }
  const auto& q = r->imatrix.entries.at("blk.0.attn_q.weight");
  EXPECT_EQ(q.sums, r->imatrix.entries.at("blk.0.attn_v.weight").sums);  // same input
  EXPECT_EQ(r->imatrix.entries.at("blk.3.ffn_gate.weight").sums,
            r->imatrix.entries.at("blk.3.ffn_up.weight").sums);
  EXPECT_EQ(r->imatrix.entries.at("blk.0.ffn_down.weight").n_cols(), hp.n_ff);

  // Layer 0's attention input, from the file alone: embedding row, RMS norm, attn_norm weight.
  const auto& g = (*lm)->gguf();
  const formats::GgufTensor* emb = g.find_tensor("token_embd.weight");
  const formats::GgufTensor* norm = g.find_tensor("blk.0.attn_norm.weight");
  ASSERT_TRUE(emb && norm);
  const int64_t E = hp.n_embd;
  const auto traits = formats::type_traits(static_cast<uint32_t>(emb->type));
  ASSERT_TRUE(traits);
  const size_t rb = formats::row_bytes(*traits, static_cast<uint64_t>(E));
  const float* w = reinterpret_cast<const float*>(norm->data);
  std::vector<double> want(static_cast<size_t>(E), 0.0);
  std::vector<float> row(static_cast<size_t>(E));
  const int32_t bos = (*lm)->tokenizer().bos_id();
  for (int c = 0; c < 2; ++c)
    for (int t = 0; t < 64; ++t) {
      int32_t tok = ids[static_cast<size_t>(c * 64 + t)];
      if (t == 0 && (*lm)->tokenizer().add_bos() && bos >= 0) tok = bos;
      ASSERT_TRUE(quant::dequantize_row(emb->type, emb->data + rb * static_cast<size_t>(tok),
                                        row.data(), E));
      double ms = 0;
      for (float v : row) ms += static_cast<double>(v) * hp.embed_scale * v * hp.embed_scale;
      const double inv = 1.0 / std::sqrt(ms / static_cast<double>(E) + hp.norm_eps);
      for (int64_t j = 0; j < E; ++j) {
        const double h = row[static_cast<size_t>(j)] * hp.embed_scale * inv * w[j];
        want[static_cast<size_t>(j)] += h * h;
      }
    }
  double worst = 0;
  for (int64_t j = 0; j < E; ++j) {
    const double got = q.sums[static_cast<size_t>(j)], ref = want[static_cast<size_t>(j)];
    worst = std::max(worst, std::abs(got - ref) / std::max(ref, 1e-6));
  }
  EXPECT_LT(worst, 1e-4) << "largest relative difference of a column sum";

  // Round trip through llama.cpp's GGUF imatrix format.
  const std::string path =
      (std::filesystem::temp_directory_path() / "fennec_imatrix_test.gguf").string();
  ASSERT_TRUE(quant::write_imatrix_gguf(path, r->imatrix));
  auto back = quant::read_imatrix(path);
  std::filesystem::remove(path);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->chunk_count, 2);
  EXPECT_EQ(back->chunk_size, 64);
  EXPECT_EQ(back->datasets, std::vector<std::string>{"text.txt"});
  ASSERT_EQ(back->entries.size(), r->imatrix.entries.size());
  for (const auto& [name, e] : r->imatrix.entries) {
    const quant::ImatrixEntry* b = back->find(name);
    ASSERT_TRUE(b) << name;
    EXPECT_EQ(b->sums, e.sums) << name;
    EXPECT_EQ(b->counts, e.counts) << name;
  }
}

}  // namespace
}  // namespace fennec::engine
