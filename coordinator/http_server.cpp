#include "coordinator/http_server.h"

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <deque>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

namespace dshpc {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

namespace {

// How long a closing connection keeps reading (and discarding) what the client still sends, so
// that our last response is not destroyed by a TCP reset (413 sent while the body is arriving).
constexpr std::chrono::milliseconds kLingerTimeout(500);
// Pause after a failed accept (EMFILE and the like) before trying again.
constexpr std::chrono::milliseconds kAcceptRetryDelay(50);
constexpr char kServerName[] = "dshpc";

HttpResponse default_error_response(beast_http::status status, const std::string& message) {
  HttpResponse response(status, 11);
  response.set(beast_http::field::content_type, "text/plain; charset=utf-8");
  response.body() = message + "\n";
  return response;
}

std::string hex(size_t value) {
  char digits[20];
  int n = std::snprintf(digits, sizeof(digits), "%zx", value);
  return std::string(digits, static_cast<size_t>(n));
}

}  // namespace

struct HttpServer::Core {
  GatewayConfig config;
  HttpHandler handler;
  ErrorResponseFactory error_response;

  std::atomic<bool> stopping{false};
  // False once the I/O threads are joined: nothing may be dispatched to a strand any more.
  std::atomic<bool> io_running{true};

  std::atomic<int64_t> connections_open{0};
  std::atomic<int64_t> connections_accepted_total{0};
  std::atomic<int64_t> connections_rejected_total{0};
  std::atomic<int64_t> malformed_requests_total{0};
  std::atomic<int64_t> header_too_large_total{0};
  std::atomic<int64_t> body_too_large_total{0};
  std::atomic<int64_t> read_timeouts_total{0};
  std::atomic<int64_t> clients_gone_total{0};

  std::mutex sessions_mutex;
  std::vector<std::weak_ptr<HttpSession>> sessions;

  HttpResponse make_error(beast_http::status status, const std::string& message) const {
    return error_response ? error_response(status, message)
                          : default_error_response(status, message);
  }
};

// One connection. Everything runs on the socket's strand. Phases:
//   kReading     waiting for (or reading) a request; read_timer_ bounds it
//   kHandling    the handler has the request; nothing sent yet
//   kStreaming   header sent, body pieces queued as they come
//   kResponding  the whole response (or the last chunk) is queued; finish_response() follows
//   kClosing     shutdown(send) done, discarding input until EOF or kLingerTimeout
//   kClosed      socket closed
// While kHandling / kStreaming / kResponding a "watch" read is posted so that a client that
// leaves is noticed; its bytes (a pipelined request) are kept in buffer_ for the next read.
class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  using Core = HttpServer::Core;

  HttpSession(tcp::socket socket, std::shared_ptr<Core> core, bool counted)
      : socket_(std::move(socket)),
        core_(std::move(core)),
        counted_(counted),
        read_timer_(socket_.get_executor()),
        write_timer_(socket_.get_executor()),
        buffer_(core_->config.max_header_bytes + 64 * 1024) {
    if (counted_) core_->connections_open.fetch_add(1);
  }
  ~HttpSession() {
    if (counted_) core_->connections_open.fetch_sub(1);
  }

  net::any_io_executor executor() { return socket_.get_executor(); }
  bool io_running() const { return core_->io_running.load(); }

  void start() { read_next(); }

  // Answers at once (the connection limit) and closes.
  void reject(HttpResponse response) {
    keep_alive_ = false;
    start_response(std::move(response));
  }

  void shutdown(bool force) {
    closing_ = true;
    keep_alive_ = false;
    if (phase_ == Phase::kClosed) return;
    if (force) {
      client_lost();
      return;
    }
    // An idle connection closes now; one with a request in progress after its response.
    if (phase_ == Phase::kReading && !(parser_ && parser_->got_some())) close_now();
  }

  void respond(uint64_t serial, HttpResponse response) {
    if (!current(serial) || phase_ != Phase::kHandling) return;
    start_response(std::move(response));
  }

