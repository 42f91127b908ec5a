//! Entry points for the fuzz targets of `fuzz/` (not an API): the real connection code and the
//! real framing of a stream worker, reachable from outside the crate with nothing copied.
//!
//! [`Connection`] is a [`Conn`] of a `tcp` or `ws` socket over a connected stream socket, driven
//! exactly as the worker's event loop drives it (same [`Ctx`], same WebSocket settings);
//! [`Deframer`] is the input side every SIP-over-stream connection uses.

use super::conn::{self, Conn, Counters, Ctx, Drive};
use super::framing;
use super::link::Link;
use crate::handler::{Responder, SocketParts};
use crate::sip::{ParseError, Parsed};
use shm::{Attached, Proto, WorkerKind};
use std::time::{Duration, Instant};

pub use super::framing::Item;

/// What one drive came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driven {
    /// Nothing to do until the socket is ready again.
    Wait,
    /// The read budget ran out: drive again.
    More,
    /// The worker closes the connection: why, and whether it counts as dropped.
    Closed {
        /// The reason, as the worker logs it.
        why: String,
        /// Counted in the worker's `dropped`.
        counted: bool,
    },
}

/// One connection as a stream worker (rank 0, slot 0 of the table given to [`Connection::drive`])
/// holds it.
pub struct Connection {
    conn: Conn,
    responder: Responder,
    parts: SocketParts,
    parsed: Parsed,
    max_head: usize,
    scratch: Vec<u8>,
    reply: Vec<u8>,
}

impl Connection {
    /// A connection from `peer` accepted on a `proto` socket (`tcp` or `ws`: no TLS) with the
    /// worker's `max_message_size` of `max_head`; `stream` is made non-blocking. `contact` is the
    /// socket's advertised `host:port`. `stream` may be any connected stream socket: a fuzz
    /// target uses one end of a Unix socket pair, which delivers each write before it returns.
    pub fn new(
        proto: Proto,
        stream: std::net::TcpStream,
        peer: std::net::SocketAddr,
        max_head: usize,
        responder: Responder,
        contact: &str,
    ) -> std::io::Result<Connection> {
        if !matches!(proto, Proto::Tcp | Proto::Ws) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a {proto} connection needs TLS"),
            ));
        }
        stream.set_nonblocking(true)?;
        let link = Link::Plain(mio::net::TcpStream::from_std(stream));
        let max_head = max_head.max(1);
        let forever = Duration::from_secs(86_400);
        Ok(Connection {
            conn: Conn::new(
                0,
                0,
                0,
                peer,
                proto,
                link,
                Instant::now(),
                forever,
                forever,
                max_head,
            ),
            responder,
            parts: SocketParts::new(contact, proto),
            parsed: Parsed::new(),
            max_head,
            scratch: vec![0; super::READ_CHUNK],
            reply: Vec::new(),
        })
    }

    /// One turn of the worker's event loop on this connection (`Conn::drive`).
    pub fn drive(&mut self, shm: &Attached) -> Driven {
        let mut ctx = Ctx {
            responder: &self.responder,
            parsed: &mut self.parsed,
            parts: Some(&self.parts),
            scratch: &mut self.scratch,
            reply: &mut self.reply,
            counters: Counters {
                record: shm.worker(WorkerKind::Stream, 0),
                shm,
                slot: Some(0),
            },
            now: Instant::now(),
            lifetime: Duration::from_secs(86_400),
            max_head: self.max_head,
            ws_config: conn::ws_config(self.max_head),
        };
        match self.conn.drive(&mut ctx) {
            Drive::Wait => Driven::Wait,
            Drive::More => Driven::More,
            Drive::Close(why) => Driven::Closed {
                counted: why.counted(),
                why: why.to_string(),
            },
        }
    }
}

impl Connection {
    /// What the worker does before dropping a connection it closes: a WebSocket close frame
    /// where it applies, sent if the socket takes it now.
    pub fn say_goodbye(&mut self) {
        self.conn.say_goodbye();
    }
}

/// The input side of a SIP-over-stream connection (the worker's own `Deframer`), with the parse
/// scratch a worker shares between its connections.
pub struct Deframer(framing::Deframer, Parsed);

impl Deframer {
    /// A header section may be `max_head` bytes, a body `max_body`.
    pub fn new(max_head: usize, max_body: usize) -> Deframer {
        Deframer(framing::Deframer::new(max_head, max_body), Parsed::new())
    }

    /// Append bytes just read.
    pub fn extend(&mut self, data: &[u8]) {
        self.0.extend(data);
    }

    /// The next ping or message, `Ok(None)` when more bytes are needed, `Err` when the stream
    /// cannot be framed.
    // The worker's own name for it; an item borrows the buffer, so this cannot be an Iterator.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Item<'_>>, ParseError> {
        self.0.next(&mut self.1)
    }

    /// The parse of the message last handed out by [`Deframer::next`].
    pub fn parsed(&self) -> &Parsed {
        &self.1
    }

    /// Bytes held that are not yet part of a message handed out.
    pub fn buffered(&self) -> usize {
        self.0.buffered()
    }
}
