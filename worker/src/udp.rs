//! The UDP worker's serving loop.
//!
//! One epoll instance per worker watches the control socket and every UDP socket of the set. The
//! UDP fds are shared by the whole pool (the supervisor binds each once and passes a copy to every
//! worker) and each worker registers its copy with `EPOLLEXCLUSIVE`, level-triggered: a datagram
//! wakes one worker that sits in `epoll_wait`, and a worker that is busy or stopped is not there,
//! so it neither takes the wakeup nor holds the datagram up. Whatever a woken worker leaves in
//! the socket (its per-wakeup budget spent) keeps the socket ready for the next idle one.
//!
//! On a ready socket: `recvmmsg` a batch without blocking, answer each datagram with
//! [`Responder`], `sendmmsg` the replies from the same socket, add the batch to the counters in
//! the shared table, and go on until the socket is drained or the budget is spent.
//!
//! Counters (in the worker's shm record, added once per batch):
//! - `received`: datagrams this worker took off a socket;
//! - `replied`: replies the kernel accepted;
//! - `dropped`: received datagrams that got no reply sent, whatever the reason: malformed
//!   (including truncated, over 65535 bytes), ignored on purpose (ACK, responses, CRLF
//!   keep-alives), or a reply the kernel refused. So `received == replied + dropped` always;
//! - `wakeups`: `epoll_wait` returns with at least one event (control or datagram), so that
//!   wakeups per datagram across the pool can be measured;
//! - each slot's `received`: datagrams taken off that slot's socket, by any worker.
//!
//! The worker never binds, never writes a slot and never trusts a control message beyond what it
//! checks: an `Add` entry whose fd is not the announced socket is refused and its fd closed.

use crate::channel::Channel;
use crate::control::{self, Entry, Flow, Received, ServeError};
use crate::handler::{Outcome, Responder, SocketParts};
use crate::ipc::{FromWorker, SocketInfo, ToWorker};
use crate::sip::Parsed;
use crate::sys::{self, Datagram, Poller, RecvBatch, SendBatch};
use shm::{Attached, Proto, WorkerKind};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// Datagrams taken per `recvmmsg`.
pub const BATCH: usize = 32;

/// Batches taken from one socket per wakeup before moving on to the other ready sockets.
pub const BATCHES_PER_WAKEUP: usize = 8;

/// How often a worker looks for datagrams whose wakeup went to a worker that never read them.
pub const AUDIT_INTERVAL: Duration = Duration::from_millis(100);

/// The epoll token of the control socket; a UDP socket's token is its slot index.
const CONTROL_TOKEN: u64 = u64::MAX;

/// Run a UDP worker on `control` until `Shutdown` (0), the supervisor closing its end (0), or a
/// control message it cannot take ([`control::EXIT_BAD_CONTROL`]).
///
/// Sends `Hello`, waits for `Setup` (which brings the shm file), then serves. Called by
/// [`crate::serve`] for [`WorkerKind::Udp`].
pub fn serve(control: Channel, rank: u32) -> Result<u8, ServeError> {
    let kind = WorkerKind::Udp;
    let mut buf = Vec::new();
    let setup = match control::enter(&control, kind, rank, &mut buf)? {
        Entry::Serve(setup) => setup,
        Entry::Exit(code) => return Ok(code),
    };
    let poller = Poller::new().map_err(ServeError::Poll)?;
    poller
        .add(control.as_fd(), CONTROL_TOKEN)
        .map_err(ServeError::Poll)?;
    let audit = Poller::new().map_err(ServeError::Poll)?;
    let mut worker = Worker {
        kind,
        rank,
        control,
        poller,
        audit,
        last_audit: Instant::now(),
        responder: setup.responder,
        parsed: Parsed::new(),
        shm: setup.shm,
        sockets: HashMap::new(),
        control_buf: buf,
        recv: RecvBatch::new(BATCH),
        send: SendBatch::new(),
        replies: vec![Vec::new(); BATCH],
        dests: Vec::with_capacity(BATCH),
    };
    worker.run()
}