  void begin_stream(uint64_t serial, HttpStreamHeader header) {
    if (!current(serial) || phase_ != Phase::kHandling) return;
    phase_ = Phase::kStreaming;
    chunked_ = version_ >= 11;
    if (!chunked_) keep_alive_ = false;  // HTTP/1.0: the body ends when the connection does
    header.version(version_);
    header.set(beast_http::field::server, kServerName);
    if (chunked_) header.chunked(true);
    header.keep_alive(keep_alive_);
    std::ostringstream text;
    text << header.base();
    enqueue(text.str());
  }

  void write(uint64_t serial, std::string data) {
    if (!current(serial) || phase_ != Phase::kStreaming || data.empty()) return;
    std::string framed;
    if (chunked_) {
      framed.reserve(data.size() + 12);
      framed += hex(data.size());
      framed += "\r\n";
      framed += data;
      framed += "\r\n";
    } else {
      framed = std::move(data);
    }
    if (out_bytes_ + framed.size() > core_->config.max_stream_buffer_bytes) {
      client_lost();  // the client does not read fast enough
      return;
    }
    enqueue(std::move(framed));
  }

  void end_stream(uint64_t serial) {
    if (!current(serial) || phase_ != Phase::kStreaming) return;
    phase_ = Phase::kResponding;
    end_after_writes_ = true;
    if (chunked_) {
      enqueue("0\r\n\r\n");
    } else if (!writing_ && out_.empty()) {
      finish_response();
    }
  }

  void on_client_gone(uint64_t serial, std::function<void()> callback) {
    if (serial != serial_) return;
    if (gone_) {
      callback();
      return;
    }
    if (current(serial)) gone_callback_ = std::move(callback);
  }

  // The exchange was destroyed; a request left without an answer gets one.
  void abandon(uint64_t serial) {
    if (!current(serial)) return;
    if (phase_ == Phase::kHandling) {
      start_response(core_->make_error(beast_http::status::internal_server_error,
                                       "the request was dropped without a response"));
    } else if (phase_ == Phase::kStreaming) {
      end_stream(serial);
    }
  }

 private:
  enum class Phase { kReading, kHandling, kStreaming, kResponding, kClosing, kClosed };
  enum class AfterWatch { kNothing, kReadNext, kClose };

  bool current(uint64_t serial) const {
    return serial == serial_ && (phase_ == Phase::kHandling || phase_ == Phase::kStreaming);
  }

  // ---- reading a request ----

