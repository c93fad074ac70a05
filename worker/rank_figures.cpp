#include "worker/rank_figures.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

namespace dshpc {

const char* step_phase_name(StepPhase phase) {
  switch (phase) {
    case StepPhase::kForward:
      return "forward";
    case StepPhase::kSample:
      return "sample";
    case StepPhase::kSchedule:
      return "schedule";
    case StepPhase::kStep:
      return "step";
  }
  return "?";
}

namespace {

constexpr uint32_t kMagic = 0x44534652;  // "DSFR"
constexpr uint32_t kVersion = 2;         // 2: MemoryFigures
constexpr uint32_t kMaxString = 4096;

class Writer {
 public:
  template <typename T>
  void put(T value) {
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    out.insert(out.end(), p, p + sizeof(T));
  }
  void put(const DurationHistogram& h) {
    for (uint64_t c : h.counts) put<uint64_t>(c);
    put<double>(h.sum);
  }
  void put(const std::string& text) {
    const uint32_t n = static_cast<uint32_t>(std::min<size_t>(text.size(), kMaxString));
    put<uint32_t>(n);
    out.insert(out.end(), text.begin(), text.begin() + n);
  }
  std::vector<uint8_t> out;
};

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  bool get(T& value) {
    if (pos_ + sizeof(T) > size_) return false;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool get(DurationHistogram& h) {
    for (uint64_t& c : h.counts) {
      if (!get<uint64_t>(c)) return false;
    }
    return get<double>(h.sum);
  }
  bool get(std::string& text) {
    uint32_t n = 0;
    if (!get<uint32_t>(n) || n > kMaxString || pos_ + n > size_) return false;
    text.assign(reinterpret_cast<const char*>(data_) + pos_, n);
    pos_ += n;
    return true;
  }
  bool done() const { return pos_ == size_; }
  size_t position() const { return pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

int64_t process_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return -1;
  long long size = 0, resident = 0;
  const int read = std::fscanf(f, "%lld %lld", &size, &resident);
  std::fclose(f);
  const long page = sysconf(_SC_PAGESIZE);
  return read == 2 && page > 0 ? static_cast<int64_t>(resident) * page : -1;
}

void host_memory_bytes(int64_t* total, int64_t* available) {
  *total = *available = -1;
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return;
  char name[64];
  long long kib = 0;
  while (std::fscanf(f, "%63s %lld kB", name, &kib) == 2) {
    if (std::strcmp(name, "MemTotal:") == 0) *total = static_cast<int64_t>(kib) * 1024;
    if (std::strcmp(name, "MemAvailable:") == 0) *available = static_cast<int64_t>(kib) * 1024;
  }
  std::fclose(f);
}

std::vector<uint8_t> encode_rank_figures(const RankFigures& figures) {
  Writer w;
  w.put<uint32_t>(kMagic);
  w.put<uint32_t>(kVersion);
  w.put<int32_t>(figures.rank);
  for (const CollectiveStats::Op& op : figures.collectives.ops) {
    w.put<uint64_t>(op.calls);
    w.put<uint64_t>(op.bytes);
    w.put(op.durations);
  }
  for (const DurationHistogram& h : figures.phases) w.put(h);
  w.put<uint8_t>(figures.gpu.present ? 1 : 0);
  w.put<uint64_t>(figures.gpu.memory_used_bytes);
  w.put<uint64_t>(figures.gpu.memory_total_bytes);
  w.put<double>(figures.gpu.utilization_ratio);
  const MemoryFigures& m = figures.memory;
  w.put<uint8_t>(m.present ? 1 : 0);
  w.put<int32_t>(m.dp);
  w.put<int32_t>(m.pp);
  w.put<int32_t>(m.tp);
  w.put(m.host);
  w.put(m.backend);
  for (int64_t v : {m.weight_bytes, m.kv_cache_bytes, m.kv_cache_blocks, m.workspace_bytes,
                    m.workspace_high_water_bytes, m.workspace_failures, m.device_total_bytes,
                    m.device_free_bytes, m.pool_in_use_bytes, m.pool_cached_bytes,
                    m.process_rss_bytes, m.host_total_bytes, m.host_available_bytes}) {
    w.put<int64_t>(v);
  }
  return std::move(w.out);
}

StatusOr<RankFigures> decode_rank_figures(const uint8_t* data, size_t size) {
  Reader r(data, size);
  const auto truncated = [&] {
    return invalid_argument("rank figures message of " + std::to_string(size) +
                            " bytes is truncated at byte " + std::to_string(r.position()));
  };
  uint32_t magic = 0, version = 0;
  if (!r.get(magic) || !r.get(version)) return truncated();
  if (magic != kMagic) return invalid_argument("rank figures message with a bad magic number");
  if (version != kVersion) {
    return invalid_argument("rank figures message of version " + std::to_string(version) +
                            ", expected " + std::to_string(kVersion));
  }
  RankFigures figures;
  int32_t rank = 0;
  if (!r.get(rank)) return truncated();
  figures.rank = rank;
  for (CollectiveStats::Op& op : figures.collectives.ops) {
    if (!r.get(op.calls) || !r.get(op.bytes) || !r.get(op.durations)) return truncated();
    op.seconds = op.durations.sum;
  }
  for (DurationHistogram& h : figures.phases) {
    if (!r.get(h)) return truncated();
  }
  uint8_t present = 0;
  if (!r.get(present) || !r.get(figures.gpu.memory_used_bytes) ||
      !r.get(figures.gpu.memory_total_bytes) || !r.get(figures.gpu.utilization_ratio)) {
    return truncated();
  }
  figures.gpu.present = present != 0;
  MemoryFigures& m = figures.memory;
  if (!r.get(present) || !r.get(m.dp) || !r.get(m.pp) || !r.get(m.tp) || !r.get(m.host) ||
      !r.get(m.backend)) {
    return truncated();
  }
  m.present = present != 0;
  for (int64_t* v : {&m.weight_bytes, &m.kv_cache_bytes, &m.kv_cache_blocks, &m.workspace_bytes,
                     &m.workspace_high_water_bytes, &m.workspace_failures, &m.device_total_bytes,
                     &m.device_free_bytes, &m.pool_in_use_bytes, &m.pool_cached_bytes,
                     &m.process_rss_bytes, &m.host_total_bytes, &m.host_available_bytes}) {
    if (!r.get(*v)) return truncated();
  }
  if (!r.done()) {
    return invalid_argument("rank figures message has " + std::to_string(size - r.position()) +
                            " trailing bytes");
  }
  if (figures.rank < 0) return invalid_argument("rank figures of rank " + std::to_string(rank));
  return figures;
}

}  // namespace dshpc
