#include "formats/gguf.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <type_traits>

namespace fennec::formats {

namespace {

constexpr uint64_t kMaxStringLength = 1ull << 26;  // 64 MiB: larger is surely corrupt
constexpr uint64_t kMaxKeyLength = 65535;          // the spec's limit for metadata keys
constexpr uint64_t kMaxArrayDepth = 8;
constexpr uint64_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr uint64_t kMaxTensors = 1ull << 20;
constexpr uint64_t kMaxKv = 1ull << 20;
// Arrays of arrays cost ~10x their file size in GgufValue objects and ggml rejects them outright,
// so a small budget across the whole file (~9 MiB of values) keeps a hostile file in check.
constexpr uint64_t kMaxNestedItems = 1ull << 16;
// Up-front reservations never exceed this many elements; vectors grow as elements really parse.
constexpr uint64_t kMaxReserve = 1ull << 16;

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::BOOL: return 1;
    case GgufType::UINT16:
    case GgufType::INT16: return 2;
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::FLOAT32: return 4;
    case GgufType::UINT64:
    case GgufType::INT64:
    case GgufType::FLOAT64: return 8;
    default: return 0;
  }
}

bool valid_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::FLOAT64); }

// A name from the file, made safe for an error message: control and non-ASCII bytes escaped,
// long names cut, so a corrupt length cannot flood the message with garbage.
std::string display_name(std::string_view s) {
  constexpr size_t kMax = 96;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > kMax) out += "...(" + std::to_string(s.size()) + " bytes)";
  return out;
}

std::string index_suffix(int64_t index) {
  return index < 0 ? std::string() : "[" + std::to_string(index) + "]";
}

