// Gateway lifecycle and the routes other than generation (gateway_generation.cpp).
#include "coordinator/gateway.h"

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "coordinator/gateway_internal.h"
#include "coordinator/memory_report.h"

namespace dshpc {

namespace json = boost::json;

namespace {

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

ApiError not_found_error(std::string_view path) {
  ApiError error;
  error.http_status = 404;
  error.message = "no route for '" + std::string(path) + "'";
  error.code = "not_found";
  return error;
}

ApiError method_not_allowed(std::string_view method, std::string_view path, const char* allow) {
  ApiError error;
  error.http_status = 405;
  error.message = "method " + std::string(method) + " is not allowed on '" + std::string(path) +
                  "'; use " + allow;
  error.code = "method_not_allowed";
  return error;
}

// ---- GET /health ----

void handle_health(Gateway::Context& context, HttpExchange& exchange) {
  const ServiceStatus status = context.service.status();
  json::object body;
  beast_http::status code = beast_http::status::service_unavailable;
  if (context.draining || status.state == ServiceState::kDraining) {
    body["status"] = "draining";
  } else if (status.state == ServiceState::kLoading) {
    body["status"] = "loading";
    body["progress"] = status.load_progress;
    body["percent"] = std::round(status.load_progress * 1000.0) / 10.0;
    body["loaded_bytes"] = status.load_bytes_done;
    body["total_bytes"] = status.load_bytes_total;
  } else if (status.state == ServiceState::kStopped) {
    body["status"] = "stopped";
  } else {
    body["status"] = "ok";
    code = beast_http::status::ok;
  }
  HttpResponse response = context.json_response(code, body);
  if (code != beast_http::status::ok) {
    response.set(beast_http::field::retry_after,
                 std::to_string(context.config.retry_after_seconds));
  }
  context.reply(exchange, "/health", std::move(response));
}

// ---- GET /v1/models ----

json::object model_card(const Gateway::Context& context, int64_t max_context) {
  json::object card;
  card["id"] = context.config.served_model_name;
  card["object"] = "model";
  card["created"] = unix_seconds();
  card["owned_by"] = "dshpc";
  if (max_context > 0) card["max_model_len"] = max_context;
  return card;
}

void handle_models(Gateway::Context& context, HttpExchange& exchange) {
  json::object body;
  body["object"] = "list";
  body["data"] = json::array{model_card(context, context.service.status().max_context)};
  context.reply(exchange, "/v1/models", context.json_response(beast_http::status::ok, body));
}

void handle_model(Gateway::Context& context, HttpExchange& exchange, std::string_view id) {
  constexpr std::string_view kEndpoint = "/v1/models/{id}";
  if (id != context.config.served_model_name) {
    ApiError error;
    error.http_status = 404;
    error.message = "The model '" + std::string(id) + "' does not exist; this server serves '" +
                    context.config.served_model_name + "'";
    error.param = "model";
    error.code = "model_not_found";
    context.reply_error(exchange, kEndpoint, error);
    return;
  }
  context.reply(exchange, kEndpoint,
                context.json_response(beast_http::status::ok,
                                      model_card(context, context.service.status().max_context)));
}

// ---- GET /metrics ----

void handle_metrics(Gateway::Context& context, HttpExchange& exchange) {
  // Gauges come from the service's and the server's own counts at scrape time.
  context.metrics->set_service_state(context.service.status());
  if (context.server) context.metrics->set_http_server(context.server->stats());
  // Counted before rendering, so that a scrape sees itself (as every other response does once
  // it is out).
  context.metrics->on_http_response("/metrics", 200);
  HttpResponse response(beast_http::status::ok, 11);
  response.set(beast_http::field::content_type, Metrics::kContentType);
  response.body() = context.metrics->render();
  exchange.respond(std::move(response));
}

// ---- GET /debug/memory ----

void handle_debug_memory(Gateway::Context& context, HttpExchange& exchange) {
  const json::object body =
      memory_report(context.metrics->rank_memory(), context.service.status(),
                    context.metrics->config().world_size, Metrics::Clock::now());
  context.reply(exchange, "/debug/memory", context.json_response(beast_http::status::ok, body));
}

// ---- POST /tokenize, POST /detokenize ----

void handle_tokenize(Gateway::Context& context, HttpExchange& exchange) {
  constexpr std::string_view kEndpoint = "/tokenize";
  ApiResult<json::object> body = parse_json_body(exchange.request());
  if (!body.ok()) return context.reply_error(exchange, kEndpoint, body.error());
  if (std::optional<ApiError> error = check_model(body.value(), context.limits)) {
    return context.reply_error(exchange, kEndpoint, *error);
  }
  const json::object& request = body.value();
  auto flag = [&](const char* key, bool fallback, bool* out) -> std::optional<ApiError> {
    auto it = request.find(key);
    if (it == request.end() || it->value().is_null()) {
      *out = fallback;
    } else if (it->value().is_bool()) {
      *out = it->value().get_bool();
    } else {
      return bad_request(std::string("'") + key + "' must be true or false", key);
    }
    return std::nullopt;
  };
  const json::value* prompt = request.if_contains("prompt");
  const json::value* messages = request.if_contains("messages");
  if (prompt && prompt->is_null()) prompt = nullptr;
  if (messages && messages->is_null()) messages = nullptr;
  if ((prompt == nullptr) == (messages == nullptr)) {
    return context.reply_error(
        exchange, kEndpoint, bad_request("give exactly one of 'prompt' and 'messages'", "prompt"));
  }
  StatusOr<std::vector<int32_t>> ids = std::vector<int32_t>();
  if (prompt != nullptr) {
    if (!prompt->is_string()) {
      return context.reply_error(exchange, kEndpoint,
                                 bad_request("'prompt' must be a string", "prompt"));
    }
    bool add_special_tokens = true;
    if (auto error = flag("add_special_tokens", true, &add_special_tokens)) {
      return context.reply_error(exchange, kEndpoint, *error);
    }
    ids = context.tokenizer.encode(prompt->get_string(), add_special_tokens);
  } else {
    // Reuse the chat request's message validation.
    json::object chat;
    chat["messages"] = *messages;
    ApiResult<GenerationParams> params = parse_chat_request(chat, context.limits);
    if (!params.ok()) return context.reply_error(exchange, kEndpoint, params.error());
    ChatOptions options;
    if (auto error = flag("add_generation_prompt", true, &options.add_generation_prompt)) {
      return context.reply_error(exchange, kEndpoint, *error);
    }
    ids = context.renderer->render_ids(context.tokenizer, params.value().messages, options);
  }
  if (!ids.ok()) {
    ApiError error = bad_request(ids.status().message(), prompt ? "prompt" : "messages");
    return context.reply_error(exchange, kEndpoint, error);
  }
  json::object response;
  json::array tokens;
  for (int32_t id : ids.value()) tokens.push_back(id);
  response["tokens"] = std::move(tokens);
  response["count"] = static_cast<int64_t>(ids->size());
  const int64_t max_context = context.service.status().max_context;
  if (max_context > 0) response["max_model_len"] = max_context;
  context.reply(exchange, kEndpoint, context.json_response(beast_http::status::ok, response));
}

void handle_detokenize(Gateway::Context& context, HttpExchange& exchange) {
  constexpr std::string_view kEndpoint = "/detokenize";
  ApiResult<json::object> body = parse_json_body(exchange.request());
  if (!body.ok()) return context.reply_error(exchange, kEndpoint, body.error());
  if (std::optional<ApiError> error = check_model(body.value(), context.limits)) {
    return context.reply_error(exchange, kEndpoint, *error);
  }
  const json::value* tokens = body.value().if_contains("tokens");
  if (tokens == nullptr || tokens->is_null()) {
    return context.reply_error(exchange, kEndpoint, bad_request("'tokens' is required", "tokens"));
  }
  ApiResult<std::vector<int32_t>> ids = parse_token_id_array(*tokens, "tokens");
  if (!ids.ok()) return context.reply_error(exchange, kEndpoint, ids.error());
  if (auto error = check_token_ids(ids.value(), context.tokenizer.id_limit(), "tokens")) {
    return context.reply_error(exchange, kEndpoint, *error);
  }
  StatusOr<std::string> text = context.tokenizer.decode(ids.value());
  if (!text.ok()) {
    return context.reply_error(exchange, kEndpoint, bad_request(text.status().message(), "tokens"));
  }
  json::object response;
  response["prompt"] = *text;
  context.reply(exchange, kEndpoint, context.json_response(beast_http::status::ok, response));
}

// ---- routing ----

void route(Gateway::Context& context, const std::shared_ptr<HttpExchange>& exchange) {
  const auto arrival = std::chrono::steady_clock::now();
  const HttpRequest& request = exchange->request();
  std::string_view path(request.target().data(), request.target().size());
  if (size_t query = path.find('?'); query != std::string_view::npos) path = path.substr(0, query);
  const beast_http::verb method = request.method();
  const std::string_view method_name(request.method_string().data(),
                                     request.method_string().size());

  struct Route {
    std::string_view path;
    beast_http::verb method;
  };
  auto allowed = [&](beast_http::verb expected, const char* allow) {
    if (method == expected) return true;
    HttpResponse response = context.error_response(method_not_allowed(method_name, path, allow));
    response.set(beast_http::field::allow, allow);
    context.reply(*exchange, path, std::move(response));
    return false;
  };

  if (path == "/v1/completions" || path == "/v1/chat/completions") {
    if (!allowed(beast_http::verb::post, "POST")) return;
    const ApiKind kind = path == "/v1/completions" ? ApiKind::kCompletion : ApiKind::kChat;
    handle_generation(context, kind, path, exchange, arrival);
  } else if (path == "/health") {
    if (allowed(beast_http::verb::get, "GET")) handle_health(context, *exchange);
  } else if (path == "/metrics") {
    if (allowed(beast_http::verb::get, "GET")) handle_metrics(context, *exchange);
  } else if (path == "/debug/memory") {
    if (allowed(beast_http::verb::get, "GET")) handle_debug_memory(context, *exchange);
  } else if (path == "/v1/models") {
    if (allowed(beast_http::verb::get, "GET")) handle_models(context, *exchange);
  } else if (path.starts_with("/v1/models/") && path.size() > 11) {
    if (allowed(beast_http::verb::get, "GET")) handle_model(context, *exchange, path.substr(11));
  } else if (path == "/tokenize") {
    if (allowed(beast_http::verb::post, "POST")) handle_tokenize(context, *exchange);
  } else if (path == "/detokenize") {
    if (allowed(beast_http::verb::post, "POST")) handle_detokenize(context, *exchange);
  } else {
    context.reply_error(*exchange, "other", not_found_error(path));
  }
}

}  // namespace

ApiResult<json::object> parse_json_body(const HttpRequest& request) {
  ApiResult<json::object> body = parse_request_body(request.body());
  if (body.ok()) return body;
  const auto type = request[beast_http::field::content_type];
  std::string media(type.data(), type.size());
  media = media.substr(0, media.find(';'));
  for (char& c : media) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  while (!media.empty() && media.back() == ' ') media.pop_back();
  if (media.empty() || media == "application/json" || media.ends_with("+json")) return body;
  ApiError error = body.error();
  error.message +=
      " (the request was sent as Content-Type '" + media + "'; send the body as application/json)";
  return error;
}

// ---- Context ----

Gateway::Context::Context(GatewayConfig config_in, InferenceService& service_in,
                          const Tokenizer& tokenizer_in, std::shared_ptr<Metrics> metrics_in)
    : config(std::move(config_in)),
      service(service_in),
      tokenizer(tokenizer_in),
      metrics(metrics_in
                  ? std::move(metrics_in)
                  : std::make_shared<Metrics>(MetricsConfig{.model = config.served_model_name})) {
  limits.served_model = config.served_model_name;
  limits.max_n = config.max_n;
  limits.max_stop_strings = config.max_stop_strings;
  limits.default_timeout_s = config.request_timeout_s;
  limits.max_timeout_s = config.max_request_timeout_s;
  std::random_device random;
  char prefix[16];
  std::snprintf(prefix, sizeof(prefix), "%08x", static_cast<unsigned>(random()));
  id_prefix_ = prefix;
}

std::string Gateway::Context::new_response_id(std::string_view prefix) {
  char counter[24];
  std::snprintf(counter, sizeof(counter), "%016llx",
                static_cast<unsigned long long>(next_id_.fetch_add(1)));
  return std::string(prefix) + id_prefix_ + counter;
}

uint64_t Gateway::Context::register_call(std::shared_ptr<GenerationCall> call) {
  std::lock_guard<std::mutex> lock(calls_mutex_);
  const uint64_t key = ++next_call_key_;
  calls_.emplace(key, std::move(call));
  return key;
}

void Gateway::Context::unregister_call(uint64_t key) {
  std::shared_ptr<GenerationCall> call;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(calls_mutex_);
  auto it = calls_.find(key);
  if (it == calls_.end()) return;
  call = std::move(it->second);
  calls_.erase(it);
}

std::vector<std::shared_ptr<GenerationCall>> Gateway::Context::take_calls() {
  std::lock_guard<std::mutex> lock(calls_mutex_);
  std::vector<std::shared_ptr<GenerationCall>> calls;
  for (auto& [key, call] : calls_) calls.push_back(std::move(call));
  calls_.clear();
  return calls;
}

std::vector<std::shared_ptr<GenerationCall>> Gateway::Context::calls() const {
  std::lock_guard<std::mutex> lock(calls_mutex_);
  std::vector<std::shared_ptr<GenerationCall>> out;
  for (const auto& [key, call] : calls_) out.push_back(call);
  return out;
}

int64_t Gateway::Context::calls_in_flight() const {
  std::lock_guard<std::mutex> lock(calls_mutex_);
  return static_cast<int64_t>(calls_.size());
}

HttpResponse Gateway::Context::json_response(beast_http::status status,
                                             const json::value& body) const {
  HttpResponse response(status, 11);
  response.set(beast_http::field::content_type, "application/json");
  response.body() = json::serialize(body);
  return response;
}

HttpResponse Gateway::Context::error_response(const ApiError& error) const {
  HttpResponse response =
      json_response(static_cast<beast_http::status>(error.http_status), error_body(error));
  if (error.http_status == 429 || error.http_status == 503) {
    response.set(beast_http::field::retry_after, std::to_string(config.retry_after_seconds));
  }
  return response;
}

void Gateway::Context::reply(HttpExchange& exchange, std::string_view endpoint,
                             HttpResponse response) {
  metrics->on_http_response(endpoint, response.result_int());
  exchange.respond(std::move(response));
}

void Gateway::Context::reply_error(HttpExchange& exchange, std::string_view endpoint,
                                   const ApiError& error) {
  reply(exchange, endpoint, error_response(error));
}

// ---- Gateway ----

Gateway::Gateway(GatewayConfig config, InferenceService& service, const Tokenizer& tokenizer,
                 std::shared_ptr<Metrics> metrics)
    : context_(
          std::make_unique<Context>(std::move(config), service, tokenizer, std::move(metrics))) {}

Gateway::~Gateway() {
  stop();
}

Status Gateway::start() {
  std::lock_guard<std::mutex> lifecycle(lifecycle_mutex_);
  if (server_) return internal_error("Gateway::start called twice");
  RETURN_IF_ERROR(context_->config.validate());
  StatusOr<ChatRenderer> renderer = ChatRenderer::for_tokenizer(context_->tokenizer);
  if (!renderer.ok()) return renderer.status().with_context("gateway: chat template");
  context_->renderer.emplace(std::move(renderer).value());

  Context* context = context_.get();
  auto errors = [context](beast_http::status status, const std::string& message) {
    ApiError error;
    error.http_status = static_cast<int>(status);
    error.message = message;
    switch (status) {
      case beast_http::status::payload_too_large:
        error.code = "request_too_large";
        break;
      case beast_http::status::request_header_fields_too_large:
        error.code = "headers_too_large";
        break;
      case beast_http::status::request_timeout:
        error.code = "request_timeout";
        break;
      case beast_http::status::service_unavailable:
        error.type = "server_error";
        error.code = "service_unavailable";
        break;
      case beast_http::status::internal_server_error:
        error.type = "server_error";
        error.code = "internal_error";
        break;
      default:
        break;
    }
    return context->error_response(error);
  };
  server_ = std::make_unique<HttpServer>(
      context_->config,
      [context](std::shared_ptr<HttpExchange> exchange) { route(*context, exchange); }, errors);
  context_->server = server_.get();
  Status started = server_->start();
  if (!started.ok()) {
    context_->server = nullptr;
    server_.reset();
  }
  return started;
}

uint16_t Gateway::port() const {
  return server_ ? server_->port() : 0;
}

void Gateway::begin_drain() {
  context_->draining = true;
}

bool Gateway::draining() const {
  return context_->draining;
}

int64_t Gateway::in_flight() const {
  return context_->calls_in_flight();
}

void Gateway::stop(std::chrono::milliseconds grace) {
  std::lock_guard<std::mutex> lifecycle(lifecycle_mutex_);
  if (!server_) return;
  context_->draining = true;
  server_->stop(grace);  // closing connections cancels their requests (on_client_gone)
  {
    std::lock_guard<std::mutex> lock(context_->gate->mutex);
    context_->gate->open = false;
  }
  // The I/O threads are joined: what is still registered is ours to cancel and release (while
  // the io_context, which their sockets belong to, still exists).
  for (const std::shared_ptr<GenerationCall>& call : context_->take_calls()) {
    call->cancel_for_shutdown();
  }
  context_->server = nullptr;
  server_.reset();
}

void Gateway::fail_all(const std::string& message, std::chrono::milliseconds grace) {
  std::lock_guard<std::mutex> lifecycle(lifecycle_mutex_);
  if (!server_) return;
  context_->draining = true;  // anything arriving meanwhile gets 503 as well
  const ApiError error = api_error_from_status(unavailable(message));
  for (const std::shared_ptr<GenerationCall>& call : context_->calls()) call->post_failure(error);
  // The failures are queued on their strands ahead of the shutdown that stop() posts, so each
  // connection writes its error before it closes.
  server_->stop(grace);
  {
    std::lock_guard<std::mutex> lock(context_->gate->mutex);
    context_->gate->open = false;
  }
  context_->take_calls();  // whatever did not get out in time: no one to tell any more
  context_->server = nullptr;
  server_.reset();
}

Metrics& Gateway::metrics() const {
  return *context_->metrics;
}

HttpServerStats Gateway::http_stats() const {
  return server_ ? server_->stats() : HttpServerStats{};
}

}  // namespace dshpc