  void read_next() {
    if (closing_) {
      close_gracefully();
      return;
    }
    phase_ = Phase::kReading;
    read_timed_out_ = false;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(core_->config.max_header_bytes));
    parser_->body_limit(core_->config.max_body_bytes);
    arm_read_timer(core_->config.read_timeout);
    beast_http::async_read_header(
        socket_, buffer_, *parser_,
        [self = shared_from_this()](error_code ec, size_t) { self->on_header(ec); });
  }

  void on_header(error_code ec) {
    if (ec) {
      on_read_error(ec);
      return;
    }
    const auto& request = parser_->get();
    auto expect = request[beast_http::field::expect];
    if (!parser_->is_done() && boost::beast::iequals(expect, "100-continue")) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(socket_, net::buffer(kContinue),
                       [self = shared_from_this()](error_code ec, size_t) {
                         if (ec) {
                           self->on_read_error(ec);
                         } else {
                           self->read_body();
                         }
                       });
      return;
    }
    read_body();
  }

  void read_body() {
    beast_http::async_read(
        socket_, buffer_, *parser_,
        [self = shared_from_this()](error_code ec, size_t) { self->on_body(ec); });
  }

  void on_body(error_code ec) {
    cancel_read_timer();
    if (ec) {
      on_read_error(ec);
      return;
    }
    dispatch_request();
  }

  void on_read_error(error_code ec) {
    cancel_read_timer();
    if (phase_ != Phase::kReading) return;  // closed meanwhile
    const GatewayConfig& config = core_->config;
    if (read_timed_out_) {
      core_->read_timeouts_total.fetch_add(1);
      if (parser_ && parser_->got_some()) {
        send_error(beast_http::status::request_timeout,
                   "the request did not arrive within the read timeout of " +
                       std::to_string(config.read_timeout.count()) + " ms");
      } else {
        close_now();  // an idle keep-alive connection
      }
      return;
    }
    if (ec == beast_http::error::end_of_stream || ec == net::error::eof) {
      close_now();
      return;
    }
    const bool header_done = parser_ && parser_->is_header_done();
    if (ec == beast_http::error::body_limit ||
        (ec == beast_http::error::buffer_overflow && header_done)) {
      core_->body_too_large_total.fetch_add(1);
      send_error(
          beast_http::status::payload_too_large,
          "request body exceeds the limit of " + std::to_string(config.max_body_bytes) + " bytes");
      return;
    }
    if (ec == beast_http::error::header_limit || ec == beast_http::error::buffer_overflow) {
      core_->header_too_large_total.fetch_add(1);
      send_error(beast_http::status::request_header_fields_too_large,
                 "request headers exceed the limit of " + std::to_string(config.max_header_bytes) +
                     " bytes");
      return;
    }
    if (ec.category() == beast_http::make_error_code(beast_http::error::bad_method).category()) {
      core_->malformed_requests_total.fetch_add(1);
      send_error(beast_http::status::bad_request, "malformed HTTP request: " + ec.message());
      return;
    }
    close_now();  // reset, aborted by shutdown, …
  }

  void dispatch_request() {
    HttpRequest request = parser_->release();
    parser_.reset();
    version_ = request.version() == 10 ? 10 : 11;
    head_request_ = request.method() == beast_http::verb::head;
    keep_alive_ = request.keep_alive() && !closing_;
    phase_ = Phase::kHandling;
    ++serial_;
    gone_callback_ = nullptr;
    watch_start();
    auto exchange = std::make_shared<HttpExchange>(shared_from_this(), serial_, std::move(request));
    const uint64_t serial = serial_;
    try {
      core_->handler(exchange);
    } catch (const std::exception& e) {
      if (current(serial) && phase_ == Phase::kHandling) {
        start_response(core_->make_error(beast_http::status::internal_server_error,
                                         std::string("internal error: ") + e.what()));
      } else if (current(serial)) {
        end_stream(serial);
      }
    }
  }

  // ---- writing ----

  void start_response(HttpResponse response) {
    phase_ = Phase::kResponding;
    response.version(version_);
    response.keep_alive(keep_alive_);
    response.set(beast_http::field::server, kServerName);
    response.prepare_payload();
    std::ostringstream text;
    if (head_request_) {
      text << response.base();  // the header a GET would get, without the body
    } else {
      text << response;
    }
    end_after_writes_ = true;
    enqueue(text.str());
  }

  void send_error(beast_http::status status, const std::string& message) {
    keep_alive_ = false;
    head_request_ = false;
    start_response(core_->make_error(status, message));
  }

  void enqueue(std::string bytes) {
    out_bytes_ += bytes.size();
    out_.push_back(std::move(bytes));
    if (!writing_) write_next();
  }

  void write_next() {
    writing_ = true;
    const uint64_t generation = ++write_timer_generation_;
    write_timer_.expires_after(core_->config.write_timeout);
    write_timer_.async_wait([self = shared_from_this(), generation](error_code ec) {
      if (!ec && generation == self->write_timer_generation_ && self->writing_) {
        self->client_lost();
      }
    });
    net::async_write(socket_, net::buffer(out_.front()),
                     [self = shared_from_this()](error_code ec, size_t) { self->on_write(ec); });
  }

  void on_write(error_code ec) {
    writing_ = false;
    ++write_timer_generation_;
    write_timer_.cancel();
    if (phase_ == Phase::kClosed) return;
    if (ec) {
      client_lost();
      return;
    }
    out_bytes_ -= out_.front().size();
    out_.pop_front();
    if (!out_.empty()) {
      write_next();
    } else if (end_after_writes_ && phase_ == Phase::kResponding) {
      finish_response();
    }
  }

  void finish_response() {
    end_after_writes_ = false;
    gone_callback_ = nullptr;
    phase_ = Phase::kReading;  // in between: exchange calls are ignored from here on
    const bool next = keep_alive_ && !closing_;
    if (watch_pending_) {
      after_watch_ = next ? AfterWatch::kReadNext : AfterWatch::kClose;
      error_code ignored;
      socket_.cancel(ignored);  // the watch read is the only operation outstanding
      return;
    }
    if (next) {
      read_next();
    } else {
      close_gracefully();
    }
  }

  // ---- noticing a client that leaves ----

  void watch_start() {
    if (watch_pending_ || phase_ == Phase::kClosed) return;
    const size_t room = buffer_.max_size() - buffer_.size();
    if (room == 0) return;  // a pipelining client filled the buffer; stop watching
    watch_pending_ = true;
    socket_.async_read_some(
        buffer_.prepare(std::min<size_t>(room, 4096)),
        [self = shared_from_this()](error_code ec, size_t n) { self->on_watch(ec, n); });
  }

  void on_watch(error_code ec, size_t bytes) {
    watch_pending_ = false;
    if (!ec) buffer_.commit(bytes);
    if (after_watch_ != AfterWatch::kNothing) {
      const AfterWatch after = after_watch_;
      after_watch_ = AfterWatch::kNothing;
      if (phase_ == Phase::kClosed) return;
      if (after == AfterWatch::kReadNext) {
        read_next();
      } else {
        close_gracefully();
      }
      return;
    }
    if (phase_ != Phase::kHandling && phase_ != Phase::kStreaming && phase_ != Phase::kResponding) {
      return;
    }
    if (ec) {
      client_lost();
      return;
    }
    watch_start();
  }

  // ---- closing ----

  void client_lost() {
    if (phase_ == Phase::kClosed) return;
    const bool in_request =
        phase_ == Phase::kHandling || phase_ == Phase::kStreaming || phase_ == Phase::kResponding;
    close_now();
    gone_ = true;
    if (in_request) core_->clients_gone_total.fetch_add(1);
    if (gone_callback_) {
      std::function<void()> callback = std::move(gone_callback_);
      gone_callback_ = nullptr;
      callback();
    }
  }

  void close_now() {
    phase_ = Phase::kClosed;
    cancel_read_timer();
    ++write_timer_generation_;
    write_timer_.cancel();
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  void close_gracefully() {
    if (phase_ == Phase::kClosed) return;
    phase_ = Phase::kClosing;
    error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) {
      close_now();
      return;
    }
    const uint64_t generation = ++read_timer_generation_;
    read_timer_.expires_after(kLingerTimeout);
    read_timer_.async_wait([self = shared_from_this(), generation](error_code ec) {
      if (!ec && generation == self->read_timer_generation_) self->close_now();
    });
    linger_read();
  }

  void linger_read() {
    buffer_.consume(buffer_.size());
    socket_.async_read_some(buffer_.prepare(4096),
                            [self = shared_from_this()](error_code ec, size_t) {
                              if (self->phase_ != Phase::kClosing) return;
                              if (ec) {
                                self->close_now();
                              } else {
                                self->linger_read();
                              }
                            });
  }

  void arm_read_timer(std::chrono::milliseconds timeout) {
    const uint64_t generation = ++read_timer_generation_;
    read_timer_.expires_after(timeout);
    read_timer_.async_wait([self = shared_from_this(), generation](error_code ec) {
      if (ec || generation != self->read_timer_generation_) return;
      if (self->phase_ != Phase::kReading) return;
      self->read_timed_out_ = true;
      error_code ignored;
      self->socket_.cancel(ignored);
    });
  }

  void cancel_read_timer() {
    ++read_timer_generation_;
    read_timer_.cancel();
  }

  tcp::socket socket_;
  std::shared_ptr<Core> core_;
  const bool counted_;  // counts towards max_connections (rejected ones do not)
  net::steady_timer read_timer_;
  net::steady_timer write_timer_;
  uint64_t read_timer_generation_ = 0;  // a timer completion from an older arm is ignored
  uint64_t write_timer_generation_ = 0;
  bool read_timed_out_ = false;
  boost::beast::flat_buffer buffer_;
  std::optional<beast_http::request_parser<beast_http::string_body>> parser_;

  Phase phase_ = Phase::kReading;
  uint64_t serial_ = 0;  // the current request's number; exchanges of older ones are ignored
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool head_request_ = false;
  bool closing_ = false;  // the server is stopping: no further requests on this connection
  bool chunked_ = false;

  std::deque<std::string> out_;  // bytes queued for the client, front being written
  size_t out_bytes_ = 0;
  bool writing_ = false;
  bool end_after_writes_ = false;

  bool watch_pending_ = false;
  AfterWatch after_watch_ = AfterWatch::kNothing;
  std::function<void()> gone_callback_;
  bool gone_ = false;
};

