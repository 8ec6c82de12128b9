#include "server/api_server.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <optional>
#include <random>
#include <string_view>
#include <thread>

#include "engine/json_constraint.h"
#include "engine/loaded_model.h"
#include "engine/scheduler.h"
#include "model/model.h"
#include "ras/fault_injection.h"
#include "ras/service.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "tokenizer/tokenizer.h"

namespace fennec::server {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string random_id(const char* prefix) {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  static const char* hex = "0123456789abcdef";
  std::string s = prefix;
  std::lock_guard<std::mutex> lk(mu);
  for (int i = 0; i < 24; ++i) s += hex[rng() & 15];
  return s;
}

ApiError api_error(int status, std::string message, std::string type = "invalid_request_error",
                   std::string param = {}, std::string code = {}) {
  ApiError e;
  e.status = status;
  e.message = std::move(message);
  e.type = std::move(type);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

json bytes_array(const std::string& s) {
  json a = json::array();
  for (unsigned char c : s) a.push_back(static_cast<int>(c));
  return a;
}

}  // namespace

// One API request (all its choices) from arrival to its last byte.
struct RequestState {
  std::string id;
  bool chat = true;
  bool stream = false;
  bool include_usage = false;
  bool want_logprobs = false;
  std::string model;
  int64_t created = 0;
  std::shared_ptr<Response> resp;
  Clock::time_point t_arrival;
  std::vector<int> prompt_lens;  // per prompt

  std::mutex mu;
  struct Choice {
    uint64_t seq_id = 0;
    std::string text;
    std::vector<engine::TokenOut> tokens;
    std::string finish;
    bool done = false;
    bool started = false;  // stream: role chunk sent
    int n_generated = 0;
    Clock::time_point t_last;
    int64_t text_offset = 0;              // completions logprobs: characters of the tokens so far
    double joules = 0, cost = 0;          // metered runs, from the last event
    const char* energy_source = nullptr;  // "measured" / "estimated"
  };
  std::vector<Choice> choices;
  int n_done = 0;
  bool first_token_seen = false;
  Clock::time_point t_first;
  bool failed = false;
  std::string error;
  bool finished = false;
};

struct ApiServer::Impl {
  ApiServerOptions opts;
  std::unique_ptr<HttpServer> http;
  std::atomic<engine::LoadedModel*> model{nullptr};
  engine::Scheduler* scheduler = nullptr;
  std::unique_ptr<ServerMetrics> metrics;
  std::atomic<bool> draining{false};
  std::atomic<int64_t> in_flight{0};
  std::mutex stats_mu;
  engine::SchedulerStats last_stats;
  int64_t start_time = 0;

