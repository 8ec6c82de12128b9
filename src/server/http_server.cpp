// HTTP/1.1 server: Asio sockets and timers, Beast's request parser. Responses are written as raw
// bytes (head, then the body or chunks) through a per-connection queue, so a Response can be
// driven from any thread by posting to the connection's strand.
//
// A connection (Session) is in one of four states:
//   kReading   waiting for or parsing a request; the idle timer runs.
//   kHandling  the handler has the request; a plain read stays posted on the socket so that a
//              client that goes away is noticed at once (bytes that arrive are kept for the next
//              request, up to kMaxPipelinedBytes).
//   kClosing   the last response is written; the send side is shut and the socket drained
//              briefly so that the client reads the response instead of a reset.
//   kClosed    the socket is closed; everything that arrives is ignored.
// Lifetime: every pending operation and every Response holds a shared_ptr to its Session, and
// every Session holds the Core (io_context, acceptor), so sockets never outlive their context.
#include "server/http_server.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "core/log.h"

namespace fennec::server {

std::string HttpRequest::header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using Strand = asio::strand<asio::io_context::executor_type>;
using Socket = tcp::socket::rebind_executor<Strand>::other;
using Acceptor = tcp::acceptor::rebind_executor<Strand>::other;
using Timer = asio::steady_timer::rebind_executor<Strand>::other;
using Headers = std::vector<std::pair<std::string, std::string>>;

constexpr size_t kHeaderLimit = 64 << 10;       // request line + headers
constexpr size_t kMaxPipelinedBytes = 1 << 20;  // kept while a response is pending
constexpr size_t kRawReadSize = 4096;
constexpr size_t kMaxGather = 256;       // buffers per write call
constexpr double kLingerSeconds = 2;     // drain after a closing response
constexpr int64_t kMaxRejecting = 1024;  // 503 answers in flight beyond which we just close

std::string to_string(beast::string_view s) { return std::string(s.data(), s.size()); }

std::string json_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

// The OpenAI error shape, so that clients print the message.
std::string error_json(std::string_view message, std::string_view type, std::string_view code) {
  return "{\"error\":{\"message\":\"" + json_escape(message) + "\",\"type\":\"" +
         std::string(type) + "\",\"param\":null,\"code\":\"" + std::string(code) + "\"}}";
}

bool has_crlf(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string status_line(int status) {
  auto reason = http::obsolete_reason(static_cast<http::status>(status));
  std::string text = reason == "<unknown-status>" ? std::string("Unknown") : to_string(reason);
  return "HTTP/1.1 " + std::to_string(status) + " " + text + "\r\n";
}

std::string endpoint_string(const tcp::endpoint& ep) {
  std::string addr = ep.address().to_string();
  if (ep.address().is_v6()) addr = "[" + addr + "]";
  return addr + ":" + std::to_string(ep.port());
}

std::string host_port(const std::string& host, int port) {
  bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string lower_first(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

template <class Duration>
Duration seconds_to(double s) {
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
}

// Each connection needs a descriptor: lift the soft limit to the hard one, say when it is low.
void raise_fd_limit(int max_connections) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur != RLIM_INFINITY && (rl.rlim_max == RLIM_INFINITY || rl.rlim_cur < rl.rlim_max)) {
    rlimit want = rl;
    want.rlim_cur = rl.rlim_max == RLIM_INFINITY ? rlim_t{1} << 20 : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &want) == 0) {
      log(LogLevel::kDebug, "http: raised the open-file limit from " + std::to_string(rl.rlim_cur) +
                                " to " + std::to_string(want.rlim_cur));
      rl = want;
    }
  }
  const rlim_t needed = static_cast<rlim_t>(std::max(0, max_connections)) + 64;
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < needed)
    log_warn("http: the open-file limit is " + std::to_string(rl.rlim_cur) + ", below the " +
             std::to_string(needed) + " that max_connections " + std::to_string(max_connections) +
             " needs: raise it with `ulimit -n`");
}

class Session;

