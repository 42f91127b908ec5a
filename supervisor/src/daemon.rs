//! `sipsockd run`: start-up, the supervisor's event loop, shutdown.
//!
//! Start-up order is the contract with init systems: signals blocked (before any thread exists),
//! the open-file limit checked against what each process needs and raised, database reachable
//! (else exit 1), shared table created, MI FIFO created and locked, privileges dropped, the
//! database thread and the workers started, and the initial load run as the loop's first reload;
//! only then is the FIFO read and systemd told `READY=1`. When the initial load fails, systemd is
//! told `STATUS=` with the reason and the FIFO is served anyway, so an operator can fix the table
//! and reload (which then says `READY=1`).
//!
//! The loop never waits on anything slow. The database is read on its own thread
//! (`db::thread`); a reload is a state of the loop (`reloading`) that gathers the workers'
//! acknowledgements as they arrive; messages to workers never wait (`pool`); certificate files are
//! read without blocking and with a size limit. So while a reload is in progress, new stream
//! connections are accepted and handed off, MI requests are answered at once (a second
//! `sockets_reload` waits for its turn and is answered in order), and workers that die are
//! restarted. Every MI request, whatever brought it, goes through `Supervisor::mi_request`.
//! After start-up nothing that comes from outside stops the loop; only SIGTERM/SIGINT do, within
//! 2 s whatever is in progress.

use crate::config::Config;
use crate::db::thread::DbThread;
use crate::db::Database;
use crate::mi::methods;
use crate::mi::{self, MiServer, Request, RpcError};
use crate::pool::Pool;
use crate::reload::Sockets;
use crate::reloading::{Ctx, Finished, Reloading};
use crate::sys;
use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use serde_json::Value;
use shm::Table;
use shm::WorkerKind;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use worker::ipc::StreamSettings;

const SIGNALS: Token = Token(0);
const MI: Token = Token(1);
/// The one `Waker` of the loop (mio allows one per `Poll`): the database thread's answers, and MI
/// calls from the HTTP and datagram transports' thread (`crate::observe`).
const WAKE: Token = Token(2);
const WORKER_BASE: usize = 16;
/// Listener tokens: LISTENER_BASE + slot (slots are below 65536, workers far fewer).
const LISTENER_BASE: usize = 1 << 20;

/// The loop turns at least this often: liveness probes, the FIFO check, waiting connections.
const TICK: Duration = Duration::from_millis(100);
/// An accept that failed for want of fds is tried again this soon, connection or not.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// Most accepted connections waiting in the supervisor for a stream worker to take them.
pub const MAX_WAITING: usize = 1024;
/// How long an accepted connection waits for a stream worker before it is closed.
pub const HANDOFF_WAIT: Duration = Duration::from_secs(2);
/// Most reload requests waiting for the one in progress; past it a request is answered at once
/// with an error (one reload will answer all the waiting ones anyway).
const MAX_RELOADS_WAITING: usize = 1024;
/// Fds a process keeps besides the ones counted: stdio, epoll, signalfd, shm, database, FIFO...
pub const FD_RESERVE: u64 = 64;
/// How long stopping waits for the workers to exit before killing them.
const STOP_WAIT: Duration = Duration::from_millis(1000);

