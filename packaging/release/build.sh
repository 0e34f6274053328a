#!/usr/bin/env bash
# Builds the tether binary we ship, for the machine's own target:
#
#   - glibc linked statically (static-pie): no shared libraries to load, map and relocate,
#     which is 1.5-2 MiB of RSS per process; the executable keeps ASLR;
#   - relative relocations packed (DT_RELR): start-up touches a few KiB of relocations, not
#     400 KiB;
#   - on x86_64 Linux, where rustc links with its own LLD, the functions an agent runs laid
#     out together in the order of packaging/release/tether.order (profile.sh writes it), so
#     that the few hundred KiB of code an agent uses fill few pages instead of touching most
#     of an 8 MiB text segment through the kernel's 64 KiB fault-around.
#
# A plain `cargo build --release` works the same, at about 7.7 MiB peak RSS for an agent
# instead of about 3.5 MiB. The binary lands in target/TARGET/release/tether; the path is
# printed last. Extra cargo arguments are passed on. With --check (as CI runs it), a binary
# that is not static or a list that is stale is an error.
set -euo pipefail
cd "$(dirname "$0")/../.."
check=0
if [ "${1:-}" = --check ]; then
  check=1
  shift
fi

target=$(rustc -vV | sed -n 's/^host: //p')
order="$PWD/packaging/release/tether.order"
flags="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs"
# rustc links x86_64-unknown-linux-gnu with its bundled LLD (since 1.90), which reads a symbol
# ordering file; names the file has but the binary lacks (another rustc, a changed crate) are
# skipped, so a stale list costs memory, never a failed build.
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

RUSTFLAGS="${RUSTFLAGS:-} $flags" cargo build --release --locked --target "$target" "$@" >&2
bin="$PWD/target/$target/release/tether"
# How much of the list this binary still has: names change with rustc and dependency
# updates, and what is missing is left where the linker puts it.
if [ "$ordered" = 1 ] && command -v nm >/dev/null; then
  found=$(nm --defined-only "$bin" | awk 'NR == FNR { want[$0] = 1; next } want[$3] { n++ } END { print n + 0 }' "$order" -)
  total=$(wc -l <"$order")
  echo "build.sh: $found of $total functions of tether.order found and grouped" >&2
  if [ $((found * 10)) -lt $((total * 9)) ]; then
    echo "build.sh: tether.order is stale; run packaging/release/profile.sh to renew it" >&2
    [ "$check" = 0 ] || exit 1
  fi
fi
if [ "$check" = 1 ] && readelf -d "$bin" | grep -q NEEDED; then
  echo "build.sh: $bin loads shared libraries" >&2
  exit 1
fi
echo "$bin"