// What all connections share. Owned by the server and by every Session.
struct Core : std::enable_shared_from_this<Core> {
  Core(HttpServerOptions o, Handler h)
      : opts(std::move(o)),
        handler(std::move(h)),
        accept_strand(asio::make_strand(ioc)),
        acceptor(accept_strand),
        accept_timer(accept_strand) {}

  void do_accept();
  void on_accept(const error_code& ec, Socket socket);
  void close_acceptor() {
    error_code ignored;
    acceptor.close(ignored);
    accept_timer.cancel();
  }
  // Registers a new session; false once the server is stopping.
  bool add_session(Session* s, std::weak_ptr<Session> w) {
    std::lock_guard<std::mutex> lock(sessions_mu);
    if (stopping) return false;
    sessions.emplace(s, std::move(w));
    return true;
  }
  void remove_session(Session* s) {
    std::lock_guard<std::mutex> lock(sessions_mu);
    sessions.erase(s);
  }

  const HttpServerOptions opts;
  const Handler handler;
  asio::io_context ioc;  // before the I/O objects below: destroyed after them
  Strand accept_strand;
  Acceptor acceptor;
  Timer accept_timer;  // retry after accept errors (e.g. out of descriptors)
  int port = 0;

  // Response calls post to a strand only while the gate is open; stop() closes it so that
  // nothing is queued on an io_context whose threads are gone.
  std::mutex gate_mu;
  bool gate_open = true;

  std::mutex sessions_mu;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;
  bool stopping = false;

  std::atomic<int64_t> open{0};       // connections being served
  std::atomic<int64_t> rejecting{0};  // connections being answered 503
};

thread_local const Core* tls_io_core = nullptr;  // set on the I/O threads

class ResponseImpl;

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(std::shared_ptr<Core> core, Socket socket, bool reject)
      : core_(std::move(core)),
        strand_(socket.get_executor()),
        socket_(std::move(socket)),
        timer_(strand_),
        reject_(reject) {
    (reject_ ? core_->rejecting : core_->open).fetch_add(1);
  }
  ~Session() { release_slot(); }

  void start();
  void close_now();  // on the strand
  Core& core() { return *core_; }
  const Strand& strand() const { return strand_; }

  // The Response entry points, run on the strand. serial names the request they answer.
  void resp_send(uint64_t serial, int status, std::string content_type, std::string body,
                 Headers extra);
  void resp_start_stream(uint64_t serial, int status, std::string content_type);
  void resp_write(uint64_t serial, std::string data);
  void resp_end(uint64_t serial);
  void resp_abandoned(uint64_t serial);

 private:
  enum class State { kReading, kHandling, kClosing, kClosed };

  void begin();
  void begin_next_request();
  void do_read_header();
  void on_header(const error_code& ec);
  void on_body(const error_code& ec);
  void on_parse_error(const error_code& ec);
  void on_request();
  void do_raw_read();
  void on_raw_read(const error_code& ec, size_t n);
  void reply_and_close(int status, std::string body, Headers extra = {});
  void graceful_close();
  void flush();
  void on_written(const error_code& ec);
  void finish_response();
  void arm_timer(double seconds);
  void disarm_timer();
  bool accepts(uint64_t serial) const {
    return state_ == State::kHandling && serial == serial_ && !response_done_;
  }
  std::string head(int status, std::string_view content_type, const Headers& extra);
  void release_slot() {
    if (slot_released_) return;
    slot_released_ = true;
    (reject_ ? core_->rejecting : core_->open).fetch_sub(1);
    core_->remove_session(this);
  }

  std::shared_ptr<Core> core_;
  Strand strand_;
  Socket socket_;
  Timer timer_;
  const bool reject_;
  bool slot_released_ = false;
  std::string remote_;

  State state_ = State::kReading;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  bool read_pending_ = false;
  uint64_t timer_gen_ = 0;

  // The response being produced.
  uint64_t serial_ = 0;
  std::weak_ptr<ResponseImpl> current_;  // only the producer keeps it alive
  bool keep_alive_ = true;
  bool http11_ = true;
  bool response_started_ = false;
  bool response_done_ = false;  // send() or end() called: no more bytes will come
  bool streaming_ = false;

  std::deque<std::string> queue_;
  std::vector<std::string> inflight_;
  std::vector<asio::const_buffer> gather_;
  bool writing_ = false;
};

