#!/usr/bin/env bash
# launch/mpirun.sh: the mpirun line it builds (ranks per node, binding, transport, environment,
# pass-through of dshpc's arguments), and, with a real mpirun, that SIGTERM drains every rank
# (SIGUSR1) with exit 0 and that a failing rank makes the launcher fail.
#   tests/ops/test_mpirun_launcher.sh path/to/launch/mpirun.sh
set -euo pipefail
launcher=${1:?usage: test_mpirun_launcher.sh path/to/mpirun.sh}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
has() { grep -qF -- "$2" <<<"$1" || fail "$3: expected '$2' in: $1"; }
lacks() { ! grep -qF -- "$2" <<<"$1" || fail "$3: did not expect '$2' in: $1"; }

# No GPU tools and no ucx_info from the machine: the tests choose what the launcher sees.
mkdir -p "$work/bin"
export PATH="$work/bin:/usr/bin:/bin"
unset CUDA_VISIBLE_DEVICES OMP_NUM_THREADS OPENBLAS_NUM_THREADS DSHPC_HOSTFILE DSHPC_RANKS_PER_NODE \
      DSHPC_NP DSHPC_BIND DSHPC_TRANSPORT DSHPC_LOG_DIR DSHPC_BIN

printf 'node01 slots=4\n# a comment\n\nnode02 slots=4\n' >"$work/hosts"

# 1. Two hosts, four ranks each: -np 8, one rank per GPU slot, NUMA binding, environment by prefix,
#    dshpc's arguments passed through intact.
line=$(DSHPC_MODEL_CACHE=/x NCCL_IB_HCA=mlx5_0 UCX_TLS=rc "$launcher" --dry-run --hostfile "$work/hosts" \
         --ranks-per-node 4 --dshpc /opt/dshpc -- serve --model "/models/a b" --tp 4)
has "$line" "--hostfile $work/hosts" "hostfile"
has "$line" "-np 8" "rank count"
has "$line" "--map-by ppr:4:node --bind-to numa" "mapping"
for var in DSHPC_MODEL_CACHE NCCL_IB_HCA UCX_TLS OMP_NUM_THREADS OPENBLAS_NUM_THREADS CUDA_DEVICE_ORDER PATH; do
  has "$line" "-x $var" "environment"
done
has "$line" '/opt/dshpc serve --model /models/a\ b --tp 4' "pass-through"
# Without ucx_info: TCP between hosts.
has "$line" "--mca pml ob1 --mca btl self\\,vader\\,tcp" "tcp transport"

# 2. UCX when ucx_info shows an InfiniBand transport; TCP when it shows none.
cat >"$work/bin/ucx_info" <<'UCX'
#!/bin/sh
printf '#      Transport: tcp\n#         Device: eth0\n'
[ -n "$FAKE_IB" ] && printf '#      Transport: rc_mlx5\n#         Device: mlx5_0:1\n'
exit 0
UCX
chmod +x "$work/bin/ucx_info"
line=$(FAKE_IB=1 "$launcher" --dry-run --ranks-per-node 2 -- serve)
has "$line" "--mca pml ucx --mca osc ucx --mca btl \\^openib" "ucx with IB"
line=$(FAKE_IB= "$launcher" --dry-run --ranks-per-node 2 -- serve)
has "$line" "--mca pml ob1" "tcp without IB"
lacks "$line" "pml ucx" "tcp without IB"

# 3. Ranks per node from CUDA_VISIBLE_DEVICES, else from nvidia-smi; core binding gives each rank
#    its share of the cores.
line=$(CUDA_VISIBLE_DEVICES=0,1,2 "$launcher" --dry-run --bind core -- serve)
has "$line" "-np 3" "ranks from CUDA_VISIBLE_DEVICES"
has "$line" "--bind-to core" "core binding"
has "$line" "ppr:3:node:PE=" "cores per rank"
printf '#!/bin/sh\nfor i in 0 1 2 3 4 5 6 7; do echo "GPU $i: NVIDIA H200 (UUID: GPU-$i)"; done\n' >"$work/bin/nvidia-smi"
chmod +x "$work/bin/nvidia-smi"
line=$("$launcher" --dry-run --hostfile "$work/hosts" -- serve)
has "$line" "-np 16" "ranks from nvidia-smi"
rm "$work/bin/nvidia-smi"
# --np alone is spread over the hosts.
line=$("$launcher" --dry-run --hostfile "$work/hosts" --np 6 -- serve)
has "$line" "ppr:3:node" "--np spread"

# 4. Mistakes are refused with status 2 and a message.
for args in "--bind socket -- serve" "--transport ib -- serve" "--ranks-per-node 0 -- serve" \
            "--hostfile $work/missing -- serve" "--frobnicate -- serve" ""; do
  set +e
  # shellcheck disable=SC2086
  "$launcher" --dry-run $args >/dev/null 2>"$work/err"
  rc=$?
  set -e
  [ "$rc" = 2 ] || fail "'$args' exited $rc, expected 2"
  [ -s "$work/err" ] || fail "'$args' gave no message"
done

# 5. With a real mpirun: SIGTERM to the launcher reaches every rank as SIGUSR1 at once, the ranks
#    drain, and the launcher exits 0.
command -v mpirun >/dev/null 2>&1 || fail "mpirun not found (launch/setup.sh installs openmpi-bin)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
cat >"$work/fake_dshpc" <<FAKE
#!/usr/bin/env bash
trap 'echo "drained \$OMPI_COMM_WORLD_RANK" >>"$work/drained"; exit 0' USR1
echo "up \$OMPI_COMM_WORLD_RANK \$*" >>"$work/up"
while true; do sleep 0.05; done
FAKE
chmod +x "$work/fake_dshpc"
"$launcher" --np 2 --bind none --transport tcp --dshpc "$work/fake_dshpc" -- serve --port 1 \
  >"$work/out" 2>&1 &
pid=$!
started() { cat "$work/up" 2>/dev/null | wc -l; }
for _ in $(seq 200); do [ "$(started)" -ge 2 ] && break; sleep 0.05; done
[ "$(started)" -ge 2 ] || fail "ranks did not start: $(cat "$work/out")"
grep -q "up 1 serve --port 1" "$work/up" || fail "arguments did not reach rank 1: $(cat "$work/up")"
kill -TERM "$pid"
set +e
wait "$pid"
rc=$?
set -e
[ "$rc" = 0 ] || fail "launcher exited $rc after a drain, expected 0: $(cat "$work/out")"
[ "$(sort "$work/drained" | tr '\n' ' ')" = "drained 0 drained 1 " ] ||
  fail "not every rank drained: $(cat "$work/drained" 2>/dev/null)"

# 6. A rank that fails ends the job with a non-zero status (what supervise.sh restarts on).
cat >"$work/failing_dshpc" <<'FAKE'
#!/usr/bin/env bash
[ "$OMPI_COMM_WORLD_RANK" = 1 ] && exit 3
while true; do sleep 0.05; done
FAKE
chmod +x "$work/failing_dshpc"
set +e
timeout 60 "$launcher" --np 2 --bind none --transport tcp --dshpc "$work/failing_dshpc" -- serve \
  >"$work/out2" 2>&1
rc=$?
set -e
[ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "a failing rank gave launcher status $rc"

echo "mpirun.sh: all cases passed"