// Bounds-checked cursor over the file.
class Reader {
 public:
  Reader(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  bool read_bytes(void* out, uint64_t n) {
    if (n > remaining()) return false;
    std::memcpy(out, data_ + pos_, n);
    pos_ += n;
    return true;
  }
  template <class T>
  bool read(T& out) {
    return read_bytes(&out, sizeof(T));
  }
  const uint8_t* skip(uint64_t n) {
    if (n > remaining()) return nullptr;
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

// Reads values; the first failure records one message "<path>: <what>: <problem>". `what` names
// the key or tensor; element indices are appended only when a message is built, so reading a
// 150k-token vocabulary builds no strings.
struct Parser {
  Reader r;
  std::string path;
  uint32_t version;
  std::string err;
  uint64_t nested_items = 0;

  bool fail(std::string msg) {
    if (err.empty()) err = path + ": " + msg;
    return false;
  }

  bool read_len(uint64_t& n, const std::string& what, int64_t index = -1) {
    if (!r.read(n))
      return fail(what + index_suffix(index) +
                  ": file ends inside a length field (truncated file)");
    return true;
  }

  bool read_string(std::string_view& out, const std::string& what, int64_t index = -1,
                   uint64_t max_length = kMaxStringLength) {
    uint64_t n = 0;
    if (!read_len(n, what, index)) return false;
    if (n > max_length)
      return fail(what + index_suffix(index) + ": string length " + std::to_string(n) +
                  " is implausible (corrupt file)");
    const uint8_t* p = r.skip(n);
    if (!p)
      return fail(what + index_suffix(index) + ": string of " + std::to_string(n) +
                  " bytes extends past end of file (truncated file)");
    out = std::string_view(reinterpret_cast<const char*>(p), n);
    return true;
  }

  template <class T>
  bool read_int(GgufValue& v) {
    T x;
    if (!r.read(x)) return false;
    if constexpr (std::is_signed_v<T>) {
      v.i64 = x;
      v.u64 = static_cast<uint64_t>(static_cast<int64_t>(x));
    } else {
      v.u64 = x;
      v.i64 = static_cast<int64_t>(x);
    }
    return true;
  }

  bool read_scalar(GgufType t, GgufValue& v, const std::string& what) {
    v.type = t;
    bool ok = false;
    switch (t) {
      case GgufType::UINT8: ok = read_int<uint8_t>(v); break;
      case GgufType::INT8: ok = read_int<int8_t>(v); break;
      case GgufType::UINT16: ok = read_int<uint16_t>(v); break;
      case GgufType::INT16: ok = read_int<int16_t>(v); break;
      case GgufType::UINT32: ok = read_int<uint32_t>(v); break;
      case GgufType::INT32: ok = read_int<int32_t>(v); break;
      case GgufType::UINT64: ok = read_int<uint64_t>(v); break;
      case GgufType::INT64: ok = read_int<int64_t>(v); break;
      case GgufType::FLOAT32: {
        float x = 0;
        ok = r.read(x);
        v.f64 = x;
        break;
      }
      case GgufType::FLOAT64: ok = r.read(v.f64); break;
      case GgufType::BOOL: {
        uint8_t x;
        if (!r.read(x)) break;
        if (x > 1) return fail(what + ": bool value " + std::to_string(x) + " is not 0 or 1");
        v.boolean = x != 0;
        v.u64 = x;
        v.i64 = x;
        return true;
      }
      case GgufType::STRING: return read_string(v.str, what);
      default: return fail(what + ": unexpected value type");
    }
    if (!ok) return fail(what + ": file ends inside a value (truncated file)");
    return true;
  }

  bool read_value(GgufType t, GgufValue& v, const std::string& what, int depth) {
    if (t != GgufType::ARRAY) return read_scalar(t, v, what);
    if (depth >= static_cast<int>(kMaxArrayDepth))
      return fail(what + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth));
    v.type = GgufType::ARRAY;
    uint32_t et;
    if (!r.read(et)) return fail(what + ": file ends inside an array header (truncated file)");
    if (!valid_type(et))
      return fail(what + ": array element type " + std::to_string(et) + " is unknown");
    v.elem_type = static_cast<GgufType>(et);
    uint64_t n = 0;
    if (!read_len(n, what)) return false;
    v.count = n;
    if (v.elem_type == GgufType::STRING) {
      // Each string needs at least its length field: reject counts the file cannot hold. The
      // vector grows with the strings really read, never by the claimed count alone.
      if (n > r.remaining() / 8)
        return fail(what + ": array of " + std::to_string(n) +
                    " strings extends past end of file (truncated file)");
      v.strings.reserve(std::min(n, kMaxReserve));
      for (uint64_t i = 0; i < n; ++i) {
        std::string_view s;
        if (!read_string(s, what, static_cast<int64_t>(i))) return false;
        v.strings.push_back(s);
      }
      return true;
    }
    if (v.elem_type == GgufType::ARRAY) {
      // Each inner array needs at least its element type and count (12 bytes).
      if (n > r.remaining() / 12)
        return fail(what + ": array of " + std::to_string(n) +
                    " arrays extends past end of file (truncated file)");
      if (n > kMaxNestedItems - nested_items)
        return fail(what + ": more than " + std::to_string(kMaxNestedItems) +
                    " nested arrays in the file (corrupt file)");
      nested_items += n;
      v.items.reserve(std::min(n, kMaxReserve));
      for (uint64_t i = 0; i < n; ++i) {
        v.items.emplace_back();
        if (!read_value(GgufType::ARRAY, v.items.back(), what + "[" + std::to_string(i) + "]",
                        depth + 1))
          return false;
      }
      return true;
    }
    const size_t es = scalar_size(v.elem_type);
    if (n > r.remaining() / es)
      return fail(what + ": array of " + std::to_string(n) + " " + gguf_type_name(v.elem_type) +
                  " extends past end of file (truncated file)");
    v.raw = r.skip(n * es);
    if (v.elem_type == GgufType::BOOL) {
      for (uint64_t i = 0; i < n; ++i)
        if (v.raw[i] > 1)
          return fail(what + "[" + std::to_string(i) + "]: bool value " +
                      std::to_string(v.raw[i]) + " is not 0 or 1");
    }
    return true;
  }
};

// float -> int64 without undefined behaviour: out-of-range values clamp, NaN becomes 0.
int64_t saturate_to_int(double x) {
  if (std::isnan(x)) return 0;
  if (x >= 9223372036854775807.0) return std::numeric_limits<int64_t>::max();
  if (x <= -9223372036854775808.0) return std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(x);
}

bool is_integer_type(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::UINT16:
    case GgufType::INT16:
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::UINT64:
    case GgufType::INT64: return true;
    default: return false;
  }
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::UINT8: return "u8";
    case GgufType::INT8: return "i8";
    case GgufType::UINT16: return "u16";
    case GgufType::INT16: return "i16";
    case GgufType::UINT32: return "u32";
    case GgufType::INT32: return "i32";
    case GgufType::FLOAT32: return "f32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "str";
    case GgufType::ARRAY: return "arr";
    case GgufType::UINT64: return "u64";
    case GgufType::INT64: return "i64";
    case GgufType::FLOAT64: return "f64";
  }
  return "?";
}

