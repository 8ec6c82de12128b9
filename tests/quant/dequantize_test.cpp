// Bit-exact checks of quant/dequantize against fixtures made by the Python gguf package
// (tests/fixtures/quant/make_quant_fixtures.py): random blocks of every type, every fp16 bit
// pattern, rows of real SmolLM2 and Gemma 3 tensors, and Q8_0 quantization.
#include "quant/dequantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "core/float_convert.h"

namespace fennec::quant {
namespace {

using formats::GgmlType;

struct Record {
  uint32_t kind = 0;  // 0: dequantize bytes -> floats; 1: quantize floats -> Q8_0 bytes
  GgmlType type{};
  std::string name;
  std::vector<uint8_t> bytes;
  std::vector<float> floats;
};

class Reader {
 public:
  explicit Reader(std::vector<uint8_t> data) : data_(std::move(data)) {}
  bool ok() const { return ok_; }
  bool at_end() const { return pos_ == data_.size(); }
  template <class T>
  T get() {
    T v{};
    take(&v, sizeof v);
    return v;
  }
  void take(void* dst, size_t n) {
    if (!ok_ || n > data_.size() - pos_) {
      ok_ = false;
      return;
    }
    std::memcpy(dst, data_.data() + pos_, n);
    pos_ += n;
  }

 private:
  std::vector<uint8_t> data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// Reads a fixture file; fails the test (and returns nothing) if it is missing or malformed.
std::vector<Record> load_fixture(const std::string& file) {
  const std::string path = std::string(FENNEC_SOURCE_DIR) + "/tests/fixtures/quant/" + file;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "missing fixture " << path
                  << ": run tests/fixtures/quant/make_quant_fixtures.py";
    return {};
  }
  Reader r(std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {}));
  char magic[4];
  r.take(magic, 4);
  const auto version = r.get<uint32_t>();
  const auto count = r.get<uint32_t>();
  if (!r.ok() || std::memcmp(magic, "FQNT", 4) != 0 || version != 1) {
    ADD_FAILURE() << path << ": not a version 1 quant fixture";
    return {};
  }
  std::vector<Record> out;
  for (uint32_t i = 0; i < count && r.ok(); ++i) {
    Record rec;
    rec.kind = r.get<uint32_t>();
    rec.type = static_cast<GgmlType>(r.get<uint32_t>());
    const auto name_len = r.get<uint32_t>();
    if (!r.ok() || name_len > 4096) break;
    rec.name.resize(name_len);
    r.take(rec.name.data(), name_len);
    const auto n = r.get<uint64_t>();
    const auto n_bytes = r.get<uint64_t>();
    if (!r.ok() || n > (1u << 24) || n_bytes > (1u << 26)) break;
    rec.bytes.resize(n_bytes);
    r.take(rec.bytes.data(), n_bytes);
    rec.floats.resize(n);
    r.take(rec.floats.data(), n * sizeof(float));
    out.push_back(std::move(rec));
  }
  if (!r.ok() || out.size() != count || !r.at_end()) {
    ADD_FAILURE() << path << ": truncated or corrupt fixture";
    return {};
  }
  return out;
}

// Exact float bits, except that any NaN matches any NaN (payloads are not part of the contract:
// numpy quiets signalling NaNs when it converts fp16).
void expect_same_floats(const std::vector<float>& want, const std::vector<float>& got,
                        const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  int reported = 0;
  size_t mismatches = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const bool same = std::isnan(want[i]) ? std::isnan(got[i])
                                           : f32_to_bits(want[i]) == f32_to_bits(got[i]);
    if (same) continue;
    ++mismatches;
    if (reported++ < 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << " (0x" << std::hex
                    << f32_to_bits(got[i]) << "), want " << want[i] << " (0x"
                    << f32_to_bits(want[i]) << std::dec << ")";
    }
  }
  EXPECT_EQ(mismatches, 0u) << what;
}

