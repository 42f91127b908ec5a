//! The stream worker: SIP over TCP, TLS, WebSocket and secure WebSocket connections.
//!
//! The supervisor keeps every stream listener and accepts; it hands each accepted connection to
//! the stream worker with the fewest open connections (`ToWorker::Conn`, one fd), after telling
//! every stream worker what each slot is (`ToWorker::Describe`: proto, bound address, Contact,
//! tag, TLS material). A stream worker never binds, never accepts and never reads a certificate
//! file.
//!
//! One mio (edge-triggered epoll) loop per worker watches the control socket and every
//! connection; nothing blocks and no connection has a thread. Per connection ([`conn`]): TLS
//! ([`link`], rustls), the WebSocket upgrade ([`ws`]) and frames (tungstenite), SIP framing
//! ([`framing`]), the same [`Responder`] as UDP, replies written back in order on the same
//! connection. Deadlines (lifetime, handshake, drain, linger) sit in a lazy heap ([`timers`]).
//!
//! Lifecycle of a slot here: `Describe` adds it or updates it in place (new connections get the
//! new TLS configuration; every connection, old or new, uses the new Contact in later replies);
//! `Remove` drains it: its connections go on until the peer closes or `drain_timeout` passes,
//! are no longer counted in the slot's gauge (the slot may be given to another socket), and a
//! `Conn` for it is refused. A later `Describe` of the same slot is a new socket.
//!
//! Counters (the worker's shm record): `received` SIP messages; `replied` replies queued on their
//! connection; `dropped` messages not answered (ACK, responses, malformed) plus connections
//! closed for a protocol error (bad framing, TLS or WebSocket error, refused upgrade, handshake
//! timeout) or refused (`Conn` for a slot not served); `refused` connections lost because the
//! worker was at its open-file limit when they were handed over (the kernel closes them; the
//! worker keeps every connection it has and goes on); `wakeups` as UDP; `connections` the open
//! connections, which the supervisor reads to choose a worker. Per slot: `received` and the
//! `connections` gauge. Idle, drained and peer-closed connections are not errors.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod conn;
mod framing;
#[doc(hidden)]
pub mod fuzzing;
mod link;
mod timers;
mod tls;
mod ws;

pub use tls::{tls_server_config, TlsConfigError};

use crate::channel::Channel;
use crate::control::{self, Entry, Flow, Received, ServeError};
use crate::handler::{Responder, SocketParts};
use crate::ipc::{FromWorker, SocketInfo, StreamSettings, ToWorker};
use crate::sip::Parsed;
use crate::sys;
use conn::{Conn, Counters, Ctx, Drive, Why};
use link::Link;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustls::ServerConfig;
use shm::{Attached, Proto, WorkerKind};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timers::{Key, Timers};

/// The control socket's token; connection `i` has token `i + 1`.
const CONTROL: Token = Token(0);

/// Control messages handled per wakeup before serving connections again.
const CONTROL_PER_TURN: usize = 64;

/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// Run a stream worker on `control` until `Shutdown` (0), the supervisor closing its end (0), or
/// a control message it cannot take ([`control::EXIT_BAD_CONTROL`]).
///
/// Sends `Hello`, waits for `Setup` (the shm file and the connection limits), then serves. Called
/// by [`crate::serve`] for [`WorkerKind::Stream`]; tests call it on a thread.
pub fn serve(control: Channel, rank: u32) -> Result<u8, ServeError> {
    let mut buf = Vec::new();
    let setup = match control::enter(&control, WorkerKind::Stream, rank, &mut buf)? {
        Entry::Serve(setup) => setup,
        Entry::Exit(code) => return Ok(code),
    };
    let (responder, settings, shm) = (setup.responder, setup.stream, setup.shm);
    let Some(record) = shm.worker(WorkerKind::Stream, rank) else {
        return Err(ServeError::NoRecord {
            kind: WorkerKind::Stream,
            rank,
        });
    };
    // A new process has no connection, whatever the one before it left in the gauge.
    record.reset_connections();
    control.set_nonblocking(true).map_err(ServeError::Control)?;
    let poll = Poll::new().map_err(ServeError::Poll)?;
    poll.registry()
        .register(
            &mut SourceFd(&control.as_fd().as_raw_fd()),
            CONTROL,
            Interest::READABLE,
        )
        .map_err(ServeError::Poll)?;
    let max_head = usize::try_from(settings.max_message_size)
        .unwrap_or(usize::MAX)
        .max(1);
    let mut worker = Worker {
        rank,
        control,
        control_buf: buf,
        control_again: false,
        poll,
        responder,
        parsed: Parsed::new(),
        shm,
        settings,
        max_head,
        ws_config: conn::ws_config(max_head),
        sockets: HashMap::new(),
        by_slot: HashMap::new(),
        next_socket: 0,
        conns: Vec::new(),
        free: Vec::new(),
        next_serial: 0,
        open: 0,
        timers: Timers::default(),
        again: Vec::new(),
        scratch: vec![0; READ_CHUNK],
        reply: Vec::new(),
    };
    let result = worker.run();
    worker.close_all();
    result
}

