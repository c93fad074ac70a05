#include "worker/cluster.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

#include "common/check.h"
#include "common/log.h"
#include "parallel/mpi_collectives.h"
#include "parallel/mpi_runtime.h"
#include "parallel/tags.h"

namespace dshpc {
namespace {

// Rows of logits a sequence asks for.
int64_t logits_rows(const SequenceStep& s) {
  return s.all_logits ? static_cast<int64_t>(s.tokens.size()) : 1;
}

// The headline of a worker's fatal message when rank 0's promised control message is late.
constexpr const char* kCoordinatorUnresponsive =
    "rank 0 (the coordinator) is unresponsive: its next control message (step, keepalive or "
    "stop) is overdue, so it is hung, stopped or dead; aborting the job. Waiting for:";
constexpr const char* kControlTimeoutSetting =
    "rank 0 promised its next message within this: DSHPC_CONTROL_TIMEOUT_S when idle, plus "
    "DSHPC_COLLECTIVE_TIMEOUT_S after a step; DSHPC_STARTUP_TIMEOUT_S while loading";

// True when every sequence that samples is greedy with no logprobs and no penalties.
bool greedy_only(const StepPlan& plan) {
  for (const SequenceStep& s : plan.sequences) {
    if (!s.sample) continue;
    if (s.sampling.temperature > 0.0f || s.top_logprobs >= 0 || s.presence_penalty != 0.0f ||
        s.frequency_penalty != 0.0f || s.repetition_penalty != 1.0f) {
      return false;
    }
  }
  return true;
}

// True when every sequence that samples can be sampled on the device: no logprobs and no
// penalties (greedy rows and seeded temperature / top-k / top-p alike).
bool device_sampling_only(const StepPlan& plan) {
  for (const SequenceStep& s : plan.sequences) {
    if (!s.sample) continue;
    if (s.top_logprobs >= 0 || s.presence_penalty != 0.0f || s.frequency_penalty != 0.0f ||
        s.repetition_penalty != 1.0f) {
      return false;
    }
  }
  return true;
}

}  // namespace

StatusOr<CoordinatorLiveness> coordinator_liveness_from_env(double collective_timeout_s) {
  CoordinatorLiveness liveness;
  ASSIGN_OR_RETURN(liveness.keepalive_interval_s,
                   seconds_from_env("DSHPC_KEEPALIVE_INTERVAL_S", liveness.keepalive_interval_s));
  ASSIGN_OR_RETURN(liveness.control_timeout_s,
                   seconds_from_env("DSHPC_CONTROL_TIMEOUT_S", 5 * liveness.keepalive_interval_s));
  ASSIGN_OR_RETURN(liveness.startup_timeout_s,
                   seconds_from_env("DSHPC_STARTUP_TIMEOUT_S",
                                    std::max(collective_timeout_s, liveness.startup_timeout_s)));
  if (liveness.control_timeout_s < 2 * liveness.keepalive_interval_s) {
    return invalid_argument("DSHPC_CONTROL_TIMEOUT_S (" +
                            std::to_string(liveness.control_timeout_s) +
                            " s) must be at least twice DSHPC_KEEPALIVE_INTERVAL_S (" +
                            std::to_string(liveness.keepalive_interval_s) +
                            " s): one late keepalive must not bring the job down");
  }
  return liveness;
}

std::vector<StepPlan> split_micro_batches(const StepPlan& plan, int count) {
  const int n = static_cast<int>(plan.sequences.size());
  count = std::max(1, std::min(count, n));
  std::vector<StepPlan> out;
  if (n == 0) return out;
  const int64_t total = plan.num_tokens();
  int64_t done_tokens = 0;
  int next = 0;
  for (int m = 0; m < count; ++m) {
    StepPlan part;
    part.return_logits = plan.return_logits;
    if (m == 0) part.released_sequences = plan.released_sequences;
    // Take sequences until this part reaches its share of the tokens, leaving at least one
    // sequence for each remaining part.
    const int64_t target = total * (m + 1) / count;
    while (next < n && (n - next) > (count - m - 1) &&
           (part.sequences.empty() || done_tokens < target)) {
      done_tokens += static_cast<int64_t>(plan.sequences[next].tokens.size());
      part.sequences.push_back(plan.sequences[next++]);
    }
    out.push_back(std::move(part));
  }
  DSHPC_CHECK_EQ(next, n) << "micro-batch split lost sequences";
  return out;
}

Cluster::Cluster(ProcessGroups& groups, ModelRuntime& runtime, int micro_batches,
                 CoordinatorLiveness liveness)
    : groups_(groups),
      runtime_(runtime),
      micro_batches_(std::max(1, micro_batches)),
      liveness_(liveness),
      control_wait_s_(liveness.startup_timeout_s) {
  world_ = std::make_unique<MpiCollectives>(groups_.world.get(), "world", groups_.timeout_s);
  if (const char* tokens = std::getenv("DSHPC_FAULT_ALLOC_FAIL_TOKENS"); tokens && *tokens) {
    fault_alloc_fail_tokens_ = std::max<int64_t>(0, std::atoll(tokens));
    const char* rank = std::getenv("DSHPC_FAULT_ALLOC_FAIL_RANK");
    fault_alloc_fail_rank_ = rank && *rank ? std::atoi(rank) : -1;
    process_logger().warn(
        "fault injection: the workspace of steps over " + std::to_string(fault_alloc_fail_tokens_) +
            " tokens fails on " +
            (fault_alloc_fail_rank_ < 0 ? std::string("every rank")
                                        : "rank " + std::to_string(fault_alloc_fail_rank_)),
        {{"event.action", "fault.alloc_fail_configured"}});
  }
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) host_ = host;
  const int world = world_->size();

