// Teacher-forced logits of fennec against llama.cpp's (tests/fixtures/reference, made by
// make_reference.py with llama-cpp-python): top-1 agreement, KL divergence over the reference's
// top-32 tokens plus a tail bucket, exact full-vocabulary KL at saved positions, and mean NLL.
//
// Two passes over the same 512 tokens. "batch": all tokens in one forward call, against llama.cpp
// evaluating them in one llama_decode call. "decode": one token per forward call, against
// llama.cpp doing the same, which is the path both take while generating. llama.cpp's batched
// matrix products switch kernels with the batch shape (repacked Q4_K gemm for groups of 4 rows,
// llamafile's tinyBLAS), and fennec's do not, so a sequence gets the same result however it is
// batched; on Gemma 3 270M that leaves the batch pass at about 95% top-1, which is also how well
// llama.cpp's own batch and decode passes agree with each other (94.5%, see the fixture README).
// Gemma's decode pass is as sensitive: fennec reproduces llama.cpp's decode bits exactly only
// with ggml's per-output float order, which the unpacked kernels keep ("_ggml_order": 98%, in
// fact 100%); the packed Q8_0 kernels that fennec runs by default sum in another order (one
// chain per output, kernels/cpu/repack.h), which leaves Gemma at llama.cpp's own
// batch-to-decode level (~94-95%) with mean KL < 0.01 and the NLL within 1%. Its bound, 92%, is
// llama.cpp's own 94.5% less two standard errors of a rate measured on 512 positions (~1% each).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "engine/kv_cache.h"
#include "formats/gguf.h"
#include "kernels/cpu/repack.h"
#include "model/model.h"
#include "test_util.h"

namespace fennec {
namespace {

struct Case {
  const char* model;
  const char* fixture;
  double min_agreement;  // top-1 agreement this model must reach
  bool decode;           // one token per forward call
  bool packed = true;    // Q4_0/Q4_1/Q8_0 matrices repacked (kernels/cpu/repack.h), as fennec runs
  // The KV cache's K and V type. For q8_0 the fixture is llama.cpp with a q8_0 cache too, which
  // needs its flash attention (another order of operations: see the instantiation below).
  kernels::KvType kv = kernels::KvType::kF16;
};

class ReferenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(ReferenceTest, TeacherForcedLogitsMatchLlamaCpp) {
  const Case c = GetParam();
  FENNEC_REQUIRE_MODEL(c.model);
  const auto ref = nlohmann::json::parse(
      test::read_file(test::source_path(std::string("tests/fixtures/reference/") + c.fixture + ".json")));
  auto g = formats::GgufFile::open(test::model_path(c.model));
  ASSERT_TRUE(g) << g.error().message;
  auto gg = std::make_shared<formats::GgufFile>(std::move(*g));
  const bool packing = kernels::repack_enabled();
  kernels::set_repack_enabled(packing && c.packed);
  auto m = model::Model::load(gg);
  kernels::set_repack_enabled(packing);
  ASSERT_TRUE(m) << m.error().message;
  const model::Model& model = **m;
  const int n_vocab = model.hparams().n_vocab;
  ASSERT_EQ(n_vocab, ref["n_vocab"].get<int>());

  const std::vector<int32_t> tokens = ref["tokens"].get<std::vector<int32_t>>();
  const int n = static_cast<int>(tokens.size());
  ASSERT_GE(n, 512);
  engine::KvCacheShape shape = model.kv_shape(16);
  shape.k_type = shape.v_type = c.kv;
  auto kv = engine::KvCache::create(shape, (n + 15) / 16);
  ASSERT_TRUE(kv) << kv.error().message;
  std::vector<int32_t> table((n + 15) / 16);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  ThreadPool pool(default_thread_count());
  std::vector<float> logits;
  if (c.decode) {
    logits.resize(static_cast<size_t>(n) * n_vocab);
    std::vector<float> step;
    for (int i = 0; i < n; ++i) {
      model::Batch batch;
      batch.add(std::span<const int32_t>(&tokens[static_cast<size_t>(i)], 1), i, table, 1);
      ASSERT_TRUE(model.forward(batch, **kv, pool, step).has_value());
      ASSERT_EQ(step.size(), static_cast<size_t>(n_vocab));
      std::copy(step.begin(), step.end(), logits.begin() + static_cast<int64_t>(i) * n_vocab);
    }
  } else {
    model::Batch batch;
    batch.add(tokens, 0, table, n);
    ASSERT_TRUE(model.forward(batch, **kv, pool, logits).has_value());
  }

