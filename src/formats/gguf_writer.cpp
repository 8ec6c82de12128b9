#include "formats/gguf_writer.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

namespace fennec::formats {

namespace {

size_t elem_size(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::BOOL:
      return 1;
    case GgufType::UINT16:
    case GgufType::INT16:
      return 2;
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::FLOAT32:
      return 4;
    case GgufType::UINT64:
    case GgufType::INT64:
    case GgufType::FLOAT64:
      return 8;
    default:
      return 0;
  }
}

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

void put_string(std::string& s, std::string_view v) {
  put<uint64_t>(s, v.size());
  s.append(v.data(), v.size());
}

// Serializes the payload of `v` (without its type tag) as GGUF stores it.
void put_payload(std::string& s, const GgufValue& v) {
  switch (v.type) {
    case GgufType::UINT8:
      put<uint8_t>(s, static_cast<uint8_t>(v.u64));
      break;
    case GgufType::INT8:
      put<int8_t>(s, static_cast<int8_t>(v.i64));
      break;
    case GgufType::UINT16:
      put<uint16_t>(s, static_cast<uint16_t>(v.u64));
      break;
    case GgufType::INT16:
      put<int16_t>(s, static_cast<int16_t>(v.i64));
      break;
    case GgufType::UINT32:
      put<uint32_t>(s, static_cast<uint32_t>(v.u64));
      break;
    case GgufType::INT32:
      put<int32_t>(s, static_cast<int32_t>(v.i64));
      break;
    case GgufType::UINT64:
      put<uint64_t>(s, v.u64);
      break;
    case GgufType::INT64:
      put<int64_t>(s, v.i64);
      break;
    case GgufType::FLOAT32:
      put<float>(s, static_cast<float>(v.f64));
      break;
    case GgufType::FLOAT64:
      put<double>(s, v.f64);
      break;
    case GgufType::BOOL:
      put<uint8_t>(s, v.boolean ? 1 : 0);
      break;
    case GgufType::STRING:
      put_string(s, v.str);
      break;
    case GgufType::ARRAY:
      put<uint32_t>(s, static_cast<uint32_t>(v.elem_type));
      put<uint64_t>(s, v.count);
      if (v.elem_type == GgufType::STRING) {
        for (const auto& str : v.strings) put_string(s, str);
      } else if (v.elem_type == GgufType::ARRAY) {
        for (const auto& item : v.items) put_payload(s, item);
      } else if (v.count > 0) {
        s.append(reinterpret_cast<const char*>(v.raw), v.count * elem_size(v.elem_type));
      }
      break;
  }
}

template <class T>
std::string scalar(GgufType t, T v) {
  std::string s;
  put<uint32_t>(s, static_cast<uint32_t>(t));
  put<T>(s, v);
  return s;
}

}  // namespace

GgufWriter::~GgufWriter() {
  if (!finished_) abort();
}

void GgufWriter::set_alignment(uint64_t alignment) {
  alignment_ = alignment;
  alignment_set_ = true;
}

void GgufWriter::set_raw(std::string_view key, std::string value) {
  for (auto& kv : kv_) {
    if (kv.key == key) {
      kv.value = std::move(value);
      return;
    }
  }
  kv_.push_back({std::string(key), std::move(value)});
}

void GgufWriter::set_u8(std::string_view k, uint8_t v) { set_raw(k, scalar(GgufType::UINT8, v)); }
void GgufWriter::set_i8(std::string_view k, int8_t v) { set_raw(k, scalar(GgufType::INT8, v)); }
void GgufWriter::set_u16(std::string_view k, uint16_t v) {
  set_raw(k, scalar(GgufType::UINT16, v));
}
void GgufWriter::set_i16(std::string_view k, int16_t v) { set_raw(k, scalar(GgufType::INT16, v)); }
void GgufWriter::set_u32(std::string_view k, uint32_t v) {
  set_raw(k, scalar(GgufType::UINT32, v));
}
void GgufWriter::set_i32(std::string_view k, int32_t v) { set_raw(k, scalar(GgufType::INT32, v)); }
void GgufWriter::set_u64(std::string_view k, uint64_t v) {
  set_raw(k, scalar(GgufType::UINT64, v));
}
void GgufWriter::set_i64(std::string_view k, int64_t v) { set_raw(k, scalar(GgufType::INT64, v)); }
void GgufWriter::set_f32(std::string_view k, float v) { set_raw(k, scalar(GgufType::FLOAT32, v)); }
void GgufWriter::set_f64(std::string_view k, double v) { set_raw(k, scalar(GgufType::FLOAT64, v)); }
void GgufWriter::set_bool(std::string_view k, bool v) {
  set_raw(k, scalar<uint8_t>(GgufType::BOOL, v ? 1 : 0));
}
void GgufWriter::set_string(std::string_view k, std::string_view v) {
  std::string s;
  put<uint32_t>(s, static_cast<uint32_t>(GgufType::STRING));
  put_string(s, v);
  set_raw(k, std::move(s));
}

