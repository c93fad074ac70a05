#include "worker/engine.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "common/check.h"

namespace dshpc {

int64_t StepPlan::num_tokens() const {
  int64_t n = 0;
  for (const SequenceStep& s : sequences) n += static_cast<int64_t>(s.tokens.size());
  return n;
}

Engine::Engine(Model& model, Backend& backend, KvCache& cache)
    : model_(model), backend_(backend), cache_(cache) {
  const char* graphs = std::getenv("DSHPC_CUDA_GRAPHS");
  graphs_enabled_ = graphs == nullptr || std::string(graphs) != "0";
}

void Engine::check_plan(const StepPlan& plan) const {
  const int64_t block_size = cache_.spec().block_size;
  const int64_t max_positions = model_.config().max_position_embeddings;
  for (const SequenceStep& s : plan.sequences) {
    const int64_t end = s.start_position + static_cast<int64_t>(s.tokens.size());
    DSHPC_CHECK(!s.tokens.empty()) << "sequence " << s.sequence_id << " has no tokens in the step";
    DSHPC_CHECK(s.start_position >= 0 && end <= max_positions)
        << "sequence " << s.sequence_id << " reaches position " << end << " beyond "
        << max_positions;
    DSHPC_CHECK(static_cast<int64_t>(s.block_table.size()) * block_size >= end)
        << "sequence " << s.sequence_id << " has " << s.block_table.size() << " blocks for " << end
        << " tokens";
    for (int32_t block : s.block_table) {
      DSHPC_CHECK(block >= 0 && block < cache_.num_blocks())
          << "sequence " << s.sequence_id << " names block " << block;
    }
  }
}

StepTensors Engine::prepare(const StepPlan& plan) {
  check_plan(plan);
  const int64_t block_size = cache_.spec().block_size;
  const int64_t vocab = model_.config().vocab_size;
  token_ids_.clear();
  positions_.clear();
  slots_.clear();
  sequences_.clear();
  block_tables_.clear();
  block_table_lengths_.clear();
  for (const SequenceStep& s : plan.sequences) {
    PagedSequence seq;
    seq.query_begin = static_cast<int32_t>(token_ids_.size());
    seq.query_len = static_cast<int32_t>(s.tokens.size());
    seq.context_len = s.start_position + seq.query_len;
    for (int32_t i = 0; i < seq.query_len; ++i) {
      const int32_t token = s.tokens[i];
      DSHPC_CHECK(token >= 0 && token < vocab) << "token id " << token << " outside the vocabulary";
      const int32_t position = s.start_position + i;
      token_ids_.push_back(token);
      positions_.push_back(position);
      slots_.push_back(static_cast<int64_t>(s.block_table[position / block_size]) * block_size +
                       position % block_size);
    }
    sequences_.push_back(seq);
    block_tables_.push_back(s.block_table.data());
    block_table_lengths_.push_back(static_cast<int32_t>(s.block_table.size()));
  }
  StepHostData host{token_ids_.data(),
                    positions_.data(),
                    slots_.data(),
                    static_cast<int64_t>(token_ids_.size()),
                    sequences_.data(),
                    block_tables_.data(),
                    block_table_lengths_.data(),
                    static_cast<int64_t>(sequences_.size())};
  return backend_.upload_step(host);
}

Mat Engine::hidden_buffer(int64_t tokens) {
  const int64_t h = model_.config().hidden_size;
  const DType dtype = backend_.activation_dtype();
  const size_t bytes = static_cast<size_t>(tokens * h) * dtype_size(dtype);
  if (hidden_.bytes() < bytes) hidden_ = backend_.allocate(bytes);
  return Mat::of(hidden_.data(), dtype, tokens, h);
}

void Engine::run_stage(const StepTensors& step, Mat hidden) {
  const uint64_t step_key = graphs_enabled_ ? backend_.step_graph_key() : 0;
  if (step_key == 0 || !model_.graph_capturable()) {
    model_.forward(step, cache_, hidden);
    return;
  }
  // The launches also depend on where the activations live.
  const uint64_t key =
      step_key ^ (reinterpret_cast<uintptr_t>(hidden.data) * 0x9e3779b97f4a7c15ull);
  if (backend_.launch_graph(key)) return;
  // The first step of a shape runs eagerly (it sizes the scratch buffers); the next is captured.
  // A capture that fails (memory changed while recording) is retried a few times, then the
  // shape stays eager.
  int& attempts = graph_attempts_[key];
  if (attempts++ == 0 || attempts > 4 || !backend_.begin_capture()) {
    model_.forward(step, cache_, hidden);
    return;
  }
  model_.forward(step, cache_, hidden);
  if (backend_.end_capture(key) && backend_.launch_graph(key)) return;
  model_.forward(step, cache_, hidden);  // the capture recorded but did not run the work
}

Mat Engine::logits_on_device(const StepPlan& plan, Mat hidden, StepOutput& out) {
  const int64_t vocab = model_.config().vocab_size;
  const int64_t h = model_.config().hidden_size;
  out.vocab = vocab;
  // Gather the rows that need logits into one contiguous block.
  int64_t rows = 0;
  for (const SequenceStep& s : plan.sequences) {
    out.first_row.push_back(rows);
    int64_t n = s.all_logits ? static_cast<int64_t>(s.tokens.size()) : 1;
    out.num_rows.push_back(n);
    rows += n;
  }
  const DType dtype = backend_.activation_dtype();
  Mat selected = hidden;  // every row needed, in order (decode steps): no gather
  if (rows != hidden.rows) {
    const size_t selected_bytes = static_cast<size_t>(rows * h) * dtype_size(dtype);
    if (selected_.bytes() < selected_bytes) selected_ = backend_.allocate(selected_bytes);
    selected = Mat::of(selected_.data(), dtype, rows, h);
    int64_t token = 0, row = 0;
    for (size_t i = 0; i < plan.sequences.size(); ++i) {
      const int64_t n = static_cast<int64_t>(plan.sequences[i].tokens.size());
      const int64_t take = out.num_rows[i];
      backend_.copy(hidden.row_slice(token + n - take, take), selected.row_slice(row, take));
      token += n;
      row += take;
    }
  }
  // Logits are float32 whatever the activations (a bf16 product with a float32 output on GPUs):
  // bf16's 8-bit mantissa would create ties among the top tokens.
  const size_t logits_bytes = static_cast<size_t>(rows * vocab) * sizeof(float);
  if (logits_.bytes() < logits_bytes) logits_ = backend_.allocate(logits_bytes);
  Mat logits = Mat::of(logits_.data(), DType::kF32, rows, vocab);
  model_.logits(selected, logits);
  return logits;
}

StepOutput Engine::compute_logits(const StepPlan& plan, Mat hidden) {
  StepOutput out;
  Mat logits = logits_on_device(plan, hidden, out);
  out.logits.resize(static_cast<size_t>(logits.rows * logits.cols));
  backend_.download(out.logits.data(), logits.data, out.logits.size() * sizeof(float));
  return out;
}

std::vector<int32_t> Engine::compute_argmax(const StepPlan& plan, Mat hidden) {
  StepOutput layout;
  Mat logits = logits_on_device(plan, hidden, layout);
  backend_.argmax(logits, token_buffer(logits.rows));
  const std::vector<int32_t> rows = download_tokens(logits.rows);
  std::vector<int32_t> ids;
  for (size_t i = 0; i < plan.sequences.size(); ++i) ids.push_back(rows[layout.last_row(i)]);
  return ids;
}

std::vector<int32_t> Engine::compute_samples(const StepPlan& plan, Mat hidden) {
  StepOutput layout;
  Mat logits = logits_on_device(plan, hidden, layout);
  // One parameter row per logits row: a sequence's last row carries its sampling parameters,
  // every other row (all_logits rows, sequences that do not sample) is greedy and ignored.
  sampling_rows_.assign(static_cast<size_t>(logits.rows), SamplingRow{});
  for (size_t i = 0; i < plan.sequences.size(); ++i) {
    const SequenceStep& s = plan.sequences[i];
    if (!s.sample) continue;
    SamplingRow& row = sampling_rows_[layout.last_row(i)];
    row.temperature = s.sampling.temperature;
    row.top_p = s.sampling.top_p;
    row.top_k = s.sampling.top_k;
    row.seed = s.sampling.seed;
    row.counter = s.sample_counter;
  }
  const SamplingRow* rows = backend_.upload_sampling(sampling_rows_.data(), logits.rows);
  backend_.sample(logits, rows, token_buffer(logits.rows));
  const std::vector<int32_t> row_ids = download_tokens(logits.rows);
  std::vector<int32_t> ids(plan.sequences.size(), 0);
  for (size_t i = 0; i < plan.sequences.size(); ++i) {
    if (plan.sequences[i].sample) ids[i] = row_ids[layout.last_row(i)];
  }
  return ids;
}

int32_t* Engine::token_buffer(int64_t rows) {
  const size_t bytes = static_cast<size_t>(rows) * sizeof(int32_t);
  if (argmax_.bytes() < bytes) argmax_ = backend_.allocate(bytes);
  return argmax_.as<int32_t>();
}

std::vector<int32_t> Engine::download_tokens(int64_t rows) {
  std::vector<int32_t> ids(static_cast<size_t>(rows));
  backend_.download(ids.data(), argmax_.data(), ids.size() * sizeof(int32_t));
  return ids;
}

StepCapacity step_capacity(const std::vector<StepPlan>& parts) {
  StepCapacity capacity;
  for (const StepPlan& part : parts) {
    int64_t rows = 0;
    for (const SequenceStep& s : part.sequences) {
      rows += s.all_logits ? static_cast<int64_t>(s.tokens.size()) : 1;
    }
    capacity.tokens = std::max(capacity.tokens, part.num_tokens());
    capacity.sequences = std::max(capacity.sequences, static_cast<int64_t>(part.sequences.size()));
    capacity.logits_rows = std::max(capacity.logits_rows, rows);
  }
  return capacity;
}

Status Engine::reserve(const StepCapacity& capacity) {
  const int64_t h = model_.config().hidden_size;
  const size_t element = dtype_size(backend_.activation_dtype());
  const auto fail = [&](const Status& status) {
    return resource_exhausted("the workspace of a step of " + std::to_string(capacity.tokens) +
                              " tokens, " + std::to_string(capacity.sequences) +
                              " sequences: " + status.message());
  };
  Status grown =
      backend_.try_grow(hidden_, static_cast<size_t>(capacity.tokens * h) * element, "activations");
  if (grown.ok() && model_.shard().last_stage(model_.config())) {
    const int64_t rows = capacity.logits_rows;
    const int64_t vocab = model_.config().vocab_size;
    grown = backend_.try_grow(selected_, static_cast<size_t>(rows * h) * element, "logits inputs");
    if (grown.ok()) {
      grown = backend_.try_grow(logits_, static_cast<size_t>(rows * vocab) * sizeof(float), "logits");
    }
    if (grown.ok()) {
      grown = backend_.try_grow(argmax_, static_cast<size_t>(rows) * sizeof(int32_t), "token ids");
    }
  }
  if (grown.ok()) grown = model_.reserve_workspace(capacity);
  workspace_high_water_ = std::max(workspace_high_water_, workspace_bytes());
  return grown.ok() ? grown : fail(grown);
}

void Engine::release_workspace() {
  workspace_high_water_ = std::max(workspace_high_water_, workspace_bytes());
  hidden_ = DeviceBuffer();
  selected_ = DeviceBuffer();
  logits_ = DeviceBuffer();
  argmax_ = DeviceBuffer();
  model_.release_workspace();
  graph_attempts_.clear();  // captured graphs named the buffers just freed
}

int64_t Engine::workspace_bytes() {
  int64_t bytes = model_.workspace_bytes() + backend_.memory_info().step_buffers_bytes;
  for (const DeviceBuffer* buffer : {&hidden_, &selected_, &logits_, &argmax_}) {
    bytes += static_cast<int64_t>(buffer->bytes());
  }
  return bytes;
}

int64_t Engine::workspace_high_water_bytes() {
  workspace_high_water_ = std::max(workspace_high_water_, workspace_bytes());
  return workspace_high_water_;
}

StepOutput Engine::run(const StepPlan& plan) {
  StepTensors step = prepare(plan);
  Mat hidden = hidden_buffer(step.num_tokens);
  run_stage(step, hidden);
  return compute_logits(plan, hidden);
}

}  // namespace dshpc
