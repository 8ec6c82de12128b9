// GGUF reader against files written by the reference Python `gguf` package
// (tests/fixtures/gguf/make_gguf_fixtures.py) and against the two real models.
#include "formats/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/gguf_info.h"

namespace fennec::formats {
namespace {

using Json = nlohmann::ordered_json;

const std::string kFixtureDir = FENNEC_SOURCE_DIR "/tests/fixtures/gguf/";
const std::string kModelDir = FENNEC_SOURCE_DIR "/models/";

Json load_expected() {
  std::ifstream in(kFixtureDir + "expected.json");
  EXPECT_TRUE(in) << "missing " << kFixtureDir
                  << "expected.json: run tests/fixtures/gguf/make_gguf_fixtures.py";
  return Json::parse(in);
}

std::vector<uint8_t> from_hex(const std::string& hex) {
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return out;
}

// Compares numeric array element i with the expected JSON number, exactly.
void expect_number_at(const GgufValue& v, uint64_t i, const Json& e, const std::string& where) {
  switch (v.elem_type) {
    case GgufType::FLOAT32:
    case GgufType::FLOAT64:
      EXPECT_EQ(v.number_at(i), e.get<double>()) << where;
      break;
    case GgufType::BOOL:
      EXPECT_EQ(v.int_at(i), e.get<bool>() ? 1 : 0) << where;
      break;
    case GgufType::UINT64:
      // int_at returns the bits as int64; compare as unsigned.
      EXPECT_EQ(static_cast<uint64_t>(v.int_at(i)), e.get<uint64_t>()) << where;
      break;
    default:
      EXPECT_EQ(v.int_at(i), e.get<int64_t>()) << where;
      EXPECT_EQ(v.number_at(i), static_cast<double>(e.get<int64_t>())) << where;
  }
}

// Checks an array value against {"elem_type": id, "items": [...]} (recursively for nesting).
void expect_array(const GgufValue& v, const Json& e, const std::string& where) {
  ASSERT_TRUE(v.is_array()) << where;
  ASSERT_EQ(static_cast<uint32_t>(v.elem_type), e.at("elem_type").get<uint32_t>()) << where;
  const Json& items = e.at("items");
  ASSERT_EQ(v.count, items.size()) << where;
  for (uint64_t i = 0; i < v.count; ++i) {
    const std::string at = where + "[" + std::to_string(i) + "]";
    if (v.elem_type == GgufType::STRING) {
      ASSERT_EQ(v.strings.size(), v.count) << where;
      EXPECT_EQ(std::string(v.strings[i]), items[i].get<std::string>()) << at;
    } else if (v.elem_type == GgufType::ARRAY) {
      // The script describes each inner array the same way: {"elem_type", "items"}.
      ASSERT_EQ(v.items.size(), v.count) << where;
      expect_array(v.items[i], items[i], at);
    } else {
      ASSERT_NE(v.raw, nullptr) << where;
      expect_number_at(v, i, items[i], at);
    }
  }
}

void expect_value(const GgufValue& v, const Json& e, const std::string& key) {
  const auto type = static_cast<GgufType>(e.at("type").get<uint32_t>());
  ASSERT_EQ(v.type, type) << key;
  const Json* val = e.contains("value") ? &e.at("value") : nullptr;
  switch (type) {
    case GgufType::UINT8:
    case GgufType::UINT16:
    case GgufType::UINT32:
    case GgufType::UINT64:
      EXPECT_TRUE(v.is_integer()) << key;
      EXPECT_EQ(v.u64, val->get<uint64_t>()) << key;
      break;
    case GgufType::INT8:
    case GgufType::INT16:
    case GgufType::INT32:
    case GgufType::INT64:
      EXPECT_TRUE(v.is_integer()) << key;
      EXPECT_EQ(v.i64, val->get<int64_t>()) << key;
      break;
    case GgufType::FLOAT32:
    case GgufType::FLOAT64:
      EXPECT_TRUE(v.is_float()) << key;
      EXPECT_EQ(v.f64, val->get<double>()) << key;
      break;
    case GgufType::BOOL:
      EXPECT_EQ(v.boolean, val->get<bool>()) << key;
      break;
    case GgufType::STRING:
      EXPECT_EQ(std::string(v.str), val->get<std::string>()) << key;
      break;
    case GgufType::ARRAY:
      expect_array(v, e, key);
      break;
  }
}

class GgufFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufFixture, MatchesPythonWriter) {
  const Json all = load_expected();
  const std::string name = GetParam();
  ASSERT_TRUE(all.contains(name)) << name;
  const Json& e = all.at(name);
  auto g = GgufFile::open(kFixtureDir + name);
  ASSERT_TRUE(g) << g.error().message;