/// Why the daemon could not start (once started, it only stops on a signal).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Signal handling could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] nix::Error),
    /// The open-file limit is too low for what a process needs.
    #[error(
        "the open-file limit (soft {soft}, hard {hard}) is too low: {who} needs {needed} open \
         files ({why}); raise it (ulimit -n / LimitNOFILE=) to at least {needed}"
    )]
    FileLimit {
        /// The soft limit in force.
        soft: u64,
        /// The hard limit in force (the soft one cannot be raised past it).
        hard: u64,
        /// What is needed.
        needed: u64,
        /// Which process needs it.
        who: &'static str,
        /// What it is made of, naming the configuration keys.
        why: String,
    },
    /// The database could not be reached or read at start.
    #[error("{0}")]
    Database(#[from] crate::db::DbError),
    /// The shared table could not be created.
    #[error("{0}")]
    Shm(#[from] shm::ShmError),
    /// The MI FIFO could not be created.
    #[error("{0}")]
    Mi(#[from] mi::MiError),
    /// A worker could not be started at all.
    #[error("{0}")]
    Pool(#[from] crate::pool::PoolError),
    /// The configured user could not be switched to.
    #[error("{0}")]
    Privileges(#[from] sys::PrivilegeError),
    /// An MI HTTP, MI datagram or metrics endpoint could not be set up.
    #[error("{0}")]
    Observe(#[from] crate::observe::ObserveError),
    /// The event loop failed.
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
}

/// How many fds each kind of process may need at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdNeeds {
    /// Every socket once, a control channel per worker, the connections waiting for a stream
    /// worker, the reserve.
    pub supervisor: u64,
    /// Every socket (UDP workers hold a copy of each UDP socket), the reserve.
    pub udp_worker: u64,
    /// Up to `[tcp] max_connections` (the hand-off may send one worker all of them), the reserve;
    /// 0 without stream workers.
    pub stream_worker: u64,
}

impl FdNeeds {
    /// What `config` makes each process need. Pure.
    pub fn of(config: &Config) -> FdNeeds {
        let mgm = &config.sockets_mgm;
        let sockets = u64::from(mgm.max_sockets);
        let workers = u64::from(mgm.processes) + u64::from(config.tcp.workers);
        FdNeeds {
            supervisor: sockets + workers + MAX_WAITING as u64 + FD_RESERVE,
            udp_worker: sockets + FD_RESERVE,
            stream_worker: if config.tcp.workers == 0 {
                0
            } else {
                u64::from(config.tcp.max_connections) + FD_RESERVE
            },
        }
    }

    /// The largest need (every process gets the same limit: workers inherit it), which process
    /// has it, and what it is made of.
    pub fn largest(&self, config: &Config) -> (u64, &'static str, String) {
        let mgm = &config.sockets_mgm;
        let sup = (
            self.supervisor,
            "the supervisor",
            format!(
                "max_sockets = {}, {} workers' control sockets, up to {MAX_WAITING} connections \
                 waiting for a stream worker, {FD_RESERVE} more",
                mgm.max_sockets,
                mgm.processes + config.tcp.workers
            ),
        );
        let stream = (
            self.stream_worker,
            "a stream worker",
            format!(
                "[tcp] max_connections = {}, {FD_RESERVE} more",
                config.tcp.max_connections
            ),
        );
        // udp_worker < supervisor always.
        if stream.0 > sup.0 {
            stream
        } else {
            sup
        }
    }
}

/// Check the open-file limit against what the processes need, raising the soft limit when the
/// hard one allows.
fn check_file_limit(config: &Config) -> Result<u64, DaemonError> {
    let (needed, who, why) = FdNeeds::of(config).largest(config);
    let soft = sys::raise_nofile_limit(needed).map_err(|e| DaemonError::Io(e.into()))?;
    if soft >= needed {
        return Ok(soft);
    }
    let (soft, hard) = sys::nofile_limits().map_err(|e| DaemonError::Io(e.into()))?;
    Err(DaemonError::FileLimit {
        soft,
        hard,
        needed,
        who,
        why,
    })
}

/// Where the answer to an MI request goes. Every transport has its variant; the rest of the
/// path (dispatch, a reload queued and answered later) is the same for all.
#[derive(Debug)]
enum ReplyTo {
    /// The FIFO: the request names its reply FIFO.
    Fifo(Request),
    /// MI over HTTP or datagrams: the call carries its way back to the transport's thread.
    Bridge(mi::bridge::Call),
}

impl ReplyTo {
    fn request(&self) -> &Request {
        match self {
            ReplyTo::Fifo(req) => req,
            ReplyTo::Bridge(call) => &call.request,
        }
    }
}

/// Who asked for a reload, for its answer.
#[derive(Debug)]
enum Asker {
    /// The initial load.
    Start,
    /// SIGHUP.
    Sighup,
    /// An MI request (`sockets_reload` or its alias).
    Mi(ReplyTo),
}

/// An accepted connection waiting for a stream worker to take it.
#[derive(Debug)]
struct Waiting {
    slot: u32,
    peer: SocketAddr,
    conn: OwnedFd,
    since: Instant,
}

/// What the daemon tells systemd (when it gave a `NOTIFY_SOCKET`).
#[derive(Debug)]
struct Notify {
    sock: Option<sys::Notifier>,
    /// Half of `WATCHDOG_USEC`, when set.
    watchdog: Option<Duration>,
    next_ping: Instant,
    /// `READY=1` was sent (a table was applied at least once).
    ready: bool,
}

impl Notify {
    fn from_env() -> Notify {
        let sock = sys::Notifier::from_env().unwrap_or_else(|e| {
            warn!("NOTIFY_SOCKET: {e}; systemd will not be told anything");
            None
        });
        let watchdog = sock
            .as_ref()
            .and(sys::watchdog_interval())
            .map(|d| (d / 2).max(Duration::from_millis(1)));
        Notify {
            sock,
            watchdog,
            next_ping: Instant::now(),
            ready: false,
        }
    }

    fn send(&self, state: &str) {
        if let Some(n) = &self.sock {
            if let Err(e) = n.send(state) {
                warn!("cannot notify systemd ({}): {e}", state.trim_end());
            }
        }
    }

    /// A reload begins (systemd shows the unit reloading).
    fn reloading(&self) {
        if self.ready {
            self.send(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}\n",
                sys::monotonic_usec()
            ));
        }
    }

    /// A reload ended (the last one asked for): ready again, or for the first time once a table
    /// is applied; `status` says how it went.
    fn reloaded(&mut self, applied: bool, status: &str) {
        if self.ready || applied {
            if !self.ready {
                // Alone in its message, as the first notification of a good start.
                self.send("READY=1\n");
                self.ready = true;
                self.send(&format!("STATUS={status}\n"));
            } else {
                self.send(&format!("READY=1\nSTATUS={status}\n"));
            }
        } else {
            self.send(&format!("STATUS={status}\n"));
        }
    }

    /// `WATCHDOG=1` when due; called on every turn of the loop (a stuck loop stops pinging).
    fn ping(&mut self, now: Instant) {
        if let Some(every) = self.watchdog {
            if now >= self.next_ping {
                self.send("WATCHDOG=1\n");
                self.next_ping = now + every;
            }
        }
    }

    fn until_ping(&self, now: Instant) -> Option<Duration> {
        self.watchdog
            .map(|_| self.next_ping.saturating_duration_since(now))
    }
}

/// The supervisor's state: everything the loop and the MI methods act on.
struct Supervisor {
    config: Config,
    started: SystemTime,
    shm: Table,
    pool: Pool,
    sockets: Sockets,
    db: DbThread,
    reloading: Reloading<Asker>,
    mi: MiServer,
    /// The FIFO is read (from the end of the initial load on).
    mi_open: bool,
    /// Connections refused because `[tcp] max_connections` was reached or no worker took them.
    refused_connections: u64,
    /// What the statistics MI methods read, and their reset baselines.
    statistics: crate::stats::Statistics,
    /// Accepted connections no stream worker could take yet, oldest first.
    waiting: VecDeque<Waiting>,
    /// Listeners whose accept failed for want of fds: tried again on the next turn.
    accept_retry: BTreeSet<u32>,
    /// The listeners changed (a reload ended): register the new ones.
    listeners_dirty: bool,
    notify: Notify,
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let started = SystemTime::now();
    let signals = sys::signal_fd().map_err(DaemonError::Signals)?;
    let limit = check_file_limit(&config)?;
    debug!("open-file limit: {limit}");
    let mgm = &config.sockets_mgm;
    if crate::db::ensure_sqlite_default(mgm)? {
        info!(
            "created {} with an empty {} table",
            mgm.db_url_redacted(),
            mgm.table_name
        );
    }
    let db = Database::connect(mgm)?;
    info!("database {}", mgm.db_url_redacted());
    let shm = Table::create(
        &config.shm.path,
        mgm.max_sockets,
        mgm.processes,
        config.tcp.workers,
        0, // relay records: sized by [relay] max_relays once relays exist
    )?;
    let settings = StreamSettings {
        max_message_size: config.tcp.max_message_size,
        connection_lifetime_ms: config.tcp.connection_lifetime.as_millis() as u64,
        drain_timeout_ms: config.tcp.drain_timeout.as_millis() as u64,
        handshake_timeout_ms: config.tls.handshake_timeout.as_millis() as u64,
    };
    // The FIFO exists (and is locked) from here on, but is read only once the initial load is
    // done: a client that writes early waits for its answer. It is created before the privilege
    // drop so that it can live in a directory only root may write to.
    let mi_server = match MiServer::create(&config.mi_fifo) {
        Ok(m) => m,
        Err(e) => {
            let _ = shm.remove();
            return Err(e.into());
        }
    };
    if let Some(user) = config.general.user.clone() {
        let dropped =
            sys::lookup_user(&user, config.general.group.as_deref()).and_then(|(uid, gid)| {
                for path in [
                    config.shm.path.as_path(),
                    config.mi_fifo.fifo_name.as_path(),
                ] {
                    sys::chown(path, uid, gid).map_err(|source| sys::PrivilegeError::Syscall {
                        user: user.clone(),
                        step: "chown",
                        source,
                    })?;
                }
                sys::drop_privileges(&user, uid, gid)
            });
        if let Err(e) = dropped {
            mi_server.remove();
            let _ = shm.remove();
            return Err(e.into());
        }
        info!("running as user {user} (keeping only CAP_NET_BIND_SERVICE)");
    }
    // The database thread starts after the privilege drop, with every signal blocked (inherited
    // from this thread).
    let loop_parts = (move || -> std::io::Result<(Poll, Arc<Waker>, DbThread)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let db = DbThread::spawn(Some(db), mgm.clone(), Arc::clone(&waker))?;
        Ok((poll, waker, db))
    })();
    let (mut poll, waker, db) = match loop_parts {
        Ok(parts) => parts,
        Err(e) => {
            mi_server.remove();
            let _ = shm.remove();
            return Err(e.into());
        }
    };
    let pool = Pool::new(
        mgm.processes,
        config.tcp.workers,
        config.sip.reply_code,
        config.sip.reply_reason.clone(),
        settings,
    );
    let mut sup = Supervisor {
        statistics: crate::stats::Statistics::new(config.shm.path.clone()),
        config,
        started,
        shm,
        pool,
        sockets: Sockets::default(),
        db,
        reloading: Reloading::default(),
        mi: mi_server,
        mi_open: false,
        refused_connections: 0,
        waiting: VecDeque::new(),
        accept_retry: BTreeSet::new(),
        listeners_dirty: false,
        notify: Notify::from_env(),
    };
    let observers = match crate::observe::start(&sup.config, waker) {
        Ok(o) => o,
        Err(e) => {
            let Supervisor { mi, shm, .. } = sup;
            mi.remove();
            let _ = shm.remove();
            return Err(e.into());
        }
    };
    sup.pool.start_due(&sup.shm, &Default::default(), 0);
    poll.registry().register(
        &mut SourceFd(&signals.as_raw_fd()),
        SIGNALS,
        Interest::READABLE,
    )?;
    sup.reloading.ask(Asker::Start);

    let mut registered: Vec<(u64, bool)> = vec![(0, false); sup.pool.workers().len()];
    let mut events = Events::with_capacity(256);
    loop {
        sup.turn(poll.registry(), Instant::now());
        let room_wanted = !sup.waiting.is_empty();
        register_workers(poll.registry(), &sup.pool, &mut registered, room_wanted)?;
        if std::mem::take(&mut sup.listeners_dirty) {
            sync_listeners(poll.registry(), &sup.sockets);
        }
        let timeout = sup.timeout(Instant::now());
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        sup.shm.heartbeat();
        let mut stop = false;
        for event in events.iter() {
            match event.token() {
                SIGNALS => {
                    while let Ok(Some(info)) = signals.read_signal() {
                        match info.ssi_signo as i32 {
                            libc::SIGCHLD => sup.pool.reap(&sup.shm),
                            libc::SIGHUP => {
                                info!("SIGHUP: checking the MI FIFO and reloading");
                                sup.mi.check(poll.registry());
                                sup.ask_reload(Asker::Sighup);
                            }
                            libc::SIGTERM | libc::SIGINT => stop = true,
                            _ => {}
                        }
                    }
                }
                MI => {
                    if sup.mi_open {
                        for req in sup.mi.on_readable(poll.registry()) {
                            sup.mi_request(ReplyTo::Fifo(req));
                        }
                    }
                }
                WAKE => {
                    // The reload's turn takes the database thread's answer; MI calls are here.
                    let calls: Vec<_> = observers.inbox().drain().collect();
                    for call in calls {
                        sup.mi_request(ReplyTo::Bridge(call));
                    }
                }
                Token(t) if t >= LISTENER_BASE => {
                    sup.accept(u32::try_from(t - LISTENER_BASE).unwrap_or(u32::MAX))
                }
                Token(t) if t >= WORKER_BASE => {
                    let i = t - WORKER_BASE;
                    if event.is_writable() {
                        sup.pool.on_writable(i);
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        sup.pool.on_readable(i, &sup.shm);
                    }
                }
                Token(_) => {}
            }
        }
        if stop {
            break;
        }
        for req in sup.mi.on_tick() {
            sup.mi_request(ReplyTo::Fifo(req));
        }
    }

    info!(
        "stopping{}",
        sup.reloading
            .step()
            .map(|s| format!(" (a reload was {s}: it is abandoned)"))
            .unwrap_or_default()
    );
    sup.notify.send("STOPPING=1\n");
    sup.pool.shutdown(Instant::now() + STOP_WAIT);
    sup.waiting.clear();
    let Supervisor { mi, shm, .. } = sup;
    mi.remove();
    if let Err(e) = shm.remove() {
        warn!("{e}");
    }
    info!("stopped");
    Ok(())
}

/// Register every stream listener (a new one after a reload; an already registered one is left
/// as it is). A removed listener's fd is closed by the reload, which takes it out of the poll set
/// by itself.
fn sync_listeners(registry: &Registry, sockets: &Sockets) {
    for (slot, fd) in sockets.listeners() {
        match registry.register(
            &mut SourceFd(&fd.as_raw_fd()),
            Token(LISTENER_BASE + slot as usize),
            Interest::READABLE,
        ) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => error!("slot {slot}: cannot watch the listener: {e}"),
        }
    }
}

