#include "coordinator/scheduler.h"

#include <algorithm>

#include "common/check.h"

namespace dshpc {
namespace {

std::string num(int64_t v) {
  return std::to_string(v);
}

bool contains(const std::vector<int64_t>& ids, int32_t token) {
  return std::find(ids.begin(), ids.end(), static_cast<int64_t>(token)) != ids.end();
}

bool contains(const std::vector<int32_t>& ids, int32_t token) {
  return std::find(ids.begin(), ids.end(), token) != ids.end();
}

void remove_sorted(std::vector<int64_t>& ids, int64_t id) {
  auto it = std::lower_bound(ids.begin(), ids.end(), id);
  DSHPC_CHECK(it != ids.end() && *it == id) << "sequence " << id << " is not running";
  ids.erase(it);
}

bool is_running(const std::vector<int64_t>& running, int64_t id) {
  return std::binary_search(running.begin(), running.end(), id);
}

void keep_earliest(std::optional<TimePoint>& wake, TimePoint t) {
  if (!wake || t < *wake) wake = t;
}

}  // namespace

uint64_t derive_seed(const std::string& request_id) {
  uint64_t hash = 14695981039346656037ull;  // FNV-1a, 64 bit
  for (unsigned char c : request_id) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

Scheduler::Scheduler(const SchedulerConfig& config, int num_replicas,
                     std::vector<int64_t> eos_token_ids)
    : config_(config), eos_token_ids_(std::move(eos_token_ids)) {
  const Status valid = validate_scheduler_config(config_);
  DSHPC_CHECK(valid.ok()) << "scheduler config: " << valid.message();
  DSHPC_CHECK(num_replicas >= 1) << "num_replicas " << num_replicas;
  for (int r = 0; r < num_replicas; ++r) replicas_.emplace_back(config_);
  token_cap_ = config_.max_num_batched_tokens;
}

// ---- submit and cancel -------------------------------------------------------------------

Status Scheduler::check_fits(const GenerationRequest& request) const {
  const int64_t prompt = static_cast<int64_t>(request.prompt_ids.size());
  const int64_t max_tokens = request.max_tokens;
  if (request.request_id.empty()) return invalid_argument("request_id is empty");
  if (by_request_.count(request.request_id)) {
    return invalid_argument("request id '" + request.request_id + "' is already in use");
  }
  if (prompt == 0) return invalid_argument("the prompt is empty");
  if (max_tokens < 1) {
    return invalid_argument("max_tokens (" + num(max_tokens) + ") must be at least 1");
  }
  if (prompt + max_tokens > config_.max_model_len) {
    return invalid_argument("the prompt (" + num(prompt) + " tokens) plus max_tokens (" +
                            num(max_tokens) + ") is " + num(prompt + max_tokens) +
                            " tokens, more than the model's context of " +
                            num(config_.max_model_len) + " tokens");
  }
  // The cache holds every token but the last one sampled, which is never fed back.
  const int64_t slots = prompt + max_tokens - 1;
  const int64_t blocks = (slots + config_.kv_block_size - 1) / config_.kv_block_size;
  if (blocks > config_.kv_blocks) {
    return invalid_argument("the prompt (" + num(prompt) + " tokens) plus max_tokens (" +
                            num(max_tokens) + ") needs " + num(blocks) + " KV cache blocks of " +
                            num(config_.kv_block_size) + " tokens; a replica's cache holds " +
                            num(config_.kv_blocks) + " blocks");
  }
  return ok_status();
}

int Scheduler::choose_replica() const {
  int best = 0;
  for (int r = 1; r < num_replicas(); ++r) {
    if (replicas_[r].load < replicas_[best].load) best = r;
  }
  return best;
}

Status Scheduler::submit(GenerationRequest request) {
  RETURN_IF_ERROR(check_fits(request));
  if (waiting_count_ >= config_.max_queue_len) {
    return resource_exhausted("the queue is full: " + num(waiting_count_) +
                              " requests are waiting (max_queue_len " + num(config_.max_queue_len) +
                              ")");
  }
  Sequence seq;
  seq.id = next_sequence_id_++;
  seq.replica = choose_replica();
  seq.request_id = std::move(request.request_id);
  seq.tokens = std::move(request.prompt_ids);
  seq.prompt_len = static_cast<int64_t>(seq.tokens.size());
  seq.max_tokens = request.max_tokens;
  seq.sampling = std::move(request.sampling);
  seq.seed = seq.sampling.seed.value_or(derive_seed(seq.request_id));
  seq.arrival = request.arrival;
  seq.deadline = request.deadline;

  Replica& rep = replicas_[seq.replica];
  rep.waiting.push_back(seq.id);
  rep.load += seq.load();
  ++waiting_count_;
  by_request_[seq.request_id] = seq.id;
  sequences_.emplace(seq.id, std::move(seq));
  return ok_status();
}

std::optional<RequestEvent> Scheduler::cancel(const std::string& request_id) {
  auto it = by_request_.find(request_id);
  if (it == by_request_.end()) return std::nullopt;
  return finish(sequences_.at(it->second), FinishReason::kCancelled, GenerationEvent{});
}

RequestEvent Scheduler::finish(Sequence& seq, FinishReason reason, GenerationEvent event) {
  Replica& rep = replicas_[seq.replica];
  if (rep.blocks.has_sequence(seq.id)) rep.blocks.free(seq.id);
  if (is_running(rep.running, seq.id)) {
    remove_sorted(rep.running, seq.id);
  } else {
    auto w = std::find(rep.waiting.begin(), rep.waiting.end(), seq.id);
    DSHPC_CHECK(w != rep.waiting.end()) << "sequence " << seq.id << " neither waits nor runs";
    rep.waiting.erase(w);
    --waiting_count_;
  }
  if (seq.workers_know) rep.released.push_back(seq.id);
  rep.load -= seq.load();

  event.finish = reason;
  event.prompt_tokens = seq.prompt_len;
  event.completion_tokens = seq.num_output();
  RequestEvent out{seq.request_id, std::move(event)};
  by_request_.erase(seq.request_id);
  sequences_.erase(seq.id);  // `seq` dangles from here
  return out;
}

// ---- schedule ------------------------------------------------------------------------------

void Scheduler::expire_deadlines(TimePoint now, std::vector<RequestEvent>& events) {
  std::vector<int64_t> expired;
  for (const auto& [id, seq] : sequences_) {
    if (seq.in_flight_step < 0 && seq.deadline && now >= *seq.deadline) expired.push_back(id);
  }
  std::sort(expired.begin(), expired.end());
  for (int64_t id : expired) {
    events.push_back(finish(sequences_.at(id), FinishReason::kTimeout, GenerationEvent{}));
  }
}

ScheduledStep Scheduler::schedule(TimePoint now) {
  ScheduledStep out;
  expire_deadlines(now, out.events);

  std::vector<PlanBuilder> builders(replicas_.size());
  bool any = false;
  for (int r = 0; r < num_replicas(); ++r) {
    builders[r].tokens_left = std::min(config_.max_num_batched_tokens, token_cap_);
    schedule_replica(r, now, builders[r], out.preempted);
    any = any || !builders[r].plan.sequences.empty();
  }

  out.plans.resize(replicas_.size());
  if (any) {
    out.step_id = next_step_id_++;
    InFlightStep record;
    record.record.resize(replicas_.size());
    record.released.resize(replicas_.size());
    for (int r = 0; r < num_replicas(); ++r) {
      out.plans[r] = std::move(builders[r].plan);
      out.plans[r].released_sequences = std::move(replicas_[r].released);
      replicas_[r].released.clear();
      record.released[r] = out.plans[r].released_sequences;
      record.record[r] = std::move(builders[r].entries);
      out.queue_seconds.insert(out.queue_seconds.end(), builders[r].queue_seconds.begin(),
                               builders[r].queue_seconds.end());
    }
    in_flight_.emplace(out.step_id, std::move(record));
  }
  out.wake_at = next_wake(builders);
  return out;
}

void Scheduler::schedule_replica(int r, TimePoint now, PlanBuilder& b,
                                 std::vector<std::string>& preempted) {
  schedule_running(r, /*decodes=*/true, b, preempted);
  schedule_running(r, /*decodes=*/false, b, preempted);
  // A step that had to preempt is short of blocks: letting new requests in would only make
  // them the next victims.
  if (!b.preempted) admit_waiting(r, now, b);
}

bool Scheduler::is_victim(const Sequence& candidate, const Sequence& needy) const {
  // Younger than the sequence that needs the block, and neither in flight nor in this step
  // (both have in_flight_step set).
  return candidate.id > needy.id && candidate.in_flight_step < 0;
}

void Scheduler::schedule_running(int r, bool decodes, PlanBuilder& b,
                                 std::vector<std::string>& preempted) {
  Replica& rep = replicas_[r];
  const std::vector<int64_t> order = rep.running;  // preemption edits rep.running
  for (int64_t id : order) {
    if (!is_running(rep.running, id)) continue;  // preempted earlier in this loop
    Sequence& seq = sequences_.at(id);
    if (seq.in_flight_step >= 0 || seq.is_decode() != decodes) continue;
    // Decodes always fit max_num_batched_tokens (validated ≥ max_batch_size), but not a token
    // cap lowered under memory pressure.
    int64_t n = std::min(decodes ? int64_t{1} : seq.uncomputed(), b.tokens_left);
    if (n <= 0) continue;  // the token budget is spent

    while (!rep.blocks.can_append(id, n)) {
      Sequence* victim = nullptr;
      for (auto v = rep.running.rbegin(); v != rep.running.rend() && !victim; ++v) {
        Sequence& candidate = sequences_.at(*v);
        if (is_victim(candidate, seq)) victim = &candidate;
      }
      if (!victim) break;
      preempted.push_back(victim->request_id);
      preempt(*victim);
      b.preempted = true;
    }
    if (!rep.blocks.can_append(id, n)) {
      if (decodes) continue;  // sits out this step; an older sequence may preempt it later
      n = std::min(n, rep.blocks.appendable_slots(id));
      if (n == 0) continue;
    }
    add_to_plan(seq, n, b);
  }
}

int64_t Scheduler::admission_limit(const Replica& rep, TimePoint now, PlanBuilder& b) const {
  const int64_t all = config_.max_batch_size;
  if (config_.max_queue_delay_us == 0) return all;
  const auto delay = std::chrono::microseconds(config_.max_queue_delay_us);
  const TimePoint oldest = sequences_.at(rep.waiting.front()).arrival;
  if (now - oldest >= delay) return all;
  // Start with the largest preferred size (max_batch_size counts as one) the queue reaches.
  const int64_t count = static_cast<int64_t>(rep.waiting.size());
  if (count >= all) return all;
  int64_t limit = 0;
  for (int64_t size : config_.preferred_batch_sizes) {
    if (size <= count) limit = size;
  }
  if (limit == 0) b.gate_opens = oldest + delay;
  return limit;
}

void Scheduler::admit_waiting(int r, TimePoint now, PlanBuilder& b) {
  Replica& rep = replicas_[r];
  if (rep.waiting.empty()) return;
  const int64_t limit = rep.running.empty() ? admission_limit(rep, now, b) : config_.max_batch_size;
  int64_t admitted = 0;
  while (!rep.waiting.empty() && admitted < limit &&
         static_cast<int64_t>(rep.running.size()) < config_.max_batch_size && b.tokens_left > 0) {
    Sequence& seq = sequences_.at(rep.waiting.front());
    const int64_t n = std::min(seq.uncomputed(), b.tokens_left);
    // First come, first served: a request that does not fit holds back the ones behind it.
    if (!rep.blocks.can_append(seq.id, n)) break;
    rep.waiting.pop_front();
    --waiting_count_;
    rep.running.insert(std::upper_bound(rep.running.begin(), rep.running.end(), seq.id), seq.id);
    add_to_plan(seq, n, b);
    if (!seq.started) {
      seq.started = true;
      b.queue_seconds.push_back(
          std::max(0.0, std::chrono::duration<double>(now - seq.arrival).count()));
    }
    ++admitted;
  }
}

void Scheduler::add_to_plan(Sequence& seq, int64_t num_tokens, PlanBuilder& b) {
  Replica& rep = replicas_[seq.replica];
  const int64_t start = seq.num_computed;
  DSHPC_CHECK(num_tokens >= 1 && num_tokens <= seq.uncomputed())
      << "sequence " << seq.id << " given " << num_tokens << " of " << seq.uncomputed();
  DSHPC_CHECK_LE(start + num_tokens, config_.max_model_len) << "sequence " << seq.id;
  DSHPC_CHECK_LE(num_tokens, b.tokens_left) << "sequence " << seq.id << " overruns the budget";
  rep.blocks.append_slots(seq.id, num_tokens);

  SequenceStep s;
  s.sequence_id = seq.id;
  s.tokens.assign(seq.tokens.begin() + start, seq.tokens.begin() + start + num_tokens);
  s.start_position = static_cast<int32_t>(start);
  s.block_table = rep.blocks.block_table(seq.id);
  s.all_logits = false;
  s.sample = start + num_tokens == static_cast<int64_t>(seq.tokens.size());
  s.sampling.temperature = seq.sampling.temperature;
  s.sampling.top_k = seq.sampling.top_k;
  s.sampling.top_p = seq.sampling.top_p;
  s.sampling.seed = seq.seed;
  s.presence_penalty = seq.sampling.presence_penalty;
  s.frequency_penalty = seq.sampling.frequency_penalty;
  s.repetition_penalty = seq.sampling.repetition_penalty;
  s.top_logprobs = seq.sampling.top_logprobs;
  s.prompt_len = static_cast<int32_t>(seq.prompt_len);
  s.sample_counter = static_cast<uint64_t>(seq.num_output());

  b.entries.push_back({seq.id, num_tokens, s.sample});
  b.plan.sequences.push_back(std::move(s));
  b.tokens_left -= num_tokens;
  seq.in_flight_step = next_step_id_;  // the id schedule() gives this step
  seq.workers_know = true;
}

void Scheduler::preempt(Sequence& seq) {
  Replica& rep = replicas_[seq.replica];
  DSHPC_CHECK(seq.in_flight_step < 0) << "preempting sequence " << seq.id << " in flight";
  rep.blocks.free(seq.id);
  seq.num_computed = 0;  // prompt and output are recomputed as one prompt
  remove_sorted(rep.running, seq.id);
  rep.waiting.push_front(seq.id);
  ++waiting_count_;
  if (seq.workers_know) rep.released.push_back(seq.id);
  seq.workers_know = false;
  ++preemptions_;
}

std::optional<TimePoint> Scheduler::next_wake(const std::vector<PlanBuilder>& builders) const {
  std::optional<TimePoint> wake;
  for (const PlanBuilder& b : builders) {
    if (b.gate_opens) keep_earliest(wake, *b.gate_opens);
  }
  for (const auto& [id, seq] : sequences_) {
    if (seq.in_flight_step < 0 && seq.deadline) keep_earliest(wake, *seq.deadline);
  }
  return wake;
}

// ---- results -------------------------------------------------------------------------------

FinishReason Scheduler::stop_reason(const Sequence& seq, int32_t token, TimePoint now) const {
  if (!seq.sampling.ignore_eos && contains(eos_token_ids_, token)) return FinishReason::kStop;
  if (contains(seq.sampling.stop_token_ids, token)) return FinishReason::kStop;
  if (seq.num_output() >= seq.max_tokens) return FinishReason::kLength;
  if (static_cast<int64_t>(seq.tokens.size()) >= config_.max_model_len) {
    return FinishReason::kLength;
  }
  if (seq.deadline && now >= *seq.deadline) return FinishReason::kTimeout;
  return FinishReason::kNone;
}

std::vector<RequestEvent> Scheduler::on_step_result(
    int64_t step_id, const std::vector<std::vector<SampledToken>>& samples, TimePoint now) {
  std::vector<const std::vector<SampledToken>*> per_replica;
  for (const auto& s : samples) per_replica.push_back(&s);
  return apply_results(step_id, per_replica, now);
}

std::vector<RequestEvent> Scheduler::on_step_result(int64_t step_id,
                                                    const std::vector<StepOutput>& outputs,
                                                    TimePoint now) {
  std::vector<const std::vector<SampledToken>*> per_replica;
  for (const StepOutput& o : outputs) per_replica.push_back(&o.samples);
  return apply_results(step_id, per_replica, now);
}

std::vector<RequestEvent> Scheduler::apply_results(
    int64_t step_id, const std::vector<const std::vector<SampledToken>*>& samples, TimePoint now) {
  auto it = in_flight_.find(step_id);
  DSHPC_CHECK(it != in_flight_.end()) << "result of step " << step_id << ", which is not in flight";
  const StepRecord record = std::move(it->second.record);
  in_flight_.erase(it);
  if (token_cap_ < config_.max_num_batched_tokens &&
      ++successes_since_cap_change_ >= kCapRaiseAfterSteps) {
    token_cap_ =
        std::min(config_.max_num_batched_tokens, token_cap_ + std::max<int64_t>(1, token_cap_ / 4));
    successes_since_cap_change_ = 0;
  }
  DSHPC_CHECK_EQ(samples.size(), record.size()) << "replicas in the result of step " << step_id;

  std::vector<RequestEvent> events;
  for (size_t r = 0; r < record.size(); ++r) {
    DSHPC_CHECK_EQ(samples[r]->size(), record[r].size())
        << "samples of replica " << r << " in step " << step_id;
    for (size_t i = 0; i < record[r].size(); ++i) {
      const StepEntry& entry = record[r][i];
      auto seq_it = sequences_.find(entry.sequence_id);
      if (seq_it == sequences_.end()) continue;  // cancelled while in flight
      Sequence& seq = seq_it->second;
      DSHPC_CHECK_EQ(seq.in_flight_step, step_id) << "sequence " << seq.id;
      seq.in_flight_step = -1;
      seq.num_computed += entry.num_tokens;
      DSHPC_CHECK_EQ(seq.num_computed, replicas_[r].blocks.num_slots(seq.id))
          << "KV slots of sequence " << seq.id;
      if (!entry.sample) continue;

      const SampledToken& sampled = (*samples[r])[i];
      seq.tokens.push_back(sampled.token);
      GenerationEvent event;
      GeneratedToken token{sampled.token, sampled.logprob, {}};
      for (const auto& [id, logprob] : sampled.top) token.top_logprobs.push_back({id, logprob});
      event.tokens.push_back(std::move(token));
      event.first_token = seq.num_output() == 1;
      const FinishReason reason = stop_reason(seq, sampled.token, now);
      if (reason != FinishReason::kNone) {
        events.push_back(finish(seq, reason, std::move(event)));
      } else {
        event.prompt_tokens = seq.prompt_len;
        event.completion_tokens = seq.num_output();
        events.push_back({seq.request_id, std::move(event)});
      }
    }
  }
  return events;
}

void Scheduler::abort_step(int64_t step_id) {
  auto it = in_flight_.find(step_id);
  DSHPC_CHECK(it != in_flight_.end()) << "abort of step " << step_id << ", which is not in flight";
  const StepRecord& record = it->second.record;
  for (size_t r = 0; r < record.size(); ++r) {
    // The workers never saw this plan's releases: the next plan carries them, before its own.
    std::vector<int64_t>& released = replicas_[r].released;
    released.insert(released.begin(), it->second.released[r].begin(), it->second.released[r].end());
    for (const StepEntry& entry : record[r]) {
      auto seq_it = sequences_.find(entry.sequence_id);
      if (seq_it == sequences_.end()) continue;
      Sequence& seq = seq_it->second;
      DSHPC_CHECK_EQ(seq.in_flight_step, step_id) << "sequence " << seq.id;
      seq.in_flight_step = -1;
      replicas_[r].blocks.truncate(seq.id, seq.num_computed);
    }
  }
  in_flight_.erase(it);
}

MemoryPressure Scheduler::on_step_out_of_memory(int64_t step_id, const Status& error) {
  auto it = in_flight_.find(step_id);
  DSHPC_CHECK(it != in_flight_.end()) << "step " << step_id << " out of memory but not in flight";
  MemoryPressure out;
  std::vector<int64_t> sequences;
  for (const std::vector<StepEntry>& entries : it->second.record) {
    int64_t tokens = 0;
    for (const StepEntry& entry : entries) {
      tokens += entry.num_tokens;
      sequences.push_back(entry.sequence_id);
    }
    out.failed_tokens = std::max(out.failed_tokens, tokens);
  }
  abort_step(step_id);
  ++memory_failures_;
  successes_since_cap_change_ = 0;
  if (out.failed_tokens > 1) {
    token_cap_ = std::min(token_cap_, std::max<int64_t>(1, out.failed_tokens / 2));
  } else {
    // One token of one sequence per replica is the smallest step there is.
    token_cap_ = 1;
    std::sort(sequences.begin(), sequences.end());
    for (int64_t id : sequences) {
      auto seq = sequences_.find(id);
      if (seq == sequences_.end()) continue;  // cancelled meanwhile
      GenerationEvent event;
      event.error = invalid_argument(
          "the request does not fit in device memory: even a step of one token of it alone "
          "could not get its workspace (" +
          error.message() + ")");
      out.events.push_back(finish(seq->second, FinishReason::kError, std::move(event)));
    }
  }
  out.token_cap = token_cap_;
  return out;
}

std::vector<RequestEvent> Scheduler::abort_all(const Status& error) {
  std::vector<int64_t> ids;
  for (const auto& [id, seq] : sequences_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  std::vector<RequestEvent> events;
  for (int64_t id : ids) {
    GenerationEvent event;
    event.error = error;
    events.push_back(finish(sequences_.at(id), FinishReason::kError, std::move(event)));
  }
  in_flight_.clear();
  return events;
}

// ---- introspection -------------------------------------------------------------------------

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  for (const Replica& rep : replicas_) {
    ReplicaStats rs;
    rs.running = static_cast<int64_t>(rep.running.size());
    rs.waiting = static_cast<int64_t>(rep.waiting.size());
    rs.load = rep.load;
    rs.kv_blocks_used = rep.blocks.num_used_blocks();
    rs.kv_blocks_total = rep.blocks.num_blocks();
    rs.kv_usage = rep.blocks.usage();
    rs.kv_fragmentation = rep.blocks.fragmentation();
    s.running += rs.running;
    s.waiting += rs.waiting;
    s.kv_blocks_used += rs.kv_blocks_used;
    s.kv_blocks_total += rs.kv_blocks_total;
    s.replicas.push_back(rs);
  }
  s.steps_in_flight = static_cast<int64_t>(in_flight_.size());
  s.preemptions = preemptions_;
  s.step_token_cap = token_cap_;
  s.memory_failures = memory_failures_;
  return s;
}

bool Scheduler::idle() const {
  return sequences_.empty() && in_flight_.empty();
}

int Scheduler::replica_of(const std::string& request_id) const {
  auto it = by_request_.find(request_id);
  return it == by_request_.end() ? -1 : sequences_.at(it->second).replica;
}

int64_t Scheduler::sequence_id_of(const std::string& request_id) const {
  auto it = by_request_.find(request_id);
  return it == by_request_.end() ? -1 : it->second;
}

}  // namespace dshpc
