// libFuzzer target for the JSON Schema compiler and the byte matcher. The input is a schema
// (JSON text) and, after the first NUL byte, bytes to offer the matcher. Any schema must compile
// or fail with a message naming a JSON pointer, never crash or hang; a compiled schema's matcher
// must never reach a dead end (an incomplete text that no byte can continue), and every complete
// text it accepts must parse as JSON. Without a NUL the whole input is offered to the json_object
// matcher too. Build by hand like gguf_fuzz (see tests/fuzz/README.md for the run flags):
//   clang++-14 -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined
//     -fno-sanitize-recover=undefined -I src tests/fuzz/json_schema_fuzz.cpp
//     src/engine/json_schema.cpp src/engine/json_matcher.cpp -o build-fuzz/json_schema_fuzz
//   build-fuzz/json_schema_fuzz -max_total_time=600 -rss_limit_mb=1024 -malloc_limit_mb=256
//     -max_len=4096 build-fuzz/corpus_json
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "engine/json_matcher.h"
#include "engine/json_schema.h"

namespace {

using fennec::engine::JsonMatcher;
using fennec::engine::JsonSchema;

// Offers each byte; keeps those accepted. Checks no dead end after every step.
void drive(const std::shared_ptr<const JsonSchema>& schema, std::string_view bytes) {
  JsonMatcher m(schema);
  JsonMatcher next(schema);
  std::string text;
  for (size_t i = 0; i <= bytes.size(); ++i) {
    if (!m.is_complete()) {
      bool any = false;
      for (int b = 0; b < 256 && !any; ++b) any = m.step_into(static_cast<uint8_t>(b), next);
      if (!any) __builtin_trap();  // dead end
    }
    if (i == bytes.size()) break;
    if (m.step_into(static_cast<uint8_t>(bytes[i]), next)) {
      std::swap(m, next);
      text += bytes[i];
    }
  }
  if (m.is_complete()) {
    const auto v = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (v.is_discarded()) __builtin_trap();  // accepted text that is not JSON
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  const void* nul = std::memchr(data, 0, size);
  const size_t schema_len =
      nul ? static_cast<size_t>(static_cast<const uint8_t*>(nul) - data) : size;
  const std::string_view schema_text(p, schema_len);
  const std::string_view tail =
      nul ? std::string_view(p + schema_len + 1, size - schema_len - 1) : std::string_view(p, size);
  if (!nul) drive(JsonSchema::any_object(), tail);

  const auto doc = nlohmann::ordered_json::parse(schema_text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return 0;
  auto schema = JsonSchema::compile(doc);
  if (!schema) {
    // A failure is one message that names where: "json schema: #...: ...".
    if (schema.error().message.rfind("json schema: #", 0) != 0) __builtin_trap();
    return 0;
  }
  drive(*schema, tail);
  return 0;
}
