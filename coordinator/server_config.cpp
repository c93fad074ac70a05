#include "coordinator/server_config.h"

#include <boost/asio/ip/address.hpp>
#include <iomanip>
#include <sstream>
#include <utility>

#include "coordinator/openai_api.h"

namespace dshpc {
namespace {

std::string field(const char* name) {
  return std::string("gateway.") + name + ": ";
}

}  // namespace

Status GatewayConfig::validate() const {
  std::string problems;
  auto bad = [&](const char* name, const std::string& what) {
    if (!problems.empty()) problems += "; ";
    problems += field(name) + what;
  };
  if (host != "localhost") {
    boost::system::error_code ec;
    boost::asio::ip::make_address(host, ec);
    if (ec) bad("host", "must be an IP address or \"localhost\", got \"" + host + "\"");
  }
  if (io_threads < 1 || io_threads > 256) {
    bad("io_threads", "must be in 1..256, got " + std::to_string(io_threads));
  }
  if (max_header_bytes < 1024 || max_header_bytes > (1u << 24)) {
    bad("max_header_bytes", "must be in 1024..16777216, got " + std::to_string(max_header_bytes));
  }
  if (max_body_bytes < 1024 || max_body_bytes > (size_t{1} << 32)) {
    bad("max_body_bytes", "must be in 1024..4294967296, got " + std::to_string(max_body_bytes));
  }
  if (read_timeout.count() <= 0) {
    bad("read_timeout", "must be positive, got " + std::to_string(read_timeout.count()) + " ms");
  }
  if (write_timeout.count() <= 0) {
    bad("write_timeout", "must be positive, got " + std::to_string(write_timeout.count()) + " ms");
  }
  if (max_stream_buffer_bytes < 4096) {
    bad("max_stream_buffer_bytes",
        "must be at least 4096, got " + std::to_string(max_stream_buffer_bytes));
  }
  if (max_connections < 1) {
    bad("max_connections", "must be at least 1, got " + std::to_string(max_connections));
  }
  if (served_model_name.empty()) bad("served_model_name", "must not be empty");
  if (max_n < 1 || max_n > 128) bad("max_n", "must be in 1..128, got " + std::to_string(max_n));
  if (max_stop_strings < 0 || max_stop_strings > 64) {
    bad("max_stop_strings", "must be in 0..64, got " + std::to_string(max_stop_strings));
  }
  if (retry_after_seconds < 0 || retry_after_seconds > 3600) {
    bad("retry_after_seconds", "must be in 0..3600, got " + std::to_string(retry_after_seconds));
  }
  auto seconds = [](double value) {
    std::ostringstream out;
    out << std::setprecision(12) << value;
    return out.str();
  };
  for (auto [name, value] : {std::pair{"request_timeout_s", request_timeout_s},
                             std::pair{"max_request_timeout_s", max_request_timeout_s}}) {
    if (!(value >= 0.0 && value <= kMaxRequestTimeoutSeconds)) {
      bad(name, "must be in [0, " + seconds(kMaxRequestTimeoutSeconds) +
                    "] seconds (0: none), got " + seconds(value));
    }
  }
  if (max_request_timeout_s > 0.0 && request_timeout_s > max_request_timeout_s) {
    bad("request_timeout_s", "must not exceed max_request_timeout_s (" +
                                 seconds(max_request_timeout_s) + " s), got " +
                                 seconds(request_timeout_s) + " s");
  }
  if (problems.empty()) return ok_status();
  return invalid_argument(problems);
}

}  // namespace dshpc
