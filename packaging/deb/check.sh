#!/usr/bin/env bash
# Installs tether's .deb with `dpkg -i` in a fresh Debian bookworm root and checks it there:
#
#   packaging/deb/check.sh [DEB]     (builds it with packaging/deb/build.sh when not given)
#
# The root is `debootstrap --variant=minbase` plus systemd (whose units `systemd-analyze
# verify` needs) and procps (/bin/kill, which the units' ExecReload= runs), in a temporary
# directory, removed at the end. In it: tether runs, the `tether` system user exists, every
# file is where it belongs and the units are installed but not enabled; the installed units
# pass packaging/systemd/check.sh; a second install changes nothing; a purge removes what
# the package made and locks the account; a reinstall unlocks it. Needs root, debootstrap
# and Debian's package mirror. Prints the time of each step (stderr).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

start=$SECONDS
step() {
  echo "[deb check +$((SECONDS - start))s] $*" >&2
}
fail() {
  echo "deb check: $*" >&2
  exit 1
}

if [ $# -gt 0 ]; then
  deb=$(readlink -f "$1")
else
  step "building the .deb"
  deb=$(packaging/deb/build.sh | tail -n 1)
fi
[ -f "$deb" ] || fail "no package at $deb"
version=$(dpkg-deb --field "$deb" Version)

root=$(mktemp -d "${TMPDIR:-/var/tmp}/tether-deb-root.XXXXXX")
trap 'rm -rf "$root"' EXIT
step "debootstrap bookworm into $root"
if ! debootstrap --variant=minbase --include=systemd,procps bookworm "$root" \
  >"$root.log" 2>&1; then
  tail -n 20 "$root.log" >&2
  rm -f "$root.log"
  fail "debootstrap failed"
fi
rm -f "$root.log"
in_root() {
  chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

step "dpkg -i $(basename "$deb")"
cp "$deb" "$root/tmp/tether.deb"
in_root dpkg -i /tmp/tether.deb >/dev/null || fail "dpkg -i failed"

step "checking the installed package"
out=$(in_root tether --version) || fail "tether --version failed in the root"
[ "$out" = "tether ${version%-*}" ] || fail "tether --version says '$out', the package is $version"
in_root tether serve --help >/dev/null || fail "the packaged binary has no serve: not the full build"

user=$(in_root getent passwd tether) || fail "no tether user"
IFS=: read -r _ _ uid gid _ home shell <<<"$user"
[ "$uid" -lt 1000 ] || fail "tether is not a system user: uid $uid"
[ "$home" = /var/lib/tether ] && [ "$shell" = /usr/sbin/nologin ] || fail "tether user: $user"
group=$(in_root getent group tether) || fail "no tether group"
[ "$(cut -d: -f3 <<<"$group")" = "$gid" ] || fail "tether's primary group is not tether: $user / $group"

for f in usr/bin/tether \
  usr/share/man/man1/tether.1.gz \
  usr/share/bash-completion/completions/tether \
  usr/share/zsh/vendor-completions/_tether \
  usr/share/fish/vendor_completions.d/tether.fish \
  usr/share/doc/tether/examples/run.toml \
  usr/share/doc/tether/examples/watch.toml \
  usr/share/doc/tether/examples/serve.toml \
  usr/share/doc/tether/copyright; do
  [ -s "$root/$f" ] || fail "/$f is missing or empty"
done
[ -d "$root/etc/tether" ] || fail "/etc/tether is missing"
# The man page and completions are those of the packaged binary.
diff <(zcat "$root/usr/share/man/man1/tether.1.gz") <(in_root tether man) >/dev/null ||
  fail "the packaged man page is not what the packaged binary prints"
for shell_file in bash:usr/share/bash-completion/completions/tether \
  zsh:usr/share/zsh/vendor-completions/_tether \
  fish:usr/share/fish/vendor_completions.d/tether.fish; do
  diff "$root/${shell_file#*:}" <(in_root tether completions "${shell_file%%:*}") >/dev/null ||
    fail "/${shell_file#*:} is not what the packaged binary prints"
done
bash -n "$root/usr/share/bash-completion/completions/tether" || fail "bash completion: syntax"
for u in tether-node tether-app tether-sidecar; do
  cmp -s "$root/lib/systemd/system/$u.service" "packaging/systemd/$u.service" ||
    fail "/lib/systemd/system/$u.service differs from packaging/systemd/$u.service"
  state=$(in_root systemctl is-enabled "$u.service" 2>/dev/null) || true
  [ "$state" = disabled ] || fail "$u.service is '$state' after install, not disabled"
done

step "systemd-analyze on the installed units"
packaging/systemd/check.sh "$root" || fail "the installed units do not pass"

step "second dpkg -i (idempotent)"
in_root dpkg -i /tmp/tether.deb >/dev/null || fail "a second dpkg -i failed"
[ "$(in_root getent passwd tether)" = "$user" ] || fail "a reinstall changed the tether user"

step "dpkg --purge"
in_root systemctl enable tether-node.service >/dev/null 2>&1 || fail "systemctl enable failed"
[ -L "$root/etc/systemd/system/multi-user.target.wants/tether-node.service" ] ||
  fail "systemctl enable made no link"
install -d -o "$uid" -g "$gid" "$root/var/lib/tether"
echo state >"$root/var/lib/tether/tether.db"
in_root dpkg --purge tether >/dev/null || fail "dpkg --purge failed"
for f in usr/bin/tether usr/share/man/man1/tether.1.gz lib/systemd/system/tether-node.service \
  usr/share/doc/tether var/lib/tether etc/tether \
  etc/systemd/system/multi-user.target.wants/tether-node.service; do
  [ ! -e "$root/$f" ] && [ ! -L "$root/$f" ] || fail "/$f is still there after a purge"
done
expire=$(in_root getent shadow tether | cut -d: -f8)
[ "$expire" = 1 ] || fail "the tether account is not locked after a purge (expire '$expire')"

step "dpkg -i after the purge"
in_root dpkg -i /tmp/tether.deb >/dev/null || fail "dpkg -i after a purge failed"
[ "$(in_root getent passwd tether)" = "$user" ] || fail "the tether user changed across a purge"
expire=$(in_root getent shadow tether | cut -d: -f8)
[ -z "$expire" ] || fail "the tether account is still locked after a reinstall"

cd "$repo"
step "ok: $deb"
