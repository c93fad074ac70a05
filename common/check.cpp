#include "common/check.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

namespace dshpc {
namespace {
std::atomic<int> g_rank{-1};
std::atomic<int> g_device{-1};
std::atomic<AbortHandler> g_abort{nullptr};
}  // namespace

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
  std::fputs(stream_.str().c_str(), stderr);
  fatal_abort(70);
}

}  // namespace dshpc
