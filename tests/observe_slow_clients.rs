//! 1,000 concurrent slow HTTP clients (half on MI over HTTP, half on /metrics, each sending part
//! of a request and then nothing) delay neither UDP answers, stream accepts, the FIFO, nor a
//! well-behaved HTTP client; and they are dropped at the read deadline.
//!
//! Each operation must finish within [`OP_DEADLINE`]: generous for a noisy 2-core machine, and
//! blown by any stall behind the slow clients (each would hold a blocking server for the 10 s
//! read deadline, `READ_TIMEOUT`). The latencies are printed (`--no-capture` shows them).

mod common;
mod observe_util;

use common::*;
use observe_util::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SLOW_CLIENTS: usize = 1000;
const OP_DEADLINE: Duration = Duration::from_secs(5);
use supervisor::observe::READ_TIMEOUT;

/// Latencies of one kind of operation.
#[derive(Default)]
struct Timings(Vec<Duration>);

impl Timings {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let v = f();
        self.0.push(t0.elapsed());
        v
    }

    fn summary(&mut self, what: &str) -> Duration {
        self.0.sort();
        let max = *self.0.last().unwrap();
        println!(
            "{what}: {} ops, median {:?}, max {:?}",
            self.0.len(),
            self.0[self.0.len() / 2],
            max
        );
        max
    }
}

/// Every kind of operation once or more; the max latency of each.
fn measure(d: &Daemon, e: &Endpoints, udp_port: u16, tcp_port: u16, label: &str) {
    println!("-- {label}");
    let mut udp = Timings::default();
    let c = client("127.0.0.1");
    for n in 0..200 {
        let reply = udp.time(|| options(&c, common::udp("127.0.0.1", udp_port), 10_000 + n));
        assert!(reply.is_some(), "UDP OPTIONS {n} unanswered ({label})");
    }
    let mut stream = Timings::default();
    for n in 0..20 {
        let reply = stream.time(|| {
            let mut s = tcp_connect(tcp_port);
            tcp_options(&mut s, tcp_port, n)
        });
        assert!(reply.is_some(), "TCP OPTIONS {n} unanswered ({label})");
    }
    let mut fifo = Timings::default();
    for _ in 0..10 {
        let r = fifo.time(|| {
            supervisor::mi::client::call(
                &d.fifo,
                d.dir.path(),
                "version",
                &supervisor::mi::Params::None,
                DEADLINE,
            )
        });
        assert!(matches!(r, Ok(Ok(_))), "FIFO: {r:?} ({label})");
    }
    let mut mi = Timings::default();
    for _ in 0..10 {
        let r = mi.time(|| {
            mi_post(
                e.mi_http,
                "get_statistics",
                json!({"statistics": ["core:"]}),
            )
        });
        assert!(r["result"]["core:uptime"].is_u64(), "{r}");
    }
    let mut scrape = Timings::default();
    for _ in 0..5 {
        let r = scrape.time(|| http(e.metrics, "GET", "/metrics", b""));
        assert_eq!(r.status, 200);
    }
    for (what, t) in [
        ("UDP OPTIONS round trip", &mut udp),
        ("TCP connect + OPTIONS", &mut stream),
        ("FIFO version", &mut fifo),
        ("MI over HTTP get_statistics", &mut mi),
        ("metrics scrape", &mut scrape),
    ] {
        let max = t.summary(what);
        assert!(max < OP_DEADLINE, "{what} took {max:?} ({label})");
    }
}

/// Enough descriptors for the slow clients in this process.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = (SLOW_CLIENTS as u64 + 512).min(hard);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    }
    assert!(
        want >= SLOW_CLIENTS as u64 + 256,
        "the open-file hard limit ({hard}) is too low for {SLOW_CLIENTS} clients"
    );
}

#[test]
fn a_thousand_slow_http_clients_delay_nothing_else() {
    raise_fd_limit();
    let (d, e) = observed("obs-slow", false, "", "");
    let (udp_port, tcp_port) = (free_udp_port("127.0.0.1"), free_tcp_port("127.0.0.1"));
    d.add(&format!("udp:127.0.0.1:{udp_port}"), &[]);
    d.add(&format!("tcp:127.0.0.1:{tcp_port}"), &[]);
    d.reload_ok();
    measure(&d, &e, udp_port, tcp_port, "without slow clients");

    // Half of them stop in the head, half in the body (after a complete head).
    let t0 = Instant::now();
    let mut slow: Vec<TcpStream> = (0..SLOW_CLIENTS)
        .map(|i| {
            let to = if i % 2 == 0 { e.mi_http } else { e.metrics };
            let mut s = TcpStream::connect(to).unwrap();
            let part: &[u8] = if i % 4 < 2 {
                b"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Le"
            } else {
                b"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\""
            };
            s.write_all(part).unwrap();
            s
        })
        .collect();
    let opened = t0.elapsed();
    println!("{SLOW_CLIENTS} slow clients connected in {opened:?}");
    measure(&d, &e, udp_port, tcp_port, "with 1,000 slow clients");
    let measured = t0.elapsed();
    assert!(
        measured < READ_TIMEOUT,
        "the measures ended {measured:?} after the first slow client connected: past the read \
         deadline, they may not have overlapped"
    );

    // The server drops each one at its read deadline (10 s after it connected).
    let limit = READ_TIMEOUT + DEADLINE;
    let mut buf = [0u8; 64];
    for (i, s) in slow.iter_mut().enumerate() {
        let left = limit
            .saturating_sub(t0.elapsed())
            .max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("slow client {i} not dropped by the deadline: {other:?}"),
        }
    }
    println!(
        "every slow client dropped by {:?} after the first connected",
        t0.elapsed()
    );
    measure(
        &d,
        &e,
        udp_port,
        tcp_port,
        "after the slow clients were dropped",
    );
    d.stop();
}
