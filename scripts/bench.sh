#!/usr/bin/env bash
# scripts/bench.sh: sipsockd's benchmarks (issue 5), in one command, on this machine.
#
# Measures and prints one table: UDP OPTIONS throughput of sipsockd with processes = 1, 2, 4 against
# Kamailio (same number of children, stateless sl_send_reply) and against min_responder (the
# machine's practical limit), the same load spread over 100 and 1,000 dynamic sockets, reload times
# for 100 / 1,000 / 10,000 sockets and a one-row change on SQLite (and PostgreSQL and MariaDB when
# reachable) beside a bare bind loop, loss during 100 reloads under load, memory (PSS), and OPTIONS
# throughput over TCP and TLS (persistent connections) against Kamailio's TCP/TLS listeners with
# tcp_children = sipsockd's [tcp] workers.
# Every figure is the median of several runs; every ratio is taken within one round, between runs
# made back to back, and the median of those ratios is printed.
#
# usage: scripts/bench.sh [--smoke] [--runs N] [--secs S] [--processes "1 2 4"] [--window N]
#                         [--stream-workers "1 2"] [--stream-runs N] [--connections N]
#                         [--no-sipsockd] [--no-kamailio] [--no-install] [--out FILE] [--keep]
#   --smoke        a few seconds: checks that the tooling works (CI runs this); never installs
#   --no-sipsockd  only the peers (Kamailio, min_responder) and the bind floor
#   --out FILE     also write the table (markdown) to FILE
#   --keep         keep the work directory (logs, configs, raw JSON) and print its path
#   --only LIST    only these sections, comma-separated: throughput,spread,reload,loss,tcp,tls
#   --stream-workers, --stream-runs, --connections: the TCP/TLS rows ([tcp] workers and
#                  tcp_children; runs per figure, default 3; persistent connections, default 16)
# Environment: SIPSOCKD_BENCH_PG_URL (default postgres://postgres@127.0.0.1/test),
#   SIPSOCKD_BENCH_MYSQL_URL (default mysql://root@127.0.0.1/test), SIPSOCKD_BENCH_NO_BUILD=1,
#   SIPSOCKD_BENCH_BIG (largest socket set, default 10000; for machines whose open-file hard limit
#   is too low for it and cannot be raised).
#
# Bounds: traffic only to 127.0.0.0/8; every load run is bounded by --duration; every wait has a
# deadline; every process started here is stopped on exit (trap), by its pid; scratch databases
# are dropped. The full run takes about 6 minutes after the build on a 2-core machine.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

SMOKE=0
RUNS=5
SECS=3
WARM=0.5
WINDOW=128
PROCS="1 2 4"
WITH_SIPSOCKD=1
WITH_KAMAILIO=1
INSTALL=1
OUT=""
KEEP=0
ONLY="throughput,spread,reload,loss,tcp,tls"
STREAM_WORKERS="1 2"
STREAM_RUNS=3
CONNS=16
while [ $# -gt 0 ]; do
    case "$1" in
    --smoke) SMOKE=1 ;;
    --runs) RUNS=$2; shift ;;
    --secs) SECS=$2; shift ;;
    --processes) PROCS=$2; shift ;;
    --window) WINDOW=$2; shift ;;
    --no-sipsockd) WITH_SIPSOCKD=0 ;;
    --no-kamailio) WITH_KAMAILIO=0 ;;
    --no-install) INSTALL=0 ;;
    --out) OUT=$2; shift ;;
    --keep) KEEP=1 ;;
    --only) ONLY=$2; shift ;;
    --stream-workers) STREAM_WORKERS=$2; shift ;;
    --stream-runs) STREAM_RUNS=$2; shift ;;
    --connections) CONNS=$2; shift ;;
    -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$SMOKE" = 1 ]; then
    RUNS=1 SECS=0.5 WARM=0.1 PROCS="2" INSTALL=0
    RELOAD_SIZES="10 100" CHANGE_SIZES="100" SPREAD="10 100" LOSS_RELOADS=5 BIG=100
    STREAM_WORKERS="1" STREAM_RUNS=1
else
    # SIPSOCKD_BENCH_BIG lowers the largest set where the open-file hard limit cannot be raised.
    BIG=${SIPSOCKD_BENCH_BIG:-10000}
    RELOAD_SIZES="100 1000 $BIG" CHANGE_SIZES="1000 $BIG" SPREAD="100 1000" LOSS_RELOADS=100