// ---- HttpExchange ----

HttpExchange::HttpExchange(std::shared_ptr<HttpSession> session, uint64_t serial,
                           HttpRequest request)
    : session_(std::move(session)), serial_(serial), request_(std::move(request)) {}

HttpExchange::~HttpExchange() {
  if (!session_->io_running()) return;
  net::dispatch(session_->executor(),
                [session = session_, serial = serial_] { session->abandon(serial); });
}

boost::asio::any_io_executor HttpExchange::executor() const {
  return session_->executor();
}

void HttpExchange::respond(HttpResponse response) {
  net::dispatch(session_->executor(),
                [session = session_, serial = serial_, response = std::move(response)]() mutable {
                  session->respond(serial, std::move(response));
                });
}

void HttpExchange::begin_stream(HttpStreamHeader header) {
  net::dispatch(session_->executor(),
                [session = session_, serial = serial_, header = std::move(header)]() mutable {
                  session->begin_stream(serial, std::move(header));
                });
}

void HttpExchange::write(std::string data) {
  net::dispatch(session_->executor(),
                [session = session_, serial = serial_, data = std::move(data)]() mutable {
                  session->write(serial, std::move(data));
                });
}

void HttpExchange::end_stream() {
  net::dispatch(session_->executor(),
                [session = session_, serial = serial_] { session->end_stream(serial); });
}

