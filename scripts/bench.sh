#!/usr/bin/env bash
# scripts/bench.sh: sipsockd against its peers, in one command, on this machine.
#
# Sections, run in this order (--only picks some):
#   rate          UDP OPTIONS answered per second at processes 1 and 2: sipsockd against Kamailio
#                 run with its fast allocator (-X fm, children = processes, one UDP listener) and
#                 against min_responder (the floor), interleaved rounds, the server's CPU per
#                 request beside every rate
#   instructions  user-space instructions per request of the one process that serves UDP
#                 (sipsockd processes=1, Kamailio -X fm children=1, min_responder), counted with
#                 callgrind (or perf stat where the CPU counts instructions)
#   memory        total PSS of every process: sipsockd processes=2 with no stream row against
#                 Kamailio -X fm children=2
#   reload        sockets_reload, request to reply: 10,000 new UDP sockets, a one-row change and a
#                 no-op among 10,000, on SQLite, PostgreSQL and MariaDB, beside a bare bind loop
#   spread        the same load on 1, 100 and 1,000 dynamic sockets (sipsockd, 2 processes)
#   loss          requests lost while reloads add and remove other sockets under load
#   tcp, tls      OPTIONS over persistent connections against Kamailio's TCP/TLS listeners
# A status table at the end sets the figures against the targets of issue 10 (met / missed).
#
# usage: scripts/bench.sh [--smoke] [--only LIST] [--runs N] [--secs S] [--processes "1 2"]
#                         [--window N] [--client-sockets N] [--requests N] [--counter C]
#                         [--kamailio-qm] [--stream-workers "1 2"] [--stream-runs N]
#                         [--connections N] [--no-sipsockd] [--no-kamailio] [--no-install]
#                         [--out FILE] [--keep]
#   --smoke           well under a minute, every section with small figures (CI runs this). Fails
#                     only when a figure of sipsockd itself is missing: a peer that cannot run is
#                     reported as "not measured: why"
#   --only LIST       comma-separated: rate,instructions,memory,reload,spread,loss,tcp,tls
#   --runs N          rounds per figure (default 5); --secs S: length of a load run (default 3)
#   --requests N      instructions: requests of the long run (default 20000; the short one is N/4)
#   --counter C       instructions: callgrind, perf or auto (default: perf when `perf stat -e
#                     instructions:u` counts on this machine, else callgrind)
#   --kamailio-qm     also Kamailio with its default allocator (-X qm), labelled as such
#   --client-sockets  UDP sockets sipload sends from (default 1)
#   --no-install      never apt-get install a missing peer or tool (default: install when root)
#   --out FILE        also write the report (markdown) to FILE; --keep: keep the work directory
# Environment: SIPSOCKD_BENCH_PG_URL (default postgres://postgres@127.0.0.1/test),
#   SIPSOCKD_BENCH_MYSQL_URL (default mysql://root@127.0.0.1/test), SIPSOCKD_BENCH_BIG (the
#   reload set, default 10000), SIPSOCKD_BENCH_NO_BUILD=1, SIPSOCKD_BENCH_KAMAILIO (the kamailio
#   binary, default: kamailio from PATH), SIPSOCKD_BENCH_KAMAILIO_MODULES (its module directory,
#   default: found under /usr/lib*).
#
# Bounds: traffic only to 127.0.0.0/8; every load run is bounded in count and time; every wait has
# a deadline; every process started here is stopped on exit (trap), by its pid; scratch databases
# are dropped. The full run takes about 7 minutes after the build on a 2-core machine.
#
# Adding a section NAME: write run_NAME (measures; `put KEY VALUE` stores a sample under $RES,
# `fail WHY` marks a missing sipsockd figure, `peer_note WHY` a peer that could not be measured),
# report_NAME (prints its markdown table) and, when it has targets, status_NAME (prints rows of
# the status table with `status_row`); then add NAME to SECTIONS. --only, --smoke and the report
# pick it up.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

SECTIONS="rate instructions memory reload spread loss stream"

# Defaults, then --smoke's, then the options given (which win).
SMOKE=0
for a in "$@"; do [ "$a" = --smoke ] && SMOKE=1; done
RUNS=5 SECS=3 WARM=0.5 WINDOW=128 CLIENT_SOCKETS=1 PROCS="1 2" INSTR_N=20000 COUNTER=auto
STREAM_WORKERS="1 2" STREAM_RUNS=3 CONNS=16 SPREAD="100 1000" LOSS_RELOADS=100 MEM_SECS=1
BIG=${SIPSOCKD_BENCH_BIG:-10000}
if [ "$SMOKE" = 1 ]; then
    RUNS=1 SECS=0.3 WARM=0.1 PROCS="2" INSTR_N=1000 STREAM_WORKERS="1" STREAM_RUNS=1
    SPREAD="10 100" LOSS_RELOADS=4 MEM_SECS=0.3 BIG=100
fi
WITH_SIPSOCKD=1 WITH_KAMAILIO=1 KAM_QM=0 INSTALL=1 OUT="" KEEP=0 ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
    --smoke) ;;
    --only) ONLY=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --secs) SECS=$2; shift ;;
    --processes) PROCS=$2; shift ;;
    --window) WINDOW=$2; shift ;;
    --client-sockets) CLIENT_SOCKETS=$2; shift ;;
    --requests) INSTR_N=$2; shift ;;
    --counter) COUNTER=$2; shift ;;
    --kamailio-qm) KAM_QM=1 ;;
    --stream-workers) STREAM_WORKERS=$2; shift ;;
    --stream-runs) STREAM_RUNS=$2; shift ;;
    --connections) CONNS=$2; shift ;;
    --no-sipsockd) WITH_SIPSOCKD=0 ;;
    --no-kamailio) WITH_KAMAILIO=0 ;;
    --no-install) INSTALL=0 ;;
    --out) OUT=$2; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
case $COUNTER in auto | callgrind | perf) ;; *) echo "bench.sh: --counter callgrind|perf|auto" >&2; exit 2 ;; esac

# --only: the sections asked for; tcp and tls are the two halves of the stream section.
STREAMS="tcp tls"
if [ -n "$ONLY" ]; then
    want=""
    STREAMS=""
    for s in ${ONLY//,/ }; do
        case $s in
        tcp | tls) STREAMS="$STREAMS $s"; want="$want stream" ;;
        stream) STREAMS="tcp tls"; want="$want stream" ;;
        *)
            case " $SECTIONS " in
            *" $s "*) want="$want $s" ;;
            *) echo "bench.sh: unknown section $s (known: ${SECTIONS/stream/tcp tls})" >&2; exit 2 ;;
            esac ;;
        esac
    done
    SECTIONS=$(for s in $SECTIONS; do case " $want " in *" $s "*) printf '%s ' "$s" ;; esac; done)
fi
read -ra _s <<<"$STREAMS" && STREAMS="${_s[*]}" # trimmed
selected() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

PG_URL=${SIPSOCKD_BENCH_PG_URL:-postgres://postgres@127.0.0.1/test}
MY_URL=${SIPSOCKD_BENCH_MYSQL_URL:-mysql://root@127.0.0.1/test}

# Ports (all on loopback). Dynamic socket sets use 127.0.0.2-251, 250 per port.
KAM_PORT=25070 KAMQ_PORT=25073 MINR_PORT=25080 SIPS_PORT=25090        # rate
I_KAM_PORT=25170 I_KAMQ_PORT=25173 I_MINR_PORT=25180 I_SIPS_PORT=25190 # instructions
M_KAM_PORT=25270 M_MINR_PORT=25280 M_SIPS_PORT=25290 M_SIPS1_PORT=25291 # memory
RELOAD_BASE=21000 CHANGE_PORT=23999 SPREAD_BASE=22000 LOSS_BASE=24000 CHURN_BASE=24100
KAM_TCP_PORT=25071 KAM_TLS_PORT=25072 SD_TCP_PORT=25091 SD_TLS_PORT=25092

WORK=$(mktemp -d /tmp/sipsockd-bench.XXXXXX)
RES=$WORK/res
mkdir -p "$RES"
STARTED=()     # pids of every process started in the background here
SCRATCH_DBS=() # "pg NAME" / "mysql NAME" to drop at exit
SHM_FILES=()
FAILED=()      # sipsockd figures (or our own tools) that could not be measured: exit 1
NOTES=()       # peer figures that could not be measured, and why: reported, exit 0

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { FAILED+=("$*"); log "FAILED: $*"; }
peer_note() { # WHY: a peer's figure is not measured (not a failure of the run)
    local n
    for n in "${NOTES[@]}"; do [ "$n" = "$1" ] && return 0; done
    NOTES+=("$1")
    log "not measured: $1"
}

descendants() { # PID: every descendant pid, deepest last
    local k
    for k in $(pgrep -P "$1" 2>/dev/null); do
        echo "$k"
        descendants "$k"
    done
}

stop_tree() { # PID: TERM the process, wait up to 10 s, then KILL it and what it had started
    local pid=$1 kids k
    kill -0 "$pid" 2>/dev/null || return 0
    kids=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    for k in $pid $kids; do
        kill -0 "$k" 2>/dev/null && kill -KILL "$k" 2>/dev/null
    done
    wait "$pid" 2>/dev/null
    return 0
}

stop_leaves_first() { # PID: TERM its descendants, wait for them (10 s), then stop it (min_responder
    # kills its children with SIGKILL when it dies; a profiled child must exit by itself first)
    local pid=$1 k
    for k in $(descendants "$pid"); do kill -TERM "$k" 2>/dev/null; done
    for _ in $(seq 100); do
        [ -z "$(descendants "$pid")" ] && break
        sleep 0.1
    done
    stop_tree "$pid"
}

cleanup() {
    local p d f
    trap - EXIT INT TERM
    for p in "${STARTED[@]}"; do stop_tree "$p"; done
    for d in "${SCRATCH_DBS[@]}"; do
        case ${d%% *} in
        pg) sql_pg_admin "DROP DATABASE IF EXISTS ${d#* }" >/dev/null 2>&1 ;;
        mysql) sql_mysql_admin "DROP DATABASE IF EXISTS ${d#* }" >/dev/null 2>&1 ;;
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

median() { # FILE: median of the numbers in it (one a line; at most 3 decimals), "" when empty
    [ -s "$1" ] || return 0
    sort -g "$1" | awk '{a[NR]=$1} END {m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2
        s = sprintf("%.3f", m); sub(/0+$/, "", s); sub(/\.$/, "", s); print s}'
}
med() { median "$RES/$1"; } # KEY: median of the samples stored under KEY
range() { # KEY: "min-max" of the samples, or the one value
    [ -s "$RES/$1" ] || return 0
    sort -g "$RES/$1" | awk 'NR == 1 {lo = $1} {hi = $1} END {if (lo == hi) print lo; else print lo "-" hi}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b+0 > 0 && a != "") printf "%.3f\n", a/b}'; }
