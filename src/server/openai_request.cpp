#include "server/openai_request.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <map>
#include <string_view>

#include "tokenizer/utf8.h"

namespace fennec::server {

using nlohmann::json;

namespace {

namespace utf8 = fennec::tokenizer::utf8;

constexpr int kMaxNestingDepth = 256;  // deeper bodies are refused before anything walks them
constexpr size_t kMaxStops = 16;
constexpr size_t kMaxStopBytes = 1024;
constexpr size_t kMaxPrompts = 2048;  // entries of a list prompt (each one is a batch entry)
constexpr int kMaxN = 16;
constexpr int kMaxTopLogprobs = 20;
constexpr double kMaxLogitBias = 100.0;
constexpr size_t kShownStringBytes = 64;  // how much of an offending string a message quotes
constexpr size_t kShownParseErrorBytes = 240;

// At most max_bytes of s, cut on a UTF-8 boundary ("..." marks a cut), invalid bytes replaced: a
// message built from request bytes must stay valid UTF-8 to be sent back as JSON.
std::string clip(std::string_view s, size_t max_bytes) {
  if (s.size() <= max_bytes) return utf8::lossy(s);
  size_t end = 0;
  while (end < s.size()) {
    size_t len = utf8::valid_seq_len(s, end);
    if (len == 0) len = 1;
    if (end + len > max_bytes) break;
    end += len;
  }
  return utf8::lossy(s.substr(0, end)) + "...";
}

// How a message shows an offending value: scalars as JSON, containers by kind.
std::string show(const json& v) {
  switch (v.type()) {
    case json::value_t::string:
      return json(clip(v.get_ref<const std::string&>(), kShownStringBytes)).dump();
    case json::value_t::array:
      return "a list";
    case json::value_t::object:
      return "an object";
    default:
      return clip(v.dump(-1, ' ', false, json::error_handler_t::replace), kShownStringBytes);
  }
}

std::string as_json_string(std::string_view s) { return json(clip(s, kShownStringBytes)).dump(); }

// An integer value: JSON integers, and floats with an integral value (100.0), as pydantic does.
std::optional<int64_t> integer_value(const json& v) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    // 2^63 is exact in double; [-2^63, 2^63) converts without overflow.
    if (!std::isfinite(d) || d != std::trunc(d) || d < -9223372036854775808.0 ||
        d >= 9223372036854775808.0) {
      return std::nullopt;
    }
    return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

// True if brackets nest deeper than `limit` outside strings. Scanned before parsing because
// copying and dumping a json value recurse once per level.
bool nests_deeper_than(std::string_view s, int limit) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

// Collects nlohmann's description of the first syntax error ("parse error at line 1, column 9:
// ..."); the DOM parse with exceptions off only says that there was one.
class ParseErrorSax final : public nlohmann::json_sax<json> {
 public:
  std::string message;

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const json::exception& ex) override {
    message = ex.what();
    return false;
  }
};

std::string describe_parse_error(const std::string& body) {
  ParseErrorSax sax;
  json::sax_parse(body, &sax);
  std::string_view m = sax.message;
  // Drop the "[json.exception.parse_error.101] " tag: it means nothing to an API client.
  if (!m.empty() && m.front() == '[') {
    size_t close = m.find("] ");
    if (close != std::string_view::npos) m.remove_prefix(close + 2);
  }
  if (m.empty()) m = "syntax error";
  return clip(m, kShownParseErrorBytes);
}

ApiError bad_request(std::string param, std::string message) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  return e;
}

// Reads fields of the request object. The first error wins; every read after it is a no-op, so
// the parse reads straight through and checks ok() at the end.
class Reader {
 public:
  Reader(const json& body, int n_vocab) : body_(body), n_vocab_(n_vocab) {}

  bool ok() const { return !error_; }
  ApiError take_error() { return std::move(*error_); }
  const json& body() const { return body_; }
  int n_vocab() const { return n_vocab_; }

  void fail(std::string param, std::string message) {
    if (!error_) error_ = bad_request(std::move(param), std::move(message));
  }