  void handle(const HttpRequest& req, std::shared_ptr<Response> resp);
  void send_json(const std::shared_ptr<Response>& resp, int status, const json& body,
                 std::vector<std::pair<std::string, std::string>> extra = {});
  void send_error(const std::shared_ptr<Response>& resp, const ApiError& e,
                  std::vector<std::pair<std::string, std::string>> extra = {});
  bool authorized(const HttpRequest& req) const;
  // The 400 for a request naming a model this server does not serve ("" names the served one).
  std::optional<ApiError> unknown_model(const std::string& model) const;
  void handle_chat(const HttpRequest& req, const std::shared_ptr<Response>& resp);
  void handle_completion(const HttpRequest& req, const std::shared_ptr<Response>& resp);
  void handle_tokenize(const HttpRequest& req, const std::shared_ptr<Response>& resp);
  void handle_detokenize(const HttpRequest& req, const std::shared_ptr<Response>& resp);
  void handle_models(const std::shared_ptr<Response>& resp);
  void handle_metrics(const std::shared_ptr<Response>& resp);
  // Submits every (prompt, choice) sequence of a request and wires events to the response.
  void run_request(std::shared_ptr<RequestState> st, const GenerationOptions& o,
                   const std::vector<std::vector<int32_t>>& prompts, const std::string& body);
  void on_event(const std::shared_ptr<RequestState>& st, size_t choice, const engine::SeqEvent& ev);
  // text_offset (completions): where each token starts in the choice's text, in characters,
  // counted on from *offset (a stream's choice continues across chunks).
  json choice_logprobs(const RequestState& st, const std::vector<engine::TokenOut>& toks, int64_t* offset) const;
  json usage(const RequestState& st) const;
  void finish_request(const std::shared_ptr<RequestState>& st);
  void refresh_engine_metrics();
};

Expected<std::unique_ptr<ApiServer>> ApiServer::create(const ApiServerOptions& opts) {
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  impl->start_time = static_cast<int64_t>(std::time(nullptr));
  Impl* raw = impl.get();
  auto http = HttpServer::create(opts.http, [raw](const HttpRequest& r, std::shared_ptr<Response> resp) {
    raw->handle(r, std::move(resp));
  });
  if (!http) return http.error();
  impl->http = std::move(*http);
  return std::unique_ptr<ApiServer>(new ApiServer(std::move(impl)));
}

ApiServer::ApiServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ApiServer::~ApiServer() { stop(); }
int ApiServer::port() const { return impl_->http->port(); }
void ApiServer::start() { impl_->http->start(); }
int64_t ApiServer::in_flight() const { return impl_->in_flight.load(); }

void ApiServer::attach(engine::LoadedModel& model, engine::Scheduler& scheduler) {
  impl_->scheduler = &scheduler;
  impl_->metrics = std::make_unique<ServerMetrics>(impl_->opts.served_model_name, model.n_ctx());
  impl_->model.store(&model);
}

void ApiServer::begin_drain() { impl_->draining = true; }

int64_t ApiServer::drain(double timeout_seconds) {
  begin_drain();
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_seconds);
  while (in_flight() > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  return in_flight();
}

void ApiServer::stop() {
  if (impl_ && impl_->http) impl_->http->stop();
}

void ApiServer::Impl::send_json(const std::shared_ptr<Response>& resp, int status, const json& body,
                                std::vector<std::pair<std::string, std::string>> extra) {
  if (metrics) metrics->count_http_response(status);
  resp->send(status, "application/json", dump(body), std::move(extra));
}

void ApiServer::Impl::send_error(const std::shared_ptr<Response>& resp, const ApiError& e,
                                 std::vector<std::pair<std::string, std::string>> extra) {
  send_json(resp, e.status, e.to_json(), std::move(extra));
}

bool ApiServer::Impl::authorized(const HttpRequest& req) const {
  if (opts.api_key.empty()) return true;
  const std::string h = req.header("authorization");
  const std::string want = "Bearer " + opts.api_key;
  // Constant-time comparison over the expected length.
  if (h.size() != want.size()) return false;
  unsigned diff = 0;
  for (size_t i = 0; i < h.size(); ++i) diff |= static_cast<unsigned>(h[i] ^ want[i]);
  return diff == 0;
}

std::optional<ApiError> ApiServer::Impl::unknown_model(const std::string& model) const {
  if (model.empty() || model == opts.served_model_name) return std::nullopt;
  return api_error(400, "the model '" + model + "' does not exist: this server serves '" + opts.served_model_name + "'",
                   "invalid_request_error", "model", "model_not_found");
}

void ApiServer::Impl::handle(const HttpRequest& req, std::shared_ptr<Response> resp) {
  const std::string& p = req.path;
  const bool ready = model.load() != nullptr && !draining;
  auto method_is = [&](const char* m) { return req.method == m; };
  auto wrong_method = [&](const char* allowed) {
    send_json(resp, 405,
              api_error(405, "method " + req.method + " is not allowed on " + p + " (use " + allowed + ")",
                        "invalid_request_error", "", "method_not_allowed")
                  .to_json(),
              {{"Allow", allowed}});
  };

  // Probes and metrics: no key, and they answer while the model loads.
  if (p == "/v1/health/live" || p == "/health/live") {
    if (!method_is("GET")) return wrong_method("GET");
    return send_json(resp, 200, {{"object", "health.response"}, {"message", "Service is live."}});
  }
  if (p == "/v1/health/ready" || p == "/health/ready" || p == "/health") {
    if (!method_is("GET")) return wrong_method("GET");
    // A device the health rules call unhealthy (or drained) takes the server out of rotation.
    if (ready && opts.ras && opts.ras->worst() >= ras::HealthState::kUnhealthy) {
      std::string why;
      for (const auto& d : opts.ras->devices())
        if (d.state >= ras::HealthState::kUnhealthy) why += (why.empty() ? "" : "; ") + d.device + ": " + d.reason;
      return send_json(resp, 503, {{"object", "health.response"}, {"message", "Service is unhealthy: " + why + "."}});
    }
    if (ready) return send_json(resp, 200, {{"object", "health.response"}, {"message", "Service is ready."}});
    return send_json(resp, 503,
                     {{"object", "health.response"},
                      {"message", draining ? "Service is draining." : "Service is loading the model."}});
  }
  if (p == "/v1/ras") {
    if (!method_is("GET")) return wrong_method("GET");
    if (!opts.ras) return send_json(resp, 200, {{"source", "none"}, {"state", "healthy"}, {"devices", json::array()}});
    return send_json(resp, 200, opts.ras->to_json());
  }
  if (p == "/metrics" || p == "/v1/metrics") {
    if (!method_is("GET")) return wrong_method("GET");
    if (!metrics) return resp->send(200, "text/plain; version=0.0.4; charset=utf-8", "");
    return handle_metrics(resp);
  }

  if (p == "/admin/inject" && opts.fault_injector) {  // fault injection (docs/ras.md)
    if (!method_is("POST")) return wrong_method("POST");
    if (!authorized(req))
      return send_error(resp, api_error(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                                        "authentication_error", "", "invalid_api_key"));
    json body = json::parse(req.body, nullptr, false);
    auto r = opts.fault_injector->inject(body);
    if (!r) return send_error(resp, api_error(400, r.error().message));
    std::fprintf(stderr, "fennec: fault injected: %s\n", r->dump().c_str());
    return send_json(resp, 200, *r);
  }

  struct Route {
    const char* path;
    const char* method;
    int kind;
  };
  static const Route routes[] = {{"/v1/chat/completions", "POST", 0}, {"/v1/completions", "POST", 1},
                                 {"/v1/models", "GET", 2},            {"/tokenize", "POST", 3},
                                 {"/detokenize", "POST", 4}};
  const Route* route = nullptr;
  for (const auto& r : routes)
    if (p == r.path) route = &r;
  if (!route) {
    return send_error(resp, api_error(404, "no route for " + req.method + " " + p, "invalid_request_error", "",
                                      "not_found"));
  }
  if (req.method != route->method) return wrong_method(route->method);
  if (!authorized(req))
    return send_error(resp, api_error(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                                      "authentication_error", "", "invalid_api_key"));
  if (!ready) {
    return send_error(resp,
                      api_error(503, draining ? "the server is shutting down" : "the model is still loading",
                                "server_error", "", "service_unavailable"),
                      {{"Retry-After", "1"}});
  }
  // A device fennec computes with is unhealthy: the engine is held (docs/ras.md), no new work.
  if (route->kind <= 1 && scheduler->stats().held) {
    return send_error(resp,
                      api_error(503,
                                "the device is unhealthy and the server takes no new requests until it recovers "
                                "(see /v1/ras): retry later or on another replica",
                                "server_error", "", "service_unavailable"),
                      {{"Retry-After", "5"}});
  }
  switch (route->kind) {
    case 0: return handle_chat(req, resp);
    case 1: return handle_completion(req, resp);
    case 2: return handle_models(resp);
    case 3: return handle_tokenize(req, resp);
    default: return handle_detokenize(req, resp);
  }
}

void ApiServer::Impl::handle_models(const std::shared_ptr<Response>& resp) {
  json m = {{"id", opts.served_model_name},
            {"object", "model"},
            {"created", start_time},
            {"owned_by", "fennec"},
            {"max_model_len", model.load()->n_ctx()}};
  send_json(resp, 200, {{"object", "list"}, {"data", json::array({m})}});
}

void ApiServer::Impl::refresh_engine_metrics() {
  const engine::SchedulerStats s = scheduler->stats();
  std::lock_guard<std::mutex> lk(stats_mu);
  metrics->num_requests_running.set(static_cast<double>(s.running));
  metrics->num_requests_waiting.set(static_cast<double>(s.waiting));
  metrics->kv_cache_usage_perc.set(s.kv_blocks_total ? static_cast<double>(s.kv_blocks_used) / s.kv_blocks_total : 0);
  metrics->prefix_cache_queries.inc(static_cast<double>(s.prefix_queries - last_stats.prefix_queries));
  metrics->prefix_cache_hits.inc(static_cast<double>(s.prefix_hits - last_stats.prefix_hits));
  metrics->prompt_tokens.inc(static_cast<double>(s.prompt_tokens - last_stats.prompt_tokens));
  metrics->generation_tokens.inc(static_cast<double>(s.generated_tokens - last_stats.generated_tokens));
  metrics->num_preemptions.inc(static_cast<double>(s.preemptions - last_stats.preemptions));
  if (opts.ras) {
    for (const auto& d : opts.ras->devices())
      metrics->device_health.labels({d.device}).set(static_cast<double>(d.state));
    for (const auto& smp : opts.ras->last_samples()) {
      if (!smp.value) continue;
      if (smp.kind == ras::Kind::kTempC) metrics->device_temperature.labels({smp.device, smp.name}).set(*smp.value);
      if (smp.kind == ras::Kind::kPowerW) metrics->device_power.labels({smp.device, smp.name}).set(*smp.value);
    }
  }
  last_stats = s;
}

void ApiServer::Impl::handle_metrics(const std::shared_ptr<Response>& resp) {
  refresh_engine_metrics();
  metrics->count_http_response(200);
  resp->send(200, "text/plain; version=0.0.4; charset=utf-8", metrics->render());
}

void ApiServer::Impl::handle_tokenize(const HttpRequest& req, const std::shared_ptr<Response>& resp) {
  const engine::LoadedModel& lm = *model.load();
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object())
    return send_error(resp, api_error(400, "the body must be a JSON object"));
  std::vector<int32_t> ids;
  if (body.contains("messages")) {
    bool agp = body.value("add_generation_prompt", true);
    if (!body["messages"].is_array()) return send_error(resp, api_error(400, "'messages' must be an array", "invalid_request_error", "messages"));
    auto r = lm.tokenize_chat(body["messages"], agp);
    if (!r) return send_error(resp, api_error(400, r.error().message, "invalid_request_error", "messages"));
    ids = std::move(*r);
  } else if (body.contains("prompt") && body["prompt"].is_string()) {
    const bool add_special = !body.contains("add_special_tokens") || !body["add_special_tokens"].is_boolean() ||
                             body["add_special_tokens"].get<bool>();
    ids = lm.tokenizer().encode(body["prompt"].get<std::string>(), add_special, true);
  } else {
    return send_error(resp, api_error(400, "send 'prompt' (a string) or 'messages'", "invalid_request_error", "prompt"));
  }
  json out = {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", lm.n_ctx()}};
  send_json(resp, 200, out);
}

void ApiServer::Impl::handle_detokenize(const HttpRequest& req, const std::shared_ptr<Response>& resp) {
  const engine::LoadedModel& lm = *model.load();
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object() || !body.contains("tokens") || !body["tokens"].is_array())
    return send_error(resp, api_error(400, "send 'tokens', an array of token ids", "invalid_request_error", "tokens"));
  std::vector<int32_t> ids;
  const int n_vocab = lm.tokenizer().n_vocab();
  for (const auto& t : body["tokens"]) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= n_vocab)
      return send_error(resp, api_error(400, "token ids must be integers in [0, " + std::to_string(n_vocab) + ")",
                                        "invalid_request_error", "tokens"));
    ids.push_back(t.get<int32_t>());
  }
  send_json(resp, 200, {{"prompt", lm.tokenizer().decode(ids, false)}});
}

