// GET /debug/memory: where each rank's memory goes — weights, KV cache, step workspace, device —
// as the deployment guide's memory summary, in JSON. Built on rank 0 from each rank's latest
// figures (they travel with the metrics reports, worker/cluster.h: as fresh as the last report,
// about a second old while serving) and the scheduler's KV cache usage per replica.
//
//   {"object": "memory_report", "world_size": 2, "ranks_reported": 2,
//    "batch": {"token_cap": 2048, "token_limit": 2048, "memory_failures": 0},
//    "kv_block_size": 16,
//    "ranks": [{"rank": 0, "reported": true, "age_seconds": 0.4, "host": "gpu01",
//               "dp": 0, "pp": 0, "tp": 0, "backend": "cpu",
//               "weights_bytes": 1234,
//               "kv_cache": {"blocks_total": 512, "blocks_used": 3, "blocks_free": 509,
//                            "blocks_allocated": 512, "bytes_per_block": 4096,
//                            "bytes": 2097152, "bytes_used": 12288},
//               "workspace": {"reserved_bytes": 65536, "high_water_bytes": 131072,
//                             "reservation_failures": 0},
//               "device": {"total_bytes": null, "free_bytes": null,
//                          "pool_in_use_bytes": null, "pool_cached_bytes": null},
//               "host_memory": {"process_rss_bytes": 1, "total_bytes": 2, "available_bytes": 3}},
//              {"rank": 1, "reported": false}]}
//
// blocks_total/used/free are the replica's blocks as the scheduler counts them (the number the
// ranks agreed on, the smallest any rank holds); blocks_allocated and bytes are the rank's own
// cache. null: the backend does not know (the CPU has no device). A rank that has not reported
// yet (the first reports come within a keepalive interval of start-up) has only "rank" and
// "reported": false.
#pragma once

#include <boost/json.hpp>
#include <vector>

#include "coordinator/inference_service.h"
#include "coordinator/metrics.h"

namespace dshpc {

boost::json::object memory_report(const std::vector<Metrics::RankMemory>& ranks,
                                  const ServiceStatus& status, int world_size,
                                  Metrics::TimePoint now);

}  // namespace dshpc
