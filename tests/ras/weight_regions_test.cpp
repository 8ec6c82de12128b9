// What the weight scrubber covers (src/ras/weight_regions.h): the packed copy of a packed
// matrix instead of its released mapped original, the mapped bytes of everything else, both for
// a tied embedding. And fault injection into the memory the products read: a flip in a packed
// copy is found by the scrubber (the file is untouched), a flip of an unpacked tensor goes
// through the shared file map; flipping again restores. Also ScrubThread's pacing.
#include "ras/weight_regions.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <thread>

#include "engine/loaded_model.h"
#include "formats/gguf.h"
#include "kernels/cpu/repack.h"
#include "ras/fault_injection.h"
#include "ras/scrubber.h"
#include "test_util.h"

namespace fennec::ras {
namespace {

formats::GgufTensor tensor(const std::string& name, const uint8_t* data, uint64_t n) {
  formats::GgufTensor t;
  t.name = name;
  t.data = data;
  t.n_bytes = n;
  return t;
}

TEST(WeightRegions, PackedCopiesReplaceTheirOriginalsExceptTensorsReadInPlace) {
  std::vector<uint8_t> file(1000), heap(600);
  const std::vector<formats::GgufTensor> tensors{
      tensor("token_embd.weight", file.data(), 100),
      tensor("blk.0.attn_q.weight", file.data() + 100, 200),
      tensor("blk.0.attn_norm.weight", file.data() + 300, 16),
      tensor("blk.0.ffn_down.weight", file.data() + 316, 300)};
  const std::vector<ScrubRegion> packed{{"blk.0.attn_q.weight (packed)", heap.data(), 208},
                                        {"token_embd.weight (packed)", heap.data() + 208, 112},
                                        {"output.weight (packed)", heap.data() + 320, 50}};
  const auto r = weight_scrub_regions(tensors, packed);
  std::vector<std::string> names;
  for (const auto& x : r) names.push_back(x.name);
  // The embedding is read in place (get_rows) and through its copy (the tied output); attn_q only
  // through its copy; the rest in place; a copy with no tensor in the table still counts.
  EXPECT_EQ(names,
            (std::vector<std::string>{"token_embd.weight", "token_embd.weight (packed)",
                                      "blk.0.attn_q.weight (packed)", "blk.0.attn_norm.weight",
                                      "blk.0.ffn_down.weight", "output.weight (packed)"}));
  EXPECT_EQ(r[2].data, heap.data());
  EXPECT_EQ(r[2].size, 208u);
  EXPECT_EQ(r[3].data, file.data() + 300);
  // Nothing read in place: the embedding's original goes too.
  const auto r2 = weight_scrub_regions(tensors, packed, {});
  EXPECT_EQ(r2.front().name, "token_embd.weight (packed)");
  EXPECT_EQ(packed_tensor_name("blk.1.ffn_up.weight (packed)"), "blk.1.ffn_up.weight");
  EXPECT_EQ(packed_tensor_name("blk.1.ffn_up.weight"), "");
  EXPECT_EQ(packed_tensor_name(" (packed)"), "");
}

class LoadedWeights : public ::testing::Test {
 protected:
  void SetUp() override {
    FENNEC_REQUIRE_MODEL(test::kSmolLM2);
    if (!kernels::repack_enabled()) GTEST_SKIP() << "FENNEC_REPACK=0: nothing is packed";
    // A copy: the "memory" target of an unpacked tensor writes through the file.
    dir = std::filesystem::temp_directory_path() / ("fennec_regions_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    path = (dir / "model.gguf").string();
    std::filesystem::copy_file(test::model_path(test::kSmolLM2), path,
                               std::filesystem::copy_options::overwrite_existing);
    engine::LoadOptions o;
    o.n_ctx = 64;
    // SmolLM2 with its Q4_1 matrices left unpacked (read mapped) and only the Q8_0 embedding tied
    // to the output packed: the mix of packed copies and mapped tensors these tests are about.
    kernels::set_pack_q4_1_enabled(false);
    auto l = engine::LoadedModel::load(path, o);
    kernels::set_pack_q4_1_enabled(pack_q4_1);
    ASSERT_TRUE(l) << l.error().message;
    lm = std::move(*l);
  }
  void TearDown() override {
    kernels::set_pack_q4_1_enabled(pack_q4_1);
    lm.reset();
    if (!dir.empty()) std::filesystem::remove_all(dir);
  }
  const bool pack_q4_1 = kernels::pack_q4_1_enabled();
  std::filesystem::path dir;
  std::string path;
  std::unique_ptr<engine::LoadedModel> lm;
};

TEST_F(LoadedWeights, SmolLM2RegionsAreWhatTheKernelsRead) {
  // SmolLM2 Q4_1 as loaded here: the Q4_1 matrices are not packed (read mapped), the Q8_0
  // embedding tied to the output is packed for the output product and read in place by the lookup.
  const auto r = weight_scrub_regions(lm->model());
  std::map<std::string, size_t> by_name;
  for (const auto& x : r) by_name[x.name] = x.size;
  const auto& g = lm->gguf();
  EXPECT_EQ(r.size(), g.tensors().size() + 1);
  EXPECT_TRUE(by_name.count("token_embd.weight"));
  ASSERT_TRUE(by_name.count("token_embd.weight (packed)"));
  EXPECT_EQ(by_name["token_embd.weight (packed)"],
            static_cast<size_t>(kernels::packed_bytes(formats::GgmlType::Q8_0, 49152, 576)));
  EXPECT_TRUE(by_name.count("blk.0.attn_q.weight"));
  EXPECT_FALSE(by_name.count("blk.0.attn_q.weight (packed)"));
}

TEST_F(LoadedWeights, MemoryFlipInAPackedCopyIsFoundByTheScrubberAndTheFileIsUntouched) {
  WeightScrubber scrub(weight_scrub_regions(lm->model()), size_t{1} << 30);
  EXPECT_TRUE(scrub.scrub(scrub.total_bytes()).empty());  // the reference pass
  FaultInjector inj(nullptr, nullptr);
  inj.set_model(&lm->gguf(), packed_copies(lm->model()));
  const auto* copy = &lm->model().packed_regions().front();
  ASSERT_EQ(copy->name, "token_embd.weight (packed)");
  const auto* t = lm->gguf().find_tensor("token_embd.weight");
  const uint8_t file_byte = t->data[1000];
  const uint8_t before = copy->data[1000];
  auto r = inj.inject({{"kind", "weight_bitflip"},
                       {"tensor", "token_embd.weight"},
                       {"byte", 1000},
                       {"bit", 2},
                       {"target", "memory"}});
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ((*r)["where"], "packed copy");
  EXPECT_EQ(copy->data[1000], before ^ 4);
  EXPECT_EQ(t->data[1000], file_byte);  // the mapped original (and the file) did not change
  auto found = scrub.scrub(scrub.total_bytes());
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].region, "token_embd.weight (packed)");
  EXPECT_EQ(found[0].offset, 0u);
  EXPECT_EQ(scrub.reverify(), 1u);
  ASSERT_TRUE(inj.inject({{"kind", "weight_bitflip"},
                          {"tensor", "token_embd.weight"},
                          {"byte", 1000},
                          {"bit", 2},
                          {"target", "memory"}}));
  EXPECT_EQ(copy->data[1000], before);
  EXPECT_EQ(scrub.reverify(), 0u);  // back to the bytes loaded: recovered
  // Out of range of the copy: a clear error, nothing flipped.
  auto bad = inj.inject({{"kind", "weight_bitflip"},
                         {"tensor", "token_embd.weight"},
                         {"byte", static_cast<int64_t>(copy->size)},
                         {"target", "memory"}});
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("outside the packed copy"), std::string::npos)
      << bad.error().message;
  EXPECT_FALSE(inj.inject(
      {{"kind", "weight_bitflip"}, {"tensor", "token_embd.weight"}, {"target", "disk"}}));
}