  // The field, or nullptr when absent or null: null means "the default", as in OpenAI's API.
  const json* find(const json& obj, const char* name) const {
    if (!ok()) return nullptr;
    auto it = obj.find(name);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
  }
  const json* find(const char* name) const { return find(body_, name); }

  void must_be(const char* name, const char* what, const json& got) {
    fail(name, std::string("'") + name + "' must be " + what + ", got " + show(got));
  }

  void read_string(const char* name, std::string& out) {
    if (const json* v = find(name)) {
      if (v->is_string()) {
        out = v->get<std::string>();
      } else {
        must_be(name, "a string", *v);
      }
    }
  }

  void read_bool(const char* name, bool& out) {
    if (const json* v = find(name)) {
      if (v->is_boolean()) {
        out = v->get<bool>();
      } else {
        must_be(name, "a boolean", *v);
      }
    }
  }

  // A number in [lo, hi], or (lo, hi] when lo_open; `what` words the range for the message.
  void read_float(const char* name, float& out, double lo, double hi, bool lo_open,
                  const char* what) {
    if (const json* v = find(name)) {
      double d = v->is_number() ? v->get<double>() : std::nan("");
      bool in_range = (lo_open ? d > lo : d >= lo) && d <= hi;  // false for NaN
      if (in_range) {
        out = static_cast<float>(d);
      } else {
        must_be(name, what, *v);
      }
    }
  }

  // An integer in [lo, hi]. Returns whether the field was present and valid.
  bool read_int(const char* name, int& out, int64_t lo, int64_t hi, const char* what) {
    if (const json* v = find(name)) {
      std::optional<int64_t> i = integer_value(*v);
      if (i && *i >= lo && *i <= hi) {
        out = static_cast<int>(*i);
        return true;
      }
      must_be(name, what, *v);
    }
    return false;
  }

 private:
  const json& body_;
  int n_vocab_;
  std::optional<ApiError> error_;
};

std::string vocab_range_message(const std::string& param, int64_t id, int n_vocab) {
  return "'" + param + "' token id " + std::to_string(id) +
         " is out of range: the model's vocabulary has " + std::to_string(n_vocab) +
         " tokens (ids 0 to " + std::to_string(n_vocab - 1) + ")";
}

bool id_in_vocab(int64_t id, int n_vocab) {
  return id >= 0 && id <= INT32_MAX && (n_vocab <= 0 || id < n_vocab);
}

void read_seed(Reader& r, GenerationOptions& o) {
  const json* v = r.find("seed");
  if (!v) return;
  if (v->is_number_unsigned()) {
    o.seed = v->get<uint64_t>();
  } else if (v->is_number_integer()) {
    o.seed = static_cast<uint64_t>(v->get<int64_t>());  // negative: two's complement bits
  } else if (std::optional<int64_t> i = integer_value(*v)) {
    o.seed = static_cast<uint64_t>(*i);  // an integral float below 2^63
  } else if (v->is_number_float() && v->get<double>() >= 9223372036854775808.0 &&
             v->get<double>() < 18446744073709551616.0 &&
             v->get<double>() == std::trunc(v->get<double>())) {
    o.seed = static_cast<uint64_t>(v->get<double>());  // an integral float in [2^63, 2^64)
  } else {
    r.must_be("seed", "an integer", *v);
  }
}

void read_top_k(Reader& r, GenerationOptions& o) {
  int top_k = 0;
  if (r.read_int("top_k", top_k, -1, INT32_MAX, "an integer >= 0 (0 or -1: no limit)")) {
    o.top_k = top_k < 0 ? 0 : top_k;
  }
}

