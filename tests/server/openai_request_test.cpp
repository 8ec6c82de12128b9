#include "server/openai_request.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <variant>
#include <vector>

namespace fennec::server {
namespace {

using nlohmann::json;

constexpr int kVocab = 32000;

// A valid chat body with `fields` (",\"x\":1" style, without the leading comma) added.
std::string chat_body(const std::string& fields = "") {
  std::string body = R"({"model":"m","messages":[{"role":"user","content":"hi"}])";
  if (!fields.empty()) body += "," + fields;
  return body + "}";
}

std::string completion_body(const std::string& fields = "") {
  std::string body = R"({"model":"m","prompt":"Once upon a time")";
  if (!fields.empty()) body += "," + fields;
  return body + "}";
}

ChatRequest chat_ok(const std::string& body, int n_vocab = kVocab) {
  auto r = parse_chat_request(body, n_vocab);
  if (const ApiError* e = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << body << "\n  -> unexpected error: " << e->message;
    return {};
  }
  return std::get<ChatRequest>(std::move(r));
}

ApiError chat_err(const std::string& body, int n_vocab = kVocab) {
  auto r = parse_chat_request(body, n_vocab);
  if (!std::holds_alternative<ApiError>(r)) {
    ADD_FAILURE() << body << "\n  -> parsed, but an error was expected";
    return {};
  }
  return std::get<ApiError>(std::move(r));
}

CompletionRequest completion_ok(const std::string& body, int n_vocab = kVocab) {
  auto r = parse_completion_request(body, n_vocab);
  if (const ApiError* e = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << body << "\n  -> unexpected error: " << e->message;
    return {};
  }
  return std::get<CompletionRequest>(std::move(r));
}

ApiError completion_err(const std::string& body, int n_vocab = kVocab) {
  auto r = parse_completion_request(body, n_vocab);
  if (!std::holds_alternative<ApiError>(r)) {
    ADD_FAILURE() << body << "\n  -> parsed, but an error was expected";
    return {};
  }
  return std::get<ApiError>(std::move(r));
}

struct BadCase {
  std::string fields;   // added to a valid body
  std::string param;    // expected ApiError::param
  std::string message;  // expected to occur in ApiError::message
};

void expect_error(const ApiError& e, const BadCase& c, const std::string& body) {
  EXPECT_EQ(e.status, 400) << body;
  EXPECT_EQ(e.type, "invalid_request_error") << body;
  EXPECT_EQ(e.param, c.param) << body << "\n  message: " << e.message;
  EXPECT_NE(e.message.find(c.message), std::string::npos)
      << body << "\n  message: " << e.message << "\n  expected to contain: " << c.message;
  EXPECT_NO_THROW(e.to_json().dump()) << body;
}

// --- Body-level errors ---------------------------------------------------------------------

TEST(OpenAiRequestBody, MalformedJsonSaysWhere) {
  for (const std::string body : {"", "{", "{\"messages\": [}", "{\"a\":1,}", "{} x", "nul",
                                 "{\"a\":\"\xff\"}", "{'a': 1}"}) {
    ApiError e = chat_err(body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.message.rfind("invalid JSON: ", 0), 0u) << e.message;
    EXPECT_GT(e.message.size(), std::string("invalid JSON: ").size()) << e.message;
    EXPECT_EQ(e.message.find("[json.exception"), std::string::npos) << e.message;
    EXPECT_TRUE(e.param.empty());
    EXPECT_NO_THROW(e.to_json().dump()) << e.message;  // valid UTF-8 even for the \xff body
  }
  ApiError e = chat_err("{\n  \"model\": \"m\",\n  \"messages\": [,]\n}");
  EXPECT_NE(e.message.find("line 3"), std::string::npos) << e.message;
  // nlohmann refuses numbers beyond double's range rather than reading them as infinity.
  ApiError big = chat_err(chat_body(R"("temperature":1e999)"));
  EXPECT_NE(big.message.find("invalid JSON: number overflow"), std::string::npos) << big.message;
}

TEST(OpenAiRequestBody, BodyMustBeAnObject) {
  for (const std::string body : {"[]", "[1,2]", "null", "\"text\"", "42", "true"}) {
    ApiError e = chat_err(body);
    EXPECT_NE(e.message.find("must be a JSON object"), std::string::npos) << e.message;
    ApiError c = completion_err(body);
    EXPECT_NE(c.message.find("must be a JSON object"), std::string::npos) << c.message;
  }
}

TEST(OpenAiRequestBody, DeepNestingIsRefusedNotRecursedInto) {
  std::string deep = std::string(100000, '[') + std::string(100000, ']');
  ApiError e = chat_err(chat_body("\"extra\":" + deep));
  EXPECT_NE(e.message.find("nested deeper than"), std::string::npos) << e.message;
  // Brackets inside strings do not count.
  ChatRequest ok = chat_ok(chat_body("\"extra\":\"" + std::string(1000, '[') + "\""));
  EXPECT_EQ(ok.messages.size(), 1u);
}

TEST(OpenAiRequestBody, ApiErrorJsonShape) {
  ApiError e;
  e.message = "'n' must be an integer between 1 and 16, got 17";
  e.param = "n";
  json j = e.to_json();
  ASSERT_TRUE(j.contains("error"));
  EXPECT_EQ(j["error"]["message"], e.message);
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "n");
  EXPECT_TRUE(j["error"]["code"].is_null());