TEST_F(LoadedWeights, MemoryFlipOfAnUnpackedTensorChangesTheMappedBytes) {
  FaultInjector inj(nullptr, nullptr);
  inj.set_model(&lm->gguf(), packed_copies(lm->model()));
  const auto* t = lm->gguf().find_tensor("blk.0.attn_q.weight");
  ASSERT_NE(t, nullptr);
  const uint8_t before = t->data[77];
  auto r = inj.inject({{"kind", "weight_bitflip"},
                       {"tensor", "blk.0.attn_q.weight"},
                       {"byte", 77},
                       {"bit", 7},
                       {"target", "memory"}});
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_NE((*r)["where"].get<std::string>().find("mapped tensor"), std::string::npos);
  EXPECT_EQ(t->data[77], before ^ 0x80);  // the shared map shows the page the file write changed
  ASSERT_TRUE(inj.inject({{"kind", "weight_bitflip"},
                          {"tensor", "blk.0.attn_q.weight"},
                          {"byte", 77},
                          {"bit", 7},
                          {"target", "memory"}}));
  EXPECT_EQ(t->data[77], before);
}

TEST(ScrubRate, AutoSliceMakesAFullPassWithinFiftySeconds) {
  constexpr size_t MiB = size_t{1} << 20;
  EXPECT_EQ(scrub_bytes_per_read(630 * MiB, 10), 126 * MiB);  // 5 readings of 10 s: a pass in 50 s
  EXPECT_EQ(scrub_bytes_per_read(4000 * MiB, 10), 800 * MiB);
  EXPECT_EQ(scrub_bytes_per_read(4001 * MiB, 10), 801 * MiB);  // rounded up to whole MiB
  EXPECT_EQ(scrub_bytes_per_read(121 * MiB, 10), 25 * MiB);
  EXPECT_EQ(scrub_bytes_per_read(100 * MiB, 0.1), 16 * MiB);  // never below the floor
  EXPECT_EQ(scrub_bytes_per_read(2000 * MiB, 60),
            2000 * MiB);  // readings rarer than the pass: all of it
  EXPECT_EQ(scrub_bytes_per_read(630 * MiB, 10, 50, 256 * MiB), 256 * MiB);
}

