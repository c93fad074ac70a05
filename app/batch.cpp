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
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <boost/json.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "app/commands.h"
#include "app/frontend.h"
#include "app/job.h"
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

}  // namespace

int run_batch(int argc, char** argv, int first) {
  const std::vector<OptionSpec> table = options_table();
  auto parsed = Options::parse("dshpc batch", table, argc, argv, first);
  if (!parsed.ok()) return fail(parsed.status(), 2);
  Options opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(Options::help_text("dshpc batch",
                                  "Runs every request of --input through the model and appends "
                                  "the responses to --output; rerunning skips finished requests.",
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
  if (!concurrency.ok() || *concurrency < 1)
    return fail(invalid_argument("--concurrency must be >= 1"), 2);
  if (!interval.ok() || *interval < 1)
    return fail(invalid_argument("--progress-interval-s must be >= 1"), 2);

  GatewayConfig gateway_config;  // a listener only this process talks to
  gateway_config.host = "127.0.0.1";
  gateway_config.port = 0;
  gateway_config.max_connections = static_cast<int>(*concurrency) + 8;
  gateway_config.read_timeout = std::chrono::hours(24);
  gateway_config.write_timeout = std::chrono::hours(24);
  gateway_config.served_model_name = served_model_name(opts);
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

  // Requests already answered (resume after a requeue).
  std::set<std::string> done_ids;    // custom_ids already answered
  std::set<std::string> done_lines;  // output ids ("batch_req_<line>") of lines without one
  {
    std::ifstream previous(opts.get("output"));
    std::string line;
    while (std::getline(previous, line)) {
      boost::system::error_code ec;
      boost::json::value v = boost::json::parse(line, ec);
      if (!ec && v.is_object() && v.as_object().contains("custom_id") &&
          v.as_object().at("custom_id").is_string()) {
        const std::string custom_id(v.as_object().at("custom_id").as_string());
        if (!custom_id.empty()) done_ids.insert(custom_id);
        if (custom_id.empty() && v.as_object().contains("id") &&
            v.as_object().at("id").is_string()) {
          done_lines.insert(std::string(v.as_object().at("id").as_string()));
        }
      }
    }
  }
  std::ifstream input(opts.get("input"));
  if (!input) return fail(not_found(opts.get("input") + ": cannot open"));
  std::vector<Item> items;
  size_t skipped = 0;
  {
    std::string line;
    size_t number = 0;
    while (std::getline(input, line)) {
      ++number;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      Item item = parse_line(number, line);
      if ((!item.custom_id.empty() && done_ids.count(item.custom_id)) ||
          (item.custom_id.empty() && done_lines.count("batch_req_" + std::to_string(number)))) {
        ++skipped;
        continue;
      }
      items.push_back(std::move(item));
    }
  }
  FILE* output = std::fopen(opts.get("output").c_str(), "a");
  if (output == nullptr) return fail(invalid_argument(opts.get("output") + ": cannot write"));
  process_logger().info("dshpc batch: " + std::to_string(items.size()) + " requests to run, " +
                            std::to_string(skipped) + " already in " + opts.get("output"),
                        {{"event.action", "batch.start"},
                         {"dshpc.batch.requests", static_cast<int64_t>(items.size())},
                         {"dshpc.batch.skipped", static_cast<int64_t>(skipped)}});

  std::mutex output_mutex;
  std::atomic<size_t> next{0}, finished{0}, failed{0};
  std::atomic<int64_t> generated_tokens{0};
  const uint16_t port = front.gateway->port();
  auto write = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(output_mutex);
    std::fputs(line.c_str(), output);
    std::fputc('\n', output);
    std::fflush(output);
  };
  auto worker = [&] {
    boost::asio::io_context io;
    std::unique_ptr<beast::tcp_stream> stream;
    for (size_t i = next++; i < items.size(); i = next++) {
      const Item& item = items[i];
      if (!item.error.empty()) {
        write(output_line(item, 0, "", item.error));
        failed++;
        finished++;
        continue;
      }
      int status_code = 0;
      std::string body;
      std::string error;
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
          status_code = response.result_int();
          body = response.body();
          if (!response.keep_alive()) stream.reset();
          error.clear();
          break;
        } catch (const std::exception& e) {
          stream.reset();  // the connection closed (keep-alive limit): reconnect once
          error = std::string("gateway connection failed: ") + e.what();
        }
      }
      // A response of any status (400 for a bad body, 429 …) is written as the server's response,
      // as the OpenAI batch API does; `error` is for requests that got no response.
      if (error.empty() && status_code != 200) failed++;
      if (error.empty() && status_code == 200) {
        boost::system::error_code ec;
        boost::json::value v = boost::json::parse(body, ec);
        if (!ec && v.is_object() && v.as_object().contains("usage")) {
          const auto& usage = v.as_object().at("usage");
          if (usage.is_object() && usage.as_object().contains("completion_tokens")) {
            generated_tokens += usage.as_object().at("completion_tokens").to_number<int64_t>();
          }
        }
      } else if (!error.empty()) {
        failed++;
      }
      write(output_line(item, status_code, body, error));
      finished++;
    }
  };

  std::thread loop([&] { service.run(); });
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  const int64_t threads = std::min<int64_t>(*concurrency, std::max<size_t>(1, items.size()));
  for (int64_t i = 0; i < threads; ++i) workers.emplace_back(worker);
  std::thread progress([&] {
    while (finished < items.size()) {
      for (int64_t s = 0; s < *interval * 10 && finished < items.size(); ++s) {
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
  for (auto& t : workers) t.join();
  progress.join();
  // The MPI loop runs on a thread here; stop it, then stop the workers from this thread.
  service.begin_drain();
  loop.join();
  front.gateway->stop();
  cluster.stop();
  std::fclose(output);
  process_logger().info("dshpc batch: finished " + std::to_string(items.size()) + " requests (" +
                            std::to_string(failed.load()) + " failed) into " + opts.get("output"),
                        {{"event.action", "batch.done"},
                         {"dshpc.batch.requests", static_cast<int64_t>(items.size())},
                         {"dshpc.batch.failed", static_cast<int64_t>(failed.load())}});
  return 0;
}

}  // namespace dshpc