void GgufWriter::set_array(std::string_view k, GgufType elem_type, const void* data,
                           uint64_t count) {
  std::string s;
  put<uint32_t>(s, static_cast<uint32_t>(GgufType::ARRAY));
  put<uint32_t>(s, static_cast<uint32_t>(elem_type));
  put<uint64_t>(s, count);
  if (count > 0) s.append(static_cast<const char*>(data), count * elem_size(elem_type));
  set_raw(k, std::move(s));
}

void GgufWriter::set_string_array(std::string_view k, const std::vector<std::string>& v) {
  std::string s;
  put<uint32_t>(s, static_cast<uint32_t>(GgufType::ARRAY));
  put<uint32_t>(s, static_cast<uint32_t>(GgufType::STRING));
  put<uint64_t>(s, v.size());
  for (const auto& str : v) put_string(s, str);
  set_raw(k, std::move(s));
}

void GgufWriter::set_value(std::string_view k, const GgufValue& v) {
  std::string s;
  put<uint32_t>(s, static_cast<uint32_t>(v.type));
  put_payload(s, v);
  set_raw(k, std::move(s));
}

void GgufWriter::remove(std::string_view key) {
  std::erase_if(kv_, [&](const Kv& kv) { return kv.key == key; });
}

bool GgufWriter::has(std::string_view key) const {
  for (const auto& kv : kv_)
    if (kv.key == key) return true;
  return false;
}

Status GgufWriter::add_tensor(std::string_view name, GgmlType type,
                              const std::vector<uint64_t>& shape) {
  const std::string nm(name);
  if (name.empty()) return make_error("gguf writer: tensor with an empty name");
  if (name.size() >= 64)
    return make_error("gguf writer: tensor name '" + nm + "' is longer than ggml's 63 bytes");
  for (const auto& t : tensors_)
    if (t.name == name) return make_error("gguf writer: duplicate tensor '" + nm + "'");
  if (shape.empty() || shape.size() > 4)
    return make_error("gguf writer: tensor '" + nm + "' has " + std::to_string(shape.size()) +
                      " dims (1 to 4 allowed)");
  const auto tr = type_traits(static_cast<uint32_t>(type));
  if (!tr)
    return make_error("gguf writer: tensor '" + nm + "' has unknown type " +
                      std::to_string(static_cast<uint32_t>(type)));
  if (shape[0] % tr->block_size != 0)
    return make_error("gguf writer: tensor '" + nm + "' row length " + std::to_string(shape[0]) +
                      " is not a multiple of " + tr->name + "'s block size " +
                      std::to_string(tr->block_size));
  uint64_t rows = 1;
  for (size_t i = 1; i < shape.size(); ++i) rows *= shape[i];
  TensorInfo t;
  t.name = nm;
  t.type = type;
  t.shape = shape;
  t.n_bytes = row_bytes(*tr, shape[0]) * rows;
  tensors_.push_back(std::move(t));
  return {};
}

