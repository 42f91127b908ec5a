#!/usr/bin/env bash
# The test command: unit tests, integration tests that start the real binary, the database tests
# against the local PostgreSQL and MariaDB (URLs from SIPSOCKD_TEST_PG_URL /
# SIPSOCKD_TEST_MYSQL_URL), and the tests that drive real peers (SIPp, opensips-mi, opensips-cli).
#
# It installs what it can that the tests need: cargo-nextest (always), the OpenSIPS MI clients
# (pip) and SIPp (apt, as root). A test that still cannot run its server or peer fails under
# CI=true; elsewhere it appends "name<TAB>reason" to $SIPSOCKD_SKIP_FILE, and the skips are listed
# here at the end. The exit status is nextest's.
set -euo pipefail
cd "$(dirname "$0")/.."

note() { echo "[test.sh] $*" >&2; }

if ! command -v cargo-nextest >/dev/null 2>&1; then
  note "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

if ! command -v opensips-mi >/dev/null 2>&1 || ! command -v opensips-cli >/dev/null 2>&1; then
  note "installing the OpenSIPS MI clients (opensips-mi, opensips-cli)"
  pip=(python3 -m pip install -q)
  [ "$(id -u)" = 0 ] || pip+=(--user)
  # A distribution's own Python may refuse outside a venv (PEP 668): say we mean it.
  if ! "${pip[@]}" opensips opensipscli && ! "${pip[@]}" --break-system-packages opensips opensipscli; then
    note "could not install the OpenSIPS MI clients: the tests that drive them will be skipped"
  fi
  export PATH="$HOME/.local/bin:$PATH"
  hash -r
fi

if ! command -v sipp >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    note "installing SIPp (sip-tester)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester; }; then
      note "could not install SIPp: the tests that drive it will be skipped"
    fi
    hash -r
  else
    note "SIPp is missing and this is not root with apt-get: the tests that drive it will be skipped"
  fi
fi

mkdir -p target
export SIPSOCKD_SKIP_FILE="$PWD/target/sipsockd-skipped.tsv"
: >"$SIPSOCKD_SKIP_FILE"

cargo build --all-targets
status=0
cargo nextest run --workspace --no-fail-fast "$@" || status=$?

# One line per skip; a test that skipped twice is listed once.
skipped=$(awk '!seen[$0]++' "$SIPSOCKD_SKIP_FILE")
if [ -n "$skipped" ]; then
  echo
  echo "$(printf '%s\n' "$skipped" | wc -l) tests skipped:"
  printf '%s\n' "$skipped" | while IFS=$'\t' read -r name reason; do
    echo "  $name (${reason:-no reason given})"
  done
fi
exit "$status"