  // Start-up exchange: per rank (layer_begin, layer_end, weight bytes, kv bytes, kv blocks).
  // Loading may take long on big models, so this first collective waits with the control timeout.
  const Model& model = runtime_.model();
  const int64_t mine[5] = {model.shard().layer_begin, model.shard().layer_end, model.weight_bytes(),
                           runtime_.cache().bytes(), runtime_.cache().num_blocks()};
  std::vector<uint8_t> all(static_cast<size_t>(world) * sizeof(mine));
  all_gather_bytes(mine, all.data(), sizeof(mine), groups_.world.get(),
                   liveness_.startup_timeout_s, "world (start-up)");
  kv_blocks_ = INT64_MAX;
  for (int r = 0; r < world; ++r) {
    int64_t v[5];
    std::memcpy(v, all.data() + r * sizeof(mine), sizeof(mine));
    kv_blocks_ = std::min(kv_blocks_, v[4]);
    if (is_coordinator()) {
      RankReport report;
      report.rank = r;
      report.coords = groups_.layout.coords(r);
      report.layer_begin = v[0];
      report.layer_end = v[1];
      report.weight_bytes = v[2];
      report.kv_cache_bytes = v[3];
      report.kv_blocks = v[4];
      reports_.push_back(report);
    }
  }
}

Cluster::~Cluster() {
  if (is_coordinator()) stop();
}

void Cluster::broadcast(ControlMessage& message) {
  std::vector<uint8_t> bytes;
  if (is_coordinator()) {
    message.next_message_within_s = next_message_within_s(message.command);
    bytes = encode_control(message);
    broadcast_bytes(bytes, 0, groups_.world.get(), groups_.timeout_s, "world");
    return;
  }
  // Rank 0 promised this message within control_wait_s_ of the previous one.
  broadcast_bytes(bytes, 0, groups_.world.get(), control_wait_s_, "world", kCoordinatorUnresponsive,
                  kControlTimeoutSetting);
  message = decode_control(bytes);
  if (message.next_message_within_s > 0) control_wait_s_ = message.next_message_within_s;
}

