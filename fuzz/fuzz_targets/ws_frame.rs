//! A `ws`/`wss` connection's receive side as a stream worker drives it: the bytes of the opening
//! handshake go through the worker's upgrade check (`worker/src/stream/ws.rs`), what follows the
//! request through tungstenite's frame decoding (server role, the worker's `WebSocketConfig`), and
//! each message through the same keep-alive test and `Responder` as the worker, whose replies are
//! sent back as frames. Bytes arrive in pieces, split where the fuzzer says.
//!
//! Nothing of the WebSocket side is public in `worker` (`stream::ws` and `stream::conn` are private
//! modules), so `ws.rs` is compiled into this target as it stands (it only needs httparse and
//! tungstenite), and the configuration of `conn::ws_config` is rebuilt here: keep
//! [`ws_config`] in step with it.
//!
//! Input layout: byte 0 = flags (bit 0: a valid upgrade request is put before the payload, so
//! that the fuzzer works on frames; bits 1..=2: the worker's `max_message_size` among 256, 1024,
//! 4096, 65535; bit 3: the peer closes after the last byte), byte 1 = number of cuts (mod 16), two
//! bytes per cut (little-endian offset), then the payload.
//!
//! Checks: no panic; the upgrade waits only while the request is within the limit, a `101` or an
//! HTTP error comes out well formed, a request is accepted only within the limit; every message is
//! within `max_message_size`; the upgrade verdict, the messages, the replies and how the
//! connection ends do not depend on how the bytes were split; what the server writes decodes
//! cleanly as frames on the client side and holds the replies, in order.
#![no_main]

#[allow(dead_code)]
#[path = "../../worker/src/stream/ws.rs"]
mod ws;

use libfuzzer_sys::fuzz_target;
use shm::Proto;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::OnceLock;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};
use worker::sip;
use worker::{Outcome, Responder};
use ws::Upgrade;

/// The receiving socket's advertised address, as a worker gets it from its manifest.
const CONTACT: &str = "198.51.100.1:8080";

/// `conn::HIGH_WATER` in the worker.
const HIGH_WATER: usize = 256 * 1024;

/// An upgrade request the worker accepts.
const UPGRADE: &[u8] = b"GET /sip HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n";

/// The worker's settings for `max_head` (`conn::ws_config`).
fn ws_config(max_head: usize) -> WebSocketConfig {
    let max_message = max_head.saturating_add(sip::MAX_FRAME_LEN);
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(HIGH_WATER.max(max_message) * 2)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

fn responder() -> &'static Responder {
    static R: OnceLock<Responder> = OnceLock::new();
    R.get_or_init(|| Responder::new(503, "Service Unavailable"))
}

/// `WS_FRAME_DEBUG=1` prints what each connection saw (for replaying a seed or a crash).
fn debug() -> bool {
    static D: OnceLock<bool> = OnceLock::new();
    *D.get_or_init(|| std::env::var_os("WS_FRAME_DEBUG").is_some())
}

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 7], 50_000))
}

/// A non-blocking socket: reads what has arrived, then `WouldBlock` (or end-of-file once the peer
/// closed); every write is taken.
#[derive(Default)]
struct Wire {
    input: VecDeque<u8>,
    closed: bool,
    output: Vec<u8>,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return if self.closed {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.input.len());
        for (b, x) in buf.iter_mut().zip(self.input.drain(..n)) {
            *b = x;
        }
        Ok(n)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How the connection stands after the last byte.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Still reading the upgrade request, holding this many bytes.
    Upgrading(usize),
    /// The upgrade was refused (the HTTP status line).
    Refused(String),
    /// Upgraded and waiting for more.
    Waiting,
    /// Upgraded, then closed: the peer went away, or the error that closes it.
    Closed(String),
}

/// What one connection saw.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// The `101` and how many bytes the request took.
    accepted: Option<(Vec<u8>, usize)>,
    /// Text (true) or binary messages.
    messages: Vec<(bool, Vec<u8>)>,
    /// The replies sent, as the worker sends them.
    replies: Vec<(bool, Vec<u8>)>,
    end: End,
}

