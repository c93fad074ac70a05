#include "parallel/collectives.h"

#include <cstring>

#include "common/check.h"

namespace dshpc {

const char* collective_op_name(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::kAllReduce:
      return "all_reduce_sum";
    case CollectiveOp::kAllGather:
      return "all_gather";
    case CollectiveOp::kSend:
      return "send";
    case CollectiveOp::kRecv:
      return "recv";
    case CollectiveOp::kBroadcast:
      return "broadcast";
  }
  return "?";
}

void SoloCollectives::all_gather(const float* send, float* recv, size_t count) {
  if (send != recv) std::memmove(recv, send, count * sizeof(float));
}

void SoloCollectives::send(const void*, size_t, int peer, int) {
  DSHPC_FATAL() << "send to peer " << peer << " in the single-rank group '" << name_ << "'";
}

void SoloCollectives::recv(void*, size_t, int peer, int) {
  DSHPC_FATAL() << "recv from peer " << peer << " in the single-rank group '" << name_ << "'";
}

}  // namespace dshpc