/// A socket whose connections this worker may be handed (one incarnation of a slot).
#[derive(Debug)]
struct Socket {
    info: SocketInfo,
    /// The reply parts rendered from `info` (its Contact and transport).
    parts: SocketParts,
    /// For `tls` and `wss`.
    tls: Option<Arc<ServerConfig>>,
    /// Removed: its connections drain, it takes no new one.
    removed: bool,
    /// Its open connections here.
    conns: usize,
}

struct Worker {
    rank: u32,
    control: Channel,
    control_buf: Vec<u8>,
    /// The control budget ran out with messages maybe left.
    control_again: bool,
    poll: Poll,
    responder: Responder,
    /// The parse of the message being answered (reused).
    parsed: Parsed,
    shm: Attached,
    settings: StreamSettings,
    max_head: usize,
    ws_config: tungstenite::protocol::WebSocketConfig,
    /// Sockets by incarnation id; removed ones stay while they have connections.
    sockets: HashMap<u64, Socket>,
    /// The served (not removed) incarnation of each slot.
    by_slot: HashMap<u32, u64>,
    next_socket: u64,
    /// Connections by index (token - 1).
    conns: Vec<Option<Conn>>,
    /// Free indexes of `conns`.
    free: Vec<usize>,
    next_serial: u64,
    /// Open connections (what this worker's gauge says).
    open: usize,
    timers: Timers,
    /// Connections whose read budget ran out.
    again: Vec<Key>,
    scratch: Vec<u8>,
    reply: Vec<u8>,
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

impl Worker {
    fn run(&mut self) -> Result<u8, ServeError> {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let timeout = if self.control_again || !self.again.is_empty() {
                Some(Duration::ZERO)
            } else {
                // Rounded up, so a deadline is never polled for just before it is due.
                self.timers
                    .wait(now)
                    .map(|d| d.saturating_add(Duration::from_millis(1)))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServeError::Poll(e)),
            }
            if !events.is_empty() {
                if let Some(record) = self.shm.worker(WorkerKind::Stream, self.rank) {
                    record.add_wakeups(1);
                }
            }
            let mut control = std::mem::take(&mut self.control_again);
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    CONTROL => control = true,
                    Token(token) => {
                        if let Some(index) = token.checked_sub(1) {
                            if let Some(serial) = self.serial_at(index) {
                                self.drive(Key { index, serial }, now);
                            }
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.again) {
                if self.serial_at(key.index) == Some(key.serial) {
                    self.drive(key, now);
                }
            }
            if control {
                if let Flow::Exit(code) = self.control_messages(now)? {
                    return Ok(code);
                }
            }
            self.expire(Instant::now());
        }
    }

    fn serial_at(&self, index: usize) -> Option<u64> {
        self.conns.get(index)?.as_ref().map(|c| c.serial)
    }

    /// Make progress on one connection.
    fn drive(&mut self, key: Key, now: Instant) {
        let Worker {
            conns,
            sockets,
            responder,
            parsed,
            scratch,
            reply,
            rank,
            settings,
            max_head,
            ws_config,
            shm,
            timers,
            again,
            ..
        } = self;
        let Some(conn) = conns.get_mut(key.index).and_then(Option::as_mut) else {
            return;
        };
        let parts = sockets.get(&conn.socket).map(|s| &s.parts);
        let before = conn.deadline();
        let mut ctx = Ctx {
            responder,
            parsed,
            parts,
            scratch,
            reply,
            counters: Counters {
                record: shm.worker(WorkerKind::Stream, *rank),
                shm,
                slot: conn.slot_counted.then_some(conn.slot),
            },
            now,
            lifetime: millis(settings.connection_lifetime_ms),
            max_head: *max_head,
            ws_config: *ws_config,
        };
        let verdict = conn.drive(&mut ctx);
        // A deadline that moved earlier needs its own heap entry (later ones are found lazily).
        let after = conn.deadline();
        if after < before {
            timers.push(after, key);
        }
        match verdict {
            Drive::Wait => {}
            Drive::More => again.push(key),
            Drive::Close(why) => self.close(key.index, why),
        }
    }

