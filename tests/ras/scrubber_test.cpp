// Weight scrubbing: a bit flipped after the reference pass is found in the right tensor and chunk,
// counted once, and moves the "weights" device to unhealthy through the health rules.
#include "ras/scrubber.h"

#include <gtest/gtest.h>

#include <random>

#include "ras/health.h"

namespace fennec::ras {
namespace {

TEST(Scrubber, ChecksumSeesEverySingleBitFlip) {
  std::vector<uint8_t> buf(203);
  std::mt19937 rng(1);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  const uint64_t ref = scrub_checksum(buf.data(), buf.size());
  for (size_t i = 0; i < buf.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      buf[i] ^= static_cast<uint8_t>(1u << bit);
      ASSERT_NE(scrub_checksum(buf.data(), buf.size()), ref) << i << ":" << bit;
      buf[i] ^= static_cast<uint8_t>(1u << bit);
    }
  EXPECT_EQ(scrub_checksum(buf.data(), buf.size()), ref);
}

TEST(Scrubber, FlipAfterReferenceIsFoundOnceAndMakesWeightsUnhealthy) {
  std::vector<uint8_t> a(3000, 7), b(5000, 9);
  WeightScrubber s(
      {{"blk.0.attn_q.weight", a.data(), a.size()}, {"output.weight", b.data(), b.size()}},
      /*bytes_per_read=*/4096, /*chunk_bytes=*/1024);
  HealthMonitor mon;
  double t = 0;
  auto reading = [&] { return mon.observe(t++, s.read()); };
  // The reference pass takes two readings; during it the count is unavailable, not zero.
  auto first = s.read();
  EXPECT_FALSE(first[0].available());
  mon.observe(t++, first);
  reading();
  EXPECT_EQ(s.passes(), 1);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(reading().empty());
  EXPECT_EQ(s.mismatches(), 0);
  EXPECT_EQ(mon.worst(), HealthState::kHealthy);

  b[2500] ^= 0x10;  // one bit, in output.weight's third chunk
  std::vector<HealthEvent> ev;
  for (int i = 0; i < 2; ++i)
    for (auto& e : reading()) ev.push_back(e);
  EXPECT_EQ(s.mismatches(), 1);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].device, "weights");
  EXPECT_EQ(ev[0].to, HealthState::kUnhealthy);
  EXPECT_NE(ev[0].reason.find("output.weight changed in memory (bytes 2048..3072)"),
            std::string::npos)
      << ev[0].reason;
  // The changed chunk is the new reference: the same flip is not counted again.
  for (int i = 0; i < 4; ++i) reading();
  EXPECT_EQ(s.mismatches(), 1);
}

TEST(Scrubber, DirectScrubReportsRegionAndOffset) {
  std::vector<uint8_t> a(4096, 1);
  WeightScrubber s({{"tok_embd.weight", a.data(), a.size()}}, 1 << 20, 1024);
  EXPECT_TRUE(s.scrub(4096).empty());  // reference
  a[1500] = 2;
  auto m = s.scrub(4096);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].region, "tok_embd.weight");
  EXPECT_EQ(m[0].offset, 1024u);
  WeightScrubber empty({}, 100, 100);
  EXPECT_TRUE(empty.scrub(1000).empty());  // nothing to scrub: no loop, no crash
}

TEST(Scrubber, AReadCoversAtMostOnePass) {
  std::vector<uint8_t> a(4096, 1);
  WeightScrubber s({{"w", a.data(), a.size()}}, /*bytes_per_read=*/1 << 20, 1024);
  s.read();  // the reference pass
  EXPECT_EQ(s.passes(), 1);
  s.read();
  EXPECT_EQ(s.passes(), 2);  // not 256 passes over the same bytes
}

}  // namespace
}  // namespace fennec::ras