jget() { # FILE KEY: a number from sipload's JSON
    grep -o "\"$2\": [0-9.e+-]*" "$1" 2>/dev/null | head -1 | awk '{print $2}'
}
int() { [ -z "$1" ] || awk -v v="$1" 'BEGIN {printf "%d\n", v + 0.5}'; }
thou() { # N: rounded, with thousands separators
    [ -z "$1" ] || awk -v v="$1" 'BEGIN {s = sprintf("%d", v + 0.5); o = ""
        while (length(s) > 3) {o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3)}
        print s o}'
}
put() { [ -z "$2" ] || echo "$2" >>"$RES/$1"; } # KEY VALUE: one more sample (none when empty)
or_dash() { echo "${1:--}"; }
med_range() { # KEY DECIMALS: "median (min-max)" to DECIMALS places, or "-" without samples
    local m
    m=$(med "$1")
    if [ -z "$m" ]; then echo "-"; return; fi
    sort -g "$RES/$1" | awk -v m="$m" -v d="$2" 'NR == 1 {lo = $1} {hi = $1}
        END {f = "%." d "f"; printf f " (" f "-" f ")\n", m, lo, hi}'
}
# VERDICT FIGURE OP TARGET: "met" / "missed" (OP: le, lt, ge), "not measured" without a figure.
verdict() {
    [ -n "$1" ] || { echo "not measured"; return; }
    awk -v f="$1" -v op="$2" -v t="$3" 'BEGIN {
        ok = (op == "le") ? f <= t : (op == "lt") ? f < t : f >= t
        print (ok ? "**met**" : "missed")}'
}

# ---------------------------------------------------------------------------------------------
# Tools and peers

# 10,000 sockets take that many fds in the supervisor and in each worker (and the daemon checks
# max_sockets + workers + 64 against the limit at start): raise the hard limit when allowed
# (root), then the soft one.
ulimit -Hn 65536 2>/dev/null
ulimit -n "$(ulimit -Hn)" 2>/dev/null

INSTALL_WHY=""
apt_install() { # PACKAGES...: install with apt-get when allowed; INSTALL_WHY says why not
    if [ "$INSTALL" = 0 ]; then INSTALL_WHY="--no-install given"; return 1; fi
    if [ "$(id -u)" != 0 ]; then INSTALL_WHY="not root, so not installed"; return 1; fi
    if ! command -v apt-get >/dev/null; then INSTALL_WHY="no apt-get to install it"; return 1; fi
    log "installing $* (apt-get)"
    # Keep a package from starting a system instance: that one would not be ours to stop.
    local policy_added=0 ok=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
    fi
    if timeout 600 apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "$@" >&2; then
        ok=1
    fi
    [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$ok" = 1 ] || INSTALL_WHY="apt-get install $* failed"
    hash -r
    [ "$ok" = 1 ]
}

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
if [ "$WITH_SIPSOCKD" = 1 ] && [ ! -x "$BIN" ]; then fail "$BIN missing"; WITH_SIPSOCKD=0; fi
# Run private copies: PSS splits a file's pages among every process mapping them, so another
# sipsockd or min_responder started from the same file (a test run) would make ours look smaller.
mkdir -p "$WORK/bin"
if [ "$WITH_SIPSOCKD" = 1 ]; then cp "$BIN" "$WORK/bin/sipsockd" && BIN=$WORK/bin/sipsockd; fi
cp "$MINR" "$WORK/bin/min_responder" && MINR=$WORK/bin/min_responder

# Kamailio: KAM_WHY is empty when it can run, else why it cannot (then its figures are "not
# measured"); KAM_TLS_WHY the same for its TLS module.
KAMAILIO=${SIPSOCKD_BENCH_KAMAILIO:-kamailio}
KAM_WHY="" KAM_TLS_WHY="" KAM_MPATH="" KAM_VERSION=""
if [ "$WITH_KAMAILIO" = 0 ]; then
    KAM_WHY="Kamailio: --no-kamailio given"
else
    if ! command -v "$KAMAILIO" >/dev/null && [ -z "${SIPSOCKD_BENCH_KAMAILIO:-}" ]; then
        apt_install kamailio kamailio-tls-modules
    fi
    if ! command -v "$KAMAILIO" >/dev/null; then
        KAM_WHY="Kamailio: $KAMAILIO is not installed (${INSTALL_WHY:-not found})"
    else
        KAM_MPATH=${SIPSOCKD_BENCH_KAMAILIO_MODULES:-}
        if [ -z "$KAM_MPATH" ]; then
            KAM_MPATH=$(find /usr/lib /usr/lib64 /usr/local/lib -name sl.so -path '*kamailio*' 2>/dev/null | head -1)
            KAM_MPATH=${KAM_MPATH%/sl.so}
        fi
        KAM_VERSION=$("$KAMAILIO" -v 2>/dev/null | head -1 | awk '{print $3}')
        if [ ! -e "$KAM_MPATH/sl.so" ]; then
            KAM_WHY="Kamailio: its module sl.so is not in ${KAM_MPATH:-any kamailio module directory}"
        elif echo " $STREAMS " | grep -q " tls " && selected stream; then
            if [ ! -e "$KAM_MPATH/tls.so" ] && [ -z "${SIPSOCKD_BENCH_KAMAILIO_MODULES:-}" ]; then
                apt_install kamailio-tls-modules
            fi
            [ -e "$KAM_MPATH/tls.so" ] ||
                KAM_TLS_WHY="Kamailio TLS: tls.so is not in $KAM_MPATH (package kamailio-tls-modules; ${INSTALL_WHY:-not installed})"
        fi
    fi
fi
[ -n "$KAM_WHY" ] && peer_note "$KAM_WHY"
kam_ok() { [ -z "$KAM_WHY" ]; }
KAM_ALLOCS="fm"
[ "$KAM_QM" = 1 ] && KAM_ALLOCS="fm qm"
kam_label() { # ALLOC
    case $1 in fm) echo "Kamailio -X fm" ;; qm) echo "Kamailio -X qm (its default allocator)" ;; esac
}

# ---------------------------------------------------------------------------------------------
# Helpers: addresses, databases, servers, measurements

addrs() { # N BASE_PORT: N socket texts on 127.0.0.2-251, 250 per port
    awk -v n="$1" -v b="$2" 'BEGIN {for (i = 0; i < n; i++) printf "127.0.0.%d:%d\n", 2 + i % 250, b + int(i / 250)}'
}

# URL pieces for the CLI clients (user[:pass]@host[:port]/db).
url_db() { echo "$1" | sed -E 's|^[a-z]+://[^/]*/([^?]*).*|\1|'; }
url_with_db() { echo "$1" | sed -E "s|^([a-z]+://[^/]*)/[^?]*|\1/$2|"; }
mysql_args() { # URL: mysql client arguments (without the database), one a line
    echo "$1" | sed -E 's|^mysql://||; s|/.*||' | awk -F@ '{
        up = (NF > 1) ? $1 : ""; hp = (NF > 1) ? $2 : $1
        n = split(up, u, ":"); m = split(hp, h, ":")
        print "-h" h[1]; if (m > 1) print "-P" h[2]
        if (u[1] != "") print "-u" u[1]; if (n > 1) print "-p" u[2]
        print "--protocol=TCP"}'
}
mysql_cli() { # URL ARGS...: the mysql client on URL's server
    local url=$1 a=()
    shift
    mapfile -t a < <(mysql_args "$url")
    mysql "${a[@]}" "$@"
}
sql_pg_admin() { psql -qAt -v ON_ERROR_STOP=1 "$PG_URL" -c "$1"; }
sql_mysql_admin() { mysql_cli "$MY_URL" -N -e "$1" "$(url_db "$MY_URL")"; }
sql_run() { # BACKEND TARGET: run the SQL on stdin (TARGET: sqlite file, or database URL)
    case $1 in
    sqlite)
        if command -v sqlite3 >/dev/null; then
            sqlite3 -bail "$2"
        else
            python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.stdin.read()); c.commit()' "$2"
        fi ;;
    pg) psql -qAt -v ON_ERROR_STOP=1 "$2" >/dev/null ;;
    mysql) mysql_cli "$2" "$(url_db "$2")" ;;
    esac
}
insert_rows() { # BACKEND TARGET FILE: insert the socket texts of FILE (one per line) as rows
    { echo "BEGIN;"
      awk 'NR % 500 == 1 {if (NR > 1) print ";"; printf "INSERT INTO sockets (socket) VALUES "} {printf "%s(\x27udp:%s\x27)", (NR % 500 == 1 ? "" : ","), $1} END {if (NR) print ";"}' "$3"
      echo "COMMIT;"; } | sql_run "$1" "$2"
}