class ResponseImpl final : public Response {
 public:
  ResponseImpl(std::shared_ptr<Session> session, uint64_t serial)
      : session_(std::move(session)), serial_(serial) {}
  // Dropped unanswered (a producer bug or a path that forgot to answer): the session answers
  // 500, or cuts a stream short, rather than leave the client waiting.
  ~ResponseImpl() override {
    post([s = session_, n = serial_] { s->resp_abandoned(n); });
  }

  void send(int status, std::string content_type, std::string body,
            Headers extra_headers) override {
    post([s = session_, n = serial_, status, ct = std::move(content_type), b = std::move(body),
          h = std::move(extra_headers)]() mutable {
      s->resp_send(n, status, std::move(ct), std::move(b), std::move(h));
    });
  }
  void start_stream(int status, std::string content_type) override {
    post([s = session_, n = serial_, status, ct = std::move(content_type)]() mutable {
      s->resp_start_stream(n, status, std::move(ct));
    });
  }
  void write(std::string data) override {
    if (data.empty()) return;
    post([s = session_, n = serial_, d = std::move(data)]() mutable {
      s->resp_write(n, std::move(d));
    });
  }
  void end() override {
    post([s = session_, n = serial_] { s->resp_end(n); });
  }
  void on_disconnect(std::function<void()> cb) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!gone_) {
      on_disconnect_ = std::move(cb);
      return;
    }
    // The client left before the callback was set: it still hears about it, once.
    if (fired_ || !cb) return;
    fired_ = true;
    lock.unlock();
    run_callback(cb);
  }
  bool closed() const override { return closed_.load(std::memory_order_acquire); }

  // From the session (strand): the connection is closed. client_gone: the response was not
  // complete, so the producer is told.
  void mark_closed(bool client_gone) {
    closed_.store(true, std::memory_order_release);
    if (!client_gone) return;
    std::function<void()> cb;
    {
      std::lock_guard<std::mutex> lock(mu_);
      gone_ = true;
      if (!on_disconnect_ || fired_) return;
      fired_ = true;
      cb = std::move(on_disconnect_);
    }
    run_callback(cb);
  }

 private:
  template <class F>
  void post(F&& f) {
    if (closed()) return;
    Core& core = session_->core();
    std::lock_guard<std::mutex> lock(core.gate_mu);
    if (!core.gate_open) return;
    asio::post(session_->strand(), std::forward<F>(f));
  }
  static void run_callback(const std::function<void()>& cb) {
    try {
      cb();
    } catch (const std::exception& e) {
      log_error(std::string("http: on_disconnect callback threw: ") + e.what());
    }
  }

  const std::shared_ptr<Session> session_;
  const uint64_t serial_;
  std::atomic<bool> closed_{false};
  std::mutex mu_;
  std::function<void()> on_disconnect_;
  bool gone_ = false;
  bool fired_ = false;
};

// ---- Core: accepting ----

void Core::do_accept() {
  if (!acceptor.is_open()) return;
  acceptor.async_accept(asio::make_strand(ioc),
                        [self = shared_from_this()](const error_code& ec, Socket socket) {
                          self->on_accept(ec, std::move(socket));
                        });
}

void Core::on_accept(const error_code& ec, Socket socket) {
  if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
  if (ec) {
    // Typically EMFILE: the pending connection stays queued, so retrying at once would spin.
    log_warn("http: accept failed: " + ec.message());
    accept_timer.expires_after(std::chrono::milliseconds(100));
    accept_timer.async_wait([self = shared_from_this()](const error_code& wec) {
      if (!wec) self->do_accept();
    });
    return;
  }
  const bool reject = open.load() >= opts.max_connections;
  if (reject && rejecting.load() >= kMaxRejecting) {
    error_code ignored;
    socket.close(ignored);
  } else {
    std::make_shared<Session>(shared_from_this(), std::move(socket), reject)->start();
  }
  do_accept();
}