void check_dequant_record(const Record& rec) {
  SCOPED_TRACE(rec.name);
  ASSERT_TRUE(can_dequantize(rec.type)) << rec.name;
  const auto n = static_cast<int64_t>(rec.floats.size());
  const auto traits = formats::type_traits(static_cast<uint32_t>(rec.type));
  ASSERT_TRUE(traits.has_value());
  ASSERT_EQ(rec.bytes.size(), formats::row_bytes(*traits, static_cast<uint64_t>(n)));
  std::vector<float> got(rec.floats.size(), -1.0f);
  const Status s = dequantize_row(rec.type, rec.bytes.data(), got.data(), n);
  ASSERT_TRUE(s) << s.error().message;
  expect_same_floats(rec.floats, got, rec.name);
}

TEST(Dequantize, RandomBlocksMatchGguf) {
  const auto records = load_fixture("random_blocks.bin");
  ASSERT_FALSE(records.empty());
  std::set<GgmlType> seen;
  for (const auto& rec : records) {
    if (rec.kind != 0) continue;
    check_dequant_record(rec);
    seen.insert(rec.type);
  }
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1,
                     GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q2_K,
                     GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K,
                     GgmlType::MXFP4, GgmlType::NVFP4}) {
    EXPECT_TRUE(seen.count(t)) << "fixture has no " << formats::type_name(t) << " record";
  }
}

TEST(Dequantize, RealModelRowsMatchGguf) {
  const auto records = load_fixture("model_slices.bin");
  ASSERT_FALSE(records.empty());
  std::set<GgmlType> seen;
  for (const auto& rec : records) {
    check_dequant_record(rec);
    seen.insert(rec.type);
  }
  // SmolLM2 Q4_1 and Gemma 3 Q4_K_M together hold these types.
  for (GgmlType t : {GgmlType::F32, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0,
                     GgmlType::Q4_K, GgmlType::Q6_K}) {
    EXPECT_TRUE(seen.count(t)) << "fixture has no " << formats::type_name(t) << " row";
  }
}

TEST(Dequantize, ReadsBlocksAtAnyAlignment) {
  const auto records = load_fixture("random_blocks.bin");
  for (const auto& rec : records) {
    if (rec.kind != 0) continue;
    SCOPED_TRACE(rec.name);
    std::vector<uint8_t> shifted(rec.bytes.size() + 1);
    std::memcpy(shifted.data() + 1, rec.bytes.data(), rec.bytes.size());
    std::vector<float> got(rec.floats.size());
    ASSERT_TRUE(dequantize_row(rec.type, shifted.data() + 1, got.data(),
                               static_cast<int64_t>(got.size())));
    expect_same_floats(rec.floats, got, rec.name + " (odd address)");
  }
}

TEST(Dequantize, ZeroElementsIsFine) {
  float dst = 7.0f;
  EXPECT_TRUE(dequantize_row(GgmlType::Q4_K, nullptr, &dst, 0));
  EXPECT_EQ(dst, 7.0f);
}

TEST(Dequantize, RejectsUnsupportedTypes) {
  std::vector<uint8_t> src(1024);
  std::vector<float> dst(256);
  for (GgmlType t : {GgmlType::IQ2_XXS, GgmlType::IQ4_NL, GgmlType::TQ1_0, GgmlType::I8,
                     GgmlType::F64, static_cast<GgmlType>(99)}) {
    EXPECT_FALSE(can_dequantize(t)) << formats::type_name(t);
    const Status s = dequantize_row(t, src.data(), dst.data(), 256);
    ASSERT_FALSE(s) << formats::type_name(t);
    EXPECT_NE(s.error().message.find(formats::type_name(t)), std::string::npos)
        << s.error().message;
  }
}

TEST(Dequantize, RejectsCountsThatAreNotWholeBlocks) {
  std::vector<uint8_t> src(4096);
  std::vector<float> dst(1024);
  const struct {
    GgmlType type;
    int64_t n;
  } cases[] = {{GgmlType::Q4_0, 31},  {GgmlType::Q8_0, 48},   {GgmlType::Q4_K, 128},
               {GgmlType::Q6_K, 257}, {GgmlType::NVFP4, 32},  {GgmlType::MXFP4, 1},
               {GgmlType::F16, -2},   {GgmlType::Q5_0, -32}};
  for (const auto& c : cases) {
    const Status s = dequantize_row(c.type, src.data(), dst.data(), c.n);
    ASSERT_FALSE(s) << formats::type_name(c.type) << " n=" << c.n;
    EXPECT_NE(s.error().message.find("block size"), std::string::npos) << s.error().message;
  }
}

