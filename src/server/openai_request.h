// The OpenAI request bodies fennec serves (/v1/chat/completions, /v1/completions), parsed and
// validated into plain structs. Unknown fields are ignored, as OpenAI does; a known field of the
// wrong type or out of range is an ApiError (HTTP 400) naming the field in `param`.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace fennec::server {

// An error answered as OpenAI's body {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";  // or "authentication_error", "server_error", ...
  std::string param;                            // "" -> null
  std::string code;                             // "" -> null
  nlohmann::json to_json() const;
};

struct ResponseFormat {
  enum class Kind { kText, kJsonObject, kJsonSchema } kind = Kind::kText;
  nlohmann::json schema;  // json_schema.schema (kJsonSchema only)
  std::string name;       // json_schema.name
};

// Fields shared by both endpoints, after defaults are applied.
struct GenerationOptions {
  std::string model;                    // as sent ("" if absent)
  int max_tokens = -1;                  // -1: until the context is full
  float temperature = 1.0f;             // [0, 2]
  float top_p = 1.0f;                   // (0, 1]
  int top_k = 0;                        // >= 0 (-1 also accepted as "off" -> 0)
  float min_p = 0.0f;                   // [0, 1]
  float presence_penalty = 0.0f;        // [-2, 2]
  float frequency_penalty = 0.0f;       // [-2, 2]
  float repetition_penalty = 1.0f;      // (0, 10]; llama.cpp/vLLM extension
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;        // string or list of up to 16 strings
  int n = 1;                            // [1, 16]
  std::vector<std::pair<int32_t, float>> logit_bias;  // {"token id as string": bias in [-100, 100]}
  bool logprobs = false;                // chat: bool; completions: logprobs int -> true with top_logprobs = int
  int top_logprobs = 0;                 // [0, 20]
  bool stream = false;
  bool include_usage = false;           // stream_options.include_usage
  bool ignore_eos = false;              // vLLM extension
  std::string user;
  ResponseFormat response_format;
};

struct ChatRequest {
  GenerationOptions opts;
  // messages as the chat template expects them: [{"role": ..., "content": "text"}...]; a list of
  // {"type":"text","text":...} parts is joined into one string with "\n" between parts (as vLLM
  // does); other part types are an error. Null content (an assistant message with tool_calls)
  // becomes "". Other keys of a message (name, tool_calls, tool_call_id) are kept as sent.
  nlohmann::json messages;
  bool add_generation_prompt = true;  // vLLM extension
};

struct CompletionRequest {
  GenerationOptions opts;
  // prompt: a string, a list of strings, a list of token ids, or a list of lists of token ids.
  // Each entry is one prompt (choices are numbered prompt-major: index = prompt * n + k).
  std::vector<std::string> prompts;
  std::vector<std::vector<int32_t>> prompt_tokens;  // used instead when the prompt was token ids
  bool echo = false;
  std::string suffix;  // unsupported when non-empty: ApiError
};

// Parses a request body. n_vocab bounds token ids (prompt ids and logit_bias keys); n_vocab <= 0
// checks only that ids are non-negative int32. The first problem found is the error.
std::variant<ChatRequest, ApiError> parse_chat_request(const std::string& body, int n_vocab);
std::variant<CompletionRequest, ApiError> parse_completion_request(const std::string& body, int n_vocab);

}  // namespace fennec::server