double Cluster::next_message_within_s(ControlCommand command) const {
  switch (command) {
    case ControlCommand::kStop:
      return 0.0;
    case ControlCommand::kKeepalive:
      return liveness_.control_timeout_s;
    case ControlCommand::kStep:
      // Every wait of the step is bounded by the collective timeout; then an idle loop sends a
      // keepalive within its interval, and a loop without keepalives its next step.
      return keepalives_promised_ ? groups_.timeout_s + liveness_.control_timeout_s
                                  : 2 * groups_.timeout_s;
  }
  return 0.0;
}

void Cluster::promise_keepalives() {
  DSHPC_CHECK(is_coordinator()) << "rank 0 sends the keepalives";
  keepalives_promised_ = true;
}

void Cluster::stop() {
  if (stopped_ || !is_coordinator()) return;
  stopped_ = true;
  if (world_->size() == 1) return;
  ControlMessage message;
  message.command = ControlCommand::kStop;
  message.step_id = ++step_id_;
  broadcast(message);
  // Reports asked for before the stop are on their way: take them so that no send is left
  // unmatched at MPI_Finalize. Bounded: they were sent right after the previous message.
  poll_figures(/*wait_s=*/5.0);
  if (figures_expected_ > 0) {
    process_logger().warn("rank figures still missing at stop",
                          {{"dshpc.reports_missing", figures_expected_}});
  }
}

void Cluster::serve() {
  DSHPC_CHECK(!is_coordinator()) << "rank 0 drives the cluster; it does not serve";
  for (;;) {
    ControlMessage message;
    broadcast(message);
    if (message.command == ControlCommand::kStop) {
      finish_posted_figures();
      return;
    }
    // A step whose workspace the world did not get ran nowhere; rank 0 retries it smaller.
    if (message.command == ControlCommand::kStep) (void)execute(message);
    if (message.report_figures) post_figures();
  }
}

void Cluster::enable_rank_figures(std::chrono::milliseconds interval) {
  DSHPC_CHECK(is_coordinator()) << "rank 0 asks for rank figures";
  figures_interval_ = std::max(interval, std::chrono::milliseconds(1));
  next_figures_ = std::chrono::steady_clock::now();
}

bool Cluster::request_figures() {
  if (figures_interval_.count() == 0 || figures_expected_ > 0) return false;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_figures_) return false;
  next_figures_ = now + figures_interval_;
  figures_expected_ = world_->size() - 1;
  return true;
}

void Cluster::poll_figures(double wait_s) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(std::max(0.0, wait_s));
  MPI_Comm world = groups_.world.get();
  const int tag = tag_value(MessageTag::kRankFigures);
  while (figures_expected_ > 0) {
    int found = 0;
    MPI_Message handle;
    MPI_Status status;
    // Improbe + Mrecv: the probed message is the one received, and it has arrived, so the
    // receive completes at once (no wait, no timeout needed).
    DSHPC_MPI_CHECK(MPI_Improbe(MPI_ANY_SOURCE, tag, world, &found, &handle, &status));
    if (!found) {
      if (std::chrono::steady_clock::now() >= deadline) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    int bytes = 0;
    DSHPC_MPI_CHECK(MPI_Get_count(&status, MPI_BYTE, &bytes));
    std::vector<uint8_t> buffer(static_cast<size_t>(std::max(bytes, 0)));
    DSHPC_MPI_CHECK(MPI_Mrecv(buffer.data(), bytes, MPI_BYTE, &handle, MPI_STATUS_IGNORE));
    --figures_expected_;
    StatusOr<RankFigures> figures = decode_rank_figures(buffer.data(), buffer.size());
    if (!figures.ok()) {
      process_logger().warn("ignoring a malformed rank figures message",
                            {{"dshpc.source_rank", status.MPI_SOURCE},
                             {"error.message", figures.status().message()}});
      continue;
    }
    figures_.push_back(std::move(*figures));
  }
}

