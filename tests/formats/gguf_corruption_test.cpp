// The GGUF reader on hostile input: each real model truncated at hundreds of offsets, with bytes
// and bits flipped across its header and tensor table, and with every kind of count or length
// field set to huge values. Parsing must never crash or allocate absurdly, and each failure must
// be one message naming the file and the key or tensor involved.
//
// The corrupted files live in memory, never on disk: a sparse memfd of the model's full length
// (the header bytes written, the data section a hole that costs nothing) opened through
// /proc/self/fd, so a byte can be changed and restored, or the file cut, without copying. Files a
// real model cannot give are built byte by byte and parsed with MappedFile::from_bytes.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "formats/gguf.h"

namespace fennec::formats {
namespace {

const std::string kModelDir = FENNEC_SOURCE_DIR "/models/";

// ---- an independent walk over a valid file, recording where each field lies ----------------

struct KeySpan {
  std::string name;
  uint64_t start = 0, end = 0;  // [start, end): key length field .. end of value
  uint64_t type_off = 0;
  uint64_t count_off = 0;  // array element count field, 0 when not an array
};

struct TensorSpan {
  std::string name;
  uint64_t start = 0, end = 0;
  uint64_t ndims_off = 0, type_off = 0, offset_off = 0;
  std::vector<uint64_t> dim_offs;
  uint64_t rel_offset = 0, n_bytes = 0;  // from the reader on the intact file
};

struct Layout {
  std::vector<KeySpan> keys;
  std::vector<TensorSpan> tensors;
  uint64_t table_end = 0;  // end of the tensor infos (before padding)
};

class Walker {
 public:
  explicit Walker(const std::vector<uint8_t>& b) : b_(b) {}
  uint64_t pos = 0;
  template <class T>
  T get() {
    T x;
    std::memcpy(&x, b_.data() + pos, sizeof x);
    pos += sizeof x;
    return x;
  }
  std::string str() {
    const auto n = get<uint64_t>();
    std::string s(reinterpret_cast<const char*>(b_.data() + pos), n);
    pos += n;
    return s;
  }
  void skip_value(uint32_t t) {
    static const int sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (t == 8) {
      str();
    } else if (t == 9) {
      const auto et = get<uint32_t>();
      const auto n = get<uint64_t>();
      if (et == 8 || et == 9) {
        for (uint64_t i = 0; i < n; ++i) skip_value(et);
      } else {
        pos += n * sizes[et];
      }
    } else {
      pos += sizes[t];
    }
  }