PROBE_TIMEOUT=0.2
wait_answers() { # IP:PORT [SIPLOAD_ARGS...]: until an OPTIONS is answered (30 s at most)
    local t=$1 end=$((SECONDS + 30))
    shift
    while [ "$SECONDS" -lt "$end" ]; do
        "$SIPLOAD" --target "$t" "$@" --count 1 --timeout "$PROBE_TIMEOUT" --grace "$PROBE_TIMEOUT" --check --json >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

kam_cfg() { # CHILDREN PORT DIR: the UDP configuration, in DIR/kamailio.cfg
    mkdir -p "$3"
    sed -e "s/@CHILDREN@/$1/" -e "s/@LISTEN@/udp:127.0.0.1:$2/" -e "s|@MPATH@|$KAM_MPATH/|" \
        "$ROOT/scripts/bench/kamailio.cfg.in" >"$3/kamailio.cfg"
}
start_kamailio() { # ALLOC CHILDREN PORT DIR [WRAPPER...]: sets KPID
    local alloc=$1 children=$2 port=$3 dir=$4
    shift 4
    kam_cfg "$children" "$port" "$dir"
    # -m/-M: shared and private memory pools (PSS counts only the pages touched).
    "$@" "$KAMAILIO" -X "$alloc" -DD -E -f "$dir/kamailio.cfg" -Y "$dir" -w "$dir" -m 64 -M 8 >"$dir/log" 2>&1 &
    KPID=$!
    STARTED+=("$KPID")
}
kam_start_answering() { # ALLOC CHILDREN PORT DIR [WRAPPER...]: KPID set when it answers, else a note
    local what
    what="$(kam_label "$1") (children=$2)"
    start_kamailio "$@"
    if ! wait_answers "127.0.0.1:$3"; then
        peer_note "$what does not answer: $(grep -v '^\s*$' "$4/log" | tail -1 | cut -c1-200)"
        stop_tree "$KPID"
        KPID=""
        return 1
    fi
}

start_minr() { # PROCESSES PORT LOG [WRAPPER...]: sets MPID
    local p=$1 port=$2 logf=$3
    shift 3
    "$@" "$MINR" --listen "127.0.0.1:$port" --processes "$p" --duration 900 >/dev/null 2>"$logf" &
    MPID=$!
    STARTED+=("$MPID")
}

# sipsockd: NAME PROCESSES MAX_SOCKETS DB_URL [STREAM_WORKERS]; sets SD_DIR, SD_CFG. Without
# STREAM_WORKERS the [tcp] section is left out (the default pool, today 4 stream workers, all
# idle without a stream row).
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
EOF
    [ -n "${5:-}" ] && printf '\n[tcp]\nworkers = %s\n' "$5" >>"$SD_CFG"
    return 0
}
sd_mi() { $MI_TIME --fifo "$SD_DIR/fifo" --reply-dir "$SD_DIR/reply/" "$@"; }
sd_start() { # [ENV=VALUE...]: sets SD_PID; 0 when the MI answers (30 s at most)
    local end=$((SECONDS + 30))
    env RUST_LOG="${RUST_LOG:-warn}" "$@" "$BIN" --config "$SD_CFG" run 2>"$SD_DIR/log" &
    SD_PID=$!
    STARTED+=("$SD_PID")
    while [ "$SECONDS" -lt "$end" ]; do
        kill -0 "$SD_PID" 2>/dev/null || break
        if [ -p "$SD_DIR/fifo" ] && sd_mi --timeout 2 version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    log "sipsockd did not start; its log:"
    tail -20 "$SD_DIR/log" >&2
    return 1
}
sd_one() { # NAME PROCESSES PORT [STREAM_WORKERS|""] [ENV=VALUE...]: one UDP row, started, answering
    local name=$1 p=$2 port=$3 sw=${4:-}
    shift 3
    [ $# -gt 0 ] && shift
    sd_config "$name" "$p" 10 "sqlite://$WORK/$name.db" "$sw"
    "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err" &&
        "$BIN" --config "$SD_CFG" db add "udp:127.0.0.1:$port" >/dev/null 2>>"$SD_DIR/init.err" &&
        sd_start "$@" && wait_answers "127.0.0.1:$port"
}

pss_of() { # PID: "PSS_KIB RSS_KIB" of one process
    awk '/^Pss:/ {p=$2} /^Rss:/ {r=$2} END {if (NR) print p+0, r+0}' "/proc/$1/smaps_rollup" 2>/dev/null
}
pss_tree() { # PID: "PSS_TOTAL|PROCESSES|PSS + PSS ...|RSS + RSS ..." (KiB), process then descendants
    local total=0 n=0 pss="" rss="" k v
    for k in $1 $(descendants "$1"); do
        v=$(pss_of "$k")
        [ -n "$v" ] || continue
        total=$((total + ${v% *}))
        n=$((n + 1))
        pss="${pss:+$pss + }${v% *}"
        rss="${rss:+$rss + }${v#* }"
    done
    echo "$total|$n|$pss|$rss"
}
field() { [ -s "$RES/$1" ] && cut -d'|' -f"$2" "$RES/$1"; } # KEY N: field N of a pss_tree record
cpu_tree() { # PID: CPU time (user + system, clock ticks) of the process and its descendants
    local k
    for k in $1 $(descendants "$1"); do
        sed 's/^.*) //' "/proc/$k/stat" 2>/dev/null | awk '{print $12 + $13}'
    done | awk '{s += $1} END {print s + 0}'
}
HZ=$(getconf CLK_TCK)

load() { # OUT_JSON SERVER_PID SIPLOAD_ARGS...: a warm-up run, then one measured run; writes the
    # server's CPU microseconds per answered request (utime + stime of all its processes over the
    # measured run, from /proc/PID/stat) to OUT_JSON.cpu
    local out=$1 spid=$2 c0 c1 bad
    shift 2
    "$SIPLOAD" --duration "$WARM" --window "$WINDOW" "$@" >/dev/null 2>>"$WORK/sipload.err"
    c0=$(cpu_tree "$spid")
    "$SIPLOAD" --json --duration "$SECS" --window "$WINDOW" "$@" >"$out" 2>>"$WORK/sipload.err" || return 1
    c1=$(cpu_tree "$spid")
    bad=$(awk -v l="$(jget "$out" lost)" -v n="$(jget "$out" non200)" -v s="$(jget "$out" targets_silent)" -v c="$(jget "$out" closed)" 'BEGIN {if (l + n + s + c > 0) printf "lost %d, non-200 %d, silent targets %d, connections closed %d", l, n, s, c}')
    [ -z "$bad" ] || echo "$(basename "$out" .json): $bad" >>"$RES/anomalies"
    awk -v c="$((c1 - c0))" -v hz="$HZ" -v a="$(jget "$out" answered)" \
        'BEGIN {if (a > 0) printf "%.2f\n", c / hz * 1e6 / a}' >"$out.cpu"
}
# KEY OUT_JSON: store a load run's rate, server CPU per request and sipload CPU under KEY
put_run() {
    put "rate_$1" "$(jget "$2" rate)"
    put "us_$1" "$(cat "$2.cpu" 2>/dev/null)"
    put "gen_$1" "$(jget "$2" cpu_pct)"
}

# ---------------------------------------------------------------------------------------------
# rate: UDP OPTIONS per second; sipsockd vs Kamailio (same children) vs min_responder

rate_pair() { # A B P ROUND: that round's ratio of A's rate to B's, and of B's CPU per request to A's
    local fa=$RES/rate-$1-$3-$4.json fb=$RES/rate-$2-$3-$4.json
    [ -s "$fa" ] && [ -s "$fb" ] || return 0
    put "ratio_$1_$2_$3" "$(ratio "$(jget "$fa" rate)" "$(jget "$fb" rate)")"
    put "cpuratio_$1_$2_$3" "$(ratio "$(cat "$fb.cpu")" "$(cat "$fa.cpu")")"
}

run_rate() {
    local P r k f i a n port order
    declare -A pid=() tgt=()
    for P in $PROCS; do
        log "rate, $P process(es)"
        pid=() tgt=()
        if kam_ok; then
            for a in $KAM_ALLOCS; do
                k=kam$a
                [ "$a" = fm ] && port=$KAM_PORT || port=$KAMQ_PORT
                kam_start_answering "$a" "$P" "$port" "$WORK/kam$a-$P" && pid[$k]=$KPID tgt[$k]=127.0.0.1:$port
            done
        fi
        start_minr "$P" "$MINR_PORT" "$WORK/minr-$P.log"
        if wait_answers "127.0.0.1:$MINR_PORT"; then
            pid[minr]=$MPID tgt[minr]=127.0.0.1:$MINR_PORT
        else
            fail "min_responder ($P processes) does not answer"
        fi
        if [ "$WITH_SIPSOCKD" = 1 ]; then
            # [tcp] workers = 1: the smallest stream pool allowed today, idle (no stream row).
            if sd_one "rate$P" "$P" "$SIPS_PORT" 1; then
                pid[sd]=$SD_PID tgt[sd]=127.0.0.1:$SIPS_PORT
            else
                fail "sipsockd ($P processes) does not answer (see $SD_DIR/log)"
            fi
        fi
        order=$(for k in kamfm kamqm minr sd; do [ -n "${pid[$k]:-}" ] && echo $k; done)
        n=$(echo "$order" | grep -c .)
        [ "$n" -gt 0 ] || continue
        for r in $(seq "$RUNS"); do
            # Interleaved: each round loads every server once, starting one further each round.
            i=$(((r - 1) % n))
            for k in $(echo "$order" | tail -n +$((i + 1))) $(echo "$order" | head -n "$i"); do
                f=$RES/rate-$k-$P-$r.json
                load "$f" "${pid[$k]}" --sockets "$CLIENT_SOCKETS" --target "${tgt[$k]}" && put_run "${k}_$P" "$f"
            done
            rate_pair sd kamfm "$P" "$r"
            rate_pair sd kamqm "$P" "$r"
            rate_pair sd minr "$P" "$r"
            rate_pair kamfm minr "$P" "$r"
        done
        for k in "${!pid[@]}"; do stop_tree "${pid[$k]}"; done
    done
}

report_rate() {
    local P a kcols="" khead="" kcpu=""
    for a in $KAM_ALLOCS; do
        khead="$khead $(kam_label "$a") |"
        kcols="$kcols---|"
    done
    echo "## UDP rate (OPTIONS answered per second, one socket; server CPU per request in brackets)"
    echo
    echo "Generator: sipload, closed loop, window $WINDOW, $CLIENT_SOCKETS client UDP socket(s) (sendmmsg/recvmmsg, 64 a batch), one thread on the same CPUs; $SECS s measured after a $WARM s warm-up, median of $RUNS interleaved rounds. Kamailio ${KAM_VERSION:-(not run)}: \`-X fm\` (the fast private-memory allocator; \`-X qm\` is its default), children = processes, one UDP listener, TCP disabled, stateless \`sl_send_reply\`. sipsockd: processes = workers on one UDP socket, \`[tcp] workers = 1\` (idle, no stream row). min_responder: the same processes on one socket, echoing the headers unparsed. CPU per request: utime + stime of all the server's processes (/proc/PID/stat) over the measured run, divided by the replies."
    echo
    echo "| processes | sipsockd |$khead min_responder | sipsockd / Kamailio -X fm | target | sipsockd / min_responder | target | Kamailio -X fm CPU / sipsockd CPU per request | sipload CPU % of a core (sd / kam fm / min) |"
    echo "|---|---|$kcols---|---|---|---|---|---|---|"
    for P in $PROCS; do
        kcpu=""
        for a in $KAM_ALLOCS; do kcpu="$kcpu $(cell "kam${a}_$P") |"; done
        local t1="-" t2="-"
        case $P in 1 | 2) t1=">= 1.5: $(verdict "$(med "ratio_sd_kamfm_$P")" ge 1.5)" ;; esac
        [ "$P" = 2 ] && t2=">= 0.85: $(verdict "$(med "ratio_sd_minr_$P")" ge 0.85)"
        echo "| $P | $(cell "sd_$P") |$kcpu $(cell "minr_$P") | $(or_dash "$(med "ratio_sd_kamfm_$P")") | $t1 | $(or_dash "$(med "ratio_sd_minr_$P")") | $t2 | $(or_dash "$(med "cpuratio_sd_kamfm_$P")") | $(or_dash "$(med "gen_sd_$P")") / $(or_dash "$(med "gen_kamfm_$P")") / $(or_dash "$(med "gen_minr_$P")") |"
    done
    [ "$KAM_QM" = 1 ] && for P in $PROCS; do
        echo
        echo "processes=$P: sipsockd / Kamailio -X qm (default allocator) $(or_dash "$(med "ratio_sd_kamqm_$P")")."
    done
    echo
}
cell() { # KEY: "RATE (CPU us)" from the medians of rate_KEY and us_KEY; range of the rates
    local r
    r=$(med "rate_$1")
    [ -n "$r" ] || { echo "-"; return; }
    echo "$(int "$r") ($(med "us_$1") us)"
}

