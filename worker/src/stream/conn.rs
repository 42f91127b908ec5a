//! One connection of a stream worker: its stage (SIP framing, WebSocket upgrade, WebSocket), its
//! pending output and its deadlines.
//!
//! [`Conn::drive`] does whatever can be done without blocking: write what is pending, read what
//! is there (within a budget), answer each message with the worker's [`Responder`] and queue the
//! replies in order. It never waits: the event loop calls it again on the next readiness edge, or
//! at once when it says [`Drive::More`]. Reading stops while the peer does not take its replies
//! (more than [`HIGH_WATER`] bytes pending), so a client that never reads cannot grow our memory;
//! the next writable edge resumes it.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use super::framing::{Deframer, Item};
use super::link::Link;
use super::ws::{self, Upgrade};
use crate::handler::{Outcome, Responder, SocketParts};
use crate::sip::{self, Parsed};
use mio::net::TcpStream;
use shm::{Attached, Proto, WorkerRecord};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// Reads per call of [`Conn::drive`] before letting other connections run.
pub(crate) const READS_PER_TURN: usize = 16;

/// Reading stops while more reply bytes than this wait for the peer.
pub(crate) const HIGH_WATER: usize = 256 * 1024;

/// How long an HTTP error response to a refused WebSocket upgrade may take to leave.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// What the caller should do next with a connection.
#[derive(Debug)]
pub(crate) enum Drive {
    /// Nothing until the next readiness event or deadline.
    Wait,
    /// The read budget ran out with bytes maybe left: call again soon.
    More,
    /// Close it.
    Close(Why),
}

/// Why a connection is closed.
#[derive(Debug)]
pub(crate) enum Why {
    /// The peer closed (or reset) it.
    PeerClosed,
    /// A socket error.
    Io(io::Error),
    /// The peer broke the protocol (framing, TLS, WebSocket): counted as dropped.
    Protocol(String),
    /// A refused WebSocket upgrade, its error response sent (counted when refused).
    Refused,
    /// No complete message for `connection_lifetime`.
    Lifetime,
    /// Its socket was removed and `drain_timeout` passed.
    Drained,
    /// The TLS handshake or WebSocket upgrade did not finish in time: counted as dropped.
    HandshakeTimeout,
    /// The worker stops.
    Shutdown,
}

impl Why {
    /// Counted in the worker's `dropped`.
    pub(crate) fn counted(&self) -> bool {
        matches!(self, Why::Protocol(_) | Why::HandshakeTimeout)
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::PeerClosed => f.write_str("closed by the peer"),
            Why::Io(e) => write!(f, "socket error: {e}"),
            Why::Protocol(e) => write!(f, "protocol error: {e}"),
            Why::Refused => f.write_str("websocket upgrade refused"),
            Why::Lifetime => f.write_str("idle for connection_lifetime"),
            Why::Drained => f.write_str("drain_timeout passed after its socket was removed"),
            Why::HandshakeTimeout => f.write_str("handshake not finished within handshake_timeout"),
            Why::Shutdown => f.write_str("worker shutdown"),
        }
    }
}

/// The shared-table counters a connection moves, added as things happen (a reply is counted
/// before it is written, so whoever sees it sees the count).
pub(crate) struct Counters<'a> {
    /// The worker's record.
    pub record: Option<&'a WorkerRecord>,
    pub shm: &'a Attached,
    /// The connection's slot, while the connection is counted there (not once draining).
    pub slot: Option<u32>,
}

impl Counters<'_> {
    fn received(&self) {
        if let Some(r) = self.record {
            r.add_received(1);
        }
        if let Some(slot) = self.slot {
            self.shm.add_slot_received(slot, 1);
        }
    }

    fn replied(&self) {
        if let Some(r) = self.record {
            r.add_replied(1);
        }
    }

    /// A message not answered, or a connection closed for an error or refused.
    pub(crate) fn dropped(&self) {
        if let Some(r) = self.record {
            r.add_dropped(1);
        }
    }
}

/// What a drive needs from the worker.
pub(crate) struct Ctx<'a> {
    pub responder: &'a Responder,
    /// The parse of the message being answered, shared by all connections.
    pub parsed: &'a mut Parsed,
    /// The reply parts of the connection's socket (its current advertised address).
    pub parts: Option<&'a SocketParts>,
    /// Read buffer shared by all connections.
    pub scratch: &'a mut [u8],
    /// Reply buffer shared by all connections.
    pub reply: &'a mut Vec<u8>,
    pub counters: Counters<'a>,
    pub now: Instant,
    pub lifetime: Duration,
    /// Largest header section (and HTTP upgrade request).
    pub max_head: usize,
    pub ws_config: WebSocketConfig,
}

