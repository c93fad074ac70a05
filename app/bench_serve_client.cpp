// The asynchronous HTTP client of dshpc bench serve (see bench_serve_client.h).
//
// Timing: a request's clock starts when its connection is opened (so connection set-up counts,
// as it does for a client that opens one per request), TTFT stops at the first SSE chunk that
// carries output text, each later text chunk adds one inter-chunk gap, and E2E stops at
// "data: [DONE]". Chunks are stamped when the read that completed them returns, on the one I/O
// thread; the load generator's own delay is therefore part of every figure, and small (one JSON
// parse per chunk) next to a model step.
#include "app/bench_serve_client.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <limits>

namespace dshpc::bench_serve {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

std::string host_header(const ServerUrl& url) {
  const bool ipv6 = url.host.find(':') != std::string::npos;
  return (ipv6 ? "[" + url.host + "]" : url.host) + ":" + url.port;
}

http::request<http::string_body> make_request(const ServerUrl& url, const std::string& path,
                                              const std::string& body, bool stream) {
  http::request<http::string_body> request(body.empty() ? http::verb::get : http::verb::post,
                                           url.prefix + path, 11);
  request.set(http::field::host, host_header(url));
  request.set(http::field::user_agent, "dshpc-bench-serve");
  request.set(http::field::accept, stream ? "text/event-stream" : "application/json");
  if (!body.empty()) request.set(http::field::content_type, "application/json");
  request.keep_alive(false);  // one connection per request
  request.body() = body;
  request.prepare_payload();
  return request;
}

// The message of an OpenAI error body, or the body itself (shortened) when it is not one.
std::string error_message(std::string_view body) {
  boost::system::error_code ec;
  json::value value = json::parse(body, ec);
  if (!ec && value.is_object()) {
    const json::value* error = value.as_object().if_contains("error");
    if (error != nullptr && error->is_object()) {
      const json::value* message = error->as_object().if_contains("message");
      if (message != nullptr && message->is_string()) return std::string(message->get_string());
    }
  }
  std::string text(body.substr(0, 200));
  return text.empty() ? "(empty body)" : text;
}

asio::awaitable<void> call_once(const ServerUrl& url, tcp::resolver::results_type endpoints,
                                std::string path, std::string body,
                                std::chrono::milliseconds timeout, StatusOr<HttpReply>* out) {
  const std::string where = url.text() + path;
  beast::tcp_stream stream(co_await asio::this_coro::executor);
  stream.expires_after(timeout);
  if (auto [ec, unused] = co_await stream.async_connect(endpoints, kNoThrow); ec) {
    *out = unavailable("cannot connect to " + host_header(url) + ": " + ec.message());
    co_return;
  }
  auto request = make_request(url, path, body, false);
  if (auto [ec, unused] = co_await http::async_write(stream, request, kNoThrow); ec) {
    *out = unavailable(where + ": sending the request failed: " + ec.message());
    co_return;
  }
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  if (auto [ec, unused] = co_await http::async_read(stream, buffer, response, kNoThrow); ec) {
    *out = unavailable(where + ": reading the response failed: " + ec.message());
    co_return;
  }
  *out = HttpReply{static_cast<int>(response.result_int()), std::move(response.body())};
}

// What one streamed response has shown so far.
struct StreamState {
  bool chat = false;
  bool done = false;  // "data: [DONE]" seen
  bool any_output = false;
  Clock::time_point last_output;
  std::string error;
};

// Handles one SSE event's data at `now`.
void on_event(const std::string& data, Clock::time_point opened, Clock::time_point now,
              StreamState& state, RequestResult& result) {
  if (data == "[DONE]") {
    state.done = true;
    return;
  }
  boost::system::error_code ec;
  json::value value = json::parse(data, ec);
  if (ec || !value.is_object()) {
    if (state.error.empty()) state.error = "malformed SSE event: " + data.substr(0, 120);
    return;
  }
  const json::object& event = value.as_object();
  if (event.contains("error")) {
    if (state.error.empty()) state.error = "error event: " + error_message(data);
    return;
  }
  if (const json::value* usage = event.if_contains("usage"); usage && usage->is_object()) {
    const json::object& u = usage->as_object();
    const json::value* prompt = u.if_contains("prompt_tokens");
    const json::value* completion = u.if_contains("completion_tokens");
    if (prompt && prompt->is_int64() && completion && completion->is_int64()) {
      result.prompt_tokens = prompt->as_int64();
      result.output_tokens = completion->as_int64();
      result.usage_reported = true;
    }
  }
  const json::value* choices = event.if_contains("choices");
  if (choices == nullptr || !choices->is_array()) return;
  for (const json::value& choice_value : choices->as_array()) {
    if (!choice_value.is_object()) continue;
    const json::object& choice = choice_value.as_object();
    const json::value* text = choice.if_contains("text");
    if (state.chat) {
      const json::value* delta = choice.if_contains("delta");
      text = delta && delta->is_object() ? delta->as_object().if_contains("content") : nullptr;
    }
    const bool has_text = text && text->is_string() && !text->get_string().empty();
    const json::value* finish = choice.if_contains("finish_reason");
    const bool finished = finish && finish->is_string();
    if (has_text) {
      ++result.output_chunks;
      if (state.any_output) result.itl_s.push_back(seconds(now - state.last_output));
    }
    if ((has_text || finished) && !state.any_output) {
      // The first output; a request whose tokens all decode to nothing (possible with random
      // weights) gets its first output with the finish.
      state.any_output = true;
      result.ttft_s = seconds(now - opened);
    }
    if (has_text) state.last_output = now;
  }
}

asio::awaitable<void> stream_one(const ServerUrl& url, const tcp::resolver::results_type* endpoints,
                                 const PlannedRequest* planned, Clock::time_point start,
                                 std::chrono::milliseconds timeout, RequestResult* out) {
  RequestResult& result = *out;
  result.prompt_tokens = planned->prompt_tokens;
  const Clock::time_point opened = Clock::now();
  result.sent_s = seconds(opened - start);
  auto finish = [&](std::string error) {
    result.e2e_s = seconds(Clock::now() - opened);
    result.ok = error.empty();
    result.error = std::move(error);
  };

  beast::tcp_stream stream(co_await asio::this_coro::executor);
  stream.expires_after(timeout);
  if (auto [ec, unused] = co_await stream.async_connect(*endpoints, kNoThrow); ec) {
    finish("cannot connect to " + host_header(url) + ": " + ec.message());
    co_return;
  }
  beast::error_code no_delay_error;  // Nagle off: the request goes out at once; best effort
  stream.socket().set_option(tcp::no_delay(true), no_delay_error);
  auto request = make_request(url, planned->path, planned->body, true);
  stream.expires_after(timeout);
  if (auto [ec, unused] = co_await http::async_write(stream, request, kNoThrow); ec) {
    finish("sending the request failed: " + ec.message());
    co_return;
  }
  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  stream.expires_after(timeout);
  if (auto [ec, unused] = co_await http::async_read_header(stream, buffer, parser, kNoThrow); ec) {
    finish("reading the response header failed: " + ec.message());
    co_return;
  }
  const int status = static_cast<int>(parser.get().result_int());
  StreamState state;
  state.chat = planned->chat;
  SseParser sse;
  std::string error_body;  // of a non-200 response
  char piece[16384];
  std::string read_error;
  while (!parser.is_done()) {
    parser.get().body().data = piece;
    parser.get().body().size = sizeof(piece);
    stream.expires_after(timeout);
    auto [ec, unused] = co_await http::async_read_some(stream, buffer, parser, kNoThrow);
    if (ec == http::error::need_buffer) ec = {};
    const size_t got = sizeof(piece) - parser.get().body().size;
    const Clock::time_point now = Clock::now();
    if (status != 200) {
      if (error_body.size() < 4096) error_body.append(piece, got);
    } else {
      for (const std::string& data : sse.feed(std::string_view(piece, got))) {
        on_event(data, opened, now, state, result);
      }
    }
    if (ec) {
      read_error = ec == beast::error::timeout
                       ? "no data for " + std::to_string(timeout.count() / 1000) + " s (timeout)"
                       : "the response broke off: " + ec.message();
      break;
    }
  }
  if (status != 200) {
    finish("HTTP " + std::to_string(status) + ": " + error_message(error_body));
  } else if (!state.error.empty()) {
    finish(state.error);
  } else if (!read_error.empty()) {
    finish(read_error);
  } else if (!state.done) {
    finish("the stream ended without \"data: [DONE]\"");
  } else {
    finish("");
    if (!result.usage_reported) result.output_tokens = result.output_chunks;
    if (!state.any_output) result.ttft_s = result.e2e_s;
  }
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
}

// Sends the requests on their schedule, at most max_concurrency at a time.
class LoadRun {
 public:
  LoadRun(const ServerUrl& url, const std::vector<PlannedRequest>& requests,
          const LoadOptions& options, tcp::resolver::results_type endpoints)
      : url_(url),
        requests_(requests),
        options_(options),
        endpoints_(std::move(endpoints)),
        results_(requests.size()) {}