void ApiServer::Impl::handle_chat(const HttpRequest& req, const std::shared_ptr<Response>& resp) {
  const engine::LoadedModel& lm = *model.load();
  auto parsed = parse_chat_request(req.body, lm.tokenizer().n_vocab());
  if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(resp, *e);
  ChatRequest& cr = std::get<ChatRequest>(parsed);
  if (auto e = unknown_model(cr.opts.model)) return send_error(resp, *e);
  auto ids = lm.tokenize_chat(cr.messages, cr.add_generation_prompt);
  if (!ids) return send_error(resp, api_error(400, ids.error().message, "invalid_request_error", "messages"));
  auto st = std::make_shared<RequestState>();
  st->id = random_id("chatcmpl-");
  st->chat = true;
  st->resp = resp;
  run_request(st, cr.opts, {std::move(*ids)}, req.body);
}

void ApiServer::Impl::handle_completion(const HttpRequest& req, const std::shared_ptr<Response>& resp) {
  const engine::LoadedModel& lm = *model.load();
  auto parsed = parse_completion_request(req.body, lm.tokenizer().n_vocab());
  if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(resp, *e);
  CompletionRequest& cr = std::get<CompletionRequest>(parsed);
  if (auto e = unknown_model(cr.opts.model)) return send_error(resp, *e);
  if (cr.opts.max_tokens < 0) cr.opts.max_tokens = 16;  // OpenAI's and vLLM's default for completions
  if (!cr.suffix.empty()) return send_error(resp, api_error(400, "'suffix' is not supported", "invalid_request_error", "suffix"));
  if (cr.echo) return send_error(resp, api_error(400, "'echo' is not supported", "invalid_request_error", "echo"));
  std::vector<std::vector<int32_t>> prompts = cr.prompt_tokens;
  if (prompts.empty())
    for (const auto& p : cr.prompts) prompts.push_back(lm.tokenizer().encode(p, true, false));
  for (auto& p : prompts)
    if (p.empty()) {
      // An empty prompt still needs one token to condition on: BOS if the model has one.
      if (lm.tokenizer().bos_id() < 0)
        return send_error(resp, api_error(400, "the prompt is empty", "invalid_request_error", "prompt"));
      p.push_back(lm.tokenizer().bos_id());
    }
  auto st = std::make_shared<RequestState>();
  st->id = random_id("cmpl-");
  st->chat = false;
  st->resp = resp;
  run_request(st, cr.opts, prompts, req.body);
}