status_rate() {
    local P
    for P in 1 2; do
        status_row "UDP rate, processes=$P: sipsockd >= 1.5 x Kamailio -X fm" \
            "$(fig_x sd kamfm "$P")" "$(verdict "$(med "ratio_sd_kamfm_$P")" ge 1.5)" "scripts/bench.sh --only rate"
    done
    status_row "UDP rate, processes=2: sipsockd >= 0.85 x min_responder" \
        "$(fig_x sd minr 2)" "$(verdict "$(med ratio_sd_minr_2)" ge 0.85)" "scripts/bench.sh --only rate"
}
fig_x() { # A B P: "0.87 x (rounds 0.85-0.90): 180000/s, 5.4 us/request vs 207000/s, 4.1 us/request"
    local m
    m=$(med "ratio_$1_$2_$3")
    [ -n "$m" ] || return 0
    echo "$m x (rounds $(range "ratio_$1_$2_$3")): $(int "$(med "rate_$1_$3")")/s, $(med "us_$1_$3") us/request vs $(int "$(med "rate_$2_$3")")/s, $(med "us_$2_$3") us/request"
}

# ---------------------------------------------------------------------------------------------
# instructions: user-space instructions per request of the one process serving UDP
#
# callgrind: each server starts fresh under `valgrind --tool=callgrind` twice, once answering N/4
# requests and once N; the instructions (Ir) of its serving process are read from the profile
# written at its exit, and per request = (Ir(N) - Ir(N/4)) / (answered(N) - answered(N/4)).
# Start-up, shut-down and the probe that waits for the first answer are in both runs and cancel.
# Serving process: sipsockd's UDP worker (only that one runs under Valgrind: scripts/bench/
# vgworker.c, preloaded into the native supervisor, wraps its exec; the profile's `cmd:` line is
# checked), Kamailio's UDP receiver (the only process whose profile has `receive_msg`),
# min_responder's child (the parent only waits).
# perf: each server runs natively; after a warm-up, `perf stat -e instructions:u -p PID` counts
# the serving process (sipsockd: the worker by its command line; Kamailio: the process that used
# the most CPU in the warm-up; min_responder: its child) during a run of N requests.

VG_SHIM=""
PERF_EVENT=instructions:u
instr_tools() { # sets COUNTER to the one to use; fails when none can run
    if [ "$COUNTER" != callgrind ] && perf stat -x, -e "$PERF_EVENT" true 2>&1 | grep -q '^[0-9][0-9]*,'; then
        COUNTER=perf
        return 0
    fi
    if [ "$COUNTER" = perf ]; then
        fail "instructions: perf stat -e $PERF_EVENT does not count on this machine (use --counter callgrind)"
        return 1
    fi
    COUNTER=callgrind
    command -v valgrind >/dev/null || apt_install valgrind
    if ! command -v valgrind >/dev/null; then
        fail "instructions: valgrind is not installed (${INSTALL_WHY:-apt-get install valgrind})"
        return 1
    fi
    VG_SHIM=$WORK/vgworker.so
    if ! cc -shared -fPIC -O2 -o "$VG_SHIM" "$ROOT/scripts/bench/vgworker.c" -ldl 2>"$WORK/vgworker.err"; then
        fail "instructions: cannot build scripts/bench/vgworker.c: $(head -1 "$WORK/vgworker.err")"
        return 1
    fi
}

# KEY DIR: start server KEY (sd, kamfm, kamqm, minr) for counting, files in DIR; sets IPID[KEY]
declare -A IPID=() ITGT=()
instr_start() {
    local k=$1 d=$2 vg=()
    mkdir -p "$d"
    [ "$COUNTER" = callgrind ] && vg=(valgrind --tool=callgrind "--callgrind-out-file=$d/cg.%p" --dump-line=no)
    case $k in
    sd)
        local envs=()
        [ "$COUNTER" = callgrind ] && envs=("LD_PRELOAD=$VG_SHIM" SIPSOCKD_VG_KIND=udp
            "SIPSOCKD_VG_ARGS=--tool=callgrind --callgrind-out-file=$d/cg.%p --dump-line=no")
        sd_config "instr-$(basename "$(dirname "$d")")" 1 10 "sqlite://$d/sd.db" 1
        if "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err" &&
            "$BIN" --config "$SD_CFG" db add "udp:127.0.0.1:$I_SIPS_PORT" >/dev/null 2>>"$SD_DIR/init.err" &&
            sd_start "${envs[@]}"; then
            IPID[sd]=$SD_PID ITGT[sd]=127.0.0.1:$I_SIPS_PORT
        else
            return 1
        fi ;;
    kamfm | kamqm)
        local port=$I_KAM_PORT
        [ "$k" = kamqm ] && port=$I_KAMQ_PORT
        start_kamailio "${k#kam}" 1 "$port" "$d" "${vg[@]}"
        IPID[$k]=$KPID ITGT[$k]=127.0.0.1:$port ;;
    minr)
        start_minr 1 "$I_MINR_PORT" "$d/log" "${vg[@]}"
        IPID[minr]=$MPID ITGT[minr]=127.0.0.1:$I_MINR_PORT ;;
    esac
}