std::vector<RankFigures> Cluster::take_rank_figures() {
  DSHPC_CHECK(is_coordinator()) << "rank figures are collected on rank 0";
  poll_figures();
  // Reports are cumulative, so when nobody takes them only the newest per rank matter.
  const size_t cap = static_cast<size_t>(std::max(1, world_->size())) * 4;
  if (figures_.size() > cap) figures_.erase(figures_.begin(), figures_.end() - cap);
  return std::exchange(figures_, {});
}

void Cluster::post_figures() {
  finish_posted_figures();
  posted_figures_ = encode_rank_figures(local_figures());
  DSHPC_MPI_CHECK(MPI_Isend(posted_figures_.data(), static_cast<int>(posted_figures_.size()),
                            MPI_BYTE, 0, tag_value(MessageTag::kRankFigures), groups_.world.get(),
                            &posted_request_));
}

void Cluster::finish_posted_figures() {
  if (posted_request_ == MPI_REQUEST_NULL) return;
  // Rank 0 asks again only after it received this report, so this completes at once; at stop it
  // takes every report still on its way.
  wait_until(&posted_request_, MPI_STATUS_IGNORE, groups_.world.get(),
             std::chrono::steady_clock::now(), groups_.timeout_s,
             {.group = "world",
              .op = CollectiveOp::kSend,
              .bytes = posted_figures_.size(),
              .peer = 0,
              .tag = tag_value(MessageTag::kRankFigures)});
  posted_request_ = MPI_REQUEST_NULL;
}

RankFigures Cluster::local_figures() const {
  RankFigures figures;
  figures.rank = groups_.rank;
  for (const std::unique_ptr<Collectives>* group :
       {&groups_.tp_coll, &groups_.pp_coll, &groups_.dp_coll}) {
    if (*group) figures.collectives += (*group)->stats();
  }
  figures.collectives += world_->stats();  // tokens and logits to rank 0
  figures.phases = phases_;
  if (gpu_sampler_) figures.gpu = gpu_sampler_();
  figures.memory = memory_figures();
  return figures;
}

MemoryFigures Cluster::memory_figures() const {
  MemoryFigures m;
  m.present = true;
  m.dp = groups_.coords.dp;
  m.pp = groups_.coords.pp;
  m.tp = groups_.coords.tp;
  m.host = host_;
  Backend& backend = runtime_.backend();
  m.backend = backend.name();
  m.weight_bytes = runtime_.model().weight_bytes();
  m.kv_cache_bytes = runtime_.cache().bytes();
  m.kv_cache_blocks = runtime_.cache().num_blocks();
  m.workspace_bytes = runtime_.engine().workspace_bytes();
  m.workspace_high_water_bytes = runtime_.engine().workspace_high_water_bytes();
  m.workspace_failures = workspace_failures_;
  const BackendMemory device = backend.memory_info();
  m.device_total_bytes = device.device_total_bytes;
  m.device_free_bytes = device.device_free_bytes;
  m.pool_in_use_bytes = device.pool_in_use_bytes;
  m.pool_cached_bytes = device.pool_cached_bytes;
  m.process_rss_bytes = process_rss_bytes();
  host_memory_bytes(&m.host_total_bytes, &m.host_available_bytes);
  return m;
}

StepCapacity Cluster::step_capacity_of(const ControlMessage& message) const {
  std::vector<StepPlan> parts;  // every micro-batch of every replica
  for (const StepPlan& plan : message.replica_plans) {
    for (StepPlan& part : micro_batches(plan)) parts.push_back(std::move(part));
  }
  return step_capacity(parts);
}

int64_t Cluster::largest_plan_tokens(const ControlMessage& message) {
  int64_t tokens = 0;
  for (const StepPlan& plan : message.replica_plans) tokens = std::max(tokens, plan.num_tokens());
  return tokens;
}

