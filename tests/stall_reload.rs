//! Regression tests of issue 12, item 1: nothing slow stops the supervisor's loop. A reload stuck
//! on a locked PostgreSQL table, or on a stopped UDP worker, used to delay new TCP connections and
//! the MI FIFO by 4.5 s; a certificate path that is a FIFO hung the supervisor for good (SIGTERM
//! ignored) and `/dev/zero` grew it to 6.4 GB. Now: while a reload waits, new connections and the
//! MI methods that need no reload are answered within 100 ms (timed one by one: only the round
//! trip), a second reload waits its turn and is answered in order, SIGTERM stops the daemon within
//! 2 s, and a FIFO or a device as a certificate is an error naming it.

mod common;
mod stall_util;

use common::*;
use serde_json::json;
use stall_util::*;
use std::time::{Duration, Instant};

/// How long SIGTERM may take, whatever is in progress (the figure).
const STOP_WITHIN: Duration = Duration::from_secs(2);

/// A daemon with one stream worker and a TCP socket to probe; returns it and the TCP port.
fn with_tcp(d: Daemon) -> (Daemon, u16) {
    let port = free_tcp_port("127.0.0.1");
    d.add(&format!("tcp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    (d, port)
}

/// The reply of a reload run on a thread, and when it came.
type Timed = (Result<serde_json::Value, supervisor::mi::RpcError>, Instant);

#[test]
fn a_reload_stuck_on_a_locked_postgresql_table_delays_neither_connections_nor_mi() {
    let Some(db) = ScratchDb::postgres("stall_pg_lock") else {
        return;
    };
    let (d, port) = with_tcp(start_with_mgm(
        "stallpg",
        Opts {
            db_url: Some(db.url.clone()),
            extra: "[tcp]\nworkers = 1\n".into(),
            ..Opts::default()
        },
        // Longer than the test: the reload waits for the lock, not for a timeout.
        "db_timeout = 60",
    ));
    assert_prompt(&d, port, "with nothing in progress");

    let mut lock = PgLock::take(&db);
    let new_port = free_udp_port("127.0.0.1");
    lock.exec(&format!(
        "INSERT INTO sockets (socket) VALUES ('udp:127.0.0.1:{new_port}')"
    ));
    std::thread::scope(|s| {
        let first = s.spawn(|| -> Timed { (d.mi_call("sockets_reload"), Instant::now()) });
        wait_for("the reload's query to wait for the lock", || {
            pg_someone_waits(&db)
        });
        let second = s.spawn(|| -> Timed { (d.mi_call("sockets_reload"), Instant::now()) });
        wait_log(&d, "queued behind the reload in progress (querying)");

        assert_prompt(&d, port, "while a reload waits for a locked table");
        assert!(
            !first.is_finished() && !second.is_finished(),
            "a reload ended before the probes were done: they proved nothing"
        );

        lock.release();
        let (r1, t1) = first.join().unwrap();
        let (r2, t2) = second.join().unwrap();
        assert_eq!(r1, Ok(json!("OK")), "log:\n{}", d.log_text());
        assert_eq!(r2, Ok(json!("OK")), "log:\n{}", d.log_text());
        assert!(t1 <= t2, "the second reload was answered before the first");
    });
    d.assert_answering(&[new_port], "(the row written under the lock)");
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn a_reload_across_a_stopped_udp_worker_delays_nothing_and_answers_an_error_naming_it() {
    let (d, port) = with_tcp(Daemon::start(
        "stalludp",
        Opts {
            processes: 2,
            extra: "[tcp]\nworkers = 1\n".into(),
            ..Opts::default()
        },
    ));
    let held = hold_udp_ports("127.0.0.1", 1);
    let new_port = held.ports()[0];
    d.add(&format!("udp:127.0.0.1:{new_port}"), &[]);
    let stopped = worker_pid(&d, "udp", 1);
    signal(stopped, libc::SIGSTOP);
    wait_stopped(stopped);
    drop(held);

    let (reply, began) = std::thread::scope(|s| {
        let began = Instant::now();
        let reload = s.spawn(|| d.mi_call("sockets_reload"));
        // Bound and handed out: the reload waits for the stopped worker's acknowledgement.
        d.wait_dump("the new socket bound", |dump| {
            dump["slots"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["socket"] == format!("udp:127.0.0.1:{new_port}"))
        });
        assert_prompt(&d, port, "while a reload waits for a stopped worker");
        assert!(
            !reload.is_finished(),
            "the reload ended before the probes were done: they proved nothing"
        );
        (reload.join().unwrap(), began)
    });
    let e = reply.expect_err("a reload across a stuck worker is not OK");
    assert_eq!(e.code, 500, "{e:?}");
    assert!(
        e.message.contains("1 workers restarted (udp worker 1)"),
        "{e:?}"
    );
    let data = e.data.clone().unwrap();
    let entry = data
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["worker"] == "udp worker 1")
        .unwrap_or_else(|| panic!("no entry for the worker: {data}"));
    assert_eq!(entry["rank"], 1);
    assert_eq!(entry["pid"], stopped);
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("no acknowledgement within 5 s; restarted"),
        "{entry}"
    );
    assert!(
        began.elapsed() >= Duration::from_secs(5),
        "answered before the deadline"
    );
    // Killed, restarted, and the new socket is served by every worker.
    wait_for("the stopped worker killed", || gone(stopped));
    d.wait_dump("the worker back", |dump| {
        dump["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] == "ready" && w["pid"] != stopped)
    });
    d.assert_answering(&[new_port], "after the restart");
    // The reload is recorded as failed in the table's statistics, and the loop's heartbeat runs.
    let dump = d.dump();
    assert_eq!(dump["reloads"]["last_status"], 500, "{dump:#}");
    assert!(
        dump["reloads"]["failures"].as_u64().unwrap() >= 1,
        "{dump:#}"
    );
    assert!(dump["heartbeat_ms"].as_u64().unwrap() > 0, "{dump:#}");
    assert_eq!(d.stop(), Some(0));
}

/// SIGTERM while a reload is stuck (`stuck` makes it so and returns once it is): the daemon is
/// gone within [`STOP_WITHIN`].
fn stops_promptly(d: Daemon, stuck: impl FnOnce(&Daemon)) {
    let fifo = d.fifo.clone();
    let dir = d.dir.path().to_owned();
    std::thread::scope(|s| {
        // Its answer never comes (the daemon stops): a bounded call whose result is ignored.
        s.spawn(move || {
            let _ = supervisor::mi::client::call(
                &fifo,
                &dir,
                "sockets_reload",
                &supervisor::mi::client::params_from_args(&[]),
                Duration::from_secs(3),
            );
        });
        stuck(&d);
        let t0 = Instant::now();
        assert_eq!(d.stop(), Some(0));
        let took = t0.elapsed();
        assert!(
            took < STOP_WITHIN,
            "SIGTERM took {took:?} to stop the daemon"
        );
    });
}

#[test]
fn sigterm_during_a_reload_stuck_on_the_database_stops_within_2_s() {
    let Some(db) = ScratchDb::postgres("stall_pg_term") else {
        return;
    };
    let d = start_with_mgm(
        "stallpgterm",
        Opts {
            db_url: Some(db.url.clone()),
            ..Opts::default()
        },
        "db_timeout = 60",
    );
    d.serve_udp(1);
    let lock = PgLock::take(&db);
    stops_promptly(d, |_| {
        wait_for("the reload's query to wait for the lock", || {
            pg_someone_waits(&db)
        })
    });
    lock.release();
}

#[test]
fn sigterm_during_a_reload_stuck_on_a_stopped_worker_stops_within_2_s() {
    let d = Daemon::start(
        "stallterm",
        Opts {
            processes: 2,
            ..Opts::default()
        },
    );
    d.serve_udp(1);
    let stopped = worker_pid(&d, "udp", 0);
    signal(stopped, libc::SIGSTOP);
    wait_stopped(stopped);
    let held = hold_udp_ports("127.0.0.1", 1);
    let new = format!("udp:127.0.0.1:{}", held.ports()[0]);
    d.add(&new, &[]);
    drop(held);
    stops_promptly(d, |d| {
        d.wait_dump("the new socket bound", |dump| {
            dump["slots"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["socket"] == new)
        });
    });
    wait_for("the stopped worker gone with the daemon", || gone(stopped));
}

#[test]
fn a_fifo_or_dev_zero_as_a_certificate_is_an_error_naming_it_and_the_daemon_stays_responsive() {
    let d = Daemon::configure(
        "stallcert",
        &Opts {
            extra: String::new(),
            ..Opts::default()
        },
    );
    let dir = d.dir.path().to_owned();
    let fifo = dir.join("cert.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let key_path = d.dir.write("key.pem", &key);
    let config = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        format!(
            "{config}[tcp]\nworkers = 1\n\
             [tls.tag.fifo]\ncertificate = {:?}\nprivate_key = {key_path:?}\n\
             [tls.tag.zero]\ncertificate = \"/dev/zero\"\nprivate_key = {key_path:?}\n",
            fifo.display().to_string()
        ),
    )
    .unwrap();
    d.cli(&["db", "init"]).ok();
    let d = d.spawn();
    let tcp = free_tcp_port("127.0.0.1");
    d.add(&format!("tcp:127.0.0.1:{tcp}"), &[]);
    let (p1, p2) = (free_tcp_port("127.0.0.1"), free_tcp_port("127.0.0.1"));
    d.add(&format!("tls:127.0.0.1:{p1}"), &["--tag", "fifo"]);
    d.add(&format!("tls:127.0.0.1:{p2}"), &["--tag", "zero"]);

    // A writer holds the FIFO open, ready to feed it forever: still never read.
    let _writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let e = d
        .mi_call("sockets_reload")
        .expect_err("the certificates do not load");
    assert_eq!(e.code, 500, "{e:?}");
    assert_eq!(e.message, "2 sockets could not be bound");
    let reasons: Vec<String> = e
        .data
        .as_ref()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["reason"].as_str().unwrap().to_string())
        .collect();
    let fifo_text = fifo.display().to_string();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&fifo_text) && r.contains("not a regular file (a FIFO)")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("/dev/zero")
                && r.contains("not a regular file (a character device)")),
        "{reasons:?}"
    );
    // Responsive, the TCP socket served, memory bounded.
    assert_prompt(&d, tcp, "after certificates that are a FIFO and /dev/zero");
    let rss = std::fs::read_to_string(format!("/proc/{}/status", d.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap();
    assert!(rss < 100 * 1024, "the supervisor uses {rss} KiB");
    let t0 = Instant::now();
    assert_eq!(d.stop(), Some(0));
    assert!(
        t0.elapsed() < STOP_WITHIN,
        "SIGTERM took {:?}",
        t0.elapsed()
    );
}