 private:
  const std::vector<uint8_t>& b_;
};

Layout walk(const std::vector<uint8_t>& header, const GgufFile& g) {
  Layout l;
  Walker w(header);
  w.pos = 8;
  const auto n_tensors = w.get<uint64_t>();
  const auto n_kv = w.get<uint64_t>();
  for (uint64_t i = 0; i < n_kv; ++i) {
    KeySpan k;
    k.start = w.pos;
    k.name = w.str();
    k.type_off = w.pos;
    const auto t = w.get<uint32_t>();
    if (t == 9) k.count_off = w.pos + 4;
    w.skip_value(t);
    k.end = w.pos;
    l.keys.push_back(k);
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorSpan s;
    s.start = w.pos;
    s.name = w.str();
    s.ndims_off = w.pos;
    const auto nd = w.get<uint32_t>();
    for (uint32_t d = 0; d < nd; ++d) {
      s.dim_offs.push_back(w.pos);
      w.get<uint64_t>();
    }
    s.type_off = w.pos;
    w.get<uint32_t>();
    s.offset_off = w.pos;
    w.get<uint64_t>();
    s.end = w.pos;
    s.rel_offset = g.tensors()[i].offset;
    s.n_bytes = g.tensors()[i].n_bytes;
    l.tensors.push_back(s);
  }
  l.table_end = w.pos;
  return l;
}

// ---- a model file held as header bytes plus its length ---------------------------------------

struct Model {
  std::string path;
  uint64_t file_size = 0;
  uint64_t data_offset = 0;
  std::vector<uint8_t> header;  // bytes [0, data_offset)
  Layout layout;
};

// Loads the model's header; skips the test when the model is absent.
bool load_model(const std::string& file, Model& m) {
  m.path = kModelDir + file;
  if (!std::filesystem::exists(m.path)) return false;
  auto g = GgufFile::open(m.path);
  EXPECT_TRUE(g) << g.error().message;
  if (!g) return false;
  m.file_size = g->file_size();
  m.data_offset = g->data_offset();
  const uint8_t* base = g->file()->data();
  m.header.assign(base, base + m.data_offset);
  m.layout = walk(m.header, *g);
  EXPECT_EQ(m.layout.keys.size(), g->metadata().size());
  return true;
}

// A sparse in-memory file of the model's full length, header written, data section a hole.
class SparseCopy {
 public:
  explicit SparseCopy(const Model& m) : m_(m) {
    fd_ = memfd_create("gguf-corrupt", MFD_CLOEXEC);
    EXPECT_GE(fd_, 0);
    EXPECT_EQ(ftruncate(fd_, static_cast<off_t>(m.file_size)), 0);
    write_at(0, m.header.data(), m.header.size());
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~SparseCopy() { close(fd_); }
  const std::string& path() const { return path_; }

  void write_at(uint64_t off, const void* p, size_t n) {
    ASSERT_EQ(pwrite(fd_, p, n, static_cast<off_t>(off)), static_cast<ssize_t>(n));
  }
  void restore(uint64_t off, size_t n) {
    if (off < m_.header.size())
      write_at(off, m_.header.data() + off, std::min<size_t>(n, m_.header.size() - off));
  }
  void resize(uint64_t size) { ASSERT_EQ(ftruncate(fd_, static_cast<off_t>(size)), 0); }

 private:
  const Model& m_;
  int fd_ = -1;
  std::string path_;
};

long peak_rss_kb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// Touches everything a successful parse produced and checks the zero-copy invariants.
void check_parsed(const GgufFile& g, const std::string& what) {
  const uint8_t* base = g.file()->data();
  const uint8_t* end = base + g.file_size();
  size_t chars = 0;
  for (const auto& [k, v] : g.metadata()) chars += v.to_string().size() + k.size();
  EXPECT_GT(chars, 0u) << what;
  for (const GgufTensor& t : g.tensors()) {
    ASSERT_EQ(t.data, base + g.data_offset() + t.offset) << what << " " << t.name;
    ASSERT_LE(t.data + t.n_bytes, end) << what << " " << t.name;
    ASSERT_GE(t.n_elements(), 1u) << what;
  }
}

// Every failure is one message starting "<path>: " that says what it is about.
void check_error(const Error& e, const std::string& path, const std::string& what) {
  const std::string& msg = e.message;
  ASSERT_GT(msg.size(), path.size() + 2) << what;
  EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << what << ": " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << what << ": " << msg;
  EXPECT_LT(msg.size(), 600u) << what << ": " << msg;
  const bool names_something =
      msg.find("metadata key") != std::string::npos || msg.find("tensor") != std::string::npos ||
      msg.find("header") != std::string::npos || msg.find("GGUF") != std::string::npos ||
      msg.find("general.alignment") != std::string::npos;
  EXPECT_TRUE(names_something) << what << ": " << msg;
}

// Where a truncation at `cut` must be reported: the key or tensor whose bytes it cuts.
std::string expected_subject(const Model& m, uint64_t cut) {
  for (size_t i = 0; i < m.layout.keys.size(); ++i) {
    const KeySpan& k = m.layout.keys[i];
    if (cut >= k.start && cut < k.end) {
      // Cut inside the key's own name: only its index is known.
      if (cut < k.type_off) return "metadata key #" + std::to_string(i);
      return "metadata key '" + k.name + "'";
    }
  }
  for (size_t i = 0; i < m.layout.tensors.size(); ++i) {
    const TensorSpan& t = m.layout.tensors[i];
    if (cut >= t.start && cut < t.end) {
      if (cut < t.ndims_off) return "tensor #" + std::to_string(i);
      return "tensor '" + t.name + "'";
    }
  }
  if (cut < 4) return "too small to be GGUF";
  if (cut < 24) return "truncated header";
  return "past end of file";  // in the padding before the data section
}

class GgufCorruption : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!load_model(GetParam(), m_))
      GTEST_SKIP() << kModelDir << GetParam() << " is absent: run scripts/fetch_models.sh";
  }
  Model m_;
};