void read_stop(Reader& r, GenerationOptions& o) {
  const json* v = r.find("stop");
  if (!v) return;
  constexpr const char* kWhat = "a string or a list of up to 16 strings";
  auto add = [&](const std::string& s) {
    if (s.size() > kMaxStopBytes) {
      r.fail("stop", "'stop' strings must be at most " + std::to_string(kMaxStopBytes) +
                         " bytes long, got one of " + std::to_string(s.size()) + " bytes");
      return;
    }
    if (!s.empty()) o.stop.push_back(s);  // "" could never be matched usefully: no stop at all
  };
  if (v->is_string()) {
    add(v->get_ref<const std::string&>());
    return;
  }
  if (!v->is_array()) {
    r.must_be("stop", kWhat, *v);
    return;
  }
  if (v->size() > kMaxStops) {
    r.fail("stop", "'stop' may hold at most " + std::to_string(kMaxStops) + " strings, got " +
                       std::to_string(v->size()));
    return;
  }
  for (const json& item : *v) {
    if (!item.is_string()) {
      r.fail("stop", std::string("'stop' must be ") + kWhat + ", got an item " + show(item));
      return;
    }
    add(item.get_ref<const std::string&>());
  }
}

// Keys are decimal token ids ("50256"); bias in [-100, 100]. A later key naming the same id
// ("07" after "7") replaces the earlier one.
void read_logit_bias(Reader& r, GenerationOptions& o) {
  const json* v = r.find("logit_bias");
  if (!v) return;
  if (!v->is_object()) {
    r.must_be("logit_bias", "an object mapping token ids to biases between -100 and 100", *v);
    return;
  }
  std::map<int32_t, float> biases;
  for (auto it = v->begin(); it != v->end(); ++it) {
    const std::string& key = it.key();
    int64_t id = -1;
    bool digits = !key.empty() && key.size() <= 18 &&
                  key.find_first_not_of("0123456789") == std::string::npos;
    if (digits) std::from_chars(key.data(), key.data() + key.size(), id);
    if (!digits) {
      r.fail("logit_bias", "'logit_bias' keys must be token ids written as decimal strings, got " +
                               as_json_string(key));
      return;
    }
    if (!id_in_vocab(id, r.n_vocab())) {
      r.fail("logit_bias", vocab_range_message("logit_bias", id, r.n_vocab()));
      return;
    }
    const json& bias = it.value();
    double b = bias.is_number() ? bias.get<double>() : std::nan("");
    if (!(b >= -kMaxLogitBias && b <= kMaxLogitBias)) {
      r.fail("logit_bias", "'logit_bias' values must be numbers between -100 and 100, got " +
                               show(bias) + " for token " + as_json_string(key));
      return;
    }
    biases[static_cast<int32_t>(id)] = static_cast<float>(b);
  }
  o.logit_bias.assign(biases.begin(), biases.end());
}

void read_stream(Reader& r, GenerationOptions& o) {
  r.read_bool("stream", o.stream);
  const json* so = r.find("stream_options");
  if (!so) return;
  if (!so->is_object()) {
    r.must_be("stream_options", "an object such as {\"include_usage\": true}", *so);
    return;
  }
  if (!o.stream) {
    r.fail("stream_options", "'stream_options' is only allowed when 'stream' is true");
    return;
  }
  if (const json* iu = r.find(*so, "include_usage")) {
    if (iu->is_boolean()) {
      o.include_usage = iu->get<bool>();
    } else {
      r.fail("stream_options",
             "'stream_options.include_usage' must be a boolean, got " + show(*iu));
    }
  }
}

void read_response_format(Reader& r, GenerationOptions& o) {
  const json* v = r.find("response_format");
  if (!v) return;
  constexpr const char* kParam = "response_format";
  if (!v->is_object()) {
    r.must_be(kParam, "an object such as {\"type\": \"json_object\"}", *v);
    return;
  }
  const json* type = r.find(*v, "type");
  std::string t = type && type->is_string() ? type->get<std::string>() : "";
  if (t == "text") {
    o.response_format.kind = ResponseFormat::Kind::kText;
  } else if (t == "json_object") {
    o.response_format.kind = ResponseFormat::Kind::kJsonObject;
  } else if (t == "json_schema") {
    const json* js = r.find(*v, "json_schema");
    if (!js || !js->is_object()) {
      r.fail(kParam,
             "'response_format.json_schema' must be an object {\"name\": ..., \"schema\": {...}} "
             "when 'response_format.type' is \"json_schema\"" +
                 (js ? ", got " + show(*js) : std::string()));
      return;
    }
    const json* name = r.find(*js, "name");
    if (name && !name->is_string()) {
      r.fail(kParam, "'response_format.json_schema.name' must be a string, got " + show(*name));
      return;
    }
    const json* strict = r.find(*js, "strict");
    if (strict && !strict->is_boolean()) {
      r.fail(kParam,
             "'response_format.json_schema.strict' must be a boolean, got " + show(*strict));
      return;
    }
    const json* schema = r.find(*js, "schema");
    if (!schema) {
      r.fail(kParam,
             "'response_format.json_schema.schema' is required when "
             "'response_format.type' is \"json_schema\"");
      return;
    }
    if (!schema->is_object()) {
      r.fail(kParam, "'response_format.json_schema.schema' must be a JSON Schema object, got " +
                         show(*schema));
      return;
    }
    o.response_format.kind = ResponseFormat::Kind::kJsonSchema;
    o.response_format.schema = *schema;
    o.response_format.name = name ? name->get<std::string>() : "";
  } else {
    r.fail(
        kParam,
        "'response_format.type' must be one of \"text\", \"json_object\", \"json_schema\", got " +
            (type ? show(*type) : std::string("nothing")));
  }
}

