// The communicators of one rank: world, its tensor-, pipeline- and data-parallel groups and its
// node, built once from the RankLayout and passed explicitly to whatever needs them (no global
// parallel state).
#pragma once

#include <mpi.h>

#include <memory>
#include <optional>

#include "common/status.h"
#include "parallel/collectives.h"
#include "parallel/layout.h"

namespace dshpc {

// Move-only owner of one MPI communicator: MPI_Comm_free on destruction. Predefined communicators
// (MPI_COMM_WORLD, MPI_COMM_SELF) are held but never freed.
class MpiComm {
 public:
  MpiComm() = default;  // MPI_COMM_NULL
  explicit MpiComm(MPI_Comm comm) : comm_(comm) {}
  ~MpiComm() { reset(); }

  MpiComm(MpiComm&& other) noexcept : comm_(other.release()) {}
  MpiComm& operator=(MpiComm&& other) noexcept;
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  // Collective over `comm`: a private copy, so our traffic never matches anyone else's messages.
  static MpiComm dup(MPI_Comm comm);
  // Collective over `comm`: ranks with the same colour form a group, ordered by key. A colour of
  // MPI_UNDEFINED gives an empty MpiComm.
  static MpiComm split(MPI_Comm comm, int color, int key);

  MPI_Comm get() const { return comm_; }
  bool valid() const { return comm_ != MPI_COMM_NULL; }
  int rank() const;
  int size() const;

  MPI_Comm release();  // gives up ownership; this becomes MPI_COMM_NULL
  void reset();        // frees the communicator now

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
};

struct GroupOptions {
  MPI_Comm base = MPI_COMM_WORLD;  // the job's ranks; tests pass a sub-communicator
  // Per-group wait limit. Unset: DSHPC_COLLECTIVE_TIMEOUT_S when set, else 300 s.
  std::optional<double> timeout_s = std::nullopt;
};

struct ProcessGroups {
  // Validates the layout against the size of options.base and builds the groups. Collective over
  // options.base: every rank must call it. The ranks first agree on the sizes (an all-reduce of the
  // flags), then each validates the same layout by the same pure function, so every rank returns
  // the same error and none is left waiting in a split. Group ranks equal the coordinates:
  // tp.rank() == coords.tp, pp.rank() == coords.pp, dp.rank() == coords.dp.
  static StatusOr<ProcessGroups> create(const ParallelConfig& config,
                                        const GroupOptions& options = {});

  RankLayout layout;
  int rank = 0;  // in `world`
  RankCoords coords;
  int local_rank = 0;  // among the ranks on this node: picks the GPU on the CUDA backend
  int local_size = 1;
  double timeout_s = 0;

  // Communicators before collectives: members are destroyed in reverse order, and a collective
  // must not outlive the communicator it talks over.
  MpiComm world;  // a duplicate of options.base
  MpiComm tp, pp, dp;
  MpiComm node;  // MPI_COMM_TYPE_SHARED
  // MpiCollectives over tp/pp/dp, or SoloCollectives for a dimension of size 1.
  std::unique_ptr<Collectives> tp_coll, pp_coll, dp_coll;

  // Pipeline neighbours as ranks of pp_coll (== pp indices); nullopt at either end.
  std::optional<int> next_stage() const;
  std::optional<int> prev_stage() const;
  bool is_first_stage() const { return coords.pp == 0; }
  bool is_last_stage() const { return coords.pp == layout.pp() - 1; }

 private:
  explicit ProcessGroups(const RankLayout& l) : layout(l) {}
};

}  // namespace dshpc