fi
PG_URL=${SIPSOCKD_BENCH_PG_URL:-postgres://postgres@127.0.0.1/test}
MY_URL=${SIPSOCKD_BENCH_MYSQL_URL:-mysql://root@127.0.0.1/test}

# Ports (all on loopback): peers and the single-socket sipsockd; dynamic sets use 127.0.0.2-251.
KAM_PORT=25070
MINR_PORT=25080
SIPS_PORT=25090
SPREAD_BASE=22000
RELOAD_BASE=21000
CHANGE_PORT=23999
LOSS_BASE=24000
CHURN_BASE=24100
KAM_TCP_PORT=25071
KAM_TLS_PORT=25072
SD_TCP_PORT=25091
SD_TLS_PORT=25092

WORK=$(mktemp -d /tmp/sipsockd-bench.XXXXXX)
RES=$WORK/res
mkdir -p "$RES"
STARTED=()       # pids of every process started in the background here
SCRATCH_DBS=()   # "pg NAME" / "mysql NAME" to drop at exit
SHM_FILES=()
FAILED=()        # what could not be measured, for the exit status and the table

section() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { FAILED+=("$*"); log "FAILED: $*"; }

descendants() { # PID: every descendant pid, deepest last
    local k
    for k in $(pgrep -P "$1" 2>/dev/null); do
        echo "$k"
        descendants "$k"
    done
}

stop_tree() { # PID: TERM the process, wait up to 5 s, then KILL it and what it had started
    local pid=$1 kids i
    kill -0 "$pid" 2>/dev/null || return 0
    kids=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    for k in $pid $kids; do
        kill -0 "$k" 2>/dev/null && kill -KILL "$k" 2>/dev/null
    done
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    local p d
    trap - EXIT INT TERM
    for p in "${STARTED[@]}"; do stop_tree "$p"; done
    for d in "${SCRATCH_DBS[@]}"; do
        set -- $d
        case $1 in
        pg) sql_pg_admin "DROP DATABASE IF EXISTS $2" >/dev/null 2>&1 ;;
        mysql) sql_mysql_admin "DROP DATABASE IF EXISTS $2" >/dev/null 2>&1 ;;
        esac
    done
    for f in "${SHM_FILES[@]}"; do rm -f "$f"; done
    if [ "$KEEP" = 1 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

median() { # FILE: median of the numbers in it (one a line), "" when empty
    [ -s "$1" ] || return 0
    sort -g "$1" | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.4f\n", (a[NR/2]+a[NR/2+1])/2}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b+0 > 0 && a != "") printf "%.3f\n", a/b}'; }
jget() { # FILE KEY: a number from sipload's JSON
    grep -o "\"$2\": [0-9.e+-]*" "$1" | head -1 | awk '{print $2}'
}
fmt_rate() { [ -z "$1" ] || awk -v v="$1" 'BEGIN {printf "%d\n", v + 0.5}'; }
put() { [ -z "$2" ] || echo "$2" >>"$RES/$1"; } # KEY VALUE: one more sample (none when empty)

# ---------------------------------------------------------------------------------------------
# Build and tools

# 10,000 sockets take that many fds in the supervisor and in each worker: raise the hard limit
# when allowed (root), then the soft one.
ulimit -Hn 65536 2>/dev/null
ulimit -n "$(ulimit -Hn)" 2>/dev/null
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "${SIPSOCKD_BENCH_NO_BUILD:-0}" != 1 ]; then
    log "building (release): sipsockd, sipload, min_responder"
    if ! cargo build --release --quiet --example sipload --example min_responder >&2; then
        echo "bench.sh: cannot build the examples" >&2
        exit 1
    fi
    if [ "$WITH_SIPSOCKD" = 1 ] && ! cargo build --release --quiet --bin sipsockd >&2; then
        fail "sipsockd does not build"
        WITH_SIPSOCKD=0
    fi
fi
BIN=$TARGET_DIR/release/sipsockd
SIPLOAD=$TARGET_DIR/release/examples/sipload
MINR=$TARGET_DIR/release/examples/min_responder
MI_TIME="python3 $ROOT/scripts/bench/mi_time.py"
for t in "$SIPLOAD" "$MINR"; do
    [ -x "$t" ] || { echo "bench.sh: $t missing" >&2; exit 1; }
done
[ "$WITH_SIPSOCKD" = 1 ] && [ ! -x "$BIN" ] && { fail "$BIN missing"; WITH_SIPSOCKD=0; }
# Run a private copy: PSS splits a file's pages among every process mapping them, so another
# sipsockd started from the same file (a test run) would make ours look smaller than it is.
if [ "$WITH_SIPSOCKD" = 1 ]; then
    mkdir -p "$WORK/bin" && cp "$BIN" "$WORK/bin/sipsockd" && BIN=$WORK/bin/sipsockd
fi

if [ "$WITH_KAMAILIO" = 1 ] && ! command -v kamailio >/dev/null; then
    if [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ]; then
        log "installing Kamailio (apt-get)"
        # Keep the package from starting a system instance: that one would not be ours to stop.
        policy_added=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
        fi
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kamailio kamailio-tls-modules) >&2
        [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
    fi
    command -v kamailio >/dev/null || { log "Kamailio not installed: its rows are skipped"; WITH_KAMAILIO=0; }
fi
KAM_TLS=0
if [ "$WITH_KAMAILIO" = 1 ]; then
    KAM_MPATH=$(dirname "$(find /usr/lib /usr/lib64 /usr/local/lib -name sl.so -path '*kamailio*' 2>/dev/null | head -1)")
    KAM_VERSION=$(kamailio -v 2>/dev/null | head -1 | awk '{print $3}')
    if section tls && [ ! -e "$KAM_MPATH/tls.so" ] && [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ]; then
        log "installing Kamailio's TLS module (apt-get)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kamailio-tls-modules) >&2
    fi
    [ -e "$KAM_MPATH/tls.so" ] && KAM_TLS=1
fi

# ---------------------------------------------------------------------------------------------
# Helpers: addresses, databases, processes

addrs() { # N BASE_PORT [PREFIX]: N socket texts on 127.0.0.2-251, 250 per port
    awk -v n="$1" -v b="$2" -v p="${3:-}" 'BEGIN {for (i = 0; i < n; i++) printf "%s127.0.0.%d:%d\n", p, 2 + i % 250, b + int(i / 250)}'
}

# URL pieces for the CLI clients (user[:pass]@host[:port]/db).
url_db() { echo "$1" | sed -E 's|^[a-z]+://[^/]*/([^?]*).*|\1|'; }
url_with_db() { echo "$1" | sed -E "s|^([a-z]+://[^/]*)/[^?]*|\1/$2|"; }
mysql_args() { # URL: mysql client arguments (without the database)
    echo "$1" | sed -E 's|^mysql://||; s|/.*||' | awk -F@ '{
        up = (NF > 1) ? $1 : ""; hp = (NF > 1) ? $2 : $1
        n = split(up, u, ":"); m = split(hp, h, ":")
        printf "-h%s", h[1]; if (m > 1) printf " -P%s", h[2]
        if (u[1] != "") printf " -u%s", u[1]; if (n > 1) printf " -p%s", u[2]
        printf " --protocol=TCP\n"}'
}
sql_pg_admin() { psql -qAt -v ON_ERROR_STOP=1 "$PG_URL" -c "$1"; }
sql_mysql_admin() { mysql $(mysql_args "$MY_URL") -N -e "$1" "$(url_db "$MY_URL")"; }
sql_run() { # BACKEND TARGET: run the SQL on stdin (TARGET: sqlite file, or database URL)
    case $1 in
    sqlite)
        if command -v sqlite3 >/dev/null; then
            sqlite3 -bail "$2"
        else
            python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.stdin.read()); c.commit()' "$2"
        fi ;;
    pg) psql -qAt -v ON_ERROR_STOP=1 "$2" >/dev/null ;;
    mysql) mysql $(mysql_args "$2") "$(url_db "$2")" ;;
    esac
}
insert_rows() { # BACKEND TARGET FILE: insert the socket texts of FILE (one per line) as rows
    { echo "BEGIN;"
      awk 'NR % 500 == 1 {if (NR > 1) print ";"; printf "INSERT INTO sockets (socket) VALUES "} {printf "%s(\x27udp:%s\x27)", (NR % 500 == 1 ? "" : ","), $1} END {if (NR) print ";"}' "$3"
      echo "COMMIT;"; } | sql_run "$1" "$2"
}