  const auto top1 = ref["top1"].get<std::vector<int32_t>>();
  const auto& topk_ids = ref["topk_ids"];
  const auto& topk_lp = ref["topk_logprobs"];
  int agree = 0;
  double max_gap = 0;
  int first_diff = -1;  // first position whose max logit differs from llama.cpp's (> 1e-4)
  double kl_sum = 0, nll_sum = 0, ref_nll_sum = 0;
  std::vector<float> lsm;
  for (int i = 0; i < n; ++i) {
    const float* row = logits.data() + static_cast<int64_t>(i) * n_vocab;
    kernels::log_softmax(row, n_vocab, lsm);
    int best = 0;
    for (int v = 1; v < n_vocab; ++v)
      if (row[v] > row[best]) best = v;
    agree += best == top1[static_cast<size_t>(i)];
    if (first_diff < 0 && std::fabs(row[best] - ref["max_logit"][static_cast<size_t>(i)].get<double>()) > 1e-4)
      first_diff = i;
    if (best != top1[static_cast<size_t>(i)]) {
      // A disagreement must be a near tie in llama.cpp's own distribution.
      const double gap = topk_lp[static_cast<size_t>(i)][0].get<double>() - topk_lp[static_cast<size_t>(i)][1].get<double>();
      max_gap = std::max(max_gap, gap);
      EXPECT_LT(gap, 1.0) << "position " << i << ": llama.cpp's top-1 led by " << gap;
    }
    // KL(ref || fennec) over the top-32 reference tokens plus the remaining mass as one bucket.
    double p_in = 0, q_in = 0, kl = 0;
    for (size_t j = 0; j < topk_ids[static_cast<size_t>(i)].size(); ++j) {
      const int id = topk_ids[static_cast<size_t>(i)][j].get<int>();
      const double lp = topk_lp[static_cast<size_t>(i)][j].get<double>();
      const double p = std::exp(lp);
      const double lq = lsm[static_cast<size_t>(id)];
      kl += p * (lp - lq);
      p_in += p;
      q_in += std::exp(lq);
    }
    const double p_tail = std::max(0.0, 1 - p_in), q_tail = std::max(1e-12, 1 - q_in);
    if (p_tail > 1e-9) kl += p_tail * std::log(p_tail / q_tail);
    kl_sum += kl;
    if (i + 1 < n) {
      nll_sum -= lsm[static_cast<size_t>(tokens[static_cast<size_t>(i + 1)])];
      ref_nll_sum -= ref["target_logprobs"][static_cast<size_t>(i)].get<double>();
    }
  }
  const double agree_rate = static_cast<double>(agree) / n;
  const double mean_kl = kl_sum / n;
  const double mean_nll = nll_sum / (n - 1), ref_mean_nll = ref_nll_sum / (n - 1);
  const char* mode = c.decode ? "decode" : "batch";
  std::printf("[ reference ] %s %s: top-1 agreement %.2f%% (%d/%d), mean KL(top-32+tail) %.6f, mean NLL %.5f vs llama.cpp %.5f\n",
              c.model, mode, 100 * agree_rate, agree, n, mean_kl, mean_nll, ref_mean_nll);
  std::printf("[ reference ] %s %s: logits equal llama.cpp's (max logit within 1e-4) up to position %d\n", c.model,
              mode, first_diff < 0 ? n : first_diff);
  std::printf("[ reference ] %s %s: largest llama.cpp top-1/top-2 log-prob gap where top-1 differs: %.3f\n", c.model,
              mode, max_gap);
  // fennec follows ggml's order of operations. The target is 98%: both models reach it
  // (bit for bit) in decode mode, SmolLM2 in batch mode too; Gemma's batch pass keeps a
  // regression bound (see the header).
  EXPECT_GE(agree_rate, c.min_agreement);
  EXPECT_LT(mean_kl, 0.01);
  EXPECT_NEAR(mean_nll, ref_mean_nll, 0.01 * ref_mean_nll);

