//! Regression: a stream worker killed with connections open left its share in the slot's
//! `connections` gauge for ever (the kernel closed the connections, nobody took the +1s back), so
//! `shm-dump` and `sockets_status` over-counted. Since layout 2 each stream worker counts in its
//! own row of the shm connection matrix, which the supervisor zeroes when it reaps the worker.

mod common;

use common::*;
use serde_json::Value;

/// The slot's open connections in a dump (the key is left out when 0).
fn slot_connections(dump: &Value, socket: &str) -> u64 {
    let slot = dump["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["socket"] == socket)
        .unwrap_or_else(|| panic!("no slot for {socket} in {dump:#}"));
    slot["connections"].as_u64().unwrap_or(0)
}

/// (rank, pid, state, connections) of each stream worker in a dump.
fn stream_workers(dump: &Value) -> Vec<(u64, u64, String, u64)> {
    dump["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "stream")
        .map(|w| {
            (
                w["rank"].as_u64().unwrap(),
                w["pid"].as_u64().unwrap(),
                w["state"].as_str().unwrap().to_string(),
                w["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn stream_worker_crash_leaves_no_phantom_connections() {
    let d = Daemon::start(
        "phantom",
        Opts {
            extra: "[tcp]\nworkers = 2\n".into(),
            ..Opts::default()
        },
    );
    let port = free_tcp_port("127.0.0.1");
    let socket = format!("tcp:127.0.0.1:{port}");
    d.add(&socket, &[]);
    d.reload_ok();

    // Two connections, each served (so each was handed to a stream worker and counted).
    let mut conns = vec![tcp_connect(port), tcp_connect(port)];
    for (n, s) in conns.iter_mut().enumerate() {
        let reply = tcp_options(s, port, n as u32 + 1).expect("no reply on TCP");
        assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
    }
    let dump = d.wait_dump("2 connections counted", |v| {
        slot_connections(v, &socket) == 2 && stream_workers(v).iter().map(|w| w.3).sum::<u64>() == 2
    });

    // Kill the worker that holds the most of them (both, or one of two).
    let (rank, pid, _, held) = stream_workers(&dump)
        .into_iter()
        .max_by_key(|w| w.3)
        .unwrap();
    assert!(held > 0 && pid > 0, "{dump:#}");
    signal(pid as u32, libc::SIGKILL);
    let left = 2 - held;

    // The worker comes back, and the slot counts only the connections still open.
    let dump = d.wait_dump("the killed worker back, the slot without its share", |v| {
        let back = stream_workers(v)
            .into_iter()
            .any(|w| w.0 == rank && w.1 != pid && w.1 != 0 && w.2 == "ready" && w.3 == 0);
        back && slot_connections(v, &socket) == left
    });
    assert_eq!(
        stream_workers(&dump).iter().map(|w| w.3).sum::<u64>(),
        left,
        "{dump:#}"
    );

    // The kernel closed the killed worker's connections; the others are still served.
    let served = conns
        .iter_mut()
        .enumerate()
        .filter_map(|(n, s)| tcp_options(s, port, n as u32 + 10))
        .count();
    assert_eq!(
        served as u64, left,
        "connections still served after the kill"
    );

    // sockets_status agrees with the dump.
    let status = d.mi("sockets_status").unwrap();
    let row = status["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["socket"] == socket.as_str())
        .unwrap_or_else(|| panic!("no {socket} in {status:#}"))
        .clone();
    assert_eq!(row["connections"], left, "{status:#}");
    let victim = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == "stream" && w["rank"] == rank)
        .unwrap()
        .clone();
    assert_eq!(victim["connections"], 0, "{status:#}");

    // The restarted worker's row counts from 0: a new connection adds exactly one.
    let mut fresh = tcp_connect(port);
    assert!(
        tcp_options(&mut fresh, port, 20).is_some(),
        "no reply after restart"
    );
    d.wait_dump("the new connection counted once", |v| {
        slot_connections(v, &socket) == left + 1
    });
    drop(fresh);
    drop(conns);
    d.wait_dump("every connection closed", |v| {
        slot_connections(v, &socket) == 0
    });
}