  ApiError auth;
  auth.status = 401;
  auth.type = "authentication_error";
  auth.message = "Incorrect API key provided.";
  auth.code = "invalid_api_key";
  json a = auth.to_json();
  EXPECT_TRUE(a["error"]["param"].is_null());
  EXPECT_EQ(a["error"]["code"], "invalid_api_key");

  ApiError bad_utf8;
  bad_utf8.message = "bytes \xC3\x28 and \xFF";
  EXPECT_NO_THROW(bad_utf8.to_json().dump());
}

// --- Chat: valid bodies ----------------------------------------------------------------------

TEST(OpenAiChatRequest, MinimalBodyGetsDefaults) {
  ChatRequest r = chat_ok(R"({"messages":[{"role":"user","content":"Hello"}]})");
  const GenerationOptions& o = r.opts;
  EXPECT_EQ(o.model, "");
  EXPECT_EQ(o.max_tokens, -1);
  EXPECT_FLOAT_EQ(o.temperature, 1.0f);
  EXPECT_FLOAT_EQ(o.top_p, 1.0f);
  EXPECT_EQ(o.top_k, 0);
  EXPECT_FLOAT_EQ(o.min_p, 0.0f);
  EXPECT_FLOAT_EQ(o.repetition_penalty, 1.0f);
  EXPECT_FALSE(o.seed.has_value());
  EXPECT_TRUE(o.stop.empty());
  EXPECT_EQ(o.n, 1);
  EXPECT_TRUE(o.logit_bias.empty());
  EXPECT_FALSE(o.logprobs);
  EXPECT_EQ(o.top_logprobs, 0);
  EXPECT_FALSE(o.stream);
  EXPECT_FALSE(o.include_usage);
  EXPECT_FALSE(o.ignore_eos);
  EXPECT_EQ(o.response_format.kind, ResponseFormat::Kind::kText);
  EXPECT_TRUE(r.add_generation_prompt);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0]["role"], "user");
  EXPECT_EQ(r.messages[0]["content"], "Hello");
}