/// Register each worker's control channel once per process (a restarted worker has a new one),
/// for reading, and for writing while messages wait in its outbox (or, for stream workers, while
/// connections wait for one of them: `room_wanted`).
fn register_workers(
    registry: &Registry,
    pool: &Pool,
    registered: &mut [(u64, bool)],
    room_wanted: bool,
) -> std::io::Result<()> {
    for (i, w) in pool.workers().iter().enumerate() {
        let Some(fd) = w.channel_fd() else {
            continue;
        };
        let writable = w.wants_writable() || (room_wanted && w.kind() == WorkerKind::Stream);
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let mut source = SourceFd(&fd.as_raw_fd());
        if registered[i].0 != w.spawns() {
            registry.register(&mut source, Token(WORKER_BASE + i), interest)?;
        } else if registered[i].1 != writable {
            registry.reregister(&mut source, Token(WORKER_BASE + i), interest)?;
        } else {
            continue;
        }
        registered[i] = (w.spawns(), writable);
    }
    Ok(())
}

impl Supervisor {
    /// Everything that moves on with time, once per turn of the loop: liveness of the workers,
    /// the reload in progress, accepts to retry, connections waiting for a worker, restarts, the
    /// FIFO check, the watchdog.
    fn turn(&mut self, registry: &Registry, now: Instant) {
        self.pool.tick(now);
        loop {
            let mut ctx = Ctx {
                sockets: &mut self.sockets,
                pool: &mut self.pool,
                shm: &self.shm,
                tls: &self.config.tls,
                db: &mut self.db,
            };
            match self.reloading.turn(&mut ctx, now) {
                Some(f) => self.finished(f, registry),
                None => break,
            }
        }
        for slot in std::mem::take(&mut self.accept_retry) {
            self.accept(slot);
        }
        self.hand_off_waiting(now);
        // The current set is built only when a worker is due: it costs O(sockets).
        if self.pool.next_restart().is_some_and(|t| t <= now) {
            let served = self.sockets.served();
            self.pool
                .start_due(&self.shm, &served, self.sockets.generation());
        }
        if self.mi.check_due(now) {
            self.mi.check(registry);
        }
        self.notify.ping(now);
    }