/// One socket being served.
#[derive(Debug)]
struct Served {
    socket: UdpSocket,
    info: SocketInfo,
    /// The reply parts rendered from `info` (its Contact).
    parts: SocketParts,
}

struct Worker {
    kind: WorkerKind,
    rank: u32,
    control: Channel,
    poller: Poller,
    /// Every socket again, non-exclusive, never waited on: polled with a zero timeout every
    /// AUDIT_INTERVAL to find datagrams that wait in a socket's queue because the worker that took
    /// their wakeup was stopped or killed before reading them (EPOLLEXCLUSIVE wakes one waiter,
    /// and that one wakeup is then spent). Without it such a datagram would wait for the next one
    /// on the same socket.
    audit: Poller,
    last_audit: Instant,
    responder: Responder,
    /// The parse of the datagram being answered (reused).
    parsed: Parsed,
    shm: Attached,
    sockets: HashMap<u32, Served>,
    control_buf: Vec<u8>,
    recv: RecvBatch,
    send: SendBatch,
    /// One reply buffer per datagram of a batch, reused (they keep their capacity).
    replies: Vec<Vec<u8>>,
    /// Where each reply of the batch goes.
    dests: Vec<SocketAddr>,
}

impl Worker {
    fn run(&mut self) -> Result<u8, ServeError> {
        let mut events = vec![sys::empty_event(); 64];
        loop {
            let n = self
                .poller
                .wait(&mut events, Some(AUDIT_INTERVAL))
                .map_err(ServeError::Poll)?;
            if self.last_audit.elapsed() >= AUDIT_INTERVAL {
                self.audit(&mut events)?;
            }
            if n == 0 {
                // Timed out, or interrupted (e.g. stopped and continued): not a wakeup by traffic.
                continue;
            }
            if let Some(record) = self.shm.worker(self.kind, self.rank) {
                record.add_wakeups(1);
            }
            for event in events.iter().take(n) {
                match sys::event_token(event) {
                    CONTROL_TOKEN => match self.control_message()? {
                        Flow::Continue => {}
                        Flow::Exit(code) => return Ok(code),
                    },
                    token => {
                        // A slot removed by a control message earlier in this batch of events
                        // is simply not found.
                        if let Ok(slot) = u32::try_from(token) {
                            self.serve_socket(slot);
                        }
                    }
                }
            }
        }
    }

    /// Serve every socket that has datagrams waiting although no worker was woken for them.
    fn audit(&mut self, events: &mut [sys::Event]) -> Result<(), ServeError> {
        self.last_audit = Instant::now();
        let n = self
            .audit
            .wait(events, Some(Duration::ZERO))
            .map_err(ServeError::Poll)?;
        let slots: Vec<u32> = events
            .iter()
            .take(n)
            .filter_map(|e| u32::try_from(sys::event_token(e)).ok())
            .collect();
        for slot in slots {
            self.serve_socket(slot);
        }
        Ok(())
    }

