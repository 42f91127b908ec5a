//! Abuse of the real daemon's inputs: the MI FIFO (raw writes, as a hostile or broken local client
//! would do them) and, at the end, nasty SIP datagrams on a UDP socket.
//!
//! What must hold every time: the bad input is refused and logged, nothing is written outside
//! `reply_dir` (nor through a symlink, nor into a regular file), nothing refused is run, and the
//! daemon keeps answering the next client.
//!
//! The nasty-datagram test lives here rather than in `worker/tests/nasty.rs` because only the root
//! package's tests can start the `sipsockd` binary.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::UdpSocket;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The MI parser's limit (`supervisor::mi::proto::MAX_REQUEST`).
const MAX_REQUEST: usize = 1 << 20;

/// Write `bytes` into the server FIFO as one client, without ever blocking past the deadline.
fn raw_write(fifo: &Path, bytes: &[u8]) {
    let mut f = open_fifo_writer(fifo);
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < bytes.len() {
        match f.write(&bytes[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    t0.elapsed() < DEADLINE,
                    "the daemon stopped reading its FIFO ({sent} of {} bytes written)",
                    bytes.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("write to the MI FIFO: {e}"),
        }
    }
}

fn open_fifo_writer(fifo: &Path) -> File {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .unwrap_or_else(|e| panic!("open {} for writing: {e}", fifo.display()))
}

fn request(reply_name: &str, id: &str, method: &str) -> String {
    format!(
        ":{reply_name}:{}\n",
        json!({"jsonrpc": "2.0", "id": id, "method": method})
    )
}

/// A FIFO with its read end open (non-blocking), as a client makes for its reply; removed on drop.
struct Pipe {
    path: PathBuf,
    read: File,
}

impl Pipe {
    fn new(path: PathBuf) -> Pipe {
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
        let read = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        Pipe { path, read }
    }

    /// Everything written so far (never blocks).
    fn drain(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match self.read.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("read {}: {e}", self.path.display()),
            }
        }
    }

    /// Wait for one reply line and parse it.
    fn reply(&mut self) -> Value {
        let t0 = Instant::now();
        let mut got = Vec::new();
        loop {
            got.extend(self.drain());
            if let Some(end) = got.iter().position(|&b| b == b'\n') {
                return serde_json::from_slice(&got[..end])
                    .unwrap_or_else(|e| panic!("reply in {}: {e}: {got:?}", self.path.display()));
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "no reply in {} (got {got:?})",
                self.path.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Wait until the daemon's log has `needle` (the log is written as things happen).
fn wait_log(d: &Daemon, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        let log = d.log_text();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "{needle:?} never logged; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The FIFO still answers a normal client (`sipsockd mi version`).
fn assert_serving(d: &Daemon) {
    if let Err(e) = d.mi("version") {
        panic!("mi version: {e}\nlog:\n{}", d.log_text());
    }
}

/// A database row (not yet loaded) whose appearance in the shm table would prove that a refused
/// `sockets_reload` ran after all.
fn add_canary(d: &Daemon) -> String {
    let sock = format!("udp:127.0.0.1:{}", free_udp_port("127.0.0.1"));
    d.add(&sock, &[]);
    sock
}

fn assert_not_loaded(d: &Daemon, sock: &str) {
    let dump = d.dump();
    let loaded = dump["slots"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["socket"] == sock));
    assert!(!loaded, "a refused sockets_reload ran: {dump:#}");
}

#[test]
fn a_request_over_the_buffer_limit_is_refused_and_not_run() {
    let d = Daemon::start("mi-big", Opts::default());
    let canary = add_canary(&d);
    let mut pipe = Pipe::new(d.dir.path().join("big_reply"));
    // Valid but for its size (an unknown member is ignored): run, it would load the canary.
    let body = json!({
        "jsonrpc": "2.0", "id": "big", "method": "sockets_reload",
        "pad": "x".repeat(MAX_REQUEST + 100),
    });
    let data = format!(":big_reply:{body}\n");
    // The daemon reads while this writes (the pipe holds 64 KiB).
    let fifo = d.fifo.clone();
    let writer = std::thread::spawn(move || raw_write(&fifo, data.as_bytes()));
    let reply = pipe.reply();
    writer.join().unwrap();
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    let why = reply["error"]["data"].as_str().unwrap_or_default();
    assert!(why.contains("larger than 1048576"), "{reply}");
    assert_eq!(reply["id"], Value::Null);
    wait_log(&d, "larger than 1048576");
    assert_serving(&d);
    assert_not_loaded(&d, &canary);
    // Only the big request was refused: a normal reload loads the canary.
    d.reload_ok();
    assert!(!d.dump()["slots"].as_array().unwrap().is_empty());
}

#[test]
fn many_requests_in_one_write_are_each_answered() {
    let d = Daemon::start("mi-many", Opts::default());
    const N: usize = 100;
    let methods = ["version", "uptime", "which", "ps", "sockets_list"];
    let mut pipes: Vec<Pipe> = (0..N)
        .map(|i| Pipe::new(d.dir.path().join(format!("many_{i}"))))
        .collect();
    let data: String = (0..N)
        .map(|i| {
            request(
                &format!("many_{i}"),
                &format!("id-{i}"),
                methods[i % methods.len()],
            )
        })
        .collect();
    assert!(
        data.len() > 4096,
        "more than PIPE_BUF, so one write is several reads"
    );
    raw_write(&d.fifo, data.as_bytes());
    for (i, pipe) in pipes.iter_mut().enumerate() {
        let reply = pipe.reply();
        assert_eq!(reply["id"], format!("id-{i}"), "{reply}");
        assert!(
            reply.get("result").is_some(),
            "{} -> {reply}",
            methods[i % 5]
        );
    }
    assert_serving(&d);
}

#[test]
fn a_client_that_never_writes_or_never_reads_does_not_hold_up_the_others() {
    let d = Daemon::start("mi-idle", Opts::default());
    // A writer that opens the FIFO and then sits there, held open by its own thread.
    let (opened_tx, opened_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let fifo = d.fifo.clone();
    let idle = std::thread::spawn(move || {
        let f = open_fifo_writer(&fifo);
        opened_tx.send(()).unwrap();
        // Bounded: the test ends long before; dropping `f` closes the writer.
        let _ = stop_rx.recv_timeout(DEADLINE * 4);
        drop(f);
    });
    opened_rx.recv_timeout(DEADLINE).unwrap();
    // A client whose reply FIFO has no reader: its reply waits (5 s at most) without blocking.
    let deaf = d.dir.path().join("deaf_reply");
    nix::unistd::mkfifo(&deaf, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    raw_write(&d.fifo, request("deaf_reply", "1", "version").as_bytes());
    for _ in 0..5 {
        assert_serving(&d);
    }
    let mut pipe = Pipe::new(d.dir.path().join("raw_reply"));
    raw_write(&d.fifo, request("raw_reply", "raw", "which").as_bytes());
    assert_eq!(pipe.reply()["id"], "raw");
    stop_tx.send(()).unwrap();
    idle.join().unwrap();
    assert_serving(&d);
    wait_log(&d, "deaf_reply dropped: no reader opened it");
    assert_serving(&d);
}

#[test]
fn reply_names_with_dot_dot_or_slash_are_refused_and_not_run() {
    let d = Daemon::start("mi-names", Opts::default());
    let canary = add_canary(&d);
    // FIFOs with readers where a joined path would land: nothing may arrive in them.
    let outside = TempDir::new("mi-names-outside");
    let escape_name = outside
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut escape = Pipe::new(outside.path().join("escape"));
    std::fs::create_dir(d.dir.path().join("sub")).unwrap();
    let mut sub = Pipe::new(d.dir.path().join("sub").join("reply"));
    let mut absolute = Pipe::new(outside.path().join("abs"));
    let names = [
        format!("../{escape_name}/escape"),
        "sub/reply".to_owned(),
        format!("{}", absolute.path.display()),
        "..".to_owned(),
        ".hidden".to_owned(),
        "sub/../sub/reply".to_owned(),
    ];
    for (i, name) in names.iter().enumerate() {
        raw_write(
            &d.fifo,
            request(name, &format!("bad-{i}"), "sockets_reload").as_bytes(),
        );
        let shown: String = name.chars().take(60).collect();
        let line = wait_log(&d, &format!("request refused: reply name \"{shown}"));
        assert!(
            line.contains("contains '.'") || line.contains("contains '/'"),
            "{line}"
        );
    }
    // The FIFO is read in order: once this is answered, every refused request was seen.
    assert_serving(&d);
    assert_not_loaded(&d, &canary);
    for pipe in [&mut escape, &mut sub, &mut absolute] {
        assert_eq!(pipe.drain(), b"", "written to {}", pipe.path.display());
    }
}

#[test]
fn a_reply_fifo_that_is_a_symlink_or_a_regular_file_is_refused() {
    let d = Daemon::start("mi-links", Opts::default());
    let outside = TempDir::new("mi-links-outside");
    let target = outside.path().join("target.txt");
    std::fs::write(&target, "original\n").unwrap();
    let target_mtime = std::fs::metadata(&target).unwrap().modified().unwrap();
    symlink(&target, d.dir.path().join("link_to_file")).unwrap();
    let mut outside_fifo = Pipe::new(outside.path().join("fifo"));
    symlink(&outside_fifo.path, d.dir.path().join("link_to_fifo")).unwrap();
    let regular = d.dir.path().join("regular_reply");
    std::fs::write(&regular, "original\n").unwrap();

    let cases = [
        ("link_to_file", "refused: it is a symlink"),
        ("link_to_fifo", "refused: it is a symlink"),
        ("regular_reply", "refused: it is not a FIFO"),
    ];
    for (name, why) in cases {
        raw_write(&d.fifo, request(name, name, "version").as_bytes());
        let line = wait_log(&d, &format!("{name} dropped: {why}"));
        assert!(line.contains("WARN"), "{line}");
        assert_serving(&d);
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "original\n");
    assert_eq!(
        std::fs::metadata(&target).unwrap().modified().unwrap(),
        target_mtime
    );
    assert_eq!(outside_fifo.drain(), b"", "written through the symlink");
    assert_eq!(std::fs::read_to_string(&regular).unwrap(), "original\n");
    // The links are still links (not replaced by the daemon).
    for name in ["link_to_file", "link_to_fifo"] {
        let meta = std::fs::symlink_metadata(d.dir.path().join(name)).unwrap();
        assert!(meta.file_type().is_symlink(), "{name}");
    }
}

#[test]
fn garbage_and_broken_json_are_logged_and_the_fifo_recovers() {
    let d = Daemon::start("mi-garbage", Opts::default());
    let mut pipe = Pipe::new(d.dir.path().join("broken_reply"));
    raw_write(&d.fifo, b"\x00\xffhello world, no colon at all\n");
    wait_log(&d, "not a request");
    raw_write(
        &d.fifo,
        b":broken_reply:{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":}\n",
    );
    let reply = pipe.reply();
    assert_eq!(reply["error"]["code"], -32700, "{reply}");
    // A writer that stops in the middle of a request and closes: the end-of-file ends it.
    let mut pipe = Pipe::new(d.dir.path().join("cut_reply"));
    raw_write(
        &d.fifo,
        b":cut_reply:{\"jsonrpc\":\"2.0\",\"id\":\"c\",\"meth",
    );
    assert_eq!(pipe.reply()["error"]["code"], -32700);
    assert_serving(&d);
}

/// A writer that sends half a request and keeps the FIFO open: requests from other clients that
/// arrive meanwhile must still be answered.
///
/// Regression: the parser used to take the other clients' requests for the rest of the unfinished
/// value, so nobody was answered until the staller closed. An unfinished request now ends at its
/// deadline (`REQUEST_STALL`) with a parse error, and the requests it swallowed are served.
#[test]
fn a_half_written_request_held_open_does_not_hold_up_the_others() {
    let d = Daemon::start("mi-stall", Opts::default());
    let (opened_tx, opened_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let fifo = d.fifo.clone();
    let staller = std::thread::spawn(move || {
        let mut f = open_fifo_writer(&fifo);
        f.write_all(b":stall_reply:{\"jsonrpc\":\"2.0\",\"id\":\"s\",")
            .unwrap();
        opened_tx.send(()).unwrap();
        let _ = stop_rx.recv_timeout(DEADLINE * 4);
        drop(f);
    });
    opened_rx.recv_timeout(DEADLINE).unwrap();
    let out = d.cli(&["mi", "--timeout", "5", "version"]);
    let served = out.success();
    stop_tx.send(()).unwrap();
    staller.join().unwrap();
    assert_serving(&d);
    assert!(
        served,
        "a client was not answered while another held a half-written request open: {}",
        out.stderr
    );
}

// ---- Nasty SIP datagrams on a real UDP socket.

/// Sum of the workers' counters: (received, replied, dropped).
fn totals(dump: &Value) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for w in dump["workers"].as_array().unwrap() {
        t.0 += w["received"].as_u64().unwrap();
        t.1 += w["replied"].as_u64().unwrap();
        t.2 += w["dropped"].as_u64().unwrap();
    }
    t
}

/// A good OPTIONS with Call-ID `nasty-N@test` and `extra` header lines.
fn nasty_options(n: u32, extra: &str) -> String {
    format!(
        "OPTIONS sip:svc@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-n{n};rport\r\n\
         From: <sip:a@test>;tag=f{n}\r\nTo: <sip:svc@127.0.0.1>\r\nCall-ID: nasty-{n}@test\r\n\
         CSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

fn recv_any(sock: &UdpSocket, call_id: &str, wait: Duration) -> Option<String> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((len, _)) => {
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                if text.contains(call_id) {
                    return Some(text);
                }
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn nasty_datagrams_are_dropped_and_counted_and_the_daemon_keeps_answering() {
    let d = Daemon::start("nasty-udp", Opts::default());
    let port = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    let to = udp("127.0.0.1", port);
    let c = client("127.0.0.1");
    let pids = d.worker_pids();

    let good = nasty_options(0, "");
    let bytes = |s: &str| s.as_bytes().to_vec();
    let with = |from: &str, to: &[u8]| {
        let at = good.find(from).unwrap();
        let good = good.as_bytes();
        [&good[..at], to, &good[at + from.len()..]].concat()
    };
    let many_vias: String = (0..1000)
        .map(|i| {
            format!(
                "Via: SIP/2.0/UDP 10.0.{}.{}:5060;branch=z9hG4bK-{i}\r\n",
                i / 256,
                i % 256
            )
        })
        .collect();
    // (what, datagram, answered?)
    let rows: Vec<(&str, Vec<u8>, bool)> = vec![
        ("empty datagram", Vec::new(), false),
        ("blanks only", bytes("   \t  "), false),
        ("CRLF keep-alive", bytes("\r\n\r\n"), false),
        ("OPTIONS", bytes("OPTIONS"), false),
        ("OPTIONS sip:x", bytes("OPTIONS sip:x"), false),
        ("SIP/2.0", bytes("SIP/2.0"), false),
        ("NUL in the Call-ID", with("nasty-0@", b"nas\0ty-0@"), false),
        ("NUL bytes only", vec![0; 512], false),
        (
            "bad UTF-8 in a header",
            with(
                "Call-ID: nasty-0@test",
                b"Call-ID: nasty-0@test\r\nSubject: \xc3\x28",
            ),
            false,
        ),
        (
            "negative Content-Length",
            with("Content-Length: 0", b"Content-Length: -1"),
            false,
        ),
        (
            "enormous Content-Length",
            with("Content-Length: 0", b"Content-Length: 18446744073709551616"),
            false,
        ),
        (
            "non-numeric Content-Length",
            with("Content-Length: 0", b"Content-Length: zero"),
            false,
        ),
        (
            "conflicting Content-Length",
            with("Content-Length: 0", b"Content-Length: 0\r\nl: 1"),
            false,
        ),
        (
            "header without colon",
            with("Content-Length: 0", b"NoColon\r\nContent-Length: 0"),
            false,
        ),
        (
            "missing the empty line",
            bytes(good.strip_suffix("\r\n").unwrap()),
            false,
        ),
        ("only CR", bytes(&good.replace("\r\n", "\r")), false),
        ("only LF", bytes(&good.replace("\r\n", "\n")), true),
        (
            "60 KiB header line",
            with(
                "Content-Length: 0",
                format!("X-Big: {}\r\nContent-Length: 0", "b".repeat(60_000)).as_bytes(),
            ),
            true,
        ),
        (
            "1,000 Via headers",
            with(
                "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-n0;rport\r\n",
                many_vias.as_bytes(),
            ),
            true,
        ),
        // The reply copies the 65,000-byte Via and grows past the largest UDP datagram: the
        // kernel refuses to send it, and that counts as dropped.
        (
            "reply too large for UDP",
            with(
                "branch=z9hG4bK-n0",
                format!("branch={}", "v".repeat(65_507 - good.len())).as_bytes(),
            ),
            false,
        ),
        (
            "a response",
            with("OPTIONS sip:svc@127.0.0.1 SIP/2.0", b"SIP/2.0 200 OK"),
            false,
        ),
    ];
    for (i, (what, datagram, answered)) in rows.into_iter().enumerate() {
        assert!(datagram.len() <= 65_507, "{what}: {} bytes", datagram.len());
        let before = totals(&d.dump());
        c.send_to(&datagram, to).unwrap();
        if answered {
            let reply = recv_any(&c, "nasty-0@test", Duration::from_secs(5));
            let reply = reply.unwrap_or_else(|| panic!("{what}: no reply"));
            assert!(
                reply.starts_with("SIP/2.0 200 OK\r\n"),
                "{what}: {}",
                &reply[..80]
            );
        }
        let n = 1000 + i as u32;
        c.send_to(nasty_options(n, "").as_bytes(), to).unwrap();
        let reply = recv_any(&c, &format!("nasty-{n}@test"), Duration::from_secs(5));
        assert!(
            reply.is_some_and(|r| r.starts_with("SIP/2.0 200 OK\r\n")),
            "{what}: no answer to the good OPTIONS after it; log:\n{}",
            d.log_text()
        );
        let replied = 1 + u64::from(answered);
        let want = (before.0 + 2, before.1 + replied, before.2 + 2 - replied);
        d.wait_dump(&format!("{what}: counters {want:?}"), |dump| {
            totals(dump) == want
        });
    }
    // Nothing crashed: the same workers, never restarted.
    assert_eq!(d.worker_pids(), pids);
    let dump = d.dump();
    for w in dump["workers"].as_array().unwrap() {
        assert_eq!(w["restarts"], 0, "{dump:#}");
    }
    assert_eq!(d.stop(), Some(0));
}