Status Cluster::reserve_workspace(const ControlMessage& message) {
  const StepCapacity capacity = step_capacity_of(message);
  const int64_t plan_tokens = largest_plan_tokens(message);
  Status local;
  if (fault_alloc_fail_tokens_ >= 0 && plan_tokens > fault_alloc_fail_tokens_ &&
      (fault_alloc_fail_rank_ < 0 || fault_alloc_fail_rank_ == groups_.rank)) {
    local = resource_exhausted("fault injection (DSHPC_FAULT_ALLOC_FAIL_TOKENS=" +
                               std::to_string(fault_alloc_fail_tokens_) + "): a step of " +
                               std::to_string(plan_tokens) + " tokens");
  } else {
    local = runtime_.engine().reserve(capacity);
  }
  if (!local.ok()) {
    ++workspace_failures_;
    process_logger().warn("step workspace not reserved: " + local.message(),
                          {{"event.action", "engine.workspace_failed"},
                           {"dshpc.step_tokens", plan_tokens},
                           {"dshpc.step_sequences", capacity.sequences}});
  }
  // Each rank's vote at its own index, summed: afterwards every rank knows who failed.
  const int world = world_->size();
  std::vector<float> failed(static_cast<size_t>(world), 0.0f);
  failed[groups_.rank] = local.ok() ? 0.0f : 1.0f;
  if (world > 1) world_->all_reduce_sum(failed.data(), failed.size());
  std::string ranks;
  for (int r = 0; r < world; ++r) {
    if (failed[r] > 0.5f) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  }
  if (ranks.empty()) return ok_status();
  runtime_.engine().release_workspace();
  return resource_exhausted(
      "rank" + std::string(ranks.find(',') == std::string::npos ? " " : "s ") + ranks +
      " could not reserve the workspace of a step of " + std::to_string(plan_tokens) + " tokens (" +
      std::to_string(capacity.sequences) + " sequences per micro-batch at most)" +
      (local.ok() ? std::string() : ": " + local.message()));
}

std::vector<StepPlan> Cluster::micro_batches(const StepPlan& plan) const {
  // One micro-batch per stage keeps every stage busy; more only adds per-message overhead.
  return split_micro_batches(plan, groups_.layout.pp() > 1 ? micro_batches_ : 1);
}

int Cluster::last_stage_rank(int replica) const {
  return groups_.layout.rank_of({replica, groups_.layout.pp() - 1, 0});
}

