// The rank layout of one SPMD job: world = dp × pp × tp, as a pure value type (no MPI) so that its
// arithmetic is tested against hand-written tables without launching anything.
//
// contract (DESIGN.md): rank = (dp_index × pp + pp_index) × tp + tp_index
//   tp is fastest: a tensor-parallel group is tp consecutive ranks (one node, NVLink);
//   pp next: the stages of one replica are tp apart;
//   dp outermost: replica d owns ranks [d × pp × tp, (d + 1) × pp × tp).
//
// Example, world 8 = dp 2 × pp 2 × tp 2:
//   rank      0 1 2 3 4 5 6 7
//   dp_index  0 0 0 0 1 1 1 1
//   pp_index  0 0 1 1 0 0 1 1
//   tp_index  0 1 0 1 0 1 0 1
//   tp groups {0,1} {2,3} {4,5} {6,7}; pp groups {0,2} {1,3} {4,6} {5,7}; dp groups {0,4} {1,5} ...
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace dshpc {

// The sizes the user asks for (--tp, --pp, --dp). Validated once, by RankLayout::create.
struct ParallelConfig {
  int tp = 1;
  int pp = 1;
  int dp = 0;  // 0: derive as world / (tp × pp)
};

enum class ParallelAxis { kTensor, kPipeline, kData };
const char* axis_name(ParallelAxis axis);  // "tp", "pp", "dp"

// Where one rank sits in the grid; fields ordered outermost first, as in the rank formula.
struct RankCoords {
  int dp = 0;
  int pp = 0;
  int tp = 0;
  bool operator==(const RankCoords&) const = default;
};
std::ostream& operator<<(std::ostream& os, const RankCoords& coords);  // "{dp 1, pp 0, tp 1}"

class RankLayout {
 public:
  // Checks the sizes and derives dp when config.dp == 0. Errors name the flag and show the
  // numbers, e.g. "--tp 3 × --pp 1 does not divide the world size 4". Pure, so every rank that
  // calls it with the same arguments gets the same answer without talking to the others.
  static StatusOr<RankLayout> create(int world_size, const ParallelConfig& config);

  int world_size() const { return tp_ * pp_ * dp_; }
  int tp() const { return tp_; }
  int pp() const { return pp_; }
  int dp() const { return dp_; }
  int size(ParallelAxis axis) const;

  // Rank arguments must lie in [0, world_size()); anything else is a bug and stops the job.
  RankCoords coords(int rank) const;
  int rank_of(const RankCoords& coords) const;
  int index(int rank, ParallelAxis axis) const;  // the rank's coordinate along `axis`

  // The ranks of the group along `axis` that contains `rank`, ordered by their index along the axis
  // (so position i holds the rank whose tp/pp/dp index is i: the group rank of MPI_Comm_split).
  std::vector<int> group(int rank, ParallelAxis axis) const;
  std::vector<int> tp_group(int rank) const { return group(rank, ParallelAxis::kTensor); }
  std::vector<int> pp_group(int rank) const { return group(rank, ParallelAxis::kPipeline); }
  std::vector<int> dp_group(int rank) const { return group(rank, ParallelAxis::kData); }

  // Groups along one axis are numbered 0 .. num_groups(axis) - 1 (the MPI_Comm_split colour):
  //   tp: dp_index × pp + pp_index   pp: dp_index × tp + tp_index   dp: pp_index × tp + tp_index
  int num_groups(ParallelAxis axis) const { return world_size() / size(axis); }
  int group_id(int rank, ParallelAxis axis) const;
  std::vector<std::vector<int>> all_groups(ParallelAxis axis) const;  // ordered by group_id

  // Pipeline neighbours within the rank's own replica and tensor-parallel slot.
  bool is_first_stage(int rank) const { return coords(rank).pp == 0; }
  bool is_last_stage(int rank) const { return coords(rank).pp == pp_ - 1; }
  std::optional<int> next_stage_rank(int rank) const;  // nullopt on the last stage
  std::optional<int> prev_stage_rank(int rank) const;  // nullopt on the first stage

  std::string to_string() const;  // "world 8 = dp 2 × pp 2 × tp 2"
  bool operator==(const RankLayout&) const = default;

 private:
  RankLayout(int tp, int pp, int dp) : tp_(tp), pp_(pp), dp_(dp) {}
  void check_rank(int rank) const;

  int tp_ = 1;
  int pp_ = 1;
  int dp_ = 1;
};

// ---- Does the layout fit the model? ------------------------------------------------------------
// The model engineer lists what each parallel dimension splits, by name; the messages are written
// for the user who chose --tp/--pp, e.g. "attention heads (10) is not divisible by --tp 4".

enum class SplitRule {
  kDivisibleByTp,  // split evenly across the tp ranks: heads, vocabulary, ffn width, routed experts
  // Split when tp divides it; when tp exceeds it, each item is replicated on tp / quantity ranks,
  // so quantity must divide tp (grouped-query kv heads).
  kDivisibleByTpOrReplicated,
  kAtLeastPp,  // at least one per pipeline stage: layers
};

struct SplitRequirement {
  std::string what;  // plural noun for messages: "attention heads", "layers"
  int64_t quantity = 0;
  SplitRule rule = SplitRule::kDivisibleByTp;
};

Status check_split(const RankLayout& layout, const SplitRequirement& requirement);
// Checks them all and reports every failure at once ("; "-joined), so one run shows the user
// everything to fix.
Status check_splits(const RankLayout& layout, const std::vector<SplitRequirement>& requirements);

// ---- Pipeline stages
// -----------------------------------------------------------------------------

struct LayerRange {
  int begin = 0;  // first layer of the stage
  int end = 0;    // one past the last
  int size() const { return end - begin; }
  bool operator==(const LayerRange&) const = default;
};
std::ostream& operator<<(std::ostream& os, const LayerRange& range);  // "[begin, end)"

// Contiguous layer ranges, one per stage, covering [0, num_layers) in order.
// Balanced by default: every stage gets num_layers / pp layers, and the first num_layers % pp
// stages one more. The extra layers go to the early stages because the last stage also carries
// the output norm, the vocabulary projection and sampling, the heaviest non-layer work; the
// embedding lookup on the first stage is cheap.
// `layers_per_stage`, when not empty, sets the counts explicitly (e.g. from --pp-layers 3,3,2):
// pp entries, each at least 1, summing to num_layers.
StatusOr<std::vector<LayerRange>> stage_layer_ranges(int num_layers, int pp,
                                                     std::span<const int> layers_per_stage = {});

// Parses "3,3,2" into {3, 3, 2}; whitespace around numbers is allowed.
StatusOr<std::vector<int>> parse_layers_per_stage(std::string_view text);

}  // namespace dshpc
