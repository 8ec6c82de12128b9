// GGUF writer round trips through fennec's reader: every metadata value type, arrays, nested
// arrays, tensors and alignment; metadata of a real model copied value for value; no partial
// files on error. (tests/py/test_quantize.py reads writer output with the Python gguf package.)
#include "formats/gguf_writer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "test_util.h"

namespace fennec::formats {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("fennec_gguf_writer_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

TEST(GgufWriter, RoundTripsEveryValueTypeAndTensors) {
  const std::string path = temp_path("all.gguf");
  GgufWriter w;
  w.set_alignment(64);
  w.set_u8("k.u8", 200);
  w.set_i8("k.i8", -100);
  w.set_u16("k.u16", 60000);
  w.set_i16("k.i16", -30000);
  w.set_u32("k.u32", 4000000000u);
  w.set_i32("k.i32", -2000000000);
  w.set_u64("k.u64", 18000000000000000000ull);
  w.set_i64("k.i64", -9000000000000000000ll);
  w.set_f32("k.f32", 1.5f);
  w.set_f64("k.f64", -2.25);
  w.set_bool("k.bool", true);
  w.set_string("k.str", "héllo");
  const int32_t ints[] = {1, -2, 3};
  w.set_array("k.arr_i32", GgufType::INT32, ints, 3);
  const float fl[] = {0.5f, -1.0f};
  w.set_array("k.arr_f32", GgufType::FLOAT32, fl, 2);
  w.set_array("k.arr_empty", GgufType::UINT8, nullptr, 0);
  w.set_string_array("k.arr_str", {"a", "", "ccc"});
  w.set_u32("k.u32", 7);  // replaces in place
  std::vector<float> t0(8 * 3);
  for (size_t i = 0; i < t0.size(); ++i) t0[i] = static_cast<float>(i) * 0.25f;
  std::vector<uint8_t> t1(36 * 2, 0xab);  // NVFP4 [64, 2]
  std::vector<uint8_t> t2(34, 0x11);      // Q8_0 [32]
  ASSERT_TRUE(w.add_tensor("t0", GgmlType::F32, {8, 3}));
  ASSERT_TRUE(w.add_tensor("t1", GgmlType::NVFP4, {64, 2}));
  ASSERT_TRUE(w.add_tensor("t2", GgmlType::Q8_0, {32}));
  EXPECT_FALSE(w.add_tensor("t2", GgmlType::Q8_0, {32}));   // duplicate
  EXPECT_FALSE(w.add_tensor("bad", GgmlType::Q8_0, {33}));  // not a block multiple
  EXPECT_FALSE(w.add_tensor("bad5", GgmlType::F32, {1, 1, 1, 1, 1}));
  ASSERT_TRUE(write_gguf(w, path, {t0.data(), t1.data(), t2.data()}));
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  auto f = GgufFile::open(path);
  ASSERT_TRUE(f) << f.error().message;
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->find("k.u8")->u64, 200u);
  EXPECT_EQ(f->find("k.i8")->i64, -100);
  EXPECT_EQ(f->find("k.u16")->u64, 60000u);
  EXPECT_EQ(f->find("k.i16")->i64, -30000);
  EXPECT_EQ(f->find("k.u32")->u64, 7u);
  EXPECT_EQ(f->find("k.i32")->i64, -2000000000);
  EXPECT_EQ(f->find("k.u64")->u64, 18000000000000000000ull);
  EXPECT_EQ(f->find("k.i64")->i64, -9000000000000000000ll);
  EXPECT_EQ(f->find("k.f32")->f64, 1.5);
  EXPECT_EQ(f->find("k.f64")->f64, -2.25);
  EXPECT_TRUE(f->find("k.bool")->boolean);
  EXPECT_EQ(f->find("k.str")->str, "héllo");
  const GgufValue* a = f->find("k.arr_i32");
  ASSERT_TRUE(a && a->is_array());
  ASSERT_EQ(a->count, 3u);
  EXPECT_EQ(a->int_at(1), -2);
  EXPECT_EQ(f->find("k.arr_f32")->number_at(1), -1.0);
  EXPECT_EQ(f->find("k.arr_empty")->count, 0u);
  const GgufValue* s = f->find("k.arr_str");
  ASSERT_EQ(s->strings.size(), 3u);
  EXPECT_EQ(s->strings[2], "ccc");
  EXPECT_EQ(s->strings[1], "");
  // Metadata keys in insertion order, general.alignment added as u32.
  EXPECT_EQ(f->metadata().front().first, "k.u8");
  EXPECT_EQ(f->find("general.alignment")->type, GgufType::UINT32);

  ASSERT_EQ(f->tensors().size(), 3u);
  const GgufTensor* r0 = f->find_tensor("t0");
  ASSERT_TRUE(r0);
  EXPECT_EQ(r0->shape, (std::vector<uint64_t>{8, 3}));
  EXPECT_EQ(std::memcmp(r0->data, t0.data(), t0.size() * 4), 0);
  const GgufTensor* r1 = f->find_tensor("t1");
  EXPECT_EQ(r1->type, GgmlType::NVFP4);
  EXPECT_EQ(r1->offset % 64, 0u);
  EXPECT_EQ(std::memcmp(r1->data, t1.data(), t1.size()), 0);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  // ggml pads the last tensor too: the file ends on an aligned boundary.
  EXPECT_EQ(f->file_size() % 64, 0u);
  std::filesystem::remove(path);
}

TEST(GgufWriter, NestedArraysCopiedFromReader) {
  // Build a file with an array of arrays by hand through set_value of a parsed value.
  const std::string p1 = temp_path("nested1.gguf"), p2 = temp_path("nested2.gguf");
  GgufValue inner1, inner2, outer;
  const int16_t v1[] = {1, 2}, v2[] = {-3};
  inner1.type = inner2.type = GgufType::ARRAY;
  inner1.elem_type = inner2.elem_type = GgufType::INT16;
  inner1.count = 2;
  inner1.raw = reinterpret_cast<const uint8_t*>(v1);
  inner2.count = 1;
  inner2.raw = reinterpret_cast<const uint8_t*>(v2);
  outer.type = GgufType::ARRAY;
  outer.elem_type = GgufType::ARRAY;
  outer.count = 2;
  outer.items = {inner1, inner2};
  GgufWriter w;
  w.set_value("nested", outer);
  ASSERT_TRUE(write_gguf(w, p1, {}));
  auto f = GgufFile::open(p1);
  ASSERT_TRUE(f) << f.error().message;
  const GgufValue* n = f->find("nested");
  ASSERT_TRUE(n);
  ASSERT_EQ(n->items.size(), 2u);
  EXPECT_EQ(n->items[0].int_at(1), 2);
  EXPECT_EQ(n->items[1].int_at(0), -3);
  // Copy again: byte-identical file.
  GgufWriter w2;
  for (const auto& [k, v] : f->metadata()) w2.set_value(k, v);
  ASSERT_TRUE(write_gguf(w2, p2, {}));
  EXPECT_EQ(test::read_file(p1), test::read_file(p2));
  std::filesystem::remove(p1);
  std::filesystem::remove(p2);
}

TEST(GgufWriter, CopiesRealModelMetadataExactly) {
  FENNEC_REQUIRE_MODEL(test::kSmolLM2);
  auto in = GgufFile::open(test::model_path(test::kSmolLM2));
  ASSERT_TRUE(in);
  const std::string path = temp_path("meta.gguf");
  GgufWriter w;
  w.set_alignment(in->alignment());
  for (const auto& [k, v] : in->metadata()) w.set_value(k, v);
  std::vector<const void*> data;
  for (const auto& t : in->tensors()) {
    ASSERT_TRUE(w.add_tensor(t.name, t.type, t.shape));
    data.push_back(t.data);
  }
  ASSERT_TRUE(write_gguf(w, path, data));
  auto out = GgufFile::open(path);
  ASSERT_TRUE(out) << out.error().message;
  ASSERT_EQ(out->metadata().size(), in->metadata().size());
  for (const auto& [k, v] : in->metadata()) {
    const GgufValue* o = out->find(k);
    ASSERT_TRUE(o) << k;
    EXPECT_EQ(o->to_string(1u << 20), v.to_string(1u << 20)) << k;
  }
  ASSERT_EQ(out->tensors().size(), in->tensors().size());
  for (size_t i = 0; i < in->tensors().size(); ++i) {
    const auto& a = in->tensors()[i];
    const auto& b = out->tensors()[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.offset, b.offset);  // same layout as the original writer (ggml)
    ASSERT_EQ(a.n_bytes, b.n_bytes);
    EXPECT_EQ(std::memcmp(a.data, b.data, a.n_bytes), 0) << a.name;
  }
  // ggml wrote the original: fennec's copy is the same file byte for byte.
  EXPECT_EQ(out->file_size(), in->file_size());
  std::filesystem::remove(path);
}

TEST(GgufWriter, NoPartialFileOnError) {
  const std::string path = temp_path("partial.gguf");
  {
    GgufWriter w;
    ASSERT_TRUE(w.add_tensor("a", GgmlType::F32, {4}));
    ASSERT_TRUE(w.add_tensor("b", GgmlType::F32, {4}));
    ASSERT_TRUE(w.open(path));
    const float x[4] = {};
    ASSERT_TRUE(w.write_tensor_data(x, sizeof x));
    EXPECT_FALSE(w.write_tensor_data(x, 3));  // wrong size
    EXPECT_FALSE(w.finish());                 // b missing
    EXPECT_TRUE(std::filesystem::exists(path + ".tmp"));
  }  // destructor removes the .tmp
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace fennec::formats
