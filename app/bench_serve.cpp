// dshpc bench serve: a load generator against a running OpenAI-compatible server, in the manner
// of vLLM's benchmark_serving and SGLang's bench_serving. Requests arrive as a seeded Poisson
// process (or all at once), optionally capped at a number in flight; each is a streamed
// completion or chat completion whose chunks are timed (bench_serve_client.cpp). The report
// gives completed and failed requests, throughput in requests and tokens, TTFT, time per output
// token, inter-chunk latency and end-to-end latency (mean, p50, p90, p99, max), and goodput
// under the given SLOs, as a table and as JSON, with the command line that reproduces it.
//
// Prompts: random ones are token ids (/v1/completions takes a list of ids) drawn from the ids the
// server's POST /tokenize gives for a fixed list of English words, so the prompt has exactly the
// drawn length in the server's own vocabulary; chat prompts, and completions when /tokenize is
// not there, are text of that many words, and the counts come from the server's "usage".
#include "app/bench_serve.h"

#include <algorithm>
#include <boost/json.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "app/bench_serve_client.h"
#include "app/commands.h"
#include "common/options.h"

namespace dshpc {
namespace {

namespace json = boost::json;
using namespace bench_serve;
const char* const kCommand = "dshpc bench serve";

std::vector<OptionSpec> options_table() {
  return {
      {"url", "URL", "the server, http://HOST:PORT", "http://127.0.0.1:8000"},
      {"model", "NAME", "model name sent in each request (default: the first of GET /v1/models)",
       ""},
      {"endpoint", "completions|chat",
       "/v1/completions (random prompts as token ids) or /v1/chat/completions (text prompts)",
       "completions"},
      {"num-requests", "N", "requests in the measured run (with --dataset default: one per line)",
       "100"},
      {"request-rate", "R|inf",
       "mean requests per second, Poisson arrivals (seeded exponential gaps); inf sends every "
       "request at once",
       "inf"},
      {"max-concurrency", "C",
       "most requests in flight; a request that is due waits for a free slot (0: no limit)", "0"},
      {"input-len", "N", "prompt tokens of a random prompt", "128"},
      {"output-len", "N", "max_tokens of each request", "128"},
      {"range-ratio", "r",
       "draw input and output lengths uniformly from the integers in [N(1-r), N(1+r)]", "0"},
      {"dataset", "FILE.jsonl",
       "prompts instead of random ones: one JSON object a line with \"prompt\" (text) or "
       "\"messages\" (chat), and optionally \"output_len\"; requests take lines in a seeded "
       "random order",
       ""},
      {"seed", "N", "seed of the arrival times, lengths and prompts", "0"},
      {"ignore-eos", "",
       "send \"ignore_eos\": true so that every request generates exactly its max_tokens", ""},
      {"temperature", "T", "sampling temperature of each request", "0"},
      {"slo-ttft-ms", "MS", "goodput SLO: time to first token at most MS", ""},
      {"slo-itl-ms", "MS",
       "goodput SLO: the request's mean time per output token after the first, "
       "(E2E - TTFT) / (tokens - 1), at most MS",
       ""},
      {"slo-e2e-ms", "MS", "goodput SLO: end-to-end latency at most MS", ""},
      {"warmup", "N",
       "requests sent (at once, within --max-concurrency) before the measured run and not "
       "counted",
       "0"},
      {"timeout-s", "S", "a request fails after S seconds without any data from the server", "600"},
      {"json", "FILE", "also write the results (and every request's figures) as JSON to FILE", ""},
  };
}

int fail(const Status& status, int code) {
  std::fprintf(stderr, "%s: %s\n", kCommand, status.message().c_str());
  return code;
}

// The command line as typed, each argument quoted when the shell would need it.
std::string command_line(int argc, char** argv) {
  std::string out = "dshpc";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    const bool plain = !arg.empty() && arg.find_first_not_of(
                                           "abcdefghijklmnopqrstuvwxyz"
                                           "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                           "0123456789-_=.,:/@%+") == std::string::npos;
    if (!plain) {
      std::string quoted = "'";
      for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
      arg = quoted + "'";
    }
    out += " " + arg;
  }
  return out;
}

// ---- options ----

struct Settings {
  ServerUrl url;
  std::string model;
  bool chat = false;
  int64_t num_requests = 0;
  double rate = 0;  // +inf: all at once
  int64_t max_concurrency = 0;
  int64_t input_len = 0, output_len = 0;
  double range_ratio = 0;
  std::string dataset;
  uint64_t seed = 0;
  bool ignore_eos = false;
  double temperature = 0;
  Slo slo;
  int64_t warmup = 0;
  std::chrono::milliseconds timeout{0};
};

StatusOr<int64_t> int_at_least(const Options& opts, const std::string& name, int64_t low) {
  StatusOr<int64_t> v = opts.get_int(name);
  if (!v.ok()) return v.status();
  if (*v < low) {
    return invalid_argument("--" + name + " must be at least " + std::to_string(low) + ", got " +
                            opts.get(name));
  }
  return v;
}

StatusOr<std::optional<double>> slo_seconds(const Options& opts, const std::string& name) {
  if (!opts.given(name)) return std::optional<double>();
  StatusOr<double> ms = opts.get_double(name);
  if (!ms.ok()) return ms.status();
  if (*ms <= 0) return invalid_argument("--" + name + " must be a positive number of ms");
  return std::optional<double>(*ms / 1e3);
}

StatusOr<Settings> read_settings(const Options& opts) {
  Settings s;
  ASSIGN_OR_RETURN(s.url, parse_server_url(opts.get("url")));
  s.model = opts.get("model");
  const std::string endpoint = opts.get("endpoint");
  if (endpoint != "completions" && endpoint != "chat") {
    return invalid_argument("--endpoint must be completions or chat, got '" + endpoint + "'");
  }
  s.chat = endpoint == "chat";
  ASSIGN_OR_RETURN(s.num_requests, int_at_least(opts, "num-requests", 1));
  const std::string rate = opts.get("request-rate");
  if (rate == "inf") {
    s.rate = std::numeric_limits<double>::infinity();
  } else {
    StatusOr<double> r = opts.get_double("request-rate");
    if (!r.ok() || !(*r > 0)) {
      return invalid_argument(
          "--request-rate must be a positive number of requests per second or 'inf', got '" + rate +
          "'");
    }
    s.rate = *r;
  }
  ASSIGN_OR_RETURN(s.max_concurrency, int_at_least(opts, "max-concurrency", 0));
  ASSIGN_OR_RETURN(s.input_len, int_at_least(opts, "input-len", 1));
  ASSIGN_OR_RETURN(s.output_len, int_at_least(opts, "output-len", 1));
  ASSIGN_OR_RETURN(s.range_ratio, opts.get_double("range-ratio"));
  if (s.range_ratio < 0 || s.range_ratio >= 1) {
    return invalid_argument("--range-ratio must be in [0, 1), got " + opts.get("range-ratio"));
  }
  s.dataset = opts.get("dataset");
  ASSIGN_OR_RETURN(const int64_t seed, int_at_least(opts, "seed", 0));
  s.seed = static_cast<uint64_t>(seed);
  s.ignore_eos = opts.flag("ignore-eos");
  ASSIGN_OR_RETURN(s.temperature, opts.get_double("temperature"));
  if (s.temperature < 0) return invalid_argument("--temperature must be >= 0");
  ASSIGN_OR_RETURN(s.slo.ttft_s, slo_seconds(opts, "slo-ttft-ms"));
  ASSIGN_OR_RETURN(s.slo.tpot_s, slo_seconds(opts, "slo-itl-ms"));
  ASSIGN_OR_RETURN(s.slo.e2e_s, slo_seconds(opts, "slo-e2e-ms"));
  ASSIGN_OR_RETURN(s.warmup, int_at_least(opts, "warmup", 0));
  ASSIGN_OR_RETURN(const double timeout_s, opts.get_double("timeout-s"));
  if (timeout_s <= 0) return invalid_argument("--timeout-s must be positive");
  s.timeout = std::chrono::milliseconds(static_cast<int64_t>(std::ceil(timeout_s * 1e3)));
  return s;
}

// ---- prompts ----

// Common English words, each one token in byte-level BPE vocabularies when preceded by a space.
constexpr const char* kWords[] = {
    "the",   "of",    "and",   "to",    "in",     "is",     "that",   "for",   "it",    "as",
    "was",   "with",  "be",    "by",    "on",     "not",    "he",     "this",  "are",   "or",
    "his",   "from",  "at",    "which", "but",    "have",   "an",     "had",   "they",  "you",
    "were",  "their", "one",   "all",   "we",     "can",    "her",    "has",   "there", "been",
    "if",    "more",  "when",  "will",  "would",  "who",    "so",     "no",    "time",  "about",
    "many",  "then",  "them",  "these", "some",   "into",   "two",    "may",   "first", "other",
    "could", "made",  "new",   "water", "people", "over",   "only",   "year",  "work",  "world",
    "after", "most",  "also",  "where", "much",   "before", "right",  "good",  "three", "state",
    "long",  "under", "never", "same",  "number", "great",  "place",  "small", "found", "light",
    "house", "still", "city",  "large", "point",  "home",   "school", "power", "river", "night",
    "music", "field", "story", "green", "open",   "order",  "paper",  "table",
};

std::string words_text(std::mt19937_64& rng, int64_t count) {
  std::string text;
  for (int64_t i = 0; i < count; ++i) {
    if (i > 0) text += ' ';
    text += kWords[uniform_below(rng, std::size(kWords))];
  }
  return text;
}

// Token ids of the word list in the server's vocabulary (POST /tokenize), or an empty list.
std::vector<int32_t> server_token_pool(const Settings& s, std::string* note) {
  std::string text;
  for (const char* word : kWords) text += std::string(" ") + word;
  json::object body{{"prompt", text}, {"add_special_tokens", false}};
  if (!s.model.empty()) body["model"] = s.model;
  StatusOr<HttpReply> reply = http_call(s.url, "/tokenize", json::serialize(body), s.timeout);
  std::set<int32_t> ids;
  if (reply.ok() && reply->status == 200) {
    boost::system::error_code ec;
    json::value value = json::parse(reply->body, ec);
    const json::value* tokens =
        !ec && value.is_object() ? value.as_object().if_contains("tokens") : nullptr;
    if (tokens != nullptr && tokens->is_array()) {
      for (const json::value& id : tokens->as_array()) {
        if (id.is_int64() && id.as_int64() >= 0) ids.insert(static_cast<int32_t>(id.as_int64()));
      }
    }
  }
  if (ids.empty()) {
    *note = "POST /tokenize gave no token ids (" +
            (reply.ok() ? "HTTP " + std::to_string(reply->status) : reply.status().message()) +
            "); random prompts are text, their token counts from usage";
  }
  return {ids.begin(), ids.end()};
}

struct Prompt {
  json::value content;  // completions: text or an array of ids; chat: the messages array
  int64_t tokens = 0;   // ids sent, or the planned length
  std::optional<int64_t> output_len;
};

StatusOr<std::vector<Prompt>> read_dataset(const std::string& path, bool chat) {
  std::ifstream in(path);
  if (!in) return invalid_argument("--dataset: cannot open " + path);
  std::vector<Prompt> prompts;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(number);
    boost::system::error_code ec;
    json::value value = json::parse(line, ec);
    if (ec || !value.is_object()) return invalid_argument(where + ": not a JSON object");
    const json::object& o = value.as_object();
    Prompt p;
    const json::value* prompt = o.if_contains("prompt");
    const json::value* messages = o.if_contains("messages");
    if (prompt != nullptr && prompt->is_string()) {
      // p.tokens stays 0: a text prompt's token count is known from the server's usage only.
      p.content =
          chat ? json::value(json::array{json::object{{"role", "user"}, {"content", *prompt}}})
               : *prompt;
    } else if (messages != nullptr && messages->is_array() && chat) {
      p.content = *messages;
    } else if (messages != nullptr && !chat) {
      return invalid_argument(where + ": 'messages' needs --endpoint chat");
    } else {
      return invalid_argument(where + ": needs a string 'prompt'" +
                              std::string(chat ? " or an array 'messages'" : ""));
    }
    if (const json::value* out = o.if_contains("output_len")) {
      if (!out->is_int64() || out->as_int64() < 1) {
        return invalid_argument(where + ": 'output_len' must be a positive integer");
      }
      p.output_len = out->as_int64();
    }
    prompts.push_back(std::move(p));
  }
  if (prompts.empty()) return invalid_argument("--dataset: " + path + " holds no prompts");
  return prompts;
}

// `count` requests: their prompts (random or from the dataset) and bodies.
std::vector<PlannedRequest> plan_requests(const Settings& s, int64_t count,
                                          const std::vector<Prompt>& dataset,
                                          const std::vector<int32_t>& token_pool,
                                          std::mt19937_64& rng) {
  const std::vector<int64_t> input_lens = uniform_lengths(count, s.input_len, s.range_ratio, rng);
  const std::vector<int64_t> output_lens = uniform_lengths(count, s.output_len, s.range_ratio, rng);
  std::vector<size_t> order(dataset.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[uniform_below(rng, i)]);

  std::vector<PlannedRequest> requests;
  for (int64_t i = 0; i < count; ++i) {
    Prompt p;
    if (!dataset.empty()) {
      p = dataset[order[static_cast<size_t>(i) % order.size()]];
    } else if (!s.chat && !token_pool.empty()) {
      json::array ids;
      for (int64_t t = 0; t < input_lens[i]; ++t) {
        ids.push_back(token_pool[uniform_below(rng, token_pool.size())]);
      }
      p.content = std::move(ids);
      p.tokens = input_lens[i];
    } else {
      const std::string text = words_text(rng, input_lens[i]);
      p.content = s.chat
                      ? json::value(json::array{json::object{{"role", "user"}, {"content", text}}})
                      : json::value(text);
      p.tokens = input_lens[i];
    }
    json::object body;
    body["model"] = s.model;
    body[s.chat ? "messages" : "prompt"] = p.content;
    body["max_tokens"] = p.output_len.value_or(output_lens[i]);
    body["temperature"] = s.temperature;
    body["stream"] = true;
    body["stream_options"] = json::object{{"include_usage", true}};
    if (s.ignore_eos) body["ignore_eos"] = true;
    requests.push_back({s.chat ? "/v1/chat/completions" : "/v1/completions", json::serialize(body),
                        s.chat, p.tokens});
  }
  return requests;
}

StatusOr<std::string> first_served_model(const Settings& s) {
  StatusOr<HttpReply> reply = http_call(s.url, "/v1/models", "", s.timeout);
  const std::string where = "GET " + s.url.text() + "/v1/models";
  if (!reply.ok())
    return unavailable(where + ": " + reply.status().message() + " (or give --model)");
  boost::system::error_code ec;
  json::value value = json::parse(reply->body, ec);
  if (reply->status == 200 && !ec && value.is_object()) {
    const json::value* data = value.as_object().if_contains("data");
    if (data && data->is_array() && !data->as_array().empty() && data->as_array()[0].is_object()) {
      const json::value* id = data->as_array()[0].as_object().if_contains("id");
      if (id && id->is_string()) return std::string(id->get_string());
    }
  }
  return unavailable(where + " gave no model (HTTP " + std::to_string(reply->status) +
                     "); give --model");
}

// ---- report ----

json::value number_or_null(double v) {
  return std::isfinite(v) ? json::value(v) : json::value(nullptr);
}

json::object distribution_ms(const Distribution& d) {
  return {{"count", d.count},
          {"mean", number_or_null(d.mean * 1e3)},
          {"p50", number_or_null(d.p50 * 1e3)},
          {"p90", number_or_null(d.p90 * 1e3)},
          {"p99", number_or_null(d.p99 * 1e3)},
          {"max", number_or_null(d.max * 1e3)}};
}

std::string rate_text(double rate) {
  if (std::isinf(rate)) return "inf (all at once)";
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%g req/s (Poisson)", rate);
  return buffer;
}

void print_report(const Settings& s, const Report& r, const std::string& prompts,
                  const std::string& command) {
  const int64_t total = r.completed + r.failed;
  std::printf("\n============ dshpc bench serve ============\n");
  std::printf("%-28s %s (model %s, /v1/%s)\n", "server", s.url.text().c_str(), s.model.c_str(),
              s.chat ? "chat/completions" : "completions");
  std::printf("%-28s %s, max concurrency %s, seed %llu\n", "arrivals", rate_text(s.rate).c_str(),
              s.max_concurrency > 0 ? std::to_string(s.max_concurrency).c_str() : "none",
              static_cast<unsigned long long>(s.seed));
  std::printf("%-28s %s\n", "prompts", prompts.c_str());
  std::printf("%-28s %lld / %lld\n", "completed / failed", static_cast<long long>(r.completed),
              static_cast<long long>(r.failed));
  std::printf("%-28s %.3f s\n", "duration", r.duration_s);
  std::printf("%-28s %.2f req/s\n", "request throughput", r.request_throughput);
  std::printf("%-28s %.1f tok/s\n", "output token throughput", r.output_token_throughput);
  std::printf("%-28s %.1f tok/s\n", "total token throughput", r.total_token_throughput);
  std::printf("%-28s %lld / %lld (from usage in %lld of %lld completed)\n", "input / output tokens",
              static_cast<long long>(r.input_tokens), static_cast<long long>(r.output_tokens),
              static_cast<long long>(r.usage_reported), static_cast<long long>(r.completed));
  if (s.slo.any()) {
    std::string slo;
    auto add = [&](const char* name, const std::optional<double>& v) {
      if (!v) return;
      char b[64];
      std::snprintf(b, sizeof(b), "%s%s <= %g ms", slo.empty() ? "" : ", ", name, *v * 1e3);
      slo += b;
    };
    add("TTFT", s.slo.ttft_s);
    add("TPOT", s.slo.tpot_s);
    add("E2E", s.slo.e2e_s);
    std::printf("%-28s %.2f req/s (%lld of %lld requests meet %s)\n", "goodput", r.goodput,
                static_cast<long long>(r.good_requests), static_cast<long long>(total),
                slo.c_str());
  }
  std::printf("\n%-14s %10s %10s %10s %10s %10s %8s\n", "latency (ms)", "mean", "p50", "p90", "p99",
              "max", "count");
  auto row = [](const char* name, const Distribution& d) {
    if (d.count == 0) {
      std::printf("%-14s %10s %10s %10s %10s %10s %8d\n", name, "-", "-", "-", "-", "-", 0);
      return;
    }
    std::printf("%-14s %10.2f %10.2f %10.2f %10.2f %10.2f %8lld\n", name, d.mean * 1e3, d.p50 * 1e3,
                d.p90 * 1e3, d.p99 * 1e3, d.max * 1e3, static_cast<long long>(d.count));
  };
  row("TTFT", r.ttft_s);
  row("TPOT", r.tpot_s);
  row("ITL", r.itl_s);
  row("E2E", r.e2e_s);
  std::printf(
      "TTFT: to the first chunk with text. TPOT: (E2E - TTFT) / (output tokens - 1) per request.\n"
      "ITL: gaps between streamed chunks with text (%lld chunks carried %lld tokens).\n",
      static_cast<long long>(r.output_chunks), static_cast<long long>(r.output_tokens));
  for (const ErrorCount& e : r.errors) {
    std::printf("error: %lld x %s\n", static_cast<long long>(e.count), e.message.c_str());
  }
  std::printf("reproduce: %s\n", command.c_str());
  std::fflush(stdout);
}

json::object report_json(const Settings& s, const Report& r, const std::string& prompts,
                         const std::string& command, const std::vector<RequestResult>& results) {
  json::object o;
  o["command"] = command;
  o["url"] = s.url.text();
  o["model"] = s.model;
  o["endpoint"] = s.chat ? "chat" : "completions";
  o["num_requests"] = r.completed + r.failed;
  o["request_rate"] = std::isinf(s.rate) ? json::value("inf") : json::value(s.rate);
  o["max_concurrency"] = s.max_concurrency;
  o["seed"] = s.seed;
  o["input_len"] = s.input_len;
  o["output_len"] = s.output_len;
  o["range_ratio"] = s.range_ratio;
  o["dataset"] = s.dataset.empty() ? json::value(nullptr) : json::value(s.dataset);
  o["ignore_eos"] = s.ignore_eos;
  o["temperature"] = s.temperature;
  o["prompts"] = prompts;
  o["completed"] = r.completed;
  o["failed"] = r.failed;
  o["duration_s"] = r.duration_s;
  o["request_throughput"] = r.request_throughput;
  o["output_token_throughput"] = r.output_token_throughput;
  o["total_token_throughput"] = r.total_token_throughput;
  o["total_input_tokens"] = r.input_tokens;
  o["total_output_tokens"] = r.output_tokens;
  o["output_chunks"] = r.output_chunks;
  o["requests_with_usage"] = r.usage_reported;
  o["ttft_ms"] = distribution_ms(r.ttft_s);
  o["tpot_ms"] = distribution_ms(r.tpot_s);
  o["itl_ms"] = distribution_ms(r.itl_s);
  o["e2e_ms"] = distribution_ms(r.e2e_s);
  auto ms_or_null = [](const std::optional<double>& v) {
    return v ? json::value(*v * 1e3) : json::value(nullptr);
  };
  o["slo"] = {{"ttft_ms", ms_or_null(s.slo.ttft_s)},
              {"itl_ms", ms_or_null(s.slo.tpot_s)},
              {"e2e_ms", ms_or_null(s.slo.e2e_s)}};
  o["good_requests"] = s.slo.any() ? json::value(r.good_requests) : json::value(nullptr);
  o["goodput"] = s.slo.any() ? json::value(r.goodput) : json::value(nullptr);
  json::array errors;
  for (const ErrorCount& e : r.errors)
    errors.push_back({{"message", e.message}, {"count", e.count}});
  o["errors"] = std::move(errors);
  json::array requests;
  for (const RequestResult& q : results) {
    json::object one{{"ok", q.ok},
                     {"sent_s", q.sent_s},
                     {"e2e_ms", q.e2e_s * 1e3},
                     {"prompt_tokens", q.prompt_tokens}};
    if (q.ok) {
      one["ttft_ms"] = q.ttft_s * 1e3;
      one["output_tokens"] = q.output_tokens;
      one["output_chunks"] = q.output_chunks;
      one["usage_reported"] = q.usage_reported;
    } else {
      one["error"] = q.error;
    }
    requests.push_back(std::move(one));
  }
  o["requests"] = std::move(requests);
  return o;
}

}  // namespace