    /// Handle one control message (the socket is readable: this does not block).
    fn control_message(&mut self) -> Result<Flow, ServeError> {
        let (msg, fds) =
            match control::receive(&self.control, &mut self.control_buf, self.kind, self.rank)? {
                Received::Message(msg, fds) => (msg, fds),
                Received::Empty => return Ok(Flow::Continue),
                Received::Exit(code) => return Ok(Flow::Exit(code)),
            };
        let reply = match msg {
            // Refused by `control::receive`.
            ToWorker::Setup { .. } | ToWorker::Describe { .. } | ToWorker::Conn { .. } => {
                return Ok(Flow::Exit(control::EXIT_BAD_CONTROL))
            }
            ToWorker::Add {
                generation,
                sockets,
            } => {
                for (slot, reason) in self.add(sockets, fds) {
                    log::warn!("udp worker {}: refused slot {slot}: {reason}", self.rank);
                    let refused = FromWorker::Refused {
                        generation,
                        slot,
                        reason,
                    };
                    if let Flow::Exit(code) = control::tell(&self.control, &refused)? {
                        return Ok(Flow::Exit(code));
                    }
                }
                None
            }
            ToWorker::Update { sockets, .. } => {
                for info in sockets {
                    self.update(info);
                }
                None
            }
            ToWorker::Remove { slots, .. } => {
                for slot in slots {
                    self.remove(slot);
                }
                None
            }
            ToWorker::Commit { generation } => Some(FromWorker::Ack {
                generation,
                serving: u32::try_from(self.sockets.len()).unwrap_or(u32::MAX),
            }),
            ToWorker::Shutdown => {
                log::debug!("udp worker {}: shutdown", self.rank);
                return Ok(Flow::Exit(0));
            }
        };
        match reply {
            Some(reply) => control::tell(&self.control, &reply),
            None => Ok(Flow::Continue),
        }
    }

    /// Start serving the entries of an `Add`; returns the refused ones with the reason (their
    /// fds are closed).
    fn add(&mut self, sockets: Vec<SocketInfo>, fds: Vec<OwnedFd>) -> Vec<(u32, String)> {
        if fds.len() != sockets.len() {
            let reason = format!(
                "the message carried {} fds for {} sockets",
                fds.len(),
                sockets.len()
            );
            return sockets.iter().map(|s| (s.slot, reason.clone())).collect();
        }
        let mut refused = Vec::new();
        for (info, fd) in sockets.into_iter().zip(fds) {
            let slot = info.slot;
            match self.adopt(info, fd) {
                Ok(()) => {}
                Err(reason) => refused.push((slot, reason)),
            }
        }
        refused
    }

