#!/usr/bin/env bash
# Checks tether's systemd units with systemd-analyze (systemd 252, Debian bookworm):
#   - `verify` is clean (no output at all): keys, values, and the binaries and man page the
#     units name are where the .deb puts them (/usr/bin/tether, /bin/kill, tether(1));
#   - `security --offline=true` gives an exposure of 4.0 or less, and exactly the figure
#     the unit's top comment states.
#
#   packaging/systemd/check.sh ROOT   the units installed in ROOT, e.g. a root the .deb was
#                                     installed in (packaging/deb/check.sh does this)
#   packaging/systemd/check.sh        the units in this directory, in a scratch root laid out
#                                     as the .deb lays it out: this host's systemd units, its
#                                     /bin/kill, and the full build (packaging/release/build.sh
#                                     full, or $TETHER_BIN) with its man page
set -euo pipefail
cd "$(dirname "$0")/../.."
units=(tether-node.service tether-app.service tether-sidecar.service)
max=40 # exposure x 10

if [ $# -gt 0 ]; then
  root=$(cd "$1" && pwd)
else
  bin=${TETHER_BIN:-$(packaging/release/build.sh full | tail -n 1)}
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/usr/lib/systemd" "$root/usr/bin" "$root/usr/share/man/man1"
  ln -s usr/lib "$root/lib"
  ln -s usr/bin "$root/bin"
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
  cp "$bin" "$root/usr/bin/tether"
  cp "$(readlink -f /bin/kill)" "$root/usr/bin/kill"
  "$bin" man | gzip -9n >"$root/usr/share/man/man1/tether.1.gz"
  for u in "${units[@]}"; do
    cp "packaging/systemd/$u" "$root/usr/lib/systemd/system/$u"
  done
fi

failed=0
for u in "${units[@]}"; do
  file="$root/lib/systemd/system/$u"
  if [ ! -f "$file" ]; then
    echo "check.sh: $file is missing" >&2
    failed=1
    continue
  fi
  # Documentation=man:tether(1) is checked with man(1), which knows nothing of --root.
  if ! out=$(MANPATH="$root/usr/share/man" systemd-analyze verify --root="$root" "$u" 2>&1) ||
    [ -n "$out" ]; then
    echo "check.sh: systemd-analyze verify $u is not clean:" >&2
    echo "$out" >&2
    failed=1
  fi
  report=$(systemd-analyze security --offline=true --root="$root" "$u" 2>&1) || true
  got=$(sed -n 's/^→ Overall exposure level for .*: \([0-9]*\.[0-9]\).*/\1/p' <<<"$report")
  stated=$(head -n 5 "$file" | sed -n 's/^#.*exposure \([0-9]*\.[0-9]\) .*/\1/p' | head -n 1)
  if [ -z "$got" ]; then
    echo "check.sh: systemd-analyze security $u gave no exposure:" >&2
    echo "$report" >&2
    failed=1
  elif [ "${got/./}" -gt "$max" ]; then
    echo "check.sh: $u: exposure $got is over 4.0:" >&2
    grep '✗' <<<"$report" >&2 || true
    failed=1
  elif [ "$got" != "$stated" ]; then
    echo "check.sh: $u: exposure is $got, its comment says ${stated:-nothing}" >&2
    failed=1
  else
    echo "$u: verify clean, exposure $got"
  fi
done
exit "$failed"