TEST(OpenAiChatRequest, EveryFieldIsRead) {
  ChatRequest r = chat_ok(chat_body(
      R"("max_tokens":64,"temperature":0.7,"top_p":0.9,"top_k":40,"min_p":0.05,)"
      R"("presence_penalty":0.5,"frequency_penalty":-0.5,"repetition_penalty":1.1,"seed":42,)"
      R"("stop":["\n\n","END"],"n":3,"logit_bias":{"50":-100,"7":2.5},"logprobs":true,)"
      R"("top_logprobs":5,"stream":true,"stream_options":{"include_usage":true},)"
      R"("ignore_eos":true,"user":"u-1","add_generation_prompt":false)"));
  const GenerationOptions& o = r.opts;
  EXPECT_EQ(o.model, "m");
  EXPECT_EQ(o.max_tokens, 64);
  EXPECT_FLOAT_EQ(o.temperature, 0.7f);
  EXPECT_FLOAT_EQ(o.top_p, 0.9f);
  EXPECT_EQ(o.top_k, 40);
  EXPECT_FLOAT_EQ(o.min_p, 0.05f);
  EXPECT_FLOAT_EQ(o.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(o.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(o.repetition_penalty, 1.1f);
  EXPECT_EQ(o.seed, 42u);
  EXPECT_EQ(o.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_EQ(o.n, 3);
  ASSERT_EQ(o.logit_bias.size(), 2u);  // sorted by token id
  EXPECT_EQ(o.logit_bias[0], (std::pair<int32_t, float>{7, 2.5f}));
  EXPECT_EQ(o.logit_bias[1], (std::pair<int32_t, float>{50, -100.0f}));
  EXPECT_TRUE(o.logprobs);
  EXPECT_EQ(o.top_logprobs, 5);
  EXPECT_TRUE(o.stream);
  EXPECT_TRUE(o.include_usage);
  EXPECT_TRUE(o.ignore_eos);
  EXPECT_EQ(o.user, "u-1");
  EXPECT_FALSE(r.add_generation_prompt);
}

TEST(OpenAiChatRequest, NullMeansAbsent) {
  ChatRequest r = chat_ok(chat_body(
      R"("max_tokens":null,"temperature":null,"top_p":null,"top_k":null,"seed":null,"stop":null,)"
      R"("n":null,"logit_bias":null,"logprobs":null,"top_logprobs":null,"stream":null,)"
      R"("stream_options":null,"response_format":null,"user":null,"model":null,)"
      R"("max_completion_tokens":null)"));
  EXPECT_EQ(r.opts.max_tokens, -1);
  EXPECT_FLOAT_EQ(r.opts.temperature, 1.0f);
  EXPECT_FALSE(r.opts.seed.has_value());
  EXPECT_EQ(r.opts.n, 1);
  EXPECT_FALSE(r.opts.stream);
  EXPECT_EQ(r.opts.model, "");
}

TEST(OpenAiChatRequest, UnknownFieldsAreIgnored) {
  ChatRequest r = chat_ok(
      chat_body(R"("tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto",)"
                R"("metadata":{"a":[1,2,{"b":null}]},"store":false,"x-anything":"yes")"));
  EXPECT_EQ(r.messages.size(), 1u);
}

TEST(OpenAiChatRequest, MaxCompletionTokensWinsOverMaxTokens) {
  EXPECT_EQ(chat_ok(chat_body(R"("max_completion_tokens":10)")).opts.max_tokens, 10);
  EXPECT_EQ(chat_ok(chat_body(R"("max_tokens":20,"max_completion_tokens":10)")).opts.max_tokens,
            10);
  EXPECT_EQ(chat_ok(chat_body(R"("max_completion_tokens":10,"max_tokens":20)")).opts.max_tokens,
            10);
  EXPECT_EQ(chat_ok(chat_body(R"("max_tokens":20,"max_completion_tokens":null)")).opts.max_tokens,
            20);
}

TEST(OpenAiChatRequest, IntegersMayBeWrittenAsIntegralFloats) {
  ChatRequest r = chat_ok(chat_body(R"("max_tokens":100.0,"n":2.0,"top_k":5e1)"));
  EXPECT_EQ(r.opts.max_tokens, 100);
  EXPECT_EQ(r.opts.n, 2);
  EXPECT_EQ(r.opts.top_k, 50);
  // The context bound is the server's to check, not the parser's.
  EXPECT_EQ(chat_ok(chat_body(R"("max_tokens":2147483647)")).opts.max_tokens, 2147483647);
}

TEST(OpenAiChatRequest, TopKMinusOneMeansOff) {
  EXPECT_EQ(chat_ok(chat_body(R"("top_k":-1)")).opts.top_k, 0);
  EXPECT_EQ(chat_ok(chat_body(R"("top_k":0)")).opts.top_k, 0);
}

TEST(OpenAiChatRequest, RangeEdgesAreAccepted) {
  ChatRequest lo = chat_ok(chat_body(
      R"("temperature":0,"top_p":1e-9,"min_p":0,"presence_penalty":-2,"frequency_penalty":-2,)"
      R"("n":1,"top_logprobs":0,"logprobs":false,"repetition_penalty":1e-6)"));
  EXPECT_FLOAT_EQ(lo.opts.temperature, 0.0f);
  ChatRequest hi = chat_ok(
      chat_body(R"("temperature":2,"top_p":1,"min_p":1,"presence_penalty":2,"frequency_penalty":2,)"
                R"("n":16,"top_logprobs":20,"logprobs":true,"repetition_penalty":10)"));
  EXPECT_EQ(hi.opts.n, 16);
  EXPECT_EQ(hi.opts.top_logprobs, 20);
}

TEST(OpenAiChatRequest, SeedKeepsTheBitsOfNegativeAndLargeValues) {
  EXPECT_EQ(chat_ok(chat_body(R"("seed":-1)")).opts.seed, UINT64_MAX);
  EXPECT_EQ(chat_ok(chat_body(R"("seed":-9223372036854775808)")).opts.seed, 1ull << 63);
  EXPECT_EQ(chat_ok(chat_body(R"("seed":18446744073709551615)")).opts.seed, UINT64_MAX);
  EXPECT_EQ(chat_ok(chat_body(R"("seed":0)")).opts.seed, 0u);
  EXPECT_EQ(chat_ok(chat_body(R"("seed":7.0)")).opts.seed, 7u);
}

TEST(OpenAiChatRequest, StopForms) {
  EXPECT_EQ(chat_ok(chat_body(R"("stop":"###")")).opts.stop, std::vector<std::string>{"###"});
  EXPECT_TRUE(chat_ok(chat_body(R"("stop":[])")).opts.stop.empty());
  EXPECT_TRUE(chat_ok(chat_body(R"("stop":"")")).opts.stop.empty());  // "" stops nothing
  EXPECT_EQ(chat_ok(chat_body(R"("stop":["a","","b"])")).opts.stop,
            (std::vector<std::string>{"a", "b"}));
  std::string sixteen = "[";
  for (int i = 0; i < 16; ++i) sixteen += (i ? ",\"s" : "\"s") + std::to_string(i) + "\"";
  EXPECT_EQ(chat_ok(chat_body("\"stop\":" + sixteen + "]")).opts.stop.size(), 16u);
  EXPECT_EQ(chat_ok(chat_body("\"stop\":\"" + std::string(1024, 'x') + "\"")).opts.stop.size(), 1u);
}

TEST(OpenAiChatRequest, LogitBiasKeysAndBounds) {
  ChatRequest r = chat_ok(chat_body(R"("logit_bias":{"0":100,"31999":-100,"10":0,"010":1.5})"));
  ASSERT_EQ(r.opts.logit_bias.size(), 3u);  // "10" and "010" name one token: the later wins
  EXPECT_EQ(r.opts.logit_bias[0], (std::pair<int32_t, float>{0, 100.0f}));
  EXPECT_EQ(r.opts.logit_bias[1].first, 10);
  EXPECT_EQ(r.opts.logit_bias[2], (std::pair<int32_t, float>{31999, -100.0f}));
  EXPECT_TRUE(chat_ok(chat_body(R"("logit_bias":{})")).opts.logit_bias.empty());
  // n_vocab <= 0: only the int32 range bounds ids.
  EXPECT_EQ(chat_ok(chat_body(R"("logit_bias":{"999999":1})"), 0).opts.logit_bias.size(), 1u);
}

TEST(OpenAiChatRequest, ResponseFormats) {
  EXPECT_EQ(chat_ok(chat_body(R"("response_format":{"type":"text"})")).opts.response_format.kind,
            ResponseFormat::Kind::kText);
  EXPECT_EQ(
      chat_ok(chat_body(R"("response_format":{"type":"json_object"})")).opts.response_format.kind,
      ResponseFormat::Kind::kJsonObject);
  ChatRequest r = chat_ok(chat_body(
      R"("response_format":{"type":"json_schema","json_schema":{"name":"person","strict":true,)"
      R"("schema":{"type":"object","properties":{"age":{"type":"integer"}},"required":["age"]}}})"));
  const ResponseFormat& f = r.opts.response_format;
  EXPECT_EQ(f.kind, ResponseFormat::Kind::kJsonSchema);
  EXPECT_EQ(f.name, "person");
  EXPECT_EQ(f.schema["properties"]["age"]["type"], "integer");
  EXPECT_EQ(f.schema["required"][0], "age");
  // name and strict are optional here (OpenAI requires name; vLLM does not).
  ChatRequest anon = chat_ok(chat_body(
      R"("response_format":{"type":"json_schema","json_schema":{"schema":{"type":"string"}}})"));
  EXPECT_EQ(anon.opts.response_format.name, "");
  EXPECT_EQ(anon.opts.response_format.schema["type"], "string");
}

TEST(OpenAiChatRequest, StreamOptionsNeedStream) {
  EXPECT_FALSE(chat_ok(chat_body(R"("stream":true)")).opts.include_usage);
  EXPECT_TRUE(chat_ok(chat_body(R"("stream":true,"stream_options":{"include_usage":true})"))
                  .opts.include_usage);
  EXPECT_FALSE(chat_ok(chat_body(R"("stream":true,"stream_options":{})")).opts.include_usage);
  EXPECT_FALSE(chat_ok(chat_body(R"("stream":false,"stream_options":null)")).opts.stream);
}

TEST(OpenAiChatRequest, ContentPartsJoinWithNewline) {
  ChatRequest r = chat_ok(R"({"messages":[{"role":"user","content":[
      {"type":"text","text":"first"},{"type":"text","text":"second"}]}]})");
  EXPECT_EQ(r.messages[0]["content"], "first\nsecond");
  ChatRequest one =
      chat_ok(R"({"messages":[{"role":"system","content":[{"type":"text","text":"only"}]}]})");
  EXPECT_EQ(one.messages[0]["content"], "only");
  ChatRequest none = chat_ok(R"({"messages":[{"role":"user","content":[]}]})");
  EXPECT_EQ(none.messages[0]["content"], "");
}

TEST(OpenAiChatRequest, RolesAndExtraKeysPassThrough) {
  ChatRequest r = chat_ok(R"({"messages":[
      {"role":"developer","content":"Be brief."},
      {"role":"system","content":"You are fennec."},
      {"role":"user","content":"Weather?","name":"alice"},
      {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",
        "function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}}]},
      {"role":"tool","content":"sunny","tool_call_id":"c1"},
      {"role":"assistant"}]})");
  ASSERT_EQ(r.messages.size(), 6u);
  EXPECT_EQ(r.messages[0]["role"], "developer");
  EXPECT_EQ(r.messages[2]["name"], "alice");
  EXPECT_EQ(r.messages[3]["content"], "");  // null content of an assistant message -> ""
  EXPECT_EQ(r.messages[3]["tool_calls"][0]["function"]["name"], "weather");
  EXPECT_EQ(r.messages[4]["tool_call_id"], "c1");
  EXPECT_EQ(r.messages[5]["content"], "");
  for (const json& m : r.messages) EXPECT_TRUE(m["content"].is_string());
}

TEST(OpenAiChatRequest, UnicodeContentSurvives) {
  ChatRequest r =
      chat_ok(R"({"messages":[{"role":"user","content":"h\u00e9llo \ud83e\udd8a \u4e16\u754c"}]})");
  EXPECT_EQ(r.messages[0]["content"], "h\xC3\xA9llo \xF0\x9F\xA6\x8A \xE4\xB8\x96\xE7\x95\x8C");
}

// --- Chat: invalid bodies --------------------------------------------------------------------

TEST(OpenAiChatRequest, ExactMessageForAWrongType) {
  ApiError e = chat_err(chat_body(R"("temperature":"hot")"));
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "temperature");
  EXPECT_EQ(e.message, "'temperature' must be a number between 0 and 2, got \"hot\"");
  json j = e.to_json();
  EXPECT_EQ(j["error"]["param"], "temperature");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
}