    /// Check that `fd` is the socket `info` announces and watch it.
    fn adopt(&mut self, info: SocketInfo, fd: OwnedFd) -> Result<(), String> {
        if info.proto != Proto::Udp {
            return Err(format!(
                "a udp worker does not serve {} sockets",
                info.proto
            ));
        }
        if self.sockets.contains_key(&info.slot) {
            return Err("the slot is already served".into());
        }
        match sys::socket_type(fd.as_fd()) {
            Ok(nix::sys::socket::SockType::Datagram) => {}
            Ok(other) => return Err(format!("not a datagram socket ({other:?})")),
            Err(e) => return Err(format!("not a socket: {e}")),
        }
        let socket = UdpSocket::from(fd);
        let local = socket
            .local_addr()
            .map_err(|e| format!("getsockname: {e}"))?;
        if local.ip() != info.local.ip() || local.port() != info.local.port() {
            return Err(format!("bound to {local}, not {}", info.local));
        }
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("O_NONBLOCK: {e}"))?;
        self.poller
            .add_exclusive(socket.as_fd(), u64::from(info.slot))
            .map_err(|e| format!("epoll: {e}"))?;
        if let Err(e) = self.audit.add(socket.as_fd(), u64::from(info.slot)) {
            let _ = self.poller.delete(socket.as_fd());
            return Err(format!("epoll (audit): {e}"));
        }
        log::debug!(
            "udp worker {}: serving slot {} on {local}",
            self.rank,
            info.slot
        );
        let parts = SocketParts::new(&info.contact, Proto::Udp);
        self.sockets.insert(
            info.slot,
            Served {
                socket,
                info,
                parts,
            },
        );
        Ok(())
    }

    /// New advertised address or tag of a served slot; the socket is untouched.
    fn update(&mut self, info: SocketInfo) {
        match self.sockets.get_mut(&info.slot) {
            Some(served) => {
                if served.info.local != info.local {
                    log::warn!(
                        "udp worker {}: update of slot {} names {}, the socket is {}",
                        self.rank,
                        info.slot,
                        info.local,
                        served.info.local
                    );
                }
                if served.info.contact != info.contact {
                    served.parts = SocketParts::new(&info.contact, Proto::Udp);
                }
                served.info.contact = info.contact;
                served.info.tag = info.tag;
            }
            // Refused at its Add: nothing to update.
            None => log::debug!(
                "udp worker {}: update of unserved slot {}",
                self.rank,
                info.slot
            ),
        }
    }

    /// Stop watching a slot and close this worker's copy of its fd.
    fn remove(&mut self, slot: u32) {
        if let Some(served) = self.sockets.remove(&slot) {
            if let Err(e) = self.poller.delete(served.socket.as_fd()) {
                log::warn!("udp worker {}: epoll delete of slot {slot}: {e}", self.rank);
            }
            let _ = self.audit.delete(served.socket.as_fd());
        }
    }

    /// Answer what is waiting on a slot's socket, within the per-wakeup budget.
    fn serve_socket(&mut self, slot: u32) {
        let Worker {
            kind,
            rank,
            responder,
            parsed,
            shm,
            sockets,
            recv,
            send,
            replies,
            dests,
            ..
        } = self;
        let Some(served) = sockets.get(&slot) else {
            return;
        };
        let fd = served.socket.as_fd();
        for _ in 0..BATCHES_PER_WAKEUP {
            let n = match recv.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("udp worker {rank}: recvmmsg on slot {slot}: {e}");
                    break;
                }
            };
            dests.clear();
            for i in 0..n {
                let Some(datagram) = recv.get(i) else {
                    continue;
                };
                let Some(out) = replies.get_mut(dests.len()) else {
                    continue;
                };
                if let Some(to) = answer(responder, parsed, &datagram, &served.parts, out) {
                    dests.push(to);
                }
            }
            let sent = send_all(send, fd, replies, dests, *rank, slot);
            let received = n as u64;
            if let Some(record) = shm.worker(*kind, *rank) {
                record.add_received(received);
                record.add_replied(sent);
                record.add_dropped(received - sent);
            }
            shm.add_slot_received(slot, received);
            if n < recv.capacity() {
                // Drained.
                break;
            }
        }
    }
}

/// The reply to one datagram goes in `out`; returns where to send it, or `None` (dropped).
fn answer(
    responder: &Responder,
    parsed: &mut Parsed,
    datagram: &Datagram<'_>,
    parts: &SocketParts,
    out: &mut Vec<u8>,
) -> Option<SocketAddr> {
    let source = datagram.source?;
    if datagram.truncated {
        return None;
    }
    match responder.answer(parsed, datagram.payload, source, parts, out) {
        Outcome::Replied => Some(source),
        Outcome::Ignored | Outcome::Malformed => None,
    }
}

/// Send `replies[..dests.len()]`; returns how many the kernel took. A reply the kernel refuses
/// is skipped (UDP: the client retransmits); a full send buffer drops the rest of the batch.
fn send_all(
    send: &mut SendBatch,
    fd: std::os::fd::BorrowedFd<'_>,
    replies: &[Vec<u8>],
    dests: &[SocketAddr],
    rank: u32,
    slot: u32,
) -> u64 {
    let mut sent = 0u64;
    let mut next = 0usize;
    while next < dests.len() {
        let (Some(payloads), Some(to)) = (replies.get(next..dests.len()), dests.get(next..)) else {
            break;
        };
        match send.send(fd, payloads, to) {
            Ok(k) => {
                sent += k as u64;
                next += k.max(1);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                log::debug!("udp worker {rank}: send buffer of slot {slot} full; replies dropped");
                break;
            }
            Err(e) => {
                log::debug!(
                    "udp worker {rank}: reply from slot {slot} to {:?}: {e}",
                    to.first()
                );
                next += 1;
            }
        }
    }
    sent
}