instr_label() {
    case $1 in
    sd) echo "sipsockd, processes=1" ;;
    kamfm | kamqm) echo "$(kam_label "${1#kam}"), children=1" ;;
    minr) echo "min_responder, 1 process" ;;
    esac
}
instr_what() {
    case $1 in
    sd) echo "the UDP worker (\`worker --kind udp\`)" ;;
    kamfm | kamqm) echo "the UDP receiver (the process running \`receive_msg\`)" ;;
    minr) echo "the serving child" ;;
    esac
}
instr_missing() { # KEY WHY: sipsockd's or min_responder's figure fails the run; Kamailio's is a note
    case $1 in
    sd | minr) fail "instructions, $(instr_label "$1"): $2" ;;
    *) peer_note "instructions, $(instr_label "$1"): $2" ;;
    esac
}

# KEY DIR: the callgrind profile of the serving process (exactly one, else nothing)
cg_file() {
    local k=$1 d=$2 files f
    case $k in
    sd) files=$(grep -l '^cmd:.* worker --kind udp' "$d"/cg.* 2>/dev/null) ;;
    kamfm | kamqm) files=$(grep -l 'receive_msg' "$d"/cg.* 2>/dev/null) ;;
    minr) files=$(for f in "$d"/cg.*; do [ -e "$f" ] && [ "$f" != "$d/cg.${IPID[minr]}" ] && echo "$f"; done) ;;
    esac
    [ "$(echo "$files" | grep -c .)" = 1 ] && echo "$files"
}
cg_total() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; } # FILE: its instructions

cg_top() { # FILE: the 12 functions with the most self instructions, "PERCENT|NAME" a line
    command -v callgrind_annotate >/dev/null || return 0
    # One line per source file and function: inlined copies are summed under the function's
    # name; the object is named only when it is a shared library.
    callgrind_annotate --inclusive=no --auto=no "$1" 2>/dev/null | awk '
        /file:function$/ {on = 1; next}
        on && /^ *$/ {exit}
        on && match($0, /\( *[0-9.]+%\)/) {
            pct = substr($0, RSTART + 1, RLENGTH - 3); gsub(/ /, "", pct)
            name = substr($0, RSTART + RLENGTH); sub(/^ +/, "", name); sub(/^[^:]*:/, "", name)
            if (match(name, / \[[^]]*\]$/)) {
                k = split(substr(name, RSTART + 2, RLENGTH - 3), parts, "/")
                name = substr(name, 1, RSTART - 1)
                if (parts[k] ~ /\.so(\.[0-9]+)*$/) name = name " (" parts[k] ")"
            }
            gsub(/\|/, "\\|", name)
            sum[name] += pct
        }
        END {for (n in sum) printf "%.2f|%s\n", sum[n], n}' | sort -t'|' -k1,1gr | head -12
}

# KEY: the pid to attach perf to (native run, after a warm-up)
perf_pid() {
    local k=$1 p best="" most=-1 c
    case $k in
    sd)
        for p in $(pgrep -P "${IPID[sd]}"); do
            tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- '--kind udp ' && echo "$p"
        done | head -1 ;;
    minr) pgrep -P "${IPID[minr]}" | head -1 ;;
    *)
        for p in $(descendants "${IPID[$k]}"); do
            c=$(cpu_tree "$p")
            [ "$c" -gt "$most" ] && most=$c best=$p
        done
        echo "$best" ;;
    esac
}

run_instructions() {
    local keys="" k n d f n1 n2 lp=() i1 i2 a1 a2 ppid
    instr_tools || return 0
    [ "$WITH_SIPSOCKD" = 1 ] && keys="sd"
    if kam_ok; then for a in $KAM_ALLOCS; do keys="$keys kam$a"; done; fi
    keys="$keys minr"
    n2=$INSTR_N
    n1=$((INSTR_N / 4))
    local passes="$n1 $n2"
    [ "$COUNTER" = perf ] && passes=$n2
    PROBE_TIMEOUT=2
    for n in $passes; do
        log "instructions ($COUNTER): $n requests to each of: $keys"
        IPID=() ITGT=()
        for k in $keys; do
            instr_start "$k" "$WORK/instr/$n/$k" || instr_missing "$k" "does not start (see $WORK/instr/$n/$k)"
        done
        for k in "${!IPID[@]}"; do
            wait_answers "${ITGT[$k]}" || { instr_missing "$k" "does not answer"; unset "IPID[$k]"; }
        done
        if [ "$COUNTER" = perf ]; then
            for k in "${!IPID[@]}"; do
                "$SIPLOAD" --duration 0.5 --target "${ITGT[$k]}" >/dev/null 2>&1
                ppid=$(perf_pid "$k")
                perf stat -x, -e "$PERF_EVENT" -o "$WORK/instr/$n/$k/perf.csv" -p "$ppid" &
                echo $! >"$WORK/instr/$n/$k/perf.pid"
                STARTED+=("$!")
            done
            sleep 0.5 # perf attached before the counted run begins
        fi
        lp=()
        for k in "${!IPID[@]}"; do
            # Closed loop, bounded in count and in time; nothing may be lost (a request answered
            # after its timeout would be served but not counted).
            "$SIPLOAD" --json --count "$n" --duration 300 --window "$WINDOW" --sockets "$CLIENT_SOCKETS" \
                --timeout 30 --grace 30 --target "${ITGT[$k]}" >"$WORK/instr/$n/$k/load.json" 2>>"$WORK/sipload.err" &
            lp+=($!)
        done
        for p in "${lp[@]}"; do wait "$p"; done
        for k in "${!IPID[@]}"; do
            d=$WORK/instr/$n/$k
            if [ "$COUNTER" = perf ]; then
                kill -INT "$(cat "$d/perf.pid")" 2>/dev/null
                wait "$(cat "$d/perf.pid")" 2>/dev/null
            fi
            case $k in
            minr) stop_leaves_first "${IPID[$k]}" ;;
            *) stop_tree "${IPID[$k]}" ;;
            esac
            if [ "$(jget "$d/load.json" lost)" != 0 ] || [ "$(jget "$d/load.json" non200)" != 0 ]; then
                instr_missing "$k" "$n requests: lost $(jget "$d/load.json" lost), non-200 $(jget "$d/load.json" non200)"
                continue
            fi
            if [ "$COUNTER" = perf ]; then
                i1=$(awk -F, -v e="$PERF_EVENT" '$3 == e && $1 ~ /^[0-9]+$/ {print $1}' "$d/perf.csv" 2>/dev/null)
            else
                i1=""
                if f=$(cg_file "$k" "$d"); then
                    i1=$(cg_total "$f")
                    [ "$n" = "$n2" ] && cg_top "$f" >"$RES/top_$k"
                fi
            fi
            if [ -z "$i1" ]; then
                instr_missing "$k" "no instruction count for the serving process (see $d)"
                continue
            fi
            echo "$i1 $(jget "$d/load.json" answered)" >"$RES/instr_raw_${k}_$n"
        done
    done
    PROBE_TIMEOUT=0.2
    for k in $keys; do
        if [ "$COUNTER" = perf ]; then
            [ -s "$RES/instr_raw_${k}_$n2" ] || continue
            read -r i2 a2 <"$RES/instr_raw_${k}_$n2"
            awk -v i="$i2" -v a="$a2" 'BEGIN {if (a > 0) printf "%.0f\n", i / a}' >"$RES/instr_$k"
        else
            if [ ! -s "$RES/instr_raw_${k}_$n1" ] || [ ! -s "$RES/instr_raw_${k}_$n2" ]; then continue; fi
            read -r i1 a1 <"$RES/instr_raw_${k}_$n1"
            read -r i2 a2 <"$RES/instr_raw_${k}_$n2"
            awk -v i1="$i1" -v i2="$i2" -v a1="$a1" -v a2="$a2" \
                'BEGIN {if (a2 > a1) {p = (i2 - i1) / (a2 - a1); printf "%.0f\n", p; printf "%.0f\n", i1 - p * a1 > "/dev/stderr"}}' \
                >"$RES/instr_$k" 2>"$RES/instr_fixed_$k"
        fi
        [ -s "$RES/instr_$k" ] || instr_missing "$k" "no figure"
    done
}