    /// Close the connections whose deadline passed.
    fn expire(&mut self, now: Instant) {
        while let Some((_, key)) = self.timers.pop_due(now) {
            let Some(conn) = self
                .conns
                .get(key.index)
                .and_then(Option::as_ref)
                .filter(|c| c.serial == key.serial)
            else {
                continue;
            };
            match conn.expired(now) {
                Some(why) => self.close(key.index, why),
                None => {
                    let at = conn.deadline();
                    self.timers.push(at, key);
                }
            }
        }
    }

    /// Close connection `index` and update every count it was part of.
    fn close(&mut self, index: usize, why: Why) {
        let Some(mut conn) = self.conns.get_mut(index).and_then(Option::take) else {
            return;
        };
        self.free.push(index);
        log::debug!(
            "stream worker {}: {} connection from {} on slot {}: {why}",
            self.rank,
            conn.proto,
            conn.peer,
            conn.slot
        );
        if why.counted() {
            self.count_dropped();
        }
        conn.say_goodbye();
        if let Some(sock) = conn.socket_mut() {
            let _ = self.poll.registry().deregister(sock);
        }
        self.open = self.open.saturating_sub(1);
        if let Some(record) = self.shm.worker(WorkerKind::Stream, self.rank) {
            record.add_connections(-1);
        }
        if conn.slot_counted {
            self.shm.add_slot_connections(self.rank, conn.slot, -1);
        }
        if let Some(socket) = self.sockets.get_mut(&conn.socket) {
            socket.conns = socket.conns.saturating_sub(1);
            if socket.removed && socket.conns == 0 {
                self.sockets.remove(&conn.socket);
            }
        }
        // Dropping `conn` closes the fd.
    }

    /// On exit: close every connection, so the gauges say what is left (nothing).
    fn close_all(&mut self) {
        for index in 0..self.conns.len() {
            self.close(index, Why::Shutdown);
        }
    }

    fn count_dropped(&self) {
        if let Some(record) = self.shm.worker(WorkerKind::Stream, self.rank) {
            record.add_dropped(1);
        }
    }

    /// Handle the control messages waiting (the socket is non-blocking).
    fn control_messages(&mut self, now: Instant) -> Result<Flow, ServeError> {
        for _ in 0..CONTROL_PER_TURN {
            let received = control::receive(
                &self.control,
                &mut self.control_buf,
                WorkerKind::Stream,
                self.rank,
            )?;
            let (msg, fds) = match received {
                Received::Message(msg, fds) => (msg, fds),
                Received::Empty => return Ok(Flow::Continue),
                Received::Exit(code) => return Ok(Flow::Exit(code)),
            };
            if let Flow::Exit(code) = self.control_message(msg, fds, now)? {
                return Ok(Flow::Exit(code));
            }
        }
        self.control_again = true;
        Ok(Flow::Continue)
    }