    /// How long the loop may sleep.
    fn timeout(&self, now: Instant) -> Duration {
        let mut t = TICK;
        let mut at_most = |d: Option<Duration>| {
            if let Some(d) = d {
                t = t.min(d);
            }
        };
        at_most(
            self.pool
                .next_restart()
                .map(|r| r.saturating_duration_since(now)),
        );
        at_most(self.mi.poll_timeout());
        at_most(
            self.reloading
                .deadline()
                .map(|d| d.saturating_duration_since(now)),
        );
        at_most((!self.accept_retry.is_empty()).then_some(ACCEPT_RETRY));
        at_most(self.notify.until_ping(now));
        t
    }

    /// Every MI request, whatever transport brought it: answered at once, except a reload, which
    /// waits for its turn and is answered when it is done.
    fn mi_request(&mut self, to: ReplyTo) {
        let mut desk = Desk {
            sockets: &self.sockets,
            pool: &self.pool,
            shm: &self.shm,
            refused_connections: self.refused_connections,
            statistics: &mut self.statistics,
            reload_asked: false,
        };
        let result = mi::dispatch(to.request(), self.started, &mut desk);
        if desk.reload_asked && self.reloading.waiting() >= MAX_RELOADS_WAITING {
            let busy = RpcError::new(
                500,
                format!("Too many reloads waiting ({MAX_RELOADS_WAITING}); try again later"),
            );
            self.answer(to, Err(busy));
        } else if desk.reload_asked {
            if let Some(step) = self.reloading.step() {
                info!(
                    "MI {}: queued behind the reload in progress ({step})",
                    to.request().method
                );
            }
            self.ask_reload(Asker::Mi(to));
        } else {
            self.answer(to, result);
        }
    }

