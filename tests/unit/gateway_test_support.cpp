#include "gateway_test_support.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <boost/beast/http.hpp>
#include <cctype>

namespace dshpc::gateway_test {

using Clock = std::chrono::steady_clock;

// ---- FakeInferenceService ----

FakeInferenceService::FakeInferenceService() {
  status_.state = ServiceState::kReady;
  status_.load_progress = 1.0;
  status_.max_context = 4096;
  status_.vocab_size = 129280;
  status_.kv_blocks_total = 100;
  worker_ = std::thread([this] { run(); });
}

FakeInferenceService::~FakeInferenceService() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  worker_.join();
}

void FakeInferenceService::set_status(const ServiceStatus& status) {
  std::lock_guard<std::mutex> lock(mutex_);
  status_ = status;
}

void FakeInferenceService::set_script(std::function<FakeScript(const GenerationRequest&)> script) {
  std::lock_guard<std::mutex> lock(mutex_);
  script_ = std::move(script);
}

void FakeInferenceService::set_token_delay(std::chrono::milliseconds delay) {
  std::lock_guard<std::mutex> lock(mutex_);
  token_delay_ = delay;
}

void FakeInferenceService::set_submit_error(std::optional<Status> error, size_t successes_first) {
  std::lock_guard<std::mutex> lock(mutex_);
  submit_error_ = std::move(error);
  submit_error_after_ = successes_first;
}

Status FakeInferenceService::submit(GenerationRequest request,
                                    std::shared_ptr<GenerationSink> sink) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (submit_error_) {
      if (submit_error_after_ == 0) return *submit_error_;
      --submit_error_after_;
    }
    if (status_.state != ServiceState::kReady) return unavailable("fake: not ready");
    submitted_.push_back(request);
    Running running;
    running.script = script_ ? script_(request) : FakeScript{};
    running.request = std::move(request);
    running.sink = std::move(sink);
    running.due = Clock::now() + token_delay_;
    running_.push_back(std::move(running));
  }
  changed_.notify_all();
  return ok_status();
}

void FakeInferenceService::cancel(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cancelled_.push_back(request_id);
    for (Running& running : running_) {
      if (running.request.request_id == request_id) running.cancel_requested = true;
    }
  }
  changed_.notify_all();
}

ServiceStatus FakeInferenceService::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  ServiceStatus status = status_;
  status.running = static_cast<int64_t>(running_.size());
  return status;
}

std::vector<GenerationRequest> FakeInferenceService::submitted() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return submitted_;
}

std::vector<std::string> FakeInferenceService::cancelled() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cancelled_;
}

bool FakeInferenceService::wait_for_cancel(const std::string& prefix,
                                           std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] {
    return std::any_of(cancelled_.begin(), cancelled_.end(),
                       [&](const std::string& id) { return id.rfind(prefix, 0) == 0; });
  });
}

bool FakeInferenceService::wait_idle(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return running_.empty(); });
}

size_t FakeInferenceService::running() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return running_.size();
}

void FakeInferenceService::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    if (running_.empty()) {
      changed_.wait(lock);
      continue;
    }
    Clock::time_point next_due = Clock::time_point::max();
    for (const Running& r : running_) {
      next_due = std::min(next_due, r.cancel_requested ? Clock::now() : r.due);
    }
    if (next_due > Clock::now()) {
      changed_.wait_until(lock, next_due);
      continue;
    }
    // One step: every due request advances by one event; sinks are called outside the lock.
    std::vector<std::pair<std::shared_ptr<GenerationSink>, GenerationEvent>> out;
    const Clock::time_point now = Clock::now();
    for (Running& r : running_) {
      if (!r.cancel_requested && r.due > now) continue;
      GenerationEvent event;
      event.prompt_tokens = static_cast<int64_t>(r.request.prompt_ids.size());
      if (r.cancel_requested) {
        event.finish = FinishReason::kCancelled;
      } else {
        const bool first = r.emitted == 0;
        for (size_t k = 0; k < r.script.tokens_per_event; ++k) {
          if (r.script.error && r.emitted == r.script.error_after) break;
          if (r.emitted >= r.script.tokens.size()) break;
          if (static_cast<int64_t>(r.emitted) >= r.request.max_tokens) break;
          GeneratedToken token;
          token.token = r.script.tokens[r.emitted];
          const int top = r.request.sampling.top_logprobs;
          if (top >= 0) {
            token.logprob = -0.5f - 0.01f * static_cast<float>(r.emitted);
            for (int j = 0; j < top; ++j) {
              token.top_logprobs.push_back(
                  {token.token + j, token.logprob - static_cast<float>(j)});
            }
          }
          event.tokens.push_back(std::move(token));
          ++r.emitted;
        }
        event.first_token = first && !event.tokens.empty();
        if (r.script.error && r.emitted == r.script.error_after) {
          event.finish = FinishReason::kError;
          event.error = *r.script.error;
        } else if (static_cast<int64_t>(r.emitted) >= r.request.max_tokens) {
          event.finish = FinishReason::kLength;
        } else if (r.emitted >= r.script.tokens.size()) {
          event.finish = r.script.finish;
        }
      }
      event.completion_tokens = static_cast<int64_t>(r.emitted);
      r.due = now + token_delay_;
      std::shared_ptr<GenerationSink> sink = r.sink;
      if (event.finish != FinishReason::kNone) r.sink.reset();  // finished: removed below
      out.emplace_back(std::move(sink), std::move(event));
    }
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [](const Running& r) { return r.sink == nullptr; }),
                   running_.end());
    lock.unlock();
    for (auto& [sink, event] : out) sink->on_event(std::move(event));
    out.clear();  // drop sink references outside the lock too
    lock.lock();
    changed_.notify_all();
  }
}