report_instructions() {
    local k
    echo "## Instructions per request (user space, one process serving UDP OPTIONS)"
    echo
    if [ "$COUNTER" = perf ]; then
        echo "Counted with \`perf stat -e $PERF_EVENT -p PID\` on the serving process during $(thou "$INSTR_N") requests (native run, after a 0.5 s warm-up), divided by the replies."
    else
        echo "Counted with callgrind ($(valgrind --version 2>/dev/null)): user-space instructions (Ir) of the serving process only. Each server starts fresh twice, answering $(thou $((INSTR_N / 4))) and then $(thou "$INSTR_N") requests; per request = (Ir(long) - Ir(short)) / (replies(long) - replies(short)), so start-up, shut-down and the probe request cancel out (\"fixed\": the rest, i.e. start-up and shut-down). Generator: sipload, closed loop, window $WINDOW, $CLIENT_SOCKETS client socket(s); under callgrind the server is the bottleneck, so it reads full batches. The kernel's work (system calls, UDP) is not counted."
    fi
    echo
    echo "| server | process counted | instructions per request | fixed (start-up, shut-down) | sipsockd / this |"
    echo "|---|---|---|---|---|"
    for k in sd kamfm kamqm minr; do
        [ "$k" = sd ] && [ "$WITH_SIPSOCKD" = 0 ] && continue
        [ "$k" = kamqm ] && [ "$KAM_QM" = 0 ] && continue
        local x="-"
        [ "$k" = sd ] || x=$(or_dash "$(ratio "$(cat "$RES/instr_sd" 2>/dev/null)" "$(cat "$RES/instr_$k" 2>/dev/null)")")
        echo "| $(instr_label "$k") | $(instr_what "$k") | $(or_dash "$(thou "$(cat "$RES/instr_$k" 2>/dev/null)")") | $(or_dash "$(thou "$(cat "$RES/instr_fixed_$k" 2>/dev/null)")") | $x |"
    done
    echo
    local v
    v=$(cat "$RES/instr_sd" 2>/dev/null)
    echo "sipsockd: $(or_dash "$(thou "$v")") instructions per request; target: <= 12,000 ($(verdict "$v" le 12000))."
    echo
    for k in sd kamfm; do
        [ -s "$RES/top_$k" ] || continue
        echo "Where the instructions of $(instr_label "$k") go: the functions with the most self instructions (callgrind_annotate --inclusive=no on the long run, start-up included):"
        echo
        echo "| % of the process | function |"
        echo "|---|---|"
        awk -F'|' '{name = $0; sub(/^[^|]*\|/, "", name); printf "| %s | `%s` |\n", $1, name}' "$RES/top_$k"
        echo
    done
}

status_instructions() {
    local v
    v=$(cat "$RES/instr_sd" 2>/dev/null)
    status_row "instructions per OPTIONS, one UDP worker <= 12,000" \
        "${v:+$(thou "$v") (Kamailio -X fm $(or_dash "$(thou "$(cat "$RES/instr_kamfm" 2>/dev/null)")"), min_responder $(or_dash "$(thou "$(cat "$RES/instr_minr" 2>/dev/null)")"))}" \
        "$(verdict "$v" le 12000)" "scripts/bench.sh --only instructions"
}

# ---------------------------------------------------------------------------------------------
# memory: total PSS of every process, idle after a short load

mem_measure() { # KEY PID TARGET: a short load, 0.5 s idle, the PSS of every process, then stop it
    "$SIPLOAD" --duration "$MEM_SECS" --window "$WINDOW" --target "$3" >/dev/null 2>>"$WORK/sipload.err"
    sleep 0.5
    pss_tree "$2" >"$RES/pss_$1"
    stop_tree "$2"
}

run_memory() {
    # One server at a time: two processes mapping the same file split its pages' PSS.
    log "memory: sipsockd processes=2, Kamailio -X fm children=2, min_responder 2 processes"
    if [ "$WITH_SIPSOCKD" = 1 ]; then
        # No stream row; the default stream pool ([tcp] left out), then the smallest allowed.
        if sd_one mem-default 2 "$M_SIPS_PORT" ""; then
            mem_measure sd "$SD_PID" "127.0.0.1:$M_SIPS_PORT"
        else
            fail "memory: sipsockd (processes=2) does not answer (see $SD_DIR/log)"
        fi
        if sd_one mem-one 2 "$M_SIPS1_PORT" 1; then
            mem_measure sd1 "$SD_PID" "127.0.0.1:$M_SIPS1_PORT"
        else
            fail "memory: sipsockd (processes=2, [tcp] workers=1) does not answer (see $SD_DIR/log)"
        fi
    fi
    if kam_ok && kam_start_answering fm 2 "$M_KAM_PORT" "$WORK/mem-kam"; then
        mem_measure kam "$KPID" "127.0.0.1:$M_KAM_PORT"
    fi
    start_minr 2 "$M_MINR_PORT" "$WORK/mem-minr.log"
    if wait_answers "127.0.0.1:$M_MINR_PORT"; then
        mem_measure minr "$MPID" "127.0.0.1:$M_MINR_PORT"
    else
        fail "memory: min_responder does not answer"
    fi
    [ "$WITH_SIPSOCKD" = 1 ] && [ ! -s "$RES/pss_sd" ] && fail "memory: no PSS for sipsockd"
    return 0
}

pss_line() { # KEY LABEL
    [ -s "$RES/$1" ] || { echo "| $2 | - | not measured | | |"; return; }
    echo "| $2 | $(field "$1" 2) | $(field "$1" 1) | $(field "$1" 3) | $(field "$1" 4) |"
}
mib() { [ -z "$1" ] || awk -v k="$1" 'BEGIN {printf "%.1f MiB\n", k / 1024}'; }

report_memory() {
    echo "## Memory (PSS from /proc/PID/smaps_rollup, KiB, every process; idle after ${MEM_SECS} s of load)"
    echo
    echo "| what | processes | PSS total | PSS per process (first: the main process) | RSS per process |"
    echo "|---|---|---|---|---|"
    pss_line pss_sd "sipsockd, processes=2, one UDP row, no stream row, default [tcp] workers (the issue's case)"
    pss_line pss_sd1 "sipsockd, processes=2, one UDP row, [tcp] workers = 1 (the fewest allowed today)"
    pss_line pss_kam "Kamailio -X fm, children=2, one UDP listener, all its processes"
    pss_line pss_minr "min_responder, 2 processes"
    echo
    local a b
    a=$(field pss_sd 1) b=$(field pss_kam 1)
    echo "sipsockd / Kamailio -X fm: $(or_dash "$(ratio "$a" "$b")") ($(or_dash "$(mib "$a")") vs $(or_dash "$(mib "$b")")); target: <= 1 ($(verdict "$(ratio "$a" "$b")" le 1))."
    echo
}

status_memory() {
    local a b
    a=$(field pss_sd 1) b=$(field pss_kam 1)
    status_row "total PSS, processes=2, no stream row <= Kamailio -X fm, children=2" \
        "${a:+$(mib "$a") vs $(or_dash "$(mib "$b")") ($(or_dash "$(ratio "$a" "$b")") x)}" \
        "$(verdict "$(ratio "$a" "$b")" le 1)" "scripts/bench.sh --only memory"
}

# ---------------------------------------------------------------------------------------------
# reload: sockets_reload request to reply, per backend, beside the bare bind loop

BACKENDS=""
run_reload() {
    local B DB URL TGT first r
    addrs "$BIG" "$RELOAD_BASE" >"$WORK/reload.txt"
    echo "127.0.0.1:$CHANGE_PORT" >"$WORK/one.txt"
    log "reload: bind floor for $BIG sockets"
    "$MINR" --bind-only --targets-file "$WORK/reload.txt" --repeat "$((RUNS < 3 ? 3 : RUNS))" --json >"$RES/floor.json" ||
        fail "reload: the bind floor for $BIG sockets (min_responder --bind-only)"
    [ "$WITH_SIPSOCKD" = 1 ] || return 0
    BACKENDS="sqlite"
    if command -v psql >/dev/null && sql_pg_admin "SELECT 1" >/dev/null 2>&1; then
        BACKENDS="$BACKENDS pg"
    else
        peer_note "reload on PostgreSQL: no server answers at $PG_URL"
    fi
    if command -v mysql >/dev/null && sql_mysql_admin "SELECT 1" >/dev/null 2>&1; then
        BACKENDS="$BACKENDS mysql"
    else
        peer_note "reload on MariaDB/MySQL: no server answers at $MY_URL"
    fi
    first=$(head -1 "$WORK/reload.txt")
    for B in $BACKENDS; do
        log "reload on $B: $BIG new sockets, one-row change, no-op, $RUNS times"
        DB=sipsockd_bench_$$
        case $B in
        sqlite) URL="sqlite://$WORK/reload.db" TGT=$WORK/reload.db ;;
        pg)
            sql_pg_admin "CREATE DATABASE $DB" >/dev/null && SCRATCH_DBS+=("pg $DB")
            URL=$(url_with_db "$PG_URL" "$DB") TGT=$URL ;;
        mysql)
            sql_mysql_admin "CREATE DATABASE $DB" >/dev/null && SCRATCH_DBS+=("mysql $DB")
            URL=$(url_with_db "$MY_URL" "$DB") TGT=$URL ;;
        esac
        sd_config "reload-$B" 2 $((BIG + 10)) "$URL" 1
        if ! "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err"; then
            fail "reload: db init on $B: $(tail -1 "$SD_DIR/init.err" | cut -c1-300)"
            continue
        fi
        if ! sd_start; then
            fail "reload: sipsockd on $B does not start: $(head -1 "$SD_DIR/log" | cut -c1-200)"
            continue
        fi
        for r in $(seq "$RUNS"); do
            insert_rows "$B" "$TGT" "$WORK/reload.txt" 2>>"$SD_DIR/sql.err" || fail "reload: insert $BIG rows on $B"
            reload_timed "${B}_add" || break
            if [ "$r" = 1 ]; then
                wait_answers "$(tail -1 "$WORK/reload.txt")" || fail "reload on $B: the last of $BIG sockets does not answer"
                if [ "$B" = sqlite ]; then
                    pss_tree "$SD_PID" >"$RES/pss_sd_big"
                fi
                for _ in $(seq "$RUNS"); do
                    echo "UPDATE sockets SET socket = 'udp:127.0.0.1:$CHANGE_PORT' WHERE socket = 'udp:$first';" | sql_run "$B" "$TGT"
                    reload_timed "${B}_change" || break
                    echo "UPDATE sockets SET socket = 'udp:$first' WHERE socket = 'udp:127.0.0.1:$CHANGE_PORT';" | sql_run "$B" "$TGT"
                    reload_timed "${B}_change" || break
                    reload_timed "${B}_noop" || break
                done
            fi
            echo "DELETE FROM sockets;" | sql_run "$B" "$TGT"
            reload_timed "${B}_remove" || break
        done
        stop_tree "$SD_PID"
    done
}