wait_answers() { # IP:PORT [SIPLOAD_ARGS...]: until an OPTIONS is answered (20 s at most)
    local i t=$1
    shift
    for i in $(seq 100); do
        "$SIPLOAD" --target "$t" "$@" --count 1 --timeout 0.2 --grace 0.2 --check --json >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

start_kamailio() { # CHILDREN PORT DIR: sets KPID
    local dir=$3
    mkdir -p "$dir"
    sed -e "s/@CHILDREN@/$1/" -e "s/@LISTEN@/udp:127.0.0.1:$2/" -e "s|@MPATH@|$KAM_MPATH/|" \
        "$ROOT/scripts/bench/kamailio.cfg.in" >"$dir/kamailio.cfg"
    kamailio -DD -E -f "$dir/kamailio.cfg" -Y "$dir" -w "$dir" -m 64 -M 8 >"$dir/log" 2>&1 &
    KPID=$!
    STARTED+=("$KPID")
}

start_minr() { # PROCESSES PORT LOG: sets MPID
    "$MINR" --listen "127.0.0.1:$2" --processes "$1" --duration 900 >/dev/null 2>"$3" &
    MPID=$!
    STARTED+=("$MPID")
}

# sipsockd: NAME PROCESSES MAX_SOCKETS DB_URL [STREAM_WORKERS]; sets SD_DIR, SD_CFG; prints
# nothing. The daemon always forks [tcp] workers stream workers (at least 1, default 4), even
# with UDP rows only: the UDP sections ask for the fewest (1), which stay idle.
sd_config() {
    SD_DIR=$WORK/sd-$1
    SD_CFG=$SD_DIR/sipsockd.toml
    mkdir -p "$SD_DIR/reply"
    SHM_FILES+=("/dev/shm/sipsockd-bench-$$-$1")
    cat >"$SD_CFG" <<EOF
[sockets_mgm]
db_url = "$4"
processes = $2
max_sockets = $3

[mi_fifo]
fifo_name = "$SD_DIR/fifo"
reply_dir = "$SD_DIR/reply/"

[shm]
path = "/dev/shm/sipsockd-bench-$$-$1"

[tcp]
workers = ${5:-1}
EOF
}
sd_mi() { $MI_TIME --fifo "$SD_DIR/fifo" --reply-dir "$SD_DIR/reply/" "$@"; }
sd_start() { # sets SD_PID; 0 when the MI answers (20 s at most)
    local i
    RUST_LOG=${RUST_LOG:-warn} "$BIN" --config "$SD_CFG" run 2>"$SD_DIR/log" &
    SD_PID=$!
    STARTED+=("$SD_PID")
    for i in $(seq 200); do
        kill -0 "$SD_PID" 2>/dev/null || break
        if [ -p "$SD_DIR/fifo" ] && sd_mi --timeout 2 version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    log "sipsockd did not start; its log:"; tail -20 "$SD_DIR/log" >&2
    return 1
}

pss_of() { # PID: "PSS_KIB RSS_KIB" of one process
    awk '/^Pss:/ {p=$2} /^Rss:/ {r=$2} END {if (NR) print p+0, r+0}' "/proc/$1/smaps_rollup" 2>/dev/null
}
pss_tree() { # PID: "PSS_TOTAL|PROCESSES|PSS + PSS ...|RSS + RSS ..." (KiB), process then descendants
    local total=0 n=0 pss="" rss="" k v
    for k in $1 $(descendants "$1"); do
        v=$(pss_of "$k")
        [ -n "$v" ] || continue
        set -- $v
        total=$((total + $1))
        n=$((n + 1))
        pss="${pss:+$pss + }$1"
        rss="${rss:+$rss + }$2"
    done
    echo "$total|$n|$pss|$rss"
}
cpu_tree() { # PID: CPU time (user + system, clock ticks) of the process and its descendants
    local k
    for k in $1 $(descendants "$1"); do
        sed 's/^.*) //' "/proc/$k/stat" 2>/dev/null | awk '{print $12 + $13}'
    done | awk '{s += $1} END {print s + 0}'
}
HZ=$(getconf CLK_TCK)

load() { # OUT_JSON SERVER_PID TARGET_ARGS...: one measured run; appends the server's CPU
    # microseconds per answered request to OUT_JSON.cpu
    local out=$1 spid=$2 c0 c1
    shift 2
    c0=$(cpu_tree "$spid")
    "$SIPLOAD" --json --duration "$SECS" --warmup "$WARM" --window "$WINDOW" "$@" >"$out" 2>>"$WORK/sipload.err" || return 1
    c1=$(cpu_tree "$spid")
    local bad
    bad=$(awk -v l="$(jget "$out" lost)" -v n="$(jget "$out" non200)" -v s="$(jget "$out" targets_silent)" -v c="$(jget "$out" closed)" 'BEGIN {if (l + n + s + c > 0) printf "lost %d, non-200 %d, silent targets %d, connections closed %d", l, n, s, c}')
    [ -z "$bad" ] || echo "$(basename "$out" .json): $bad" >>"$RES/anomalies"
    # The warm-up's requests are not counted in "answered" but their CPU is: scale by the time.
    awk -v c="$((c1 - c0))" -v hz="$HZ" -v a="$(jget "$out" answered)" -v s="$SECS" -v w="$WARM" \
        'BEGIN {if (a > 0) printf "%.2f\n", c / hz * 1e6 / (a * (s + w) / s)}' >"$out.cpu"
}

# ---------------------------------------------------------------------------------------------
# 1. UDP throughput: sipsockd vs Kamailio vs min_responder, same number of processes

T0=$(date +%s)
section throughput || PROCS=""
for P in $PROCS; do
    log "throughput, $P process(es)"
    KPID="" MPID="" SPID=""
    if [ "$WITH_KAMAILIO" = 1 ]; then
        start_kamailio "$P" "$KAM_PORT" "$WORK/kam-$P"
        wait_answers "127.0.0.1:$KAM_PORT" || { fail "Kamailio ($P children) does not answer (see $WORK/kam-$P/log)"; stop_tree "$KPID"; KPID=""; }
    fi
    start_minr "$P" "$MINR_PORT" "$WORK/minr-$P.log"
    wait_answers "127.0.0.1:$MINR_PORT" || { fail "min_responder does not answer"; MPID=""; }
    if [ "$WITH_SIPSOCKD" = 1 ]; then
        sd_config "tp$P" "$P" 100 "sqlite://$WORK/tp$P.db"
        if "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err" &&
            "$BIN" --config "$SD_CFG" db add "udp:127.0.0.1:$SIPS_PORT" >/dev/null 2>>"$SD_DIR/init.err" &&
            sd_start && wait_answers "127.0.0.1:$SIPS_PORT"; then
            SPID=$SD_PID
        else
            fail "sipsockd ($P processes) does not answer (see $SD_DIR/log)"
        fi
    fi
    for r in $(seq "$RUNS"); do
        rk="" rmin="" rs=""
        if [ -n "$KPID" ]; then
            load "$RES/kam-$P-$r.json" "$KPID" --target "127.0.0.1:$KAM_PORT" && rk=$(jget "$RES/kam-$P-$r.json" rate)
            [ -n "$rk" ] && put "kam_$P" "$rk" && put "cpu_kam_$P" "$(jget "$RES/kam-$P-$r.json" cpu_pct)" && put "us_kam_$P" "$(cat "$RES/kam-$P-$r.json.cpu")"
        fi
        if [ -n "$MPID" ]; then
            load "$RES/minr-$P-$r.json" "$MPID" --target "127.0.0.1:$MINR_PORT" && rmin=$(jget "$RES/minr-$P-$r.json" rate)
            [ -n "$rmin" ] && put "minr_$P" "$rmin" && put "cpu_minr_$P" "$(jget "$RES/minr-$P-$r.json" cpu_pct)" && put "us_minr_$P" "$(cat "$RES/minr-$P-$r.json.cpu")"
        fi
        if [ -n "$SPID" ]; then
            load "$RES/sd-$P-$r.json" "$SPID" --target "127.0.0.1:$SIPS_PORT" && rs=$(jget "$RES/sd-$P-$r.json" rate)
            [ -n "$rs" ] && put "sd_$P" "$rs" && put "cpu_sd_$P" "$(jget "$RES/sd-$P-$r.json" cpu_pct)" && put "us_sd_$P" "$(cat "$RES/sd-$P-$r.json.cpu")"
        fi
        [ -n "$rs" ] && [ -n "$rk" ] && put "sd_kam_$P" "$(ratio "$rs" "$rk")"
        [ -n "$rs" ] && [ -n "$rmin" ] && put "sd_minr_$P" "$(ratio "$rs" "$rmin")"
        [ -n "$rk" ] && [ -n "$rmin" ] && put "kam_minr_$P" "$(ratio "$rk" "$rmin")"
        [ -n "$rs" ] && [ -n "$rk" ] && put "cpu_kam_sd_$P" "$(ratio "$(cat "$RES/kam-$P-$r.json.cpu")" "$(cat "$RES/sd-$P-$r.json.cpu")")"
    done
    # Memory, idle after the load, same number of processes.
    [ -n "$KPID" ] && echo "$(pss_tree "$KPID")" >"$RES/pss_kam_$P"
    [ -n "$SPID" ] && echo "$(pss_tree "$SPID")" >"$RES/pss_sd_$P"
    [ -n "$MPID" ] && echo "$(pss_tree "$MPID")" >"$RES/pss_minr_$P"
    for p in $KPID $MPID $SPID; do stop_tree "$p"; done
done
T_TP=$(($(date +%s) - T0))

# ---------------------------------------------------------------------------------------------
# 2. Spread over many dynamic sockets (sipsockd, 2 processes): same load, more sockets

if [ "$WITH_SIPSOCKD" = 1 ] && section spread; then
    MAXN=$(echo $SPREAD | awk '{print $NF}')
    log "spread over $SPREAD sockets"
    sd_config spread 2 $((MAXN + 10)) "sqlite://$WORK/spread.db"
    addrs "$MAXN" "$SPREAD_BASE" >"$WORK/spread-all.txt"
    head -1 "$WORK/spread-all.txt" >"$WORK/spread-1.txt"
    for n in $SPREAD; do head -"$n" "$WORK/spread-all.txt" >"$WORK/spread-$n.txt"; done
    if "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err" &&
        insert_rows sqlite "$WORK/spread.db" "$WORK/spread-all.txt" 2>>"$SD_DIR/init.err" &&
        sd_start && wait_answers "$(head -1 "$WORK/spread-all.txt")" && wait_answers "$(tail -1 "$WORK/spread-all.txt")"; then
        for r in $(seq "$RUNS"); do
            r1=""
            load "$RES/spread-1-$r.json" "$SD_PID" --targets-file "$WORK/spread-1.txt" && r1=$(jget "$RES/spread-1-$r.json" rate)
            put spread_1 "$r1"
            [ -s "$RES/spread-1-$r.json.cpu" ] && put spread_us_1 "$(cat "$RES/spread-1-$r.json.cpu")"
            for n in $SPREAD; do
                rn=""
                load "$RES/spread-$n-$r.json" "$SD_PID" --targets-file "$WORK/spread-$n.txt" && rn=$(jget "$RES/spread-$n-$r.json" rate)
                put "spread_$n" "$rn"
                [ -s "$RES/spread-$n-$r.json.cpu" ] && put "spread_us_$n" "$(cat "$RES/spread-$n-$r.json.cpu")"
                put "spread_ratio_$n" "$(ratio "$rn" "$r1")"
                silent=$(jget "$RES/spread-$n-$r.json" targets_silent)
                [ "${silent:-0}" != 0 ] && fail "spread $n: $silent sockets never answered"
            done
        done
        stop_tree "$SD_PID"
    else
        fail "sipsockd with $MAXN sockets does not answer (see $SD_DIR/log)"
        stop_tree "$SD_PID"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 3. Reload time, per backend, beside the bare bind loop

section reload || RELOAD_SIZES="" CHANGE_SIZES=""
for n in $RELOAD_SIZES; do addrs "$n" "$RELOAD_BASE" >"$WORK/reload-$n.txt"; done
echo "127.0.0.1:$CHANGE_PORT" >"$WORK/one.txt"
[ -n "$RELOAD_SIZES" ] && log "bind floor"
for n in $RELOAD_SIZES; do
    "$MINR" --bind-only --targets-file "$WORK/reload-$n.txt" --repeat "$((RUNS < 3 ? 3 : RUNS))" --json >"$RES/floor-$n.json" ||
        fail "bind floor for $n sockets"
done
section reload && { "$MINR" --bind-only --targets-file "$WORK/one.txt" --repeat 5 --json >"$RES/floor-1.json" || fail "bind floor for 1 socket"; }

BACKENDS=""
if [ "$WITH_SIPSOCKD" = 1 ] && section reload; then
    BACKENDS="sqlite"
    if [ "$SMOKE" = 0 ]; then
        if command -v psql >/dev/null && sql_pg_admin "SELECT 1" >/dev/null 2>&1; then
            BACKENDS="$BACKENDS pg"
        else
            log "no PostgreSQL at $PG_URL: skipped"
        fi
        if command -v mysql >/dev/null && sql_mysql_admin "SELECT 1" >/dev/null 2>&1; then
            BACKENDS="$BACKENDS mysql"
        else
            log "no MariaDB/MySQL at $MY_URL: skipped"
        fi
    fi
fi

reload_timed() { # KEY: one timed sockets_reload, recorded under KEY
    local ms
    if ms=$(sd_mi sockets_reload 2>>"$SD_DIR/mi.err"); then
        put "$1" "$ms"
    else
        fail "sockets_reload ($1) failed: $(tail -1 "$SD_DIR/mi.err" | cut -c1-300)"
        return 1
    fi
}

for B in $BACKENDS; do
    log "reload timing on $B"
    DB=sipsockd_bench_$$
    case $B in
    sqlite) URL="sqlite://$WORK/reload.db"; TGT=$WORK/reload.db ;;
    pg) sql_pg_admin "CREATE DATABASE $DB" >/dev/null && SCRATCH_DBS+=("pg $DB")
        URL=$(url_with_db "$PG_URL" "$DB"); TGT=$URL ;;
    mysql) sql_mysql_admin "CREATE DATABASE $DB" >/dev/null && SCRATCH_DBS+=("mysql $DB")
        URL=$(url_with_db "$MY_URL" "$DB"); TGT=$URL ;;
    esac
    sd_config "reload-$B" 2 $((BIG + 10)) "$URL"
    if ! "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err"; then
        fail "db init on $B: $(tail -1 "$SD_DIR/init.err" | cut -c1-300)"; continue
    fi
    if ! sd_start; then fail "sipsockd on $B does not start: $(head -1 "$SD_DIR/log" | cut -c1-200)"; continue; fi
    [ "$B" = sqlite ] && pss_tree "$SD_PID" >"$RES/pss_sd_empty"
    for n in $RELOAD_SIZES; do
        for r in $(seq "$RUNS"); do
            insert_rows "$B" "$TGT" "$WORK/reload-$n.txt" 2>>"$SD_DIR/sql.err" || fail "insert $n rows on $B"
            reload_timed "reload_${B}_add_$n" || break
            if [ "$r" = 1 ]; then
                wait_answers "$(tail -1 "$WORK/reload-$n.txt")" || fail "$B: socket $n not answering after reload"
                if [ "$B" = sqlite ] && [ "$n" = "$BIG" ]; then
                    pss_tree "$SD_PID" >"$RES/pss_sd_big"
                    SHM=/dev/shm/sipsockd-bench-$$-reload-$B
                    stat -c %s "$SHM" >"$RES/shm_size" 2>/dev/null
                    du -k "$SHM" 2>/dev/null | awk '{print $1}' >"$RES/shm_alloc"
                fi
            fi
            if [ "$r" = 1 ] && echo " $CHANGE_SIZES " | grep -q " $n "; then
                first=$(head -1 "$WORK/reload-$n.txt")
                for c in $(seq "$RUNS"); do
                    echo "UPDATE sockets SET socket = 'udp:127.0.0.1:$CHANGE_PORT' WHERE socket = 'udp:$first';" | sql_run "$B" "$TGT"
                    reload_timed "reload_${B}_change_$n" || break
                    echo "UPDATE sockets SET socket = 'udp:$first' WHERE socket = 'udp:127.0.0.1:$CHANGE_PORT';" | sql_run "$B" "$TGT"
                    reload_timed "reload_${B}_change_$n" || break
                done
            fi
            echo "DELETE FROM sockets;" | sql_run "$B" "$TGT"
            reload_timed "reload_${B}_remove_$n" || break
        done
    done
    stop_tree "$SD_PID"
