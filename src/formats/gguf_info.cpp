#include "formats/gguf_info.h"

#include <cstdio>
#include <limits>
#include <map>

namespace fennec::formats {

namespace {

std::string human_bytes(uint64_t n) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[64];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  else
    std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

// "1.23 M" style count for parameters.
std::string human_count(uint64_t n) {
  static const char* units[] = {"", " K", " M", " B", " T"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1000 && u < 4) {
    v /= 1000;
    ++u;
  }
  char buf[64];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(n));
  else
    std::snprintf(buf, sizeof buf, "%.2f%s", v, units[u]);
  return buf;
}

std::string type_label(const GgufValue& v) {
  if (!v.is_array()) return gguf_type_name(v.type);
  return std::string("arr[") + gguf_type_name(v.elem_type) + "]";
}

std::string shape_string(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

}  // namespace

std::string render_info(const GgufFile& g, bool full) {
  std::string out;
  out += "file:        " + g.path() + "\n";
  out += "size:        " + std::to_string(g.file_size()) + " bytes (" + human_bytes(g.file_size()) +
         ")\n";
  out += "GGUF:        version " + std::to_string(g.version()) + "\n";
  out += "alignment:   " + std::to_string(g.alignment()) + "\n";
  out += "data offset: " + std::to_string(g.data_offset()) + "\n";

  out += "metadata:    " + std::to_string(g.metadata().size()) + " keys\n";
  const size_t max_items = full ? std::numeric_limits<size_t>::max() : 8;
  for (const auto& [key, value] : g.metadata()) {
    out += "  " + key + " (" + type_label(value) + ") = " + value.to_string(max_items) + "\n";
  }

  struct PerType {
    size_t count = 0;
    uint64_t bytes = 0;
    uint64_t params = 0;
  };
  std::map<std::string, PerType> per_type;
  uint64_t total_bytes = 0, total_params = 0;
  for (const GgufTensor& t : g.tensors()) {
    PerType& p = per_type[type_name(t.type)];
    ++p.count;
    p.bytes += t.n_bytes;
    p.params += t.n_elements();
    total_bytes += t.n_bytes;
    total_params += t.n_elements();
  }
  out += "tensors:     " + std::to_string(g.tensors().size()) + ", " + std::to_string(total_bytes) +
         " bytes (" + human_bytes(total_bytes) + "), " + std::to_string(total_params) +
         " parameters (" + human_count(total_params) + ")\n";
  for (const auto& [name, p] : per_type) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "  %-8s %6zu tensors %14llu bytes (%s) %14llu parameters\n",
                  name.c_str(), p.count, static_cast<unsigned long long>(p.bytes),
                  human_bytes(p.bytes).c_str(), static_cast<unsigned long long>(p.params));
    out += buf;
  }
  if (full) {
    out += "tensor table (name, type, shape, offset, bytes):\n";
    for (const GgufTensor& t : g.tensors()) {
      out += "  " + t.name + " " + type_name(t.type) + " " + shape_string(t.shape) + " offset " +
             std::to_string(t.offset) + " bytes " + std::to_string(t.n_bytes) + "\n";
    }
  }
  return out;
}

}  // namespace fennec::formats
