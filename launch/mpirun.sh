#!/usr/bin/env bash
# Launches dshpc as one SPMD job with Open MPI's mpirun: one rank per GPU on every host of a
# hostfile, each rank bound to the cores (or NUMA domain) next to it, the job's environment
# propagated, UCX over InfiniBand when the hosts have it. Under Slurm use launch/slurm/*.sbatch
# (srun) instead; docs/deploy.md explains both.
#
#   launch/mpirun.sh [options] [--] COMMAND [dshpc options...]
#   launch/mpirun.sh --hostfile hosts.txt -- serve --model /models/DeepSeek-V3 --tp 8 --pp 2
#   launch/mpirun.sh --dry-run -- serve --model /models/x      (print the mpirun line only)
#
# Options (each also settable through the environment variable in brackets)
#   --hostfile FILE       Open MPI hostfile, one "host slots=N" per line; without one, this host
#                         only [DSHPC_HOSTFILE]
#   --ranks-per-node N    ranks on each host; default: the GPUs CUDA_VISIBLE_DEVICES names, else
#                         the GPUs nvidia-smi lists on this host, else 1 [DSHPC_RANKS_PER_NODE]
#   --np N                total ranks; default: hosts × ranks per node; given alone, it is spread
#                         evenly over the hosts [DSHPC_NP]
#   --bind numa|core|none how ranks are pinned: "numa" keeps a rank and its memory on the socket of
#                         its GPU; "core" gives each rank its own block of cores [DSHPC_BIND, numa]
#   --transport auto|ucx|tcp  MPI transport between hosts; "auto" picks UCX when ucx_info shows an
#                         InfiniBand/RoCE device, TCP otherwise [DSHPC_TRANSPORT, auto]
#   --log-dir DIR         one output file per rank under DIR (Open MPI --output-filename), for
#                         Filebeat [DSHPC_LOG_DIR]
#   --dshpc PATH          the binary [DSHPC_BIN, build/bin/dshpc]
#   --mpirun-arg ARG      one extra argument for mpirun (repeatable)
#   --dry-run             print the command instead of running it
#
# Stopping: SIGTERM or SIGINT to this script reaches every rank as SIGUSR1, at once; dshpc drains
# on SIGUSR1 exactly as on SIGTERM (issue 9). Plain SIGTERM to mpirun would instead wait
# odls_base_sigkill_timeout, send SIGTERM, then SIGKILL, and exit non-zero even after a clean
# drain. A second SIGTERM/SIGINT to this script sends SIGTERM to mpirun (hard stop).
#
# When a rank exits non-zero or is killed, mpirun ends the others and exits non-zero, so that
# launch/supervise.sh restarts the job.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

hostfile=${DSHPC_HOSTFILE:-}
ranks_per_node=${DSHPC_RANKS_PER_NODE:-}
np=${DSHPC_NP:-}
bind=${DSHPC_BIND:-numa}
transport=${DSHPC_TRANSPORT:-auto}
log_dir=${DSHPC_LOG_DIR:-}
dshpc=${DSHPC_BIN:-$root/build/bin/dshpc}
dry_run=0
extra_mpirun=()

while [ $# -gt 0 ]; do
  case "$1" in
    --hostfile) hostfile=${2:?--hostfile needs a file}; shift 2 ;;
    --ranks-per-node) ranks_per_node=${2:?--ranks-per-node needs a number}; shift 2 ;;
    --np) np=${2:?--np needs a number}; shift 2 ;;
    --bind) bind=${2:?--bind needs numa, core or none}; shift 2 ;;
    --transport) transport=${2:?--transport needs auto, ucx or tcp}; shift 2 ;;
    --log-dir) log_dir=${2:?--log-dir needs a directory}; shift 2 ;;
    --dshpc) dshpc=${2:?--dshpc needs a path}; shift 2 ;;
    --mpirun-arg) extra_mpirun+=("${2:?--mpirun-arg needs a value}"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) echo "mpirun.sh: unknown option '$1' (dshpc's own options go after the command)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "mpirun.sh: no dshpc command (serve, batch, generate, …); see --help" >&2; exit 2; }

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

# Hosts: the non-empty, non-comment lines of the hostfile.
nodes=1
if [ -n "$hostfile" ]; then
  [ -r "$hostfile" ] || { echo "mpirun.sh: cannot read hostfile '$hostfile'" >&2; exit 2; }
  nodes=$(grep -cEv '^[[:space:]]*(#|$)' "$hostfile" || true)
  [ "$nodes" -ge 1 ] || { echo "mpirun.sh: hostfile '$hostfile' names no host" >&2; exit 2; }
fi

# One rank per GPU. Every rank sees all of its host's GPUs and picks its own from its node-local
# rank (DESIGN.md, "Process model"); CUDA_VISIBLE_DEVICES is therefore passed on unchanged.
if [ -z "$ranks_per_node" ] && [ -n "$np" ] && is_count "$np"; then
  ranks_per_node=$(((np + nodes - 1) / nodes))  # --np alone: spread it over the hosts