    /// Send an MI answer where its request came from.
    fn answer(&mut self, to: ReplyTo, result: Result<Value, RpcError>) {
        match to {
            ReplyTo::Fifo(req) => self.mi.reply(&req, result),
            ReplyTo::Bridge(call) => call.answer(result),
        }
    }

    fn ask_reload(&mut self, asker: Asker) {
        if !self.reloading.is_busy() {
            self.notify.reloading();
        }
        self.reloading.ask(asker);
    }

    /// A reload ended: answer everyone who asked for it, record it.
    fn finished(&mut self, f: Finished<Asker>, registry: &Registry) {
        self.shm.record_reload(f.status(), f.took, 0);
        self.listeners_dirty = true;
        let summary = match &f.result {
            Ok(_) => format!("OK, {} sockets", self.sockets.len()),
            Err(e) => e.message.clone(),
        };
        for asker in f.askers {
            match asker {
                Asker::Start => {
                    match &f.result {
                        Ok(_) => info!("initial load: {} sockets", self.sockets.len()),
                        Err(e) => error!(
                            "initial load: {} {}",
                            e.message,
                            e.data.as_ref().map(|d| d.to_string()).unwrap_or_default()
                        ),
                    }
                    self.open_mi(registry);
                }
                Asker::Sighup => match &f.result {
                    Ok(_) => info!("reload (SIGHUP): {summary}"),
                    Err(e) => warn!("reload (SIGHUP): {}", e.message),
                },
                Asker::Mi(to) => self.answer(to, f.result.clone()),
            }
        }
        if !self.reloading.is_busy() {
            let status = if f.applied {
                format!(
                    "serving {} sockets; last reload: {summary}",
                    self.sockets.len()
                )
            } else if self.notify.ready {
                format!("last reload failed (still serving the table before): {summary}")
            } else {
                format!("initial load failed: {summary}; fix the table and run sockets_reload")
            };
            self.notify.reloaded(f.applied, &status);
        }
    }

