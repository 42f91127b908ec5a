//! Regression tests of issue 12's sd_notify item: `READY=1` only once a table is applied (a
//! failed initial load says why in `STATUS=` and the daemon still serves MI, so a fixed table
//! and a reload make it ready), `RELOADING=1` with `MONOTONIC_USEC` / `READY=1` around every
//! reload, `STOPPING=1` on SIGTERM, `WATCHDOG=1` from the loop when `WATCHDOG_USEC` is set. The
//! service manager is a Unix datagram socket the test reads.

mod common;
mod stall_util;

use common::*;
use stall_util::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A fake service manager: the socket `NOTIFY_SOCKET` names.
struct Manager(UnixDatagram);

impl Manager {
    fn bind(d: &Daemon) -> (Manager, std::path::PathBuf) {
        let path = d.dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(DEADLINE)).unwrap();
        (Manager(sock), path)
    }

    /// The next notification; panics when none comes within the deadline.
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.0.recv(&mut buf).expect("no notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Notifications until one contains `want` (watchdog pings in between are skipped); returns
    /// the skipped ones other than pings, and the one found.
    fn until(&self, want: &str) -> (Vec<String>, String) {
        let mut others = Vec::new();
        loop {
            let m = self.next();
            if m.contains(want) {
                return (others, m);
            }
            if m != "WATCHDOG=1\n" {
                others.push(m);
            }
        }
    }
}

fn spawn(d: &Daemon, notify: &std::path::Path, watchdog_usec: Option<u64>) -> Child {
    let log = std::fs::File::create(&d.log).unwrap();
    let mut cmd = d.command(&["run"]);
    cmd.env("RUST_LOG", "debug")
        .env("NOTIFY_SOCKET", notify)
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(us) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", us.to_string());
    }
    cmd.spawn().unwrap()
}

#[test]
fn ready_reloading_watchdog_and_stopping_are_told_to_the_service_manager() {
    let d = Daemon::configure("notifyall", &Opts::default());
    d.cli(&["db", "init"]).ok();
    let port = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{port}"), &[]);
    let (m, path) = Manager::bind(&d);
    let mut child = spawn(&d, &path, Some(200_000));
    let (others, ready) = m.until("READY=1");
    assert!(others.is_empty(), "before READY=1: {others:?}");
    assert_eq!(ready, "READY=1\n");
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", port), 1).is_some());
    let (_, status) = m.until("STATUS=");
    assert!(status.contains("serving 1 sockets"), "{status}");

    // The watchdog is pinged from the loop, at half the interval.
    let t0 = Instant::now();
    for _ in 0..5 {
        let (others, _) = m.until("WATCHDOG=1");
        assert!(others.is_empty(), "{others:?}");
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "pings too slow");

    let reload = std::thread::spawn({
        let (fifo, dir) = (d.fifo.clone(), d.dir.path().to_owned());
        move || {
            supervisor::mi::client::call(
                &fifo,
                &dir,
                "sockets_reload",
                &supervisor::mi::client::params_from_args(&[]),
                DEADLINE,
            )
        }
    });
    let (_, reloading) = m.until("RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .unwrap();
    let now_us = supervisor::sys::monotonic_usec();
    assert!(
        usec <= now_us && now_us - usec < 30_000_000,
        "{usec} vs {now_us}"
    );
    let (others, ready) = m.until("READY=1");
    assert!(others.is_empty(), "{others:?}");
    assert!(
        ready.contains("STATUS=serving 1 sockets; last reload: OK"),
        "{ready}"
    );
    assert!(reload.join().unwrap().unwrap().is_ok());

    signal(child.id(), libc::SIGTERM);
    let (_, stopping) = m.until("STOPPING=1");
    assert_eq!(stopping, "STOPPING=1\n");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_failed_initial_load_says_why_serves_mi_and_is_ready_after_a_fixed_reload() {
    let d = Daemon::configure("notifyfail", &Opts::default());
    d.cli(&["db", "init"]).ok();
    let port = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{port}"), &[]);
    let db = rusqlite::Connection::open(d.dir.path().join("s.db")).unwrap();
    db.execute(
        "INSERT INTO sockets (socket) VALUES ('bogus:1.2.3.4:5')",
        [],
    )
    .unwrap();
    let (m, path) = Manager::bind(&d);
    let mut child = spawn(&d, &path, None);
    let status = m.next();
    assert!(
        status.starts_with("STATUS=initial load failed: Table refused: 1 bad rows"),
        "{status}"
    );
    assert!(!status.contains("READY=1"), "{status}");
    // MI is served: the operator looks, fixes the table, reloads.
    wait_for("the FIFO served", || {
        d.cli(&["mi", "--timeout", "5", "version"]).success()
    });
    assert_eq!(d.mi_call("sockets_list").unwrap(), serde_json::json!([]));
    db.execute("DELETE FROM sockets WHERE socket LIKE 'bogus%'", [])
        .unwrap();
    assert_eq!(d.mi_call("sockets_reload"), Ok(serde_json::json!("OK")));
    // Not ready before: no RELOADING=1, then READY=1 alone.
    assert_eq!(m.next(), "READY=1\n");
    assert!(m.next().starts_with("STATUS=serving 1 sockets"));
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", port), 1).is_some());
    signal(child.id(), libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
