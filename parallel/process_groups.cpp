#include "parallel/process_groups.h"

#include <sstream>

#include "common/check.h"
#include "parallel/mpi_collectives.h"
#include "parallel/mpi_runtime.h"

namespace dshpc {
namespace {

bool is_predefined(MPI_Comm comm) {
  return comm == MPI_COMM_NULL || comm == MPI_COMM_WORLD || comm == MPI_COMM_SELF;
}

// Every rank contributes its sizes and whether it could read its own settings; MAX over
// (x, -x) gives the largest and smallest value of each, so all ranks see the same disagreement.
Status agree_on_config(MPI_Comm base, const ParallelConfig& config, const Status& local,
                       double timeout_s) {
  int values[7] = {config.tp, -config.tp, config.pp,         -config.pp,
                   config.dp, -config.dp, local.ok() ? 0 : 1};
  const auto started = std::chrono::steady_clock::now();
  MPI_Request request;
  DSHPC_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, values, 7, MPI_INT, MPI_MAX, base, &request));
  wait_until(&request, MPI_STATUS_IGNORE, base, started, timeout_s,
             {.group = "world", .op = CollectiveOp::kAllReduce, .bytes = sizeof(values)});

  std::ostringstream disagreement;
  const char* flags[3] = {"--tp", "--pp", "--dp"};
  for (int i = 0; i < 3; ++i) {
    const int largest = values[2 * i];
    const int smallest = -values[2 * i + 1];
    if (largest == smallest) continue;
    disagreement << (disagreement.tellp() > 0 ? ", " : "") << flags[i] << " ranges from "
                 << smallest << " to " << largest;
  }
  if (disagreement.tellp() > 0) {
    return invalid_argument("the ranks disagree on the parallel sizes (" + disagreement.str() +
                            "); every rank must get the same flags");
  }
  if (values[6] != 0) {
    if (!local.ok()) return local;
    return invalid_argument(std::string("another rank rejected its settings (") +
                            kCollectiveTimeoutEnv + "?); see that rank's message");
  }
  return ok_status();
}

std::unique_ptr<Collectives> make_collectives(const MpiComm& comm, const char* name,
                                              double timeout_s) {
  if (comm.size() == 1) return std::make_unique<SoloCollectives>(name);
  return std::make_unique<MpiCollectives>(comm.get(), name, timeout_s);
}

}  // namespace

MpiComm& MpiComm::operator=(MpiComm&& other) noexcept {
  if (this != &other) {
    reset();
    comm_ = other.release();
  }
  return *this;
}

MpiComm MpiComm::dup(MPI_Comm comm) {
  MPI_Comm out = MPI_COMM_NULL;
  DSHPC_MPI_CHECK(MPI_Comm_dup(comm, &out));
  return MpiComm(out);
}

MpiComm MpiComm::split(MPI_Comm comm, int color, int key) {
  MPI_Comm out = MPI_COMM_NULL;
  DSHPC_MPI_CHECK(MPI_Comm_split(comm, color, key, &out));
  return MpiComm(out);
}

int MpiComm::rank() const {
  DSHPC_CHECK(valid()) << "rank of MPI_COMM_NULL";
  int rank = 0;
  DSHPC_MPI_CHECK(MPI_Comm_rank(comm_, &rank));
  return rank;
}

int MpiComm::size() const {
  DSHPC_CHECK(valid()) << "size of MPI_COMM_NULL";
  int size = 0;
  DSHPC_MPI_CHECK(MPI_Comm_size(comm_, &size));
  return size;
}

MPI_Comm MpiComm::release() {
  MPI_Comm out = comm_;
  comm_ = MPI_COMM_NULL;
  return out;
}

void MpiComm::reset() {
  MPI_Comm comm = release();
  if (is_predefined(comm)) return;
  // After MPI_Finalize no call is allowed; the handle dies with the library anyway.
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) DSHPC_MPI_CHECK(MPI_Comm_free(&comm));
}