  EXPECT_EQ(g->version(), e.at("version").get<uint32_t>());
  EXPECT_EQ(g->alignment(), e.at("alignment").get<uint64_t>());
  EXPECT_EQ(g->data_offset(), e.at("data_offset").get<uint64_t>());
  EXPECT_EQ(g->file_size(), e.at("file_size").get<uint64_t>());

  // Every key, in file order, with its type and exact value.
  const Json& meta = e.at("metadata");
  ASSERT_EQ(g->metadata().size(), meta.size());
  size_t i = 0;
  for (const auto& [key, ev] : meta.items()) {
    SCOPED_TRACE(key);
    EXPECT_EQ(g->metadata()[i].first, key);
    const GgufValue* v = g->find(key);
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(v, &g->metadata()[i].second);
    expect_value(*v, ev, key);
    ++i;
  }

  // Every tensor: type, shape, offset, size, and bytes that are a view into the file.
  const Json& tensors = e.at("tensors");
  ASSERT_EQ(g->tensors().size(), tensors.size());
  const uint8_t* base = g->file()->data();
  for (size_t k = 0; k < tensors.size(); ++k) {
    const Json& et = tensors[k];
    const GgufTensor& t = g->tensors()[k];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, et.at("name").get<std::string>());
    EXPECT_EQ(g->find_tensor(t.name), &t);
    EXPECT_EQ(static_cast<uint32_t>(t.type), et.at("type").get<uint32_t>());
    EXPECT_EQ(t.shape, et.at("shape").get<std::vector<uint64_t>>());
    EXPECT_EQ(t.offset, et.at("offset").get<uint64_t>());
    EXPECT_EQ(t.offset % g->alignment(), 0u);
    EXPECT_EQ(t.n_bytes, et.at("n_bytes").get<uint64_t>());
    EXPECT_EQ(t.data, base + g->data_offset() + t.offset);
    const auto bytes = from_hex(et.at("bytes_hex").get<std::string>());
    ASSERT_EQ(bytes.size(), t.n_bytes);
    EXPECT_EQ(std::memcmp(t.data, bytes.data(), bytes.size()), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Files, GgufFixture,
                         ::testing::Values("all_types_v3.gguf", "all_types_v2.gguf", "align64.gguf",
                                           "no_tensors.gguf"),
                         [](const auto& info) {
                           std::string s = info.param.substr(0, info.param.find('.'));
                           return s;
                         });

TEST(Gguf, TypedAccessors) {
  auto g = GgufFile::open(kFixtureDir + "all_types_v3.gguf");
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(*g->get_string("general.architecture"), "fennectest");
  EXPECT_EQ(*g->get_int("test.i8"), -100);
  EXPECT_EQ(*g->get_int("test.u32"), 4000000000);
  EXPECT_EQ(*g->get_int("test.i64"), INT64_MIN);
  EXPECT_DOUBLE_EQ(*g->get_float("test.i16"), -32000.0);  // integers read as floats
  EXPECT_FLOAT_EQ(static_cast<float>(*g->get_float("test.f32")), 3.14159f);
  EXPECT_TRUE(*g->get_bool("test.bool_true"));
  EXPECT_FALSE(*g->get_bool("test.bool_false"));

  // u64 above INT64_MAX does not fit get_int: an error, not a wrapped value.
  auto big = g->get_int("test.u64");
  ASSERT_FALSE(big);
  EXPECT_NE(big.error().message.find("test.u64"), std::string::npos);

  auto missing = g->get_string("no.such.key");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("no.such.key"), std::string::npos);
  EXPECT_NE(missing.error().message.find("all_types_v3.gguf"), std::string::npos);
  auto wrong = g->get_bool("test.string");
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("should be a bool"), std::string::npos);

