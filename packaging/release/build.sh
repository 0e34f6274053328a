#!/usr/bin/env bash
# Builds the tether binary we ship, for the machine's own target:
#
#   - glibc linked statically (static-pie): no shared libraries to load, map and relocate,
#     which is 1.5-2 MiB of RSS per process; the executable keeps ASLR. Such a glibc cannot
#     load NSS modules, so this build reads users and groups from /etc/passwd and /etc/group
#     itself (--owner), and resolves hosts through the `files` and `dns` lookups that glibc
#     2.34 and later hold inside libc;
#   - relative relocations packed (DT_RELR), when the build machine's glibc (the one linked
#     in) is 2.36 or later and can apply them: start-up touches a few KiB of relocations, not
#     400 KiB;
#   - on x86_64 Linux, where rustc (1.90 and later) links with its own LLD, the functions an
#     agent runs laid out together in the order of packaging/release/tether.order (profile.sh
#     writes it), so that the few hundred KiB of code an agent uses fill few pages instead of
#     touching most of an 8 MiB text segment through the kernel's 64 KiB fault-around.
#
# A plain `cargo build --release` works the same, at about 7 MiB peak RSS for an agent
# instead of about 3.7 MiB. The binary's path is printed last (stdout); extra cargo arguments
# are passed on. With --check (as CI runs it) the binary must be static and must run, and a
# list that is stale for the rustc that wrote it is an error; with another rustc, whose
# names all differ, it is a warning.
set -euo pipefail
cd "$(dirname "$0")/../.."
check=0
if [ "${1:-}" = --check ]; then
  check=1
  shift
fi

target=$(rustc -vV | sed -n 's/^host: //p')
rustc_version=$(rustc -V)
order="$PWD/packaging/release/tether.order"
flags="-C target-feature=+crt-static"
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc 2\.\([0-9]*\).*/\1/p')
if [ "${glibc:-0}" -ge 36 ]; then
  flags="$flags -C link-arg=-Wl,-z,pack-relative-relocs"
fi
# Names the list has but the binary lacks (another rustc, a dependency update) are skipped:
# a stale list costs memory, never a failed link.
minor=$(rustc -vV | sed -n 's/^release: 1\.\([0-9]*\).*/\1/p')
ordered=0
if [ "$target" = x86_64-unknown-linux-gnu ] && [ "${minor:-0}" -ge 90 ] && [ -s "$order" ]; then
  flags="$flags -C link-arg=-Wl,--symbol-ordering-file=$order -C link-arg=-Wl,--no-warn-symbol-ordering"
  ordered=1
  export TETHER_BUILD="packaging/release/build.sh: static-pie, start-up code grouped"
else
  export TETHER_BUILD="packaging/release/build.sh: static-pie"
fi
# The list only takes effect when the binary is linked; cargo does not see it change.
if [ "${TETHER_RELINK:-0}" = 1 ]; then
  touch src/main.rs
fi

# The binary's path as cargo reports it (CARGO_TARGET_DIR, build.target-dir...).
bin=$(RUSTFLAGS="${RUSTFLAGS:-} $flags" cargo build --release --locked --target "$target" \
  --message-format=json-render-diagnostics "$@" |
  sed -n 's/.*"executable":"\([^"]*\/tether\)".*/\1/p' | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "build.sh: cargo reported no tether binary" >&2
  exit 1
fi

# How much of the list this binary still has.
if [ "$ordered" = 1 ]; then
  total=$(grep -vc '^#' "$order" || true)
  found=$(nm --defined-only "$bin" | awk 'NR == FNR { if ($0 !~ /^#/) want[$0] = 1; next } want[$3] { n++ } END { print n + 0 }' "$order" -)
  echo "build.sh: $found of $total functions of tether.order found and grouped" >&2
  if [ $((found * 10)) -lt $((total * 9)) ]; then
    written_by=$(sed -n 's/^# written with //p' "$order")
    echo "build.sh: tether.order is stale (written with ${written_by:-an unknown rustc}, this is $rustc_version); run packaging/release/profile.sh to renew it" >&2
    if [ "$check" = 1 ] && [ "$written_by" = "$rustc_version" ]; then
      exit 1
    fi
  fi
fi

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