  asio::awaitable<void> dispatch(Clock::time_point start) {
    auto executor = co_await asio::this_coro::executor;
    asio::steady_timer due(executor);
    slot_freed_.emplace(executor);
    for (size_t i = 0; i < requests_.size(); ++i) {
      due.expires_at(start + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(options_.send_at_s[i])));
      co_await due.async_wait(kNoThrow);
      while (options_.max_concurrency > 0 && in_flight_ >= options_.max_concurrency) {
        slot_freed_->expires_at(Clock::time_point::max());
        co_await slot_freed_->async_wait(kNoThrow);  // cancelled when a request ends
      }
      ++in_flight_;
      asio::co_spawn(executor, one(i, start), asio::detached);
    }
  }

  std::vector<RequestResult> take_results() { return std::move(results_); }
  Clock::time_point last_end() const { return last_end_; }

 private:
  asio::awaitable<void> one(size_t i, Clock::time_point start) {
    co_await stream_one(url_, &endpoints_, &requests_[i], start, options_.timeout, &results_[i]);
    --in_flight_;
    last_end_ = std::max(last_end_, Clock::now());
    if (slot_freed_) slot_freed_->cancel();
  }

  const ServerUrl& url_;
  const std::vector<PlannedRequest>& requests_;
  const LoadOptions& options_;
  tcp::resolver::results_type endpoints_;
  std::vector<RequestResult> results_;
  std::optional<asio::steady_timer> slot_freed_;
  int64_t in_flight_ = 0;
  Clock::time_point last_end_{};
};

}  // namespace

