#!/usr/bin/env bash
# tether's main job on the embedded default, end to end, on one machine with nothing else
# running: a node with its embedded SQLite store, an agent supervising a small app, three
# changes, and the app reacting to each. Stops by itself and cleans up, also when a step
# fails or it is interrupted: the node, the agent and the app are stopped (each in its own
# process group) and the scratch directory is removed.
#
# TETHER_BIN=path/to/tether uses that binary instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${TETHER_BIN:-}" ]; then
  bin=$(realpath "$TETHER_BIN")
else
  cargo build --release --quiet
  bin="$PWD/target/release/tether"
fi
work=$(mktemp -d /dev/shm/tether-demo.XXXXXX 2>/dev/null || mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 17070)
url="http://127.0.0.1:$port"

# The node and the agent each run in a session of their own (setsid: its process group is
# its pid), which cleanup stops as a whole: TERM, then KILL if it is still there after 5s.
stop() {
  local pid=$1
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  [ -n "${agent:-}" ] && stop "$agent"
  [ -n "${node:-}" ] && stop "$node"
  rm -rf "$work"
  [ "$status" -ne 0 ] && echo "== demo failed (exit $status); everything it started is stopped" >&2
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Wait (at most 10s) until the app's log has a line matching $1.
wait_app() {
  for _ in $(seq 200); do
    grep -q -- "$1" "$work/app.log" 2>/dev/null && return 0
    kill -0 "$agent" 2>/dev/null || { echo "the agent exited" >&2; return 1; }
    sleep 0.05
  done
  echo "the app did not show \"$1\" within 10s" >&2
  return 1
}
# Print the app's log lines not printed yet.
shown=0
show_app() {
  local lines
  lines=$(wc -l <"$work/app.log")
  tail -n "+$((shown + 1))" "$work/app.log" | head -n "$((lines - shown))"
  shown=$lines
}

echo "== node (embedded store in $work/data) on $url"
setsid "$bin" serve --listen "127.0.0.1:$port" --data "$work/data" --log-level warn &
node=$!
for _ in $(seq 200); do curl -sf "$url/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
curl -sf "$url/readyz" >/dev/null

"$bin" put --server "$url" --env demo GREETING=hello DB_PASSWORD=s3cret --secret >/dev/null

# The app: prints its settings at start and whenever it gets SIGHUP.
cat > "$work/app.sh" <<'APP'
#!/bin/sh
show() { echo "app: GREETING from file = $(grep GREETING "$CONF")"; }
trap show HUP
show
# (The HUP goes to the app's whole process group: its sleep ignores it.)
while :; do (trap '' HUP; exec sleep 0.1) & wait $!; done
APP
chmod +x "$work/app.sh"

echo "== agent: tether run --server $url --env demo --output $work/app.env -- app.sh"
CONF="$work/app.env" setsid "$bin" run --server "$url" --env demo --state-dir "$work/state" \
  --output "$work/app.env" --no-env --on-change signal:HUP --debounce 50ms --log-level warn \
  -- "$work/app.sh" >"$work/app.log" &
agent=$!
wait_app "GREETING=hello"
show_app

# Each change waits for the app's reaction before the next one: a HUP for an app younger
# than the reload grace (1s) is held until then, and two changes in that time would merge.
for word in bonjour hallo ciao; do
  echo "== tether put GREETING=$word"
  "$bin" put --server "$url" --env demo GREETING="$word" >/dev/null
  wait_app "GREETING=$word"
  show_app
done
echo "== rollout status"
"$bin" status --server "$url" --env demo --watch --timeout 10s
echo "== done"