  // int_at on a float array clamps instead of overflowing (found by the fuzzer: 3.4e38 -> int64).
  const GgufValue* floats = g->find("test.arr.f32");
  EXPECT_EQ(floats->int_at(1), -1);
  EXPECT_EQ(floats->int_at(3), INT64_MAX);
  EXPECT_EQ(g->find("test.arr.f64")->int_at(1), INT64_MIN);

  EXPECT_EQ(g->get_int_or("no.such.key", 7), 7);
  EXPECT_EQ(g->get_string_or("test.string", "x"), "hello, GGUF");
  EXPECT_EQ(g->find("no.such.key"), nullptr);
  EXPECT_EQ(g->find_tensor("no.such.tensor"), nullptr);
}

TEST(Gguf, ValueToString) {
  auto g = GgufFile::open(kFixtureDir + "all_types_v3.gguf");
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(g->find("test.u8")->to_string(), "250");
  EXPECT_EQ(g->find("test.i8")->to_string(), "-100");
  EXPECT_EQ(g->find("test.bool_true")->to_string(), "true");
  EXPECT_EQ(g->find("test.string")->to_string(), "\"hello, GGUF\"");
  EXPECT_EQ(g->find("test.string_utf8")->to_string(),
            "\"h\xc3\xa9llo \xe2\x86\x92 \xe4\xb8\x96\xe7\x95\x8c \\\"quoted\\\"\\nline2\"");
  EXPECT_EQ(g->find("test.arr.u8")->to_string(), "[u8 x 4] [0, 1, 127, 255]");
  const std::string longer = g->find("test.arr.long_i32")->to_string(3);
  EXPECT_EQ(longer, "[i32 x 100] [0, 1, 2, ...]");
  EXPECT_EQ(g->find("test.nested.i32")->to_string(),
            "[arr x 3] [[i32 x 3] [1, 2, 3], [i32 x 1] [4], [i32 x 2] [5, 6]]");
}

TEST(GgufInfo, RendersHeaderMetadataAndTensorSummary) {
  auto g = GgufFile::open(kFixtureDir + "all_types_v3.gguf");
  ASSERT_TRUE(g) << g.error().message;
  const std::string brief = render_info(*g, false);
  EXPECT_NE(brief.find("all_types_v3.gguf"), std::string::npos);
  EXPECT_NE(brief.find("size:        3360 bytes"), std::string::npos) << brief;
  EXPECT_NE(brief.find("GGUF:        version 3"), std::string::npos) << brief;
  EXPECT_NE(brief.find("alignment:   32"), std::string::npos) << brief;
  EXPECT_NE(brief.find("metadata:    32 keys"), std::string::npos) << brief;
  EXPECT_NE(brief.find("  test.u8 (u8) = 250\n"), std::string::npos) << brief;
  EXPECT_NE(brief.find("  test.string (str) = \"hello, GGUF\"\n"), std::string::npos) << brief;
  EXPECT_NE(
      brief.find("  test.arr.long_i32 (arr[i32]) = [i32 x 100] [0, 1, 2, 3, 4, 5, 6, 7, ...]\n"),
      std::string::npos)
      << brief;
  // 8 tensors: 12 + 8 + 30 + 24 + 5 + 128 + 768 + 12 elements.
  uint64_t bytes = 0;
  for (const auto& t : g->tensors()) bytes += t.n_bytes;
  EXPECT_NE(brief.find("tensors:     8, " + std::to_string(bytes) + " bytes"), std::string::npos)
      << brief;
  EXPECT_NE(brief.find(" 987 parameters"), std::string::npos) << brief;
  EXPECT_NE(brief.find("  Q8_0          1 tensors            136 bytes"), std::string::npos)
      << brief;
  EXPECT_EQ(brief.find("tensor table"), std::string::npos);  // per-tensor lines only when full

  const std::string full = render_info(*g, true);
  EXPECT_NE(full.find(", 99]"), std::string::npos);  // arrays unabbreviated
  EXPECT_EQ(full.find("99, ...]"), std::string::npos);
  EXPECT_NE(full.find("  f32.matrix F32 [4, 3] offset 0 bytes 48\n"), std::string::npos) << full;
  EXPECT_NE(full.find("  q4_k.blocks Q4_K [256, 3] offset "), std::string::npos) << full;
}