TEST(OpenAiChatRequest, InvalidOptions) {
  std::string seventeen = "[";
  for (int i = 0; i < 17; ++i) seventeen += (i ? ",\"s" : "\"s") + std::to_string(i) + "\"";
  seventeen += "]";
  const std::vector<BadCase> cases = {
      {R"("temperature":2.5)", "temperature", "between 0 and 2, got 2.5"},
      {R"("temperature":-0.1)", "temperature", "got -0.1"},
      {R"("temperature":true)", "temperature", "got true"},
      {R"("temperature":[1])", "temperature", "got a list"},
      {R"("top_p":0)", "top_p", "greater than 0 and at most 1, got 0"},
      {R"("top_p":1.01)", "top_p", "got 1.01"},
      {R"("top_k":-2)", "top_k", "'top_k' must be an integer >= 0"},
      {R"("top_k":2.5)", "top_k", "got 2.5"},
      {R"("min_p":1.5)", "min_p", "between 0 and 1"},
      {R"("presence_penalty":2.1)", "presence_penalty", "between -2 and 2"},
      {R"("frequency_penalty":"x")", "frequency_penalty", "between -2 and 2, got \"x\""},
      {R"("repetition_penalty":0)", "repetition_penalty", "greater than 0 and at most 10"},
      {R"("repetition_penalty":11)", "repetition_penalty", "got 11"},
      {R"("max_tokens":0)", "max_tokens", "'max_tokens' must be a positive integer, got 0"},
      {R"("max_tokens":-5)", "max_tokens", "got -5"},
      {R"("max_tokens":1.5)", "max_tokens", "got 1.5"},
      {R"("max_tokens":"100")", "max_tokens", "got \"100\""},
      {R"("max_tokens":3000000000)", "max_tokens", "got 3000000000"},
      {R"("max_tokens":{})", "max_tokens", "got an object"},
      {R"("max_completion_tokens":0)", "max_completion_tokens", "positive integer, got 0"},
      {R"("max_tokens":10,"max_completion_tokens":-1)", "max_completion_tokens", "got -1"},
      {R"("n":0)", "n", "'n' must be an integer between 1 and 16, got 0"},
      {R"("n":17)", "n", "got 17"},
      {R"("seed":1.5)", "seed", "'seed' must be an integer, got 1.5"},
      {R"("seed":"42")", "seed", "got \"42\""},
      {R"("seed":1e30)", "seed", "must be an integer"},
      {R"("stop":5)", "stop", "'stop' must be a string or a list of up to 16 strings, got 5"},
      {R"("stop":["a",1])", "stop", "got an item 1"},
      {R"("stop":)" + seventeen, "stop", "at most 16 strings, got 17"},
      {"\"stop\":\"" + std::string(1025, 'x') + "\"", "stop", "at most 1024 bytes"},
      {R"("logit_bias":[1,2])", "logit_bias", "must be an object mapping token ids"},
      {R"("logit_bias":{"abc":1})", "logit_bias", "keys must be token ids"},
      {R"("logit_bias":{"-1":1})", "logit_bias", "got \"-1\""},
      {R"("logit_bias":{" 5":1})", "logit_bias", "keys must be token ids"},
      {R"("logit_bias":{"32000":1})", "logit_bias", "token id 32000 is out of range"},
      {R"("logit_bias":{"99999999999999":1})", "logit_bias", "out of range"},
      {R"("logit_bias":{"5":101})", "logit_bias", "between -100 and 100, got 101 for token \"5\""},
      {R"("logit_bias":{"5":"up"})", "logit_bias", "got \"up\""},
      {R"("logprobs":"yes")", "logprobs", "'logprobs' must be a boolean, got \"yes\""},
      {R"("logprobs":1)", "logprobs", "must be a boolean"},
      {R"("logprobs":true,"top_logprobs":21)", "top_logprobs", "between 0 and 20, got 21"},
      {R"("logprobs":true,"top_logprobs":-1)", "top_logprobs", "got -1"},
      {R"("top_logprobs":3)", "top_logprobs", "requires 'logprobs' to be true"},
      {R"("logprobs":false,"top_logprobs":3)", "top_logprobs", "requires 'logprobs'"},
      {R"("stream":"true")", "stream", "'stream' must be a boolean"},
      {R"("stream_options":{"include_usage":true})", "stream_options",
       "only allowed when 'stream' is true"},
      {R"("stream":false,"stream_options":{"include_usage":true})", "stream_options",
       "only allowed"},
      {R"("stream":true,"stream_options":true)", "stream_options", "must be an object"},
      {R"("stream":true,"stream_options":{"include_usage":"yes"})", "stream_options",
       "'stream_options.include_usage' must be a boolean"},
      {R"("ignore_eos":1)", "ignore_eos", "must be a boolean"},
      {R"("user":7)", "user", "'user' must be a string, got 7"},
      {R"("model":["a"])", "model", "'model' must be a string, got a list"},
      {R"("add_generation_prompt":"no")", "add_generation_prompt", "must be a boolean"},
      {R"("response_format":"json")", "response_format", "must be an object"},
      {R"("response_format":{})", "response_format", "must be one of \"text\""},
      {R"("response_format":{"type":"xml"})", "response_format", "got \"xml\""},
      {R"("response_format":{"type":"json_schema"})", "response_format",
       "'response_format.json_schema' must be an object"},
      {R"("response_format":{"type":"json_schema","json_schema":{"name":"x"}})", "response_format",
       "'response_format.json_schema.schema' is required"},
      {R"("response_format":{"type":"json_schema","json_schema":{"schema":"str"}})",
       "response_format", "must be a JSON Schema object"},
      {R"("response_format":{"type":"json_schema","json_schema":{"name":5,"schema":{}}})",
       "response_format", "'response_format.json_schema.name' must be a string"},
      {R"("response_format":{"type":"json_schema","json_schema":{"strict":"y","schema":{}}})",
       "response_format", "'response_format.json_schema.strict' must be a boolean"},
  };
  for (const BadCase& c : cases) {
    std::string body = chat_body(c.fields);
    expect_error(chat_err(body), c, body);
  }
}

