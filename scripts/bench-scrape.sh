#!/usr/bin/env bash
# scripts/bench-scrape.sh: does scraping /metrics lower the UDP rate? (issue 13)
#
# Starts a release sipsockd (processes = 2, [metrics] on) with N UDP sockets, loads all of them
# with sipload for SECS, alternating runs without and with a scraper that GETs /metrics once a
# second (as Prometheus would, at a 1 s scrape interval), RUNS times each; prints the median
# answered rate of both, the median of the rounds' ratios, the time of one scrape, and the CPU
# one scrape costs the daemon (its observers thread, from /proc).
#
# usage: scripts/bench-scrape.sh [--runs N] [--secs S] [--sockets N] [--window N]
# Bounds: traffic only to 127.0.0.1; every run bounded by --secs; the daemon and the scraper are
# stopped by their pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=5
SECS=5
SOCKETS=100
WINDOW=128
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) RUNS=$2; shift ;;
    --secs) SECS=$2; shift ;;
    --sockets) SOCKETS=$2; shift ;;
    --window) WINDOW=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

cargo build --release --quiet --bin sipsockd --example sipload
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN=$TARGET_DIR/release/sipsockd
SIPLOAD=$TARGET_DIR/release/examples/sipload

WORK=$(mktemp -d)
DAEMON=""
SCRAPER=""
cleanup() {
    [ -n "$SCRAPER" ] && kill "$SCRAPER" 2>/dev/null || true
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
    rm -rf "$WORK" "/dev/shm/sipsockd-bench-scrape-$$"
}
trap cleanup EXIT

free_port() { # TYPE: a free port on 127.0.0.1 (bound, then released)
    python3 -c "import socket,sys; s = socket.socket(socket.AF_INET, socket.SOCK_$1); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}
METRICS=127.0.0.1:$(free_port STREAM)
cat >"$WORK/sipsockd.toml" <<EOF
[sockets_mgm]
db_url = "sqlite://$WORK/s.db"
processes = 2
max_sockets = $((SOCKETS + 10))
[mi_fifo]
fifo_name = "$WORK/fifo"
reply_dir = "$WORK/"
[shm]
path = "/dev/shm/sipsockd-bench-scrape-$$"
[tcp]
workers = 1
[metrics]
listen = "$METRICS"
EOF
cli() { "$BIN" --config "$WORK/sipsockd.toml" "$@"; }
cli db init >/dev/null
# N distinct free ports: all bound at once, then released.
python3 -c "
import socket
held = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range($SOCKETS)]
for s in held: s.bind(('127.0.0.1', 0))
for s in held: print('127.0.0.1:%d' % s.getsockname()[1])
" >"$WORK/targets"
while read -r t; do cli db add "udp:$t" >/dev/null; done <"$WORK/targets"
RUST_LOG=warn "$BIN" --config "$WORK/sipsockd.toml" run 2>"$WORK/daemon.log" &
DAEMON=$!
for _ in $(seq 1 300); do
    [ -p "$WORK/fifo" ] && cli mi --timeout 5 version >/dev/null 2>&1 && break
    sleep 0.1
done
cli mi --timeout 5 version >/dev/null || { cat "$WORK/daemon.log"; exit 1; }

scraper() { # GET /metrics once a second (curl: a light client, not to steal the load's CPU)
    while :; do
        curl -s -o /dev/null -w '%{time_total}\n' "http://$METRICS/metrics" >>"$WORK/scrapes"
        sleep 1
    done
}

observers_cpu() { # CPU ticks of the daemon's observers thread (the one that serves /metrics)
    local t
    for t in /proc/"$DAEMON"/task/*; do
        if [ "$(cat "$t/comm")" = observers ]; then
            sed 's/^.*) //' "$t/stat" | awk '{print $12 + $13}'
            return
        fi
    done
    echo 0
}

run() { # OUT: one sipload run's answered per second
    "$SIPLOAD" --json --duration "$SECS" --warmup 0.5 --window "$WINDOW" \
        --targets-file "$WORK/targets" >"$1"
    python3 -c "import json,sys; d = json.load(open(sys.argv[1])); print(d['answered'] / $SECS)" "$1"
}

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

: >"$WORK/without"
: >"$WORK/with"
: >"$WORK/ratios"
for i in $(seq 1 "$RUNS"); do
    a=$(run "$WORK/r.json")
    scraper &
    SCRAPER=$!
    b=$(run "$WORK/r.json")
    kill "$SCRAPER"
    wait "$SCRAPER" 2>/dev/null || true
    SCRAPER=""
    echo "$a" >>"$WORK/without"
    echo "$b" >>"$WORK/with"
    awk -v a="$a" -v b="$b" 'BEGIN {print b / a}' >>"$WORK/ratios"
    echo "round $i: without $a/s, with a 1 s scrape $b/s" >&2
done
# The scrape's own cost, precisely: the observers thread's CPU over 100 back-to-back scrapes.
HZ=$(getconf CLK_TCK)
c0=$(observers_cpu)
for _ in $(seq 1 100); do curl -s -o /dev/null "http://$METRICS/metrics"; done
c1=$(observers_cpu)
A=$(median <"$WORK/without")
B=$(median <"$WORK/with")
R=$(median <"$WORK/ratios")
S=$(median <"$WORK/scrapes")
echo "UDP OPTIONS over $SOCKETS sockets, processes = 2, window $WINDOW, ${SECS} s runs, $RUNS rounds:"
printf "  without scraping:               %.0f answered/s (median)\n" "$A"
printf "  scraped every second:           %.0f answered/s (median)\n" "$B"
printf "  with / without, same round:     %.3f (median of the rounds' ratios)\n" "$R"
printf "  one scrape (%d sockets):       %.1f ms wall (median of %d, under load)\n" "$SOCKETS" "$(awk -v s="$S" 'BEGIN {print s * 1000}')" "$(wc -l <"$WORK/scrapes")"
printf "  observers thread CPU per scrape: %.2f ms (100 scrapes, idle daemon)\n" "$(awk -v c=$((c1 - c0)) -v hz="$HZ" 'BEGIN {print c / hz * 1000 / 100}')"
