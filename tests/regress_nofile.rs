//! Regression tests of issue 12, item 3: with `ulimit -n 1024`, 4,090 clients killed every stream
//! worker ("message carried more than 253 fds (control data truncated)") and 4,004 established
//! connections were lost; the start-up check ignored `max_connections`; after an accept EMFILE the
//! supervisor's queued connections waited for the next incoming one. Now a stream worker at its
//! open-file limit refuses the new connection (the kernel closes it; counted `refused`), keeps
//! every connection it has and never dies for it; start-up raises the soft limit to what every
//! process needs, or refuses naming the numbers; an accept EMFILE is retried on the next turn.

mod common;
mod stall_util;

use common::*;
use stall_util::*;
use std::io::Write;
use std::net::TcpStream;

/// Open clients one by one until `n` were tried: each sends OPTIONS and is either answered (kept)
/// or closed by the daemon (refused). Returns the answered ones and how many were refused.
fn clients(port: u16, n: u32) -> (Vec<TcpStream>, u32) {
    let mut answered = Vec::new();
    let mut refused = 0;
    for i in 0..n {
        let mut c = tcp_connect(port);
        match tcp_options(&mut c, port, i) {
            Some(r) => {
                assert!(r.starts_with("SIP/2.0 200"), "{r}");
                answered.push(c);
            }
            None => refused += 1,
        }
    }
    (answered, refused)
}

#[test]
fn a_stream_worker_at_its_open_file_limit_refuses_new_connections_and_keeps_the_others() {
    let d = Daemon::start(
        "nofilestream",
        Opts {
            processes: 1,
            extra: "[tcp]\nworkers = 1\n".into(),
            ..Opts::default()
        },
    );
    let port = free_tcp_port("127.0.0.1");
    d.add(&format!("tcp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    let pid = worker_pid(&d, "stream", 0);
    // A low limit on the running worker (as `ulimit -n` would have given it), with room for 40
    // connections beyond what it holds now.
    let limit = lowest_free_fd(pid) + 40;
    set_nofile(pid, limit, limit);

    let (mut kept, refused) = clients(port, 100);
    // About 40 (the worker may hold an fd or two more by then).
    assert!(
        (30..=40).contains(&kept.len()) && refused >= 60,
        "{} answered, {refused} refused with a limit of {limit}; log:\n{}",
        kept.len(),
        d.log_text()
    );
    assert_eq!(kept.len() as u32 + refused, 100);
    // The same process, still serving every connection it took.
    assert_eq!(worker_pid(&d, "stream", 0), pid, "the worker died");
    for (i, c) in kept.iter_mut().enumerate() {
        assert!(
            tcp_options(c, port, 1000 + i as u32).is_some(),
            "established connection {i} lost"
        );
    }
    let dump = d.dump();
    let w = dump["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "stream")
        .unwrap()
        .clone();
    assert_eq!(w["refused"], refused, "{w:#}");
    assert_eq!(w["restarts"], 0, "{w:#}");
    assert_eq!(
        w["connections"],
        kept.len(),
        "the gauge counts what is open: {w:#}"
    );
    assert!(d
        .log_text()
        .contains("refused: the open-file limit is reached"));
    assert!(!d.log_text().contains("control data truncated"));

    // Room again once clients leave: new connections are taken.
    kept.truncate(kept.len() - 10);
    d.wait_dump("the closed connections counted down", |dump| {
        dump["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "stream" && w["connections"] == kept.len())
    });
    let (more, _) = clients(port, 5);
    assert_eq!(more.len(), 5, "no room after clients left");
}

#[test]
fn a_hard_limit_too_low_for_max_connections_refuses_to_start_naming_the_numbers() {
    let d = Daemon::configure(
        "nofilehard",
        &Opts {
            extra: "[tcp]\nworkers = 1\nmax_connections = 4096\n".into(),
            ..Opts::default()
        },
    );
    d.cli(&["db", "init"]).ok();
    let run = d.command(&["run"]);
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--nofile=1000:1000")
        .arg(run.get_program())
        .args(run.get_args())
        .env("RUST_LOG", "warn");
    let err = Run::of(&mut cmd).code(1).stderr;
    for part in [
        "open-file limit (soft 1000, hard 1000)",
        "a stream worker needs 4160",
        "[tcp] max_connections = 4096",
        "at least 4160",
    ] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }
    assert!(
        !d.fifo.exists() && !d.shm.exists(),
        "a refused start left files"
    );
}

#[test]
fn a_soft_limit_below_the_need_is_raised_to_it_when_the_hard_limit_allows() {
    let d = Daemon::configure(
        "nofilesoft",
        &Opts {
            extra: "[tcp]\nworkers = 1\nmax_connections = 3000\n".into(),
            ..Opts::default()
        },
    );
    d.cli(&["db", "init"]).ok();
    let log = std::fs::File::create(&d.log).unwrap();
    let run = d.command(&["run"]);
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=256:10000")
        .arg(run.get_program())
        .args(run.get_args())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // prlimit execs the daemon: same pid.
    wait_for("the daemon up", || {
        d.cli(&["mi", "--timeout", "5", "version"]).success()
    });
    let (soft, hard) = nofile_of(child.id());
    assert_eq!((soft, hard), (3000 + 64, 10000), "{}", d.log_text());
    // Workers inherit it.
    let w = worker_pid(&d, "stream", 0);
    assert_eq!(nofile_of(w), (3064, 10000));
    signal(child.id(), libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn an_accept_emfile_in_the_supervisor_is_retried_without_a_new_connection() {
    let d = Daemon::start(
        "nofileaccept",
        Opts {
            processes: 1,
            extra: "[tcp]\nworkers = 1\n".into(),
            ..Opts::default()
        },
    );
    let port = free_tcp_port("127.0.0.1");
    d.add(&format!("tcp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    let sup = d.pid();
    let (soft, hard) = nofile_of(sup);
    // No fd left for an accept: only 0, 1 and 2 (stdio, never closed) are below the limit, so
    // whatever else the supervisor opens or closes meanwhile, a new fd has no number.
    set_nofile(sup, 3, hard);
    let mut waiting: Vec<TcpStream> = (0..5).map(|_| tcp_connect(port)).collect();
    for (i, c) in waiting.iter_mut().enumerate() {
        let req = stream_options(
            "TCP",
            c.local_addr().unwrap(),
            udp("127.0.0.1", port),
            i as u32,
        );
        c.write_all(req.as_bytes()).unwrap();
    }
    wait_log(&d, "trying again on the next turn");
    // Room again: the connections already queued are taken without any new one arriving.
    set_nofile(sup, soft, hard);
    for (i, c) in waiting.iter_mut().enumerate() {
        let reply = read_sip(c).unwrap_or_else(|| panic!("queued connection {i} never served"));
        assert!(reply.starts_with("SIP/2.0 200"), "{reply}");
    }
}