/// Bytes waiting for the link.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    buf: Vec<u8>,
    at: usize,
}

impl Outbox {
    fn push(&mut self, bytes: &[u8]) {
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Write as much as the link takes; true when nothing is left here nor in TLS.
    fn write_to(&mut self, link: &mut Link) -> io::Result<bool> {
        while let Some(rest) = self.buf.get(self.at..).filter(|r| !r.is_empty()) {
            match link.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        self.at = 0;
        link.flush_tls()
    }
}

/// Where a connection is in its life.
enum Stage {
    /// SIP over TCP or TLS (RFC 3261 §18.3 framing).
    Sip {
        link: Link,
        input: Deframer,
        out: Outbox,
    },
    /// `ws` / `wss` before the HTTP upgrade is done.
    Upgrade {
        link: Link,
        request: Vec<u8>,
        out: Outbox,
        /// Once decided: accepted (the request's length) or refused.
        verdict: Option<Result<usize, ()>>,
    },
    /// SIP over WebSocket: one SIP message per WebSocket message.
    Ws {
        ws: Box<WebSocket<Link>>,
        /// tungstenite holds frames the socket did not take.
        flush_pending: bool,
    },
    /// Only while changing stage.
    Gone,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Sip { .. } => "Sip",
            Stage::Upgrade { .. } => "Upgrade",
            Stage::Ws { .. } => "Ws",
            Stage::Gone => "Gone",
        })
    }
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Tells this connection from an earlier one at the same index.
    pub serial: u64,
    /// The socket (incarnation of a slot) it was accepted on.
    pub socket: u64,
    /// That socket's slot.
    pub slot: u32,
    /// Still counted in the slot's connection gauge (not once its socket was removed).
    pub slot_counted: bool,
    pub peer: SocketAddr,
    pub proto: Proto,
    stage: Stage,
    /// Closed at this time unless a message comes first.
    lifetime_at: Instant,
    /// Closed at this time unless the TLS handshake / WebSocket upgrade finishes first.
    handshake_at: Option<Instant>,
    /// Closed at this time: its socket was removed.
    pub drain_at: Option<Instant>,
    /// Closed at this time: a refused upgrade's response had this long to leave.
    linger_at: Option<Instant>,
}