TEST(WeightScrubber, PassTimeCountsWholeReads) {
  std::vector<uint8_t> a(1 << 16, 3), b(1, 4);
  EXPECT_DOUBLE_EQ(WeightScrubber({{"w", a.data(), a.size()}}, 1 << 14, 1 << 12).pass_s(0.5), 2.0);
  // One byte more takes a fifth read.
  EXPECT_DOUBLE_EQ(WeightScrubber({{"w", a.data(), a.size()}, {"b", b.data(), 1}}, 1 << 14, 1 << 12).pass_s(10), 50.0);
  EXPECT_DOUBLE_EQ(WeightScrubber({{"w", a.data(), a.size()}}, 1 << 20).pass_s(10), 10.0);  // one read holds it all
}

TEST(ScrubThread, ScrubsNowThenOncePerIntervalAndStops) {
  std::vector<uint8_t> a(1 << 16, 3);
  WeightScrubber s({{"w", a.data(), a.size()}}, 1 << 14, 1 << 12);
  {
    ScrubThread th(s, 0.02);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    th.stop();
    EXPECT_GE(th.reads(), 3);  // ~15 at 20 ms; generous for a loaded machine
    EXPECT_LE(th.reads(), 40);
    EXPECT_GT(th.busy_s(), 0);
  }
  EXPECT_GE(s.passes(), 1);   // 4 slices make a pass
  ScrubThread idle(s, 3600);  // stop() does not wait for the interval
  const auto t0 = std::chrono::steady_clock::now();
  idle.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

}  // namespace
}  // namespace fennec::ras
