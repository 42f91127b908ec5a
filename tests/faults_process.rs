//! Process faults: workers killed under traffic, reload churn under load (no loss, no fd leak, no
//! memory growth), the supervisor killed with SIGKILL, and an open-file limit too low.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// OPTIONS with SIP's own retransmission (500 ms, 3 tries): what a real client gets.
fn options_retrying(c: &std::net::UdpSocket, to: std::net::SocketAddr, n: u32) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let req = options_request(c.local_addr().unwrap(), to, n);
    for _ in 0..3 {
        c.send_to(req.as_bytes(), to).unwrap();
        if recv_reply(c, n).is_some() {
            return true;
        }
    }
    false
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The open fds of `pid` once the count holds still (the same over 20 reads 10 ms apart): an
/// MI reply FIFO or a closing socket may be open for an instant after the reply was read.
fn settled_fd_count(pid: u32) -> usize {
    let t0 = Instant::now();
    let (mut last, mut same) = (fd_count(pid), 0);
    while same < 20 {
        assert!(t0.elapsed() < DEADLINE, "fd count of {pid} never settled");
        std::thread::sleep(Duration::from_millis(10));
        let now = fd_count(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Wait (bounded) until `pid` has at most `want` fds open; returns the count then.
fn fd_count_down_to(pid: u32, want: usize) -> usize {
    let t0 = Instant::now();
    loop {
        let now = fd_count(pid);
        if now <= want || t0.elapsed() > DEADLINE {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
}

#[test]
fn workers_killed_in_a_loop_under_traffic_come_back_and_nothing_goes_unanswered() {
    let d = Daemon::start(
        "killloop",
        Opts {
            processes: 2,
            extra: "[tcp]\nworkers = 1\n".into(),
            ..Opts::default()
        },
    );
    let ports = d.serve_udp(3);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, ports) = (stop.clone(), ports.clone());
        std::thread::spawn(move || {
            let c = client("127.0.0.1");
            let (mut n, mut unanswered) = (0u32, 0u32);
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < DEADLINE && n < 50_000 {
                n += 1;
                if !options_retrying(&c, udp("127.0.0.1", ports[n as usize % ports.len()]), n) {
                    unanswered += 1;
                }
            }
            (n, unanswered)
        })
    };
    let kills = 6;
    for k in 0..kills {
        let dump = d.dump();
        let w = &dump["workers"][k % 2];
        let pid = w["pid"].as_u64().unwrap() as u32;
        let restarts = w["restarts"].as_u64().unwrap();
        signal(pid, libc::SIGKILL);
        d.wait_dump("the killed worker back and ready", |dump| {
            let w = &dump["workers"][k % 2];
            w["restarts"].as_u64().unwrap() == restarts + 1
                && w["state"] == "ready"
                && w["pid"].as_u64().unwrap() as u32 != pid
        });
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, unanswered) = sender.join().unwrap();
    assert!(sent > 10, "the traffic did not run");
    assert_eq!(
        unanswered, 0,
        "{unanswered} of {sent} OPTIONS never answered while workers were killed"
    );
    let dump = d.dump();
    let restarts: u64 = dump["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "udp")
        .map(|w| w["restarts"].as_u64().unwrap())
        .sum();
    assert_eq!(restarts, kills as u64);
}

#[test]
fn reload_churn_under_load_loses_nothing_and_leaks_nothing() {
    let d = Daemon::start(
        "churn",
        Opts {
            processes: 2,
            extra: "[tcp]\nworkers = 1\n".into(),
            ..Opts::default()
        },
    );
    let stay = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{stay}"), &[]);
    d.reload_ok();
    let pids = || -> Vec<u32> { std::iter::once(d.pid()).chain(d.worker_pids()).collect() };
    let before: Vec<(u32, usize, u64)> = pids()
        .into_iter()
        .map(|p| (p, settled_fd_count(p), rss_kib(p)))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = client("127.0.0.1");
            let (mut n, mut lost) = (0u32, 0u32);
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed)
                && t0.elapsed() < Duration::from_secs(120)
                && n < 200_000
            {
                n += 1;
                if options(&c, udp("127.0.0.1", stay), n).is_none() {
                    lost += 1;
                }
            }
            (n, lost)
        })
    };
    let conn = rusqlite::Connection::open(d.dir.path().join("s.db")).unwrap();
    let reloads = 1000;
    for i in 0..reloads {
        // Alternately add a few sockets and remove them again.
        if i % 2 == 0 {
            // Five distinct ports, held until their rows are written.
            let held = hold_udp_ports("127.0.0.1", 5);
            for port in held.ports() {
                conn.execute(
                    "INSERT INTO sockets (socket) VALUES (?1)",
                    [format!("udp:127.0.0.1:{port}")],
                )
                .unwrap();
            }
        } else {
            conn.execute(
                "DELETE FROM sockets WHERE socket != ?1",
                [format!("udp:127.0.0.1:{stay}")],
            )
            .unwrap();
        }
        // A port released before the reload may be taken by someone else before the bind: that
        // is a reported bind failure, not a fault of the reload; anything else must be OK.
        if let Err(e) = d.reload() {
            assert!(e.contains("could not be bound"), "reload {i}: {e}");
        }
    }
    conn.execute(
        "DELETE FROM sockets WHERE socket != ?1",
        [format!("udp:127.0.0.1:{stay}")],
    )
    .unwrap();
    d.reload_ok();
    stop.store(true, Ordering::Relaxed);
    let (sent, lost) = sender.join().unwrap();
    assert!(sent > 100, "the traffic did not run");
    assert_eq!(
        lost, 0,
        "{lost} of {sent} OPTIONS lost on the socket that stayed during {reloads} reloads"
    );

    // Compared after the last reload's acknowledgement (its reply came back OK), once the
    // counts came down: a leak never does.
    for (pid, fds, rss) in before {
        assert_eq!(
            fd_count_down_to(pid, fds),
            fds,
            "process {pid} leaked fds over {reloads} reloads"
        );
        let now = rss_kib(pid);
        assert!(
            now <= rss + 8 * 1024,
            "process {pid} grew from {rss} KiB to {now} KiB over {reloads} reloads"
        );
    }
}

