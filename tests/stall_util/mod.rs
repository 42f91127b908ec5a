//! What the tests of issue 12 (`stall_*.rs`, `regress_*.rs` of it) share on top of `common`:
//! timing one answer (a TCP OPTIONS, an MI call), open-file limits of a running process, waiting
//! for a log line or any condition, a PostgreSQL session that holds the sockets table locked.
#![allow(dead_code)]

use crate::common::*;
use std::time::{Duration, Instant};

/// The bound for an answer while a reload is stuck.
pub const PROMPT: Duration = Duration::from_millis(100);

/// Connect to 127.0.0.1:`port`, send OPTIONS `n`, read the 200: how long that took, or why it
/// failed.
pub fn tcp_answer_time(port: u16, n: u32) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let reply = tcp_options(&mut s, port, n).ok_or("no reply (closed or timed out)")?;
    let took = t0.elapsed();
    if !reply.starts_with("SIP/2.0 200") {
        return Err(format!("not a 200: {reply}"));
    }
    Ok(took)
}

/// One MI call through the supervisor's client library (no process to start): how long the round
/// trip took, or the error.
pub fn mi_answer_time(d: &Daemon, method: &str) -> Result<Duration, String> {
    let t0 = Instant::now();
    let r = supervisor::mi::client::call(
        &d.fifo,
        d.dir.path(),
        method,
        &supervisor::mi::client::params_from_args(&[]),
        DEADLINE,
    );
    let took = t0.elapsed();
    match r {
        Ok(Ok(_)) => Ok(took),
        Ok(Err(e)) => Err(format!("{method}: error {e:?}")),
        Err(e) => Err(format!("{method}: no answer: {e}")),
    }
}

/// The best of three tries of a timed answer: one scheduling hiccup on a shared machine is not a
/// stalled loop (a stalled loop makes every try wait the whole stall). Every try must answer.
pub fn best_of_three(mut timed: impl FnMut(u32) -> Result<Duration, String>) -> Duration {
    (0..3)
        .map(|i| timed(i).unwrap_or_else(|e| panic!("try {i}: {e}")))
        .min()
        .unwrap()
}

/// Assert that TCP connections on `port` and the MI methods that must never wait are answered
/// within [`PROMPT`] (best of three each), five rounds.
pub fn assert_prompt(d: &Daemon, port: u16, what: &str) {
    let mut slowest = (Duration::ZERO, "");
    for round in 0..5u32 {
        let tcp = best_of_three(|i| tcp_answer_time(port, 10_000 + round * 10 + i));
        assert!(
            tcp < PROMPT,
            "{what}: a new TCP connection took {tcp:?} to be answered (round {round})"
        );
        slowest = slowest.max((tcp, "tcp"));
        for method in [
            "sockets_list",
            "sockets_status",
            "ps",
            "which",
            "version",
            "uptime",
        ] {
            let mi = best_of_three(|_| mi_answer_time(d, method));
            assert!(
                mi < PROMPT,
                "{what}: MI {method} took {mi:?} (round {round})"
            );
            slowest = slowest.max((mi, method));
        }
    }
    eprintln!("{what}: every answer within {PROMPT:?}; slowest best-of-three: {slowest:?}");
}

/// Set the open-file limits of a running process (as root, or its owner lowering them).
pub fn set_nofile(pid: u32, soft: u64, hard: u64) {
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit reads `new` (on our stack, alive for the call) and writes nothing (old is
    // null); it changes the limits of process `pid`, touching no memory of ours.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(
        rc,
        0,
        "prlimit({pid}, NOFILE, {soft}, {hard}): {}",
        std::io::Error::last_os_error()
    );
}

/// The open-file limits (soft, hard) of a running process, from /proc.
pub fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].parse().unwrap(), f[4].parse().unwrap())
}

/// How many fds a process has open.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The lowest fd number a process has free: the next fd it opens gets it (a limit at this
/// number leaves it none).
pub fn lowest_free_fd(pid: u32) -> u64 {
    let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

/// Wait until the daemon's log has a line with `needle`; returns it.
pub fn wait_log(d: &Daemon, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        let log = d.log_text();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "{needle:?} never logged; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until `pred` holds (polled every 10 ms, at most [`DEADLINE`]).
pub fn wait_for(what: &str, mut pred: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !pred() {
        assert!(t0.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pid of worker `rank` of `kind` ("udp" or "stream"), from the shm dump.
pub fn worker_pid(d: &Daemon, kind: &str, rank: u64) -> u32 {
    let dump = d.dump();
    let w = dump["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == kind && w["rank"] == rank)
        .unwrap_or_else(|| panic!("no {kind} worker {rank}: {dump:#}"));
    w["pid"].as_u64().unwrap() as u32
}

/// The state of worker `rank` of `kind` as `sockets_status` gives it.
pub fn worker_state(d: &Daemon, kind: &str, rank: u64) -> String {
    let status = d.mi_call("sockets_status").expect("sockets_status");
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == kind && w["rank"] == rank)
        .map(|w| w["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// Wait until a process is stopped (SIGSTOP took effect: state `T` in /proc).
pub fn wait_stopped(pid: u32) {
    wait_for(&format!("pid {pid} stopped"), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("T")
        })
    });
}

/// True when `pid` no longer runs (gone, or a zombie).
pub fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            == Some("Z")
    })
}

/// A session of the scratch PostgreSQL database that holds the sockets table locked (ACCESS
/// EXCLUSIVE) until released or dropped.
pub struct PgLock(postgres::Client);

impl PgLock {
    pub fn take(db: &ScratchDb) -> PgLock {
        let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
        c.batch_execute("BEGIN; LOCK TABLE sockets IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        PgLock(c)
    }

    /// A statement in the locking session (its writes show once released).
    pub fn exec(&mut self, sql: &str) {
        self.0.batch_execute(sql).unwrap();
    }

    pub fn release(mut self) {
        self.0.batch_execute("COMMIT").unwrap();
    }
}

/// True once a session of `db` waits for a lock (the daemon's reload query).
pub fn pg_someone_waits(db: &ScratchDb) -> bool {
    let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .unwrap()
        .get(0);
    n > 0
}