impl Conn {
    /// A connection accepted on a `proto` socket; `link` is TLS for `tls` and `wss`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        serial: u64,
        socket: u64,
        slot: u32,
        peer: SocketAddr,
        proto: Proto,
        link: Link,
        now: Instant,
        lifetime: Duration,
        handshake_timeout: Duration,
        max_head: usize,
    ) -> Conn {
        let stage = match proto {
            Proto::Ws | Proto::Wss => Stage::Upgrade {
                link,
                request: Vec::new(),
                out: Outbox::default(),
                verdict: None,
            },
            Proto::Udp | Proto::Tcp | Proto::Tls => Stage::Sip {
                link,
                input: Deframer::new(max_head, sip::MAX_FRAME_LEN),
                out: Outbox::default(),
            },
        };
        Conn {
            serial,
            socket,
            slot,
            slot_counted: true,
            peer,
            proto,
            stage,
            lifetime_at: now + lifetime,
            handshake_at: (proto != Proto::Tcp).then(|| now + handshake_timeout),
            drain_at: None,
            linger_at: None,
        }
    }

    /// The earliest of its deadlines.
    pub(crate) fn deadline(&self) -> Instant {
        [self.handshake_at, self.drain_at, self.linger_at]
            .into_iter()
            .flatten()
            .fold(self.lifetime_at, Instant::min)
    }

    /// Why it must be closed at `now`, if a deadline passed.
    pub(crate) fn expired(&self, now: Instant) -> Option<Why> {
        let passed = |at: Option<Instant>| at.is_some_and(|at| at <= now);
        if passed(self.handshake_at) {
            Some(Why::HandshakeTimeout)
        } else if passed(self.linger_at) {
            Some(Why::Refused)
        } else if passed(self.drain_at) {
            Some(Why::Drained)
        } else if self.lifetime_at <= now {
            Some(Why::Lifetime)
        } else {
            None
        }
    }

    /// Its TCP socket, to (de)register it.
    pub(crate) fn socket_mut(&mut self) -> Option<&mut TcpStream> {
        match &mut self.stage {
            Stage::Sip { link, .. } | Stage::Upgrade { link, .. } => Some(link.socket_mut()),
            Stage::Ws { ws, .. } => Some(ws.get_mut().socket_mut()),
            Stage::Gone => None,
        }
    }

    /// Before dropping: a WebSocket close frame and a TLS close_notify where they apply, sent if
    /// the socket takes them now.
    pub(crate) fn say_goodbye(&mut self) {
        match &mut self.stage {
            Stage::Sip { link, .. } | Stage::Upgrade { link, .. } => link.say_goodbye(),
            Stage::Ws { ws, .. } => {
                if ws.can_write() {
                    let _ = ws.close(None);
                }
                ws.get_mut().say_goodbye();
            }
            Stage::Gone => {}
        }
    }

    /// Make progress without blocking.
    pub(crate) fn drive(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        match self.stage {
            Stage::Sip { .. } => self.drive_sip(ctx),
            Stage::Upgrade { .. } => match self.drive_upgrade(ctx) {
                // Upgraded: go on with the frames that may already be there.
                None => self.drive_ws(ctx),
                Some(next) => next,
            },
            Stage::Ws { .. } => self.drive_ws(ctx),
            Stage::Gone => Drive::Close(Why::Protocol("connection in no stage".into())),
        }
    }

    fn drive_sip(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        let Stage::Sip { link, input, out } = &mut self.stage else {
            return Drive::Wait;
        };
        let mut verdict = Drive::More;
        for _ in 0..READS_PER_TURN {
            match out.write_to(link) {
                Ok(_) => {}
                Err(e) => return Drive::Close(io_why(e)),
            }
            if out.pending() > HIGH_WATER {
                // Resumed by the writable edge that follows the peer reading.
                verdict = Drive::Wait;
                break;
            }
            let n = match link.read(ctx.scratch) {
                Ok(0) => return Drive::Close(Why::PeerClosed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    verdict = Drive::Wait;
                    break;
                }
                Err(e) => return Drive::Close(io_why(e)),
            };
            input.extend(ctx.scratch.get(..n).unwrap_or_default());
            loop {
                match input.next(ctx.parsed) {
                    Ok(None) => break,
                    Ok(Some(Item::Ping)) => {
                        self.lifetime_at = ctx.now + ctx.lifetime;
                        out.push(b"\r\n");
                    }
                    Ok(Some(Item::Message(msg))) => {
                        self.lifetime_at = ctx.now + ctx.lifetime;
                        if answer(ctx, msg, Parse::Done, self.proto, self.peer) {
                            out.push(ctx.reply);
                        }
                    }
                    Err(e) => return Drive::Close(Why::Protocol(e.to_string())),
                }
            }
        }
        if self.handshake_at.is_some() && !link.handshaking() {
            self.handshake_at = None;
        }
        if let Err(e) = out.write_to(link) {
            return Drive::Close(io_why(e));
        }
        verdict
    }

    /// `None` once upgraded (the stage is then `Ws`).
    fn drive_upgrade(&mut self, ctx: &mut Ctx<'_>) -> Option<Drive> {
        let Stage::Upgrade {
            link,
            request,
            out,
            verdict,
        } = &mut self.stage
        else {
            return Some(Drive::Wait);
        };
        let mut reads = 0;
        let consumed = loop {
            let flushed = match out.write_to(link) {
                Ok(flushed) => flushed,
                Err(e) => return Some(Drive::Close(io_why(e))),
            };
            match verdict {
                Some(Ok(consumed)) if flushed => break *consumed,
                Some(Err(())) if flushed => return Some(Drive::Close(Why::Refused)),
                // The response is still leaving: the writable edge comes back here.
                Some(_) => return Some(Drive::Wait),
                None => {}
            }
            if reads == READS_PER_TURN {
                return Some(Drive::More);
            }
            reads += 1;
            let n = match link.read(ctx.scratch) {
                Ok(0) => return Some(Drive::Close(Why::PeerClosed)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(Drive::Wait),
                Err(e) => return Some(Drive::Close(io_why(e))),
            };
            request.extend_from_slice(ctx.scratch.get(..n).unwrap_or_default());
            match ws::upgrade(request, ctx.max_head) {
                Upgrade::Incomplete => {}
                Upgrade::Accept { response, consumed } => {
                    out.push(&response);
                    *verdict = Some(Ok(consumed));
                }
                Upgrade::Refuse { response, why } => {
                    log::debug!("websocket upgrade from {} refused: {why}", self.peer);
                    ctx.counters.dropped();
                    out.push(&response);
                    *verdict = Some(Err(()));
                    self.linger_at = Some(ctx.now + LINGER);
                }
            }
        };
        let Stage::Upgrade { link, request, .. } = std::mem::replace(&mut self.stage, Stage::Gone)
        else {
            return Some(Drive::Close(Why::Protocol("lost the upgrade stage".into())));
        };
        let rest = request.get(consumed..).unwrap_or_default().to_vec();
        self.handshake_at = None;
        self.lifetime_at = ctx.now + ctx.lifetime;
        self.stage = Stage::Ws {
            ws: Box::new(WebSocket::from_partially_read(
                link,
                rest,
                Role::Server,
                Some(ctx.ws_config),
            )),
            flush_pending: false,
        };
        None
    }

    fn drive_ws(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        let Stage::Ws { ws, flush_pending } = &mut self.stage else {
            return Drive::Wait;
        };
        if *flush_pending {
            match ws.flush() {
                Ok(()) => *flush_pending = false,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Drive::Wait
                }
                Err(e) => return Drive::Close(ws_why(e)),
            }
        }
        let mut verdict = Drive::More;
        for _ in 0..READS_PER_TURN {
            let (bytes, text) = match ws.read() {
                Ok(Message::Text(t)) => (t.as_str().as_bytes().to_vec(), true),
                Ok(Message::Binary(b)) => (b.to_vec(), false),
                Ok(Message::Ping(_)) => {
                    // tungstenite queued the pong; it leaves with the next flush.
                    self.lifetime_at = ctx.now + ctx.lifetime;
                    continue;
                }
                // A Close is answered by tungstenite; the next read says the connection closed.
                Ok(Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => continue,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    verdict = Drive::Wait;
                    break;
                }
                Err(e) => return Drive::Close(ws_why(e)),
            };
            self.lifetime_at = ctx.now + ctx.lifetime;
            if sip::is_keepalive(&bytes) {
                continue;
            }
            if !answer(ctx, &bytes, Parse::Needed, self.proto, self.peer) {
                continue;
            }
            let reply = if text {
                match String::from_utf8(ctx.reply.clone()) {
                    Ok(s) => Message::text(s),
                    Err(e) => Message::binary(e.into_bytes()),
                }
            } else {
                Message::binary(ctx.reply.clone())
            };
            match ws.write(reply) {
                Ok(()) => {}
                // The frame is kept in tungstenite's buffer.
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    *flush_pending = true;
                    // Stop reading until the peer takes what it was sent.
                    verdict = Drive::Wait;
                    break;
                }
                Err(e) => return Drive::Close(ws_why(e)),
            }
        }
        match ws.flush() {
            Ok(()) => *flush_pending = false,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                *flush_pending = true;
                verdict = Drive::Wait;
            }
            Err(e) => return Drive::Close(ws_why(e)),
        }
        verdict
    }
}