done

# ---------------------------------------------------------------------------------------------
# 4. Loss during reloads: stable sockets under load while other sockets come and go

if [ "$WITH_SIPSOCKD" = 1 ] && section loss; then
    log "loss during $LOSS_RELOADS reloads"
    addrs 10 "$LOSS_BASE" >"$WORK/stable.txt"
    addrs 10 "$CHURN_BASE" >"$WORK/churn.txt"
    sd_config loss 2 100 "sqlite://$WORK/loss.db"
    if "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err" &&
        insert_rows sqlite "$WORK/loss.db" "$WORK/stable.txt" && sd_start &&
        sd_mi sockets_reload >/dev/null && wait_answers "$(tail -1 "$WORK/stable.txt")"; then
        "$SIPLOAD" --json --duration 120 --window 32 --timeout 2 --grace 2 \
            --targets-file "$WORK/stable.txt" >"$RES/loss.json" 2>>"$WORK/sipload.err" &
        LPID=$!
        STARTED+=("$LPID")
        ok=0
        for i in $(seq "$LOSS_RELOADS"); do
            if [ $((i % 2)) = 1 ]; then
                insert_rows sqlite "$WORK/loss.db" "$WORK/churn.txt"
            else
                echo "DELETE FROM sockets WHERE socket LIKE 'udp:%:$CHURN_BASE';" | sql_run sqlite "$WORK/loss.db"
            fi
            sd_mi sockets_reload >>"$RES/loss_reload_ms" 2>>"$SD_DIR/mi.err" && ok=$((ok + 1))
        done
        kill -TERM "$LPID" 2>/dev/null
        wait "$LPID" 2>/dev/null
        echo "$ok" >"$RES/loss_reloads_ok"
        [ "$ok" = "$LOSS_RELOADS" ] || fail "only $ok of $LOSS_RELOADS reloads succeeded under load"
        lost=$(jget "$RES/loss.json" lost)
        [ "${lost:-x}" = 0 ] || fail "loss during reloads: ${lost:-no result} lost"
        stop_tree "$SD_PID"
    else
        fail "loss test: sipsockd does not start (see $SD_DIR/log)"
        stop_tree "$SD_PID"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 5. TCP and TLS throughput: sipsockd ([tcp] workers = N) vs Kamailio (tcp_children = N), the