// ---- HTTP client ----

std::string HttpResult::header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

TestConnection::TestConnection(uint16_t port) {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ::close(fd_);
    fd_ = -1;
    return;
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

TestConnection::~TestConnection() {
  close();
}

void TestConnection::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool TestConnection::send_all(std::string_view bytes) {
  while (!bytes.empty() && fd_ >= 0) {
    ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return bytes.empty();
}

bool TestConnection::fill(Clock::time_point deadline) {
  if (fd_ < 0) return false;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) return false;
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
  char buffer[16384];
  ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
  if (n <= 0) return false;
  pending_.append(buffer, static_cast<size_t>(n));
  received_.append(buffer, static_cast<size_t>(n));
  return true;
}

std::optional<HttpResult> TestConnection::read_response(std::chrono::milliseconds timeout) {
  namespace http = boost::beast::http;
  const Clock::time_point deadline = Clock::now() + timeout;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  parser.eager(true);
  bool eof = false;
  while (!parser.is_done()) {
    boost::system::error_code ec;
    if (!pending_.empty()) {
      size_t used = parser.put(boost::asio::buffer(pending_), ec);
      pending_.erase(0, used);
      if (ec && ec != http::error::need_more) return std::nullopt;
      if (parser.is_done()) break;
      if (!ec && used > 0) continue;
    }
    if (eof) {
      parser.put_eof(ec);
      if (ec || !parser.is_done()) return std::nullopt;
      break;
    }
    if (!fill(deadline)) {
      if (Clock::now() >= deadline) return std::nullopt;
      eof = true;  // the server closed: a close-delimited body ends here
    }
  }
  HttpResult result;
  const auto& message = parser.get();
  result.status = message.result_int();
  result.body = message.body();
  result.keep_alive = message.keep_alive();
  for (const auto& field : message) {
    std::string name(field.name_string());
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    result.headers[name] = std::string(field.value());
  }
  return result;
}

bool TestConnection::read_until(std::string_view needle, std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  while (received_.find(needle) == std::string::npos) {
    if (!fill(deadline)) return false;
  }
  return true;
}

bool TestConnection::wait_closed(std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    pollfd p{fd_, POLLIN, 0};
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (::poll(&p, 1, std::max<int>(1, static_cast<int>(left.count()))) <= 0) continue;
    char buffer[4096];
    ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
    if (n <= 0) return true;
    received_.append(buffer, static_cast<size_t>(n));
  }
  return false;
}

std::string make_request(std::string_view method, std::string_view target, std::string_view body,
                         const std::vector<std::string>& extra_headers, std::string_view version) {
  std::string request;
  request += method;
  request += ' ';
  request += target;
  request += ' ';
  request += version;
  request += "\r\nHost: 127.0.0.1\r\n";
  if (!body.empty() || method == "POST") {
    request +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  for (const std::string& header : extra_headers) request += header + "\r\n";
  request += "\r\n";
  request += body;
  return request;
}

HttpResult http_call(uint16_t port, std::string_view method, std::string_view target,
                     std::string_view body, const std::vector<std::string>& extra_headers) {
  TestConnection connection(port);
  if (!connection.connected()) return {};
  if (!connection.send_all(make_request(method, target, body, extra_headers))) return {};
  return connection.read_response().value_or(HttpResult{});
}

std::vector<std::string> sse_payloads(const std::string& body) {
  std::vector<std::string> payloads;
  size_t start = 0;
  while (start < body.size()) {
    size_t end = body.find('\n', start);
    if (end == std::string::npos) end = body.size();
    std::string_view line(body.data() + start, end - start);
    if (line.rfind("data: ", 0) == 0) payloads.emplace_back(line.substr(6));
    start = end + 1;
  }
  return payloads;
}

bool valid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    size_t length = c < 0x80           ? 1
                    : (c >> 5) == 0x6  ? 2
                    : (c >> 4) == 0xE  ? 3
                    : (c >> 3) == 0x1E ? 4
                                       : 0;
    if (length == 0 || i + length > text.size()) return false;
    for (size_t k = 1; k < length; ++k) {
      if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) return false;
    }
    i += length;
  }
  return true;
}

double metric_value(const std::string& text, const std::string& series) {
  const std::string prefix = series + " ";
  for (size_t at = 0; at < text.size();) {
    const size_t end = std::min(text.find('\n', at), text.size());
    if (text.compare(at, prefix.size(), prefix) == 0) {
      return std::stod(text.substr(at + prefix.size(), end - at - prefix.size()));
    }
    at = end + 1;
  }
  return -1.0;
}

double http_responses(const std::string& text, const std::string& model, std::string_view endpoint,
                      int code) {
  return metric_value(text, "dshpc_http_requests_total{model=\"" + model + "\",code=\"" +
                                std::to_string(code) + "\",endpoint=\"" + std::string(endpoint) +
                                "\"}");
}

}  // namespace dshpc::gateway_test