bool GgufValue::is_integer() const { return is_integer_type(type); }

double GgufValue::number_at(uint64_t i) const {
  const uint8_t* p = raw + i * scalar_size(elem_type);
  switch (elem_type) {
    case GgufType::FLOAT32: { float x; std::memcpy(&x, p, 4); return x; }
    case GgufType::FLOAT64: { double x; std::memcpy(&x, p, 8); return x; }
    default: return static_cast<double>(int_at(i));
  }
}

int64_t GgufValue::int_at(uint64_t i) const {
  const uint8_t* p = raw + i * scalar_size(elem_type);
  switch (elem_type) {
    case GgufType::UINT8:
    case GgufType::BOOL: return p[0];
    case GgufType::INT8: return static_cast<int8_t>(p[0]);
    case GgufType::UINT16: { uint16_t x; std::memcpy(&x, p, 2); return x; }
    case GgufType::INT16: { int16_t x; std::memcpy(&x, p, 2); return x; }
    case GgufType::UINT32: { uint32_t x; std::memcpy(&x, p, 4); return x; }
    case GgufType::INT32: { int32_t x; std::memcpy(&x, p, 4); return x; }
    case GgufType::UINT64: { uint64_t x; std::memcpy(&x, p, 8); return static_cast<int64_t>(x); }
    case GgufType::INT64: { int64_t x; std::memcpy(&x, p, 8); return x; }
    case GgufType::FLOAT32: { float x; std::memcpy(&x, p, 4); return saturate_to_int(x); }
    case GgufType::FLOAT64: { double x; std::memcpy(&x, p, 8); return saturate_to_int(x); }
    default: return 0;
  }
}

std::string GgufValue::to_string(size_t max_items) const {
  switch (type) {
    case GgufType::STRING: {
      std::string s = "\"";
      // Control bytes are escaped so a hostile file cannot drive the terminal that shows it.
      for (char c : str.substr(0, 200)) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '\n') {
          s += "\\n";
        } else if (c == '\t') {
          s += "\\t";
        } else if (c == '"' || c == '\\') {
          s += '\\';
          s += c;
        } else if (u < 0x20 || u == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", u);
          s += buf;
        } else {
          s += c;
        }
      }
      if (str.size() > 200) s += "...";
      return s + "\"";
    }
    case GgufType::BOOL: return boolean ? "true" : "false";
    case GgufType::FLOAT32:
    case GgufType::FLOAT64: {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%g", f64);
      return buf;
    }
    case GgufType::UINT8:
    case GgufType::UINT16:
    case GgufType::UINT32:
    case GgufType::UINT64: return std::to_string(u64);
    case GgufType::ARRAY: {
      std::string s = "[" + std::string(gguf_type_name(elem_type)) + " x " + std::to_string(count) + "]";
      s += " [";
      const uint64_t n = std::min<uint64_t>(count, max_items);
      for (uint64_t i = 0; i < n; ++i) {
        if (i) s += ", ";
        if (elem_type == GgufType::STRING) {
          GgufValue e;
          e.type = GgufType::STRING;
          e.str = strings[i];
          s += e.to_string();
        } else if (elem_type == GgufType::ARRAY) {
          s += items[i].to_string(max_items);
        } else if (elem_type == GgufType::FLOAT32 || elem_type == GgufType::FLOAT64) {
          char buf[64];
          std::snprintf(buf, sizeof buf, "%g", number_at(i));
          s += buf;
        } else {
          s += std::to_string(int_at(i));
        }
      }
      if (count > n) s += ", ...";
      return s + "]";
    }
    default: return std::to_string(i64);
  }
}