  // Exact KL over the whole vocabulary where the reference saved full log-softmax rows.
  const auto& full = ref["full_logprobs"];
  const std::string blob = test::read_file(
      test::source_path("tests/fixtures/reference/" + full["file"].get<std::string>()));
  const auto positions = full["positions"].get<std::vector<int>>();
  if (positions.empty()) return;
  ASSERT_EQ(blob.size(), positions.size() * static_cast<size_t>(n_vocab) * sizeof(float));
  const float* ref_lp = reinterpret_cast<const float*>(blob.data());
  for (size_t k = 0; k < positions.size(); ++k) {
    const int pos = positions[k];
    kernels::log_softmax(logits.data() + static_cast<int64_t>(pos) * n_vocab, n_vocab, lsm);
    double kl = 0;
    for (int v = 0; v < n_vocab; ++v) {
      const double lp = ref_lp[k * n_vocab + v];
      kl += std::exp(lp) * (lp - lsm[static_cast<size_t>(v)]);
    }
    std::printf("[ reference ] %s: position %d full-vocabulary KL %.6f\n", c.model, pos, kl);
    EXPECT_LT(kl, 0.03) << "position " << pos;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ReferenceTest,
                         ::testing::Values(Case{test::kSmolLM2, "teacher_smollm2-135m", 0.98, false},
                                           Case{test::kGemma3, "teacher_gemma3-270m", 0.93, false},
                                           Case{test::kSmolLM2, "teacher_decode_smollm2-135m", 0.98, true},
                                           Case{test::kGemma3, "teacher_decode_gemma3-270m", 0.92, true},
                                           Case{test::kGemma3, "teacher_decode_gemma3-270m", 0.98, true, false},
                                           // q8_0 K and V: llama.cpp runs them only with its flash attention
                                           // (Q quantized to Q8_0 for q.k, an online softmax), fennec with its
                                           // own attention over the dequantized values, so the two agree as
                                           // llama.cpp's own q8_0 run agrees with its f16 one: 95.5/96.7%
                                           // (SmolLM2 batch/decode), 93.6/93.0% (Gemma). Measured: 94.1/94.7%,
                                           // 94.0/93.2%. Bounds: two standard errors (~1% each) below.
                                           Case{test::kSmolLM2, "teacher_kvq80_smollm2-135m", 0.92, false, true, kernels::KvType::kQ8_0},
                                           Case{test::kGemma3, "teacher_kvq80_gemma3-270m", 0.91, false, true, kernels::KvType::kQ8_0},
                                           Case{test::kSmolLM2, "teacher_decode_kvq80_smollm2-135m", 0.92, true, true, kernels::KvType::kQ8_0},
                                           Case{test::kGemma3, "teacher_decode_kvq80_gemma3-270m", 0.91, true, true, kernels::KvType::kQ8_0}),
                         [](const auto& info) {
                           const std::string f = info.param.fixture;
                           return std::string(info.param.decode ? "decode_" : "batch_") +
                                  (f.find("gemma3") != std::string::npos ? "gemma3" : "smollm") +
                                  (info.param.packed ? "" : "_ggml_order") +
                                  (info.param.kv == kernels::KvType::kQ8_0 ? "_kv_q8_0" : "");
                         });

}  // namespace
}  // namespace fennec