// ---- real models --------------------------------------------------------------------------

struct ModelFacts {
  const char* file;
  size_t n_tensors;
  size_t n_kv;
  uint64_t data_offset;
  const char* arch;
  const char* ctx_key;
  int64_t ctx;
  uint64_t n_vocab;
  const char* first_token;
};

const ModelFacts kModels[] = {
    {"SmolLM2-135M-Instruct.Q4_1.gguf", 272, 33, 1785664, "llama", "llama.context_length", 8192,
     49152, "<|endoftext|>"},
    {"gemma-3-270m-q4_k_m.gguf", 236, 33, 6525120, "gemma3", "gemma3.context_length", 32768, 262144,
     "<pad>"},
};

class GgufModel : public ::testing::TestWithParam<ModelFacts> {};

TEST_P(GgufModel, ParsesAndViewsIntoTheMap) {
  const ModelFacts& m = GetParam();
  const std::string path = kModelDir + m.file;
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << path << " is absent: run scripts/fetch_models.sh";
  auto g = GgufFile::open(path);
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(g->version(), 3u);
  EXPECT_EQ(g->alignment(), 32u);
  EXPECT_EQ(g->tensors().size(), m.n_tensors);
  EXPECT_EQ(g->metadata().size(), m.n_kv);
  EXPECT_EQ(g->data_offset(), m.data_offset);
  EXPECT_EQ(*g->get_string("general.architecture"), m.arch);
  EXPECT_EQ(*g->get_int(m.ctx_key), m.ctx);
  EXPECT_EQ(*g->get_int("general.quantization_version"), 2);
  const GgufValue* tokens = g->find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  EXPECT_EQ(tokens->elem_type, GgufType::STRING);
  EXPECT_EQ(tokens->count, m.n_vocab);
  EXPECT_EQ(tokens->strings.at(0), m.first_token);
  const GgufValue* types = g->find("tokenizer.ggml.token_type");
  ASSERT_NE(types, nullptr);
  EXPECT_EQ(types->count, m.n_vocab);
  EXPECT_EQ(types->int_at(0), 3);  // control token

  // Zero-copy: every tensor is a view at base + data_offset + offset, inside the mapping.
  const uint8_t* base = g->file()->data();
  const uint8_t* end = base + g->file_size();
  uint64_t total = 0;
  for (const GgufTensor& t : g->tensors()) {
    EXPECT_EQ(t.data, base + g->data_offset() + t.offset) << t.name;
    EXPECT_GE(t.data, base + g->data_offset()) << t.name;
    EXPECT_LE(t.data + t.n_bytes, end) << t.name;
    EXPECT_EQ(t.offset % g->alignment(), 0u) << t.name;
    total += t.n_bytes;
  }
  EXPECT_LE(total, g->file_size() - g->data_offset());
  EXPECT_GT(total, (g->file_size() - g->data_offset()) * 9 / 10);
}

INSTANTIATE_TEST_SUITE_P(Models, GgufModel, ::testing::ValuesIn(kModels),
                         [](const auto& info) { return std::string(info.param.arch); });

TEST(GgufModelDetail, SmolLM2TensorTable) {
  const std::string path = kModelDir + "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  auto g = GgufFile::open(path);
  ASSERT_TRUE(g) << g.error().message;
  const GgufTensor* emb = g->find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->type, GgmlType::Q8_0);
  EXPECT_EQ(emb->shape, (std::vector<uint64_t>{576, 49152}));
  EXPECT_EQ(emb->offset, 0u);
  EXPECT_EQ(emb->n_bytes, 30081024u);
  EXPECT_EQ(emb->row_length(), 576u);
  EXPECT_EQ(emb->n_rows(), 49152u);
  const GgufTensor* norm = g->find_tensor("output_norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->type, GgmlType::F32);
  EXPECT_EQ(norm->offset, 96574464u);
  EXPECT_EQ(norm->n_bytes, 2304u);
  EXPECT_NEAR(*g->get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-12);
  EXPECT_FALSE(*g->get_bool("tokenizer.ggml.add_bos_token"));
}

}  // namespace
}  // namespace fennec::formats
