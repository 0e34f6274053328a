#!/usr/bin/env bash
# Rewrites packaging/release/tether.order: the functions a tether agent runs, in the order
# callgrind lists them, for build.sh to lay out together (that order keeps callers near their
# callees: sorted by name, the same list costs 0.3 MiB more). It builds the shipped binary,
# runs the agent's usual jobs under valgrind's callgrind (run with file and dir sources and a
# signal, run with env injection and restarts, watch with a pidfile and an exec hook, run fed
# by a node over WebSocket), keeps the names callgrind saw that the binary defines, and
# relinks.
#
# Run it after upgrading rustc, after adding, removing or upgrading a dependency, or after
# large changes to the agent; build.sh prints the resulting binary. Needs valgrind. Takes a
# few minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "profile.sh needs valgrind" >&2; exit 1; }

order="$PWD/packaging/release/tether.order"
bin=$(packaging/release/build.sh)
w=$(mktemp -d "${TMPDIR:-/tmp}/tether-order.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$w"
}
trap cleanup EXIT

# Waits (up to 60 s) until FILE exists and contains PATTERN.
wait_for() {
  local file=$1 pattern=$2 i
  for ((i = 0; i < 600; i++)); do
    if [ -e "$file" ] && grep -q -- "$pattern" "$file" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "profile.sh: timed out waiting for '$pattern' in $file" >&2
  exit 1
}

# Runs tether under callgrind in the background; its pid goes to $agent.
n=0
agent_start() {
  n=$((n + 1))
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$w/cg.$n" -q \
    "$bin" "$@" >"$w/log.$n" 2>&1 &
  agent=$!
  pids+=("$agent")
}
agent_stop() {
  kill -TERM "$agent"
  wait "$agent" || true
}

child="$bin bench-child --record $w/signals"
mkdir -p "$w/dir" "$w/out"
{
  echo '# profile'
  for i in $(seq 1 200); do echo "KEY_$i=value-$i"; done
  echo "export QUOTED=\"a \\\"b\\\" \\n c\""
  echo "SINGLE='x y'"
} >"$w/a.env"
echo '{"JSON_KEY": "v", "OTHER": "w"}' >"$w/b.json"
printf 'secret-1' >"$w/dir/TOKEN"

# 1. run: dotenv, JSON and dir sources, dotenv output, a reload signal.
agent_start run --source "file:$w/a.env" --source "file:$w/b.json" --source "dir:$w/dir" \
  --output "$w/out/app.env" --format dotenv --no-env --on-change signal:USR1 \
  --reload-grace 0 --debounce 0 --max-wait 0 --log-level warn -- $child
wait_for "$w/out/app.env" 'TOKEN='
for i in 1 2 3; do
  sed -i "s/^KEY_1=.*/KEY_1=changed-$i/" "$w/a.env"
  wait_for "$w/out/app.env" "KEY_1=.\?changed-$i"
done
printf 'secret-2' >"$w/dir/TOKEN.tmp" && mv "$w/dir/TOKEN.tmp" "$w/dir/TOKEN"
wait_for "$w/out/app.env" 'secret-2'
agent_stop

# 2. run: values in the child's environment, restart on change, JSON and shell outputs.
cat >"$w/run.toml" <<TOML
source = ["file:$w/a.env"]
on_change = "restart"
debounce = "0s"
stop_timeout = "5s"
[[output]]
path = "$w/out/app.json"
format = "json"
[[output]]
path = "$w/out/app.sh"
format = "shell"
TOML
agent_start run --config "$w/run.toml" --log-format json -- $bin bench-child --env-file "$w/child.env"
wait_for "$w/child.env" 'KEY_2=value-2'
sed -i 's/^KEY_2=.*/KEY_2=restarted/' "$w/a.env"
wait_for "$w/child.env" 'KEY_2=restarted'
agent_stop

# 3. watch: dir output by symlink swap, a pidfile's process signalled, an exec hook.
$child >/dev/null &
pids+=($!)
echo $! >"$w/app.pid"
agent_start watch --source "file:$w/a.env" --output "$w/out/dir" --format dir \
  --signal-pidfile "$w/app.pid" --debounce 0
wait_for "$w/out/dir/KEY_3" 'value-3'
sed -i 's/^KEY_3=.*/KEY_3=watched/' "$w/a.env"
wait_for "$w/out/dir/KEY_3" 'watched'
agent_stop
agent_start watch --source "file:$w/a.env" --output "$w/out/hook.env" \
  --on-change "exec:touch $w/hook" --debounce 0
wait_for "$w/log.$n" 'first render'
sed -i 's/^KEY_3=.*/KEY_3=hooked/' "$w/a.env"
wait_for "$w/log.$n" 'hook finished'
agent_stop

# 4. run fed by a node: subscribe, catch up, live change sets, acknowledgements.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
"$bin" serve --listen "127.0.0.1:$port" --data "$w/data" >"$w/serve.log" 2>&1 &
pids+=($!)
for ((i = 0; i < 100; i++)); do
  "$bin" put --server "$url" --env app READY=1 >/dev/null 2>&1 && break
  sleep 0.1
done
agent_start run --server "$url" --env app --state-dir "$w/state" --output "$w/out/net.env" \
  --no-env --on-change signal:HUP --reload-grace 0 --debounce 0 -- $child
wait_for "$w/out/net.env" 'READY'
for i in 1 2 3; do
  "$bin" put --server "$url" --env app "NET=v$i" >/dev/null
  "$bin" put --server "$url" --env app --secret "PASSWORD=p$i" >/dev/null
  wait_for "$w/out/net.env" "PASSWORD=.\?p$i"
done
agent_stop

# Names callgrind saw ("fn=(id) name", "cfn=(id) name"), first listed first, kept when the
# binary defines them as functions; the job that "tether bench" measures comes first.
nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$w/defined"
for ((i = 1; i <= n; i++)); do
  sed -n 's/^c\?fn=([0-9]*) \(.*\)$/\1/p' "$w/cg.$i"
done | sed "s/'[0-9]*$//" | awk '!seen[$0]++' >"$w/seen"
# glibc (memcpy, strlen...) and ring (SHA-256...) pick a variant of some functions by CPU
# when they start; valgrind's virtual CPU lacks some features, so for each such function
# seen, every variant is kept: "__memmove_" + ISA, "ring_core_V__name_" + ISA.
awk 'function family(s,  t) {
       if (s ~ /^__[a-z0-9]+_(sse|ssse|avx|evex|erms)/) { t = substr(s, 3); return "__" substr(t, 1, index(t, "_")) }
       if (s ~ /^ring_core_.*_(nohw|hw|ssse3|avx|avx2)$/) { t = s; sub(/_[a-z0-9]+$/, "_", t); return t }
       return "" }
     NR == FNR { defined[$0] = 1; f = family($0); if (f != "") variants[f] = variants[f] " " $0; next }
     defined[$0] && !out[$0]++ { print }
     (f = family($0)) != "" { n = split(variants[f], v, " "); for (i = 1; i <= n; i++) if (!out[v[i]]++) print v[i] }' \
  "$w/defined" "$w/seen" >"$order.new"
sed -i "1i # written with $(rustc -V)" "$order.new"
mv "$order.new" "$order"
echo "profile.sh: $(wc -l <"$order") functions in $order" >&2
TETHER_RELINK=1 packaging/release/build.sh