void ApiServer::Impl::run_request(std::shared_ptr<RequestState> st, const GenerationOptions& o,
                                  const std::vector<std::vector<int32_t>>& prompts, const std::string& body) {
  const engine::LoadedModel& lm = *model.load();
  const int n_ctx = lm.n_ctx();
  st->t_arrival = Clock::now();
  st->created = static_cast<int64_t>(std::time(nullptr));
  st->model = opts.served_model_name;
  st->stream = o.stream;
  st->include_usage = o.include_usage;
  st->want_logprobs = o.logprobs;
  const auto& resp = st->resp;
  std::vector<engine::SeqRequest> seqs;
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    const auto& prompt = prompts[pi];
    const int64_t len = static_cast<int64_t>(prompt.size());
    st->prompt_lens.push_back(static_cast<int>(len));
    if (len >= n_ctx)
      return send_error(resp, api_error(400,
                                        "this model's maximum context length is " + std::to_string(n_ctx) +
                                            " tokens, but the prompt is " + std::to_string(len) +
                                            " tokens: shorten it",
                                        "invalid_request_error", "messages", "context_length_exceeded"));
    int max_tokens = o.max_tokens < 0 ? static_cast<int>(n_ctx - len) : o.max_tokens;
    if (len + max_tokens > n_ctx)
      return send_error(resp, api_error(400,
                                        "this model's maximum context length is " + std::to_string(n_ctx) +
                                            " tokens; you asked for " + std::to_string(len + max_tokens) +
                                            " (" + std::to_string(len) + " in the prompt, " +
                                            std::to_string(max_tokens) + " for the completion): lower max_tokens",
                                        "invalid_request_error", "max_tokens", "context_length_exceeded"));
    for (int k = 0; k < o.n; ++k) {
      engine::SeqRequest sr;
      sr.prompt = prompt;
      sr.max_tokens = max_tokens;
      sr.sampling.temperature = o.temperature;
      sr.sampling.top_p = o.top_p;
      sr.sampling.top_k = o.top_k;
      sr.sampling.min_p = o.min_p;
      sr.sampling.presence_penalty = o.presence_penalty;
      sr.sampling.frequency_penalty = o.frequency_penalty;
      sr.sampling.repetition_penalty = o.repetition_penalty;
      sr.sampling.logit_bias = o.logit_bias;
      if (o.seed) {
        sr.sampling.seed = *o.seed + static_cast<uint64_t>(k) + static_cast<uint64_t>(pi) * 1000003ull;
        sr.sampling.has_seed = true;
      }
      sr.stop = o.stop;
      sr.ignore_eos = o.ignore_eos;
      sr.top_logprobs = o.logprobs ? o.top_logprobs : -1;
      if (o.response_format.kind != ResponseFormat::Kind::kText) {
        // The schema again from the body, in its own key order: properties are generated in the
        // order the schema lists them (nlohmann::json would sort them).
        nlohmann::ordered_json schema;
        if (o.response_format.kind == ResponseFormat::Kind::kJsonSchema) {
          const auto doc = nlohmann::ordered_json::parse(body, nullptr, false);
          const auto* rf = doc.is_object() && doc.contains("response_format") ? &doc["response_format"] : nullptr;
          const auto* js = rf && rf->is_object() && rf->contains("json_schema") ? &(*rf)["json_schema"] : nullptr;
          if (js && js->is_object() && js->contains("schema")) schema = (*js)["schema"];
        }
        auto c = engine::JsonConstraint::create(schema, lm.tokenizer());
        if (!c) return send_error(resp, api_error(400, c.error().message, "invalid_request_error", "response_format"));
        sr.constraint = std::move(*c);
      }
      seqs.push_back(std::move(sr));
    }
  }
  st->choices.resize(seqs.size());
  ++in_flight;
  // Submit all; a refusal (queue full, invalid) cancels what was already queued.
  std::lock_guard<std::mutex> lk(st->mu);
  for (size_t i = 0; i < seqs.size(); ++i) {
    bool full = false;
    auto id = scheduler->submit(std::move(seqs[i]),
                                [this, st, i](const engine::SeqEvent& ev) { on_event(st, i, ev); }, &full);
    if (!id) {
      for (size_t j = 0; j < i; ++j) scheduler->cancel(st->choices[j].seq_id);
      st->finished = true;  // events of the cancelled ones are ignored
      --in_flight;
      if (full)
        return send_error(resp, api_error(429, id.error().message, "rate_limit_error", "", "queue_full"),
                          {{"Retry-After", "1"}});
      if (scheduler->stats().held)  // held between the check and the submit
        return send_error(resp, api_error(503, id.error().message, "server_error", "", "service_unavailable"),
                          {{"Retry-After", "5"}});
      return send_error(resp, api_error(400, id.error().message));
    }
    st->choices[i].seq_id = *id;
  }
  std::weak_ptr<RequestState> weak = st;
  resp->on_disconnect([this, weak] {
    auto s = weak.lock();
    if (!s) return;
    std::lock_guard<std::mutex> lk2(s->mu);
    for (const auto& c : s->choices)
      if (!c.done) scheduler->cancel(c.seq_id);
  });
  if (st->stream) {
    if (metrics) metrics->count_http_response(200);
    resp->start_stream(200, "text/event-stream");
  }
}

