//! The observers' thread: one mio event loop that serves MI over HTTP, `/metrics` and MI over
//! datagrams, off the supervisor's loop.
//!
//! Nothing here blocks: sockets are non-blocking, every connection has a deadline (to send its
//! request, to get its answer, to take the response), buffers are bounded
//! ([`http::MAX_HEAD`] + [`http::MAX_BODY`]), at most [`MAX_CONNECTIONS`] are open (the others wait
//! in the listen backlog). MI calls go to the supervisor's loop through the bridge
//! ([`MiBridge::submit`]) and their results come back on a channel with a wake of this loop, as
//! do the verdicts of the password checks ([`Auth`]), so a thousand slow clients, a slow reload
//! or a password check delay nobody else. A scrape reads the shared table here, never in the
//! supervisor's loop.
//!
//! It never touches the daemon's state and never panics on what a client sends.

use super::auth::{Auth, Check, Verdict};
use super::http::{self, Parse, Response};
use super::{metrics, mi_datagram, mi_http};
use crate::config::Cidr;
use crate::mi::bridge::{BridgeError, MiBridge};
use crate::mi::RpcError;
use crossbeam_channel::{Receiver, Sender};
use log::{debug, warn};
use mio::net::{TcpListener, TcpStream, UdpSocket, UnixDatagram};
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most connections open at once; more wait in the listen backlog until one closes.
pub const MAX_CONNECTIONS: usize = 2048;
/// How long a client may take to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an MI call may wait for the supervisor's answer (a reload may take a while).
pub const MI_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a client may take to read the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams taken per turn before the other sockets get theirs.
const DATAGRAM_BATCH: usize = 64;

const WAKE: Token = Token(0);
const DATAGRAM: Token = Token(1);
const LISTENER_BASE: usize = 2;
const CONN_BASE: usize = 16;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// MI over HTTP.
    Mi,
    /// `/metrics`.
    Metrics,
}

/// The MI datagram socket.
#[derive(Debug)]
pub(super) enum Datagram {
    /// `udp:IP:PORT`.
    Udp(UdpSocket),
    /// A unix datagram socket, and its path (removed when the thread stops).
    Unix(UnixDatagram, PathBuf),
}

/// Where a datagram's reply goes.
#[derive(Debug, Clone)]
pub(super) enum Peer {
    Udp(SocketAddr),
    Unix(PathBuf),
}

/// What comes back to this loop from other threads.
pub(super) enum Done {
    /// An MI call of connection `conn` ended.
    Call {
        conn: u64,
        result: Result<Value, RpcError>,
    },
    /// An MI call of a datagram ended.
    Datagram {
        peer: Peer,
        id: Value,
        result: Result<Value, RpcError>,
    },
    /// A password check ended.
    Auth(Verdict),
}

/// MI over HTTP's settings.
pub(super) struct MiSettings {
    pub root: String,
    pub allow: Vec<Cidr>,
    pub auth: Option<Auth>,
}

/// Where a connection is.
enum Phase {
    /// Reading its request.
    Reading,
    /// Its credentials are being checked; the request waits.
    Authenticating(http::Request),
    /// Its MI call is in the supervisor's loop; `id` is the JSON-RPC id to answer with.
    Waiting { id: Option<Value> },
    /// Sending the response, then closing.
    Writing,
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    phase: Phase,
    input: Vec<u8>,
    sent_continue: bool,
    output: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// The loop and everything it serves.
pub(super) struct Server {
    poll: Poll,
    waker: Arc<Waker>,
    listeners: Vec<(TcpListener, Role)>,
    paused: bool,
    datagram: Option<Datagram>,
    datagram_pending: bool,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    deadlines: BTreeSet<(Instant, u64)>,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    bridge: MiBridge,
    mi: Option<MiSettings>,
    table: Option<shm::Reader>,
    stop: Arc<AtomicBool>,
}

/// What a [`Server`] is made of.
pub(super) struct Parts {
    pub poll: Poll,
    pub waker: Arc<Waker>,
    pub done: (Sender<Done>, Receiver<Done>),
    pub listeners: Vec<(TcpListener, Role)>,
    pub datagram: Option<Datagram>,
    pub bridge: MiBridge,
    pub mi: Option<MiSettings>,
    pub table: Option<shm::Reader>,
    pub stop: Arc<AtomicBool>,
}

/// The tokens of a server's wake-up: for the [`Waker`] made before the server.
pub(super) const WAKE_TOKEN: Token = WAKE;

impl Server {
    /// Registers every socket; the loop runs in [`Server::run`].
    pub fn new(parts: Parts) -> std::io::Result<Server> {
        let Parts {
            poll,
            waker,
            done: (done_tx, done_rx),
            mut listeners,
            mut datagram,
            bridge,
            mi,
            table,
            stop,
        } = parts;
        for (i, (l, _)) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(l, Token(LISTENER_BASE + i), Interest::READABLE)?;
        }
        match &mut datagram {
            Some(Datagram::Udp(s)) => poll.registry().register(s, DATAGRAM, Interest::READABLE)?,
            Some(Datagram::Unix(s, _)) => {
                poll.registry().register(s, DATAGRAM, Interest::READABLE)?
            }
            None => {}
        }
        Ok(Server {
            poll,
            waker,
            listeners,
            paused: false,
            datagram,
            datagram_pending: false,
            conns: HashMap::new(),
            next_conn: 0,
            deadlines: BTreeSet::new(),
            done_tx,
            done_rx,
            bridge,
            mi,
            table,
            stop,
        })
    }