StatusOr<ServerUrl> parse_server_url(const std::string& url) {
  auto bad = [&](const std::string& why) {
    return invalid_argument("--url: " + why + ", got '" + url + "' (expected http://HOST:PORT)");
  };
  constexpr std::string_view kScheme = "http://";
  if (url.rfind("https://", 0) == 0) return bad("https is not supported");
  if (url.rfind(kScheme, 0) != 0) return bad("must start with http://");
  std::string rest = url.substr(kScheme.size());
  ServerUrl out;
  const size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  if (slash != std::string::npos) out.prefix = rest.substr(slash);
  while (!out.prefix.empty() && out.prefix.back() == '/') out.prefix.pop_back();
  std::string port_text = "80";
  if (!authority.empty() && authority.front() == '[') {  // [IPv6]:port
    const size_t close = authority.find(']');
    if (close == std::string::npos) return bad("unclosed '[' in the host");
    out.host = authority.substr(1, close - 1);
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return bad("unexpected text after ']'");
      port_text = authority.substr(close + 2);
    }
  } else {
    const size_t colon = authority.rfind(':');
    out.host = authority.substr(0, colon);
    if (colon != std::string::npos) port_text = authority.substr(colon + 1);
  }
  if (out.host.empty()) return bad("no host");
  if (port_text.empty() || port_text.size() > 5 ||
      port_text.find_first_not_of("0123456789") != std::string::npos || std::stoi(port_text) < 1 ||
      std::stoi(port_text) > 65535) {
    return bad("the port must be a number in 1..65535");
  }
  out.port = port_text;
  return out;
}

StatusOr<HttpReply> http_call(const ServerUrl& url, const std::string& path,
                              const std::string& body, std::chrono::milliseconds timeout) {
  asio::io_context io;
  tcp::resolver resolver(io);
  boost::system::error_code ec;
  auto endpoints = resolver.resolve(url.host, url.port, ec);
  if (ec) return unavailable("cannot resolve " + url.host + ": " + ec.message());
  StatusOr<HttpReply> reply = internal_error("no reply");
  asio::co_spawn(io, call_once(url, endpoints, path, body, timeout, &reply), asio::detached);
  io.run();
  return reply;
}

std::vector<RequestResult> run_load(const ServerUrl& url,
                                    const std::vector<PlannedRequest>& requests,
                                    const LoadOptions& options, double* duration_s) {
  asio::io_context io;
  tcp::resolver resolver(io);
  boost::system::error_code ec;
  auto endpoints = resolver.resolve(url.host, url.port, ec);
  if (ec) {
    std::vector<RequestResult> failed(requests.size());
    for (RequestResult& r : failed) r.error = "cannot resolve " + url.host + ": " + ec.message();
    *duration_s = 0;
    return failed;
  }
  LoadRun run(url, requests, options, endpoints);
  const Clock::time_point start = Clock::now();
  asio::co_spawn(io, run.dispatch(start), asio::detached);
  io.run();
  *duration_s = seconds(std::max(run.last_end(), start) - start);
  return run.take_results();
}

}  // namespace dshpc::bench_serve
