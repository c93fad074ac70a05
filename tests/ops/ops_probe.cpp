// A stand-in for the server in the operations tests, until `dshpc serve` exists: it records every
// kind of metrics event and log line the server will, then
//   dshpc_ops_probe metrics        prints /metrics text (for `promtool check metrics`)
//   dshpc_ops_probe serve          serves GET /metrics on 127.0.0.1 (an ephemeral port, printed as
//                                  "listening 127.0.0.1:PORT") until killed, for a real Prometheus
//   dshpc_ops_probe log json|text  prints the request-lifecycle log lines
// The same checks then run against the real server (tests/ops/check_metrics.sh URL).
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "common/log.h"
#include "coordinator/metrics.h"

namespace {

using namespace dshpc;
using std::chrono::milliseconds;

// A little of everything: requests that succeed, fail and time out, scheduler steps, two ranks'
// figures, HTTP responses.
void record_events(Metrics& metrics) {
  const auto t0 = Metrics::Clock::now();
  for (int i = 0; i < 20; ++i) {
    RequestTiming timing;
    metrics.on_request_accepted(timing, 30 + i, t0);
    metrics.on_request_scheduled(timing, t0 + milliseconds(5 + i));
    metrics.on_first_token(timing, t0 + milliseconds(80 + 10 * i));
    for (int k = 1; k <= 8; ++k) metrics.on_token(timing, t0 + milliseconds(80 + 10 * i + 25 * k));
    metrics.on_request_finished(timing, i % 5 == 0 ? FinishReason::kLength : FinishReason::kStop,
                                t0 + milliseconds(300 + 10 * i));
    metrics.on_http_response("/v1/chat/completions", 200);
  }
  RequestTiming late;
  metrics.on_request_accepted(late, 12, t0);
  metrics.on_request_finished(late, FinishReason::kTimeout, t0 + milliseconds(30000));
  metrics.on_request_failed(FailureReason::kOverloaded);
  metrics.on_http_response("/v1/completions", 429);
  metrics.on_request_failed(FailureReason::kInvalidRequest);
  metrics.on_http_response("/v1/completions", 400);
  metrics.on_http_response("/health", 200);
  metrics.on_http_response("/metrics", 200);
  metrics.on_preemption();
  metrics.set_queue(3, 1);
  metrics.set_kv_cache(0.42, 0.03);
  for (int step = 0; step < 10; ++step) {
    metrics.on_step(4, {{"schedule", 0.0004}, {"step", 0.021}});
  }
  for (int rank = 0; rank < metrics.config().world_size; ++rank) {
    RankFigures figures;
    figures.rank = rank;
    figures.collectives[CollectiveOp::kAllReduce].seconds = 0.8 + rank;
    figures.collectives[CollectiveOp::kSend].seconds = 0.1;
    figures.collectives[CollectiveOp::kRecv].seconds = 0.2;
    figures.step_phase_seconds = {{"forward", 0.018}, {"forward", 0.019}};
    if (rank == metrics.config().world_size - 1)
      figures.step_phase_seconds.push_back({"sample", 0.001});
    figures.gpu_memory_used_bytes = 60ull << 30;
    figures.gpu_memory_total_bytes = 141ull << 30;
    figures.gpu_utilization_ratio = 0.73;
    metrics.set_rank_figures(figures);
  }
}

int serve(Metrics& metrics) {
  namespace beast = boost::beast;
  namespace http = beast::http;
  using boost::asio::ip::tcp;
  alarm(120);  // never outlive a test that forgot to stop us
  boost::asio::io_context io;
  tcp::acceptor acceptor(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  std::printf("listening 127.0.0.1:%u\n", static_cast<unsigned>(acceptor.local_endpoint().port()));
  std::fflush(stdout);
  while (true) {
    tcp::socket socket(io);
    acceptor.accept(socket);
    beast::flat_buffer buffer;
    http::request<http::string_body> request;
    beast::error_code ec;
    http::read(socket, buffer, request, ec);
    if (ec) continue;
    http::response<http::string_body> response;
    response.version(request.version());
    response.keep_alive(false);
    if (request.method() == http::verb::get && request.target() == "/metrics") {
      metrics.on_http_response("/metrics", 200);
      response.result(http::status::ok);
      response.set(http::field::content_type, Metrics::kContentType);
      response.body() = metrics.render();
    } else {
      response.result(http::status::not_found);
      response.set(http::field::content_type, "text/plain");
      response.body() = "not found\n";
    }
    response.prepare_payload();
    http::write(socket, response, ec);
    socket.shutdown(tcp::socket::shutdown_both, ec);
  }
}

int print_logs(LogFormat format) {
  LoggerConfig config = LoggerConfig::from_environment(0, format, LogLevel::kDebug);
  config.out = stdout;
  Logger logger(config);
  logger.info("model loaded", {{"load.bytes", int64_t{1} << 34},
                               {"load.seconds", 12.5},
                               {"load.bytes_per_second", 1.37e9}});
  logger.request_event(LogLevel::kInfo, log_action::kRequestAccepted, "chatcmpl-1",
                       "request accepted", {{"request.prompt_tokens", 31}});
  logger.request_event(LogLevel::kInfo, log_action::kRequestFirstToken, "chatcmpl-1", "first token",
                       {{"request.time_to_first_token_seconds", 0.083}});
  logger.request_event(LogLevel::kInfo, log_action::kRequestFinished, "chatcmpl-1",
                       "request finished",
                       {{"request.finish_reason", "stop"},
                        {"request.completion_tokens", 9},
                        {"request.e2e_seconds", 0.31}});
  logger.request_event(
      LogLevel::kWarn, log_action::kRequestError, "chatcmpl-2", "request refused",
      {{"error.message", "queue full (\"max 256\")\n"}, {"http.response.status_code", 429}});
  logger.debug("client sent invalid UTF-8", {{"client.text", "\xff\xfe bad \xc3"}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  dshpc::Metrics metrics({.model = "demo", .world_size = 2});
  record_events(metrics);
  if (mode == "metrics") {
    std::fputs(metrics.render().c_str(), stdout);
    return 0;
  }
  if (mode == "serve") return serve(metrics);
  if (mode == "log" && argc > 2) {
    auto format = dshpc::parse_log_format(argv[2]);
    if (!format.ok()) {
      std::fprintf(stderr, "%s\n", format.status().message().c_str());
      return 2;
    }
    return print_logs(*format);
  }
  std::fprintf(stderr, "usage: %s metrics | serve | log json|text\n", argv[0]);
  return 2;
}