fi
if [ -z "$ranks_per_node" ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=',' read -ra visible <<<"$CUDA_VISIBLE_DEVICES"
    ranks_per_node=${#visible[@]}
  elif command -v nvidia-smi >/dev/null 2>&1; then
    ranks_per_node=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  is_count "${ranks_per_node:-}" || ranks_per_node=1
fi
is_count "$ranks_per_node" || { echo "mpirun.sh: --ranks-per-node '$ranks_per_node' is not a positive number" >&2; exit 2; }
[ -n "$np" ] || np=$((nodes * ranks_per_node))
is_count "$np" || { echo "mpirun.sh: --np '$np' is not a positive number" >&2; exit 2; }

# Threads per rank: the host's cores shared among its ranks, unless set already. OpenBLAS and
# OpenMP threads beyond that would fight over the cores the binding gives each rank.
cores=$(nproc 2>/dev/null || echo 1)
threads=$((cores / ranks_per_node))
[ "$threads" -ge 1 ] || threads=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$threads}
# CUDA numbers devices in PCI order like NVML does, so that the GPU metrics name the right device.
export CUDA_DEVICE_ORDER=${CUDA_DEVICE_ORDER:-PCI_BUS_ID}

cmd=(mpirun)
[ -n "$hostfile" ] && cmd+=(--hostfile "$hostfile")
cmd+=(-np "$np")
case "$bind" in
  numa) cmd+=(--map-by "ppr:${ranks_per_node}:node" --bind-to numa) ;;
  core) cmd+=(--map-by "ppr:${ranks_per_node}:node:PE=${threads}" --bind-to core) ;;
  none) cmd+=(--map-by "ppr:${ranks_per_node}:node" --bind-to none) ;;
  *) echo "mpirun.sh: --bind '$bind' is not one of numa, core, none" >&2; exit 2 ;;
esac

# UCX when a host channel adapter is present: ucx_info -d lists a verbs/mlx5 transport (rc, dc,
# ud) for each InfiniBand or RoCE port. pml ucx carries MPI's point-to-point messages, osc ucx its
# one-sided ones; the old openib btl is kept out. Without IB, TCP between hosts and shared memory
# (vader) within one.
has_ib() {
  command -v ucx_info >/dev/null 2>&1 &&
    ucx_info -d 2>/dev/null | grep -qE 'Transport: (rc|rc_verbs|rc_mlx5|dc|dc_mlx5|ud|ud_verbs|ud_mlx5)$'
}
case "$transport" in
  auto) if has_ib; then transport=ucx; else transport=tcp; fi ;;
  ucx|tcp) ;;
  *) echo "mpirun.sh: --transport '$transport' is not one of auto, ucx, tcp" >&2; exit 2 ;;
esac
if [ "$transport" = ucx ]; then
  cmd+=(--mca pml ucx --mca osc ucx --mca btl '^openib')
else
  cmd+=(--mca pml ob1 --mca btl self,vader,tcp)
fi

[ -n "$log_dir" ] && cmd+=(--output-filename "$log_dir")
# Rank-prefixed output ([1,3]<stdout>: …) would break the JSON log lines; leave it off.

# Environment for every rank, by prefix: dshpc's own settings, NCCL and UCX tuning, CUDA device
# selection, thread counts; PATH and LD_LIBRARY_PATH so that remote hosts find the same binaries.
while IFS= read -r name; do
  cmd+=(-x "$name")
done < <(compgen -e | grep -E '^(DSHPC_|NCCL_|UCX_|CUDA_|OMP_|OPENBLAS_|SLURM_JOB_ID$|PATH$|LD_LIBRARY_PATH$)' | sort)

cmd+=("${extra_mpirun[@]}" "$dshpc" "$@")

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
  exit 0
fi

stop_requests=0
forward_stop() {
  stop_requests=$((stop_requests + 1))
  if [ "$stop_requests" -eq 1 ]; then
    # Rank 0 alone needs the signal (it drains, then stops the other ranks). When it runs on this
    # node it gets it directly: Open MPI 4.1.6's mpirun on our GPU machine did not forward SIGUSR1
    # (Debian's 4.1.4 does). Otherwise mpirun forwards it to every rank.
    local rank0=""
    for pid in $(pgrep -P "$mpirun_pid" -x dshpc 2>/dev/null); do  # this job's local ranks
      if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=0"; then
        rank0=$pid
      fi
    done
    if [ -n "$rank0" ]; then
      echo "mpirun.sh: draining (SIGUSR1 to rank 0, pid $rank0); signal again to stop at once" >&2
      kill -USR1 "$rank0" 2>/dev/null || true
    else
      echo "mpirun.sh: draining (SIGUSR1 to every rank); signal again to stop at once" >&2
      kill -USR1 "$mpirun_pid" 2>/dev/null || true
    fi
  else
    kill -TERM "$mpirun_pid" 2>/dev/null || true
  fi
}
trap forward_stop TERM INT

"${cmd[@]}" &
mpirun_pid=$!
while true; do
  set +e
  wait "$mpirun_pid"
  rc=$?
  set -e
  kill -0 "$mpirun_pid" 2>/dev/null || break  # exited (not just a signal interrupting wait)
done
set +e
wait "$mpirun_pid" 2>/dev/null
again=$?
set -e
[ "$again" -ne 127 ] && rc=$again
exit "$rc"