// Fields both endpoints share. max_tokens, logprobs and top_logprobs differ: read by the caller.
void read_common(Reader& r, GenerationOptions& o) {
  r.read_string("model", o.model);
  r.read_int("max_tokens", o.max_tokens, 1, INT32_MAX, "a positive integer");
  r.read_float("temperature", o.temperature, 0, 2, false, "a number between 0 and 2");
  r.read_float("top_p", o.top_p, 0, 1, true, "a number greater than 0 and at most 1");
  read_top_k(r, o);
  r.read_float("min_p", o.min_p, 0, 1, false, "a number between 0 and 1");
  r.read_float("presence_penalty", o.presence_penalty, -2, 2, false, "a number between -2 and 2");
  r.read_float("frequency_penalty", o.frequency_penalty, -2, 2, false, "a number between -2 and 2");
  r.read_float("repetition_penalty", o.repetition_penalty, 0, 10, true,
               "a number greater than 0 and at most 10");
  read_seed(r, o);
  read_stop(r, o);
  r.read_int("n", o.n, 1, kMaxN, "an integer between 1 and 16");
  read_logit_bias(r, o);
  read_stream(r, o);
  r.read_bool("ignore_eos", o.ignore_eos);
  r.read_string("user", o.user);
  read_response_format(r, o);
}

// A message's content as one string: a string as is; a list of text parts joined with "\n" (as
// vLLM joins them); null or absent only for assistant messages (one carrying tool_calls) -> "".
void read_content(Reader& r, const json& msg, const std::string& path, const std::string& role,
                  std::string& out) {
  const json* c = r.find(msg, "content");
  std::string param = path + ".content";
  if (!c) {
    if (role != "assistant") {
      r.fail(param,
             "Missing required parameter: '" + param + "' (a " + role + " message needs content).");
    }
    return;
  }
  if (c->is_string()) {
    out = c->get<std::string>();
    return;
  }
  if (!c->is_array()) {
    r.fail(param, "'" + param + "' must be a string or a list of content parts, got " + show(*c));
    return;
  }
  for (size_t j = 0; j < c->size(); ++j) {
    const json& part = (*c)[j];
    std::string part_path = param + "[" + std::to_string(j) + "]";
    if (!part.is_object()) {
      r.fail(part_path, "'" + part_path +
                            "' must be an object such as "
                            "{\"type\": \"text\", \"text\": \"...\"}, got " +
                            show(part));
      return;
    }
    const json* type = r.find(part, "type");
    if (!type || !type->is_string()) {
      r.fail(part_path + ".type", "'" + part_path + ".type' must be a string such as \"text\"" +
                                      (type ? ", got " + show(*type) : std::string()));
      return;
    }
    if (type->get_ref<const std::string&>() != "text") {
      r.fail(part_path + ".type", "content part type " + show(*type) + " in '" + part_path +
                                      "' is not supported: fennec serves text-only models, "
                                      "send parts of type \"text\"");
      return;
    }
    const json* text = r.find(part, "text");
    if (!text || !text->is_string()) {
      r.fail(part_path + ".text", "'" + part_path + ".text' must be a string" +
                                      (text ? ", got " + show(*text) : std::string()));
      return;
    }
    if (j > 0) out += '\n';
    out += text->get_ref<const std::string&>();
  }
}

