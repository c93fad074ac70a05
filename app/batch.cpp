// dshpc batch: offline inference over a file of requests in the OpenAI batch format, as a Slurm
// batch job would run it.
//
//   input line:   {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body":
//   {...}} output line:  {"id": "batch_req_…", "custom_id": "r1",
//                  "response": {"status_code": 200, "body": {...}}, "error": null}
//            or:  {"id": …, "custom_id": …, "response": null, "error": {"code", "message"}}
//
// The requests go through the same gateway and scheduler as `dshpc serve` (an HTTP listener on
// 127.0.0.1 that only this process talks to), so parameters, validation and responses are
// exactly the server's. Many requests are kept in flight for throughput; results are written
// as they finish (flushed line by line). Resumable: requests whose custom_id is already in the
// output file are skipped, so a requeued job continues where it stopped. A line that cannot be
// parsed gets an error line; it never stops the job.
//
// Drain (issue 9): SIGTERM, SIGINT or SIGUSR1 to rank 0 (launch/mpirun.sh sends SIGUSR1 to rank
// 0, Slurm's scancel --signal=TERM reaches every task) stops taking requests; those in flight
// finish within --drain-timeout-s, then the rest are cut. A cut request is not written, so the
// output holds only finished requests, each exactly once, and the job exits 0; a rerun (a
// requeue) with the same --output runs exactly the requests not in it. A second signal cuts at
// once. A SIGTERM from the MPI launcher itself (it kills the job a second later) aborts at once;
// everything finished is in the output already, and a partial last line left by a kill is cut
// off by the next run.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <boost/json.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "app/commands.h"
#include "app/frontend.h"
#include "app/job.h"
#include "app/job_failure.h"
#include "common/check.h"
#include "common/json_fields.h"
#include "common/log.h"
#include "common/options.h"
#include "coordinator/scheduler_config.h"

