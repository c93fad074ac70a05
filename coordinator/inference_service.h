// The boundary between the HTTP gateway (I/O threads) and the engine side (scheduler thread,
// MPI). The gateway turns an HTTP request into GenerationRequests, submits them, and receives
// GenerationEvents through a sink; it never calls MPI and never blocks the scheduler.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace dshpc {

struct SamplingOptions {
  float temperature = 1.0f;  // 0: greedy
  float top_p = 1.0f;
  int64_t top_k = 0;             // 0: off
  std::optional<uint64_t> seed;  // reproducible per request when set
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  int32_t top_logprobs = -1;  // -1: no logprobs; 0..20: the chosen token's plus this many
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
};

struct GenerationRequest {
  std::string request_id;  // unique while the request lives
  std::string model;
  std::vector<int32_t> prompt_ids;
  int64_t max_tokens = 16;
  SamplingOptions sampling;
  // When set, the request ends with finish reason "timeout" at this time.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct GeneratedToken {
  int32_t token = 0;
  float logprob = 0.0f;                    // when logprobs were asked for
  std::vector<TokenLogprob> top_logprobs;  // most likely first
};

enum class FinishReason {
  kNone,       // not finished
  kStop,       // end-of-sequence token or stop token id (stop strings are the gateway's)
  kLength,     // max_tokens or the model's context
  kCancelled,  // the client went away or the gateway stopped it (stop string matched)
  kTimeout,    // the request's deadline passed
  kError,      // see GenerationEvent::error
};
const char* finish_reason_name(FinishReason reason);  // "stop", "length", …

struct GenerationEvent {
  std::vector<GeneratedToken> tokens;  // new tokens since the previous event (may be empty)
  FinishReason finish = FinishReason::kNone;
  Status error;  // set when finish == kError
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;  // so far
  bool first_token = false;       // this event carries the request's first token
};

// Receives a request's events, in order, from the scheduler thread. Must not block: hand the
// event to the connection's own executor (e.g. post to its strand) and return.
class GenerationSink {
 public:
  virtual ~GenerationSink() = default;
  virtual void on_event(GenerationEvent event) = 0;
};

enum class ServiceState { kLoading, kReady, kDraining, kStopped };

struct ServiceStatus {
  ServiceState state = ServiceState::kLoading;
  double load_progress = 0.0;    // 0..1 while loading (rank 0's weight bytes)
  int64_t load_bytes_done = 0;   // rank 0's weight bytes read so far
  int64_t load_bytes_total = 0;  // … of its shard (0: not known yet)
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;
  double kv_fragmentation = 0.0;  // unused token slots in used blocks / slots of used blocks
  int64_t max_context = 0;        // prompt + completion tokens a request may use
  int64_t vocab_size = 0;
  // Memory pressure (Scheduler, "memory pressure"): tokens per replica step now and unlowered,
  // and the steps that did not get their workspace since start.
  int64_t step_token_cap = 0;
  int64_t step_token_limit = 0;
  int64_t memory_failures = 0;
  // Per data-parallel replica, in replica order (/debug/memory).
  int64_t kv_block_size = 0;
  std::vector<int64_t> replica_kv_blocks_used;
  std::vector<int64_t> replica_kv_blocks_total;
};

class InferenceService {
 public:
  virtual ~InferenceService() = default;
  // Queues a request. RESOURCE_EXHAUSTED when the queue is full (HTTP 429), UNAVAILABLE while
  // loading or draining (503), INVALID_ARGUMENT when it can never run (400: prompt too long, …).
  // On success the sink receives events until one with finish != kNone.
  virtual Status submit(GenerationRequest request, std::shared_ptr<GenerationSink> sink) = 0;
  // Ends a request early (client disconnected, stop string seen); its KV blocks are freed and its
  // sink receives a final event with kCancelled. Unknown ids are ignored.
  virtual void cancel(const std::string& request_id) = 0;
  virtual ServiceStatus status() const = 0;
};

}  // namespace dshpc
