//! Helpers of the observe_* tests: a daemon with the MI HTTP / datagram / metrics endpoints on
//! free ports, a tiny HTTP client, and the skip rule for missing peers.
#![allow(dead_code)]

use crate::common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

/// A missing peer: a failure under `CI=true`; elsewhere `SKIPPED` on stderr and a line in
/// `$SIPSOCKD_SKIP_FILE` (listed by scripts/test.sh). Returns false.
pub fn skip(test: &str, reason: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} cannot run under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {test}: {reason}");
    if let Some(file) = std::env::var_os("SIPSOCKD_SKIP_FILE") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            let _ = writeln!(f, "{test}\t{reason}");
        }
    }
    false
}

/// True when `tool` is on PATH; else [`skip`].
pub fn have(test: &str, tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    found || skip(test, &format!("{tool} is not installed"))
}

/// The endpoints a test daemon has.
pub struct Endpoints {
    pub mi_http: SocketAddr,
    pub metrics: SocketAddr,
    pub udp: SocketAddr,
    pub unix: std::path::PathBuf,
}

/// A daemon with `[mi_http]`, `[metrics]` and `[mi_datagram]` (UDP, or the unix socket
/// `mi.sock` in its directory when `unix`) on free loopback ports; `mi_http` holds more keys of
/// `[mi_http]`, `more` more sections.
pub fn observed(name: &str, unix: bool, mi_http: &str, more: &str) -> (Daemon, Endpoints) {
    let port = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let d = Daemon::configure(name, &Opts::default());
    let e = Endpoints {
        mi_http: port(free_tcp_port("127.0.0.1")),
        metrics: port(free_tcp_port("127.0.0.1")),
        udp: port(free_udp_port("127.0.0.1")),
        unix: d.dir.path().join("mi.sock"),
    };
    let datagram = if unix {
        e.unix.display().to_string()
    } else {
        format!("udp:{}", e.udp)
    };
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str(&format!(
        "[mi_http]\nlisten = \"{}\"\n{mi_http}\n[metrics]\nlisten = \"{}\"\n\
         [mi_datagram]\nsocket = {datagram:?}\n{more}\n",
        e.mi_http, e.metrics
    ));
    if !more.contains("[tcp]") {
        text.push_str("[tcp]\nworkers = 1\n");
    }
    std::fs::write(&d.config, text).unwrap();
    d.cli(&["db", "init"]).ok();
    (d.spawn(), e)
}

/// An HTTP response: status, head, body.
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {} {}", self.head, self.text()))
    }
}

/// One HTTP/1.1 request from `from` (a loopback address, or any when `None`) to `to`; the
/// server closes after its response.
pub fn http_from(
    from: Option<&str>,
    to: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = match from {
        None => TcpStream::connect_timeout(&to, DEADLINE).unwrap(),
        Some(ip) => connect_from(ip, to),
    };
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {to}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Reply {
        status,
        head,
        body: out[split + 4..].to_vec(),
    }
}

/// [`http_from`] from any address.
pub fn http(to: SocketAddr, method: &str, target: &str, body: &[u8]) -> Reply {
    http_from(None, to, method, target, &[], body)
}

/// A JSON-RPC call POSTed to `/mi`: the whole response object.
pub fn mi_post(to: SocketAddr, method: &str, params: serde_json::Value) -> serde_json::Value {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": "1", "method": method, "params": params});
    let r = http(to, "POST", "/mi", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{} {}", r.head, r.text());
    r.json()
}

/// A TCP connection to `to` from the loopback address `ip` (std cannot bind before connect).
pub fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let local: std::net::SocketAddrV4 = format!("{ip}:0").parse().unwrap();
    bind(fd.as_raw_fd(), &SockaddrIn::from(local)).unwrap();
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    TcpStream::from(fd)
}

/// Sends `n` OPTIONS to `port` and waits for every answer.
pub fn send_options(port: u16, n: u32, base: u32) {
    let c = client("127.0.0.1");
    for i in 0..n {
        assert!(
            options(&c, udp("127.0.0.1", port), base + i).is_some(),
            "OPTIONS {i} unanswered"
        );
    }
}

/// Waits (bounded) until `pred` holds on what `f` returns.
pub fn wait_for<T: std::fmt::Debug>(
    what: &str,
    mut f: impl FnMut() -> T,
    pred: impl Fn(&T) -> bool,
) -> T {
    let t0 = std::time::Instant::now();
    loop {
        let v = f();
        if pred(&v) {
            return v;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "timed out waiting for {what}: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