void read_messages(Reader& r, json& out) {
  const json* v = r.find("messages");
  if (!v) {
    r.fail("messages", "Missing required parameter: 'messages'.");
    return;
  }
  if (!v->is_array()) {
    r.must_be("messages", "a list of messages", *v);
    return;
  }
  if (v->empty()) {
    r.fail("messages", "'messages' must contain at least one message");
    return;
  }
  out = json::array();
  for (size_t i = 0; i < v->size() && r.ok(); ++i) {
    const json& msg = (*v)[i];
    std::string path = "messages[" + std::to_string(i) + "]";
    if (!msg.is_object()) {
      r.fail(path, "'" + path + "' must be an object {\"role\": ..., \"content\": ...}, got " +
                       show(msg));
      return;
    }
    const json* role = r.find(msg, "role");
    if (!role) {
      r.fail(path + ".role", "Missing required parameter: '" + path + ".role'.");
      return;
    }
    static constexpr std::string_view kRoles[] = {"system", "user", "assistant", "developer",
                                                  "tool"};
    bool known = false;
    if (role->is_string()) {
      for (std::string_view k : kRoles) known = known || role->get_ref<const std::string&>() == k;
    }
    if (!known) {
      r.fail(path + ".role", "'" + path +
                                 ".role' must be one of \"system\", \"user\", "
                                 "\"assistant\", \"developer\", \"tool\", got " +
                                 show(*role));
      return;
    }
    const std::string& role_name = role->get_ref<const std::string&>();
    std::string content;
    read_content(r, msg, path, role_name, content);
    json m = msg;  // other keys (name, tool_calls, tool_call_id) go to the template as sent
    m["content"] = std::move(content);
    out.push_back(std::move(m));
  }
}

// prompt: "text" | ["text", ...] | [id, ...] | [[id, ...], ...].
void read_prompt(Reader& r, CompletionRequest& req) {
  const json* v = r.find("prompt");
  if (!v) {
    r.fail("prompt", "Missing required parameter: 'prompt'.");
    return;
  }
  constexpr const char* kWhat =
      "a string, a list of strings, a list of token ids or a list of lists of token ids";
  if (v->is_string()) {
    req.prompts.push_back(v->get<std::string>());
    return;
  }
  if (!v->is_array()) {
    r.must_be("prompt", kWhat, *v);
    return;
  }
  if (v->empty()) {
    r.fail("prompt", "'prompt' must not be an empty list");
    return;
  }
  // Reads a list of token ids into ids; `prompt` is its index in a batch, -1 if it is the only one.
  auto read_ids = [&](const json& list, int prompt, std::vector<int32_t>& ids) {
    std::string which = prompt < 0 ? "" : "prompt " + std::to_string(prompt) + ", ";
    if (list.empty()) {
      r.fail("prompt", "'prompt' must not hold an empty list of token ids (" + which +
                           "a prompt needs at least one token)");
      return;
    }
    ids.reserve(list.size());
    for (size_t k = 0; k < list.size(); ++k) {
      std::string where = " at " + which + "position " + std::to_string(k);
      std::optional<int64_t> id = integer_value(list[k]);
      if (!id) {
        r.fail("prompt",
               std::string("'prompt' must be ") + kWhat + ", got " + show(list[k]) + where);
        return;
      }
      if (!id_in_vocab(*id, r.n_vocab())) {
        r.fail("prompt", vocab_range_message("prompt", *id, r.n_vocab()) + where);
        return;
      }
      ids.push_back(static_cast<int32_t>(*id));
    }
  };
  const json& first = v->front();
  if (first.is_number()) {
    req.prompt_tokens.emplace_back();
    read_ids(*v, -1, req.prompt_tokens.back());
    return;
  }
  if (v->size() > kMaxPrompts) {
    r.fail("prompt", "'prompt' may hold at most " + std::to_string(kMaxPrompts) + " prompts, got " +
                         std::to_string(v->size()));
    return;
  }
  bool strings = first.is_string();
  if (!strings && !first.is_array()) {
    r.fail("prompt", std::string("'prompt' must be ") + kWhat + "; item 0 is " + show(first));
    return;
  }
  for (size_t i = 0; i < v->size() && r.ok(); ++i) {
    const json& item = (*v)[i];
    if (strings && item.is_string()) {
      req.prompts.push_back(item.get<std::string>());
    } else if (!strings && item.is_array()) {
      req.prompt_tokens.emplace_back();
      read_ids(item, static_cast<int>(i), req.prompt_tokens.back());
    } else {
      r.fail("prompt", std::string("'prompt' must be ") + kWhat + "; item " + std::to_string(i) +
                           " is " + show(item) + ", unlike item 0");
    }
  }
}

