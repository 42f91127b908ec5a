//! A `ws` connection of a stream worker, the worker's own code end to end (`Conn::drive` in
//! worker/src/stream/conn.rs through `worker::stream::fuzzing::Connection`): the opening
//! handshake through the worker's upgrade check, then tungstenite's frame decoding with the
//! worker's settings, the keep-alive test and the `Responder`, replies written back as frames.
//! The peer is the other end of a Unix stream socket pair (the worker reads and writes it as it
//! does an accepted TCP socket; unlike TCP on loopback, a write is in the peer's queue when it
//! returns, so every run sees exactly the pieces it sent). It sends the fuzzer's bytes in pieces,
//! split where the fuzzer says, the worker's connection being driven after each piece as its
//! event loop does.
//!
//! Input layout: byte 0 = flags (bit 0: a valid upgrade request is put before the payload, so
//! that the fuzzer works on frames; bits 1..=2: the worker's `max_message_size` among 256, 1024,
//! 4096, 65535; bit 3: the peer closes after the last byte), byte 1 = number of cuts (mod 16), two
//! bytes per cut (little-endian offset), then the payload.
//!
//! Checks: no panic and no livelock; a `101` or an HTTP error comes out well formed, and a valid
//! request is accepted; what the server writes after its `101` decodes cleanly as frames on the
//! client side and holds one data message per reply counted; the upgrade, the bytes written, the
//! counters and how the connection ends do not depend on how the bytes were split (except why an
//! upgrade is refused: a request over the limit may be refused for its size in pieces and for its
//! syntax in one piece).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm::{Attached, Proto, Table, WorkerKind};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};
use worker::stream::fuzzing::{Connection, Driven};
use worker::Responder;

/// The receiving socket's advertised address, as a worker gets it from its manifest.
const CONTACT: &str = "198.51.100.1:8080";

/// An upgrade request the worker accepts.
const UPGRADE: &[u8] = b"GET /sip HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n";

/// What the worker closes a refused upgrade with.
const REFUSED: &str = "websocket upgrade refused";

/// `WS_FRAME_DEBUG=1` prints what each connection saw (for replaying a seed or a crash).
fn debug() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("WS_FRAME_DEBUG").is_some())
}

/// The shared table of one stream worker, as the worker attaches it (the file is unlinked at
/// once: the mapping is all that is used).
fn shm() -> &'static Attached {
    static T: OnceLock<(Table, Attached)> = OnceLock::new();
    &T.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("sipsockd-fuzz-ws-{}", std::process::id()));
        let table = Table::create(&path, 1, 0, 1, 0).expect("a shm table");
        let attached =
            Attached::from_file(table.file().try_clone().expect("the table's file")).unwrap();
        let _ = std::fs::remove_file(&path);
        (table, attached)
    })
    .1
}

/// (received, replied, dropped) of the worker.
fn counters() -> (u64, u64, u64) {
    let r = shm().worker(WorkerKind::Stream, 0).expect("the worker's record");
    (r.received(), r.replied(), r.dropped())
}

/// What one connection saw.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// Everything the server wrote, in order.
    written: Vec<u8>,
    /// Why the worker closed it; `None`: still open, waiting for more.
    end: Option<String>,
    /// How the worker's counters moved.
    counted: (u64, u64, u64),
}

/// The two ends of one connection.
struct Pair {
    conn: Connection,
    /// The worker's socket, to see whether input waits for it.
    probe: TcpStream,
    client: UnixStream,
    seen: Seen,
}

impl Pair {
    fn new(max_head: usize) -> Pair {
        let (server, client) = UnixStream::pair().expect("a socket pair");
        client.set_nonblocking(true).unwrap();
        // The worker's side as the worker holds an accepted socket: a TcpStream over the fd.
        let probe = TcpStream::from(OwnedFd::from(server.try_clone().unwrap()));
        let server = TcpStream::from(OwnedFd::from(server));
        let peer = SocketAddr::from(([192, 0, 2, 7], 50_000));
        let responder = Responder::new(503, "Service Unavailable");
        let conn = Connection::new(Proto::Ws, server, peer, max_head, responder, CONTACT).unwrap();
        Pair {
            conn,
            probe,
            client,
            seen: Seen {
                written: Vec::new(),
                end: None,
                counted: (0, 0, 0),
            },
        }
    }

    /// Take what the server wrote; true when something was there.
    fn read_client(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let mut any = false;
        loop {
            match self.client.read(&mut buf) {
                Ok(0) => return any,
                Ok(n) => {
                    self.seen.written.extend_from_slice(&buf[..n]);
                    any = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock, or a reset once the server closed: all there is was read.
                Err(_) => return any,
            }
        }
    }

    /// True when input (or the peer's end of file) waits for the worker.
    fn input_pending(&self) -> bool {
        let mut b = [0u8; 1];
        !matches!(self.probe.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Drive the connection as the event loop would until it waits with nothing to read and
    /// nothing more to write, or is closed.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if self.seen.end.is_some() {
                return;
            }
            let driven = self.conn.drive(shm());
            if debug() {
                eprintln!("  drive: {driven:?}, counters {:?}", counters());
            }
            match driven {
                Driven::More => {}
                Driven::Closed { why, .. } => {
                    // As the worker does before dropping it; everything it wrote is read
                    // before the socket closes (an unread input would make that a reset).
                    self.conn.say_goodbye();
                    self.read_client();
                    self.seen.end = Some(why);
                }
                Driven::Wait => {
                    let took = self.read_client();
                    if !took && !self.input_pending() {
                        return;
                    }
                }
            }
        }
        panic!("the connection never settled: {:?}", self.seen.end);
    }