uint64_t GgufTensor::n_elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

Expected<GgufFile> GgufFile::open(const std::string& path) {
  auto f = MappedFile::open(path);
  if (!f) return f.error();
  return parse(std::move(*f));
}

Expected<GgufFile> GgufFile::parse(std::shared_ptr<MappedFile> file) {
  GgufFile g;
  g.file_ = file;
  const std::string& path = file->path();
  Parser p{Reader(file->data(), file->size()), path, 0, {}};
  auto error = [&]() -> Expected<GgufFile> { return make_error(p.err); };
  auto fail = [&](const std::string& msg) -> Expected<GgufFile> {
    return make_error(path + ": " + msg);
  };

  uint32_t magic;
  if (!p.r.read(magic))
    return fail("file is too small to be GGUF (" + std::to_string(file->size()) + " bytes)");
  if (std::memcmp(&magic, "GGUF", 4) != 0) return fail("not a GGUF file (bad magic)");
  if (!p.r.read(g.version_)) return fail("truncated header (file ends inside the version)");
  if (g.version_ < 2 || g.version_ > 3)
    return fail("GGUF version " + std::to_string(g.version_) +
                " is not supported (fennec reads versions 2 and 3)");
  p.version = g.version_;
  uint64_t n_tensors = 0, n_kv = 0;
  if (!p.r.read(n_tensors) || !p.r.read(n_kv))
    return fail("truncated header (file ends inside the tensor or metadata count)");
  if (n_tensors > kMaxTensors)
    return fail("header claims " + std::to_string(n_tensors) + " tensors (corrupt file)");
  if (n_kv > kMaxKv)
    return fail("header claims " + std::to_string(n_kv) + " metadata keys (corrupt file)");

  // A key-value pair takes at least 8 (key length) + 4 (type) + 1 (value) bytes.
  g.kv_.reserve(std::min({n_kv, p.r.remaining() / 13, kMaxReserve}));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string_view key;
    if (!p.read_string(key, "metadata key #" + std::to_string(i), -1, kMaxKeyLength))
      return error();
    std::string k(key);
    const std::string what = "metadata key '" + display_name(k) + "'";
    if (g.kv_index_.count(k)) return fail(what + " appears twice");
    uint32_t t;
    if (!p.r.read(t)) return fail(what + ": file ends before its type (truncated file)");
    if (!valid_type(t)) return fail(what + ": value type " + std::to_string(t) + " is unknown");
    GgufValue v;
    if (!p.read_value(static_cast<GgufType>(t), v, what, 0)) return error();
    g.kv_index_[k] = g.kv_.size();
    g.kv_.emplace_back(std::move(k), std::move(v));
  }

  if (const GgufValue* a = g.find("general.alignment")) {
    if (!a->is_integer() || a->u64 == 0 || (a->u64 & (a->u64 - 1)) != 0 || a->u64 > (1u << 20))
      return fail("metadata key 'general.alignment' must be a power of two up to 1 MiB, got " +
                  a->to_string());
    g.alignment_ = a->u64;
  }

  // A tensor info takes at least 8 (name length) + 4 + 8 (one dimension) + 4 + 8 bytes.
  g.tensors_.reserve(std::min({n_tensors, p.r.remaining() / 32, kMaxReserve}));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    std::string_view name;
    if (!p.read_string(name, "tensor #" + std::to_string(i) + " name")) return error();
    t.name = std::string(name);
    const std::string what = "tensor '" + display_name(t.name) + "'";
    if (g.tensor_index_.count(t.name)) return fail(what + " appears twice");
    uint32_t n_dims;
    if (!p.r.read(n_dims)) return fail(what + ": truncated tensor info");
    if (n_dims == 0 || n_dims > kMaxDims)
      return fail(what + ": " + std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
    t.shape.resize(n_dims);
    uint64_t n_el = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      if (!p.r.read(t.shape[d])) return fail(what + ": truncated tensor info");
      if (t.shape[d] == 0 || t.shape[d] > (1ull << 40))
        return fail(what + ": dimension " + std::to_string(d) + " is " +
                    std::to_string(t.shape[d]));
      if (n_el > std::numeric_limits<uint64_t>::max() / t.shape[d])
        return fail(what + ": element count overflows");
      n_el *= t.shape[d];
    }
    uint32_t type;
    if (!p.r.read(type)) return fail(what + ": truncated tensor info");
    auto tr = type_traits(type);
    if (!tr) return fail(what + ": unknown tensor type " + std::to_string(type));
    t.type = static_cast<GgmlType>(type);
    if (t.shape[0] % tr->block_size != 0)
      return fail(what + ": row length " + std::to_string(t.shape[0]) +
                  " is not a multiple of the " + tr->name + " block size " +
                  std::to_string(tr->block_size));
    if (n_el / tr->block_size > (1ull << 50) / tr->type_size)
      return fail(what + ": size overflows");
    t.n_bytes = n_el / tr->block_size * tr->type_size;
    if (!p.r.read(t.offset)) return fail(what + ": truncated tensor info");
    if (t.offset % g.alignment_ != 0)
      return fail(what + ": data offset " + std::to_string(t.offset) + " is not aligned to " +
                  std::to_string(g.alignment_));
    g.tensor_index_[t.name] = g.tensors_.size();
    g.tensors_.push_back(std::move(t));
  }

  const uint64_t pos = p.r.pos();
  g.data_offset_ = (pos + g.alignment_ - 1) / g.alignment_ * g.alignment_;
  if (n_tensors > 0 && g.data_offset_ > file->size())
    return fail("tensor data section starts past end of file (truncated file)");
  const uint64_t data_size = file->size() >= g.data_offset_ ? file->size() - g.data_offset_ : 0;
  for (auto& t : g.tensors_) {
    if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
      // Widen before adding: a hostile offset near 2^64 must not wrap in the message.
      const long double start = static_cast<long double>(g.data_offset_) + t.offset;
      char range[96];
      std::snprintf(range, sizeof range, "%.0Lf..%.0Lf", start, start + t.n_bytes);
      return fail("tensor '" + display_name(t.name) + "' extends past end of file (needs bytes " +
                  range + ", file has " + std::to_string(file->size()) + ")");
    }
    t.data = file->data() + g.data_offset_ + t.offset;
  }
  return g;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Expected<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return make_error(path() + ": metadata key '" + std::string(key) + "' is missing");
  if (v->type != GgufType::STRING)
    return make_error(path() + ": metadata key '" + std::string(key) + "' should be a string, is " + gguf_type_name(v->type));
  return std::string(v->str);
}

