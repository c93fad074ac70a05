// POST /v1/completions and /v1/chat/completions: validation that needs the service and the
// tokenizer, submission of n service requests, and the text assembly of their events into a
// JSON response or an SSE stream.
#include <boost/asio/post.hpp>
#include <chrono>

#include "common/log.h"
#include "coordinator/gateway_internal.h"

namespace dshpc {

namespace json = boost::json;
using Clock = std::chrono::steady_clock;

namespace {

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// How a finished choice counts (its OpenAI finish reason → the service's).
FinishReason finish_reason_of(std::string_view openai_reason) {
  if (openai_reason == "stop") return FinishReason::kStop;
  if (openai_reason == "length") return FinishReason::kLength;
  if (openai_reason == "timeout") return FinishReason::kTimeout;
  if (openai_reason == "error") return FinishReason::kError;
  return FinishReason::kCancelled;  // "abort": the client went away
}

ApiError not_serving(const Gateway::Context& context, const ServiceStatus& status) {
  std::string message;
  if (context.draining || status.state == ServiceState::kDraining) {
    message = "the server is draining and takes no new requests";
  } else if (status.state == ServiceState::kLoading) {
    message = "the model is loading (" +
              std::to_string(static_cast<int>(status.load_progress * 100.0)) + "% done)";
  } else {
    message = "the server has stopped";
  }
  return api_error_from_status(unavailable(message));
}

// Errors a service reports after accepting a request.
ApiError event_error(const Status& status) {
  ApiError error = api_error_from_status(status);
  if (error.http_status != 400 && error.http_status != 503) {
    error = api_error_from_status(internal_error(status.message()));
  }
  return error;
}

// Receives one service request's events on the scheduler thread and posts them to the call's
// strand; does nothing once the call is gone or the gateway has stopped.
class ChoiceSink : public GenerationSink {
 public:
  ChoiceSink(std::shared_ptr<SinkGate> gate, std::weak_ptr<GenerationCall> call, int choice)
      : gate_(std::move(gate)), call_(std::move(call)), choice_(choice) {}

  void on_event(GenerationEvent event) override {
    std::lock_guard<std::mutex> lock(gate_->mutex);
    if (!gate_->open) return;
    if (std::shared_ptr<GenerationCall> call = call_.lock()) {
      call->post_event(choice_, std::move(event));
    }
  }