int run_bench_serve(int argc, char** argv, int first) {
  const std::vector<OptionSpec> table = options_table();
  auto parsed = Options::parse(kCommand, table, argc, argv, first);
  if (!parsed.ok()) return fail(parsed.status(), 2);
  const Options& opts = *parsed;
  if (opts.help_requested()) {
    std::fputs(
        Options::help_text(
            kCommand,
            "Load generator against a running OpenAI-compatible server (dshpc serve or any "
            "other): streamed requests\narriving as a seeded Poisson process, one HTTP/1.1 "
            "connection each. Reports completed/failed,\nthroughput, TTFT, time per output token, "
            "inter-chunk and end-to-end latency (mean, p50, p90, p99,\nmax) and goodput under the "
            "--slo-* bounds. Exits 1 when any request failed, 2 on bad options.",
            table)
            .c_str(),
        stdout);
    return 0;
  }
  StatusOr<Settings> read = read_settings(opts);
  if (!read.ok()) return fail(read.status(), 2);
  Settings s = *read;
  std::vector<Prompt> dataset;
  if (!s.dataset.empty()) {
    StatusOr<std::vector<Prompt>> loaded = read_dataset(s.dataset, s.chat);
    if (!loaded.ok()) return fail(loaded.status(), 2);
    dataset = std::move(*loaded);
    if (!opts.given("num-requests")) s.num_requests = static_cast<int64_t>(dataset.size());
  }
  const std::string command = command_line(argc, argv);

  if (s.model.empty()) {
    StatusOr<std::string> model = first_served_model(s);
    if (!model.ok()) return fail(model.status(), 1);
    s.model = *model;
  }
  std::string prompts;
  std::vector<int32_t> token_pool;
  if (!dataset.empty()) {
    prompts = "from " + s.dataset + " (token counts from usage)";
  } else if (s.chat) {
    prompts = "random text of --input-len words (token counts from usage)";
  } else {
    std::string note;
    token_pool = server_token_pool(s, &note);
    if (!note.empty()) std::fprintf(stderr, "%s: note: %s\n", kCommand, note.c_str());
    prompts = token_pool.empty() ? "random text of --input-len words (token counts from usage)"
                                 : "random token ids (" + std::to_string(token_pool.size()) +
                                       " distinct ids of a word list, via /tokenize)";
  }
  std::printf("%s: %lld requests to %s, model %s, request rate %s\n", kCommand,
              static_cast<long long>(s.num_requests), s.url.text().c_str(), s.model.c_str(),
              rate_text(s.rate).c_str());
  std::fflush(stdout);

  std::mt19937_64 rng(s.seed ^ 0x9e3779b97f4a7c15ull);  // prompts and lengths; arrivals: s.seed
  LoadOptions load;
  load.max_concurrency = s.max_concurrency;
  load.timeout = s.timeout;
  if (s.warmup > 0) {
    const std::vector<PlannedRequest> warm = plan_requests(s, s.warmup, dataset, token_pool, rng);
    load.send_at_s.assign(warm.size(), 0.0);
    double unused = 0;
    const std::vector<RequestResult> results = run_load(s.url, warm, load, &unused);
    const auto bad =
        std::count_if(results.begin(), results.end(), [](const RequestResult& r) { return !r.ok; });
    if (bad > 0) {
      const auto it = std::find_if(results.begin(), results.end(),
                                   [](const RequestResult& r) { return !r.ok; });
      std::fprintf(stderr, "%s: warning: %lld of %lld warm-up requests failed: %s\n", kCommand,
                   static_cast<long long>(bad), static_cast<long long>(s.warmup),
                   it->error.c_str());
    }
  }
  const std::vector<PlannedRequest> requests =
      plan_requests(s, s.num_requests, dataset, token_pool, rng);
  load.send_at_s = poisson_arrivals(s.num_requests, s.rate, s.seed);
  double duration_s = 0;
  const std::vector<RequestResult> results = run_load(s.url, requests, load, &duration_s);
  const Report report = make_report(results, std::max(duration_s, 1e-9), s.slo);

  print_report(s, report, prompts, command);
  if (!opts.get("json").empty()) {
    std::ofstream out(opts.get("json"));
    out << json::serialize(report_json(s, report, prompts, command, results)) << "\n";
    if (!out) return fail(invalid_argument("--json: cannot write " + opts.get("json")), 1);
  }
  if (report.failed > 0) {
    const std::string what = report.completed == 0 ? "all " + std::to_string(report.failed)
                                                   : std::to_string(report.failed) + " of " +
                                                         std::to_string(s.num_requests);
    return fail(unavailable(what + " requests failed; the most frequent cause: " +
                            std::to_string(report.errors.front().count) + " x " +
                            report.errors.front().message),
                1);
  }
  return 0;
}

}  // namespace dshpc
