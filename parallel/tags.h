// Point-to-point message tags: one per kind of message, so that a receiver never takes one kind for
// another (MPI matches on source, tag and communicator). Values start at 100 to stay clear of small
// ad-hoc tags in tests and third-party code; every value is far below MPI_TAG_UB (>= 32767).
#pragma once

namespace dshpc {

enum class MessageTag : int {
  kActivations = 100,  // hidden states from one pipeline stage to the next
  kStepPlan,           // rank 0's step plan to the ranks that execute it
  kTokens,             // sampled token ids from the last stage back to rank 0
  kControl,            // small control messages: shutdown, drain, health
  kLogits,             // full-vocabulary logits when a request asks for logprobs
  kRankFigures,        // a rank's metrics (worker/rank_figures.h) to rank 0, when asked for
};

constexpr int tag_value(MessageTag tag) {
  return static_cast<int>(tag);
}

// For error messages ("tag 100 (activations)"); "other" for values outside the enum.
inline const char* message_tag_name(int tag) {
  switch (static_cast<MessageTag>(tag)) {
    case MessageTag::kActivations:
      return "activations";
    case MessageTag::kStepPlan:
      return "step plan";
    case MessageTag::kTokens:
      return "tokens";
    case MessageTag::kControl:
      return "control";
    case MessageTag::kLogits:
      return "logits";
    case MessageTag::kRankFigures:
      return "rank figures";
  }
  return "other";
}

}  // namespace dshpc