    fn control_message(
        &mut self,
        msg: ToWorker,
        fds: Vec<OwnedFd>,
        now: Instant,
    ) -> Result<Flow, ServeError> {
        let rank = self.rank;
        let reply = match msg {
            // Refused by `control::receive`.
            ToWorker::Setup { .. } | ToWorker::Add { .. } | ToWorker::Update { .. } => {
                return Ok(Flow::Exit(control::EXIT_BAD_CONTROL))
            }
            ToWorker::Describe {
                generation,
                sockets,
            } => {
                for info in sockets {
                    let slot = info.slot;
                    if let Err(reason) = self.describe(info, now) {
                        log::warn!("stream worker {rank}: refused slot {slot}: {reason}");
                        let refused = FromWorker::Refused {
                            generation,
                            slot,
                            reason,
                        };
                        if let Flow::Exit(code) = control::tell(&self.control, &refused)? {
                            return Ok(Flow::Exit(code));
                        }
                    }
                }
                None
            }
            ToWorker::Conn { slot, peer } => {
                if fds.is_empty() {
                    // Lost to the open-file limit (`control::receive` let it through for that
                    // only): the kernel closed the connection; count it refused, keep serving.
                    self.refuse_lost(slot, peer);
                }
                for fd in fds {
                    self.adopt(slot, peer, fd, now);
                }
                None
            }
            ToWorker::Remove { slots, .. } => {
                for slot in slots {
                    self.remove_slot(slot, now);
                }
                None
            }
            ToWorker::Commit { generation } => Some(FromWorker::Ack {
                generation,
                serving: u32::try_from(self.by_slot.len()).unwrap_or(u32::MAX),
            }),
            ToWorker::Shutdown => {
                log::debug!("stream worker {rank}: shutdown");
                return Ok(Flow::Exit(0));
            }
        };
        match reply {
            Some(reply) => control::tell(&self.control, &reply),
            None => Ok(Flow::Continue),
        }
    }

    /// Add or update a slot from a `Describe` entry; `Err` is the reason it is refused (the slot
    /// then stays as it was).
    fn describe(&mut self, info: SocketInfo, now: Instant) -> Result<(), String> {
        if info.proto.is_datagram() {
            return Err(format!(
                "a stream worker does not serve {} sockets",
                info.proto
            ));
        }
        let current = self
            .by_slot
            .get(&info.slot)
            .and_then(|id| self.sockets.get(id));
        let same_socket =
            current.is_some_and(|s| s.info.proto == info.proto && s.info.local == info.local);
        let tls = match info.proto {
            Proto::Tls | Proto::Wss => {
                let Some(material) = &info.tls else {
                    return Err(format!("a {} socket without TLS material", info.proto));
                };
                match current.filter(|s| same_socket && s.info.tls.as_ref() == Some(material)) {
                    // Unchanged: keep the configuration (and its TLS session cache).
                    Some(s) => s.tls.clone(),
                    None => Some(tls_server_config(material).map_err(|e| e.to_string())?),
                }
            }
            Proto::Udp | Proto::Tcp | Proto::Ws => None,
        };
        if !same_socket {
            // Another socket in this slot: what was there drains.
            self.remove_slot(info.slot, now);
        }
        match self.by_slot.get(&info.slot).copied() {
            Some(id) => {
                if let Some(s) = self.sockets.get_mut(&id) {
                    log::debug!(
                        "stream worker {}: slot {} updated in place",
                        self.rank,
                        info.slot
                    );
                    s.parts = SocketParts::new(&info.contact, info.proto);
                    s.info = info;
                    s.tls = tls;
                }
            }
            None => {
                let id = self.next_socket;
                self.next_socket += 1;
                log::debug!(
                    "stream worker {}: slot {} is {}:{}",
                    self.rank,
                    info.slot,
                    info.proto,
                    info.local
                );
                self.by_slot.insert(info.slot, id);
                self.sockets.insert(
                    id,
                    Socket {
                        parts: SocketParts::new(&info.contact, info.proto),
                        info,
                        tls,
                        removed: false,
                        conns: 0,
                    },
                );
            }
        }
        Ok(())
    }

    /// Drain a slot: no new connection; the open ones close when the peer does or at
    /// `drain_timeout`, and leave the slot's gauge now.
    fn remove_slot(&mut self, slot: u32, now: Instant) {
        let Some(id) = self.by_slot.remove(&slot) else {
            return;
        };
        let Some(socket) = self.sockets.get_mut(&id) else {
            return;
        };
        socket.removed = true;
        if socket.conns == 0 {
            self.sockets.remove(&id);
            return;
        }
        let drain_at = now + millis(self.settings.drain_timeout_ms);
        let mut uncounted = 0i64;
        for (index, conn) in self.conns.iter_mut().enumerate() {
            let Some(conn) = conn.as_mut().filter(|c| c.socket == id) else {
                continue;
            };
            conn.drain_at = Some(drain_at);
            if conn.slot_counted {
                conn.slot_counted = false;
                uncounted += 1;
            }
            self.timers.push(
                conn.deadline(),
                Key {
                    index,
                    serial: conn.serial,
                },
            );
        }
        self.shm.add_slot_connections(self.rank, slot, -uncounted);
        log::debug!(
            "stream worker {}: slot {slot} removed, {uncounted} connections drain",
            self.rank
        );
    }

