#!/usr/bin/env bash
# A local tether cluster to try cluster mode: redis-server on a loopback port and three
# nodes on 127.0.0.1:7071, 7072 and 7073 sharing it. Data and logs go under DIR (default
# ./tether-cluster). Runs in the foreground; Ctrl-C stops everything it started.
#
#   packaging/local-cluster.sh [DIR]
#
# Environment: TETHER (the binary; default: `tether` on PATH, else this checkout's
# target/release or target/debug build), REDIS_PORT (default 6390), NODE_PORTS (default
# "7071 7072 7073"). Nodes run without tokens (dev mode), which they allow on loopback only.
set -euo pipefail

dir=${1:-./tether-cluster}
redis_port=${REDIS_PORT:-6390}
read -r -a ports <<<"${NODE_PORTS:-7071 7072 7073}"
root=$(cd "$(dirname "$0")/.." && pwd)

bin=${TETHER:-}
if [ -z "$bin" ]; then
  if command -v tether >/dev/null 2>&1; then
    bin=$(command -v tether)
  elif [ -x "$root/target/release/tether" ]; then
    bin=$root/target/release/tether
  elif [ -x "$root/target/debug/tether" ]; then
    bin=$root/target/debug/tether
  else
    echo "no tether binary: build one (cargo build --release) or set TETHER" >&2
    exit 1
  fi
fi
command -v redis-server >/dev/null 2>&1 || { echo "redis-server is not installed" >&2; exit 1; }

mkdir -p "$dir/redis" "$dir/logs"
dir=$(cd "$dir" && pwd)
pids=()
cleanup() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    echo
    echo "stopping the nodes and redis"
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Wait until URL answers 200, or fail showing LOG.
wait_ready() {
  local url=$1 log=$2
  for _ in $(seq 200); do
    curl -sf "$url" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "not ready: $url; last lines of $log:" >&2
  tail -n 20 "$log" >&2
  exit 1
}

# Redis keeps its data in DIR/redis (append-only file), so a restart of this script keeps
# what was written.
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir/redis" --appendonly yes \
  --save "" >"$dir/logs/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.05
done
redis-cli -p "$redis_port" ping >/dev/null 2>&1 || {
  echo "redis did not start; last lines of $dir/logs/redis.log:" >&2
  tail -n 20 "$dir/logs/redis.log" >&2
  exit 1
}

urls=()
i=0
for port in "${ports[@]}"; do
  i=$((i + 1))
  "$bin" serve --listen "127.0.0.1:$port" --redis "redis://127.0.0.1:$redis_port" \
    --node-id "node$i" >"$dir/logs/node$i.log" 2>&1 &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
done
i=0
for url in "${urls[@]}"; do
  i=$((i + 1))
  wait_ready "$url/readyz" "$dir/logs/node$i.log"
done

servers=""
for url in "${urls[@]}"; do servers+=" --server $url"; done
cat <<EOF
tether cluster is up ($bin)
  redis   redis://127.0.0.1:$redis_port   data in $dir/redis
  nodes   ${urls[*]}
  logs    $dir/logs/

Write through any node:
  tether put --server ${urls[0]} --env dev GREETING=hello
Point an agent at all of them (it fails over among them; any node will do):
  tether run$servers \\
    --env dev --output app.env --on-change signal:HUP -- your-app
See who is connected where, and on which version:
  tether status --server ${urls[1]} --env dev

Ctrl-C stops everything.
EOF
wait -n "${pids[@]}" || true
echo "a process of the cluster exited; see $dir/logs/" >&2
exit 1