TEST(QuantizeQ8_0, MatchesGguf) {
  const auto records = load_fixture("random_blocks.bin");
  int checked = 0;
  for (const auto& rec : records) {
    if (rec.kind != 1) continue;
    SCOPED_TRACE(rec.name);
    std::vector<uint8_t> got(rec.bytes.size(), 0xaa);
    const Status s = quantize_row_q8_0(rec.floats.data(), got.data(),
                                       static_cast<int64_t>(rec.floats.size()));
    ASSERT_TRUE(s) << s.error().message;
    for (size_t b = 0; b < got.size() / sizeof(BlockQ8_0); ++b) {
      EXPECT_EQ(0, std::memcmp(got.data() + b * 34, rec.bytes.data() + b * 34, 34))
          << "block " << b;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 1);
}

TEST(QuantizeQ8_0, RejectsCountsThatAreNotWholeBlocks) {
  std::vector<float> src(64);
  std::vector<uint8_t> dst(68);
  EXPECT_FALSE(quantize_row_q8_0(src.data(), dst.data(), 33));
  EXPECT_FALSE(quantize_row_q8_0(src.data(), dst.data(), -32));
}

TEST(QuantizeQ8_0, RoundTripIsWithinHalfAStep) {
  std::vector<float> x(256);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
  std::vector<BlockQ8_0> q(x.size() / 32);
  ASSERT_TRUE(quantize_row_q8_0(x.data(), q.data(), static_cast<int64_t>(x.size())));
  std::vector<float> y(x.size());
  ASSERT_TRUE(dequantize_row(GgmlType::Q8_0, q.data(), y.data(), static_cast<int64_t>(y.size())));
  for (size_t i = 0; i < x.size(); ++i) {
    const float d = fp16_to_f32(q[i / 32].d);
    EXPECT_LE(std::fabs(x[i] - y[i]), 0.5f * d + 1e-3f * std::fabs(x[i])) << i;
  }
}

// The scalar conversions in core/float_convert.h that the FP4 types rely on, in ggml's
// convention (ggml-impl.h): no NaN scales, half scales for the doubled E2M1 codes.
TEST(FloatConvert, Fp4ScalesFollowGgml) {
  EXPECT_EQ(e8m0_to_f32_half(127), 0.5f);
  EXPECT_EQ(e8m0_to_f32_half(128), 1.0f);
  EXPECT_EQ(e8m0_to_f32_half(1), std::ldexp(1.0f, -127));
  EXPECT_EQ(e8m0_to_f32_half(0), std::ldexp(1.0f, -128));
  EXPECT_EQ(e8m0_to_f32_half(255), std::ldexp(1.0f, 127));
  for (int e = 1; e < 255; ++e) EXPECT_EQ(e8m0_to_f32_half(e) * 2.0f, e8m0_to_f32(e)) << e;

  EXPECT_EQ(ue4m3_to_f32(0x00), 0.0f);
  EXPECT_EQ(ue4m3_to_f32(0x7f), 0.0f);  // NaN in E4M3, zero in ggml
  EXPECT_EQ(ue4m3_to_f32(0x38), 1.0f);  // exponent 7 = bias
  EXPECT_EQ(ue4m3_to_f32(0x01), 1.0f / 512.0f);
  EXPECT_EQ(ue4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(ue4m3_to_f32(0xb8), 1.0f);    // bit 7 ignored
  EXPECT_EQ(ue4m3_to_f32(0xff), 480.0f);  // not special in ggml
  for (int v = 0; v < 256; ++v) {
    EXPECT_EQ(ue4m3_to_f32_half(v), ue4m3_to_f32(v) * 0.5f);
  }
  for (int c = 0; c < 16; ++c) EXPECT_EQ(kE2M1Doubled[c], 2.0f * kE2M1Values[c]) << c;
}

TEST(FloatConvert, Fp16RoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) continue;  // NaN
    ASSERT_EQ(f32_to_fp16(fp16_to_f32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

}  // namespace
}  // namespace fennec::quant