StatusOr<std::vector<StepOutput>> Cluster::execute(const ControlMessage& message) {
  const int replica = groups_.coords.dp;
  DSHPC_CHECK_EQ(static_cast<int>(message.replica_plans.size()), groups_.layout.dp())
      << "control message plans";
  // Every rank votes, those of replicas with nothing to do included.
  if (message.reserve_workspace) RETURN_IF_ERROR(reserve_workspace(message));
  const StepPlan& plan = message.replica_plans[replica];
  if (plan.sequences.empty()) return std::vector<StepOutput>{};
  const auto started = std::chrono::steady_clock::now();
  double sampling_s = 0.0;  // inside `started` → now, but its own phase
  bool sampled = false;
  const auto record_phases = [&] {
    const double total =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    phases_[static_cast<int>(StepPhase::kForward)].observe(total - sampling_s);
    if (sampled) phases_[static_cast<int>(StepPhase::kSample)].observe(sampling_s);
  };
  Engine& engine = runtime_.engine();
  Collectives& pp = *groups_.pp_coll;
  const int64_t hidden_size = runtime_.config().hidden_size;
  const size_t element = dtype_size(runtime_.backend().activation_dtype());
  // The last stage holds its logits until every micro-batch has passed: rank 0 is the first stage
  // and the collector, so a last stage blocked on sending micro-batch m to rank 0 while rank 0 is
  // blocked sending it micro-batch m+1 would deadlock.
  std::vector<StepOutput> pending;
  for (const StepPlan& part : micro_batches(plan)) {
    StepTensors step = engine.prepare(part);
    Mat hidden = engine.hidden_buffer(step.num_tokens);
    const size_t bytes = static_cast<size_t>(step.num_tokens * hidden_size) * element;
    if (!groups_.is_first_stage()) {
      pp.recv(hidden.data, bytes, *groups_.prev_stage(),
              static_cast<int>(MessageTag::kActivations));
    }
    engine.run_stage(step, hidden);
    if (!groups_.is_last_stage()) {
      pp.send(hidden.data, bytes, *groups_.next_stage(),
              static_cast<int>(MessageTag::kActivations));
      continue;
    }
    if (!plan.return_logits && greedy_only(part)) {
      // Greedy decoding without logprobs or penalties: argmax where the logits are.
      std::vector<int32_t> ids = engine.compute_argmax(part, hidden);
      if (groups_.coords.tp != 0) continue;
      StepOutput out;
      out.samples.resize(ids.size());
      for (size_t i = 0; i < ids.size(); ++i) out.samples[i].token = ids[i];
      pending.push_back(std::move(out));
      continue;
    }
    if (!plan.return_logits && device_sampling_only(part)) {
      // Seeded sampling without logprobs or penalties: drawn where the logits are, the same
      // tokens as the host sampler (Backend::sample mirrors sample_token_cpu).
      std::vector<int32_t> ids = engine.compute_samples(part, hidden);
      if (groups_.coords.tp != 0) continue;
      sampler_.observe(part);  // forgets released sequences' penalty history
      StepOutput out;
      out.samples.resize(ids.size());
      for (size_t i = 0; i < ids.size(); ++i) out.samples[i].token = ids[i];
      pending.push_back(std::move(out));
      continue;
    }
    StepOutput out = engine.compute_logits(part, hidden);
    if (groups_.coords.tp != 0) continue;
    if (!plan.return_logits) {
      const auto sample_started = std::chrono::steady_clock::now();
      out.samples = sample(part, out);
      sampling_s +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - sample_started).count();
      sampled = true;
      out.logits.clear();
    }
    pending.push_back(std::move(out));
  }
  if (is_coordinator()) {
    record_phases();
    return pending;
  }
  for (const StepOutput& out : pending) {
    if (plan.return_logits) {
      world_->send(out.logits.data(), out.logits.size() * sizeof(float), 0,
                   static_cast<int>(MessageTag::kLogits));
    } else {
      const std::vector<uint8_t> bytes = encode_samples(out.samples);
      const uint64_t size = bytes.size();
      world_->send(&size, sizeof(size), 0, static_cast<int>(MessageTag::kTokens));
      world_->send(bytes.data(), bytes.size(), 0, static_cast<int>(MessageTag::kTokens));
    }
  }
  record_phases();
  return std::vector<StepOutput>{};
}

std::vector<SampledToken> Cluster::sample(const StepPlan& part, StepOutput& out) {
  sampler_.observe(part);
  std::vector<SampledToken> samples(part.sequences.size());
  for (size_t i = 0; i < part.sequences.size(); ++i) {
    const SequenceStep& seq = part.sequences[i];
    if (!seq.sample) continue;
    float* row = out.logits.data() + out.last_row(i) * out.vocab;
    samples[i] = sampler_.sample(seq, row, out.vocab, seq.sample_counter);
  }
  return samples;
}

void Cluster::keepalive() {
  if (!is_coordinator() || stopped_) return;
  const bool report = request_figures();
  if (world_->size() > 1) {
    ControlMessage message;
    message.command = ControlCommand::kKeepalive;
    message.step_id = ++step_id_;
    message.report_figures = report;
    message.replica_plans.resize(replicas());
    broadcast(message);
  }
  if (report) figures_.push_back(local_figures());
  // Idle: the answers to this request come within milliseconds; a short bounded wait takes them
  // now instead of one keepalive interval later (a request arriving meanwhile waits this long at
  // most). What has not arrived is taken at the next contact.
  poll_figures(report ? 0.005 : 0.0);
}

std::vector<StepOutput> Cluster::step(const std::vector<StepPlan>& plans) {
  StatusOr<std::vector<StepOutput>> outputs = try_step(plans);
  DSHPC_CHECK(outputs.ok()) << outputs.status().message();
  return std::move(*outputs);
}