// ---- Session ----

void Session::start() {
  if (!core_->add_session(this, weak_from_this())) {
    release_slot();
    error_code ignored;
    socket_.close(ignored);
    return;
  }
  asio::post(strand_, [self = shared_from_this()] { self->begin(); });
}

void Session::begin() {
  if (state_ == State::kClosed) return;
  error_code ec;
  auto ep = socket_.remote_endpoint(ec);
  remote_ = ec ? std::string("unknown") : endpoint_string(ep);
  socket_.set_option(tcp::no_delay(true), ec);  // SSE events are small and must leave at once
  if (reject_) {
    reply_and_close(503,
                    error_json("the server has too many open connections (limit " +
                                   std::to_string(core_->opts.max_connections) + "); retry later",
                               "server_error", "too_many_connections"),
                    {{"Retry-After", "1"}});
    return;
  }
  begin_next_request();
}

void Session::begin_next_request() {
  state_ = State::kReading;
  response_started_ = response_done_ = streaming_ = false;
  keep_alive_ = http11_ = true;
  parser_.emplace();
  parser_->header_limit(kHeaderLimit);
  if (core_->opts.max_body_bytes >= 0)
    parser_->body_limit(static_cast<uint64_t>(core_->opts.max_body_bytes));
  else
    parser_->body_limit(boost::none);
  if (core_->opts.idle_timeout_seconds > 0) arm_timer(core_->opts.idle_timeout_seconds);
  // The read posted while the response was pending holds the socket: cancel it, and its
  // completion starts the parse (which begins with any bytes already buffered).
  if (read_pending_) {
    error_code ignored;
    socket_.cancel(ignored);
    return;
  }
  do_read_header();
}

void Session::do_read_header() {
  read_pending_ = true;
  http::async_read_header(socket_, buffer_, *parser_,
                          [self = shared_from_this()](const error_code& ec, size_t) {
                            self->read_pending_ = false;
                            self->on_header(ec);
                          });
}

void Session::on_header(const error_code& ec) {
  if (state_ == State::kClosed) return;
  if (ec) return on_parse_error(ec);
  if (parser_->is_done()) return on_request();
  auto expect = parser_->get()[http::field::expect];
  if (!expect.empty() && iequals(std::string_view(expect.data(), expect.size()), "100-continue")) {
    queue_.emplace_back("HTTP/1.1 100 Continue\r\n\r\n");
    flush();
  }
  read_pending_ = true;
  http::async_read(socket_, buffer_, *parser_,
                   [self = shared_from_this()](const error_code& rec, size_t) {
                     self->read_pending_ = false;
                     self->on_body(rec);
                   });
}

void Session::on_body(const error_code& ec) {
  if (state_ == State::kClosed) return;
  if (ec) return on_parse_error(ec);
  on_request();
}

void Session::on_parse_error(const error_code& ec) {
  disarm_timer();
  if (ec == http::error::body_limit) {
    return reply_and_close(413,
                           error_json("the request body is larger than the limit of " +
                                          std::to_string(core_->opts.max_body_bytes) + " bytes",
                                      "invalid_request_error", "request_too_large"));
  }
  if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
    return reply_and_close(431, error_json("the request headers are larger than " +
                                               std::to_string(kHeaderLimit) + " bytes",
                                           "invalid_request_error", "headers_too_large"));
  }
  // EOF between requests or mid-request, a reset, the idle timer: nobody to answer.
  const bool parse_error =
      ec.category() == http::make_error_code(http::error::bad_method).category() &&
      ec != http::error::end_of_stream && ec != http::error::partial_message;
  if (!parse_error) return close_now();
  reply_and_close(400, error_json("malformed HTTP request: " + ec.message(),
                                  "invalid_request_error", "malformed_request"));
}

