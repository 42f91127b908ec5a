//! Regression (fixed): `[tcp] max_connections` used to count a connection twice while the
//! supervisor was still in the event-loop turn that accepted it: once in the supervisor's own
//! count of its hand-offs (cleared only at the start of the next turn) and once in the stream
//! worker's gauge, as soon as the worker took its `Conn`, so a burst of connections accepted in one
//! turn was refused below the limit. Now the supervisor raises the worker's gauge at the hand-off
//! and the worker lowers it when the connection ends (`Pool::hand_off`): one count. This test keeps
//! a burst of exactly `max_connections` served whole.

mod common;

use common::*;
use std::net::TcpStream;

const MAX: usize = 16;

#[test]
fn a_burst_up_to_max_connections_is_served_whole() {
    let d = Daemon::start(
        "burstmax",
        Opts {
            extra: format!("[tcp]\nworkers = 2\nmax_connections = {MAX}\n"),
            ..Opts::default()
        },
    );
    let port = free_tcp_port("127.0.0.1");
    d.add(&format!("tcp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    // Each round is a chance for the race; one is enough to show it.
    for round in 0..20u32 {
        // Every connect completes in the kernel's backlog; the supervisor accepts them in as few
        // turns as it gets to.
        let mut conns: Vec<TcpStream> = (0..MAX).map(|_| tcp_connect(port)).collect();
        for (i, c) in conns.iter_mut().enumerate() {
            let n = round * 100 + i as u32;
            if tcp_options(c, port, n).is_none() {
                let status = d.mi("sockets_status").unwrap();
                let log = d.log_text();
                let refusals: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
                panic!(
                    "round {round}: connection {} of {MAX} was not served, below max_connections \
                     (refused_connections = {}):\n{}",
                    i + 1,
                    status["refused_connections"],
                    refusals.join("\n")
                );
            }
        }
        drop(conns);
        d.wait_dump("every connection closed", |dump| {
            dump["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["connections"] == 0)
        });
    }
}