TEST(OpenAiChatRequest, InvalidMessages) {
  const std::vector<std::pair<std::string, BadCase>> cases = {
      {R"({"model":"m"})", {"", "messages", "Missing required parameter: 'messages'."}},
      {R"({"messages":null})", {"", "messages", "Missing required parameter"}},
      {R"({"messages":{}})",
       {"", "messages", "'messages' must be a list of messages, got an object"}},
      {R"({"messages":"hi"})", {"", "messages", "got \"hi\""}},
      {R"({"messages":[]})", {"", "messages", "at least one message"}},
      {R"({"messages":["hi"]})", {"", "messages[0]", "'messages[0]' must be an object"}},
      {R"({"messages":[{"content":"x"}]})",
       {"", "messages[0].role", "Missing required parameter: 'messages[0].role'."}},
      {R"({"messages":[{"role":"user","content":"a"},{"role":"wizard","content":"x"}]})",
       {"", "messages[1].role", "must be one of \"system\", \"user\""}},
      {R"({"messages":[{"role":5,"content":"x"}]})", {"", "messages[0].role", "got 5"}},
      {R"({"messages":[{"role":"function","content":"x"}]})",
       {"", "messages[0].role", "got \"function\""}},
      {R"({"messages":[{"role":"user"}]})",
       {"", "messages[0].content", "Missing required parameter: 'messages[0].content'"}},
      {R"({"messages":[{"role":"system","content":null}]})",
       {"", "messages[0].content", "a system message needs content"}},
      {R"({"messages":[{"role":"user","content":5}]})",
       {"", "messages[0].content", "must be a string or a list of content parts, got 5"}},
      {R"({"messages":[{"role":"user","content":{"type":"text"}}]})",
       {"", "messages[0].content", "got an object"}},
      {R"({"messages":[{"role":"user","content":["hi"]}]})",
       {"", "messages[0].content[0]", "must be an object"}},
      {R"({"messages":[{"role":"user","content":[{"text":"hi"}]}]})",
       {"", "messages[0].content[0].type", "must be a string such as \"text\""}},
      {R"({"messages":[{"role":"user","content":[{"type":"text","text":"a"},)"
       R"({"type":"image_url","image_url":{"url":"http://x/y.png"}}]}]})",
       {"", "messages[0].content[1].type",
        "\"image_url\" in 'messages[0].content[1]' is not supported"}},
      {R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})",
       {"", "messages[0].content[0].text", "'messages[0].content[0].text' must be a string"}},
      {R"({"messages":[{"role":"user","content":[{"type":"text","text":7}]}]})",
       {"", "messages[0].content[0].text", "got 7"}},
  };
  for (const auto& [body, c] : cases) expect_error(chat_err(body), c, body);
}