    /// Start reading the FIFO (once the initial load is done).
    fn open_mi(&mut self, registry: &Registry) {
        if self.mi_open {
            return;
        }
        if let Err(e) = self.mi.register(registry, MI) {
            error!("MI FIFO {}: cannot watch it: {e}", self.mi.path().display());
            return;
        }
        self.mi_open = true;
        info!(
            "ready: {} UDP workers, {} stream workers, MI FIFO {}, shm {}",
            self.config.sockets_mgm.processes,
            self.config.tcp.workers,
            self.config.mi_fifo.fifo_name.display(),
            self.config.shm.path.display()
        );
    }

    /// Accept every pending connection of the stream socket in `slot` and hand each to a worker.
    fn accept(&mut self, slot: u32) {
        loop {
            let accepted = match self.sockets.listener(slot) {
                Some(fd) => sys::accept(fd),
                None => return,
            };
            match accepted {
                Ok(Some((conn, peer))) => self.place(slot, peer, conn),
                Ok(None) => return,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    ) =>
                {
                    // The pending connections stay in the backlog; edge-triggered readiness
                    // would not say so again: try on the next turn.
                    if self.accept_retry.insert(slot) {
                        warn!("slot {slot}: accept: {e}; trying again on the next turn");
                    }
                    return;
                }
                Err(e) => {
                    warn!("slot {slot}: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Hand an accepted connection to a stream worker, or let it wait (bounded) for one.
    fn place(&mut self, slot: u32, peer: SocketAddr, conn: OwnedFd) {
        let max = u64::from(self.config.tcp.max_connections);
        let shm = &self.shm;
        let load = |rank: u32| {
            shm.worker(WorkerKind::Stream, rank)
                .map_or(0, |r| r.connections())
        };
        // Includes every connection handed over and not yet closed (raised at the hand-off),
        // and the ones waiting here.
        let open: u64 =
            (0..self.config.tcp.workers).map(load).sum::<u64>() + self.waiting.len() as u64;
        if open >= max {
            self.refuse(slot, peer, &format!("max_connections ({max}) reached"));
            return; // dropping `conn` closes it
        }
        if self.waiting.is_empty() {
            match self.pool.hand_off(slot, peer, conn, &self.shm) {
                Ok(_) => return,
                Err(conn) => return self.wait(slot, peer, conn),
            }
        }
        // Behind the ones already waiting: first come, first handed.
        self.wait(slot, peer, conn);
    }

    fn wait(&mut self, slot: u32, peer: SocketAddr, conn: OwnedFd) {
        if self.waiting.len() >= MAX_WAITING {
            self.refuse(
                slot,
                peer,
                &format!("no stream worker takes connections and {MAX_WAITING} already wait"),
            );
            return;
        }
        if self.waiting.is_empty() {
            debug!("slot {slot}: no stream worker takes connections now; {peer} waits");
        }
        self.waiting.push_back(Waiting {
            slot,
            peer,
            conn,
            since: Instant::now(),
        });
    }

    /// Hand the waiting connections to workers that take them again; close the ones that waited
    /// [`HANDOFF_WAIT`].
    fn hand_off_waiting(&mut self, now: Instant) {
        while let Some(front) = self.waiting.front() {
            if now.saturating_duration_since(front.since) >= HANDOFF_WAIT {
                if let Some(w) = self.waiting.pop_front() {
                    self.refuse(
                        w.slot,
                        w.peer,
                        &format!(
                            "no stream worker took it within {} s",
                            HANDOFF_WAIT.as_secs()
                        ),
                    );
                }
                continue;
            }
            if !self.pool.can_hand_off() {
                return;
            }
            let Some(w) = self.waiting.pop_front() else {
                return;
            };
            if let Err(conn) = self.pool.hand_off(w.slot, w.peer, w.conn, &self.shm) {
                self.waiting.push_front(Waiting { conn, ..w });
                return;
            }
        }
    }

    fn refuse(&mut self, slot: u32, peer: SocketAddr, why: &str) {
        self.refused_connections += 1;
        self.shm.add_connections_refused(1);
        warn!("slot {slot}: connection from {peer} refused: {why}");
    }
}

/// What the MI methods see of the supervisor for one request. `sockets_reload` only notes that a
/// reload is asked: the loop queues it and answers when it is done.
struct Desk<'a> {
    sockets: &'a Sockets,
    pool: &'a Pool,
    shm: &'a Table,
    refused_connections: u64,
    statistics: &'a mut crate::stats::Statistics,
    reload_asked: bool,
}

impl mi::Handler for Desk<'_> {
    fn sockets_reload(&mut self) -> Result<Value, RpcError> {
        self.reload_asked = true;
        // Not sent: the reload's own reply is, once it is done.
        Ok(Value::Null)
    }

    fn sockets_list(&mut self) -> Result<Value, RpcError> {
        Ok(self.sockets.list_json())
    }

    fn sockets_status(&mut self) -> Result<Value, RpcError> {
        Ok(methods::sockets_status(
            self.sockets,
            self.pool,
            self.shm,
            self.refused_connections,
        ))
    }

    fn ps(&mut self) -> Result<Value, RpcError> {
        Ok(methods::ps(self.pool))
    }

    fn statistics(&mut self) -> &mut crate::stats::Statistics {
        self.statistics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_needs_name_the_biggest_process_and_its_keys() {
        let mut c = Config::default();
        c.sockets_mgm.max_sockets = 1000;
        c.sockets_mgm.processes = 4;
        c.tcp.workers = 2;
        c.tcp.max_connections = 4096;
        let n = FdNeeds::of(&c);
        assert_eq!(n.supervisor, 1000 + 6 + MAX_WAITING as u64 + FD_RESERVE);
        assert_eq!(n.udp_worker, 1000 + FD_RESERVE);
        assert_eq!(n.stream_worker, 4096 + FD_RESERVE);
        let (needed, who, why) = n.largest(&c);
        assert_eq!((needed, who), (4096 + FD_RESERVE, "a stream worker"));
        assert!(why.contains("max_connections = 4096"), "{why}");

        c.sockets_mgm.max_sockets = 60_000;
        let (needed, who, why) = FdNeeds::of(&c).largest(&c);
        assert_eq!(who, "the supervisor");
        assert_eq!(needed, 60_000 + 6 + MAX_WAITING as u64 + FD_RESERVE);
        assert!(why.contains("max_sockets = 60000"), "{why}");

        c.tcp.workers = 0;
        assert_eq!(FdNeeds::of(&c).stream_worker, 0);
    }
}
