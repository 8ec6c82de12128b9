// libFuzzer target for the OpenAI request parsers: any body must give a request or a 400 error
// whose JSON serializes (valid UTF-8), never a crash, deep recursion or unbounded work. The first
// byte picks the endpoint and the vocabulary size; the rest is the body. A parsed request must
// satisfy the ranges the header promises.
// Build by hand with clang (see tests/fuzz/README.md for the pattern):
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I src \
//     tests/fuzz/openai_request_fuzz.cpp src/server/openai_request.cpp src/tokenizer/utf8.cpp \
//     -o build-fuzz/openai_request_fuzz
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>

#include "server/openai_request.h"

namespace {

using fennec::server::ApiError;
using fennec::server::GenerationOptions;

volatile uint64_t g_sink;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void check_error(const ApiError& e) {
  check(e.status == 400 && !e.message.empty());
  // dump() throws on invalid UTF-8: every message built from the body must have been repaired.
  g_sink = g_sink + e.to_json().dump().size();
}

void check_options(const GenerationOptions& o, int n_vocab) {
  check(o.max_tokens == -1 || o.max_tokens >= 1);
  check(o.temperature >= 0 && o.temperature <= 2);
  check(o.top_p > 0 && o.top_p <= 1);
  check(o.top_k >= 0);
  check(o.min_p >= 0 && o.min_p <= 1);
  check(o.repetition_penalty > 0 && o.repetition_penalty <= 10);
  check(o.n >= 1 && o.n <= 16);
  check(o.top_logprobs >= 0 && o.top_logprobs <= 20);
  check(o.stop.size() <= 16);
  check(!o.include_usage || o.stream);
  for (const auto& [id, bias] : o.logit_bias) {
    check(id >= 0 && (n_vocab <= 0 || id < n_vocab));
    check(bias >= -100 && bias <= 100);
  }
  if (o.response_format.kind == fennec::server::ResponseFormat::Kind::kJsonSchema) {
    check(o.response_format.schema.is_object());
    g_sink = g_sink + o.response_format.schema.dump().size();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int n_vocab = (data[0] & 1) ? 32000 : (data[0] & 2) ? 0 : 50;
  const bool chat = (data[0] & 4) != 0;
  std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (chat) {
    auto r = fennec::server::parse_chat_request(body, n_vocab);
    if (const ApiError* e = std::get_if<ApiError>(&r)) {
      check_error(*e);
      return 0;
    }
    const auto& req = std::get<fennec::server::ChatRequest>(r);
    check_options(req.opts, n_vocab);
    check(req.messages.is_array() && !req.messages.empty());
    for (const auto& m : req.messages) check(m["content"].is_string());
    g_sink = g_sink + req.messages.dump().size();
  } else {
    auto r = fennec::server::parse_completion_request(body, n_vocab);
    if (const ApiError* e = std::get_if<ApiError>(&r)) {
      check_error(*e);
      return 0;
    }
    const auto& req = std::get<fennec::server::CompletionRequest>(r);
    check_options(req.opts, n_vocab);
    check(req.prompts.empty() != req.prompt_tokens.empty());
    check(req.suffix.empty());
    for (const auto& ids : req.prompt_tokens) {
      check(!ids.empty());
      for (int32_t id : ids) check(id >= 0 && (n_vocab <= 0 || id < n_vocab));
    }
    for (const auto& p : req.prompts) g_sink = g_sink + p.size();
  }
  return 0;
}
