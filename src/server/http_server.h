// Asynchronous HTTP/1.1 server (Boost.Beast over Asio) for the API: many thousands of idle or
// streaming connections on a few I/O threads, keep-alive, a body-size limit, and Server-Sent
// Events. Handlers run on an I/O thread and must not block: they answer at once or keep the
// Response and answer later from any thread (e.g. the engine's callbacks). Everything a Response
// does is posted to its connection's strand, so it is safe to call from any thread, and calls
// after the client has gone are no-ops.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/expected.h"

namespace fennec::server {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query as sent ("/v1/models?x=1")
  std::string path;    // target without the query
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  std::string remote;  // peer address "ip:port"
  // Value of a header (name in lower case), or "" if absent.
  std::string header(const std::string& name) const;
};

class Response {
 public:
  virtual ~Response() = default;
  // A complete response. extra_headers: e.g. {{"Retry-After", "1"}}. Content-Length is set.
  virtual void send(int status, std::string content_type, std::string body,
                    std::vector<std::pair<std::string, std::string>> extra_headers = {}) = 0;
  // Starts a streamed response (chunked transfer encoding) with the given status and content
  // type ("text/event-stream" for SSE; Cache-Control: no-cache is added).
  virtual void start_stream(int status, std::string content_type) = 0;
  // Appends bytes to the stream (an SSE event is "data: ...\n\n"). Buffered without bound; the
  // caller sends small events.
  virtual void write(std::string data) = 0;
  // Ends the stream; the connection then serves its next request (keep-alive) or closes.
  virtual void end() = 0;
  // Called once, on an I/O thread, if the client disconnects before the response is complete
  // (detected while streaming or waiting: a read returns EOF or an error, including a client
  // that half-closes its side) or the server stops first. "Complete" means send() or end() was
  // called. Set it before returning from the handler; set later, after the client has gone, it
  // runs at once on the caller's thread.
  virtual void on_disconnect(std::function<void()> cb) = 0;
  // True once the client is known to be gone.
  virtual bool closed() const = 0;
};

using Handler = std::function<void(const HttpRequest&, std::shared_ptr<Response>)>;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                        // 0: pick a free port (see HttpServer::port())
  int io_threads = 1;
  int64_t max_body_bytes = 8 << 20;       // larger bodies get 413 without reaching the handler
  int max_connections = 4096;             // beyond: accept and answer 503, then close
  double idle_timeout_seconds = 300;      // keep-alive connections idle this long are closed
};

class HttpServer {
 public:
  // Binds and listens (errors: address in use, bad host); serving starts with start().
  static Expected<std::unique_ptr<HttpServer>> create(const HttpServerOptions& opts, Handler handler);
  virtual ~HttpServer() = default;
  virtual int port() const = 0;     // the bound port
  virtual void start() = 0;         // starts the I/O threads; returns at once
  virtual void stop_accepting() = 0;  // closes the listening socket; open connections go on
  // Closes everything (pending responses see on_disconnect) and joins the I/O threads. Responses
  // may outlive the server: their calls are then no-ops.
  virtual void stop() = 0;
  virtual int64_t open_connections() const = 0;
};

}  // namespace fennec::server