TEST_P(GgufCorruption, TruncatedHeaderAndTable) {
  std::vector<uint64_t> cuts;
  for (uint64_t c = 0; c < 64; ++c) cuts.push_back(c);  // magic, version, counts, first key
  const uint64_t stride = m_.data_offset / 300 + 1;
  for (uint64_t c = 64; c < m_.data_offset; c += stride) cuts.push_back(c);
  // The tensor table is small next to the vocabulary: cut every tensor info at its edges too.
  for (size_t i = 0; i < m_.layout.tensors.size(); i += 7) {
    const TensorSpan& t = m_.layout.tensors[i];
    for (uint64_t c : {t.start, t.start + 1, t.ndims_off, t.dim_offs.back() + 3, t.type_off + 2,
                       t.offset_off, t.end - 1})
      cuts.push_back(c);
  }
  cuts.push_back(m_.layout.table_end);
  cuts.push_back(m_.data_offset - 1);
  // Cutting ever shorter keeps the prefix intact: no copy or rewrite between cases.
  std::sort(cuts.begin(), cuts.end(), std::greater<>());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  SparseCopy copy(m_);
  const long rss0 = peak_rss_kb();
  for (uint64_t cut : cuts) {
    copy.resize(cut);
    auto g = GgufFile::open(copy.path());
    const std::string what = "cut at " + std::to_string(cut);
    ASSERT_FALSE(g) << what;
    check_error(g.error(), copy.path(), what);
    const std::string subject = expected_subject(m_, cut);
    EXPECT_NE(g.error().message.find(subject), std::string::npos)
        << what << ": expected '" << subject << "' in: " << g.error().message;
  }
  EXPECT_LT(peak_rss_kb() - rss0, 64 * 1024) << "parsing truncated files grew peak RSS";
  RecordProperty("cuts", static_cast<int>(cuts.size()));
}

TEST_P(GgufCorruption, TruncatedInsideTensorData) {
  SparseCopy copy(m_);
  const auto& ts = m_.layout.tensors;
  std::vector<uint64_t> cuts = {m_.data_offset, m_.data_offset + 1, m_.file_size - 1};
  for (size_t i = 0; i < ts.size(); i += 11) {
    cuts.push_back(m_.data_offset + ts[i].rel_offset + ts[i].n_bytes - 1);  // last byte missing
    cuts.push_back(m_.data_offset + ts[i].rel_offset + ts[i].n_bytes / 2);
  }
  for (uint64_t cut : cuts) {
    copy.resize(cut);
    auto g = GgufFile::open(copy.path());
    const std::string what = "cut at " + std::to_string(cut);
    ASSERT_FALSE(g) << what;
    check_error(g.error(), copy.path(), what);
    // The first tensor in table order that the cut leaves incomplete is the one reported.
    std::string victim;
    for (const TensorSpan& t : ts)
      if (m_.data_offset + t.rel_offset + t.n_bytes > cut) {
        victim = t.name;
        break;
      }
    ASSERT_FALSE(victim.empty());
    EXPECT_NE(g.error().message.find("tensor '" + victim + "' extends past end of file"),
              std::string::npos)
        << what << ": " << g.error().message;
  }
  copy.resize(m_.file_size);
  auto g = GgufFile::open(copy.path());
  ASSERT_TRUE(g) << g.error().message;
  check_parsed(*g, "restored");
}

TEST_P(GgufCorruption, FlippedBytesAndBits) {
  SparseCopy copy(m_);
  std::mt19937_64 rng(0x5eed0000 + m_.header.size());
  // The structural fields: lengths, types, counts, dims, offsets; random bytes elsewhere.
  std::vector<uint64_t> fields = {4, 8, 16};
  for (const KeySpan& k : m_.layout.keys) {
    fields.push_back(k.start);
    fields.push_back(k.type_off);
    if (k.count_off) {
      fields.push_back(k.count_off - 4);
      fields.push_back(k.count_off);
    }
  }
  for (const TensorSpan& t : m_.layout.tensors) {
    fields.push_back(t.start);
    fields.push_back(t.ndims_off);
    fields.push_back(t.dim_offs.back());
    fields.push_back(t.type_off);
    fields.push_back(t.offset_off);
  }
  int ok = 0, failed = 0;
  const long rss0 = peak_rss_kb();
  for (int i = 0; i < 300; ++i) {
    uint64_t off;
    switch (i % 3) {
      case 0:
        off = fields[rng() % fields.size()] + rng() % 8;
        break;  // a field's bytes
      case 1:
        off = m_.layout.keys.back().end + rng() % (m_.data_offset - m_.layout.keys.back().end);
        break;  // tensor table
      default:
        off = rng() % m_.data_offset;  // anywhere in the header
    }
    off = std::min<uint64_t>(off, m_.data_offset - 1);
    const uint8_t orig = m_.header[off];
    const uint8_t bad = (i & 1) ? static_cast<uint8_t>(orig ^ (1u << (rng() % 8)))
                                : static_cast<uint8_t>(orig ^ (1 + rng() % 255));
    copy.write_at(off, &bad, 1);
    const std::string what = "byte " + std::to_string(off) + " set to " + std::to_string(bad);
    auto g = GgufFile::open(copy.path());
    if (g) {
      ++ok;
      check_parsed(*g, what);
    } else {
      ++failed;
      check_error(g.error(), copy.path(), what);
    }
    copy.restore(off, 1);
  }
  EXPECT_LT(peak_rss_kb() - rss0, 64 * 1024) << "parsing corrupted files grew peak RSS";
  EXPECT_GT(failed, 50);  // most structural flips must be caught
  RecordProperty("accepted", ok);
  RecordProperty("rejected", failed);
}

