// GGUF v2/v3 reader over a memory map. Every read is bounds-checked: a truncated or hostile file
// yields one Error naming the file, the key or tensor, and the problem. Tensor data and string
// metadata are zero-copy views into the map; numeric arrays are views decoded on access.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/expected.h"
#include "core/mapped_file.h"
#include "formats/ggml_type.h"

namespace fennec::formats {

enum class GgufType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};

const char* gguf_type_name(GgufType t);

struct GgufValue {
  GgufType type = GgufType::UINT8;
  // Scalars (the one matching `type` is set; integers also fill the other integer field when
  // representable).
  uint64_t u64 = 0;
  int64_t i64 = 0;
  double f64 = 0;
  bool boolean = false;
  std::string_view str;  // STRING: view into the map

  // ARRAY
  GgufType elem_type = GgufType::UINT8;
  uint64_t count = 0;
  const uint8_t* raw = nullptr;           // numeric arrays: packed little-endian elements
  std::vector<std::string_view> strings;  // string arrays
  std::vector<GgufValue> items;           // arrays of arrays

  bool is_array() const { return type == GgufType::ARRAY; }
  bool is_integer() const;
  bool is_float() const { return type == GgufType::FLOAT32 || type == GgufType::FLOAT64; }
  // Numeric array element i converted (caller checks i < count).
  double number_at(uint64_t i) const;
  int64_t int_at(uint64_t i) const;
  // Human-readable rendering (arrays abbreviated after `max_items`).
  std::string to_string(size_t max_items = 8) const;
};

struct GgufTensor {
  std::string name;
  GgmlType type;
  std::vector<uint64_t> shape;  // ne[0] is the fastest-varying (row length)
  uint64_t offset = 0;          // relative to the data section
  const uint8_t* data = nullptr;
  uint64_t n_bytes = 0;

  uint64_t n_elements() const;
  uint64_t row_length() const { return shape.empty() ? 1 : shape[0]; }
  uint64_t n_rows() const { return n_elements() / row_length(); }
};

class GgufFile {
 public:
  static Expected<GgufFile> open(const std::string& path);
  static Expected<GgufFile> parse(std::shared_ptr<MappedFile> file);

  uint32_t version() const { return version_; }
  const std::string& path() const { return file_->path(); }
  uint64_t file_size() const { return file_->size(); }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }

  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(std::string_view name) const;

  // Typed accessors; an Error names the key and what was expected.
  Expected<std::string> get_string(std::string_view key) const;
  Expected<int64_t> get_int(std::string_view key) const;
  Expected<double> get_float(std::string_view key) const;  // accepts integers too
  Expected<bool> get_bool(std::string_view key) const;
  std::string get_string_or(std::string_view key, std::string def) const;
  int64_t get_int_or(std::string_view key, int64_t def) const;
  double get_float_or(std::string_view key, double def) const;
  bool get_bool_or(std::string_view key, bool def) const;

  std::shared_ptr<MappedFile> file() const { return file_; }

 private:
  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace fennec::formats