// Parses the body into an object, or says why it is not one.
std::optional<ApiError> parse_object(const std::string& body, json& out) {
  if (nests_deeper_than(body, kMaxNestingDepth)) {
    return bad_request(
        "", "invalid JSON: nested deeper than " + std::to_string(kMaxNestingDepth) + " levels");
  }
  out = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (out.is_discarded()) return bad_request("", "invalid JSON: " + describe_parse_error(body));
  if (!out.is_object()) {
    return bad_request("", "the request body must be a JSON object, got " + show(out));
  }
  return std::nullopt;
}

}  // namespace

json ApiError::to_json() const {
  auto text_or_null = [](const std::string& s) {
    return s.empty() ? json() : json(utf8::lossy(s));
  };
  json err = json::object();
  err["message"] = utf8::lossy(message);
  err["type"] = utf8::lossy(type);
  err["param"] = text_or_null(param);
  err["code"] = text_or_null(code);
  json body = json::object();
  body["error"] = std::move(err);
  return body;
}

std::variant<ChatRequest, ApiError> parse_chat_request(const std::string& body, int n_vocab) {
  json doc;
  if (std::optional<ApiError> e = parse_object(body, doc)) return std::move(*e);
  Reader r(doc, n_vocab);
  ChatRequest req;
  read_messages(r, req.messages);
  read_common(r, req.opts);
  // max_completion_tokens replaced max_tokens in OpenAI's chat API; it wins when both are sent.
  int max_completion_tokens = -1;
  if (r.read_int("max_completion_tokens", max_completion_tokens, 1, INT32_MAX,
                 "a positive integer")) {
    req.opts.max_tokens = max_completion_tokens;
  }
  r.read_bool("logprobs", req.opts.logprobs);
  r.read_int("top_logprobs", req.opts.top_logprobs, 0, kMaxTopLogprobs,
             "an integer between 0 and 20");
  if (r.ok() && req.opts.top_logprobs > 0 && !req.opts.logprobs) {
    r.fail("top_logprobs", "'top_logprobs' requires 'logprobs' to be true");
  }
  r.read_bool("add_generation_prompt", req.add_generation_prompt);
  if (!r.ok()) return r.take_error();
  return req;
}

std::variant<CompletionRequest, ApiError> parse_completion_request(const std::string& body,
                                                                   int n_vocab) {
  json doc;
  if (std::optional<ApiError> e = parse_object(body, doc)) return std::move(*e);
  Reader r(doc, n_vocab);
  CompletionRequest req;
  read_prompt(r, req);
  read_common(r, req.opts);
  // The legacy API's logprobs is a count: return the sampled token's logprob and this many
  // alternatives (OpenAI allows up to 5; vLLM, and fennec, up to 20).
  int logprobs = 0;
  if (r.read_int("logprobs", logprobs, 0, kMaxTopLogprobs, "an integer between 0 and 20")) {
    req.opts.logprobs = true;
    req.opts.top_logprobs = logprobs;
  }
  r.read_bool("echo", req.echo);
  r.read_string("suffix", req.suffix);
  if (r.ok() && !req.suffix.empty()) {
    r.fail("suffix",
           "'suffix' is not supported: fennec does not do fill-in-the-middle "
           "completions");
  }
  if (!r.ok()) return r.take_error();
  return req;
}

}  // namespace fennec::server
