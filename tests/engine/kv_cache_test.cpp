// The KV cache's types: sizes per block, the head sizes Q8_0 accepts, the names the CLI takes.
#include <gtest/gtest.h>

#include "engine/kv_cache.h"

namespace fennec::engine {
namespace {

using kernels::KvType;

TEST(KvCache, BytesPerBlockFollowTheTypes) {
  KvCacheShape s{2, 3, 64, 32, 16};
  // fp16: 2 bytes a value; Q8_0: 34 bytes per 32 values.
  EXPECT_EQ(KvCache::bytes_per_block(s), 2 * 16 * 3 * (64 + 32) * 2);
  s.k_type = KvType::kQ8_0;
  EXPECT_EQ(KvCache::bytes_per_block(s), 2 * 16 * 3 * (2 * 34 + 32 * 2));
  s.v_type = KvType::kQ8_0;
  EXPECT_EQ(KvCache::bytes_per_block(s), 2 * 16 * 3 * (2 * 34 + 34));
  auto c = KvCache::create(s, 5);
  ASSERT_TRUE(c) << c.error().message;
  EXPECT_EQ((*c)->bytes(), 5 * KvCache::bytes_per_block(s));
  // Layers follow each other: layer 1 starts where layer 0's 5 blocks end.
  EXPECT_EQ((*c)->k_layer(1) - (*c)->k_layer(0), 5 * 16 * 3 * 68);
  EXPECT_EQ((*c)->v_layer(1) - (*c)->v_layer(0), 5 * 16 * 3 * 34);
  // The pages are writable to the last byte of the last layer.
  (*c)->k_layer(1)[5 * 16 * 3 * 68 - 1] = 1;
  (*c)->v_layer(1)[5 * 16 * 3 * 34 - 1] = 1;
}

TEST(KvCache, Q8NeedsHeadSizesThatAreMultiplesOf32) {
  KvCacheShape s{1, 2, 80, 80, 16};
  s.v_type = KvType::kQ8_0;
  auto c = KvCache::create(s, 4);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("multiples of 32"), std::string::npos) << c.error().message;
  s.v_type = KvType::kF16;
  EXPECT_TRUE(KvCache::create(s, 4));
}

TEST(KvCache, TypeNames) {
  for (KvType t : {KvType::kF16, KvType::kQ8_0}) {
    auto p = parse_kv_type(kv_type_name(t));
    ASSERT_TRUE(p);
    EXPECT_EQ(*p, t);
  }
  auto bad = parse_kv_type("q4_0");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("f16, q8_0"), std::string::npos);
}

}  // namespace
}  // namespace fennec::engine
