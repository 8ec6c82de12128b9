// libFuzzer target for the GGUF reader: any byte string must parse or fail with a message, never
// crash, read out of bounds, or allocate without limit. On success every parsed value is touched.
// Build and run: see tests/fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <limits>

#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "formats/gguf_info.h"

namespace {

using fennec::formats::GgufType;
using fennec::formats::GgufValue;

volatile uint64_t g_sink;

void touch(const GgufValue& v) {
  uint64_t h = v.to_string().size();
  if (v.is_array()) {
    if (v.elem_type == GgufType::STRING) {
      for (std::string_view s : v.strings) h += s.size() ? static_cast<uint8_t>(s.back()) : 0;
    } else if (v.elem_type == GgufType::ARRAY) {
      for (const GgufValue& item : v.items) touch(item);
    } else {
      for (uint64_t i = 0; i < v.count; ++i)
        h += static_cast<uint64_t>(v.int_at(i)) + static_cast<uint64_t>(v.number_at(i) != 0);
    }
  } else if (v.type == GgufType::STRING) {
    h += v.str.size() ? static_cast<uint8_t>(v.str.front()) : 0;
  }
  g_sink = g_sink + h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = fennec::MappedFile::from_bytes(data, size, "fuzz.gguf");
  auto g = fennec::formats::GgufFile::parse(file);
  if (!g) {
    // A failure is one non-empty message naming the file.
    if (g.error().message.rfind("fuzz.gguf: ", 0) != 0) __builtin_trap();
    return 0;
  }
  for (const auto& [key, value] : g->metadata()) {
    if (g->find(key) != &value) __builtin_trap();
    touch(value);
  }
  for (const auto& t : g->tensors()) {
    if (g->find_tensor(t.name) != &t) __builtin_trap();
    if (t.data != file->data() + g->data_offset() + t.offset) __builtin_trap();
    // First and last byte: ASan flags any view outside the buffer.
    if (t.n_bytes) g_sink = g_sink + t.data[0] + t.data[t.n_bytes - 1];
    g_sink = g_sink + t.n_rows();
  }
  g_sink = g_sink + fennec::formats::render_info(*g, false).size() +
           fennec::formats::render_info(*g, true).size();
  return 0;
}