void Session::on_request() {
  disarm_timer();
  auto msg = parser_->release();
  parser_.reset();
  HttpRequest req;
  req.method = to_string(msg.method_string());
  req.target = to_string(msg.target());
  req.path = req.target.substr(0, req.target.find('?'));
  for (const auto& field : msg) {
    std::string name = to_string(field.name_string());
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    auto [it, inserted] = req.headers.emplace(name, to_string(field.value()));
    if (!inserted) it->second += ", " + to_string(field.value());  // repeated: a list
  }
  req.body = std::move(msg.body());
  req.remote = remote_;

  keep_alive_ = msg.keep_alive();
  http11_ = msg.version() >= 11;
  state_ = State::kHandling;
  ++serial_;
  auto response = std::make_shared<ResponseImpl>(shared_from_this(), serial_);
  current_ = response;
  try {
    core_->handler(req, std::move(response));
  } catch (const std::exception& e) {
    log_error("http: handler for " + req.method + " " + req.path + " threw: " + e.what());
    if (!response_started_)
      resp_send(serial_, 500, "application/json",
                error_json("internal server error", "server_error", "internal_error"), {});
  }
  // Keep a read posted, so that a client that leaves is noticed while the response is pending.
  if (state_ == State::kHandling && !read_pending_) do_raw_read();
}

void Session::do_raw_read() {
  read_pending_ = true;
  socket_.async_read_some(buffer_.prepare(kRawReadSize),
                          [self = shared_from_this()](const error_code& ec, size_t n) {
                            self->read_pending_ = false;
                            self->on_raw_read(ec, n);
                          });
}

void Session::on_raw_read(const error_code& ec, size_t n) {
  if (state_ == State::kClosed) return;
  if (ec == asio::error::operation_aborted && state_ == State::kReading) return do_read_header();
  if (ec) return close_now();  // tells the producer if the response was pending
  buffer_.commit(n);
  switch (state_) {
    case State::kHandling:
      if (buffer_.size() > kMaxPipelinedBytes) return close_now();
      return do_raw_read();
    case State::kReading:  // the response finished meanwhile: parse what came
      return do_read_header();
    case State::kClosing:
      buffer_.consume(buffer_.size());
      return do_raw_read();
    case State::kClosed:
      return;
  }
}

void Session::reply_and_close(int status, std::string body, Headers extra) {
  state_ = State::kHandling;
  ++serial_;
  keep_alive_ = false;
  response_started_ = response_done_ = true;
  std::string bytes = head(status, "application/json", extra);
  bytes += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  bytes += body;
  queue_.push_back(std::move(bytes));
  flush();
}

void Session::graceful_close() {
  state_ = State::kClosing;
  error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
  arm_timer(kLingerSeconds);
  if (read_pending_) return;  // its completion discards what came
  buffer_.consume(buffer_.size());
  do_raw_read();
}

void Session::close_now() {
  if (state_ == State::kClosed) return;
  const bool client_gone = state_ == State::kHandling && !response_done_;
  state_ = State::kClosed;
  error_code ignored;
  socket_.close(ignored);
  disarm_timer();
  queue_.clear();  // inflight_ and parser_ stay until the pending operations complete
  release_slot();
  auto cur = current_.lock();
  current_.reset();
  if (cur) cur->mark_closed(client_gone);
}

std::string Session::head(int status, std::string_view content_type, const Headers& extra) {
  std::string h = status_line(status);
  h += "Server: fennec\r\n";
  if (!content_type.empty() && !has_crlf(content_type)) {
    h += "Content-Type: ";
    h += content_type;
    h += "\r\n";
  }
  for (const auto& [name, value] : extra) {
    if (name.empty() || has_crlf(name) || has_crlf(value)) continue;
    if (iequals(name, "content-length") || iequals(name, "transfer-encoding") ||
        iequals(name, "server"))
      continue;
    if (iequals(name, "connection")) {
      if (iequals(value, "close")) keep_alive_ = false;
      continue;
    }
    h += name + ": " + value + "\r\n";
  }
  h += keep_alive_ ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  return h;
}