std::string GgufWriter::header_bytes() const {
  std::string s;
  s.append("GGUF", 4);
  put<uint32_t>(s, 3);
  put<uint64_t>(s, tensors_.size());
  put<uint64_t>(s, kv_.size());
  for (const auto& kv : kv_) {
    put_string(s, kv.key);
    s += kv.value;
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    put_string(s, t.name);
    put<uint32_t>(s, static_cast<uint32_t>(t.shape.size()));
    for (uint64_t d : t.shape) put<uint64_t>(s, d);
    put<uint32_t>(s, static_cast<uint32_t>(t.type));
    put<uint64_t>(s, offset);
    offset += (t.n_bytes + alignment_ - 1) / alignment_ * alignment_;
  }
  const uint64_t pad = (alignment_ - s.size() % alignment_) % alignment_;
  s.append(pad, '\0');
  return s;
}

Status GgufWriter::write_bytes(const void* p, uint64_t n) {
  if (n == 0) return {};
  if (std::fwrite(p, 1, n, fp_) != n)
    return make_error(tmp_path_ + ": write failed: " + std::strerror(errno));
  return {};
}

Status GgufWriter::write_padding(uint64_t n) {
  static const char zeros[64] = {};
  while (n > 0) {
    const uint64_t k = n < sizeof zeros ? n : sizeof zeros;
    if (auto st = write_bytes(zeros, k); !st) return st;
    n -= k;
  }
  return {};
}

Status GgufWriter::open(const std::string& path) {
  if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0)
    return make_error("gguf writer: alignment " + std::to_string(alignment_) +
                      " is not a power of two");
  // ggml reads general.alignment as u32 only.
  if ((alignment_set_ && alignment_ != 32) || has("general.alignment"))
    set_u32("general.alignment", static_cast<uint32_t>(alignment_));
  path_ = path;
  tmp_path_ = path + ".tmp";
  fp_ = std::fopen(tmp_path_.c_str(), "wb");
  if (!fp_) return make_error(tmp_path_ + ": cannot create: " + std::strerror(errno));
  next_tensor_ = 0;
  finished_ = false;
  const std::string h = header_bytes();
  return write_bytes(h.data(), h.size());
}

Status GgufWriter::write_tensor_data(const void* data, uint64_t n) {
  if (!fp_) return make_error("gguf writer: write_tensor_data before open");
  if (next_tensor_ >= tensors_.size())
    return make_error("gguf writer: more tensor data than tensors");
  const TensorInfo& t = tensors_[next_tensor_];
  if (n != t.n_bytes)
    return make_error("gguf writer: tensor '" + t.name + "' needs " + std::to_string(t.n_bytes) +
                      " bytes, got " + std::to_string(n));
  if (auto st = write_bytes(data, n); !st) return st;
  if (auto st = write_padding((alignment_ - n % alignment_) % alignment_); !st) return st;
  ++next_tensor_;
  return {};
}

Status GgufWriter::finish() {
  if (!fp_) return make_error("gguf writer: finish before open");
  if (next_tensor_ != tensors_.size())
    return make_error("gguf writer: " + std::to_string(tensors_.size() - next_tensor_) +
                      " tensors were not written");
  const bool flushed = std::fflush(fp_) == 0;
  const bool closed = std::fclose(fp_) == 0;
  fp_ = nullptr;
  if (!flushed || !closed) {
    abort();
    return make_error(tmp_path_ + ": write failed: " + std::strerror(errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp_path_, path_, ec);
  if (ec) {
    abort();
    return make_error(path_ + ": cannot rename from " + tmp_path_ + ": " + ec.message());
  }
  finished_ = true;
  return {};
}

void GgufWriter::abort() {
  if (fp_) {
    std::fclose(fp_);
    fp_ = nullptr;
  }
  if (!tmp_path_.empty()) {
    std::error_code ec;
    std::filesystem::remove(tmp_path_, ec);
  }
}

Status write_gguf(GgufWriter& w, const std::string& path, const std::vector<const void*>& data) {
  if (data.size() != w.n_tensors())
    return make_error("gguf writer: " + std::to_string(data.size()) + " data pointers for " +
                      std::to_string(w.n_tensors()) + " tensors");
  if (auto st = w.open(path); !st) return st;
  for (size_t i = 0; i < data.size(); ++i)
    if (auto st = w.write_tensor_data(data[i], w.tensor_bytes(i)); !st) return st;
  return w.finish();
}

}  // namespace fennec::formats
