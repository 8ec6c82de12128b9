#include "quant/imatrix_file.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"

namespace fennec::quant {

namespace {

constexpr std::string_view kSumSuffix = ".in_sum2";
constexpr std::string_view kCountSuffix = ".counts";

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

Status check_values(const std::string& path, const std::string& name, const ImatrixEntry& e) {
  if (e.counts.empty()) return make_error(path + ": imatrix entry '" + name + "' has no counts");
  if (e.sums.empty() || e.sums.size() % e.counts.size() != 0)
    return make_error(path + ": imatrix entry '" + name + "' has " + std::to_string(e.sums.size()) +
                      " sums, not a multiple of its " + std::to_string(e.counts.size()) +
                      " counts");
  for (size_t i = 0; i < e.sums.size(); ++i) {
    if (!std::isfinite(e.sums[i]) || e.sums[i] < 0)
      return make_error(path + ": imatrix entry '" + name + "' has an invalid value " +
                        std::to_string(e.sums[i]) + " at column " +
                        std::to_string(i % (e.sums.size() / e.counts.size())) +
                        " (NaN, Inf or negative): recompute the imatrix");
  }
  for (int64_t c : e.counts)
    if (c < 0) return make_error(path + ": imatrix entry '" + name + "' has a negative count");
  return {};
}

Expected<Imatrix> read_gguf(const std::string& path, const formats::GgufFile& f) {
  Imatrix im;
  if (const auto* v = f.find("imatrix.datasets"); v && v->is_array())
    for (auto s : v->strings) im.datasets.emplace_back(s);
  im.chunk_count = static_cast<int32_t>(f.get_int_or("imatrix.chunk_count", 0));
  im.chunk_size = static_cast<int32_t>(f.get_int_or("imatrix.chunk_size", 0));
  std::map<std::string, std::pair<const formats::GgufTensor*, const formats::GgufTensor*>> parts;
  for (const auto& t : f.tensors()) {
    if (ends_with(t.name, kSumSuffix)) {
      parts[t.name.substr(0, t.name.size() - kSumSuffix.size())].first = &t;
    } else if (ends_with(t.name, kCountSuffix)) {
      parts[t.name.substr(0, t.name.size() - kCountSuffix.size())].second = &t;
    }
  }
  if (parts.empty())
    return make_error(path + ": not an importance matrix (no '<name>.in_sum2' tensors)");
  for (const auto& [name, p] : parts) {
    if (!p.first || !p.second)
      return make_error(path + ": imatrix entry '" + name + "' has " +
                        (p.first ? "sums but no counts" : "counts but no sums"));
    for (const auto* t : {p.first, p.second})
      if (t->type != formats::GgmlType::F32)
        return make_error(path + ": imatrix tensor '" + t->name + "' is " +
                          formats::type_name(t->type) + ", expected F32");
    ImatrixEntry e;
    e.sums.resize(p.first->n_elements());
    std::memcpy(e.sums.data(), p.first->data, e.sums.size() * sizeof(float));
    const uint64_t nc = p.second->n_elements();
    e.counts.resize(nc);
    for (uint64_t i = 0; i < nc; ++i) {
      float c;
      std::memcpy(&c, p.second->data + i * sizeof(float), sizeof c);
      if (!std::isfinite(c))
        return make_error(path + ": imatrix entry '" + name + "' has a non-finite count");
      e.counts[i] = std::lround(c);
    }
    if (p.first->shape.size() >= 2 && p.first->shape[1] != nc)
      return make_error(path + ": imatrix entry '" + name + "' has " +
                        std::to_string(p.first->shape[1]) + " matrices of sums but " +
                        std::to_string(nc) + " counts");
    if (auto st = check_values(path, name, e); !st) return st.error();
    im.entries.emplace(name, std::move(e));
  }
  return im;
}

// Bounds-checked reader of the legacy format.
struct LegacyReader {
  const uint8_t* p;
  size_t n;
  size_t pos = 0;
  bool read(void* out, size_t k) {
    if (k > n - pos) return false;
    std::memcpy(out, p + pos, k);
    pos += k;
    return true;
  }
  bool i32(int32_t& v) { return read(&v, 4); }
};

Expected<Imatrix> read_legacy(const std::string& path, const MappedFile& f) {
  LegacyReader r{f.data(), f.size()};
  Imatrix im;
  im.is_legacy = true;
  int32_t n_entries = 0;
  if (!r.i32(n_entries) || n_entries < 1 || n_entries > (1 << 20))
    return make_error(path +
                      ": not an importance matrix (neither GGUF nor llama.cpp's legacy "
                      ".dat format)");
  for (int32_t i = 0; i < n_entries; ++i) {
    const std::string where = path + ": legacy imatrix entry " + std::to_string(i + 1);
    int32_t len = 0;
    if (!r.i32(len) || len < 1 || len > 4096 || static_cast<size_t>(len) > r.n - r.pos)
      return make_error(where + ": bad name length (truncated or not an imatrix file)");
    std::string name(reinterpret_cast<const char*>(r.p + r.pos), len);
    r.pos += len;
    int32_t ncall = 0, nval = 0;
    if (!r.i32(ncall) || !r.i32(nval) || nval < 1)
      return make_error(where + " ('" + name + "'): truncated header");
    if (static_cast<size_t>(nval) > (r.n - r.pos) / 4)
      return make_error(where + " ('" + name + "'): " + std::to_string(nval) +
                        " values extend past end of file (truncated file)");
    ImatrixEntry e;
    e.sums.resize(nval);
    r.read(e.sums.data(), static_cast<size_t>(nval) * 4);
    e.counts = {ncall};
    if (auto st = check_values(path, name, e); !st) return st.error();
    im.entries[name] = std::move(e);
  }
  int32_t chunks = 0;
  if (r.i32(chunks)) {
    im.chunk_count = chunks;
    int32_t len = 0;
    if (r.i32(len) && len > 0 && static_cast<size_t>(len) <= r.n - r.pos)
      im.datasets.emplace_back(reinterpret_cast<const char*>(r.p + r.pos), len);
  }
  return im;
}

}  // namespace

std::vector<float> ImatrixEntry::mean(int64_t m) const {
  const int64_t nc = n_cols();
  std::vector<float> out(static_cast<size_t>(nc), 1.0f);
  if (m < 0 || m >= n_mat() || counts[m] == 0) return out;
  const float c = static_cast<float>(counts[m]);
  for (int64_t j = 0; j < nc; ++j) out[j] = sums[m * nc + j] / c;
  return out;
}

const ImatrixEntry* Imatrix::find(const std::string& tensor_name) const {
  const auto it = entries.find(tensor_name);
  return it == entries.end() ? nullptr : &it->second;
}

Expected<Imatrix> read_imatrix(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    return make_error(path + ": imatrix file not found");
  auto mf = MappedFile::open(path);
  if (!mf) return mf.error();
  const auto* d = (*mf)->data();
  if ((*mf)->size() >= 4 && std::memcmp(d, "GGUF", 4) == 0) {
    auto g = formats::GgufFile::parse(*mf);
    if (!g) return g.error();
    return read_gguf(path, *g);
  }
  return read_legacy(path, **mf);
}

Status write_imatrix_gguf(const std::string& path, const Imatrix& im) {
  formats::GgufWriter w;
  w.set_string("general.type", "imatrix");
  w.set_string_array("imatrix.datasets", im.datasets);
  w.set_u32("imatrix.chunk_count", static_cast<uint32_t>(im.chunk_count));
  w.set_u32("imatrix.chunk_size", static_cast<uint32_t>(im.chunk_size));
  std::vector<std::vector<float>> counts;
  std::vector<const void*> data;
  counts.reserve(im.entries.size());
  for (const auto& [name, e] : im.entries) {
    if (e.counts.empty() || e.sums.size() % e.counts.size() != 0)
      return make_error(path + ": imatrix entry '" + name + "' has inconsistent sums and counts");
    const uint64_t nmat = e.counts.size();
    const uint64_t ncols = e.sums.size() / nmat;
    if (auto st =
            w.add_tensor(name + std::string(kSumSuffix), formats::GgmlType::F32, {ncols, nmat});
        !st)
      return st;
    if (auto st = w.add_tensor(name + std::string(kCountSuffix), formats::GgmlType::F32, {1, nmat});
        !st)
      return st;
    auto& c = counts.emplace_back();
    for (int64_t v : e.counts) c.push_back(static_cast<float>(v));
    data.push_back(e.sums.data());
    data.push_back(c.data());
  }
  return formats::write_gguf(w, path, data);
}

Status write_imatrix_legacy(const std::string& path, const Imatrix& im) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) return make_error(tmp + ": cannot create");
    auto put = [&](const void* p, size_t n) { out.write(static_cast<const char*>(p), n); };
    const int32_t n_entries = static_cast<int32_t>(im.entries.size());
    put(&n_entries, 4);
    for (const auto& [name, e] : im.entries) {
      const int32_t len = static_cast<int32_t>(name.size());
      put(&len, 4);
      put(name.data(), name.size());
      // The legacy format keeps mean * ncall with one ncall per entry (llama.cpp's rule).
      int64_t maxc = 0;
      for (int64_t c : e.counts) maxc = std::max(maxc, c);
      const int32_t chunk = im.chunk_size > 0 ? im.chunk_size : 1;
      const int32_t ncall = static_cast<int32_t>((maxc + chunk - 1) / chunk);
      const int32_t nval = static_cast<int32_t>(e.sums.size());
      put(&ncall, 4);
      put(&nval, 4);
      const int64_t per = e.n_cols();
      for (int32_t i = 0; i < nval; ++i) {
        float count = static_cast<float>(e.counts[per > 0 ? i / per : 0]);
        float value = e.sums[i];
        if (count == 0.0f) value = count = 1.0f;
        const float v = value / count * static_cast<float>(ncall);
        put(&v, 4);
      }
    }
    const int32_t chunks = im.chunk_count;
    put(&chunks, 4);
    const std::string ds = im.datasets.empty() ? std::string() : im.datasets.back();
    const int32_t len = static_cast<int32_t>(ds.size());
    put(&len, 4);
    put(ds.data(), ds.size());
    if (!out.flush()) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      return make_error(tmp + ": write failed");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return make_error(path + ": cannot rename from " + tmp);
  }
  return {};
}

Status check_imatrix_entry(const std::string& tensor_name, const ImatrixEntry& e, int64_t ne0,
                           int64_t n_mat) {
  if (e.n_mat() != n_mat && e.n_mat() != 1)
    return make_error("imatrix: entry '" + tensor_name + "' has " + std::to_string(e.n_mat()) +
                      " matrices, tensor has " + std::to_string(n_mat));
  if (e.n_cols() != ne0)
    return make_error("imatrix: entry '" + tensor_name + "' has " + std::to_string(e.n_cols()) +
                      " columns, tensor has " + std::to_string(ne0));
  return {};
}

}  // namespace fennec::quant