json ApiServer::Impl::choice_logprobs(const RequestState& st, const std::vector<engine::TokenOut>& toks,
                                      int64_t* offset) const {
  const auto& tok = model.load()->tokenizer();
  if (st.chat) {
    json content = json::array();
    for (const auto& t : toks) {
      const std::string b = tok.token_bytes(t.id);
      json top = json::array();
      for (const auto& [id, lp] : t.top) {
        const std::string tb = tok.token_bytes(id);
        top.push_back({{"token", tb}, {"logprob", lp}, {"bytes", bytes_array(tb)}});
      }
      content.push_back({{"token", b}, {"logprob", t.logprob}, {"bytes", bytes_array(b)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  for (const auto& t : toks) {
    const std::string b = tok.token_bytes(t.id);
    offsets.push_back(*offset);
    // Characters = UTF-8 lead bytes (a character split across tokens counts where it starts).
    for (const char ch : b) *offset += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
    tokens.push_back(b);
    lps.push_back(t.logprob);
    json top = json::object();
    for (const auto& [id, lp] : t.top) top[tok.token_bytes(id)] = lp;
    tops.push_back(top);
  }
  return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json ApiServer::Impl::usage(const RequestState& st) const {
  int64_t prompt = 0, completion = 0;
  for (int len : st.prompt_lens) prompt += len;
  for (const auto& c : st.choices) completion += c.n_generated;
  json u = {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
  // Energy and cost (docs/ras.md): "estimated" if any choice's energy was.
  double joules = 0, cost = 0;
  const char* source = nullptr;
  for (const auto& c : st.choices) {
    if (!c.energy_source) continue;
    joules += c.joules;
    cost += c.cost;
    if (!source || std::string_view(c.energy_source) == "estimated") source = c.energy_source;
  }
  if (source) {
    u["energy_joules"] = joules;
    u["energy_source"] = source;
    u["cost_usd"] = cost;
  }
  return u;
}

void ApiServer::Impl::on_event(const std::shared_ptr<RequestState>& st, size_t i, const engine::SeqEvent& ev) {
  std::lock_guard<std::mutex> lk(st->mu);
  if (st->finished) return;
  auto& c = st->choices[i];
  const auto now = Clock::now();
  const size_t n_new = ev.tokens.size();
  if (n_new > 0) {
    if (!st->first_token_seen) {
      st->first_token_seen = true;
      st->t_first = now;
      if (metrics) metrics->time_to_first_token.observe(seconds_between(st->t_arrival, now));
    } else if (metrics && c.n_generated > 0) {
      // Several tokens in one event share the interval.
      const double dt = seconds_between(c.t_last, now) / static_cast<double>(n_new);
      for (size_t k = 0; k < n_new; ++k) metrics->inter_token_latency.observe(dt);
    }
    c.t_last = now;
  }
  c.n_generated = ev.n_generated;
  if (ev.energy_source) {
    c.joules = ev.energy_joules;
    c.cost = ev.cost_usd;
    c.energy_source = ev.energy_source;
  }
  if (ev.finish != engine::SeqFinish::kNone) {
    c.done = true;
    c.finish = engine::seq_finish_name(ev.finish);
    ++st->n_done;
    if (ev.finish == engine::SeqFinish::kError) {
      st->failed = true;
      st->error = ev.error;
    }
    if (metrics) metrics->request_success.labels({c.finish}).inc();
  }
  const int index = static_cast<int>(i);
  if (st->stream) {
    auto chunk = [&](json choice) {
      json j = {{"id", st->id},
                {"object", st->chat ? "chat.completion.chunk" : "text_completion"},
                {"created", st->created},
                {"model", st->model},
                {"choices", json::array({std::move(choice)})}};
      if (st->include_usage) j["usage"] = nullptr;
      st->resp->write("data: " + dump(j) + "\n\n");
    };
    if (st->chat && !c.started) {
      c.started = true;
      chunk({{"index", index},
             {"delta", {{"role", "assistant"}, {"content", ""}}},
             {"logprobs", nullptr},
             {"finish_reason", nullptr}});
    }
    if (!ev.text.empty() || (n_new > 0 && st->want_logprobs)) {
      json ch = {{"index", index}, {"logprobs", st->want_logprobs ? choice_logprobs(*st, ev.tokens, &c.text_offset) : json()},
                 {"finish_reason", nullptr}};
      if (st->chat) {
        ch["delta"] = {{"content", ev.text}};
      } else {
        ch["text"] = ev.text;
      }
      chunk(std::move(ch));
    }
    if (c.done && ev.finish != engine::SeqFinish::kError && ev.finish != engine::SeqFinish::kAbort) {
      json ch = {{"index", index}, {"logprobs", nullptr}, {"finish_reason", c.finish}};
      if (st->chat) {
        ch["delta"] = json::object();
      } else {
        ch["text"] = "";
      }
      chunk(std::move(ch));
    }
  } else {
    c.text += ev.text;
    if (st->want_logprobs) c.tokens.insert(c.tokens.end(), ev.tokens.begin(), ev.tokens.end());
  }
  if (st->n_done == static_cast<int>(st->choices.size())) finish_request(st);
}

// Called with st->mu held, once every choice has ended.
void ApiServer::Impl::finish_request(const std::shared_ptr<RequestState>& st) {
  st->finished = true;
  const auto now = Clock::now();
  const double total = seconds_between(st->t_arrival, now);
  const double ttft = st->first_token_seen ? seconds_between(st->t_arrival, st->t_first) : -1;
  bool aborted = false;
  for (const auto& c : st->choices) aborted |= c.finish == "abort";
  // The request's metrics first: a client that reads /metrics once it has its answer must find
  // the request counted there.
  const json u = usage(*st);
  if (metrics) {
    if (u.contains("energy_joules")) {
      metrics->energy_joules.labels({u["energy_source"].get<std::string>()}).inc(u["energy_joules"].get<double>());
      metrics->cost_usd.inc(u["cost_usd"].get<double>());
    }
    metrics->e2e_request_latency.observe(total);
    metrics->request_prompt_tokens.observe(u["prompt_tokens"].get<double>());
    metrics->request_generation_tokens.observe(u["completion_tokens"].get<double>());
  }
  int status = 200;
  if (st->stream) {
    if (st->failed) {
      ApiError e = api_error(500, "generation failed: " + st->error, "server_error");
      st->resp->write("data: " + dump(e.to_json()) + "\n\n");
    } else if (st->include_usage) {
      json j = {{"id", st->id},
                {"object", st->chat ? "chat.completion.chunk" : "text_completion"},
                {"created", st->created},
                {"model", st->model},
                {"choices", json::array()},
                {"usage", usage(*st)}};
      st->resp->write("data: " + dump(j) + "\n\n");
    }
    st->resp->write("data: [DONE]\n\n");
    st->resp->end();
  } else if (st->failed) {
    status = 500;
    send_error(st->resp, api_error(500, "generation failed: " + st->error, "server_error"));
  } else if (!aborted) {
    json choices = json::array();
    for (size_t i = 0; i < st->choices.size(); ++i) {
      const auto& c = st->choices[i];
      int64_t off = 0;
      json ch = {{"index", static_cast<int>(i)},
                 {"finish_reason", c.finish},
                 {"logprobs", st->want_logprobs ? choice_logprobs(*st, c.tokens, &off) : json()}};
      if (st->chat) {
        ch["message"] = {{"role", "assistant"}, {"content", c.text}};
      } else {
        ch["text"] = c.text;
      }
      choices.push_back(std::move(ch));
    }
    json body = {{"id", st->id},
                 {"object", st->chat ? "chat.completion" : "text_completion"},
                 {"created", st->created},
                 {"model", st->model},
                 {"choices", choices},
                 {"usage", usage(*st)}};
    send_json(st->resp, 200, body);
  } else {
    status = 499;  // the client went away
  }
  if (opts.log_requests) {
    std::fprintf(stderr, "fennec: %s %s status=%d prompt_tokens=%d completion_tokens=%d ttft=%.3fs total=%.3fs%s\n",
                 st->id.c_str(), st->chat ? "chat" : "completion", status, u["prompt_tokens"].get<int>(),
                 u["completion_tokens"].get<int>(), ttft, total, st->stream ? " stream" : "");
  }
  --in_flight;
}

}  // namespace fennec::server