#    window spread over persistent connections

STREAMS=""
section tcp && STREAMS="tcp"
section tls && STREAMS="$STREAMS tls"
if echo " $STREAMS " | grep -q " tls "; then
    # A self-signed certificate for 127.0.0.1 (an end-entity certificate, not a CA, so a strict
    # verifier accepts it as its own trust anchor); sipload verifies it with --ca.
    mkdir -p "$WORK/tls"
    cat >"$WORK/tls/cert.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3
[dn]
CN = 127.0.0.1
[v3]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
CNF
    if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" -config "$WORK/tls/cert.cnf" >"$WORK/tls/openssl.log" 2>&1; then
        fail "tls: openssl could not make a certificate (see $WORK/tls/openssl.log)"
        STREAMS=$(echo "$STREAMS" | sed 's/tls//')
    fi
fi
STREAMS=$(echo $STREAMS)
STREAM_T0=$(date +%s)
[ -n "$STREAMS" ] || STREAM_WORKERS=""
sl_args() { # TRANSPORT: sipload's arguments for it
    case $1 in
    tcp) echo "--transport tcp --connections $CONNS" ;;
    tls) echo "--transport tls --connections $CONNS --ca $WORK/tls/cert.pem" ;;
    esac
}
port_of() { # kam|sd TRANSPORT
    case $1-$2 in
    kam-tcp) echo "$KAM_TCP_PORT" ;; kam-tls) echo "$KAM_TLS_PORT" ;;
    sd-tcp) echo "$SD_TCP_PORT" ;; sd-tls) echo "$SD_TLS_PORT" ;;
    esac
}
for N in $STREAM_WORKERS; do
    log "$STREAMS: $N stream worker(s)"
    KPID="" SPID="" KOK="" SOK=""   # KOK/SOK: the transports that answered
    if [ "$WITH_KAMAILIO" = 1 ]; then
        kdir=$WORK/kam-stream-$N
        mkdir -p "$kdir"
        sed -e "s/@CHILDREN@/$N/" -e "s/@TCP@/$KAM_TCP_PORT/" -e "s/@TLS@/$KAM_TLS_PORT/" \
            -e "s|@CERT@|$WORK/tls/cert.pem|" -e "s|@KEY@|$WORK/tls/key.pem|" -e "s|@MPATH@|$KAM_MPATH/|" \
            "$ROOT/scripts/bench/kamailio-stream.cfg.in" >"$kdir/kamailio.cfg"
        if [ "$KAM_TLS" = 0 ] || ! echo " $STREAMS " | grep -q " tls "; then
            # No TLS module (or no TLS rows): a TCP-only Kamailio.
            sed -i -e '/listen=tls:/d' -e '/tls\.so/d' -e '/modparam("tls"/d' -e 's/^enable_tls=yes/enable_tls=no/' "$kdir/kamailio.cfg"
        fi
        kamailio -DD -E -f "$kdir/kamailio.cfg" -Y "$kdir" -w "$kdir" -m 64 -M 8 >"$kdir/log" 2>&1 &
        KPID=$!
        STARTED+=("$KPID")
        for t in $STREAMS; do
            if [ "$t" = tls ] && [ "$KAM_TLS" = 0 ]; then
                fail "Kamailio's tls.so is missing: no Kamailio TLS figure (apt-get install kamailio-tls-modules)"
            elif wait_answers "127.0.0.1:$(port_of kam "$t")" $(sl_args "$t"); then
                KOK="$KOK $t"
            else
                fail "Kamailio ($t, tcp_children=$N) does not answer (see $kdir/log)"
            fi
        done
    fi
    if [ "$WITH_SIPSOCKD" = 1 ]; then
        sd_config "stream$N" 1 10 "sqlite://$WORK/stream$N.db" "$N"
        printf '\n[tls]\ncertificate = "%s"\nprivate_key = "%s"\n' \
            "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >>"$SD_CFG"
        ok=1
        "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err" || ok=0
        for t in $STREAMS; do
            "$BIN" --config "$SD_CFG" db add "$t:127.0.0.1:$(port_of sd "$t")" >/dev/null 2>>"$SD_DIR/init.err" || ok=0
        done
        if [ "$ok" = 1 ] && sd_start; then
            SPID=$SD_PID
            for t in $STREAMS; do
                if wait_answers "127.0.0.1:$(port_of sd "$t")" $(sl_args "$t"); then
                    SOK="$SOK $t"
                else
                    fail "sipsockd ($t, $N stream workers) does not answer (see $SD_DIR/log)"
                fi
            done
        else
            fail "sipsockd with $N stream workers does not start (see $SD_DIR/log, $SD_DIR/init.err)"
        fi
    fi
    for r in $(seq "$STREAM_RUNS"); do
        for t in $STREAMS; do
            rk="" rs=""
            if echo " $KOK " | grep -q " $t "; then
                f=$RES/s$t-kam-$N-$r.json
                load "$f" "$KPID" $(sl_args "$t") --target "127.0.0.1:$(port_of kam "$t")" && rk=$(jget "$f" rate)
                [ -n "$rk" ] && put "s${t}_kam_$N" "$rk" && put "s${t}_cpu_kam_$N" "$(jget "$f" cpu_pct)" && put "s${t}_us_kam_$N" "$(cat "$f.cpu")"
            fi
            if echo " $SOK " | grep -q " $t "; then
                f=$RES/s$t-sd-$N-$r.json
                load "$f" "$SPID" $(sl_args "$t") --target "127.0.0.1:$(port_of sd "$t")" && rs=$(jget "$f" rate)
                [ -n "$rs" ] && put "s${t}_sd_$N" "$rs" && put "s${t}_cpu_sd_$N" "$(jget "$f" cpu_pct)" && put "s${t}_us_sd_$N" "$(cat "$f.cpu")"
            fi
            if [ -n "$rs" ] && [ -n "$rk" ]; then
                put "s${t}_sd_kam_$N" "$(ratio "$rs" "$rk")"
                put "s${t}_cpu_kam_sd_$N" "$(ratio "$(cat "$RES/s$t-kam-$N-$r.json.cpu")" "$(cat "$RES/s$t-sd-$N-$r.json.cpu")")"
            fi
        done
    done
    # Memory, idle after the load (connections closed).
    [ -n "$KPID" ] && pss_tree "$KPID" >"$RES/pss_skam_$N"
    [ -n "$SPID" ] && pss_tree "$SPID" >"$RES/pss_ssd_$N"
    for p in $KPID $SPID; do stop_tree "$p"; done