reload_timed() { # KEY: one timed sockets_reload, its milliseconds stored under reload_KEY
    local ms
    if ms=$(sd_mi sockets_reload 2>>"$SD_DIR/mi.err"); then
        put "reload_$1" "$ms"
    else
        fail "sockets_reload ($1) failed: $(tail -1 "$SD_DIR/mi.err" | cut -c1-300)"
        return 1
    fi
}

report_reload() {
    local B row what target t floor
    echo "## Reload: sockets_reload, request to reply over the MI FIFO (ms; median, range), sipsockd processes=2"
    echo
    echo "Rows inserted with each database's own client, then one \`sockets_reload\` timed by scripts/bench/mi_time.py (the reply FIFO is open before the request is written). $RUNS add/remove cycles; the one-row change (one socket moved to another port, and back) and the no-op are timed $((RUNS * 2)) and $RUNS times among $(thou "$BIG"). The bare bind loop: min_responder --bind-only (socket + bind + O_NONBLOCK for each address)."
    echo
    printf '| change | target (SQLite) |'
    for B in ${BACKENDS:-sqlite}; do
        case $B in sqlite) printf ' SQLite |' ;; pg) printf ' PostgreSQL |' ;; mysql) printf ' MariaDB |' ;; esac
    done
    echo " bare bind loop |"
    printf '|---|---|'
    for B in ${BACKENDS:-sqlite}; do printf -- '---|'; done
    echo "---|"
    floor=$(grep -o '"median_ms": [0-9.]*' "$RES/floor.json" 2>/dev/null | awk '{print $2}')
    local big
    big=$(thou "$BIG")
    for row in "add:$big new sockets (from none):60" "change:one-row change among $big:5" "noop:no-op reload among $big:5" "remove:remove $big (to none):"; do
        IFS=: read -r what t target <<<"$row"
        if [ -n "$target" ]; then
            target="< $target ms: $(verdict "$(med "reload_sqlite_$what")" lt "$target")"
            [ "$BIG" != 10000 ] && target="(for 10,000)"
        else
            target="-"
        fi
        printf '| %s | %s |' "$t" "$target"
        for B in ${BACKENDS:-sqlite}; do printf ' %s |' "$(med_range "reload_${B}_$what" 1)"; done
        [ "$what" = add ] && echo " $(or_dash "$floor") |" || echo " - |"
    done
    echo
    [ -s "$RES/pss_sd_big" ] && echo "With $BIG sockets sipsockd's processes hold $(field pss_sd_big 1) KiB PSS ($(field pss_sd_big 3))." && echo
}

status_reload() {
    local row what t target
    for row in "add:reload adding 10,000 new UDP sockets (SQLite) < 60 ms:60" "change:one-row change among 10,000 (SQLite) < 5 ms:5" "noop:no-op reload among 10,000 (SQLite) < 5 ms:5"; do
        IFS=: read -r what t target <<<"$row"
        if [ "$BIG" = 10000 ]; then
            status_row "$t" "$(med_range "reload_sqlite_$what" 1) ms (PostgreSQL $(med_range "reload_pg_$what" 1), MariaDB $(med_range "reload_mysql_$what" 1))" \
                "$(verdict "$(med "reload_sqlite_$what")" lt "$target")" "scripts/bench.sh --only reload"
        else
            status_row "$t" "(measured with $BIG sockets only)" "not measured" "scripts/bench.sh --only reload"
        fi
    done
}

# ---------------------------------------------------------------------------------------------
# spread: the same load on more dynamic sockets (sipsockd, 2 processes)

run_spread() {
    [ "$WITH_SIPSOCKD" = 1 ] || return 0
    local maxn r n r1 rn silent
    maxn=${SPREAD##* }
    log "spread over 1, $SPREAD sockets"
    sd_config spread 2 $((maxn + 10)) "sqlite://$WORK/spread.db" 1
    addrs "$maxn" "$SPREAD_BASE" >"$WORK/spread-all.txt"
    head -1 "$WORK/spread-all.txt" >"$WORK/spread-1.txt"
    for n in $SPREAD; do head -"$n" "$WORK/spread-all.txt" >"$WORK/spread-$n.txt"; done
    if ! { "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err" &&
        insert_rows sqlite "$WORK/spread.db" "$WORK/spread-all.txt" 2>>"$SD_DIR/init.err" &&
        sd_start && wait_answers "$(head -1 "$WORK/spread-all.txt")" && wait_answers "$(tail -1 "$WORK/spread-all.txt")"; }; then
        fail "spread: sipsockd with $maxn sockets does not answer (see $SD_DIR/log)"
        stop_tree "${SD_PID:-0}"
        return 0
    fi
    for r in $(seq "$RUNS"); do
        r1=""
        load "$RES/spread-1-$r.json" "$SD_PID" --targets-file "$WORK/spread-1.txt" && r1=$(jget "$RES/spread-1-$r.json" rate)
        put_run spread_1 "$RES/spread-1-$r.json"
        for n in $SPREAD; do
            rn=""
            load "$RES/spread-$n-$r.json" "$SD_PID" --targets-file "$WORK/spread-$n.txt" && rn=$(jget "$RES/spread-$n-$r.json" rate)
            put_run "spread_$n" "$RES/spread-$n-$r.json"
            put "spread_ratio_$n" "$(ratio "$rn" "$r1")"
            silent=$(jget "$RES/spread-$n-$r.json" targets_silent)
            [ "${silent:-0}" != 0 ] && fail "spread $n: $silent sockets never answered"
        done
    done
    stop_tree "$SD_PID"
}

report_spread() {
    local n
    echo "## Spread over dynamic sockets (sipsockd, 2 processes, the load round robin over the sockets)"
    echo
    echo "| sockets | answered/s (server CPU us/request) | vs 1 socket (same round) |"
    echo "|---|---|---|"
    echo "| 1 | $(cell spread_1) | 1 |"
    for n in $SPREAD; do echo "| $n | $(cell "spread_$n") | $(or_dash "$(med "spread_ratio_$n")") |"; done
    echo
}

# ---------------------------------------------------------------------------------------------
# loss: stable sockets under load while other sockets come and go

run_loss() {
    [ "$WITH_SIPSOCKD" = 1 ] || return 0
    local ok=0 i lpid lost
    log "loss during $LOSS_RELOADS reloads"
    addrs 10 "$LOSS_BASE" >"$WORK/stable.txt"
    addrs 10 "$CHURN_BASE" >"$WORK/churn.txt"
    sd_config loss 2 100 "sqlite://$WORK/loss.db" 1
    if ! { "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err" &&
        insert_rows sqlite "$WORK/loss.db" "$WORK/stable.txt" && sd_start &&
        sd_mi sockets_reload >/dev/null && wait_answers "$(tail -1 "$WORK/stable.txt")"; }; then
        fail "loss: sipsockd does not start (see $SD_DIR/log)"
        stop_tree "${SD_PID:-0}"
        return 0
    fi
    "$SIPLOAD" --json --duration 120 --window 32 --timeout 2 --grace 2 \
        --targets-file "$WORK/stable.txt" >"$RES/loss.json" 2>>"$WORK/sipload.err" &
    lpid=$!
    STARTED+=("$lpid")
    for i in $(seq "$LOSS_RELOADS"); do
        if [ $((i % 2)) = 1 ]; then
            insert_rows sqlite "$WORK/loss.db" "$WORK/churn.txt"
        else
            echo "DELETE FROM sockets WHERE socket LIKE 'udp:%:$CHURN_BASE';" | sql_run sqlite "$WORK/loss.db"
        fi
        sd_mi sockets_reload >>"$RES/loss_reload_ms" 2>>"$SD_DIR/mi.err" && ok=$((ok + 1))
    done
    kill -TERM "$lpid" 2>/dev/null
    wait "$lpid" 2>/dev/null
    echo "$ok" >"$RES/loss_reloads_ok"
    [ "$ok" = "$LOSS_RELOADS" ] || fail "loss: only $ok of $LOSS_RELOADS reloads succeeded under load"
    lost=$(jget "$RES/loss.json" lost)
    [ "${lost:-x}" = 0 ] || fail "loss during reloads: ${lost:-no result} lost"
    stop_tree "$SD_PID"
}

report_loss() {
    echo "## Loss during reloads (10 stable sockets under load, window 32; 10 others added and removed)"
    echo
    echo "| reloads done | sent | answered | lost | late | non-200 | reload ms (median) |"
    echo "|---|---|---|---|---|---|---|"
    if [ -s "$RES/loss.json" ]; then
        echo "| $(cat "$RES/loss_reloads_ok") | $(jget "$RES/loss.json" sent) | $(jget "$RES/loss.json" answered) | **$(jget "$RES/loss.json" lost)** | $(jget "$RES/loss.json" late) | $(jget "$RES/loss.json" non200) | $(med loss_reload_ms) |"
    else
        echo "| not measured | | | | | | |"
    fi
    echo
}

# ---------------------------------------------------------------------------------------------
# stream: TCP and TLS, sipsockd ([tcp] workers = N) vs Kamailio -X fm (tcp_children = N)

sl_args() { # TRANSPORT: sipload's arguments for it, in the array SLA
    case $1 in
    tcp) SLA=(--transport tcp --connections "$CONNS") ;;
    tls) SLA=(--transport tls --connections "$CONNS" --ca "$WORK/tls/cert.pem") ;;
    esac
}
port_of() { # kam|sd TRANSPORT
    case $1-$2 in
    kam-tcp) echo "$KAM_TCP_PORT" ;; kam-tls) echo "$KAM_TLS_PORT" ;;
    sd-tcp) echo "$SD_TCP_PORT" ;; sd-tls) echo "$SD_TLS_PORT" ;;
    esac
}
make_cert() { # a self-signed certificate for 127.0.0.1 in $WORK/tls (an end-entity certificate,
    # not a CA, so a strict verifier accepts it as its own trust anchor); sipload verifies with --ca
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
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" -config "$WORK/tls/cert.cnf" >"$WORK/tls/openssl.log" 2>&1
}

