#!/usr/bin/env bash
# Builds a tether binary we ship, for the machine's own target:
#
#   build.sh [--check] agent [CARGO ARGS]   `run`, `watch`, `check` only: what runs beside
#                                           every app (sidecar image, Kubernetes example)
#   build.sh [--check] full  [CARGO ARGS]   every verb: the node (`serve`) and the admin verbs
#
# Both are an ordinary release build with two linker flags:
#   - glibc linked statically (static-pie): no shared libraries to load, map and relocate,
#     which is 1.5-2 MiB of RSS per process; the executable keeps ASLR. Such a glibc cannot
#     load NSS modules, so this build reads users and groups from /etc/passwd and /etc/group
#     itself (--owner), and resolves hosts through the `files` and `dns` lookups that glibc
#     2.34 and later hold inside libc;
#   - relative relocations packed (DT_RELR), when the build machine's glibc (the one linked
#     in) is 2.36 or later and can apply them: start-up touches a few KiB of relocations, not
#     hundreds.
#
# The binary's path is printed last (stdout). With --check (as CI runs it) the binary must be
# static, must run, and an unknown --owner must be a clear error (not an NSS crash).
set -euo pipefail
cd "$(dirname "$0")/../.."
check=0
if [ "${1:-}" = --check ]; then
  check=1
  shift
fi
case "${1:-}" in
  agent) kind=agent; features=(--no-default-features --profile agent) ;;
  full) kind=full; features=(--release) ;;
  *) echo "usage: build.sh [--check] agent|full [CARGO ARGS]" >&2; exit 64 ;;
esac
shift

target=$(rustc -vV | sed -n 's/^host: //p')
flags="-C target-feature=+crt-static"
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc 2\.\([0-9]*\).*/\1/p')
if [ "${glibc:-0}" -ge 36 ]; then
  flags="$flags -C link-arg=-Wl,-z,pack-relative-relocs"
fi

# The binary's path as cargo reports it (CARGO_TARGET_DIR, build.target-dir...).
bin=$(RUSTFLAGS="${RUSTFLAGS:-} $flags" cargo build --locked --target "$target" --bin tether "${features[@]}" \
  --message-format=json-render-diagnostics "$@" |
  sed -n 's/.*"executable":"\([^"]*\/tether\)".*/\1/p' | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "build.sh: cargo reported no tether binary" >&2
  exit 1
fi
# Both builds are cargo's `tether`: keep each under its own name, so both can be measured.
cp "$bin" "$bin-$kind"
bin="$bin-$kind"

if [ "$check" = 1 ]; then
  dynamic=$(readelf -d "$bin") || { echo "build.sh: readelf failed" >&2; exit 1; }
  if grep -q NEEDED <<<"$dynamic"; then
    echo "build.sh: $bin loads shared libraries" >&2
    exit 1
  fi
  # It starts (relocations applied), and an unknown --owner is a clear error, not an NSS crash.
  "$bin" --version >/dev/null
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "A=1" >"$tmp/s.env"
  rc=0
  "$bin" run --source "file:$tmp/s.env" --output "$tmp/o.env" --owner no-such-user-tether \
    --no-env -- true 2>"$tmp/err" || rc=$?
  if [ "$rc" != 64 ] || ! grep -q 'no such user' "$tmp/err"; then
    echo "build.sh: --owner with an unknown user gave exit $rc: $(cat "$tmp/err")" >&2
    exit 1
  fi
fi
echo "$bin"