    /// A connection handed over while this worker was at its open-file limit: the kernel could
    /// not give it the fd and closed it. It is counted refused (the worker's `refused` counter)
    /// and the supervisor's count of the hand-off is undone; every open connection goes on.
    fn refuse_lost(&mut self, slot: u32, peer: SocketAddr) {
        log::warn!(
            "stream worker {}: connection from {peer} on slot {slot} refused: the open-file limit \
             is reached ({} connections open)",
            self.rank,
            self.open
        );
        if let Some(record) = self.shm.worker(WorkerKind::Stream, self.rank) {
            record.add_refused(1);
            record.add_connections(-1);
        }
    }

    /// Take an accepted connection of `slot`, or refuse it (its fd is closed).
    fn adopt(&mut self, slot: u32, peer: SocketAddr, fd: OwnedFd, now: Instant) {
        if let Err(reason) = self.try_adopt(slot, peer, fd, now) {
            log::debug!(
                "stream worker {}: connection from {peer} on slot {slot} refused: {reason}",
                self.rank
            );
            self.count_dropped();
            // Undo the supervisor's count of the hand-off.
            if let Some(record) = self.shm.worker(WorkerKind::Stream, self.rank) {
                record.add_connections(-1);
            }
        }
    }

    fn try_adopt(
        &mut self,
        slot: u32,
        peer: SocketAddr,
        fd: OwnedFd,
        now: Instant,
    ) -> Result<(), String> {
        let id = *self
            .by_slot
            .get(&slot)
            .ok_or("the slot is not served (removed, or never described)")?;
        let socket = self.sockets.get(&id).ok_or("the slot has no socket")?;
        match sys::socket_type(fd.as_fd()) {
            Ok(nix::sys::socket::SockType::Stream) => {}
            Ok(other) => return Err(format!("not a stream socket ({other:?})")),
            Err(e) => return Err(format!("not a socket: {e}")),
        }
        let stream = std::net::TcpStream::from(fd);
        let local = stream
            .local_addr()
            .map_err(|e| format!("getsockname: {e}"))?;
        let want = socket.info.local;
        if local.port() != want.port()
            || !(want.ip().is_unspecified() || want.ip() == local.ip().to_canonical())
        {
            return Err(format!("accepted on {local}, not on {want}"));
        }
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("O_NONBLOCK: {e}"))?;
        // Replies are small and answer a request: send them now, not after Nagle's delay.
        let _ = stream.set_nodelay(true);
        let sock = mio::net::TcpStream::from_std(stream);
        let proto = socket.info.proto;
        let link = match (&socket.tls, proto) {
            (Some(config), Proto::Tls | Proto::Wss) => Link::tls(
                rustls::ServerConnection::new(config.clone()).map_err(|e| format!("tls: {e}"))?,
                sock,
            ),
            (None, Proto::Tcp | Proto::Ws) => Link::Plain(sock),
            _ => return Err(format!("a {proto} socket without its TLS configuration")),
        };
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let serial = self.next_serial;
        self.next_serial += 1;
        let mut conn = Conn::new(
            serial,
            id,
            slot,
            peer,
            proto,
            link,
            now,
            millis(self.settings.connection_lifetime_ms),
            millis(self.settings.handshake_timeout_ms),
            self.max_head,
        );
        let registered = match conn.socket_mut() {
            // Registering a socket that already has bytes reports it readable at once.
            Some(sock) => self.poll.registry().register(
                sock,
                Token(index + 1),
                Interest::READABLE | Interest::WRITABLE,
            ),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        if let Err(e) = registered {
            self.free.push(index);
            return Err(format!("epoll: {e}"));
        }
        self.timers.push(conn.deadline(), Key { index, serial });
        if let Some(slot_entry) = self.conns.get_mut(index) {
            *slot_entry = Some(conn);
        }
        if let Some(s) = self.sockets.get_mut(&id) {
            s.conns += 1;
        }
        self.open += 1;
        // The worker gauge was raised by the supervisor when it handed the connection over (so
        // its next choice already sees it); the worker lowers it when the connection ends.
        self.shm.add_slot_connections(self.rank, slot, 1);
        log::debug!(
            "stream worker {}: {proto} connection from {peer} on slot {slot} ({} open)",
            self.rank,
            self.open
        );
        Ok(())
    }
}
