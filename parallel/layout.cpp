#include "parallel/layout.h"

#include <charconv>
#include <sstream>

#include "common/check.h"

namespace dshpc {

const char* axis_name(ParallelAxis axis) {
  switch (axis) {
    case ParallelAxis::kTensor:
      return "tp";
    case ParallelAxis::kPipeline:
      return "pp";
    case ParallelAxis::kData:
      return "dp";
  }
  return "?";
}

std::ostream& operator<<(std::ostream& os, const RankCoords& coords) {
  return os << "{dp " << coords.dp << ", pp " << coords.pp << ", tp " << coords.tp << "}";
}

std::ostream& operator<<(std::ostream& os, const LayerRange& range) {
  return os << "[" << range.begin << ", " << range.end << ")";
}

StatusOr<RankLayout> RankLayout::create(int world_size, const ParallelConfig& config) {
  if (world_size < 1) {
    return invalid_argument("the world size must be at least 1, got " + std::to_string(world_size));
  }
  if (config.tp < 1)
    return invalid_argument("--tp must be at least 1, got " + std::to_string(config.tp));
  if (config.pp < 1)
    return invalid_argument("--pp must be at least 1, got " + std::to_string(config.pp));
  if (config.dp < 0) {
    return invalid_argument("--dp must be at least 1 (or 0 to derive it), got " +
                            std::to_string(config.dp));
  }
  // int64 so that absurd flags report the mismatch instead of overflowing into a false match.
  const int64_t stage_ranks = int64_t{config.tp} * config.pp;
  if (world_size % stage_ranks != 0) {
    std::ostringstream msg;
    msg << "--tp " << config.tp << " × --pp " << config.pp << " does not divide the world size "
        << world_size;
    return invalid_argument(msg.str());
  }
  const int derived_dp = static_cast<int>(world_size / stage_ranks);
  if (config.dp != 0 && config.dp != derived_dp) {
    std::ostringstream msg;
    msg << "--dp " << config.dp << " × --pp " << config.pp << " × --tp " << config.tp << " = "
        << int64_t{config.dp} * stage_ranks << " does not equal the world size " << world_size
        << " (leave --dp out to derive it)";
    return invalid_argument(msg.str());
  }
  return RankLayout(config.tp, config.pp, derived_dp);
}

int RankLayout::size(ParallelAxis axis) const {
  switch (axis) {
    case ParallelAxis::kTensor:
      return tp_;
    case ParallelAxis::kPipeline:
      return pp_;
    case ParallelAxis::kData:
      return dp_;
  }
  DSHPC_FATAL() << "unknown axis " << static_cast<int>(axis);
}

void RankLayout::check_rank(int rank) const {
  DSHPC_CHECK(rank >= 0 && rank < world_size()) << "rank " << rank << " outside " << to_string();
}

RankCoords RankLayout::coords(int rank) const {
  check_rank(rank);
  return RankCoords{.dp = rank / (pp_ * tp_), .pp = (rank / tp_) % pp_, .tp = rank % tp_};
}

int RankLayout::rank_of(const RankCoords& c) const {
  DSHPC_CHECK(c.dp >= 0 && c.dp < dp_ && c.pp >= 0 && c.pp < pp_ && c.tp >= 0 && c.tp < tp_)
      << "coordinates " << c << " outside " << to_string();
  return (c.dp * pp_ + c.pp) * tp_ + c.tp;
}

int RankLayout::index(int rank, ParallelAxis axis) const {
  const RankCoords c = coords(rank);
  switch (axis) {
    case ParallelAxis::kTensor:
      return c.tp;
    case ParallelAxis::kPipeline:
      return c.pp;
    case ParallelAxis::kData:
      return c.dp;
  }
  DSHPC_FATAL() << "unknown axis " << static_cast<int>(axis);
}

int RankLayout::group_id(int rank, ParallelAxis axis) const {
  const RankCoords c = coords(rank);
  switch (axis) {
    case ParallelAxis::kTensor:
      return c.dp * pp_ + c.pp;
    case ParallelAxis::kPipeline:
      return c.dp * tp_ + c.tp;
    case ParallelAxis::kData:
      return c.pp * tp_ + c.tp;
  }
  DSHPC_FATAL() << "unknown axis " << static_cast<int>(axis);
}

std::vector<int> RankLayout::group(int rank, ParallelAxis axis) const {
  const RankCoords base = coords(rank);
  std::vector<int> ranks;
  ranks.reserve(size(axis));
  for (int i = 0; i < size(axis); ++i) {
    RankCoords member = base;
    switch (axis) {
      case ParallelAxis::kTensor:
        member.tp = i;
        break;
      case ParallelAxis::kPipeline:
        member.pp = i;
        break;
      case ParallelAxis::kData:
        member.dp = i;
        break;
    }
    ranks.push_back(rank_of(member));
  }
  return ranks;
}

std::vector<std::vector<int>> RankLayout::all_groups(ParallelAxis axis) const {
  std::vector<std::vector<int>> groups(num_groups(axis));
  for (int rank = 0; rank < world_size(); ++rank) {
    groups[group_id(rank, axis)].push_back(rank);  // ranks ascend, and so does the axis index
  }
  return groups;
}

std::optional<int> RankLayout::next_stage_rank(int rank) const {
  RankCoords c = coords(rank);
  if (c.pp == pp_ - 1) return std::nullopt;
  ++c.pp;
  return rank_of(c);
}

std::optional<int> RankLayout::prev_stage_rank(int rank) const {
  RankCoords c = coords(rank);
  if (c.pp == 0) return std::nullopt;
  --c.pp;
  return rank_of(c);
}

std::string RankLayout::to_string() const {
  std::ostringstream out;
  out << "world " << world_size() << " = dp " << dp_ << " × pp " << pp_ << " × tp " << tp_;
  return out.str();
}

Status check_split(const RankLayout& layout, const SplitRequirement& req) {
  std::ostringstream msg;
  if (req.quantity < 1) {
    msg << req.what << " must be at least 1, got " << req.quantity;
    return invalid_argument(msg.str());
  }
  const int64_t tp = layout.tp();
  const int64_t pp = layout.pp();
  switch (req.rule) {
    case SplitRule::kDivisibleByTp:
      if (req.quantity % tp == 0) return ok_status();
      msg << req.what << " (" << req.quantity << ") is not divisible by --tp " << tp;
      break;
    case SplitRule::kDivisibleByTpOrReplicated:
      if (req.quantity % tp == 0 || (tp > req.quantity && tp % req.quantity == 0)) {
        return ok_status();
      }
      msg << req.what << " (" << req.quantity << ") is not divisible by --tp " << tp;
      if (tp > req.quantity) msg << ", nor does it divide --tp to replicate them";
      break;
    case SplitRule::kAtLeastPp:
      if (req.quantity >= pp) return ok_status();
      msg << "more pipeline stages (" << pp << ") than " << req.what << " (" << req.quantity
          << "); lower --pp";
      break;
  }
  return invalid_argument(msg.str());
}

Status check_splits(const RankLayout& layout, const std::vector<SplitRequirement>& requirements) {
  std::string joined;
  for (const SplitRequirement& req : requirements) {
    const Status status = check_split(layout, req);
    if (status.ok()) continue;
    if (!joined.empty()) joined += "; ";
    joined += status.message();
  }
  if (joined.empty()) return ok_status();
  return invalid_argument(layout.to_string() + " does not fit the model: " + joined);
}

StatusOr<std::vector<LayerRange>> stage_layer_ranges(int num_layers, int pp,
                                                     std::span<const int> layers_per_stage) {
  if (pp < 1) return invalid_argument("--pp must be at least 1, got " + std::to_string(pp));
  if (num_layers < pp) {
    return invalid_argument("more pipeline stages (" + std::to_string(pp) + ") than layers (" +
                            std::to_string(num_layers) + "); lower --pp");
  }
  std::vector<int> counts;
  if (layers_per_stage.empty()) {
    for (int stage = 0; stage < pp; ++stage) {
      counts.push_back(num_layers / pp + (stage < num_layers % pp ? 1 : 0));
    }
  } else {
    if (static_cast<int>(layers_per_stage.size()) != pp) {
      return invalid_argument("the per-stage layer counts list " +
                              std::to_string(layers_per_stage.size()) + " stages, but --pp is " +
                              std::to_string(pp));
    }
    int64_t sum = 0;
    std::string spelled;
    for (size_t stage = 0; stage < layers_per_stage.size(); ++stage) {
      const int count = layers_per_stage[stage];
      if (count < 1) {
        return invalid_argument(
            "pipeline stage " + std::to_string(stage) + " is given " + std::to_string(count) +
            " layers in the per-stage layer counts; every stage needs at least 1");
      }
      sum += count;
      spelled += (stage == 0 ? "" : "+") + std::to_string(count);
    }
    if (sum != num_layers) {
      return invalid_argument("the per-stage layer counts " + spelled + " sum to " +
                              std::to_string(sum) + ", but the model has " +
                              std::to_string(num_layers) + " layers");
    }
    counts.assign(layers_per_stage.begin(), layers_per_stage.end());
  }
  std::vector<LayerRange> ranges;
  int begin = 0;
  for (int count : counts) {
    ranges.push_back(LayerRange{.begin = begin, .end = begin + count});
    begin += count;
  }
  return ranges;
}

StatusOr<std::vector<int>> parse_layers_per_stage(std::string_view text) {
  std::vector<int> counts;
  size_t pos = 0;
  while (true) {
    const size_t comma = text.find(',', pos);
    std::string_view item =
        text.substr(pos, comma == std::string_view::npos ? text.npos : comma - pos);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    int value = 0;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size()) {
      return invalid_argument("per-stage layer counts \"" + std::string(text) +
                              "\": expected comma-separated integers, got \"" + std::string(item) +
                              "\"");
    }
    counts.push_back(value);
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return counts;
}

}  // namespace dshpc