    /// Send `piece`, driving the worker whenever the socket takes no more.
    fn send(&mut self, mut piece: &[u8]) {
        if debug() {
            eprintln!(" send {} bytes", piece.len());
        }
        while !piece.is_empty() && self.seen.end.is_none() {
            match self.client.write(piece) {
                Ok(n) => piece = &piece[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The worker closed it meanwhile.
                Err(_) => break,
            }
            self.settle();
        }
        self.settle();
    }

    fn run(max_head: usize, stream: &[u8], ends: &[usize], peer_closes: bool) -> Seen {
        let mut pair = Pair::new(max_head);
        let before = counters();
        let mut at = 0;
        for &cut in ends {
            pair.send(&stream[at..cut]);
            at = cut;
        }
        if peer_closes && pair.seen.end.is_none() {
            let _ = pair.client.shutdown(Shutdown::Write);
            pair.settle();
        }
        pair.read_client();
        let after = counters();
        pair.seen.counted = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
        pair.seen
    }
}

/// Decodes what the server wrote after its `101` as a client would; returns its data messages.
fn client_view(frames: &[u8]) -> Vec<Vec<u8>> {
    struct Bytes(std::collections::VecDeque<u8>);
    impl Read for Bytes {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Bytes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let wire = Bytes(frames.iter().copied().collect());
    let mut client = WebSocket::from_raw_socket(wire, Role::Client, Some(config));
    let mut got = Vec::new();
    for _ in 0..1_000_000 {
        match client.read() {
            Ok(Message::Text(t)) => got.push(t.as_str().as_bytes().to_vec()),
            Ok(Message::Binary(b)) => got.push(b.to_vec()),
            Ok(_) => {}
            // All read, or the server's close was the last frame.
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => break,
            Err(e) => panic!("the server wrote what a client cannot decode: {e}"),
        }
    }
    got
}

/// Checks on one connection; returns whether the upgrade was refused.
fn check(seen: &Seen, valid_upgrade: bool) -> bool {
    let head_end = seen.written.windows(4).position(|w| w == b"\r\n\r\n");
    let Some(head_end) = head_end.map(|at| at + 4) else {
        // Nothing answered yet: the request is incomplete, or the peer left before it ended.
        assert!(!valid_upgrade, "no answer to a valid upgrade: {seen:?}");
        assert!(seen.written.is_empty(), "a partial HTTP response: {seen:?}");
        return false;
    };
    let head = String::from_utf8_lossy(&seen.written[..head_end]);
    if head.starts_with("HTTP/1.1 101 Switching Protocols\r\n") {
        assert!(head.contains("\r\nSec-WebSocket-Protocol: sip\r\n"), "{head}");
        let replies = client_view(&seen.written[head_end..]);
        assert_eq!(replies.len() as u64, seen.counted.1, "one frame per reply: {seen:?}");
        for r in &replies {
            assert!(r.starts_with(b"SIP/2.0 "), "{}", String::from_utf8_lossy(r));
        }
        false
    } else {
        assert!(!valid_upgrade, "a valid upgrade refused: {head}");
        assert!(head.starts_with("HTTP/1.1 4"), "{head}");
        assert!(head.ends_with("\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"), "{head}");
        assert_eq!(seen.written.len(), head_end, "bytes after a refusal: {seen:?}");
        assert_eq!(seen.end.as_deref(), Some(REFUSED));
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, cuts, rest @ ..] = data else {
        return;
    };
    let max_head = [256, 1024, 4096, 65535][usize::from((flags >> 1) & 3)];
    let peer_closes = flags & 8 != 0;
    let ncuts = usize::from(cuts % 16);
    let Some((cut_bytes, payload)) = rest.split_at_checked(2 * ncuts) else {
        return;
    };
    let valid_upgrade = flags & 1 != 0;
    let stream: Vec<u8> =
        if valid_upgrade { [UPGRADE, payload].concat() } else { payload.to_vec() };
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    let ends: Vec<usize> = cuts.into_iter().chain([stream.len()]).collect();

    let whole = Pair::run(max_head, &stream, &[stream.len()], peer_closes);
    let pieces = Pair::run(max_head, &stream, &ends, peer_closes);
    if debug() {
        eprintln!("max_head {max_head}, reads end at {ends:?}");
        for (name, s) in [("whole", &whole), ("pieces", &pieces)] {
            eprintln!(
                "{name}: end {:?}, counted {:?}, wrote {:?}",
                s.end,
                s.counted,
                String::from_utf8_lossy(&s.written)
            );
        }
    }
    let refused = (check(&whole, valid_upgrade), check(&pieces, valid_upgrade));
    match refused {
        (true, true) => {}
        _ => assert_eq!(whole, pieces, "one piece vs in pieces"),
    }
});
