// A small HTTP/1.1 server on Boost.Beast: one listener, one session per connection, each session
// a strand on a pool of I/O threads. It knows nothing about OpenAI; the gateway installs a handler.
//
// Per connection: keep-alive; a header limit (431) and a body limit (413, answered from the
// Content-Length before the body is read, and also enforced while reading a chunked body); a read
// timeout covering the whole request (a partial request gets 408, an idle keep-alive connection
// is closed); a write timeout and a bound on queued stream bytes (a client that stops reading
// counts as gone); "Expect: 100-continue" honoured. Over max_connections a new connection gets a
// 503 and is closed. Responses the server sends on its own get their body from an
// ErrorResponseFactory, so that they carry the gateway's JSON error shape.
//
// A request is handed to the handler as an HttpExchange, on the connection's strand. The handler
// answers at once or later, from any thread: respond() with a whole response, or begin_stream(),
// write()… and end_stream() for a chunked body (Server-Sent Events). While a request is
// outstanding the session keeps a read posted on the socket, so a client that closes its
// connection (EOF or reset) is noticed before any write fails; on_client_gone() callbacks then run
// on the strand. A client that half-closes its sending side after the request counts as gone
// (as in most serving frameworks). Requests pipelined behind an outstanding one are buffered and
// served in order.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/server_config.h"

namespace dshpc {

namespace beast_http = boost::beast::http;
using HttpRequest = beast_http::request<beast_http::string_body>;
using HttpResponse = beast_http::response<beast_http::string_body>;
using HttpStreamHeader = beast_http::response<beast_http::empty_body>;

class HttpSession;  // defined in http_server.cpp

// One request and the means to answer it. Every method may be called from any thread: calls are
// dispatched onto the connection's strand (inline when already there). Calls after the response
// ended, after the client went away, or out of order (write before begin_stream) are ignored.
class HttpExchange {
 public:
  HttpExchange(std::shared_ptr<HttpSession> session, uint64_t serial, HttpRequest request);
  ~HttpExchange();  // a request dropped without an answer gets a 500
  HttpExchange(const HttpExchange&) = delete;
  HttpExchange& operator=(const HttpExchange&) = delete;

  const HttpRequest& request() const { return request_; }
  // The connection's strand: post work here to serialise it with this connection's I/O.
  boost::asio::any_io_executor executor() const;

  // A whole response; Content-Length, keep-alive and Server are filled in.
  void respond(HttpResponse response);
  // A streamed response: the header (status, Content-Type …) now, then body pieces. Chunked
  // transfer encoding for HTTP/1.1 clients; HTTP/1.0 clients get a body ended by closing.
  void begin_stream(HttpStreamHeader header);
  void write(std::string data);
  void end_stream();

  // `callback` runs once on the strand if the client goes away (EOF, reset, write failure or
  // timeout, too much unread data) before the response ended; at once if it already has.
  void on_client_gone(std::function<void()> callback);

 private:
  std::shared_ptr<HttpSession> session_;
  uint64_t serial_;
  HttpRequest request_;
};

using HttpHandler = std::function<void(std::shared_ptr<HttpExchange>)>;
// Builds the response the server sends on its own: 400 (malformed HTTP), 408, 413, 431, 503
// (connection limit). Keep-alive and Content-Length are set by the server.
using ErrorResponseFactory = std::function<HttpResponse(beast_http::status, const std::string&)>;

struct HttpServerStats {
  int64_t connections_open = 0;
  int64_t connections_accepted_total = 0;
  int64_t connections_rejected_total = 0;  // over max_connections
  int64_t malformed_requests_total = 0;    // 400 from the HTTP parser
  int64_t header_too_large_total = 0;      // 431
  int64_t body_too_large_total = 0;        // 413
  int64_t read_timeouts_total = 0;         // 408 or closed idle
  int64_t clients_gone_total = 0;          // went away before their response ended
};

class HttpServer {
 public:
  // `config` must have passed validate(). Every HttpExchange must be released before the server
  // is destroyed (its socket belongs to the server's io_context).
  HttpServer(GatewayConfig config, HttpHandler handler, ErrorResponseFactory error_response);
  ~HttpServer();  // stop() with no grace
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and listens (synchronously, so that the caller learns of a taken port at once), then
  // starts the I/O threads. UNAVAILABLE when the address cannot be bound.
  Status start();
  // The bound port (useful with port 0); 0 before start().
  uint16_t port() const { return port_; }

  // Stops accepting, lets responses in progress finish for up to `grace` (idle keep-alive
  // connections close at once, busy ones after their response), then closes what is left, which
  // runs their on_client_gone callbacks, and joins the I/O threads. Not from an I/O thread.
  void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(0));

  HttpServerStats stats() const;

  struct Core;     // configuration, handler and counters, shared with the sessions
  struct Runtime;  // io_context, listener and threads; destroyed after the threads are joined

 private:
  std::shared_ptr<Core> core_;
  std::unique_ptr<Runtime> runtime_;
  uint16_t port_ = 0;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace dshpc