StatusOr<std::vector<StepOutput>> Cluster::try_step(const std::vector<StepPlan>& plans) {
  DSHPC_CHECK(is_coordinator()) << "only rank 0 drives steps";
  DSHPC_CHECK(!stopped_) << "step after stop";
  DSHPC_CHECK_EQ(static_cast<int>(plans.size()), replicas()) << "one plan per replica";
  ControlMessage message;
  message.command = ControlCommand::kStep;
  message.step_id = ++step_id_;
  message.report_figures = request_figures();
  message.replica_plans = plans;
  // Reserve (and vote) only for a step larger than what every rank holds, or one the fault
  // injection may fail.
  const StepCapacity capacity = step_capacity_of(message);
  const bool covered = capacity.tokens <= reserved_capacity_.tokens &&
                       capacity.sequences <= reserved_capacity_.sequences &&
                       capacity.logits_rows <= reserved_capacity_.logits_rows;
  message.reserve_workspace = !covered || (fault_alloc_fail_tokens_ >= 0 &&
                                           largest_plan_tokens(message) > fault_alloc_fail_tokens_);
  if (world_->size() > 1) broadcast(message);
  StatusOr<std::vector<StepOutput>> executed = execute(message);
  if (!executed.ok()) {
    reserved_capacity_ = StepCapacity{};  // every rank gave its workspace back
    if (message.report_figures) figures_.push_back(local_figures());
    poll_figures();
    return executed.status();
  }
  if (message.reserve_workspace) {
    reserved_capacity_.tokens = std::max(reserved_capacity_.tokens, capacity.tokens);
    reserved_capacity_.sequences = std::max(reserved_capacity_.sequences, capacity.sequences);
    reserved_capacity_.logits_rows = std::max(reserved_capacity_.logits_rows, capacity.logits_rows);
  }
  std::vector<StepOutput> mine = std::move(*executed);

  const int64_t vocab = runtime_.config().vocab_size;
  std::vector<StepOutput> outputs(plans.size());
  for (size_t r = 0; r < plans.size(); ++r) {
    StepOutput& out = outputs[r];
    out.vocab = vocab;
    const int source = last_stage_rank(static_cast<int>(r));
    size_t mine_index = 0;
    for (const StepPlan& part : micro_batches(plans[r])) {
      StepOutput piece;
      if (source == 0) {
        piece = std::move(mine[mine_index++]);
      } else if (plans[r].return_logits) {
        int64_t rows = 0;
        for (const SequenceStep& s : part.sequences) rows += logits_rows(s);
        piece.logits.resize(static_cast<size_t>(rows * vocab));
        world_->recv(piece.logits.data(), piece.logits.size() * sizeof(float), source,
                     static_cast<int>(MessageTag::kLogits));
      } else {
        uint64_t size = 0;
        world_->recv(&size, sizeof(size), source, static_cast<int>(MessageTag::kTokens));
        std::vector<uint8_t> bytes(size);
        world_->recv(bytes.data(), bytes.size(), source, static_cast<int>(MessageTag::kTokens));
        piece.samples = decode_samples(bytes);
        DSHPC_CHECK_EQ(piece.samples.size(), part.sequences.size()) << "samples per micro-batch";
      }
      out.samples.insert(out.samples.end(), piece.samples.begin(), piece.samples.end());
      const int64_t base = static_cast<int64_t>(out.logits.size()) / vocab;
      int64_t row = base;
      for (const SequenceStep& s : part.sequences) {
        out.first_row.push_back(row);
        out.num_rows.push_back(logits_rows(s));
        row += logits_rows(s);
      }
      out.logits.insert(out.logits.end(), piece.logits.begin(), piece.logits.end());
    }
  }
  if (message.report_figures) figures_.push_back(local_figures());
  poll_figures();
  return outputs;
}

}  // namespace dshpc
