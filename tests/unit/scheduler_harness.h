// Test driver for the Scheduler: submits named requests, renders each step as one line of text
// (so that tests read as tables of expected states per iteration) and answers steps with
// scripted tokens.
//
// A step renders as its sequences in plan order, `name:n@start[blocks]`, with `*` when the
// sequence samples, then `released:x,y` when the plan releases sequences; data-parallel replicas
// are joined as "r0: … | r1: …". A call that produces no step renders "idle".
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "coordinator/scheduler.h"

namespace dshpc::testing {

inline constexpr int32_t kEos = 2;
inline const TimePoint kT0{};
inline TimePoint at_us(int64_t us) {
  return kT0 + std::chrono::microseconds(us);
}

// A small config for hand-written tables; tests override what they exercise.
inline SchedulerConfig small_config() {
  SchedulerConfig c;
  c.max_batch_size = 4;
  c.max_num_batched_tokens = 8;
  c.max_queue_len = 16;
  c.kv_block_size = 4;
  c.kv_blocks = 16;
  c.max_model_len = 64;
  return c;
}

// Prompt token ids are 100 + i, so a recomputed prompt is easy to read.
inline GenerationRequest make_request(const std::string& id, int prompt_len, int64_t max_tokens,
                                      TimePoint arrival = kT0) {
  GenerationRequest r;
  r.request_id = id;
  for (int i = 0; i < prompt_len; ++i) r.prompt_ids.push_back(100 + i);
  r.max_tokens = max_tokens;
  r.arrival = arrival;
  return r;
}

class Harness {
 public:
  explicit Harness(const SchedulerConfig& config, int replicas = 1,
                   std::vector<int64_t> eos = {kEos})
      : scheduler(config, replicas, std::move(eos)) {}

  void submit(GenerationRequest request) {
    const std::string id = request.request_id;
    const Status s = scheduler.submit(std::move(request));
    ASSERT_TRUE(s.ok()) << s.to_string();
    names[scheduler.sequence_id_of(id)] = id;
  }
  void submit(const std::string& id, int prompt_len, int64_t max_tokens, TimePoint arrival = kT0) {
    submit(make_request(id, prompt_len, max_tokens, arrival));
  }

  // Tokens the named request samples next, in order; without a script a request samples
  // 500, 501, … (its output index + 500).
  void script(const std::string& id, std::vector<int32_t> tokens) {
    scripts[id].insert(scripts[id].end(), tokens.begin(), tokens.end());
  }

  // schedule(now), rendered; the step is kept for answer().
  std::string plan(TimePoint now = kT0) {
    last = scheduler.schedule(now);
    record(last.events);
    return render(last);
  }

  // Answers the last step: one SampledToken per sequence of each plan.
  void answer(TimePoint now = kT0) {
    ASSERT_TRUE(last.has_work()) << "no step to answer";
    std::vector<std::vector<SampledToken>> samples(last.plans.size());
    for (size_t r = 0; r < last.plans.size(); ++r) {
      for (const SequenceStep& s : last.plans[r].sequences) {
        SampledToken t;
        if (s.sample) t.token = next_token(names.at(s.sequence_id));
        samples[r].push_back(t);
      }
    }
    record(scheduler.on_step_result(last.step_id, samples, now));
  }

  // plan() then answer(): one iteration.
  std::string step(TimePoint now = kT0) {
    std::string text = plan(now);
    if (last.has_work()) answer(now);
    return text;
  }

  std::string render(const ScheduledStep& step) const {
    if (!step.has_work()) return "idle";
    std::vector<std::string> parts;
    for (size_t r = 0; r < step.plans.size(); ++r) {
      std::vector<std::string> items;
      for (const SequenceStep& s : step.plans[r].sequences) {
        std::string blocks;
        for (int32_t b : s.block_table) blocks += (blocks.empty() ? "" : ",") + std::to_string(b);
        items.push_back(names.at(s.sequence_id) + ":" + std::to_string(s.tokens.size()) + "@" +
                        std::to_string(s.start_position) + "[" + blocks + "]" +
                        (s.sample ? "*" : ""));
      }
      if (!step.plans[r].released_sequences.empty()) {
        std::string released;
        for (int64_t id : step.plans[r].released_sequences) {
          released += (released.empty() ? "" : ",") + names.at(id);
        }
        items.push_back("released:" + released);
      }
      std::string part = join(items);
      if (step.plans.size() > 1)
        part = "r" + std::to_string(r) + ": " + (part.empty() ? "-" : part);
      parts.push_back(part);
    }
    return join(parts, " | ");
  }

  static std::string join(const std::vector<std::string>& items, const std::string& sep = " ") {
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
    return out;
  }

  const std::vector<GenerationEvent>& events_of(const std::string& id) { return events[id]; }
  const GenerationEvent& final_event(const std::string& id) {
    EXPECT_FALSE(events[id].empty()) << id << " has no events";
    return events[id].back();
  }
  std::vector<int32_t> tokens_of(const std::string& id) {
    std::vector<int32_t> out;
    for (const GenerationEvent& e : events[id]) {
      for (const GeneratedToken& t : e.tokens) out.push_back(t.token);
    }
    return out;
  }
  // The plan's entry for a named request in the last step (nullptr: not in it).
  const SequenceStep* last_step_of(const std::string& id) const {
    for (const StepPlan& p : last.plans) {
      for (const SequenceStep& s : p.sequences) {
        if (names.at(s.sequence_id) == id) return &s;
      }
    }
    return nullptr;
  }

  void record(const std::vector<RequestEvent>& batch) {
    for (const RequestEvent& e : batch) {
      // Events arrive in order and nothing follows a final one.
      auto& list = events[e.request_id];
      EXPECT_TRUE(list.empty() || list.back().finish == FinishReason::kNone)
          << e.request_id << " got an event after its final one";
      list.push_back(e.event);
    }
  }

  Scheduler scheduler;
  ScheduledStep last;
  std::map<int64_t, std::string> names;
  std::map<std::string, std::vector<GenerationEvent>> events;
  std::map<std::string, std::deque<int32_t>> scripts;

 private:
  int32_t next_token(const std::string& id) {
    auto& script = scripts[id];
    if (!script.empty()) {
      const int32_t t = script.front();
      script.pop_front();
      return t;
    }
    return static_cast<int32_t>(500 + tokens_of(id).size());
  }
};

}  // namespace dshpc::testing
