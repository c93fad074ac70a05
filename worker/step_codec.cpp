#include "worker/step_codec.h"

#include <cmath>
#include <cstring>

#include "common/check.h"

namespace dshpc {
namespace {

constexpr uint32_t kMagic = 0x44535043;  // "DSPC"

class Writer {
 public:
  template <typename T>
  void put(T value) {
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    out.insert(out.end(), p, p + sizeof(T));
  }
  template <typename T>
  void put_array(const std::vector<T>& values) {
    put<uint32_t>(static_cast<uint32_t>(values.size()));
    const auto* p = reinterpret_cast<const uint8_t*>(values.data());
    out.insert(out.end(), p, p + values.size() * sizeof(T));
  }
  std::vector<uint8_t> out;
};

class Reader {
 public:
  explicit Reader(const std::vector<uint8_t>& bytes) : bytes_(bytes) {}
  template <typename T>
  T get() {
    DSHPC_CHECK(pos_ + sizeof(T) <= bytes_.size()) << "control message truncated at byte " << pos_;
    T value;
    std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  template <typename T>
  std::vector<T> get_array() {
    const uint32_t n = get<uint32_t>();
    DSHPC_CHECK(pos_ + static_cast<size_t>(n) * sizeof(T) <= bytes_.size())
        << "control message array of " << n << " overruns the buffer";
    std::vector<T> values(n);
    if (n > 0) std::memcpy(values.data(), bytes_.data() + pos_, n * sizeof(T));
    pos_ += n * sizeof(T);
    return values;
  }
  bool done() const { return pos_ == bytes_.size(); }

 private:
  const std::vector<uint8_t>& bytes_;
  size_t pos_ = 0;
};

}  // namespace

std::vector<uint8_t> encode_control(const ControlMessage& message) {
  Writer w;
  w.put<uint32_t>(kMagic);
  w.put<uint32_t>(static_cast<uint32_t>(message.command));
  w.put<uint64_t>(message.step_id);
  w.put<uint8_t>(
      static_cast<uint8_t>((message.report_figures ? 1 : 0) | (message.reserve_workspace ? 2 : 0)));
  w.put<double>(message.next_message_within_s);
  w.put<uint32_t>(static_cast<uint32_t>(message.replica_plans.size()));
  for (const StepPlan& plan : message.replica_plans) {
    w.put<uint8_t>(plan.return_logits ? 1 : 0);
    w.put_array(plan.released_sequences);
    w.put<uint32_t>(static_cast<uint32_t>(plan.sequences.size()));
    for (const SequenceStep& s : plan.sequences) {
      w.put<int64_t>(s.sequence_id);
      w.put<int32_t>(s.start_position);
      w.put<uint8_t>(static_cast<uint8_t>((s.all_logits ? 1 : 0) | (s.sample ? 2 : 0)));
      w.put_array(s.tokens);
      w.put_array(s.block_table);
      w.put<float>(s.sampling.temperature);
      w.put<int64_t>(s.sampling.top_k);
      w.put<float>(s.sampling.top_p);
      w.put<uint64_t>(s.sampling.seed);
      w.put<float>(s.presence_penalty);
      w.put<float>(s.frequency_penalty);
      w.put<float>(s.repetition_penalty);
      w.put<int32_t>(s.top_logprobs);
      w.put<int32_t>(s.prompt_len);
      w.put<uint64_t>(s.sample_counter);
    }
  }
  return std::move(w.out);
}

ControlMessage decode_control(const std::vector<uint8_t>& bytes) {
  Reader r(bytes);
  DSHPC_CHECK(r.get<uint32_t>() == kMagic) << "control message with a bad magic number";
  ControlMessage message;
  const uint32_t command = r.get<uint32_t>();
  DSHPC_CHECK(command >= 1 && command <= 3) << "unknown control command " << command;
  message.command = static_cast<ControlCommand>(command);
  message.step_id = r.get<uint64_t>();
  const uint8_t flags = r.get<uint8_t>();
  message.report_figures = (flags & 1) != 0;
  message.reserve_workspace = (flags & 2) != 0;
  message.next_message_within_s = r.get<double>();
  DSHPC_CHECK(std::isfinite(message.next_message_within_s) && message.next_message_within_s >= 0)
      << "control message promises the next one within " << message.next_message_within_s << " s";
  const uint32_t replicas = r.get<uint32_t>();
  message.replica_plans.resize(replicas);
  for (StepPlan& plan : message.replica_plans) {
    plan.return_logits = r.get<uint8_t>() != 0;
    plan.released_sequences = r.get_array<int64_t>();
    const uint32_t sequences = r.get<uint32_t>();
    plan.sequences.resize(sequences);
    for (SequenceStep& s : plan.sequences) {
      s.sequence_id = r.get<int64_t>();
      s.start_position = r.get<int32_t>();
      const uint8_t flags = r.get<uint8_t>();
      s.all_logits = (flags & 1) != 0;
      s.sample = (flags & 2) != 0;
      s.tokens = r.get_array<int32_t>();
      s.block_table = r.get_array<int32_t>();
      s.sampling.temperature = r.get<float>();
      s.sampling.top_k = r.get<int64_t>();
      s.sampling.top_p = r.get<float>();
      s.sampling.seed = r.get<uint64_t>();
      s.presence_penalty = r.get<float>();
      s.frequency_penalty = r.get<float>();
      s.repetition_penalty = r.get<float>();
      s.top_logprobs = r.get<int32_t>();
      s.prompt_len = r.get<int32_t>();
      s.sample_counter = r.get<uint64_t>();
    }
  }
  DSHPC_CHECK(r.done()) << "control message has trailing bytes";
  return message;
}

}  // namespace dshpc