run_stream() {
    local N t r kdir kpid spid kok sok rk rs f
    if echo " $STREAMS " | grep -q " tls " && ! make_cert; then
        fail "tls: openssl could not make a certificate (see $WORK/tls/openssl.log)"
        case " $STREAMS " in *" tcp "*) STREAMS=tcp ;; *) STREAMS="" ;; esac
    fi
    [ -n "$KAM_TLS_WHY" ] && echo " $STREAMS " | grep -q " tls " && peer_note "$KAM_TLS_WHY"
    for N in $STREAM_WORKERS; do
        log "$STREAMS: $N stream worker(s)"
        kpid="" spid="" kok="" sok=""
        if kam_ok; then
            kdir=$WORK/kam-stream-$N
            mkdir -p "$kdir"
            sed -e "s/@CHILDREN@/$N/" -e "s/@TCP@/$KAM_TCP_PORT/" -e "s/@TLS@/$KAM_TLS_PORT/" \
                -e "s|@CERT@|$WORK/tls/cert.pem|" -e "s|@KEY@|$WORK/tls/key.pem|" -e "s|@MPATH@|$KAM_MPATH/|" \
                "$ROOT/scripts/bench/kamailio-stream.cfg.in" >"$kdir/kamailio.cfg"
            if [ -n "$KAM_TLS_WHY" ] || ! echo " $STREAMS " | grep -q " tls "; then
                # No TLS module (or no TLS rows): a TCP-only Kamailio.
                sed -i -e '/listen=tls:/d' -e '/tls\.so/d' -e '/modparam("tls"/d' -e 's/^enable_tls=yes/enable_tls=no/' "$kdir/kamailio.cfg"
            fi
            "$KAMAILIO" -X fm -DD -E -f "$kdir/kamailio.cfg" -Y "$kdir" -w "$kdir" -m 64 -M 8 >"$kdir/log" 2>&1 &
            kpid=$!
            STARTED+=("$kpid")
            for t in $STREAMS; do
                [ "$t" = tls ] && [ -n "$KAM_TLS_WHY" ] && continue
                sl_args "$t"
                if wait_answers "127.0.0.1:$(port_of kam "$t")" "${SLA[@]}"; then
                    kok="$kok $t"
                else
                    peer_note "Kamailio -X fm ($t, tcp_children=$N) does not answer: $(grep -v '^\s*$' "$kdir/log" | tail -1 | cut -c1-200)"
                fi
            done
        fi
        if [ "$WITH_SIPSOCKD" = 1 ]; then
            sd_config "stream$N" 1 10 "sqlite://$WORK/stream$N.db" "$N"
            printf '\n[tls]\ncertificate = "%s"\nprivate_key = "%s"\n' "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >>"$SD_CFG"
            local ok=1
            "$BIN" --config "$SD_CFG" db init >/dev/null 2>"$SD_DIR/init.err" || ok=0
            for t in $STREAMS; do
                "$BIN" --config "$SD_CFG" db add "$t:127.0.0.1:$(port_of sd "$t")" >/dev/null 2>>"$SD_DIR/init.err" || ok=0
            done
            if [ "$ok" = 1 ] && sd_start; then
                spid=$SD_PID
                for t in $STREAMS; do
                    sl_args "$t"
                    if wait_answers "127.0.0.1:$(port_of sd "$t")" "${SLA[@]}"; then
                        sok="$sok $t"
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
                sl_args "$t"
                if echo " $kok " | grep -q " $t "; then
                    f=$RES/s$t-kam-$N-$r.json
                    load "$f" "$kpid" "${SLA[@]}" --target "127.0.0.1:$(port_of kam "$t")" && rk=$(jget "$f" rate) && put_run "s${t}_kam_$N" "$f"
                fi
                if echo " $sok " | grep -q " $t "; then
                    f=$RES/s$t-sd-$N-$r.json
                    load "$f" "$spid" "${SLA[@]}" --target "127.0.0.1:$(port_of sd "$t")" && rs=$(jget "$f" rate) && put_run "s${t}_sd_$N" "$f"
                fi
                if [ -n "$rs" ] && [ -n "$rk" ]; then
                    put "s${t}_sd_kam_$N" "$(ratio "$rs" "$rk")"
                    put "s${t}_cpu_kam_sd_$N" "$(ratio "$(cat "$RES/s$t-kam-$N-$r.json.cpu")" "$(cat "$RES/s$t-sd-$N-$r.json.cpu")")"
                fi
            done
        done
        [ -n "$kpid" ] && pss_tree "$kpid" >"$RES/pss_skam_$N"
        [ -n "$spid" ] && pss_tree "$spid" >"$RES/pss_ssd_$N"
        for p in $kpid $spid; do stop_tree "$p"; done
    done
}

report_stream() {
    local t N
    [ -n "$STREAMS" ] || return 0
    echo "## TCP and TLS (OPTIONS answered per second, one listener, $CONNS persistent connections, median of $STREAM_RUNS; server CPU per request in brackets)"
    echo
    echo "sipsockd \`[tcp] workers\` = Kamailio \`tcp_children\` (Kamailio -X fm, one TCP and one TLS listener, \`children=1\` for its idle UDP side; sipsockd has one idle UDP worker)."
    echo
    echo "| transport | stream workers | sipsockd | Kamailio -X fm | sipsockd / Kamailio | Kamailio CPU / sipsockd CPU per request | PSS KiB (sd / kam) |"
    echo "|---|---|---|---|---|---|---|"
    for t in $STREAMS; do
        for N in $STREAM_WORKERS; do
            echo "| $t | $N | $(cell "s${t}_sd_$N") | $(cell "s${t}_kam_$N") | $(or_dash "$(med "s${t}_sd_kam_$N")") | $(or_dash "$(med "s${t}_cpu_kam_sd_$N")") | $(or_dash "$(field "pss_ssd_$N" 1)") / $(or_dash "$(field "pss_skam_$N" 1)") |"
        done
    done
    echo
}

# ---------------------------------------------------------------------------------------------
# Run the sections, then the report

status_row() { # TARGET FIGURE VERDICT COMMAND
    echo "| $1 | $(or_dash "$2") | $3 | \`$4\` |"
}

T0=$SECONDS
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A TOOK=()
for s in $SECTIONS; do
    t=$SECONDS
    "run_$s"
    TOOK[$s]=$((SECONDS - t))
done

{
    echo "# sipsockd benchmarks ($(date -u +%Y-%m-%d)$( [ "$SMOKE" = 1 ] && echo ", SMOKE run: small figures, not meaningful"))"
    echo
    echo "Machine: $(nproc) CPU ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo). sipsockd $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || echo ' (with local changes)'). Kamailio: ${KAM_VERSION:-not run}. Load average (1, 5, 15 min) before the run: $LOAD0, after: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine makes rates noisy; instruction counts do not move)."
    echo
    echo "## Status against the targets"
    echo
    echo "| target | figure | status | command |"
    echo "|---|---|---|---|"
    for s in $SECTIONS; do
        declare -F "status_$s" >/dev/null && "status_$s"
    done
    echo
    for s in $SECTIONS; do "report_$s"; done
    if [ -s "$RES/anomalies" ]; then
        echo "Load runs with unanswered or non-200 requests (rates count answers only):"
        sed 's/^/- /' "$RES/anomalies"
        echo
    fi
    if [ ${#NOTES[@]} -gt 0 ]; then
        echo "Not measured (peers; not a failure):"
        for n in "${NOTES[@]}"; do echo "- $n"; done
        echo
    fi
    if [ ${#FAILED[@]} -gt 0 ]; then
        echo "FAILED (figures of sipsockd or of the tools that are missing):"
        for f in "${FAILED[@]}"; do echo "- $f"; done
        echo
    fi
    echo "Took $((SECONDS - T0)) s:$(for s in $SECTIONS; do printf ' %s %s s,' "$s" "${TOOK[$s]}"; done | sed 's/,$//')."
} >"$WORK/report.md"

cat "$WORK/report.md"
[ -n "$OUT" ] && cp "$WORK/report.md" "$OUT"
[ ${#FAILED[@]} -eq 0 ]
