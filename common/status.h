// Status and StatusOr: recoverable, request- or file-level errors (abseil style).
// Use the code that tells the caller what to do:
//   kInvalidArgument   the input (request, file, config, flag) is wrong; retrying will not help
//   kNotFound          a named thing (file, tensor, model) does not exist
//   kOutOfRange        a value or offset is outside what the object holds
//   kResourceExhausted out of memory, KV blocks, queue slots; retry later or shrink the request
//   kUnavailable       the service cannot take work now (loading, draining)
//   kDeadlineExceeded  a deadline passed
//   kDataLoss          a checksum or structure check failed on stored data
//   kUnimplemented     a valid input this build does not support
//   kInternal          a bug on our side
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace dshpc {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,
  kNotFound,
  kOutOfRange,
  kResourceExhausted,
  kUnavailable,
  kDeadlineExceeded,
  kDataLoss,
  kUnimplemented,
  kInternal,
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string to_string() const;

  // Returns a copy whose message is "context: message".
  Status with_context(const std::string& context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status ok_status() {
  return Status();
}
inline Status invalid_argument(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status not_found(std::string m) {
  return {StatusCode::kNotFound, std::move(m)};
}
inline Status out_of_range(std::string m) {
  return {StatusCode::kOutOfRange, std::move(m)};
}
inline Status resource_exhausted(std::string m) {
  return {StatusCode::kResourceExhausted, std::move(m)};
}
inline Status unavailable(std::string m) {
  return {StatusCode::kUnavailable, std::move(m)};
}
inline Status deadline_exceeded(std::string m) {
  return {StatusCode::kDeadlineExceeded, std::move(m)};
}
inline Status data_loss(std::string m) {
  return {StatusCode::kDataLoss, std::move(m)};
}
inline Status unimplemented(std::string m) {
  return {StatusCode::kUnimplemented, std::move(m)};
}
inline Status internal_error(std::string m) {
  return {StatusCode::kInternal, std::move(m)};
}

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& status) : status_(status) {}        // NOLINT: implicit by design
  StatusOr(Status&& status) : status_(std::move(status)) {}  // NOLINT
  StatusOr(const T& value) : value_(value) {}                // NOLINT
  StatusOr(T&& value) : value_(std::move(value)) {}          // NOLINT

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  Status status_;  // ok when value_ is set
  std::optional<T> value_;
};

}  // namespace dshpc

#define DSHPC_CONCAT_INNER(a, b) a##b
#define DSHPC_CONCAT(a, b) DSHPC_CONCAT_INNER(a, b)

// Returns the status from the enclosing function when it is not ok.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::dshpc::Status dshpc_status_ = (expr);        \
    if (!dshpc_status_.ok()) return dshpc_status_; \
  } while (0)

// ASSIGN_OR_RETURN(auto x, f()) : declares x from a StatusOr or returns its status.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(DSHPC_CONCAT(dshpc_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()