void HttpExchange::on_client_gone(std::function<void()> callback) {
  net::dispatch(session_->executor(),
                [session = session_, serial = serial_, callback = std::move(callback)]() mutable {
                  session->on_client_gone(serial, std::move(callback));
                });
}

// ---- listener ----

class HttpListener : public std::enable_shared_from_this<HttpListener> {
 public:
  HttpListener(net::io_context& io_context, std::shared_ptr<HttpServer::Core> core)
      : io_context_(io_context),
        acceptor_(net::make_strand(io_context)),
        retry_timer_(acceptor_.get_executor()),
        core_(std::move(core)) {}

  Status open(const tcp::endpoint& endpoint, uint16_t* port) {
    error_code ec;
    const std::string where = "cannot listen on " + endpoint.address().to_string() + ":" +
                              std::to_string(endpoint.port());
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) return unavailable(where + ": " + ec.message());
    *port = acceptor_.local_endpoint(ec).port();
    if (ec) return unavailable(where + ": " + ec.message());
    return ok_status();
  }

  void run() {
    net::dispatch(acceptor_.get_executor(), [self = shared_from_this()] { self->accept(); });
  }

  void close() {
    net::post(acceptor_.get_executor(), [self = shared_from_this()] {
      error_code ignored;
      self->acceptor_.close(ignored);
      self->retry_timer_.cancel();
    });
  }

 private:
  void accept() {
    acceptor_.async_accept(net::make_strand(io_context_),
                           [self = shared_from_this()](error_code ec, tcp::socket socket) {
                             self->on_accept(ec, std::move(socket));
                           });
  }

  void on_accept(error_code ec, tcp::socket socket) {
    if (!acceptor_.is_open() || ec == net::error::operation_aborted) return;
    if (ec) {
      retry_timer_.expires_after(kAcceptRetryDelay);
      retry_timer_.async_wait([self = shared_from_this()](error_code ec) {
        if (!ec) self->accept();
      });
      return;
    }
    admit(std::move(socket));
    accept();
  }

  void admit(tcp::socket socket) {
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);  // SSE pieces are small and latency matters
    core_->connections_accepted_total.fetch_add(1);
    const bool over_limit =
        core_->connections_open.load() >= core_->config.max_connections || core_->stopping;
    auto session = std::make_shared<HttpSession>(std::move(socket), core_, !over_limit);
    if (over_limit) {
      core_->connections_rejected_total.fetch_add(1);
      HttpResponse response = core_->make_error(
          beast_http::status::service_unavailable,
          core_->stopping ? "the server is shutting down"
                          : "too many open connections (limit " +
                                std::to_string(core_->config.max_connections) + ")");
      net::dispatch(session->executor(), [session, response = std::move(response)]() mutable {
        session->reject(std::move(response));
      });
      return;
    }
    {
      std::lock_guard<std::mutex> lock(core_->sessions_mutex);
      auto& sessions = core_->sessions;
      sessions.erase(std::remove_if(sessions.begin(), sessions.end(),
                                    [](const auto& weak) { return weak.expired(); }),
                     sessions.end());
      sessions.push_back(session);
    }
    net::dispatch(session->executor(), [session] { session->start(); });
  }

  net::io_context& io_context_;
  tcp::acceptor acceptor_;
  net::steady_timer retry_timer_;
  std::shared_ptr<HttpServer::Core> core_;
};