namespace dshpc {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;

std::vector<OptionSpec> options_table() {
  std::vector<OptionSpec> table = {
      {"input", "IN.jsonl", "requests, one JSON object per line (OpenAI batch format)", ""},
      {"output", "OUT.jsonl", "results, appended; requests already in it are skipped", ""},
      {"tokenizer", "DIR",
       "tokenizer directory (not given: the one stored in --model MODEL.h5, else this default)",
       DSHPC_DEFAULT_TOKENIZER_DIR},
      {"served-model-name", "NAME", "the model name the requests use (default: from --model)", ""},
      {"concurrency", "N", "requests in flight at once", "64"},
      {"progress-interval-s", "N", "seconds between progress lines", "5"},
      {"drain-timeout-s", "N",
       "on SIGTERM/SIGUSR1, how long the requests in flight may take to finish (the rest are "
       "not written and run again on a rerun)",
       "60"},
      {"request-timeout", "SECONDS",
       "deadline of a request without a \"timeout\" field in its body (0: none); past it the "
       "response has finish_reason \"timeout\"",
       "0"},
  };
  for (OptionSpec& spec : scheduler_option_specs()) table.push_back(spec);
  for (OptionSpec& spec : model_job_options()) table.push_back(spec);
  return table;
}

int fail(const Status& status, int code = 1) {
  report_error("dshpc batch", status);
  return code;
}

struct Item {
  size_t line = 0;
  std::string custom_id;
  std::string url;
  std::string body;   // serialized request body
  std::string error;  // set when the line itself is bad
};

std::string output_line(const Item& item, int status_code, const std::string& body,
                        const std::string& error) {
  boost::json::object out;
  out["id"] = "batch_req_" + std::to_string(item.line);
  out["custom_id"] = item.custom_id;
  if (error.empty()) {
    boost::system::error_code ec;
    boost::json::value parsed = boost::json::parse(body, ec);
    out["response"] = {{"status_code", status_code},
                       {"body", ec ? boost::json::value(body) : parsed}};
    out["error"] = nullptr;
  } else {
    out["response"] = nullptr;
    out["error"] = {
        {"code", status_code == 0 ? "invalid_request" : "http_" + std::to_string(status_code)},
        {"message", error}};
  }
  return boost::json::serialize(out);
}

Item parse_line(size_t number, const std::string& text) {
  Item item;
  item.line = number;
  auto value = parse_json(text, "line " + std::to_string(number));
  if (!value.ok()) {
    item.error = value.status().message();
    return item;
  }
  if (!value->is_object()) {
    item.error = "line " + std::to_string(number) + ": not a JSON object";
    return item;
  }
  const boost::json::object& o = value->get_object();
  JsonFields f(o, "line " + std::to_string(number));
  auto id = f.require_string("custom_id");
  auto url = f.require_string("url");
  auto method = f.get_string("method", "POST");
  for (const Status& s : {id.status(), url.status(), method.status()}) {
    if (!s.ok()) {
      item.error = s.message();
      if (id.ok()) item.custom_id = *id;
      return item;
    }
  }
  item.custom_id = *id;
  item.url = *url;
  if (*method != "POST") item.error = "line " + std::to_string(number) + ": method must be POST";
  if (*url != "/v1/completions" && *url != "/v1/chat/completions") {
    item.error = "line " + std::to_string(number) +
                 ": url must be /v1/completions or "
                 "/v1/chat/completions";
  }
  const boost::json::value* body = f.find("body");
  if (body == nullptr || !body->is_object()) {
    item.error = "line " + std::to_string(number) + ": body must be an object";
  } else {
    boost::json::object b = body->get_object();
    b.erase("stream");  // batch results are whole responses
    item.body = boost::json::serialize(b);
  }
  return item;
}

// What an earlier run left in the output file: the requests it answered. A last line without its
// newline (the job was killed while writing it) is cut off first: it is not valid JSON, and the
// next line appended to it would be lost too; its request runs again.
struct PreviousOutput {
  std::set<std::string> done_ids;    // custom_ids already answered
  std::set<std::string> done_lines;  // output ids ("batch_req_<line>") of lines without one
  uintmax_t cut_bytes = 0;           // of a partial last line, removed
};

StatusOr<PreviousOutput> read_previous_output(const std::string& path) {
  PreviousOutput previous;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return previous;
  std::string text;
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) return invalid_argument(path + ": cannot read the output of the previous run");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (!text.empty() && text.back() != '\n') {
    const size_t keep = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
    previous.cut_bytes = text.size() - keep;
    std::filesystem::resize_file(path, keep, ec);
    if (ec) return invalid_argument(path + ": cannot cut its partial last line: " + ec.message());
    text.resize(keep);
  }
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    boost::system::error_code json_error;
    boost::json::value v =
        boost::json::parse(std::string_view(text).substr(begin, end - begin), json_error);
    begin = end + 1;
    if (json_error || !v.is_object()) continue;
    const boost::json::object& o = v.as_object();
    const boost::json::value* id = o.if_contains("custom_id");
    if (id == nullptr || !id->is_string()) continue;
    if (!id->as_string().empty()) {
      previous.done_ids.insert(std::string(id->as_string()));
    } else if (const boost::json::value* line_id = o.if_contains("id");
               line_id != nullptr && line_id->is_string()) {
      previous.done_lines.insert(std::string(line_id->as_string()));
    }
  }
  return previous;
}

// One request through the gateway on `stream` (opened on first use, reopened once when the
// server closed it): the status code and body, or `error` when no response came.
struct Exchange {
  int status_code = 0;
  std::string body;
  std::string error;
};

Exchange post(boost::asio::io_context& io, std::unique_ptr<beast::tcp_stream>& stream,
              uint16_t port, const Item& item) {
  Exchange result;
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      if (!stream) {
        stream = std::make_unique<beast::tcp_stream>(io);
        stream->connect(tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port));
      }
      http::request<http::string_body> request{http::verb::post, item.url, 11};
      request.set(http::field::host, "127.0.0.1");
      request.set(http::field::content_type, "application/json");
      request.body() = item.body;
      request.prepare_payload();
      http::write(*stream, request);
      beast::flat_buffer buffer;
      http::response<http::string_body> response;
      http::read(*stream, buffer, response);
      result.status_code = response.result_int();
      result.body = response.body();
      result.error.clear();
      if (!response.keep_alive()) stream.reset();
      return result;
    } catch (const std::exception& e) {
      stream.reset();  // the connection closed (keep-alive limit): reconnect once
      result.error = std::string("gateway connection failed: ") + e.what();
    }
  }
  return result;
}