    /// Serves until `stop` is set (and the loop woken).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let timeout = if self.datagram_pending {
                Some(Duration::ZERO)
            } else {
                self.deadlines
                    .first()
                    .map(|(t, _)| t.saturating_duration_since(now))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    warn!("observers: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            for event in events.iter() {
                match event.token() {
                    WAKE => {}
                    DATAGRAM => self.datagram_pending = true,
                    Token(t) if t >= CONN_BASE => self.on_conn((t - CONN_BASE) as u64),
                    Token(t) => self.accept(t - LISTENER_BASE),
                }
            }
            self.take_done();
            if self.datagram_pending {
                self.read_datagrams();
            }
            self.expire(Instant::now());
            if self.paused && self.conns.len() < MAX_CONNECTIONS {
                self.paused = false;
                for i in 0..self.listeners.len() {
                    self.accept(i);
                }
            }
        }
        if let Some(Datagram::Unix(_, path)) = &self.datagram {
            let _ = std::fs::remove_file(path);
        }
    }

    fn accept(&mut self, index: usize) {
        let Some(role) = self.listeners.get(index).map(|(_, role)| *role) else {
            return;
        };
        loop {
            if self.conns.len() >= MAX_CONNECTIONS {
                self.paused = true;
                return;
            }
            let (mut stream, peer) = match self.listeners[index].0.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of file descriptors: retry once a connection closes.
                    warn!("observers: accept: {e}");
                    self.paused = true;
                    return;
                }
                Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    warn!("observers: accept: {e}");
                    return;
                }
            };
            let id = self.next_conn;
            self.next_conn += 1;
            let token = Token(CONN_BASE + id as usize);
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("observers: cannot watch a connection from {peer}: {e}");
                continue;
            }
            let deadline = Instant::now() + READ_TIMEOUT;
            self.deadlines.insert((deadline, id));
            self.conns.insert(
                id,
                Conn {
                    stream,
                    peer,
                    role,
                    phase: Phase::Reading,
                    input: Vec::new(),
                    sent_continue: false,
                    output: Vec::new(),
                    written: 0,
                    deadline,
                },
            );
            // Edge-triggered: the request may be there already.
            self.on_conn(id);
        }
    }

    fn on_conn(&mut self, id: u64) {
        match self.conns.get(&id).map(|c| &c.phase) {
            Some(Phase::Reading) => self.read(id),
            Some(Phase::Writing) => self.write(id),
            // The answer is not there yet; a client that left is found out at the write.
            Some(Phase::Authenticating(_) | Phase::Waiting { .. }) | None => {}
        }
    }

    fn read(&mut self, id: u64) {
        let mut chunk = [0u8; 8192];
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            match conn.stream.read(&mut chunk) {
                Ok(0) => return self.close(id),
                Ok(n) => conn.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.close(id),
            }
            match http::parse(&conn.input) {
                Parse::Incomplete { expect_continue } => {
                    if expect_continue && !conn.sent_continue {
                        conn.sent_continue = true;
                        // Tiny, and the socket's buffer is empty: if it does not fit now the
                        // client simply sends its body without waiting.
                        let _ = conn.stream.write(http::CONTINUE);
                    }
                }
                Parse::Complete(req) => return self.handle(id, req),
                Parse::Refused(status) => {
                    return self.respond(id, Response::text(status, "request refused"))
                }
            }
        }
    }

    fn handle(&mut self, id: u64, req: http::Request) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if conn.role == Role::Metrics {
            let resp = self.metrics(&req);
            return self.respond(id, resp);
        }
        let peer = conn.peer;
        let Some(mi) = &mut self.mi else {
            return self.close(id);
        };
        if !mi.allow.iter().any(|c| c.contains(peer.ip())) {
            debug!("MI over HTTP: {peer} is not in [mi_http] allow");
            return self.respond(
                id,
                Response::text(403, &format!("{} is not allowed", peer.ip())),
            );
        }
        if let Some(auth) = &mut mi.auth {
            match auth.check(req.authorization.as_deref(), id) {
                Check::Allowed => {}
                Check::Denied => return self.respond(id, unauthorized()),
                Check::Busy => {
                    return self.respond(id, Response::text(503, "too many logins at once"))
                }
                Check::Pending => {
                    self.set_deadline(id, Instant::now() + MI_TIMEOUT);
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.phase = Phase::Authenticating(req);
                    }
                    return;
                }
            }
        }
        self.call(id, &req);
    }

    /// Runs the MI call of an allowed (and authenticated) request.
    fn call(&mut self, id: u64, req: &http::Request) {
        let Some(mi) = &self.mi else {
            return self.close(id);
        };
        let (method, params, rpc_id) = match mi_http::route(&mi.root, req) {
            mi_http::Route::Answer(resp) => return self.respond(id, resp),
            mi_http::Route::Call { method, params, id } => (method, params, id),
        };
        let (tx, waker) = (self.done_tx.clone(), self.waker.clone());
        let submitted = self.bridge.submit(&method, params, move |result| {
            let _ = tx.send(Done::Call { conn: id, result });
            let _ = waker.wake();
        });
        if let Some(conn) = self.conns.get(&id) {
            debug!("MI over HTTP from {}: {method}", conn.peer);
        }
        match submitted {
            Ok(()) => {
                self.set_deadline(id, Instant::now() + MI_TIMEOUT);
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.phase = Phase::Waiting { id: rpc_id };
                }
            }
            Err(e) => self.respond(id, mi_http::answer(rpc_id.as_ref(), Err(e))),
        }
    }

    fn metrics(&self, req: &http::Request) -> Response {
        let path = req.target.split('?').next().unwrap_or("");
        if path != "/metrics" {
            return Response::text(404, "the metrics are at /metrics");
        }
        if req.method != "GET" {
            return Response::text(405, "").with_header("Allow", "GET");
        }
        let Some(table) = &self.table else {
            return Response::text(404, "");
        };
        let snap = table.snapshot();
        let memory = metrics::process_memory(&snap);
        Response {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            headers: Vec::new(),
            body: metrics::render(snap, memory).into_bytes(),
        }
    }

    fn respond(&mut self, id: u64, resp: Response) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.output = resp.encode();
        conn.written = 0;
        conn.phase = Phase::Writing;
        self.set_deadline(id, Instant::now() + WRITE_TIMEOUT);
        self.write(id);
    }

    fn write(&mut self, id: u64) {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.written == conn.output.len() {
                let _ = conn.stream.shutdown(Shutdown::Write);
                return self.close(id);
            }
            match conn.stream.write(&conn.output[conn.written..]) {
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.close(id),
            }
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(mut conn) = self.conns.remove(&id) {
            self.deadlines.remove(&(conn.deadline, id));
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn set_deadline(&mut self, id: u64, when: Instant) {
        if let Some(conn) = self.conns.get_mut(&id) {
            self.deadlines.remove(&(conn.deadline, id));
            conn.deadline = when;
            self.deadlines.insert((when, id));
        }
    }

    /// Ends every connection past its deadline.
    fn expire(&mut self, now: Instant) {
        while let Some(&(when, id)) = self.deadlines.first() {
            if when > now {
                return;
            }
            self.deadlines.pop_first();
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            // The entry is gone: a next deadline must not find it again.
            conn.deadline = now;
            match &conn.phase {
                Phase::Waiting { id: rpc_id } => {
                    let resp =
                        mi_http::answer(rpc_id.as_ref(), Err(BridgeError::Timeout(MI_TIMEOUT)));
                    self.respond(id, resp);
                }
                Phase::Authenticating(_) => {
                    self.respond(id, Response::text(503, "the login check took too long"))
                }
                // A client too slow to send its request or to take the response: dropped.
                Phase::Reading | Phase::Writing => self.close(id),
            }
        }
    }

    /// Hands on what other threads finished.
    fn take_done(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            match done {
                Done::Call { conn, result } => {
                    if let Some(Conn {
                        phase: Phase::Waiting { id },
                        ..
                    }) = self.conns.get(&conn)
                    {
                        let resp = mi_http::answer(id.as_ref(), Ok(result));
                        self.respond(conn, resp);
                    }
                }
                Done::Datagram { peer, id, result } => {
                    self.send_datagram(&peer, &mi_datagram::reply(&id, &result));
                }
                Done::Auth(verdict) => {
                    let ok = self
                        .mi
                        .as_mut()
                        .and_then(|m| m.auth.as_mut())
                        .is_some_and(|a| a.settle(verdict));
                    let conn = verdict.ticket;
                    let waiting = self.conns.get_mut(&conn).and_then(|c| {
                        match std::mem::replace(&mut c.phase, Phase::Waiting { id: None }) {
                            Phase::Authenticating(req) => Some(req),
                            other => {
                                c.phase = other;
                                None
                            }
                        }
                    });
                    match (waiting, ok) {
                        (Some(req), true) => self.call(conn, &req),
                        (Some(_), false) => self.respond(conn, unauthorized()),
                        (None, _) => {}
                    }
                }
            }
        }
    }

    /// Takes up to a batch of MI datagrams; `datagram_pending` stays set while more may wait.
    fn read_datagrams(&mut self) {
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..DATAGRAM_BATCH {
            let received = match &self.datagram {
                Some(Datagram::Udp(s)) => {
                    s.recv_from(&mut buf).map(|(n, a)| (n, Some(Peer::Udp(a))))
                }
                Some(Datagram::Unix(s, _)) => s
                    .recv_from(&mut buf)
                    .map(|(n, a)| (n, a.as_pathname().map(|p| Peer::Unix(p.to_path_buf())))),
                None => return,
            };
            let (len, peer) = match received {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        warn!("MI datagram: receive: {e}");
                    }
                    self.datagram_pending = false;
                    return;
                }
            };
            match mi_datagram::parse(&buf[..len]) {
                mi_datagram::Incoming::Invalid(reply) => {
                    if let Some(peer) = &peer {
                        self.send_datagram(peer, &reply);
                    }
                }
                mi_datagram::Incoming::Call { method, params, id } => {
                    debug!("MI datagram from {peer:?}: {method}");
                    // No reply for a notification, or for a sender without an address.
                    let to = peer.zip(id);
                    let (tx, waker) = (self.done_tx.clone(), self.waker.clone());
                    let reply_to = to.clone();
                    let submitted = self.bridge.submit(&method, params, move |result| {
                        if let Some((peer, id)) = reply_to {
                            let _ = tx.send(Done::Datagram { peer, id, result });
                            let _ = waker.wake();
                        }
                    });
                    if let (Err(e), Some((peer, id))) = (submitted, to) {
                        let err = RpcError::new(503, e.to_string());
                        self.send_datagram(&peer, &mi_datagram::reply(&id, &Err(err)));
                    }
                }
            }
        }
    }

    fn send_datagram(&self, peer: &Peer, bytes: &[u8]) {
        let sent = match (&self.datagram, peer) {
            (Some(Datagram::Udp(s)), Peer::Udp(addr)) => s.send_to(bytes, *addr),
            (Some(Datagram::Unix(s, _)), Peer::Unix(path)) => s.send_to(bytes, path),
            _ => return,
        };
        if let Err(e) = sent {
            debug!("MI datagram: reply to {peer:?} lost: {e}");
        }
    }
}

fn unauthorized() -> Response {
    Response::text(401, "").with_header("WWW-Authenticate", "Basic realm=\"sipsockd MI\"")
}