TEST_P(GgufCorruption, HugeCountsAndLengths) {
  SparseCopy copy(m_);
  const uint64_t huge64[] = {~0ull, 1ull << 63, 1ull << 40, 1ull << 32, 0xffffffffull};
  const uint32_t huge32[] = {~0u, 1u << 31, 13, 5};
  const long rss0 = peak_rss_kb();
  auto try_value = [&](uint64_t off, const void* p, size_t n, const std::string& subject) {
    copy.write_at(off, p, n);
    auto g = GgufFile::open(copy.path());
    const std::string what = "field at " + std::to_string(off) + " for " + subject;
    if (g) {
      check_parsed(*g, what);
    } else {
      check_error(g.error(), copy.path(), what);
      EXPECT_NE(g.error().message.find(subject), std::string::npos)
          << what << ": " << g.error().message;
    }
    copy.restore(off, n);
  };
  // Header counts.
  for (uint64_t v : huge64) {
    try_value(8, &v, 8, "tensors");
    try_value(16, &v, 8, "metadata key");
  }
  // Each key's name length, type, and array count.
  for (size_t i = 0; i < m_.layout.keys.size(); ++i) {
    const KeySpan& k = m_.layout.keys[i];
    for (uint64_t v : huge64) {
      try_value(k.start, &v, 8, "metadata key #" + std::to_string(i));
      if (k.count_off) try_value(k.count_off, &v, 8, "metadata key '" + k.name + "'");
    }
    for (uint32_t v : {~0u, 13u, 100u})
      try_value(k.type_off, &v, 4, "metadata key '" + k.name + "'");
    if (k.count_off)
      for (uint32_t v : {~0u, 13u})
        try_value(k.count_off - 4, &v, 4, "metadata key '" + k.name + "'");
  }
  // Tensor name lengths, dimension counts, dimensions, types, offsets (a sample of tensors).
  const size_t tensor_stride = m_.layout.tensors.size() / 8 + 1;
  for (size_t i = 0; i < m_.layout.tensors.size(); i += tensor_stride) {
    const TensorSpan& t = m_.layout.tensors[i];
    const std::string name = "tensor '" + t.name + "'";
    for (uint64_t v : huge64) {
      try_value(t.start, &v, 8, "tensor #" + std::to_string(i));
      try_value(t.dim_offs.back(), &v, 8, name);
      try_value(t.offset_off, &v, 8, name);
    }
    for (uint32_t v : huge32) {
      try_value(t.ndims_off, &v, 4, name);
      try_value(t.type_off, &v, 4, name);
    }
    const uint64_t zero = 0;
    try_value(t.dim_offs[0], &zero, 8, name);
  }
  EXPECT_LT(peak_rss_kb() - rss0, 64 * 1024) << "huge counts grew peak RSS";
}

INSTANTIATE_TEST_SUITE_P(Models, GgufCorruption,
                         ::testing::Values("SmolLM2-135M-Instruct.Q4_1.gguf",
                                           "gemma-3-270m-q4_k_m.gguf"),
                         [](const auto& info) {
                           return info.param.substr(0, info.param.find('-'));
                         });