TEST(OpenAiChatRequest, LongOffendingValuesAreClippedOnACharBoundary) {
  std::string long_value(500, 'x');
  long_value.replace(63, 2, "\xC3\xA9");  // é straddles the 64-byte cut
  ApiError e = chat_err(chat_body("\"temperature\":\"" + long_value + "\""));
  EXPECT_LT(e.message.size(), 200u) << e.message;
  EXPECT_NE(e.message.find("...\""), std::string::npos) << e.message;
  EXPECT_NO_THROW(e.to_json().dump());
}

// --- Completions -----------------------------------------------------------------------------

TEST(OpenAiCompletionRequest, PromptForms) {
  CompletionRequest s = completion_ok(completion_body());
  EXPECT_EQ(s.prompts, std::vector<std::string>{"Once upon a time"});
  EXPECT_TRUE(s.prompt_tokens.empty());

  CompletionRequest empty = completion_ok(R"({"prompt":""})");
  EXPECT_EQ(empty.prompts, std::vector<std::string>{""});

  CompletionRequest list = completion_ok(R"({"prompt":["a","","c"]})");
  EXPECT_EQ(list.prompts, (std::vector<std::string>{"a", "", "c"}));

  CompletionRequest ids = completion_ok(R"({"prompt":[1,2,31999]})");
  EXPECT_TRUE(ids.prompts.empty());
  ASSERT_EQ(ids.prompt_tokens.size(), 1u);
  EXPECT_EQ(ids.prompt_tokens[0], (std::vector<int32_t>{1, 2, 31999}));

  CompletionRequest batch = completion_ok(R"({"prompt":[[5],[6,7.0]]})");
  ASSERT_EQ(batch.prompt_tokens.size(), 2u);
  EXPECT_EQ(batch.prompt_tokens[1], (std::vector<int32_t>{6, 7}));
}