void Session::resp_send(uint64_t serial, int status, std::string content_type, std::string body,
                        Headers extra) {
  if (!accepts(serial) || response_started_) return;
  response_started_ = response_done_ = true;
  std::string bytes = head(status, content_type, extra);
  const bool bodiless = status / 100 == 1 || status == 204 || status == 304;
  if (bodiless) {
    bytes += "\r\n";
  } else {
    bytes += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    if (bytes.size() + body.size() <= 16384) {
      bytes += body;
      body.clear();
    }
  }
  queue_.push_back(std::move(bytes));
  if (!bodiless && !body.empty()) queue_.push_back(std::move(body));
  flush();
}

void Session::resp_start_stream(uint64_t serial, int status, std::string content_type) {
  if (!accepts(serial) || response_started_) return;
  response_started_ = streaming_ = true;
  if (!http11_) keep_alive_ = false;  // HTTP/1.0 has no chunks: the end is the close
  std::string bytes = head(status, content_type, {{"Cache-Control", "no-cache"}});
  if (http11_) bytes += "Transfer-Encoding: chunked\r\n";
  bytes += "\r\n";
  queue_.push_back(std::move(bytes));
  flush();
}

void Session::resp_write(uint64_t serial, std::string data) {
  if (!accepts(serial) || !streaming_ || data.empty()) return;
  if (!http11_) {
    queue_.push_back(std::move(data));
  } else {
    char size[24];
    int len = std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    std::string chunk;
    chunk.reserve(static_cast<size_t>(len) + data.size() + 2);
    chunk.append(size, static_cast<size_t>(len));
    chunk += data;
    chunk += "\r\n";
    queue_.push_back(std::move(chunk));
  }
  flush();
}

void Session::resp_end(uint64_t serial) {
  if (!accepts(serial) || !streaming_) return;
  response_done_ = true;
  if (http11_) queue_.emplace_back("0\r\n\r\n");
  flush();
}

void Session::resp_abandoned(uint64_t serial) {
  if (!accepts(serial)) return;
  if (!response_started_) {
    log_warn("http: a request was dropped without an answer; sent 500");
    return resp_send(serial, 500, "application/json",
                     error_json("the server dropped this request without answering", "server_error",
                                "internal_error"),
                     {});
  }
  // No last chunk: the client sees the stream end early, as an error.
  log_warn("http: a stream was dropped without end(); closing the connection");
  response_done_ = true;
  keep_alive_ = false;
  flush();
}

void Session::flush() {
  if (writing_ || state_ == State::kClosed) return;
  if (queue_.empty()) {
    if (state_ == State::kHandling && response_done_) finish_response();
    return;
  }
  writing_ = true;
  while (!queue_.empty() && inflight_.size() < kMaxGather) {
    inflight_.push_back(std::move(queue_.front()));
    queue_.pop_front();
  }
  gather_.clear();
  for (const auto& s : inflight_) gather_.emplace_back(s.data(), s.size());
  asio::async_write(socket_, gather_, [self = shared_from_this()](const error_code& ec, size_t) {
    self->on_written(ec);
  });
}

void Session::on_written(const error_code& ec) {
  writing_ = false;
  inflight_.clear();
  if (state_ == State::kClosed) return;
  if (ec) return close_now();
  flush();
}

void Session::finish_response() {
  current_.reset();
  if (!keep_alive_) return graceful_close();
  begin_next_request();
}

void Session::arm_timer(double seconds) {
  const uint64_t gen = ++timer_gen_;
  timer_.expires_after(seconds_to<std::chrono::steady_clock::duration>(seconds));
  timer_.async_wait([self = shared_from_this(), gen](const error_code& ec) {
    if (ec || gen != self->timer_gen_) return;
    self->close_now();  // idle between requests, or done lingering
  });
}

void Session::disarm_timer() {
  ++timer_gen_;
  timer_.cancel();
}

// ---- the server ----

class HttpServerImpl final : public HttpServer {
 public:
  explicit HttpServerImpl(std::shared_ptr<Core> core) : core_(std::move(core)) {}
  ~HttpServerImpl() override { stop(); }

  int port() const override { return core_->port; }
  int64_t open_connections() const override { return core_->open.load(); }

