#include "coordinator/memory_report.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace dshpc {
namespace {

namespace json = boost::json;

// -1 (not known) as null.
json::value known(int64_t bytes) {
  return bytes < 0 ? json::value(nullptr) : json::value(bytes);
}

int64_t at(const std::vector<int64_t>& values, int index) {
  return index >= 0 && index < static_cast<int>(values.size()) ? values[index] : 0;
}

json::object rank_entry(const Metrics::RankMemory& report, const ServiceStatus& status,
                        Metrics::TimePoint now) {
  const MemoryFigures& m = report.memory;
  json::object rank;
  rank["rank"] = report.rank;
  rank["reported"] = true;
  const double age = std::chrono::duration<double>(now - report.received).count();
  rank["age_seconds"] = std::round(std::max(0.0, age) * 1000.0) / 1000.0;
  rank["host"] = m.host;
  rank["dp"] = m.dp;
  rank["pp"] = m.pp;
  rank["tp"] = m.tp;
  rank["backend"] = m.backend;
  rank["weights_bytes"] = m.weight_bytes;

  const int64_t blocks_total = at(status.replica_kv_blocks_total, m.dp);
  const int64_t blocks_used = at(status.replica_kv_blocks_used, m.dp);
  const int64_t per_block = m.kv_cache_blocks > 0 ? m.kv_cache_bytes / m.kv_cache_blocks : 0;
  json::object kv;
  kv["blocks_total"] = blocks_total;
  kv["blocks_used"] = blocks_used;
  kv["blocks_free"] = std::max<int64_t>(0, blocks_total - blocks_used);
  kv["blocks_allocated"] = m.kv_cache_blocks;
  kv["bytes_per_block"] = per_block;
  kv["bytes"] = m.kv_cache_bytes;
  kv["bytes_used"] = blocks_used * per_block;
  rank["kv_cache"] = std::move(kv);

  json::object workspace;
  workspace["reserved_bytes"] = m.workspace_bytes;
  workspace["high_water_bytes"] = m.workspace_high_water_bytes;
  workspace["reservation_failures"] = m.workspace_failures;
  rank["workspace"] = std::move(workspace);

  json::object device;
  device["total_bytes"] = known(m.device_total_bytes);
  device["free_bytes"] = known(m.device_free_bytes);
  device["pool_in_use_bytes"] = known(m.pool_in_use_bytes);
  device["pool_cached_bytes"] = known(m.pool_cached_bytes);
  rank["device"] = std::move(device);

  json::object host;
  host["process_rss_bytes"] = known(m.process_rss_bytes);
  host["total_bytes"] = known(m.host_total_bytes);
  host["available_bytes"] = known(m.host_available_bytes);
  rank["host_memory"] = std::move(host);
  return rank;
}

}  // namespace

json::object memory_report(const std::vector<Metrics::RankMemory>& ranks,
                           const ServiceStatus& status, int world_size, Metrics::TimePoint now) {
  json::object body;
  body["object"] = "memory_report";
  world_size = std::max(1, world_size);
  body["world_size"] = world_size;
  json::object batch;
  batch["token_cap"] = status.step_token_cap;
  batch["token_limit"] = status.step_token_limit;
  batch["memory_failures"] = status.memory_failures;
  body["batch"] = std::move(batch);
  body["kv_block_size"] = status.kv_block_size;

  json::array entries;
  int reported = 0;
  for (int r = 0; r < world_size; ++r) {
    auto it = std::find_if(ranks.begin(), ranks.end(),
                           [r](const Metrics::RankMemory& m) { return m.rank == r; });
    if (it == ranks.end()) {
      entries.push_back(json::object{{"rank", r}, {"reported", false}});
      continue;
    }
    entries.push_back(rank_entry(*it, status, now));
    ++reported;
  }
  body["ranks_reported"] = reported;
  body["ranks"] = std::move(entries);
  return body;
}

}  // namespace dshpc
