// fennec's OpenAI-compatible API over the HTTP server and the scheduler: routes, API keys,
// request validation, chat templates, streaming (SSE) and complete responses, health probes,
// Prometheus metrics, one log line per request, and graceful drain.
//
// The HTTP side starts before the model loads: /v1/health/live answers 200 at once, readiness and
// the API answer 503 until attach() hands over the loaded model and its scheduler.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "core/expected.h"
#include "server/http_server.h"

namespace fennec::engine {
class LoadedModel;
class Scheduler;
}  // namespace fennec::engine

namespace fennec::ras {
class RasService;
class FaultInjector;
}  // namespace fennec::ras

namespace fennec::server {

struct ApiServerOptions {
  HttpServerOptions http;
  std::string served_model_name;  // the id /v1/models lists and requests must name (or omit)
  std::string api_key;            // "" -> no authentication
  bool log_requests = true;       // one line per request on stderr
  // Device health (GET /v1/ras, readiness 503 while a device is unhealthy, health gauges in
  // /metrics); may be null. Must outlive the server.
  ras::RasService* ras = nullptr;
  // POST /admin/inject (docs/ras.md), only when set (serve --enable-fault-injection); 404
  // otherwise. Must outlive the server.
  ras::FaultInjector* fault_injector = nullptr;
};

class ApiServer {
 public:
  static Expected<std::unique_ptr<ApiServer>> create(const ApiServerOptions& opts);
  ~ApiServer();
  int port() const;
  void start();
  // The model is loaded: the API and readiness open. Both must outlive the server.
  void attach(engine::LoadedModel& model, engine::Scheduler& scheduler);
  // Readiness turns false and new API requests get 503; requests in flight go on.
  void begin_drain();
  // begin_drain(), then waits until no request is in flight or timeout_seconds have passed.
  // Returns the requests still in flight (cut off by the timeout).
  int64_t drain(double timeout_seconds);
  // Requests still being answered (streams included).
  int64_t in_flight() const;
  void stop();

  struct Impl;

 private:
  explicit ApiServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace fennec::server
