#!/usr/bin/env bash
# scripts/deb-check.sh: the Debian package, end to end, on this machine (as root; CI runs it).
#
# Builds the .deb with `cargo deb` (installing cargo-deb when missing), installs it with `dpkg -i`,
# checks what it put in place (binary, unit, configuration, tmpfiles.d, the sipsockd user,
# /run/sipsockd and the SQLite table made by postinst), starts the installed binary against its
# installed configuration, adds a socket, reloads it through MI (`sipsockd mi sockets_reload`),
# sends that socket an OPTIONS, stops the daemon with SIGTERM, then purges the package and
# checks that it is gone. Refuses to run when a sipsockd package is already installed.
#
# usage: scripts/deb-check.sh [--no-build]   (--no-build: package target/release/sipsockd as is)
# Bounds: every wait has a deadline; traffic only to 127.0.0.1; the daemon it starts is stopped
# by its pid and the package purged on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[deb-check] $*"; }
fail() { say "FAILED: $*"; exit 1; }

build=()
[ "${1:-}" = "--no-build" ] && build=(--no-build)

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
if dpkg-query -W -f='${Status}' sipsockd 2>/dev/null | grep -q "installed"; then
    fail "a sipsockd package is already installed here: not touching it"
fi
if ! command -v cargo-deb >/dev/null 2>&1; then
    say "installing cargo-deb"
    cargo install --locked cargo-deb
fi

say "building the package"
out=$(mktemp)
cargo deb "${build[@]}" >"$out" || { cat "$out"; fail "cargo deb failed"; }
deb=$(grep -E '\.deb$' "$out" | tail -n 1)
rm -f "$out"
[ -f "$deb" ] || fail "cargo deb made no .deb"
say "package: $deb ($(du -h "$deb" | cut -f1))"

conf=/etc/sipsockd/sipsockd.toml
cli() { /usr/bin/sipsockd --config "$conf" "$@"; }
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    if dpkg-query -W sipsockd >/dev/null 2>&1; then dpkg --purge sipsockd >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

say "dpkg -i"
dpkg -i "$deb"

for f in /usr/bin/sipsockd "$conf" /usr/lib/systemd/system/sipsockd.service \
    /usr/lib/tmpfiles.d/sipsockd.conf /usr/share/doc/sipsockd/examples/sipsockd.toml; do
    [ -e "$f" ] || fail "$f is not installed"
done
getent passwd sipsockd >/dev/null || fail "no sipsockd user"
[ "$(stat -c %U:%G /run/sipsockd)" = "sipsockd:sipsockd" ] || fail "/run/sipsockd is not the daemon's"
[ "$(stat -c %U /var/lib/sipsockd/sipsockd.db)" = "sipsockd" ] || fail "postinst made no database"
[ "$(stat -c %a:%G "$conf")" = "640:sipsockd" ] || fail "$conf is not 0640 root:sipsockd"
grep -q '^ExecStart=/usr/bin/sipsockd --config /etc/sipsockd/sipsockd.toml run$' \
    /usr/lib/systemd/system/sipsockd.service || fail "the unit does not run the installed binary"

port=$(python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cli db add "udp:127.0.0.1:$port" --tag deb-check

say "starting /usr/bin/sipsockd against $conf"
log=$(mktemp)
/usr/bin/sipsockd --config "$conf" run 2>"$log" &
pid=$!
ready=0
for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { cat "$log"; fail "the daemon exited at start"; }
    if [ -p /run/sipsockd/fifo ] && cli mi --timeout 5 version >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
done
[ "$ready" = 1 ] || { cat "$log"; fail "the daemon did not answer on its FIFO within 30 s"; }
user=$(ps -o user= -p "$pid" | tr -d ' ')
[ "$user" = sipsockd ] || fail "the daemon runs as $user, not sipsockd"

say "reloading through MI"
reply=$(cli mi sockets_reload)
[ "$reply" = '"OK"' ] || fail "sockets_reload answered $reply"
cli mi sockets_list | grep -q "udp:127.0.0.1:$port" || fail "sockets_list lacks the socket"
cli options "udp:127.0.0.1:$port" --timeout 10 | head -n 1 | grep -q '^SIP/2.0 200' ||
    fail "no 200 OK from udp:127.0.0.1:$port"

say "stopping"
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=""
[ "$status" = 0 ] || { cat "$log"; fail "the daemon exited $status on SIGTERM"; }
[ ! -e /run/sipsockd/fifo ] && [ ! -e /run/sipsockd/shm ] || fail "FIFO or shm left in /run/sipsockd"
rm -f "$log"

say "dpkg --purge"
dpkg --purge sipsockd
for f in /usr/bin/sipsockd /etc/sipsockd /var/lib/sipsockd /run/sipsockd \
    /usr/lib/systemd/system/sipsockd.service; do
    [ ! -e "$f" ] || fail "$f is still there after purge"
done
say "OK: built, installed, started as sipsockd, reloaded through MI, answered, stopped, purged"