done
T_STREAM=$(($(date +%s) - STREAM_T0))

# ---------------------------------------------------------------------------------------------
# The table

sd_or() { # VALUE [SECTION]: the value, or why there is none
    if [ -n "$1" ]; then
        echo "$1"
    elif [ "$WITH_SIPSOCKD" = 1 ] && section "${2:-throughput}"; then
        echo "failed"
    else
        echo "not run"
    fi
}
na() { echo "${1:-n/a}"; }
kam_or() { # VALUE [SECTION]: a figure that needs Kamailio: n/a when it was not run
    if [ "$WITH_KAMAILIO" = 1 ]; then sd_or "$@"; else na "$1"; fi
}
floor_ms() { grep -o '"median_ms": [0-9.]*' "$RES/floor-$1.json" 2>/dev/null | awk '{print $2}'; }
pss_total() { [ -s "$1" ] && cut -d'|' -f1 "$1"; }
pss_procs() { [ -s "$1" ] && cut -d'|' -f2 "$1"; }
pss_detail() { [ -s "$1" ] && cut -d'|' -f3 "$1"; }
rss_detail() { [ -s "$1" ] && cut -d'|' -f4 "$1"; }

{
    echo "# sipsockd benchmarks ($(date -u +%Y-%m-%d), $( [ "$SMOKE" = 1 ] && echo "SMOKE run: figures are not meaningful" || echo "scripts/bench.sh"))"
    echo
    echo "Machine: $(nproc) CPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)."
    echo "Kamailio: ${KAM_VERSION:-not run}. Load: sipload, window $WINDOW, $SECS s runs after $WARM s warm-up, median of $RUNS."
    echo
    echo "## UDP throughput (OPTIONS answered per second, one socket)"
    echo
    echo "| processes | sipsockd | Kamailio | min_responder | sipsockd / Kamailio | sipsockd / limit | Kamailio / limit | server CPU us/request (sd / kam / min) | Kamailio CPU / sipsockd CPU per request | sipload CPU % of a core (sd / kam / min) |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for P in $PROCS; do
        echo "| $P | $(sd_or "$(fmt_rate "$(median "$RES/sd_$P")")") | $(na "$(fmt_rate "$(median "$RES/kam_$P")")") | $(na "$(fmt_rate "$(median "$RES/minr_$P")")") | $(kam_or "$(median "$RES/sd_kam_$P")") | $(sd_or "$(median "$RES/sd_minr_$P")") | $(na "$(median "$RES/kam_minr_$P")") | $(na "$(median "$RES/us_sd_$P")") / $(na "$(median "$RES/us_kam_$P")") / $(na "$(median "$RES/us_minr_$P")") | $(kam_or "$(median "$RES/cpu_kam_sd_$P")") | $(na "$(median "$RES/cpu_sd_$P")") / $(na "$(median "$RES/cpu_kam_$P")") / $(na "$(median "$RES/cpu_minr_$P")") |"
    done
    best=$(for P in $PROCS; do m=$(median "$RES/minr_$P"); [ -n "$m" ] && echo "$m $P"; done | sort -g | tail -1)
    [ -n "$best" ] && echo && echo "Best min_responder over the process counts above: $(fmt_rate "${best% *}")/s with ${best#* } process(es) (the machine's limit with this load generator sharing the CPUs)."
    echo
    if [ -n "$STREAM_WORKERS" ]; then
        echo "## TCP and TLS throughput (OPTIONS answered per second, one listener, $CONNS persistent connections, median of $STREAM_RUNS)"
        echo
        echo "| transport | stream workers (sipsockd [tcp] workers = Kamailio tcp_children) | sipsockd | Kamailio | sipsockd / Kamailio | server CPU us/request (sd / kam) | Kamailio CPU / sipsockd CPU per request | sipload CPU % of a core (sd / kam) |"
        echo "|---|---|---|---|---|---|---|---|"
        for t in $STREAMS; do
            for N in $STREAM_WORKERS; do
                echo "| $t | $N | $(sd_or "$(fmt_rate "$(median "$RES/s${t}_sd_$N")")" "$t") | $(na "$(fmt_rate "$(median "$RES/s${t}_kam_$N")")") | $(kam_or "$(median "$RES/s${t}_sd_kam_$N")" "$t") | $(na "$(median "$RES/s${t}_us_sd_$N")") / $(na "$(median "$RES/s${t}_us_kam_$N")") | $(kam_or "$(median "$RES/s${t}_cpu_kam_sd_$N")" "$t") | $(na "$(median "$RES/s${t}_cpu_sd_$N")") / $(na "$(median "$RES/s${t}_cpu_kam_$N")") |"
            done
        done
        echo
    fi
    echo "## Spread over dynamic sockets (sipsockd, 2 processes, round robin over the sockets)"
    echo
    echo "| sockets | answered/s | vs 1 socket (same round) | server CPU us/request |"
    echo "|---|---|---|---|"
    echo "| 1 | $(sd_or "$(fmt_rate "$(median "$RES/spread_1")")" spread) | 1 | $(na "$(median "$RES/spread_us_1")") |"
    for n in $SPREAD; do
        echo "| $n | $(sd_or "$(fmt_rate "$(median "$RES/spread_$n")")" spread) | $(sd_or "$(median "$RES/spread_ratio_$n")" spread) | $(na "$(median "$RES/spread_us_$n")") |"
    done
    echo
    echo "## Reload: request to reply of sockets_reload (ms, median), 2 processes"
    echo
    echo "| change | bare bind loop | $(for B in ${BACKENDS:-sqlite}; do printf '%s | ' "$B"; done)"
    echo "|---|---|$(for B in ${BACKENDS:-sqlite}; do printf -- '---|'; done)"
    for n in $RELOAD_SIZES; do
        echo "| add $n sockets (from none) | $(floor_ms "$n") | $(for B in ${BACKENDS:-sqlite}; do printf '%s | ' "$(sd_or "$(median "$RES/reload_${B}_add_$n")" reload)"; done)"
    done
    for n in $CHANGE_SIZES; do
        echo "| change 1 row among $n | $(floor_ms 1) | $(for B in ${BACKENDS:-sqlite}; do printf '%s | ' "$(sd_or "$(median "$RES/reload_${B}_change_$n")" reload)"; done)"
    done
    for n in $RELOAD_SIZES; do
        echo "| remove $n sockets (to none) | - | $(for B in ${BACKENDS:-sqlite}; do printf '%s | ' "$(sd_or "$(median "$RES/reload_${B}_remove_$n")" reload)"; done)"
    done
    echo
    echo "## Loss during reloads (10 stable sockets under load; 10 others added and removed)"
    echo
    echo "| reloads done | sent | answered | lost | late | non-200 | reload ms (median) |"
    echo "|---|---|---|---|---|---|---|"
    if [ -s "$RES/loss.json" ]; then
        echo "| $(cat "$RES/loss_reloads_ok") | $(jget "$RES/loss.json" sent) | $(jget "$RES/loss.json" answered) | **$(jget "$RES/loss.json" lost)** | $(jget "$RES/loss.json" late) | $(jget "$RES/loss.json" non200) | $(median "$RES/loss_reload_ms") |"
    else
        echo "| $(sd_or "" loss) | | | | | | |"
    fi
    echo
    echo "## Memory (PSS from /proc/PID/smaps_rollup, KiB; idle)"
    echo
    echo "| what | processes | PSS total | PSS per process | RSS per process |"
    echo "|---|---|---|---|---|"
    for P in $PROCS; do
        [ -s "$RES/pss_sd_$P" ] && echo "| sipsockd, processes=$P (+ 1 idle stream worker), 1 socket, after load | $(pss_procs "$RES/pss_sd_$P") | $(pss_total "$RES/pss_sd_$P") | $(pss_detail "$RES/pss_sd_$P") | $(rss_detail "$RES/pss_sd_$P") |"
        [ -s "$RES/pss_kam_$P" ] && echo "| Kamailio, children=$P, 1 socket, after load | $(pss_procs "$RES/pss_kam_$P") | $(pss_total "$RES/pss_kam_$P") | $(pss_detail "$RES/pss_kam_$P") | $(rss_detail "$RES/pss_kam_$P") |"
        [ -s "$RES/pss_minr_$P" ] && echo "| min_responder, $P processes | $(pss_procs "$RES/pss_minr_$P") | $(pss_total "$RES/pss_minr_$P") | $(pss_detail "$RES/pss_minr_$P") | $(rss_detail "$RES/pss_minr_$P") |"
    done
    for N in $STREAM_WORKERS; do
        [ -s "$RES/pss_ssd_$N" ] && echo "| sipsockd, [tcp] workers=$N (+ 1 idle UDP worker), $(echo $STREAMS | sed 's/ / + /') listeners, after load | $(pss_procs "$RES/pss_ssd_$N") | $(pss_total "$RES/pss_ssd_$N") | $(pss_detail "$RES/pss_ssd_$N") | $(rss_detail "$RES/pss_ssd_$N") |"
        [ -s "$RES/pss_skam_$N" ] && echo "| Kamailio, tcp_children=$N, $(echo $STREAMS | sed 's/ / + /') listeners, after load | $(pss_procs "$RES/pss_skam_$N") | $(pss_total "$RES/pss_skam_$N") | $(pss_detail "$RES/pss_skam_$N") | $(rss_detail "$RES/pss_skam_$N") |"
    done
    [ -s "$RES/pss_sd_empty" ] && echo "| sipsockd, processes=2 (+ 1 idle stream worker), no socket | $(pss_procs "$RES/pss_sd_empty") | $(pss_total "$RES/pss_sd_empty") | $(pss_detail "$RES/pss_sd_empty") | $(rss_detail "$RES/pss_sd_empty") |"
    [ -s "$RES/pss_sd_big" ] && echo "| sipsockd, processes=2 (+ 1 idle stream worker), $BIG sockets | $(pss_procs "$RES/pss_sd_big") | $(pss_total "$RES/pss_sd_big") | $(pss_detail "$RES/pss_sd_big") | $(rss_detail "$RES/pss_sd_big") |"
    [ -s "$RES/shm_size" ] && echo "| shm file, max_sockets=$((BIG + 10)) | - | $(cat "$RES/shm_alloc") allocated | $(cat "$RES/shm_size") bytes (file size) | |"
    echo
    if [ -s "$RES/anomalies" ]; then
        echo "Throughput runs with unanswered or non-200 requests (the rate counts answers only):"
        sed 's/^/- /' "$RES/anomalies"
        echo
    fi
    if [ ${#FAILED[@]} -gt 0 ]; then
        echo "Not measured / failed:"
        for f in "${FAILED[@]}"; do echo "- $f"; done
        echo
    fi
    echo "Took $(($(date +%s) - T0)) s (throughput section $T_TP s, tcp/tls section ${T_STREAM:-0} s)."
} >"$WORK/table.md"

cat "$WORK/table.md"
[ -n "$OUT" ] && cp "$WORK/table.md" "$OUT"

if [ "$SMOKE" = 1 ]; then
    # The tooling works when the peers answered and, with sipsockd, every section gave a figure.
    section throughput && { [ -s "$RES/minr_2" ] || fail "smoke: min_responder gave no rate"; }
    if [ "$WITH_SIPSOCKD" = 1 ]; then
        for t in $STREAMS; do [ -s "$RES/s${t}_sd_1" ] || fail "smoke: sipsockd gave no $t rate"; done
    fi
fi
[ ${#FAILED[@]} -eq 0 ]
