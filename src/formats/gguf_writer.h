// GGUF v3 writer. Metadata of every GGUF value type (arrays of any element type, nested arrays),
// tensor infos, alignment and padding as ggml writes them, so the files load in llama.cpp and in
// fennec's reader (formats/gguf.h).
//
// Usage: add metadata and tensor infos (name, type, shape), then stream the data:
//   GgufWriter w;  w.set_string("general.architecture", "llama");  w.add_tensor(...);
//   if (auto st = w.open(path); !st) ...          // writes the header to path + ".tmp"
//   for each tensor, in the order added: w.write_tensor_data(bytes, n)
//   w.finish();                                   // pads, flushes, renames to path
// A writer destroyed before finish() (an error anywhere) removes the .tmp file, so no partial
// output is ever left at `path`. Setting a key that exists replaces its value in place.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "core/expected.h"
#include "formats/gguf.h"

namespace fennec::formats {

class GgufWriter {
 public:
  GgufWriter() = default;
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;
  ~GgufWriter();

  // Alignment of the data section and of every tensor (a power of two; default 32). Writes the
  // key general.alignment only when it differs from 32 or the key was set explicitly.
  void set_alignment(uint64_t alignment);
  uint64_t alignment() const { return alignment_; }

  void set_u8(std::string_view key, uint8_t v);
  void set_i8(std::string_view key, int8_t v);
  void set_u16(std::string_view key, uint16_t v);
  void set_i16(std::string_view key, int16_t v);
  void set_u32(std::string_view key, uint32_t v);
  void set_i32(std::string_view key, int32_t v);
  void set_u64(std::string_view key, uint64_t v);
  void set_i64(std::string_view key, int64_t v);
  void set_f32(std::string_view key, float v);
  void set_f64(std::string_view key, double v);
  void set_bool(std::string_view key, bool v);
  void set_string(std::string_view key, std::string_view v);
  // Numeric array: `count` packed little-endian elements of `elem_type` at `data`.
  void set_array(std::string_view key, GgufType elem_type, const void* data, uint64_t count);
  void set_string_array(std::string_view key, const std::vector<std::string>& v);
  // Copies any value read by GgufFile (scalars, arrays, arrays of arrays).
  void set_value(std::string_view key, const GgufValue& v);
  void remove(std::string_view key);
  bool has(std::string_view key) const;

  // Adds a tensor info; shape[0] is the row length. Returns an error for an unknown type, an
  // empty name, a duplicate name, more than 4 dims, or a row not a multiple of the block size.
  Status add_tensor(std::string_view name, GgmlType type, const std::vector<uint64_t>& shape);
  size_t n_tensors() const { return tensors_.size(); }
  uint64_t tensor_bytes(size_t i) const { return tensors_[i].n_bytes; }

  // Creates path + ".tmp" and writes the header, metadata and tensor infos.
  Status open(const std::string& path);
  // Appends the data of the next tensor (n must equal its byte size) and its padding.
  Status write_tensor_data(const void* data, uint64_t n);
  // Checks all tensors were written, closes and renames to the final path.
  Status finish();
  // Removes the temporary file (also done by the destructor if finish() did not succeed).
  void abort();

  // The header (magic through the padding before the data section) as bytes, for tests.
  std::string header_bytes() const;

 private:
  struct Kv {
    std::string key;
    std::string value;  // serialized: u32 type, then the payload
  };
  struct TensorInfo {
    std::string name;
    GgmlType type;
    std::vector<uint64_t> shape;
    uint64_t n_bytes = 0;
    uint64_t offset = 0;
  };

  void set_raw(std::string_view key, std::string value);
  Status write_bytes(const void* p, uint64_t n);
  Status write_padding(uint64_t n);

  uint64_t alignment_ = 32;
  bool alignment_set_ = false;
  std::vector<Kv> kv_;
  std::vector<TensorInfo> tensors_;

  std::string path_;
  std::string tmp_path_;
  std::FILE* fp_ = nullptr;
  size_t next_tensor_ = 0;
  bool finished_ = false;
};

// One-shot helper: writes a file whose tensors are all in memory (data[i] of tensor_bytes(i)).
Status write_gguf(GgufWriter& w, const std::string& path, const std::vector<const void*>& data);

}  // namespace fennec::formats
