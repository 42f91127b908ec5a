//! Regression tests of issue 12, item 2: a stopped stream worker used to keep being handed new
//! connections (with 2 stream workers, 200 of 400 new connections hung) and nothing noticed until
//! a reload. Now a stream worker that does not answer is *stalled* within a few hundred ms and is
//! handed nothing; when every worker is stalled a connection waits in the supervisor (bounded),
//! then is closed; a worker stalled for 5 s is killed and started again.

mod common;
mod stall_util;

use common::*;
use stall_util::*;
use std::time::{Duration, Instant};

/// A daemon with `workers` stream workers and one TCP socket; returns it and the port.
fn tcp_daemon(name: &str, workers: u32) -> (Daemon, u16) {
    let d = Daemon::start(
        name,
        Opts {
            processes: 1,
            extra: format!("[tcp]\nworkers = {workers}\n"),
            ..Opts::default()
        },
    );
    let port = free_tcp_port("127.0.0.1");
    d.add(&format!("tcp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    (d, port)
}

/// Stop stream worker `rank` and wait until the supervisor says it is stalled.
fn stall(d: &Daemon, rank: u64) -> u32 {
    let pid = worker_pid(d, "stream", rank);
    signal(pid, libc::SIGSTOP);
    wait_stopped(pid);
    wait_for("the supervisor to see the stream worker stalled", || {
        worker_state(d, "stream", rank) == "stalled"
    });
    pid
}

#[test]
fn a_stopped_stream_worker_is_skipped_and_400_new_connections_each_get_their_200() {
    let (d, port) = tcp_daemon("stallstream", 2);
    // Both workers serve before: one connection each (the least loaded is chosen).
    let mut held: Vec<_> = (0..2).map(|_| tcp_connect(port)).collect();
    for (i, c) in held.iter_mut().enumerate() {
        assert!(tcp_options(c, port, i as u32).is_some());
    }
    let stopped = stall(&d, 1);
    wait_log(&d, &format!("stream worker 1 (pid {stopped}) stalled"));

    let t0 = Instant::now();
    let mut conns = Vec::new();
    for n in 0..400u32 {
        let mut c = tcp_connect(port);
        match tcp_options(&mut c, port, 100 + n) {
            Some(r) if r.starts_with("SIP/2.0 200") => conns.push(c),
            other => panic!(
                "connection {n} of 400 not answered ({other:?}) after {:?}; log:\n{}",
                t0.elapsed(),
                d.log_text()
            ),
        }
    }
    // Every one is open and served by the live worker.
    for (n, c) in conns.iter_mut().enumerate().step_by(37) {
        assert!(
            tcp_options(c, port, 1000 + n as u32).is_some(),
            "connection {n} again"
        );
    }
    // Stalled 5 s: killed and started again; the next connections may go to the new one.
    wait_for("the stalled worker killed", || gone(stopped));
    let log = wait_log(&d, "stalled: no answer for 5 s; restarted");
    assert!(log.contains("stream worker 1"), "{log}");
    d.wait_dump("the new stream worker ready", |dump| {
        dump["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] == "ready")
    });
    for n in 0..20u32 {
        assert!(tcp_answer_time(port, 5000 + n).is_ok(), "after the restart");
    }
    // The live worker's connections never noticed.
    for (n, c) in conns.iter_mut().enumerate().step_by(41) {
        assert!(
            tcp_options(c, port, 6000 + n as u32).is_some(),
            "connection {n} at the end"
        );
    }
}

#[test]
fn when_every_stream_worker_is_stalled_a_connection_waits_and_is_handed_once_one_answers() {
    let (d, port) = tcp_daemon("stallwait", 1);
    let stopped = stall(&d, 0);
    let mut c = tcp_connect(port);
    use std::io::Write;
    let req = stream_options("TCP", c.local_addr().unwrap(), udp("127.0.0.1", port), 7);
    c.write_all(req.as_bytes()).unwrap();
    // The supervisor holds it: nobody takes connections.
    wait_log(&d, "no stream worker takes connections now");
    signal(stopped, libc::SIGCONT);
    let reply = read_sip(&mut c).expect("handed over once the worker answered");
    assert!(reply.starts_with("SIP/2.0 200"), "{reply}");
    let status = d.mi_call("sockets_status").unwrap();
    assert_eq!(status["refused_connections"], 0, "{status:#}");
    assert_eq!(worker_pid(&d, "stream", 0), stopped, "not restarted");
}

#[test]
fn a_connection_no_stream_worker_takes_is_closed_after_the_bound_and_counted() {
    let (d, port) = tcp_daemon("stallclose", 1);
    let stopped = stall(&d, 0);
    let t0 = Instant::now();
    let mut c = tcp_connect(port);
    assert!(closed_by_peer(&mut c), "never closed");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "closed after {waited:?}, before the 2 s bound"
    );
    wait_log(&d, "refused: no stream worker took it within 2 s");
    let status = d.mi_call("sockets_status").unwrap();
    assert_eq!(status["refused_connections"], 1, "{status:#}");
    assert_eq!(d.dump()["connections_refused"], 1);
    // The stalled worker is replaced; new connections are served again.
    wait_for("the stalled worker killed", || gone(stopped));
    d.wait_dump("the new stream worker ready", |dump| {
        dump["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] == "ready")
    });
    assert!(tcp_answer_time(port, 9).is_ok());
}