/// Whether a message's parse is already in `Ctx::parsed`.
enum Parse {
    /// The deframer left it there.
    Done,
    Needed,
}

/// Count one received message and put its reply (if any) in `ctx.reply`: true when replied.
fn answer(ctx: &mut Ctx<'_>, msg: &[u8], parse: Parse, proto: Proto, peer: SocketAddr) -> bool {
    ctx.counters.received();
    let fallback;
    let parts = match ctx.parts {
        Some(parts) => parts,
        // A connection outlives no socket of its worker; should it, its replies name no address.
        None => {
            fallback = SocketParts::new("", proto);
            &fallback
        }
    };
    let framed = match parse {
        Parse::Done => ctx.parsed.message(msg),
        Parse::Needed => None,
    };
    let outcome = match framed {
        Some(message) => ctx.responder.reply(&message, peer, parts, ctx.reply),
        None => ctx
            .responder
            .answer(ctx.parsed, msg, peer, parts, ctx.reply),
    };
    match outcome {
        Outcome::Replied => {
            ctx.counters.replied();
            true
        }
        Outcome::Ignored | Outcome::Malformed => {
            ctx.counters.dropped();
            false
        }
    }
}

/// A link error: the peer going away is not an error of ours; TLS refusing the peer is.
fn io_why(e: io::Error) -> Why {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Why::PeerClosed,
        // What `Link` makes of a rustls error (bad handshake, bad record, certificate refused).
        io::ErrorKind::InvalidData => Why::Protocol(format!("tls: {e}")),
        _ => Why::Io(e),
    }
}

fn ws_why(e: tungstenite::Error) -> Why {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Why::PeerClosed
        }
        tungstenite::Error::Io(e) => io_why(e),
        e => Why::Protocol(format!("websocket: {e}")),
    }
}

/// The WebSocket settings of a worker: a message holds one SIP message, so at most a header
/// section and a body; small eager buffers, since a worker holds thousands of connections.
pub(crate) fn ws_config(max_head: usize) -> WebSocketConfig {
    let max_message = max_head.saturating_add(sip::MAX_FRAME_LEN);
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(HIGH_WATER.max(max_message) * 2)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}