TEST(OpenAiCompletionRequest, OptionsAndLegacyLogprobs) {
  CompletionRequest r = completion_ok(completion_body(
      R"("max_tokens":16,"temperature":0,"logprobs":3,"echo":true,"suffix":"","n":2,)"
      R"("stop":"\n","stream":true,"stream_options":{"include_usage":true},"seed":-2)"));
  EXPECT_EQ(r.opts.max_tokens, 16);
  EXPECT_FLOAT_EQ(r.opts.temperature, 0.0f);
  EXPECT_TRUE(r.opts.logprobs);
  EXPECT_EQ(r.opts.top_logprobs, 3);
  EXPECT_TRUE(r.echo);
  EXPECT_EQ(r.suffix, "");
  EXPECT_EQ(r.opts.n, 2);
  EXPECT_EQ(r.opts.stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r.opts.include_usage);
  EXPECT_EQ(r.opts.seed, UINT64_MAX - 1);

  CompletionRequest zero = completion_ok(completion_body(R"("logprobs":0)"));
  EXPECT_TRUE(zero.opts.logprobs);  // the sampled token's logprob, no alternatives
  EXPECT_EQ(zero.opts.top_logprobs, 0);
  CompletionRequest none = completion_ok(completion_body(R"("logprobs":null,"suffix":null)"));
  EXPECT_FALSE(none.opts.logprobs);
  EXPECT_EQ(completion_ok(completion_body(R"("logprobs":20)")).opts.top_logprobs, 20);
  // Chat-only fields mean nothing here.
  EXPECT_EQ(
      completion_ok(completion_body(R"("max_completion_tokens":0,"messages":5)")).opts.max_tokens,
      -1);
}

TEST(OpenAiCompletionRequest, InvalidBodies) {
  std::string too_many = R"({"prompt":[)";
  for (int i = 0; i < 2049; ++i) too_many += i ? ",\"p\"" : "\"p\"";
  too_many += "]}";
  const std::vector<std::pair<std::string, BadCase>> cases = {
      {R"({"model":"m"})", {"", "prompt", "Missing required parameter: 'prompt'."}},
      {R"({"prompt":null})", {"", "prompt", "Missing required parameter"}},
      {R"({"prompt":[]})", {"", "prompt", "'prompt' must not be an empty list"}},
      {R"({"prompt":5})", {"", "prompt", "'prompt' must be a string, a list of strings"}},
      {R"({"prompt":{"text":"a"}})", {"", "prompt", "got an object"}},
      {R"({"prompt":[true]})", {"", "prompt", "item 0 is true"}},
      {R"({"prompt":[[]]})",
       {"", "prompt", "must not hold an empty list of token ids (prompt 0, "}},
      {R"({"prompt":[1,"a"]})", {"", "prompt", "got \"a\" at position 1"}},
      {R"({"prompt":[1.5]})", {"", "prompt", "got 1.5 at position 0"}},
      {R"({"prompt":["a",1]})", {"", "prompt", "item 1 is 1, unlike item 0"}},
      {R"({"prompt":[[1],"a"]})", {"", "prompt", "item 1 is \"a\""}},
      {R"({"prompt":[1,-1]})", {"", "prompt", "token id -1 is out of range"}},
      {R"({"prompt":[[1],[2,32000]]})",
       {"", "prompt",
        "token id 32000 is out of range: the model's vocabulary has 32000 tokens "
        "(ids 0 to 31999) at prompt 1, position 1"}},
      {too_many, {"", "prompt", "at most 2048 prompts, got 2049"}},
      {completion_body(R"("logprobs":21)"),
       {"", "logprobs", "'logprobs' must be an integer between 0 and 20, got 21"}},
      {completion_body(R"("logprobs":true)"), {"", "logprobs", "got true"}},
      {completion_body(R"("echo":"yes")"), {"", "echo", "'echo' must be a boolean"}},
      {completion_body(R"("suffix":5)"), {"", "suffix", "'suffix' must be a string"}},
      {completion_body(R"("suffix":" world")"), {"", "suffix", "'suffix' is not supported"}},
      {completion_body(R"("temperature":3)"), {"", "temperature", "between 0 and 2, got 3"}},
      {completion_body(R"("stream_options":{"include_usage":true})"),
       {"", "stream_options", "only allowed when 'stream' is true"}},
  };
  for (const auto& [body, c] : cases) expect_error(completion_err(body), c, body);
}

TEST(OpenAiCompletionRequest, TokenIdsUnboundedWithoutAVocabulary) {
  CompletionRequest r = completion_ok(R"({"prompt":[2147483647]})", 0);
  EXPECT_EQ(r.prompt_tokens[0][0], 2147483647);
  ApiError e = completion_err(R"({"prompt":[2147483648]})", 0);
  EXPECT_EQ(e.param, "prompt");
}

// --- Mutated bodies: never a crash, always a request or an error ----------------------------

void check_options(const GenerationOptions& o, int n_vocab, const std::string& body) {
  EXPECT_TRUE(o.max_tokens == -1 || o.max_tokens >= 1) << body;
  EXPECT_TRUE(o.temperature >= 0 && o.temperature <= 2) << body;
  EXPECT_TRUE(o.top_p > 0 && o.top_p <= 1) << body;
  EXPECT_GE(o.top_k, 0) << body;
  EXPECT_TRUE(o.n >= 1 && o.n <= 16) << body;
  EXPECT_TRUE(o.top_logprobs >= 0 && o.top_logprobs <= 20) << body;
  EXPECT_LE(o.stop.size(), 16u) << body;
  for (const auto& [id, bias] : o.logit_bias) {
    EXPECT_TRUE(id >= 0 && (n_vocab <= 0 || id < n_vocab)) << body;
    EXPECT_TRUE(bias >= -100 && bias <= 100) << body;
  }
  EXPECT_FALSE(o.include_usage && !o.stream) << body;
}

