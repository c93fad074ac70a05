#!/usr/bin/env bash
# From a fresh Debian 12 machine: installs what is missing, builds, and runs the main job on the
# built-in default model: `dshpc serve` under mpirun with tensor parallelism 2, serving
# configs/models/demo.json (a small DeepSeek-V3-architecture model with the real DeepSeek-V3
# tokenizer and seeded random weights — so its text is gibberish, but every part of the serving
# path is real), then queries it with a chat request through the OpenAI-compatible API.
#
#   ./launch/quickstart.sh            serve, ask one question, drain, exit
#   KEEP_SERVING=1 ./launch/quickstart.sh   keep serving on port ${PORT:-8000} until Ctrl-C
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${DSHPC_BUILD_DIR:-$root/build}
"$root/launch/build.sh"
port=${PORT:-8000}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
log=$(mktemp)

# Readable log lines for a terminal; a deployment keeps the default, JSON lines for Filebeat.
echo "== mpirun -np 2 dshpc serve --model configs/models/demo.json --random-weights --tp 2 --port $port --log-format text"
mpirun --oversubscribe -np 2 "$build/bin/dshpc" serve --model "$root/configs/models/demo.json" \
  --random-weights --tp 2 --host 127.0.0.1 --port "$port" --log-format text > "$log" 2>&1 &
server=$!
trap 'kill -USR1 $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" = 200 ] && break
  if ! kill -0 $server 2>/dev/null; then cat "$log"; echo "quickstart: the server exited" >&2; exit 1; fi
  sleep 0.2
done
cat "$log"

echo
echo "== POST /v1/chat/completions"
curl -s "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d '{
  "model": "demo",
  "messages": [{"role": "system", "content": "You are a helpful assistant."},
               {"role": "user", "content": "What is 2+2?"}],
  "max_tokens": 24, "temperature": 0.7, "seed": 1}' | { command -v jq > /dev/null && jq . || cat; }

if [ "${KEEP_SERVING:-0}" = 1 ]; then
  echo "== serving on http://127.0.0.1:$port (Ctrl-C drains and stops)"
  wait $server
fi