  void start() override {
    std::lock_guard<std::mutex> lock(control_mu_);
    if (started_ || stopped_) return;
    started_ = true;
    work_.emplace(core_->ioc.get_executor());
    asio::post(core_->accept_strand, [core = core_] { core->do_accept(); });
    const int n = std::max(1, core_->opts.io_threads);
    for (int i = 0; i < n; ++i) {
      threads_.emplace_back([core = core_] {
        tls_io_core = core.get();
        for (;;) {
          try {
            core->ioc.run();
            return;
          } catch (const std::exception& e) {
            log_error(std::string("http: I/O thread: ") + e.what());
          }
        }
      });
    }
  }

  void stop_accepting() override {
    std::lock_guard<std::mutex> lock(control_mu_);
    close_acceptor_locked();
  }

  void stop() override {
    std::lock_guard<std::mutex> lock(control_mu_);
    if (stopped_) return;
    stopped_ = true;
    {
      std::lock_guard<std::mutex> gate(core_->gate_mu);
      core_->gate_open = false;
    }
    close_acceptor_locked();
    std::vector<std::shared_ptr<Session>> live;
    {
      std::lock_guard<std::mutex> sl(core_->sessions_mu);
      core_->stopping = true;
      for (auto& [ptr, weak] : core_->sessions)
        if (auto s = weak.lock()) live.push_back(std::move(s));
    }
    for (auto& s : live) asio::post(s->strand(), [s] { s->close_now(); });
    live.clear();
    work_.reset();
    // From a handler the threads cannot be joined: they end on their own once the closes have
    // run, and each holds the Core until then.
    const bool on_io_thread = tls_io_core == core_.get();
    for (auto& t : threads_) on_io_thread ? t.detach() : t.join();
    threads_.clear();
  }

 private:
  // The acceptor belongs to its strand while the threads run; wait for the close unless we are
  // on one of those threads.
  void close_acceptor_locked() {
    if (threads_.empty()) {
      core_->close_acceptor();
      return;
    }
    if (tls_io_core == core_.get()) {
      asio::post(core_->accept_strand, [core = core_] { core->close_acceptor(); });
      return;
    }
    std::promise<void> done;
    asio::post(core_->accept_strand, [core = core_, &done] {
      core->close_acceptor();
      done.set_value();
    });
    done.get_future().wait();
  }

  std::shared_ptr<Core> core_;
  std::mutex control_mu_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::vector<std::thread> threads_;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace

Expected<std::unique_ptr<HttpServer>> HttpServer::create(const HttpServerOptions& opts,
                                                         Handler handler) {
  const std::string where = host_port(opts.host, opts.port);
  if (!handler) return make_error("cannot listen on " + where + ": no request handler");
  if (opts.port < 0 || opts.port > 65535)
    return make_error("cannot listen on " + where + ": port must be 0..65535");
  raise_fd_limit(opts.max_connections);

  auto core = std::make_shared<Core>(opts, std::move(handler));
  error_code ec;
  tcp::resolver resolver(core->ioc);
  auto results = resolver.resolve(opts.host, std::to_string(opts.port),
                                  tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || results.empty())
    return make_error("cannot listen on " + where + ": cannot resolve host '" + opts.host + "'" +
                      (ec ? ": " + lower_first(ec.message()) : std::string()));
  const tcp::endpoint endpoint = results.begin()->endpoint();
  auto fail = [&](const error_code& e) -> Error {
    return make_error("cannot listen on " + where + ": " + lower_first(e.message()));
  };
  Acceptor& acc = core->acceptor;
  acc.open(endpoint.protocol(), ec);
  if (ec) return fail(ec);
  acc.set_option(tcp::acceptor::reuse_address(true), ec);
  if (ec) return fail(ec);
  acc.bind(endpoint, ec);
  if (ec) return fail(ec);
  acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail(ec);
  core->port = acc.local_endpoint(ec).port();
  if (ec) return fail(ec);
  return std::unique_ptr<HttpServer>(std::make_unique<HttpServerImpl>(std::move(core)));
}

}  // namespace fennec::server
