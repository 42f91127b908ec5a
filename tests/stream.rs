//! Stream sockets end to end on the real daemon: TCP rows applied by `sockets_reload`, SIP framing
//! on a connection, drain on removal, in-place tag changes, the lifetime limit, max_connections,
//! and SIPp over TCP.

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

fn tcp_daemon(name: &str, extra: &str) -> (Daemon, u16) {
    let d = Daemon::start(
        name,
        Opts {
            extra: format!("[tcp]\nworkers = 2\n{extra}"),
            ..Opts::default()
        },
    );
    let port = free_tcp_port("127.0.0.1");
    d.add(&format!("tcp:127.0.0.1:{port}"), &["--tag", "t1"]);
    d.reload_ok();
    (d, port)
}

#[test]
fn tcp_options_get_200_with_a_tcp_contact() {
    let (d, port) = tcp_daemon("tcp200", "");
    let mut s = tcp_connect(port);
    let reply = tcp_options(&mut s, port, 1).expect("no reply on TCP");
    assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains(&format!("Contact: <sip:127.0.0.1:{port};transport=tcp>")),
        "{reply}"
    );
    // Two messages in one write, then one split byte by byte.
    let from = s.local_addr().unwrap();
    let two = stream_options("TCP", from, udp("127.0.0.1", port), 2)
        + &stream_options("TCP", from, udp("127.0.0.1", port), 3);
    s.write_all(two.as_bytes()).unwrap();
    assert!(read_sip(&mut s).unwrap().contains("call-2@test"));
    assert!(read_sip(&mut s).unwrap().contains("call-3@test"));
    for b in stream_options("TCP", from, udp("127.0.0.1", port), 4).as_bytes() {
        s.write_all(&[*b]).unwrap();
    }
    assert!(read_sip(&mut s).unwrap().contains("call-4@test"));
    let dump = d.dump();
    let slot = dump["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["proto"] == "tcp")
        .unwrap()
        .clone();
    assert_eq!(slot["state"], "active");
    assert!(dump["workers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["kind"] == "stream"));
}

#[test]
fn a_removed_tcp_socket_drains_its_connections_and_refuses_new_ones() {
    let (d, port) = tcp_daemon("drain", "drain_timeout = 60\n");
    let mut s = tcp_connect(port);
    assert!(tcp_options(&mut s, port, 1).is_some());
    d.rm(&format!("tcp:127.0.0.1:{port}"));
    d.reload_ok();
    // The listener is gone when the reply arrives: the port can be bound again.
    drop(
        std::net::TcpListener::bind(("127.0.0.1", port))
            .expect("listener still bound after the reload"),
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a new connection was accepted after removal"
    );
    // The established connection keeps working during the drain.
    assert!(
        tcp_options(&mut s, port, 2).is_some(),
        "established connection dropped by the removal"
    );
}

#[test]
fn a_tag_change_does_not_drop_a_live_connection() {
    let (d, port) = tcp_daemon("tagchange", "");
    let mut s = tcp_connect(port);
    assert!(tcp_options(&mut s, port, 1).is_some());
    d.rm(&format!("tcp:127.0.0.1:{port}"));
    d.add(
        &format!("tcp:127.0.0.1:{port}"),
        &["--tag", "t2", "--advertised", "192.0.2.5"],
    );
    d.reload_ok();
    let reply = tcp_options(&mut s, port, 2).expect("connection dropped by a tag change");
    assert!(
        reply.contains(&format!("Contact: <sip:192.0.2.5:{port};transport=tcp>")),
        "{reply}"
    );
}

#[test]
fn a_slow_client_is_closed_by_the_lifetime_limit() {
    let (_d, port) = tcp_daemon("lifetime", "connection_lifetime = 2\n");
    let mut s = tcp_connect(port);
    let req = stream_options("TCP", s.local_addr().unwrap(), udp("127.0.0.1", port), 1);
    // One header byte per second never completes a message within the lifetime.
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let t0 = std::time::Instant::now();
    let mut closed = false;
    for b in req.as_bytes().iter().take(60) {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            _ => {
                closed = true;
                break;
            }
        }
        assert!(t0.elapsed() < DEADLINE);
    }
    assert!(closed, "the slow client was never closed");
}

#[test]
fn past_max_connections_new_ones_are_refused_and_existing_ones_unharmed() {
    let (d, port) = tcp_daemon("maxconn", "max_connections = 2\n");
    let mut a = tcp_connect(port);
    let mut b = tcp_connect(port);
    assert!(tcp_options(&mut a, port, 1).is_some());
    assert!(tcp_options(&mut b, port, 2).is_some());
    d.wait_dump("two open connections", |dump| {
        dump["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["connections"].as_u64().unwrap_or(0))
            .sum::<u64>()
            == 2
    });
    let mut c = tcp_connect(port);
    assert!(
        closed_by_peer(&mut c),
        "a third connection was served past max_connections = 2"
    );
    assert!(tcp_options(&mut a, port, 3).is_some());
    assert!(tcp_options(&mut b, port, 4).is_some());
}

#[test]
fn sipp_over_tcp_gets_200s() {
    if !have_tool("sipp_over_tcp_gets_200s", "sipp") {
        return;
    }
    let (d, port) = tcp_daemon("sipptcp", "");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/options.xml");
    let out = std::process::Command::new("sipp")
        .args([
            "-sf",
            scenario,
            "-t",
            "t1",
            "-m",
            "100",
            "-r",
            "100",
            "-l",
            "20",
            "-i",
            "127.0.0.1",
            "-p",
            "0",
        ])
        .args(["-timeout", "60s", "-timeout_error", "-nostdin"])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(d.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "sipp -t t1 failed:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
}