impl Seen {
    /// One line per item: the first line of each message and reply.
    fn summary(&self) -> String {
        let first = |(text, m): &(bool, Vec<u8>)| {
            let line = m.split(|b| *b == b'\n').next().unwrap_or_default();
            format!(
                "{} {} bytes {:?}",
                if *text { "text" } else { "binary" },
                m.len(),
                String::from_utf8_lossy(line)
            )
        };
        let mut out = format!("accepted {:?}", self.accepted.as_ref().map(|a| a.1));
        for m in &self.messages {
            out += &format!("\n  message {}", first(m));
        }
        for r in &self.replies {
            out += &format!("\n  reply {}", first(r));
        }
        out + &format!("\n  end {:?}", self.end)
    }
}

enum Stage {
    Upgrade(Vec<u8>),
    Ws(Box<WebSocket<Wire>>),
    Done,
}

struct Conn {
    max_head: usize,
    stage: Stage,
    seen: Seen,
    /// What the server wrote after its `101`.
    written: Vec<u8>,
}

impl Conn {
    fn new(max_head: usize) -> Conn {
        Conn {
            max_head,
            stage: Stage::Upgrade(Vec::new()),
            seen: Seen {
                accepted: None,
                messages: Vec::new(),
                replies: Vec::new(),
                end: End::Upgrading(0),
            },
            written: Vec::new(),
        }
    }