StatusOr<ProcessGroups> ProcessGroups::create(const ParallelConfig& config,
                                              const GroupOptions& options) {
  Status local = ok_status();
  double timeout_s = kDefaultCollectiveTimeoutS;
  if (options.timeout_s.has_value()) {
    timeout_s = *options.timeout_s;
    if (!(timeout_s > 0)) {
      local = invalid_argument("the collective timeout must be positive, got " +
                               std::to_string(timeout_s) + " s");
      timeout_s = kDefaultCollectiveTimeoutS;
    }
  } else {
    StatusOr<double> from_env = collective_timeout_from_env();
    if (from_env.ok()) {
      timeout_s = *from_env;
    } else {
      local = from_env.status();
    }
  }

  int base_size = 0;
  DSHPC_MPI_CHECK(MPI_Comm_size(options.base, &base_size));
  RETURN_IF_ERROR(agree_on_config(options.base, config, local, timeout_s));
  // From here every rank holds the same sizes, so this fails on all ranks alike or on none.
  ASSIGN_OR_RETURN(RankLayout layout, RankLayout::create(base_size, config));

  ProcessGroups groups(layout);
  groups.timeout_s = timeout_s;
  groups.world = MpiComm::dup(options.base);
  // Failures must reach DSHPC_MPI_CHECK and the polling loop with their context, whatever the
  // caller's communicator does; the groups split from `world` inherit this.
  DSHPC_MPI_CHECK(MPI_Comm_set_errhandler(groups.world.get(), MPI_ERRORS_RETURN));
  groups.rank = groups.world.rank();
  groups.coords = layout.coords(groups.rank);
  // MPI_Comm_split has no non-blocking form; it is safe here because every rank got this far.
  const int rank = groups.rank;
  groups.tp = MpiComm::split(groups.world.get(), layout.group_id(rank, ParallelAxis::kTensor),
                             groups.coords.tp);
  groups.pp = MpiComm::split(groups.world.get(), layout.group_id(rank, ParallelAxis::kPipeline),
                             groups.coords.pp);
  groups.dp = MpiComm::split(groups.world.get(), layout.group_id(rank, ParallelAxis::kData),
                             groups.coords.dp);
  MPI_Comm node = MPI_COMM_NULL;
  DSHPC_MPI_CHECK(
      MPI_Comm_split_type(groups.world.get(), MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node));
  groups.node = MpiComm(node);
  groups.local_rank = groups.node.rank();
  groups.local_size = groups.node.size();

  // The keys above make group ranks equal the coordinates; the pipeline and every tensor split
  // rely on it, so check rather than trust.
  DSHPC_CHECK_EQ(groups.tp.size(), layout.tp()) << "tp group size";
  DSHPC_CHECK_EQ(groups.pp.size(), layout.pp()) << "pp group size";
  DSHPC_CHECK_EQ(groups.dp.size(), layout.dp()) << "dp group size";
  DSHPC_CHECK_EQ(groups.tp.rank(), groups.coords.tp) << "tp group rank";
  DSHPC_CHECK_EQ(groups.pp.rank(), groups.coords.pp) << "pp group rank";
  DSHPC_CHECK_EQ(groups.dp.rank(), groups.coords.dp) << "dp group rank";

  groups.tp_coll = make_collectives(groups.tp, "tp", timeout_s);
  groups.pp_coll = make_collectives(groups.pp, "pp", timeout_s);
  groups.dp_coll = make_collectives(groups.dp, "dp", timeout_s);
  return groups;
}

std::optional<int> ProcessGroups::next_stage() const {
  if (is_last_stage()) return std::nullopt;
  return coords.pp + 1;
}

std::optional<int> ProcessGroups::prev_stage() const {
  if (is_first_stage()) return std::nullopt;
  return coords.pp - 1;
}

}  // namespace dshpc