Expected<int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return make_error(path() + ": metadata key '" + std::string(key) + "' is missing");
  if (!v->is_integer())
    return make_error(path() + ": metadata key '" + std::string(key) + "' should be an integer, is " + gguf_type_name(v->type));
  if (v->type == GgufType::UINT64 && v->u64 > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return make_error(path() + ": metadata key '" + std::string(key) + "' is out of range");
  return v->i64;
}

Expected<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return make_error(path() + ": metadata key '" + std::string(key) + "' is missing");
  if (v->is_float()) return v->f64;
  if (v->is_integer()) return static_cast<double>(v->i64);
  return make_error(path() + ": metadata key '" + std::string(key) + "' should be a number, is " + gguf_type_name(v->type));
}

Expected<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return make_error(path() + ": metadata key '" + std::string(key) + "' is missing");
  if (v->type != GgufType::BOOL)
    return make_error(path() + ": metadata key '" + std::string(key) + "' should be a bool, is " + gguf_type_name(v->type));
  return v->boolean;
}

std::string GgufFile::get_string_or(std::string_view key, std::string def) const {
  auto v = get_string(key);
  return v ? *v : def;
}
int64_t GgufFile::get_int_or(std::string_view key, int64_t def) const {
  auto v = get_int(key);
  return v ? *v : def;
}
double GgufFile::get_float_or(std::string_view key, double def) const {
  auto v = get_float(key);
  return v ? *v : def;
}
bool GgufFile::get_bool_or(std::string_view key, bool def) const {
  auto v = get_bool(key);
  return v ? *v : def;
}

}  // namespace fennec::formats
