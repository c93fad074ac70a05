// What a blocking wait on the GPU checks while it waits. A stream can stall forever behind a
// collective whose peer died; the CUDA backend's waits therefore poll, and on every round ask each
// registered watcher (one per NCCL communicator) for its asynchronous error state. On an error
// the watcher stops the job itself; on the wait's timeout every watcher is asked to abort (tear
// its communicator down) before the job stops. Header-only and free of CUDA types, so that the
// parallel layer (NCCL) and the kernels layer (the backend) share it without linking each other.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace dshpc::cuda {

class AsyncWatch {
 public:
  using Id = uint64_t;

  // `poll` returns normally while all is well and stops the job (DSHPC_FATAL) on an error;
  // `abort` releases whatever the watcher holds that may be stuck (ncclCommAbort).
  Id add(std::string name, std::function<void()> poll, std::function<void()> abort) {
    std::lock_guard<std::mutex> lock(mutex_);
    const Id id = next_id_++;
    entries_[id] = Entry{std::move(name), std::move(poll), std::move(abort)};
    return id;
  }

  void remove(Id id) {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.erase(id);
  }

  void poll_all() {
    for (const Entry& e : snapshot()) e.poll();
  }

  void abort_all() {
    for (const Entry& e : snapshot()) e.abort();
  }

  // "tp, pp" for messages.
  std::string names() {
    std::string out;
    for (const Entry& e : snapshot()) out += (out.empty() ? "" : ", ") + e.name;
    return out.empty() ? "none" : out;
  }

 private:
  struct Entry {
    std::string name;
    std::function<void()> poll;
    std::function<void()> abort;
  };
  // Callbacks run without the lock: a poll that fails stops the job, and an abort may be slow.
  std::vector<Entry> snapshot() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<Entry> out;
    for (const auto& [id, e] : entries_) out.push_back(e);
    return out;
  }

  std::mutex mutex_;
  std::map<Id, Entry> entries_;
  Id next_id_ = 1;
};

}  // namespace dshpc::cuda