int64_t completion_tokens_of(const std::string& body) {
  boost::system::error_code ec;
  boost::json::value v = boost::json::parse(body, ec);
  if (ec || !v.is_object()) return 0;
  const boost::json::value* usage = v.as_object().if_contains("usage");
  if (usage == nullptr || !usage->is_object()) return 0;
  const boost::json::value* tokens = usage->as_object().if_contains("completion_tokens");
  if (tokens == nullptr) return 0;
  boost::system::error_code number_error;
  const int64_t count = tokens->to_number<int64_t>(number_error);
  return number_error ? 0 : count;
}

}  // namespace

int run_batch(int argc, char** argv, int first) {
  const std::vector<OptionSpec> table = options_table();
  auto parsed = Options::parse("dshpc batch", table, argc, argv, first);
  if (!parsed.ok()) return fail(parsed.status(), 2);
  Options opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(Options::help_text("dshpc batch",
                                  "Runs every request of --input through the model and appends "
                                  "the responses to --output; rerunning skips finished requests. "
                                  "SIGTERM, SIGINT or SIGUSR1: stop taking requests, finish the "
                                  "ones in flight (--drain-timeout-s), exit 0; a second signal "
                                  "stops at once. Requests not finished are not written, so a "
                                  "rerun does them.",
                                  table)
                   .c_str(),
               stdout);
    return 0;
  }
  if (opts.get("model").empty() || opts.get("input").empty() || opts.get("output").empty()) {
    return fail(invalid_argument("--model, --input and --output are required"), 2);
  }
  auto concurrency = opts.get_int("concurrency");
  auto interval = opts.get_int("progress-interval-s");
  auto drain_timeout = opts.get_int("drain-timeout-s");
  auto request_timeout = opts.get_double("request-timeout");
  if (!concurrency.ok() || *concurrency < 1)
    return fail(invalid_argument("--concurrency must be >= 1"), 2);
  if (!interval.ok() || *interval < 1)
    return fail(invalid_argument("--progress-interval-s must be >= 1"), 2);
  if (!drain_timeout.ok() || *drain_timeout < 0)
    return fail(invalid_argument("--drain-timeout-s must be >= 0"), 2);
  if (!request_timeout.ok()) return fail(request_timeout.status(), 2);

  GatewayConfig gateway_config;  // a listener only this process talks to
  gateway_config.host = "127.0.0.1";
  gateway_config.port = 0;
  gateway_config.max_connections = static_cast<int>(*concurrency) + 8;
  gateway_config.read_timeout = std::chrono::hours(24);
  gateway_config.write_timeout = std::chrono::hours(24);
  gateway_config.served_model_name = served_model_name(opts);
  gateway_config.request_timeout_s = *request_timeout;
  if (Status valid = gateway_config.validate(); !valid.ok()) return fail(valid, 2);

  // Signals go to one waiting thread on rank 0, never to the MPI or client threads; the other
  // ranks keep them blocked (Slurm's scancel --signal=TERM reaches every task; rank 0 stops them).
  const sigset_t signals = block_stop_signals();

  Frontend front;
  auto before_load = [&](const ProcessGroups& groups) -> Status {
    if (groups.rank != 0) return ok_status();
    return front.start(opts, gateway_config, groups.layout.world_size());
  };
  auto started = start_job("dshpc batch", opts, &argc, &argv, before_load);
  if (!started.ok()) return 1;
  Job& job = **started;
  if (!job.coordinator()) {
    job.cluster->serve();
    return 0;
  }
  Cluster& cluster = *job.cluster;
  auto scheduler_cfg = front.open(opts, cluster);
  if (!scheduler_cfg.ok()) return fail(scheduler_cfg.status(), 2);
  EngineService& service = *front.service;

  // The drain: the first signal stops the clients from taking requests; those in flight get
  // --drain-timeout-s, then the service cuts them (503: not written, so a rerun does them).
  std::atomic<bool> stop_taking{false};
  std::mutex state_mutex;
  std::condition_variable state_cv;
  bool draining = false;
  bool clients_done = false;
  auto signal_thread = std::make_unique<StopSignals>(
      signals,
      StopSignals::Actions{
          "dshpc batch", "batch",
          "aborting (finished requests are in the output; a rerun resumes)",
          [&](int signal_number) {
            process_logger().info("dshpc batch: signal " + std::to_string(signal_number) +
                                      ": draining — no new requests; those in flight get up to " +
                                      std::to_string(*drain_timeout) + " s",
                                  {{"event.action", "batch.drain"},
                                   {"dshpc.signal", signal_number}});
            stop_taking = true;
            {
              std::lock_guard<std::mutex> lock(state_mutex);
              draining = true;
            }
            state_cv.notify_all();
          },
          [&](int signal_number) {
            process_logger().warn(
                "dshpc batch: second signal: cutting the requests in flight",
                {{"event.action", "batch.stop"}, {"dshpc.signal", signal_number}});
            service.stop(unavailable("the batch job was stopped"));
          }});
  std::thread drain_watch([&] {
    std::unique_lock<std::mutex> lock(state_mutex);
    state_cv.wait(lock, [&] { return draining || clients_done; });
    if (clients_done) return;
    if (!state_cv.wait_for(lock, std::chrono::seconds(*drain_timeout),
                           [&] { return clients_done; })) {
      process_logger().warn("dshpc batch: the drain timeout passed: cutting the requests in flight",
                            {{"event.action", "batch.drain_timeout"}});
      service.stop(unavailable("the drain timeout passed"));
    }
  });
  // Ends the loop and the other ranks, then the threads above; also on the way out of an error.
  std::thread loop;
  auto shut_down = [&] {
    service.begin_drain();
    if (loop.joinable()) loop.join();
    cluster.stop();
    front.gateway->stop();
    {
      std::lock_guard<std::mutex> lock(state_mutex);
      clients_done = true;
    }
    state_cv.notify_all();
    drain_watch.join();
    signal_thread.reset();
  };

  const std::string output_path = opts.get("output");
  auto previous = read_previous_output(output_path);
  if (!previous.ok()) {
    shut_down();
    return fail(previous.status());
  }
  if (previous->cut_bytes > 0) {
    process_logger().warn("dshpc batch: " + output_path + " ended in a partial line (" +
                              std::to_string(previous->cut_bytes) +
                              " bytes, an earlier run was killed while writing it); cut off, "
                              "its request runs again",
                          {{"event.action", "batch.output_repaired"}});
  }
  std::ifstream input(opts.get("input"));
  if (!input) {
    shut_down();
    return fail(not_found(opts.get("input") + ": cannot open"));
  }
  std::vector<Item> items;
  size_t skipped = 0;
  {
    std::string line;
    size_t number = 0;
    while (std::getline(input, line)) {
      ++number;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      Item item = parse_line(number, line);
      if ((!item.custom_id.empty() && previous->done_ids.count(item.custom_id)) ||
          (item.custom_id.empty() &&
           previous->done_lines.count("batch_req_" + std::to_string(number)))) {
        ++skipped;
        continue;
      }
      items.push_back(std::move(item));
    }
  }
  FILE* output = std::fopen(output_path.c_str(), "a");
  if (output == nullptr) {
    shut_down();
    return fail(invalid_argument(output_path + ": cannot write"));
  }
  process_logger().info("dshpc batch: " + std::to_string(items.size()) + " requests to run, " +
                            std::to_string(skipped) + " already in " + output_path,
                        {{"event.action", "batch.start"},
                         {"dshpc.batch.requests", static_cast<int64_t>(items.size())},
                         {"dshpc.batch.skipped", static_cast<int64_t>(skipped)}});

  std::mutex output_mutex;
  std::atomic<size_t> next{0}, finished{0}, failed{0}, cut{0};
  std::atomic<int64_t> generated_tokens{0};
  const uint16_t port = front.gateway->port();
  auto write = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(output_mutex);
    std::fputs(line.c_str(), output);
    std::fputc('\n', output);
    std::fflush(output);
  };
  auto client = [&] {
    boost::asio::io_context io;
    std::unique_ptr<beast::tcp_stream> stream;
    while (!stop_taking) {
      const size_t i = next++;
      if (i >= items.size()) return;
      const Item& item = items[i];
      if (!item.error.empty()) {
        write(output_line(item, 0, "", item.error));
        failed++;
        finished++;
        continue;
      }
      const Exchange result = post(io, stream, port, item);
      // Draining: a request the service cut (503) or that got no response is not an answer; it
      // stays out of the output so that the next run does it.
      if (stop_taking && (result.status_code == 503 || !result.error.empty())) {
        cut++;
        continue;
      }
      // A response of any status (400 for a bad body, 429 …) is written as the server's response,
      // as the OpenAI batch API does; `error` is for requests that got no response.
      if (!result.error.empty() || result.status_code != 200) failed++;
      if (result.error.empty() && result.status_code == 200) {
        generated_tokens += completion_tokens_of(result.body);
      }
      write(output_line(item, result.status_code, result.body, result.error));
      finished++;
    }
  };

  loop = std::thread([&] { service.run(); });
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  const int64_t threads = std::min<int64_t>(*concurrency, std::max<size_t>(1, items.size()));
  for (int64_t i = 0; i < threads; ++i) clients.emplace_back(client);
  std::atomic<bool> clients_running{true};
  std::thread progress([&] {
    while (clients_running) {
      for (int64_t s = 0; s < *interval * 10 && clients_running; ++s) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const size_t n = finished;
      const double rate = n / std::max(seconds, 1e-9);
      const double seconds_left = rate > 0 ? (items.size() - n) / rate : 0.0;
      const double tokens_per_second = generated_tokens / std::max(seconds, 1e-9);
      char message[160];
      std::snprintf(message, sizeof(message),
                    "dshpc batch: %zu/%zu done, %zu failed, %.1f generated tok/s, %.0f s left", n,
                    items.size(), failed.load(), tokens_per_second, seconds_left);
      process_logger().log(LogLevel::kInfo, message,
                           {{"event.action", "batch.progress"},
                            {"dshpc.batch.done", static_cast<int64_t>(n)},
                            {"dshpc.batch.requests", static_cast<int64_t>(items.size())},
                            {"dshpc.batch.failed", static_cast<int64_t>(failed.load())},
                            {"dshpc.batch.tokens_per_second", tokens_per_second},
                            {"dshpc.batch.seconds_left", seconds_left}});
    }
  });
  for (auto& t : clients) t.join();
  clients_running = false;
  progress.join();
  shut_down();
  // Durable before the exit code says so: a requeue on another node reads this file.
  std::fflush(output);
  fsync(fileno(output));
  std::fclose(output);

  const size_t done = finished.load();
  if (done == items.size()) {
    process_logger().info("dshpc batch: finished " + std::to_string(items.size()) + " requests (" +
                              std::to_string(failed.load()) + " failed) into " + output_path,
                          {{"event.action", "batch.done"},
                           {"dshpc.batch.requests", static_cast<int64_t>(items.size())},
                           {"dshpc.batch.failed", static_cast<int64_t>(failed.load())}});
  } else {
    process_logger().info("dshpc batch: drained: " + std::to_string(done) + " of " +
                              std::to_string(items.size()) + " requests finished into " +
                              output_path + ", " + std::to_string(cut.load()) + " cut in flight, " +
                              std::to_string(items.size() - done) +
                              " left; rerun with the same --output to resume",
                          {{"event.action", "batch.drained"},
                           {"dshpc.batch.requests", static_cast<int64_t>(items.size())},
                           {"dshpc.batch.done", static_cast<int64_t>(done)},
                           {"dshpc.batch.cut", static_cast<int64_t>(cut.load())},
                           {"dshpc.batch.left", static_cast<int64_t>(items.size() - done)},
                           {"dshpc.batch.failed", static_cast<int64_t>(failed.load())}});
  }
  return 0;
}

}  // namespace dshpc