// ---- HttpServer ----

struct HttpServer::Runtime {
  explicit Runtime(int threads) : io_context(threads) {}
  net::io_context io_context;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::shared_ptr<HttpListener> listener;
  std::vector<std::thread> threads;
};

HttpServer::HttpServer(GatewayConfig config, HttpHandler handler,
                       ErrorResponseFactory error_response)
    : core_(std::make_shared<Core>()) {
  core_->config = std::move(config);
  core_->handler = std::move(handler);
  core_->error_response = std::move(error_response);
}

HttpServer::~HttpServer() {
  stop();
}

Status HttpServer::start() {
  if (started_) return internal_error("HttpServer::start called twice");
  const GatewayConfig& config = core_->config;
  error_code ec;
  net::ip::address address = config.host == "localhost"
                                 ? net::ip::address(net::ip::address_v4::loopback())
                                 : net::ip::make_address(config.host, ec);
  if (ec) return invalid_argument("gateway.host: not an IP address: \"" + config.host + "\"");
  runtime_ = std::make_unique<Runtime>(config.io_threads);
  runtime_->listener = std::make_shared<HttpListener>(runtime_->io_context, core_);
  RETURN_IF_ERROR(runtime_->listener->open(tcp::endpoint(address, config.port), &port_));
  runtime_->listener->run();
  runtime_->work.emplace(runtime_->io_context.get_executor());
  for (int i = 0; i < config.io_threads; ++i) {
    runtime_->threads.emplace_back([runtime = runtime_.get()] { runtime->io_context.run(); });
  }
  started_ = true;
  return ok_status();
}

namespace {

template <typename Predicate>
void wait_until(Predicate done, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace

void HttpServer::stop(std::chrono::milliseconds grace) {
  if (!started_ || stopped_) return;
  stopped_ = true;
  core_->stopping = true;
  runtime_->listener->close();

  auto for_each_session = [this](bool force) {
    std::vector<std::shared_ptr<HttpSession>> sessions;
    {
      std::lock_guard<std::mutex> lock(core_->sessions_mutex);
      for (const auto& weak : core_->sessions) {
        if (auto session = weak.lock()) sessions.push_back(std::move(session));
      }
    }
    for (auto& session : sessions) {
      net::post(session->executor(), [session, force] { session->shutdown(force); });
    }
  };
  auto all_closed = [this] { return core_->connections_open.load() == 0; };

  for_each_session(/*force=*/false);
  wait_until(all_closed, grace);
  for_each_session(/*force=*/true);
  wait_until(all_closed, std::chrono::milliseconds(200));

  runtime_->work.reset();
  runtime_->io_context.stop();
  for (std::thread& thread : runtime_->threads) thread.join();
  runtime_->threads.clear();
  core_->io_running = false;
}

HttpServerStats HttpServer::stats() const {
  HttpServerStats s;
  s.connections_open = core_->connections_open.load();
  s.connections_accepted_total = core_->connections_accepted_total.load();
  s.connections_rejected_total = core_->connections_rejected_total.load();
  s.malformed_requests_total = core_->malformed_requests_total.load();
  s.header_too_large_total = core_->header_too_large_total.load();
  s.body_too_large_total = core_->body_too_large_total.load();
  s.read_timeouts_total = core_->read_timeouts_total.load();
  s.clients_gone_total = core_->clients_gone_total.load();
  return s;
}

}  // namespace dshpc
