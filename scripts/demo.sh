#!/usr/bin/env bash
# tether's main job on the embedded default, end to end, on one machine with nothing else
# running: a node with its embedded SQLite store, an agent supervising a small app, three
# changes, and the app reacting to each. Stops by itself and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin="$PWD/target/release/tether"
work=$(mktemp -d /dev/shm/tether-demo.XXXXXX 2>/dev/null || mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 17070)
url="http://127.0.0.1:$port"
cleanup() {
  [ -n "${agent:-}" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  [ -n "${node:-}" ] && kill "$node" 2>/dev/null && wait "$node" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

echo "== node (embedded store in $work/data) on $url"
"$bin" serve --listen "127.0.0.1:$port" --data "$work/data" --log-level warn &
node=$!
for _ in $(seq 100); do curl -sf "$url/readyz" >/dev/null 2>&1 && break; sleep 0.05; done

"$bin" put --server "$url" --env demo GREETING=hello DB_PASSWORD=s3cret --secret >/dev/null

# The app: prints its settings at start and whenever it gets SIGHUP.
cat > "$work/app.sh" <<'APP'
#!/bin/sh
show() { echo "app: GREETING from file = $(grep GREETING "$CONF")"; }
trap show HUP
show
while :; do sleep 0.1 & wait $!; done
APP
chmod +x "$work/app.sh"

echo "== agent: tether run --server $url --env demo --output $work/app.env -- app.sh"
CONF="$work/app.env" "$bin" run --server "$url" --env demo --state-dir "$work/state" \
  --output "$work/app.env" --no-env --on-change signal:HUP --debounce 50ms --log-level warn \
  -- "$work/app.sh" &
agent=$!
for _ in $(seq 100); do [ -s "$work/app.env" ] && break; sleep 0.05; done
sleep 0.3

for word in bonjour hallo ciao; do
  echo "== tether put GREETING=$word"
  "$bin" put --server "$url" --env demo GREETING="$word" >/dev/null
  sleep 0.4
done
echo "== rollout status"
"$bin" status --server "$url" --env demo
echo "== done"