// Hand-built files for what a real model never contains.
class Builder {
 public:
  Builder& u32(uint32_t v) { return raw(&v, 4); }
  Builder& u64(uint64_t v) { return raw(&v, 8); }
  Builder& str(std::string_view s) {
    u64(s.size());
    return raw(s.data(), s.size());
  }
  Builder& raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    bytes.insert(bytes.end(), b, b + n);
    return *this;
  }
  Builder& header(uint64_t n_tensors, uint64_t n_kv) {
    return raw("GGUF", 4).u32(3).u64(n_tensors).u64(n_kv);
  }
  Expected<GgufFile> parse() const {
    return GgufFile::parse(MappedFile::from_bytes(bytes.data(), bytes.size(), "built.gguf"));
  }
  std::vector<uint8_t> bytes;
};

TEST(GgufHostile, NestedArraysTooDeepAreRejected) {
  Builder b;
  b.header(0, 1).str("deep").u32(9);
  for (int i = 0; i < 20; ++i) b.u32(9).u64(1);
  auto g = b.parse();
  ASSERT_FALSE(g);
  EXPECT_NE(g.error().message.find("metadata key 'deep'"), std::string::npos) << g.error().message;
  EXPECT_NE(g.error().message.find("nested deeper"), std::string::npos) << g.error().message;
}

TEST(GgufHostile, ManyEmptyNestedArraysStayWithinBudget) {
  // 2^17 empty inner arrays (12 bytes each in the file, ~10x that as values): over the budget.
  Builder b;
  const uint64_t n = 1ull << 17;
  b.header(0, 1).str("wide").u32(9).u32(9).u64(n);
  for (uint64_t i = 0; i < n; ++i) b.u32(0).u64(0);
  const long rss0 = peak_rss_kb();
  auto g = b.parse();
  ASSERT_FALSE(g);
  EXPECT_NE(g.error().message.find("metadata key 'wide'"), std::string::npos) << g.error().message;
  EXPECT_LT(peak_rss_kb() - rss0, 64 * 1024);
}

TEST(GgufHostile, EmptyArraysAndLongKeys) {
  Builder ok;
  ok.header(0, 2).str("empty.u8").u32(9).u32(0).u64(0).str("empty.str").u32(9).u32(8).u64(0);
  auto g = ok.parse();
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(g->find("empty.u8")->count, 0u);
  EXPECT_EQ(g->find("empty.u8")->to_string(), "[u8 x 0] []");
  EXPECT_EQ(g->find("empty.str")->strings.size(), 0u);

  Builder long_key;  // the spec caps keys at 65535 bytes
  long_key.header(0, 1).str(std::string(70000, 'k')).u32(0).raw("\x01", 1);
  auto lk = long_key.parse();
  ASSERT_FALSE(lk);
  EXPECT_NE(lk.error().message.find("metadata key #0"), std::string::npos) << lk.error().message;

  Builder garbage;  // a key of control bytes is escaped in the message, not printed raw
  garbage.header(0, 1).str(std::string("\x01\x02\n", 3)).u32(77);
  auto gk = garbage.parse();
  ASSERT_FALSE(gk);
  EXPECT_NE(gk.error().message.find("'\\x01\\x02\\x0a'"), std::string::npos) << gk.error().message;

  Builder control;  // nor are control bytes in a string value when it is shown
  control.header(0, 1).str("s").u32(8).str(std::string("a\x1b[2J\\", 6));
  auto cv = control.parse();
  ASSERT_TRUE(cv) << cv.error().message;
  EXPECT_EQ(cv->find("s")->to_string(), "\"a\\x1b[2J\\\\\"");
}

TEST(GgufHostile, BadAlignmentAndVersions) {
  Builder b;
  b.header(0, 1).str("general.alignment").u32(4).u32(48);
  auto g = b.parse();
  ASSERT_FALSE(g);
  EXPECT_NE(g.error().message.find("general.alignment"), std::string::npos);

  for (uint32_t v : {0u, 1u, 4u, 0x03000000u}) {
    Builder h;
    h.raw("GGUF", 4).u32(v).u64(0).u64(0);
    auto r = h.parse();
    ASSERT_FALSE(r) << v;
    EXPECT_NE(r.error().message.find("version"), std::string::npos) << r.error().message;
  }
  Builder magic;
  magic.raw("GGML", 4).u32(3).u64(0).u64(0);
  EXPECT_FALSE(magic.parse());
  Builder dup;
  dup.header(0, 2).str("a").u32(0).raw("\x01", 1).str("a").u32(0).raw("\x02", 1);
  auto d = dup.parse();
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message.find("'a' appears twice"), std::string::npos) << d.error().message;
}

}  // namespace
}  // namespace fennec::formats