 private:
  std::shared_ptr<SinkGate> gate_;
  std::weak_ptr<GenerationCall> call_;
  const int choice_;
};

}  // namespace

void record_request_error(Gateway::Context& context, std::string_view request_id,
                          std::string_view endpoint, const ApiError& error) {
  // A client's mistake is not the server's warning; refusals under load and our own errors are.
  const LogLevel level = error.http_status >= 500   ? LogLevel::kError
                         : error.http_status == 429 ? LogLevel::kWarn
                                                    : LogLevel::kInfo;
  process_logger().request_event(level, log_action::kRequestError, request_id, "request failed",
                                 {{"url.path", endpoint},
                                  {"http.response.status_code", error.http_status},
                                  {"error.code", error.code},
                                  {"error.message", error.message}});
}

void handle_generation(Gateway::Context& context, ApiKind kind, std::string_view endpoint,
                       const std::shared_ptr<HttpExchange>& exchange, Clock::time_point arrival) {
  // The response id, given before validation so that a refused request's log line has one too.
  std::string id = context.new_response_id(kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-");
  auto fail = [&](const ApiError& error) {
    context.metrics->on_request_failed(failure_reason_for_http(error.http_status));
    record_request_error(context, id, endpoint, error);
    context.reply_error(*exchange, endpoint, error);
  };

  ApiResult<json::object> body = parse_json_body(exchange->request());
  if (!body.ok()) return fail(body.error());
  ApiResult<GenerationParams> parsed = kind == ApiKind::kChat
                                           ? parse_chat_request(body.value(), context.limits)
                                           : parse_completion_request(body.value(), context.limits);
  if (!parsed.ok()) return fail(parsed.error());
  GenerationParams& params = parsed.value();

  const ServiceStatus status = context.service.status();
  if (context.draining || status.state != ServiceState::kReady) {
    return fail(not_serving(context, status));
  }

  // Prompt ids: the chat template, the text, or the ids as given.
  std::vector<int32_t> prompt_ids;
  const char* prompt_param = kind == ApiKind::kChat ? "messages" : "prompt";
  if (kind == ApiKind::kChat) {
    ChatOptions options;
    options.add_generation_prompt = params.add_generation_prompt;
    options.extra_variables = params.template_variables;
    StatusOr<std::vector<int32_t>> ids =
        context.renderer->render_ids(context.tokenizer, params.messages, options);
    if (!ids.ok()) {
      return fail(
          bad_request("cannot render the chat template: " + ids.status().message(), "messages"));
    }
    prompt_ids = std::move(ids).value();
  } else if (params.prompt_text) {
    StatusOr<std::vector<int32_t>> ids =
        context.tokenizer.encode(*params.prompt_text, /*add_special_tokens=*/true);
    if (!ids.ok()) return fail(bad_request(ids.status().message(), "prompt"));
    prompt_ids = std::move(ids).value();
  } else {
    prompt_ids = std::move(params.prompt_ids);
  }
  if (prompt_ids.empty()) {
    return fail(bad_request(std::string("the prompt is empty after tokenization"), prompt_param));
  }

  const int64_t vocab = status.vocab_size > 0 ? status.vocab_size
                                              : static_cast<int64_t>(context.tokenizer.id_limit());
  if (auto error = check_token_ids(prompt_ids, vocab, prompt_param)) return fail(*error);
  if (auto error = check_token_ids(params.sampling.stop_token_ids, vocab, "stop_token_ids")) {
    return fail(*error);
  }

  // Context: prompt + max_tokens must fit. Without max_tokens, completions default to 16 tokens
  // (OpenAI's default) and chat to the rest of the context, both clipped to what is left.
  const int64_t prompt_tokens = static_cast<int64_t>(prompt_ids.size());
  const int64_t max_context = status.max_context;
  int64_t max_tokens = params.max_tokens.value_or(16);
  if (max_context > 0) {
    const int64_t room = max_context - prompt_tokens;
    if (room <= 0) {
      return fail(bad_request("the prompt has " + std::to_string(prompt_tokens) +
                                  " tokens, but the model's context is " +
                                  std::to_string(max_context) + " tokens",
                              prompt_param));
    }
    if (!params.max_tokens) {
      max_tokens = kind == ApiKind::kChat ? room : std::min<int64_t>(16, room);
    } else if (*params.max_tokens > room) {
      return fail(bad_request(
          "the prompt (" + std::to_string(prompt_tokens) + " tokens) plus max_tokens (" +
              std::to_string(*params.max_tokens) + ") is longer than the model's context of " +
              std::to_string(max_context) + " tokens",
          kind == ApiKind::kChat && body.value().contains("max_completion_tokens")
              ? "max_completion_tokens"
              : "max_tokens"));
    }
  }

  auto call = std::make_shared<GenerationCall>(context, exchange, std::move(id),
                                               std::string(endpoint), std::move(params),
                                               std::move(prompt_ids), max_tokens, arrival);
  call->start();
}

// ---- GenerationCall ----

GenerationCall::GenerationCall(Gateway::Context& context, std::shared_ptr<HttpExchange> exchange,
                               std::string id, std::string endpoint, GenerationParams params,
                               std::vector<int32_t> prompt_ids, int64_t max_tokens,
                               Clock::time_point arrival)
    : context_(context),
      exchange_(std::move(exchange)),
      endpoint_(std::move(endpoint)),
      params_(std::move(params)),
      prompt_ids_(std::move(prompt_ids)),
      max_tokens_(max_tokens),
      arrival_(arrival) {
  meta_.id = std::move(id);
  meta_.created = unix_seconds();
  meta_.model = params_.model;
  choices_.reserve(params_.n);
  for (int i = 0; i < params_.n; ++i) {
    choices_.emplace_back(context_.tokenizer, params_.stop);
    choices_.back().request_id = meta_.id + "-" + std::to_string(i);
  }
}

void GenerationCall::start() {
  registry_key_ = context_.register_call(shared_from_this());
  for (int i = 0; i < params_.n; ++i) {
    GenerationRequest request;
    request.request_id = choices_[i].request_id;
    request.model = params_.model;
    request.prompt_ids = prompt_ids_;
    request.max_tokens = max_tokens_;
    request.sampling = params_.sampling;
    if (request.sampling.seed) request.sampling.seed = *request.sampling.seed + i;
    request.arrival = arrival_;
    if (params_.timeout_seconds) {
      request.deadline = arrival_ + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(*params_.timeout_seconds));
    }
    auto sink = std::make_shared<ChoiceSink>(context_.gate, weak_from_this(), i);
    Status submitted = context_.service.submit(std::move(request), std::move(sink));
    if (!submitted.ok()) {
      fail(api_error_from_status(submitted));
      return;
    }
    choices_[i].submitted = true;
  }
  accepted_ = true;
  context_.metrics->on_request_accepted(timing_, static_cast<int64_t>(prompt_ids_.size()),
                                        arrival_);
  process_logger().request_event(
      LogLevel::kInfo, log_action::kRequestAccepted, meta_.id, "request accepted",
      {{"url.path", endpoint_},
       {"request.prompt_tokens", static_cast<int64_t>(prompt_ids_.size())},
       {"request.max_tokens", max_tokens_},
       {"request.n", params_.n},
       {"request.stream", params_.stream}});

  std::weak_ptr<GenerationCall> weak = weak_from_this();
  exchange_->on_client_gone([weak] {
    if (auto call = weak.lock()) call->on_client_gone();
  });

  if (!params_.stream) return;
  HttpStreamHeader header(beast_http::status::ok, 11);
  header.set(beast_http::field::content_type, "text/event-stream");
  header.set(beast_http::field::cache_control, "no-cache");
  header.set("X-Accel-Buffering", "no");  // tell reverse proxies not to buffer the stream
  exchange_->begin_stream(std::move(header));
  streaming_ = true;
  context_.metrics->on_http_response(endpoint_, 200);
  if (params_.kind == ApiKind::kChat) {
    for (int i = 0; i < params_.n; ++i) {
      json::object delta;
      delta["role"] = "assistant";
      delta["content"] = "";
      stream_write(chat_chunk(meta_, i, std::move(delta), std::nullopt, "", params_.include_usage));
    }
  }
}

void GenerationCall::post_event(int choice, GenerationEvent event) {
  boost::asio::post(exchange_->executor(),
                    [self = shared_from_this(), choice, event = std::move(event)]() mutable {
                      self->on_event(choice, std::move(event));
                    });
}

void GenerationCall::on_event(int index, GenerationEvent event) {
  if (done_ || index < 0 || index >= static_cast<int>(choices_.size())) return;
  Choice& choice = choices_[index];
  if (choice.finished) return;  // e.g. the cancelled event after a stop string
  if (!event.tokens.empty()) {
    const bool first = !timing_.first_token.has_value();
    context_.metrics->on_token(timing_, Clock::now(), static_cast<int64_t>(event.tokens.size()));
    if (first) {
      process_logger().request_event(
          LogLevel::kInfo, log_action::kRequestFirstToken, meta_.id, "first token",
          {{"request.time_to_first_token_seconds", seconds_since(arrival_)}});
    }
  }

  for (const GeneratedToken& token : event.tokens) {
    ++choice.completion_tokens;
    if (wants_logprobs()) {
      choice.tokens.push_back(token);
      choice.text_offsets.push_back(choice.decoded_bytes);
    }
    // The model's vocabulary is padded beyond the tokenizer's (DeepSeek-V3: 129,280 rows for
    // 128,815 tokens). A padding id decodes to nothing, as Hugging Face's decode skips ids it
    // does not know; a trained model practically never samples one, random weights do.
    if (!context_.tokenizer.id_to_token(token.token).has_value()) continue;
    StatusOr<std::string> piece = choice.decoder.push(token.token);
    if (!piece.ok()) {
      fail(
          api_error_from_status(internal_error("the engine produced a token the tokenizer "
                                               "cannot decode: " +
                                               piece.status().message())));
      return;
    }
    choice.decoded_bytes += static_cast<int64_t>(piece->size());
    show(choice, choice.stop_filter.push(*piece));
    if (choice.stop_filter.stopped()) {
      context_.service.cancel(choice.request_id);  // the rest of the generation is not wanted
      finish_choice(choice, "stop");
      break;
    }
  }

  if (!choice.finished && event.finish != FinishReason::kNone) {
    if (event.finish == FinishReason::kError) {
      choice.finished = true;  // the service has ended it already
      fail(event_error(event.error));
      return;
    }
    show(choice, choice.stop_filter.push(choice.decoder.finish()));
    if (choice.stop_filter.stopped()) {
      finish_choice(choice, "stop");
    } else {
      show(choice, choice.stop_filter.flush());
      finish_choice(choice, openai_finish_reason(event.finish));
    }
  }

  if (streaming_) stream_choice(index);
  for (const Choice& c : choices_) {
    if (!c.finished) return;
  }
  complete();
}

void GenerationCall::show(Choice& choice, std::string_view text) {
  choice.text.append(text);
}

void GenerationCall::finish_choice(Choice& choice, std::string reason) {
  choice.finished = true;
  choice.finish_reason = std::move(reason);
}

std::optional<json::object> GenerationCall::logprobs_json(const Choice& choice) const {
  if (!wants_logprobs()) return std::nullopt;
  if (params_.kind == ApiKind::kChat) {
    return chat_logprobs_json(context_.tokenizer, choice.tokens, params_.logprobs_count);
  }
  return completion_logprobs_json(context_.tokenizer, choice.tokens, choice.text_offsets,
                                  params_.logprobs_count);
}

// Sends what the choice has shown since its last chunk, then its finish chunk once finished.
void GenerationCall::stream_choice(int index) {
  Choice& choice = choices_[index];
  const bool chat = params_.kind == ApiKind::kChat;
  if (!choice.text.empty() || !choice.tokens.empty()) {
    std::optional<json::object> logprobs;
    if (!choice.tokens.empty()) logprobs = logprobs_json(choice);
    if (chat) {
      json::object delta;
      delta["content"] = choice.text;
      stream_write(chat_chunk(meta_, index, std::move(delta), logprobs, "", params_.include_usage));
    } else {
      stream_write(
          completion_chunk(meta_, index, choice.text, logprobs, "", params_.include_usage));
    }
    choice.text.clear();
    choice.tokens.clear();
    choice.text_offsets.clear();
  }
  if (choice.finished && !choice.finish_sent) {
    choice.finish_sent = true;
    if (chat) {
      stream_write(chat_chunk(meta_, index, json::object(), std::nullopt, choice.finish_reason,
                              params_.include_usage));
    } else {
      stream_write(completion_chunk(meta_, index, "", std::nullopt, choice.finish_reason,
                                    params_.include_usage));
    }
  }
}

void GenerationCall::stream_write(const json::value& chunk) {
  exchange_->write(sse_event(chunk));
}

int64_t GenerationCall::completion_tokens() const {
  int64_t total = 0;
  for (const Choice& choice : choices_) total += choice.completion_tokens;
  return total;
}

void GenerationCall::cancel_unfinished() {
  for (Choice& choice : choices_) {
    if (choice.submitted && !choice.finished) context_.service.cancel(choice.request_id);
    if (!choice.finished) finish_choice(choice, "abort");
  }
}

void GenerationCall::cancel_for_shutdown() {
  if (done_) return;
  done_ = true;
  cancel_unfinished();
}

void GenerationCall::post_failure(ApiError error) {
  boost::asio::post(exchange_->executor(), [self = shared_from_this(), error = std::move(error)] {
    self->fail(error, /*cancel_service=*/false);
  });
}

void GenerationCall::on_client_gone() {
  if (done_) return;
  done_ = true;
  cancel_unfinished();
  // The client's choice, not a failure of ours: success{finished_reason="cancelled"}.
  context_.metrics->on_request_finished(timing_, FinishReason::kCancelled);
  process_logger().request_event(LogLevel::kInfo, log_action::kRequestFinished, meta_.id,
                                 "request finished: the client went away",
                                 {{"request.finish_reason", "cancelled"},
                                  {"request.completion_tokens", completion_tokens()},
                                  {"request.duration_seconds", seconds_since(arrival_)}});
  if (!streaming_) context_.metrics->on_http_response(endpoint_, 499);  // nginx's "client closed"
  release();
}

void GenerationCall::fail(const ApiError& error, bool cancel_service) {
  if (done_) return;
  done_ = true;
  if (cancel_service) {
    cancel_unfinished();
  } else {
    for (Choice& choice : choices_) {
      if (!choice.finished) finish_choice(choice, "abort");
    }
  }
  const FailureReason reason = failure_reason_for_http(error.http_status);
  if (accepted_) {
    context_.metrics->on_request_failed(timing_, reason);
  } else {
    context_.metrics->on_request_failed(reason);
  }
  record_request_error(context_, meta_.id, endpoint_, error);
  if (streaming_) {
    // The status line is out: report the error in the stream, then end it as usual.
    exchange_->write(sse_event(error_body(error)));
    exchange_->write(std::string(kSseDone));
    exchange_->end_stream();
  } else {
    context_.reply_error(*exchange_, endpoint_, error);
  }
  release();
}

void GenerationCall::complete() {
  if (done_) return;
  done_ = true;
  const Usage usage{static_cast<int64_t>(prompt_ids_.size()), completion_tokens()};
  const std::string& reason = choices_.front().finish_reason;
  context_.metrics->on_request_finished(timing_, finish_reason_of(reason));
  process_logger().request_event(LogLevel::kInfo, log_action::kRequestFinished, meta_.id,
                                 "request finished",
                                 {{"request.finish_reason", reason},
                                  {"request.prompt_tokens", usage.prompt_tokens},
                                  {"request.completion_tokens", usage.completion_tokens},
                                  {"request.duration_seconds", seconds_since(arrival_)},
                                  {"http.response.status_code", 200}});

  if (streaming_) {
    if (params_.include_usage) stream_write(usage_chunk(meta_, params_.kind, usage));
    exchange_->write(std::string(kSseDone));
    exchange_->end_stream();
  } else {
    std::vector<ChoiceOutput> outputs;
    outputs.reserve(choices_.size());
    for (const Choice& choice : choices_) {
      outputs.push_back({choice.text, choice.finish_reason, logprobs_json(choice)});
    }
    const json::object body = params_.kind == ApiKind::kChat
                                  ? chat_response(meta_, outputs, usage)
                                  : completion_response(meta_, outputs, usage);
    context_.reply(*exchange_, endpoint_, context_.json_response(beast_http::status::ok, body));
  }
  release();
}

void GenerationCall::release() {
  if (registry_key_ != 0) context_.unregister_call(registry_key_);
  registry_key_ = 0;
}

}  // namespace dshpc
