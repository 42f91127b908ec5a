#!/usr/bin/env bash
# Run every cargo-fuzz target of fuzz/ for a bounded time each and report what the runs covered.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Exits non-zero when a target crashes (the input is kept in fuzz/artifacts/TARGET/ and named in
# the summary), when a run does not end in time, or when the build fails.
#
# Only a stable toolchain is needed: cargo-fuzz passes nightly-only flags (-Zsanitizer,
# sanitizer-coverage passes), which RUSTC_BOOTSTRAP=1 lets the stable compiler accept.
# libfuzzer-sys builds libFuzzer itself with the system C++ compiler.
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none; when the AddressSanitizer build fails the script
#                   says so and falls back to none.
#   FUZZ_ARGS       extra libFuzzer options for every run (e.g. "-max_len=65536").
#
# Seeds kept in the repo: fuzz/corpus/TARGET/ (read only here). What a run finds goes to
# fuzz/target/corpus/TARGET/ (not in the repo) and seeds the next run on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
  echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi

export RUSTC_BOOTSTRAP=1
log() { echo "[fuzz] $*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
((${#targets[@]})) || { log "no fuzz target found"; exit 2; }

# Debug assertions on: overflow and the like are crashes too. Everything is built first, so that a
# build failure is told apart from a crash, and the runs below start the built binaries directly.
sanitizer=${FUZZ_SANITIZER:-address}
build() { cargo fuzz build --debug-assertions --sanitizer "$sanitizer" "$1"; }
log "building ${targets[*]} (sanitizer: $sanitizer)"
for t in "${targets[@]}"; do
  if ! build "$t"; then
    if [[ $sanitizer == address ]]; then
      log "the AddressSanitizer build of $t failed; building without a sanitizer (memory errors"
      log "in unsafe code will then only be caught when they crash)"
      sanitizer=none
      for u in "${targets[@]}"; do build "$u" || { log "BUILD FAILED: $u"; exit 2; }; done
      break
    fi
    log "BUILD FAILED: $t"
    exit 2
  fi
done
bindir=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release
# What cargo fuzz run sets; leaks count as crashes (LeakSanitizer is part of ASan).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
failed=0
summary=()
for t in "${targets[@]}"; do
  work=fuzz/target/corpus/$t
  seeds=fuzz/corpus/$t
  mkdir -p "$work" "$seeds" "fuzz/artifacts/$t"
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  log "running $t for ${seconds} s"
  status=0
  # The margin covers start-up and the final merge of the corpus; past it the run is stopped.
  # shellcheck disable=SC2086
  timeout --kill-after=10 $((seconds + 60)) \
    "$bindir/$t" -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_ARGS:-} "$work" "$seeds" \
    >"$logs/$t.log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -n1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$logs/$t.log" | tail -n1)
  last=$(grep -E '^#[0-9]+' "$logs/$t.log" | tail -n1 || true)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+)\/([0-9]+[a-zA-Z]*).*/\1 inputs, \2/p' <<<"$last")
  line="$t: ${execs:-?} execs, corpus ${corp:-?}, coverage ${cov:-?} edges, peak RSS ${rss:-?} MB"
  after=$(find "fuzz/artifacts/$t" -type f | wc -l)
  if ((status == 124 || status == 137)); then
    line+=" -- DID NOT END IN TIME"
    failed=1
  elif ((status != 0 || after > before)); then
    crash=$(grep -oE 'Test unit written to [^ ]+' "$logs/$t.log" | tail -n1 | cut -d' ' -f5- || true)
    line+=" -- CRASH (exit $status): ${crash:-see $logs/$t.log}"
    failed=1
    # The panic or sanitizer report, for the CI log.
    grep -E -m20 "panicked at|ERROR: (AddressSanitizer|libFuzzer)|SUMMARY" "$logs/$t.log" | sed 's/^/    /' || true
  fi
  log "$line"
  summary+=("$line")
done

echo
log "summary (${seconds} s per target, sanitizer: $sanitizer; full logs in $logs/):"
printf '  %s\n' "${summary[@]}"
if ((failed)); then
  log "FAILED: reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run --debug-assertions --sanitizer $sanitizer TARGET ARTIFACT"
  log "(or $bindir/TARGET ARTIFACT)"
  exit 1
fi
