#!/usr/bin/env bash
# The test command: unit tests, integration tests that start the real binary, and the database
# tests against the local PostgreSQL and MariaDB (URLs from SIPSOCKD_TEST_PG_URL /
# SIPSOCKD_TEST_MYSQL_URL; unreachable servers fail the run under CI=true and are skipped loudly
# elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --all-targets
cargo nextest run --workspace --no-fail-fast "$@"