std::string mutate(std::string s, std::mt19937& rng) {
  static const std::vector<std::string> kTokens = {"null",
                                                   "[",
                                                   "]",
                                                   "{",
                                                   "}",
                                                   ",",
                                                   ":",
                                                   "\"",
                                                   "\\",
                                                   "-1",
                                                   "0",
                                                   "1e999",
                                                   "2147483648",
                                                   "1.5",
                                                   "true",
                                                   "\"\"",
                                                   "\\u0000",
                                                   "\\ud800",
                                                   "\xff",
                                                   "\xC3",
                                                   "[[[[",
                                                   "{\"a\":",
                                                   "\"role\"",
                                                   "\"content\"",
                                                   "\"prompt\"",
                                                   "\"stream_options\"",
                                                   "\"logit_bias\"",
                                                   "18446744073709551616"};
  int n_mutations = 1 + static_cast<int>(rng() % 4);
  for (int m = 0; m < n_mutations; ++m) {
    size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
    switch (rng() % 6) {
      case 0:  // flip one byte to anything
        if (!s.empty()) s[rng() % s.size()] = static_cast<char>(rng() % 256);
        break;
      case 1:  // truncate
        s.resize(pos);
        break;
      case 2:  // delete a span
        s.erase(pos, rng() % 8);
        break;
      case 3:  // insert a JSON-ish token
        s.insert(pos, kTokens[rng() % kTokens.size()]);
        break;
      case 4: {  // duplicate a span
        size_t len = std::min<size_t>(rng() % 24, s.size() - std::min(pos, s.size()));
        s.insert(pos, s.substr(pos, len));
        break;
      }
      default:  // flip one bit
        if (!s.empty()) s[rng() % s.size()] ^= static_cast<char>(1 << (rng() % 8));
        break;
    }
  }
  return s;
}

TEST(OpenAiRequestFuzz, MutatedBodiesParseOrFailCleanly) {
  const std::vector<std::string> chat_seeds = {
      chat_body(),
      chat_body(R"("max_tokens":64,"temperature":0.7,"top_p":0.9,"stop":["a","b"],"n":2,)"
                R"("logit_bias":{"5":-100},"logprobs":true,"top_logprobs":2,"seed":-1)"),
      chat_body(
          R"("stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":5)"),
      chat_body(R"("response_format":{"type":"json_schema","json_schema":{"name":"p",)"
                R"("schema":{"type":"object","properties":{"a":{"type":"string"}}}}})"),
      R"({"messages":[{"role":"system","content":[{"type":"text","text":"s"}]},)"
      R"({"role":"assistant","content":null,"tool_calls":[{"id":"1"}]},)"
      R"({"role":"tool","content":"r","tool_call_id":"1"}]})",
  };
  const std::vector<std::string> completion_seeds = {
      completion_body(),
      R"({"prompt":["a","b"],"logprobs":3,"echo":true,"max_tokens":3})",
      R"({"prompt":[1,2,3],"suffix":"","top_k":-1})",
      R"({"prompt":[[1,2],[3]],"n":4,"stop":"x"})",
  };
  std::mt19937 rng(20240611);
  const int kVocabs[] = {0, 100, kVocab};
  int parsed = 0;
  int failed = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    int n_vocab = kVocabs[rng() % 3];
    bool chat = rng() % 2 == 0;
    const std::vector<std::string>& seeds = chat ? chat_seeds : completion_seeds;
    std::string body = mutate(seeds[rng() % seeds.size()], rng);
    auto check_error = [&](const ApiError& e) {
      ++failed;
      EXPECT_EQ(e.status, 400) << body;
      EXPECT_FALSE(e.message.empty()) << body;
      EXPECT_NO_THROW(e.to_json().dump()) << body;
    };
    if (chat) {
      auto r = parse_chat_request(body, n_vocab);
      if (const ApiError* e = std::get_if<ApiError>(&r)) {
        check_error(*e);
      } else {
        ++parsed;
        const ChatRequest& req = std::get<ChatRequest>(r);
        check_options(req.opts, n_vocab, body);
        ASSERT_TRUE(req.messages.is_array()) << body;
        EXPECT_FALSE(req.messages.empty()) << body;
        for (const json& m : req.messages) EXPECT_TRUE(m["content"].is_string()) << body;
        EXPECT_NO_THROW(req.messages.dump()) << body;
      }
    } else {
      auto r = parse_completion_request(body, n_vocab);
      if (const ApiError* e = std::get_if<ApiError>(&r)) {
        check_error(*e);
      } else {
        ++parsed;
        const CompletionRequest& req = std::get<CompletionRequest>(r);
        check_options(req.opts, n_vocab, body);
        EXPECT_NE(req.prompts.empty(), req.prompt_tokens.empty()) << body;
        for (const auto& ids : req.prompt_tokens) {
          EXPECT_FALSE(ids.empty()) << body;
          for (int32_t id : ids) EXPECT_TRUE(id >= 0 && (n_vocab <= 0 || id < n_vocab)) << body;
        }
        EXPECT_TRUE(req.suffix.empty()) << body;
      }
    }
    if (::testing::Test::HasFailure()) break;  // one broken body is enough to report
  }
  // Both outcomes must occur, or the mutations are not exercising the parser.
  EXPECT_GT(parsed, 1000);
  EXPECT_GT(failed, 1000);
}

}  // namespace
}  // namespace fennec::server