#[test]
fn a_killed_supervisor_takes_its_workers_along_and_a_new_run_starts_cleanly() {
    let d = Daemon::start(
        "sigkill",
        Opts {
            processes: 2,
            extra: "[tcp]\nworkers = 1\n".into(),
            ..Opts::default()
        },
    );
    let port = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    let workers = d.worker_pids();
    let (config, fifo, shm) = (d.config.clone(), d.fifo.clone(), d.shm.clone());
    signal(d.pid(), libc::SIGKILL);
    let t0 = Instant::now();
    while !workers.iter().all(|&p| gone(p)) {
        assert!(t0.elapsed() < DEADLINE, "workers outlived their supervisor");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        fifo.exists() && shm.exists(),
        "the stale FIFO and shm are the point of this test"
    );
    // Regression (issue 12): the dump of a dead daemon's table said nothing of it and exited 0.
    let out = d.cli(&["shm-dump"]).code(3);
    let text = &out.stdout;
    assert!(
        text.starts_with(&format!("stale: supervisor PID {} is gone", d.pid())),
        "{text}"
    );
    let out = d.cli(&["shm-dump", "--json"]).code(3);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["stale"], true);
    // The port is free again once the workers are gone; a new run takes over the stale files.
    let mut again = sipsockd_command(&["--config".as_ref(), config.as_os_str(), "run".as_ref()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let out = d.cli(&["mi", "--timeout", "2", "sockets_status"]);
        if out.success() {
            break;
        }
        assert!(again.try_wait().unwrap().is_none(), "the new run exited");
        assert!(t0.elapsed() < DEADLINE, "the new run did not come up");
    }
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", port), 1).is_some());
    signal(again.id(), libc::SIGTERM);
    assert_eq!(again.wait().unwrap().code(), Some(0));
}

#[test]
fn an_open_file_limit_too_low_for_max_sockets_is_a_clear_error_at_start() {
    let d = Daemon::configure(
        "nofile",
        &Opts {
            max_sockets: 5000,
            ..Opts::default()
        },
    );
    d.cli(&["db", "init"]).ok();
    // `sipsockd run` under `ulimit -n 256`.
    let run = d.command(&["run"]);
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 256 && exec \"$@\"")
        .arg("sh")
        .arg(run.get_program())
        .args(run.get_args());
    let err = Run::of(&mut cmd).code(1).stderr;
    assert!(
        err.contains("open-file limit") && err.contains("max_sockets"),
        "{err}"
    );
    assert!(
        !d.fifo.exists() && !d.shm.exists(),
        "a refused start left files behind"
    );
}

#[test]
fn a_worker_that_dies_at_once_each_time_is_restarted_with_a_growing_delay() {
    let d = Daemon::start(
        "crashloop",
        Opts {
            processes: 1,
            extra: "[tcp]\nworkers = 1\n".into(),
            ..Opts::default()
        },
    );
    let ports = d.serve_udp(1);
    let mut last = d.worker_pids()[0];
    for _ in 0..5 {
        signal(last, libc::SIGKILL);
        // Kill the next one as soon as it exists: it never lives long enough to count as stable.
        let dump = d.wait_dump("the next worker process", |dump| {
            let pid = dump["workers"][0]["pid"].as_u64().unwrap_or(0) as u32;
            pid != 0 && pid != last
        });
        last = dump["workers"][0]["pid"].as_u64().unwrap() as u32;
    }
    let log = d.log_text();
    for delay in ["in 100 ms", "in 200 ms", "in 400 ms", "in 800 ms"] {
        assert!(
            log.contains(&format!("restarting it {delay}")),
            "no restart {delay} in the log:\n{log}"
        );
    }
    // The daemon stayed up and answers; left alone, the worker comes back and serves.
    assert!(d.mi("version").is_ok());
    d.wait_dump("the worker ready again", |dump| {
        dump["workers"][0]["state"] == "ready"
    });
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", ports[0]), 1).is_some());
}
