// The HTTP server against a small blocking client written on POSIX sockets, so that what is
// checked is the bytes on the wire: framing, keep-alive, limits, streaming, disconnects.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fennec::server {
namespace {

using namespace std::chrono_literals;

struct Reply {
  int status = -1;  // -1: the connection ended (or timed out) before a status line
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

// One blocking connection to 127.0.0.1:port; reads time out after 10 s so a bug fails the
// test instead of hanging it.
class Client {
 public:
  explicit Client(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~Client() { close(); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  bool send(const std::string& data) {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads the status line and headers (skipping 1xx answers).
  Reply read_head() {
    Reply r;
    for (;;) {
      size_t end;
      while ((end = buf_.find("\r\n\r\n")) == std::string::npos)
        if (!fill()) return r;
      std::string head = buf_.substr(0, end);
      buf_.erase(0, end + 4);
      size_t line_end = head.find("\r\n");
      std::string status_line = head.substr(0, line_end);
      if (status_line.size() < 12 || status_line.compare(0, 5, "HTTP/") != 0) return r;
      r.status = std::stoi(status_line.substr(9, 3));
      r.headers.clear();
      size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
      while (pos < head.size()) {
        size_t next = head.find("\r\n", pos);
        if (next == std::string::npos) next = head.size();
        std::string line = head.substr(pos, next - pos);
        size_t colon = line.find(':');
        std::string name = line.substr(0, colon);
        for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        std::string value = line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.erase(0, 1);
        r.headers[name] = value;
        pos = next + 2;
      }
      if (r.status / 100 != 1) return r;
    }
  }

  // Reads the body that the head announces: Content-Length, chunked, or up to the close.
  bool read_body(Reply& r) {
    if (r.header("transfer-encoding") == "chunked") {
      for (;;) {
        std::string line;
        if (!read_line(line)) return false;
        size_t size = std::stoul(line, nullptr, 16);
        if (size == 0) {
          std::string trailer;
          do {
            if (!read_line(trailer)) return false;
          } while (!trailer.empty());
          return true;
        }
        if (!read_exact(size + 2)) return false;
        if (buf_.compare(size, 2, "\r\n") != 0) return false;
        r.body += buf_.substr(0, size);
        buf_.erase(0, size + 2);
      }
    }
    if (!r.header("content-length").empty()) {
      size_t n = std::stoul(r.header("content-length"));
      if (!read_exact(n)) return false;
      r.body = buf_.substr(0, n);
      buf_.erase(0, n);
      return true;
    }
    while (fill()) {
    }
    r.body = std::move(buf_);
    buf_.clear();
    return true;
  }

  Reply read_reply() {
    Reply r = read_head();
    if (r.status >= 0 && !read_body(r)) r.status = -2;
    return r;
  }

  Reply request(const std::string& raw) {
    if (!send(raw)) return {};
    return read_reply();
  }

  // True when the server has closed the connection (read returns 0 or a reset) in time.
  bool closed_by_server() {
    for (;;) {
      char c[512];
      ssize_t n = ::recv(fd_, c, sizeof c, 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }

 private:
  bool fill() {
    char tmp[16384];
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }
  bool read_exact(size_t n) {
    while (buf_.size() < n)
      if (!fill()) return false;
    return true;
  }
  bool read_line(std::string& line) {
    size_t end;
    while ((end = buf_.find("\r\n")) == std::string::npos)
      if (!fill()) return false;
    line = buf_.substr(0, end);
    buf_.erase(0, end + 2);
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
};

std::string get(const std::string& target, const std::string& extra = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: localhost\r\n" + extra + "\r\n";
}

std::string post(const std::string& target, const std::string& body) {
  return "POST " + target + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::unique_ptr<HttpServer> serve(Handler handler, HttpServerOptions opts = {}) {
  opts.port = 0;
  auto server = HttpServer::create(opts, std::move(handler));
  EXPECT_TRUE(server.has_value()) << (server ? "" : server.error().message);
  if (!server) return nullptr;
  (*server)->start();
  return std::move(server).value();
}

// Waits up to `limit` for pred() under the lock.
template <class Pred>
bool wait_for(std::mutex& mu, std::condition_variable& cv, Pred pred,
              std::chrono::milliseconds limit = 10000ms) {
  std::unique_lock<std::mutex> lock(mu);
  return cv.wait_for(lock, limit, pred);
}

bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds limit = 10000ms) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

// Echoes what it saw, as plain text.
void echo(const HttpRequest& req, std::shared_ptr<Response> resp) {
  std::string text = req.method + " " + req.target + " " + req.path + " [" + req.body + "] " +
                     req.header("x-test");
  resp->send(200, "text/plain", text, {{"X-Remote", req.remote}});
}

TEST(HttpServerTest, GetAndPostWithBody) {
  auto server = serve(echo);
  ASSERT_TRUE(server);
  EXPECT_GT(server->port(), 0);  // port 0 picked a free one
  Client c(server->port());
  ASSERT_TRUE(c.connected());

  Reply r = c.request(get("/v1/models?x=1", "X-Test: yes\r\n"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "GET /v1/models?x=1 /v1/models [] yes");
  EXPECT_EQ(r.header("server"), "fennec");
  EXPECT_EQ(r.header("content-type"), "text/plain");
  EXPECT_EQ(r.header("connection"), "keep-alive");

  std::string body = "{\"model\":\"m\",\"text\":\"" + std::string(100000, 'a') + "\"}";
  r = c.request(post("/v1/completions", body));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /v1/completions /v1/completions [" + body + "] ");
}

TEST(HttpServerTest, KeepAliveServesSeveralRequestsOnOneConnection) {
  std::atomic<int> calls{0};
  auto server = serve([&](const HttpRequest& req, std::shared_ptr<Response> resp) {
    ++calls;
    echo(req, std::move(resp));
  });
  ASSERT_TRUE(server);
  Client c(server->port());
  Reply a = c.request(get("/a"));
  Reply b = c.request(post("/b", "hello"));
  EXPECT_EQ(a.status, 200);
  EXPECT_EQ(b.status, 200);
  EXPECT_EQ(b.body, "POST /b /b [hello] ");
  EXPECT_EQ(a.header("x-remote"), b.header("x-remote"));  // the same client port
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(server->open_connections(), 1);

  // Two requests in one write (pipelined) are answered in order.
  ASSERT_TRUE(c.send(get("/p1") + get("/p2")));
  Reply p1 = c.read_reply();
  Reply p2 = c.read_reply();
  EXPECT_EQ(p1.body, "GET /p1 /p1 [] ");
  EXPECT_EQ(p2.body, "GET /p2 /p2 [] ");

  // Connection: close is honoured.
  Reply last = c.request(get("/c", "Connection: close\r\n"));
  EXPECT_EQ(last.status, 200);
  EXPECT_EQ(last.header("connection"), "close");
  EXPECT_TRUE(c.closed_by_server());
}

TEST(HttpServerTest, UnknownMethodReachesTheHandler) {
  auto server = serve([](const HttpRequest& req, std::shared_ptr<Response> resp) {
    resp->send(req.method == "BREW" ? 405 : 200, "application/json", "{}");
  });
  ASSERT_TRUE(server);
  Client c(server->port());
  Reply r = c.request("BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(r.status, 405);
}

TEST(HttpServerTest, BodyOverTheLimitGets413WithoutTheHandler) {
  std::atomic<int> calls{0};
  HttpServerOptions opts;
  opts.max_body_bytes = 1024;
  auto server = serve(
      [&](const HttpRequest& req, std::shared_ptr<Response> resp) {
        ++calls;
        echo(req, std::move(resp));
      },
      opts);
  ASSERT_TRUE(server);

  Client ok(server->port());
  EXPECT_EQ(ok.request(post("/x", std::string(1024, 'b'))).status, 200);

  Client c(server->port());
  Reply r = c.request(post("/x", std::string(200000, 'b')));
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_NE(r.body.find("\"code\":\"request_too_large\""), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("\"type\":\"invalid_request_error\""), std::string::npos);
  EXPECT_NE(r.body.find("\"param\":null"), std::string::npos);
  EXPECT_TRUE(c.closed_by_server());

  // Chunked bodies are counted as they arrive.
  Client chunked(server->port());
  std::string chunk(1000, 'c');
  std::string req = "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 3; ++i) req += "3e8\r\n" + chunk + "\r\n";
  req += "0\r\n\r\n";
  EXPECT_EQ(chunked.request(req).status, 413);
  EXPECT_EQ(calls.load(), 1);
}

TEST(HttpServerTest, ExpectContinueGetsAnInterimAnswer) {
  auto server = serve(echo);
  ASSERT_TRUE(server);
  Client c(server->port());
  ASSERT_TRUE(
      c.send("POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
  ASSERT_TRUE(c.send("hello"));
  Reply r = c.read_reply();  // read_head skips the 100
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /e /e [hello] ");
}

TEST(HttpServerTest, MalformedRequestGets400AndClose) {
  std::atomic<int> calls{0};
  auto server = serve([&](const HttpRequest& req, std::shared_ptr<Response> resp) {
    ++calls;
    echo(req, std::move(resp));
  });
  ASSERT_TRUE(server);
  for (std::string bad : {std::string("GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"),
                          std::string("GET / HTTX/1.1\r\n\r\n"),
                          std::string("POST / HTTP/1.1\r\nContent-Length: zz\r\n\r\n"),
                          std::string("\x01\x02\x03 garbage\r\n\r\n")}) {
    Client c(server->port());
    Reply r = c.request(bad);
    EXPECT_EQ(r.status, 400) << bad;
    EXPECT_NE(r.body.find("malformed_request"), std::string::npos) << r.body;
    EXPECT_TRUE(c.closed_by_server());
  }
  EXPECT_EQ(calls.load(), 0);
}

// Streams from another thread, as the engine does: the handler returns at once.
TEST(HttpServerTest, StreamsChunksWrittenFromAnotherThread) {
  std::vector<std::thread> producers;
  std::mutex mu;
  auto server = serve([&](const HttpRequest& req, std::shared_ptr<Response> resp) {
    std::lock_guard<std::mutex> lock(mu);
    int n = std::stoi(req.target.substr(req.target.find('=') + 1));
    producers.emplace_back([resp, n] {
      resp->start_stream(200, "text/event-stream");
      for (int i = 0; i < n; ++i) {
        resp->write("data: {\"i\":" + std::to_string(i) + "}\n\n");
        if (i % 5 == 0) std::this_thread::sleep_for(1ms);
      }
      resp->write("");  // empty writes are ignored (they would end the chunked body)
      resp->write("data: [DONE]\n\n");
      resp->end();
      resp->write("after the end");  // ignored
    });
  });
  ASSERT_TRUE(server);
  Client c(server->port());
  for (int n : {40, 3}) {  // the second on the same connection: keep-alive after a stream
    Reply r = c.request(get("/stream?n=" + std::to_string(n)));
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.header("transfer-encoding"), "chunked");
    EXPECT_EQ(r.header("content-type"), "text/event-stream");
    EXPECT_EQ(r.header("cache-control"), "no-cache");
    EXPECT_EQ(r.header("connection"), "keep-alive");
    EXPECT_EQ(r.header("server"), "fennec");
    std::string want;
    for (int i = 0; i < n; ++i) want += "data: {\"i\":" + std::to_string(i) + "}\n\n";
    want += "data: [DONE]\n\n";
    EXPECT_EQ(r.body, want);
  }
  std::lock_guard<std::mutex> lock(mu);
  for (auto& t : producers) t.join();
}

TEST(HttpServerTest, DisconnectMidStreamIsReportedOnceAndLaterWritesAreNoOps) {
  std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<Response> held;
  std::atomic<int> disconnects{0};
  auto server = serve([&](const HttpRequest&, std::shared_ptr<Response> resp) {
    resp->on_disconnect([&] {
      ++disconnects;
      cv.notify_all();
    });
    resp->start_stream(200, "text/event-stream");
    resp->write("data: first\n\n");
    std::lock_guard<std::mutex> lock(mu);
    held = resp;
    cv.notify_all();
  });
  ASSERT_TRUE(server);
  {
    Client c(server->port());
    ASSERT_TRUE(c.send(get("/s")));
    Reply r = c.read_head();
    EXPECT_EQ(r.status, 200);
    ASSERT_TRUE(wait_for(mu, cv, [&] { return held != nullptr; }));
    EXPECT_FALSE(held->closed());
    held->write("data: second\n\n");
  }  // the client goes away mid-stream
  ASSERT_TRUE(wait_for(mu, cv, [&] { return disconnects.load() == 1; }));
  EXPECT_TRUE(held->closed());
  for (int i = 0; i < 100; ++i) held->write("data: more\n\n");
  held->end();
  held->send(200, "text/plain", "late");
  held->on_disconnect([&] { ++disconnects; });  // already reported: not again
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(disconnects.load(), 1);
  EXPECT_EQ(server->open_connections(), 0);

  // The server carries on.
  Client again(server->port());
  ASSERT_TRUE(again.send(get("/s2")));
  EXPECT_EQ(again.read_head().status, 200);
}

TEST(HttpServerTest, DisconnectWhileWaitingIsReported) {
  std::atomic<int> disconnects{0};
  std::atomic<int> calls{0};
  std::shared_ptr<Response> held;
  std::mutex mu;
  auto server = serve([&](const HttpRequest&, std::shared_ptr<Response> resp) {
    resp->on_disconnect([&] { ++disconnects; });
    std::lock_guard<std::mutex> lock(mu);
    held = resp;  // never answered
    ++calls;
  });
  ASSERT_TRUE(server);
  {
    Client c(server->port());
    ASSERT_TRUE(c.send(get("/wait")));
    ASSERT_TRUE(eventually([&] { return calls.load() == 1; }));
  }
  ASSERT_TRUE(eventually([&] { return disconnects.load() == 1; }));
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_TRUE(held->closed());
  held->send(200, "text/plain", "too late");
}

TEST(HttpServerTest, DroppedResponsesDoNotLeaveTheClientWaiting) {
  auto server = serve([](const HttpRequest& req, std::shared_ptr<Response> resp) {
    if (req.path == "/stream") {
      resp->start_stream(200, "text/event-stream");
      resp->write("data: partial\n\n");
    }
  });  // resp is dropped here
  ASSERT_TRUE(server);
  Client c(server->port());
  Reply r = c.request(get("/forgot"));
  EXPECT_EQ(r.status, 500);
  EXPECT_NE(r.body.find("internal_error"), std::string::npos);
  Reply s = c.request(get("/stream"));  // keep-alive still works after the 500
  EXPECT_EQ(s.status, -2);              // the chunked body ends without its last chunk
}

// Many streams at once on one I/O thread; an "engine" thread writes to all of them in rounds,
// only after every request has arrived, so they really are concurrent.
TEST(HttpServerTest, FiveHundredConcurrentStreams) {
  constexpr int kConns = 500;
  constexpr int kRounds = 8;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<int, std::shared_ptr<Response>>> pending;
  HttpServerOptions opts;
  opts.io_threads = 1;
  auto server = serve(
      [&](const HttpRequest& req, std::shared_ptr<Response> resp) {
        int id = std::stoi(req.target.substr(req.target.find('=') + 1));
        resp->start_stream(200, "text/event-stream");
        std::lock_guard<std::mutex> lock(mu);
        pending.emplace_back(id, std::move(resp));
        cv.notify_all();
      },
      opts);
  ASSERT_TRUE(server);

  std::atomic<int64_t> peak{0};
  std::thread engine([&] {
    auto all_arrived = [&] { return pending.size() == size_t{kConns}; };
    if (!wait_for(mu, cv, all_arrived, 60000ms)) return;
    peak = server->open_connections();
    std::vector<std::pair<int, std::shared_ptr<Response>>> all;
    {
      std::lock_guard<std::mutex> lock(mu);
      all.swap(pending);
    }
    for (int k = 0; k < kRounds; ++k)
      for (auto& [id, resp] : all)
        resp->write("data: " + std::to_string(id) + "-" + std::to_string(k) + "\n\n");
    for (auto& [id, resp] : all) resp->end();
  });

  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < kConns; ++i) {
    clients.push_back(std::make_unique<Client>(server->port()));
    if (!clients.back()->connected() ||
        !clients.back()->send(get("/stream?id=" + std::to_string(i)))) {
      ADD_FAILURE() << "connection " << i << " failed";
      break;
    }
  }
  int good = 0;
  std::string first_bad;
  for (int i = 0; i < kConns; ++i) {
    Reply r = clients[i]->read_reply();
    std::string want;
    for (int k = 0; k < kRounds; ++k)
      want += "data: " + std::to_string(i) + "-" + std::to_string(k) + "\n\n";
    if (r.status == 200 && r.body == want) {
      ++good;
    } else if (first_bad.empty()) {
      first_bad = "connection " + std::to_string(i) + ": status " + std::to_string(r.status) +
                  ", body " + r.body.substr(0, 200);
    }
    if (r.status < 0) break;  // timed out: the others would too, 10 s each
  }
  engine.join();
  EXPECT_EQ(good, kConns) << first_bad;
  EXPECT_EQ(peak.load(), kConns);
  clients.clear();
  EXPECT_TRUE(eventually([&] { return server->open_connections() == 0; }));
}

TEST(HttpServerTest, ConnectionsBeyondTheLimitGet503) {
  HttpServerOptions opts;
  opts.max_connections = 2;
  auto server = serve(echo, opts);
  ASSERT_TRUE(server);
  Client a(server->port()), b(server->port());
  EXPECT_EQ(a.request(get("/a")).status, 200);
  EXPECT_EQ(b.request(get("/b")).status, 200);
  Client c(server->port());
  Reply r = c.request(get("/c"));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.header("retry-after"), "1");
  EXPECT_NE(r.body.find("too_many_connections"), std::string::npos);
  EXPECT_TRUE(c.closed_by_server());
  a.close();
  ASSERT_TRUE(eventually([&] { return server->open_connections() == 1; }));
  Client d(server->port());
  EXPECT_EQ(d.request(get("/d")).status, 200);
}

TEST(HttpServerTest, IdleConnectionsAreClosed) {
  HttpServerOptions opts;
  opts.idle_timeout_seconds = 0.2;
  auto server = serve(echo, opts);
  ASSERT_TRUE(server);
  Client c(server->port());
  EXPECT_EQ(c.request(get("/a")).status, 200);
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  EXPECT_TRUE(eventually([&] { return server->open_connections() == 0; }));
}

TEST(HttpServerTest, PortInUseIsAnError) {
  auto first = serve(echo);
  ASSERT_TRUE(first);
  HttpServerOptions opts;
  opts.port = first->port();
  auto second = HttpServer::create(opts, echo);
  ASSERT_FALSE(second.has_value());
  EXPECT_EQ(second.error().message, "cannot listen on 127.0.0.1:" + std::to_string(first->port()) +
                                        ": address already in use");
  opts.host = "no-such-host.invalid";
  opts.port = 0;
  auto bad_host = HttpServer::create(opts, echo);
  ASSERT_FALSE(bad_host.has_value());
  EXPECT_NE(bad_host.error().message.find("cannot listen on no-such-host.invalid:0"),
            std::string::npos);
}

TEST(HttpServerTest, StopAcceptingKeepsOpenConnections) {
  auto server = serve(echo);
  ASSERT_TRUE(server);
  Client open_one(server->port());
  EXPECT_EQ(open_one.request(get("/a")).status, 200);
  server->stop_accepting();
  Client refused(server->port());
  EXPECT_FALSE(refused.connected());
  EXPECT_EQ(open_one.request(get("/b")).status, 200);
}

// A response may outlive the server: stop() reports the disconnect, later calls are no-ops.
TEST(HttpServerTest, StopWithPendingResponses) {
  std::mutex mu;
  std::vector<std::shared_ptr<Response>> held;
  std::atomic<int> disconnects{0};
  auto server = serve([&](const HttpRequest&, std::shared_ptr<Response> resp) {
    resp->on_disconnect([&] { ++disconnects; });
    resp->start_stream(200, "text/event-stream");
    std::lock_guard<std::mutex> lock(mu);
    held.push_back(std::move(resp));
  });
  ASSERT_TRUE(server);
  Client a(server->port()), b(server->port());
  ASSERT_TRUE(a.send(get("/a")));
  ASSERT_TRUE(b.send(get("/b")));
  ASSERT_TRUE(eventually([&] {
    std::lock_guard<std::mutex> lock(mu);
    return held.size() == 2;
  }));
  std::atomic<bool> writing{true};
  std::thread writer([&] {  // keeps writing while the server stops and goes away
    while (writing) {
      std::lock_guard<std::mutex> lock(mu);
      for (auto& r : held) r->write("data: x\n\n");
    }
  });
  std::this_thread::sleep_for(20ms);
  server->stop();
  EXPECT_EQ(disconnects.load(), 2);
  server.reset();
  std::this_thread::sleep_for(20ms);
  writing = false;
  writer.join();
  for (auto& r : held) {
    EXPECT_TRUE(r->closed());
    r->end();
  }
  EXPECT_EQ(a.read_head().status, 200);
  EXPECT_TRUE(a.closed_by_server());  // what was written, then the close
}

}  // namespace
}  // namespace fennec::server
