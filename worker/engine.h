// The step executor of one model replica on one rank: turns a step plan (which sequences, their
// new tokens, positions and KV block tables) into a forward pass and returns the logits rows the
// plan asked for. Sequences may mix prefill chunks and decode tokens freely in one step.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "kernels/backend.h"
#include "kernels/sampling.h"
#include "worker/kv_cache.h"
#include "worker/model.h"

namespace dshpc {

struct SequenceStep {
  int64_t sequence_id = 0;
  std::vector<int32_t> tokens;       // new tokens of this step
  int32_t start_position = 0;        // position of tokens[0] (= tokens already in the cache)
  std::vector<int32_t> block_table;  // KV blocks covering positions [0, start_position + n)
  bool all_logits = false;           // logits for every new token, else only for the last

  // Serving: the last stage samples the next token after this step's last token. False for a
  // prefill chunk that is not the prompt's last (its logits are not needed).
  bool sample = true;
  SamplingParams sampling;  // temperature ≤ 0: greedy
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  int32_t top_logprobs = -1;  // -1: no logprobs
  // Tokens of the request's original prompt: later positions are its output (for the
  // presence/frequency penalties, also after a preemption folded output into the prompt).
  int32_t prompt_len = 0;
  // Index of the token this step generates (the seeded sampler's counter).
  uint64_t sample_counter = 0;
};

struct StepPlan {
  std::vector<SequenceStep> sequences;
  // true: the last stage returns the logits rows (eval-golden); false: it samples where
  // sample = true and returns only the sampled tokens.
  bool return_logits = false;
  // Sequences that ended (finished, cancelled or preempted) since the previous step: workers
  // drop whatever per-sequence state they keep (e.g. the last stage's token counts for penalties).
  std::vector<int64_t> released_sequences;
  int64_t num_tokens() const;
};

// A token chosen on the last stage, with logprobs when they were asked for.
struct SampledToken {
  int32_t token = 0;
  float logprob = 0.0f;  // log-softmax of the raw logits (as OpenAI reports them)
  std::vector<std::pair<int32_t, float>> top;  // (token, logprob), most likely first
};

struct StepOutput {
  std::vector<float> logits;       // [rows, vocab]: per sequence, its rows in plan order
  std::vector<int64_t> first_row;  // first logits row of each sequence
  std::vector<int64_t> num_rows;   // rows of each sequence
  int64_t vocab = 0;
  // Plans without return_logits: one entry per sequence, in plan order (token 0 where the
  // sequence did not sample).
  std::vector<SampledToken> samples;
  // The logits row of a sequence's last token (the one its next token is drawn from).
  int64_t last_row(size_t sequence) const { return first_row[sequence] + num_rows[sequence] - 1; }
  const float* row(int64_t sequence, int64_t i) const {
    return logits.data() + (first_row[sequence] + i) * vocab;
  }
};

class Engine {
 public:
  Engine(Model& model, Backend& backend, KvCache& cache);
  // Whether decode steps may be captured and replayed as CUDA graphs (on by default, and off
  // with DSHPC_CUDA_GRAPHS=0).
  void set_graphs_enabled(bool enabled) { graphs_enabled_ = enabled; }

  // Validates a plan against the cache (block tables long enough, block ids in range, positions
  // inside the rope tables); a bad plan is a broken invariant of the scheduler.
  void check_plan(const StepPlan& plan) const;

  // Runs one step through the whole model (single pipeline stage) and returns logits.
  StepOutput run(const StepPlan& plan);

  // Pipeline building blocks: prepare the step, run this stage on `hidden`, compute logits.
  StepTensors prepare(const StepPlan& plan);
  Mat hidden_buffer(int64_t tokens);
  void run_stage(const StepTensors& step, Mat hidden);
  StepOutput compute_logits(const StepPlan& plan, Mat hidden);
  // Last stage, greedy decoding: the argmax of each sequence's last logits row, computed where
  // the logits are (only token ids leave the device).
  std::vector<int32_t> compute_argmax(const StepPlan& plan, Mat hidden);
  // Last stage, seeded sampling without penalties or logprobs: per sequence the token
  // sample_token_cpu draws from its last logits row with its SamplingParams and sample_counter,
  // drawn where the logits are (Backend::sample; only token ids leave the device). Sequences
  // with sample = false get a greedy row and token 0.
  std::vector<int32_t> compute_samples(const StepPlan& plan, Mat hidden);

  Model& model() { return model_; }
  KvCache& cache() { return cache_; }

  // ---- Workspace. Everything a step of up to `capacity` needs on this rank — the activations,
  // the logits rows, the model's scratch and the backend's step buffers — grown before the step
  // runs, with Backend::try_allocate (see Model::reserve_workspace). RESOURCE_EXHAUSTED when the
  // memory is not there; nothing has run, and the step can be retried smaller.
  Status reserve(const StepCapacity& capacity);
  // Gives the whole workspace back (after a failed reservation, so that a smaller step starts
  // from what the device really has free).
  void release_workspace();
  // Bytes of workspace held now, and the most ever held at once.
  int64_t workspace_bytes();
  int64_t workspace_high_water_bytes();

 private:
  // Final norm and output head for the rows the plan needs; `out` gets the row layout.
  Mat logits_on_device(const StepPlan& plan, Mat hidden, StepOutput& out);
  // The device buffer one token id per logits row is selected into, and its download.
  int32_t* token_buffer(int64_t rows);
  std::vector<int32_t> download_tokens(int64_t rows);

  Model& model_;
  Backend& backend_;
  KvCache& cache_;

  // Host staging for the step metadata.
  std::vector<int32_t> token_ids_, positions_;
  std::vector<int64_t> slots_;
  std::vector<PagedSequence> sequences_;
  std::vector<const int32_t*> block_tables_;
  std::vector<int32_t> block_table_lengths_;
  std::vector<SamplingRow> sampling_rows_;
  DeviceBuffer hidden_, selected_, logits_, argmax_;

  // Decode steps replayed as CUDA graphs (Backend::launch_graph); DSHPC_CUDA_GRAPHS=0 turns
  // them off. Captures tried per key.
  bool graphs_enabled_ = true;
  std::unordered_map<uint64_t, int> graph_attempts_;

  int64_t workspace_high_water_ = 0;
};

// What the largest of a plan's micro-batches needs: its tokens, sequences and logits rows (each
// the largest over `parts`; Engine::reserve of it covers every part).
StepCapacity step_capacity(const std::vector<StepPlan>& parts);

}  // namespace dshpc