    fn receive(&mut self, piece: &[u8], last: bool, peer_closes: bool) {
        match &mut self.stage {
            Stage::Upgrade(request) => {
                request.extend_from_slice(piece);
                match ws::upgrade(request, self.max_head) {
                    Upgrade::Incomplete => {
                        assert!(
                            request.len() <= self.max_head,
                            "waiting with {} bytes, limit {}",
                            request.len(),
                            self.max_head
                        );
                        self.seen.end = End::Upgrading(request.len());
                    }
                    Upgrade::Refuse { response, why } => {
                        assert!(!why.is_empty());
                        let text = String::from_utf8(response).expect("refusal is not text");
                        assert!(text.starts_with("HTTP/1.1 4"), "{text}");
                        assert!(
                            text.ends_with("\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
                            "{text}"
                        );
                        let status = text.lines().next().unwrap_or_default().to_owned();
                        self.seen.end = End::Refused(status);
                        self.stage = Stage::Done;
                    }
                    Upgrade::Accept { response, consumed } => {
                        assert!(consumed > 0 && consumed <= request.len(), "{consumed}");
                        assert!(
                            consumed <= self.max_head,
                            "accepted {consumed} bytes, limit {}",
                            self.max_head
                        );
                        let text = std::str::from_utf8(&response).expect("101 is not text");
                        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
                        assert!(text.contains("\r\nSec-WebSocket-Protocol: sip\r\n"), "{text}");
                        assert!(text.ends_with("\r\n\r\n"), "{text}");
                        assert_eq!(text.matches("\r\n\r\n").count(), 1, "{text}");
                        let rest = request[consumed..].to_vec();
                        self.seen.accepted = Some((response, consumed));
                        self.seen.end = End::Waiting;
                        self.stage = Stage::Ws(Box::new(WebSocket::from_partially_read(
                            Wire::default(),
                            rest,
                            Role::Server,
                            Some(ws_config(self.max_head)),
                        )));
                        self.drive(last && peer_closes);
                    }
                }
            }
            Stage::Ws(ws) => {
                ws.get_mut().input.extend(piece);
                self.drive(last && peer_closes);
            }
            Stage::Done => {}
        }
    }

    /// What `conn::drive_ws` does with what has arrived; then takes what it wrote.
    fn drive(&mut self, peer_closed: bool) {
        let end = self.read_and_answer(peer_closed);
        if let Stage::Ws(ws) = &mut self.stage {
            self.written.append(&mut ws.get_mut().output);
        }
        if let Some(end) = end {
            self.seen.end = end;
            self.stage = Stage::Done;
        }
    }

    /// `Some(end)` when the connection is to be closed.
    fn read_and_answer(&mut self, peer_closed: bool) -> Option<End> {
        let Stage::Ws(ws) = &mut self.stage else { return None };
        ws.get_mut().closed = peer_closed;
        let max_message = self.max_head + sip::MAX_FRAME_LEN;
        let mut reply = Vec::new();
        // Every read consumes input or ends the loop; the bound only guards against a bug.
        for _ in 0..1_000_000 {
            let (bytes, text) = match ws.read() {
                Ok(Message::Text(t)) => (t.as_str().as_bytes().to_vec(), true),
                Ok(Message::Binary(b)) => (b.to_vec(), false),
                Ok(Message::Ping(p)) => {
                    assert!(p.len() <= 125, "control frame of {}", p.len());
                    continue;
                }
                Ok(Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => continue,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Some(End::Closed(e.to_string())),
            };
            assert!(
                bytes.len() <= max_message,
                "message of {} bytes, limit {max_message}",
                bytes.len()
            );
            self.seen.messages.push((text, bytes.clone()));
            if sip::is_keepalive(&bytes) {
                continue;
            }
            reply.clear();
            let outcome = responder().respond(&bytes, Proto::Ws, peer(), CONTACT, &mut reply);
            assert_eq!(reply.is_empty(), outcome != Outcome::Replied, "{outcome:?}");
            if outcome != Outcome::Replied {
                continue;
            }
            let message = match (text, String::from_utf8(reply.clone())) {
                (true, Ok(s)) => Message::text(s),
                (_, Err(e)) => Message::binary(e.into_bytes()),
                (false, Ok(_)) => Message::binary(reply.clone()),
            };
            let as_text = matches!(message, Message::Text(_));
            match ws.write(message) {
                Ok(()) => self.seen.replies.push((as_text, reply.clone())),
                Err(e) => return Some(End::Closed(format!("write: {e}"))),
            }
        }
        ws.flush().err().map(|e| End::Closed(format!("flush: {e}")))
    }
}

/// Decodes what the server wrote as a client would; returns its text and binary messages.
fn client_view(written: &[u8]) -> Vec<(bool, Vec<u8>)> {
    let wire = Wire {
        input: written.iter().copied().collect(),
        closed: true,
        output: Vec::new(),
    };
    let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let mut client = WebSocket::from_raw_socket(wire, Role::Client, Some(config));
    let mut got = Vec::new();
    for _ in 0..1_000_000 {
        match client.read() {
            Ok(Message::Text(t)) => got.push((true, t.as_str().as_bytes().to_vec())),
            Ok(Message::Binary(b)) => got.push((false, b.to_vec())),
            Ok(_) => {}
            // All read, or the server's close (an echo of the peer's) was the last frame.
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => break,
            Err(e) => panic!("the server wrote what a client cannot decode: {e}"),
        }
    }
    got
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
    let stream: Vec<u8> = if flags & 1 != 0 {
        [UPGRADE, payload].concat()
    } else {
        payload.to_vec()
    };
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let mut whole = Conn::new(max_head);
    whole.receive(&stream, true, peer_closes);

    let mut pieces = Conn::new(max_head);
    let mut at = 0;
    let ends: Vec<usize> = cuts.into_iter().chain([stream.len()]).collect();
    for (i, &cut) in ends.iter().enumerate() {
        pieces.receive(&stream[at..cut], i + 1 == ends.len(), peer_closes);
        at = cut;
    }

    if flags & 1 != 0 {
        assert_eq!(
            whole.seen.accepted.as_ref().map(|a| a.1),
            Some(UPGRADE.len()),
            "the valid upgrade was not accepted"
        );
    }
    if debug() {
        eprintln!("max_head {max_head}, reads end at {ends:?}");
        for (name, c) in [("whole", &whole), ("pieces", &pieces)] {
            eprintln!("{name}: {}", c.seen.summary());
        }
    }
    // Where the bytes were split changes nothing, except why an upgrade is refused: a request
    // over the limit may be refused for its size in pieces and for its syntax in one piece.
    assert_eq!(whole.seen.accepted, pieces.seen.accepted);
    assert_eq!(whole.seen.messages, pieces.seen.messages);
    assert_eq!(whole.seen.replies, pieces.seen.replies);
    match (&whole.seen.end, &pieces.seen.end) {
        (End::Refused(_), End::Refused(_)) => {}
        (a, b) => assert_eq!(a, b, "one piece vs in pieces"),
    }
    for conn in [&whole, &pieces] {
        assert_eq!(
            client_view(&conn.written),
            conn.seen.replies,
            "the client does not get the replies"
        );
    }
});
