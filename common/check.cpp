#include "common/check.h"

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

namespace dshpc {
namespace {
std::atomic<int> g_rank{-1};
std::atomic<int> g_device{-1};
std::atomic<AbortHandler> g_abort{nullptr};

struct FatalHookSlot {
  std::mutex mutex;
  FatalHook hook;
  std::chrono::milliseconds limit{0};
  bool ran = false;
};
FatalHookSlot& fatal_hook_slot() {
  static FatalHookSlot* slot = new FatalHookSlot;  // never destroyed: fatal paths run at exit too
  return *slot;
}

// Runs the installed hook once, on its own thread, waiting at most its limit.
void run_fatal_hook(const std::string& reason) {
  FatalHookSlot& slot = fatal_hook_slot();
  FatalHook hook;
  std::chrono::milliseconds limit;
  {
    std::lock_guard<std::mutex> lock(slot.mutex);
    if (slot.ran || !slot.hook) return;
    slot.ran = true;  // a fatal error inside the hook, or a second one meanwhile, goes straight on
    hook = slot.hook;
    limit = slot.limit;
  }
  struct Done {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
  };
  auto done = std::make_shared<Done>();
  std::thread([hook = std::move(hook), reason, done] {
    hook(reason);
    std::lock_guard<std::mutex> lock(done->mutex);
    done->done = true;
    done->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(done->mutex);
  if (!done->cv.wait_for(lock, limit, [&] { return done->done; })) {
    std::fprintf(stderr, "dshpc: the fatal-error hook did not finish within %lld ms\n",
                 static_cast<long long>(limit.count()));
  }
}

}  // namespace

void set_fatal_hook(FatalHook hook, std::chrono::milliseconds limit) {
  FatalHookSlot& slot = fatal_hook_slot();
  std::lock_guard<std::mutex> lock(slot.mutex);
  slot.hook = std::move(hook);
  slot.limit = limit;
}

void set_process_identity(int rank, int device) {
  g_rank = rank;
  g_device = device;
}

std::string process_identity() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::string out = std::string("host=") + host + " rank=" + std::to_string(g_rank.load());
  if (g_device.load() >= 0) out += " device=" + std::to_string(g_device.load());
  return out;
}

void set_abort_handler(AbortHandler handler) {
  g_abort = handler;
}

void fatal_abort(int exit_code) {
  fatal_abort(exit_code, "");
}

void fatal_abort(int exit_code, const std::string& reason) {
  std::fflush(stdout);
  std::fflush(stderr);
  run_fatal_hook(reason);
  std::fflush(stdout);
  std::fflush(stderr);
  AbortHandler handler = g_abort.load();
  if (handler != nullptr) handler(exit_code);
  std::_Exit(exit_code);
}

FatalMessage::FatalMessage(const char* file, int line, const char* what) {
  stream_ << "dshpc fatal [" << process_identity() << "] " << file << ":" << line << ": " << what
          << " ";
}

FatalMessage::~FatalMessage() {
  stream_ << "\n";
  const std::string text = stream_.str();
  std::fputs(text.c_str(), stderr);
  fatal_abort(70, text);
}

}  // namespace dshpc
