//! `sipsockd run`: the supervisor's event loop.
//!
//! Start-up order matters and is the contract with init systems: signals blocked (before any thread
//! exists), open-file limit raised, database reachable (else exit 1), shared table created, workers
//! started, initial load applied, and only then the MI FIFO created and systemd told `READY=1`.
//! After that nothing that comes from outside (a reload, a dying worker, a bad request) stops the
//! loop; only SIGTERM/SIGINT do.

use crate::config::Config;
use crate::db::Database;
use crate::mi::methods::{self, Reloaded};
use crate::mi::{self, MiServer, RpcError};
use crate::pool::{Pool, Served};
use crate::reload::Sockets;
use crate::row::{validate_table, SystemResolver};
use crate::sys;
use log::{error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde_json::Value;
use shm::Table;
use shm::WorkerKind;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::time::{Duration, Instant, SystemTime};
use worker::ipc::StreamSettings;

const SIGNALS: Token = Token(0);
const MI: Token = Token(1);
/// MI calls from the HTTP and datagram transports' thread (`crate::observe`).
const BRIDGE: Token = Token(2);
const WORKER_BASE: usize = 16;
/// Listener tokens: LISTENER_BASE + slot (slots are below 65536, workers far fewer).
const LISTENER_BASE: usize = 1 << 20;

/// Why the daemon could not start (once started, it only stops on a signal).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Signal handling could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] nix::Error),
    /// The open-file limit is too low for `max_sockets`.
    #[error(
        "the open-file limit ({limit}) is too low for max_sockets = {max_sockets}: \
         raise it (ulimit -n / LimitNOFILE=) to at least {needed}"
    )]
    FileLimit {
        /// The limit in force.
        limit: u64,
        /// The configured max_sockets.
        max_sockets: u32,
        /// What would do.
        needed: u64,
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

/// Everything the MI methods act on.
struct State {
    config: Config,
    db: Option<Database>,
    shm: Table,
    pool: Pool,
    sockets: Sockets,
    resolver: SystemResolver,
    /// Connections refused because `[tcp] max_connections` was reached or no worker took them.
    refused_connections: u64,
    /// What the statistics MI methods read, and their reset baselines.
    statistics: crate::stats::Statistics,
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let started = SystemTime::now();
    let signals = sys::signal_fd().map_err(DaemonError::Signals)?;
    let limit = sys::raise_nofile_limit().unwrap_or_else(|_| sys::nofile_limit());
    // Per process: every socket once (the supervisor's copy, or a worker's), one control channel
    // per worker, and room for the database, the FIFO, the shm file and a few more.
    let needed = u64::from(config.sockets_mgm.max_sockets)
        + u64::from(config.sockets_mgm.processes)
        + u64::from(config.tcp.workers)
        + 64;
    if limit < needed {
        return Err(DaemonError::FileLimit {
            limit,
            max_sockets: config.sockets_mgm.max_sockets,
            needed,
        });
    }
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
    // The FIFO exists from here on, but is read only once the initial load is applied: a client
    // that writes early waits for its answer. It is created before the privilege drop so that it
    // can live in a directory only root may write to.
    let mut mi_server = match MiServer::create(&config.mi_fifo) {
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
    let pool = Pool::new(
        mgm.processes,
        config.tcp.workers,
        config.sip.reply_code,
        config.sip.reply_reason.clone(),
        settings,
    );
    let mut state = State {
        statistics: crate::stats::Statistics::new(config.shm.path.clone()),
        config,
        db: Some(db),
        shm,
        pool,
        sockets: Sockets::default(),
        resolver: SystemResolver,
        refused_connections: 0,
    };
    state.pool.start_due(&state.shm, &Served::default(), 0);
    let mut next_start = state.pool.next_restart();

    match state.reload() {
        Ok(_) => info!("initial load: {} sockets", state.sockets.len()),
        Err(e) => error!(
            "initial load: {} {}",
            e.message,
            e.data.as_ref().map(|d| d.to_string()).unwrap_or_default()
        ),
    }

    let mut poll = Poll::new()?;
    poll.registry().register(
        &mut SourceFd(&signals.as_raw_fd()),
        SIGNALS,
        Interest::READABLE,
    )?;
    mi_server.register(poll.registry(), MI)?;
    let observers = match crate::observe::start(&state.config, poll.registry(), BRIDGE) {
        Ok(o) => o,
        Err(e) => {
            state
                .pool
                .shutdown(Instant::now() + Duration::from_millis(1500));
            mi_server.remove();
            let _ = state.shm.remove();
            return Err(e.into());
        }
    };
    if let Err(e) = sys::notify_ready() {
        warn!("cannot notify systemd: {e}");
    }
    info!(
        "ready: {} UDP workers, {} stream workers, MI FIFO {}, shm {}",
        state.config.sockets_mgm.processes,
        state.config.tcp.workers,
        state.config.mi_fifo.fifo_name.display(),
        state.config.shm.path.display()
    );

    let mut registered: Vec<u64> = vec![0; state.pool.workers().len()];
    let mut listening: HashMap<u32, RawFd> = HashMap::new();
    let mut synced_generation = None;
    let mut events = Events::with_capacity(64);
    loop {
        register_workers(&poll, &state.pool, &mut registered)?;
        if synced_generation != Some(state.sockets.generation()) {
            sync_listeners(&poll, &state.sockets, &mut listening);
            synced_generation = Some(state.sockets.generation());
        }
        let now = Instant::now();
        let mut timeout = next_start.map(|t| t.saturating_duration_since(now));
        if let Some(t) = mi_server.poll_timeout() {
            timeout = Some(timeout.map_or(t, |x| x.min(t)));
        }
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        let mut stop = false;
        for event in events.iter() {
            match event.token() {
                SIGNALS => {
                    while let Ok(Some(info)) = signals.read_signal() {
                        match info.ssi_signo as i32 {
                            libc::SIGCHLD => state.pool.reap(&state.shm),
                            libc::SIGHUP => {
                                info!("SIGHUP: reloading");
                                match state.reload() {
                                    Ok(_) => info!("reload: OK"),
                                    Err(e) => warn!("reload: {}", e.message),
                                }
                            }
                            libc::SIGTERM | libc::SIGINT => stop = true,
                            _ => {}
                        }
                    }
                }
                MI => {
                    for req in mi_server.on_readable(poll.registry()) {
                        let result = mi::dispatch(&req, started, &mut state);
                        mi_server.reply(&req, result);
                    }
                }
                BRIDGE => {
                    for call in observers.inbox().drain() {
                        let result = mi::dispatch(&call.request, started, &mut state);
                        call.answer(result);
                    }
                }
                Token(t) if t >= LISTENER_BASE => {
                    state.accept(u32::try_from(t - LISTENER_BASE).unwrap_or(u32::MAX))
                }
                Token(t) if t >= WORKER_BASE => state.pool.on_readable(t - WORKER_BASE, &state.shm),
                Token(_) => {}
            }
        }
        if stop {
            break;
        }
        for req in mi_server.on_tick() {
            let result = mi::dispatch(&req, started, &mut state);
            mi_server.reply(&req, result);
        }
        // The current set is built only when a worker is due: it costs O(sockets).
        if state
            .pool
            .next_restart()
            .is_some_and(|t| t <= Instant::now())
        {
            let served = state.sockets.served();
            state
                .pool
                .start_due(&state.shm, &served, state.sockets.generation());
        }
        next_start = state.pool.next_restart();
    }

    info!("stopping");
    state
        .pool
        .shutdown(Instant::now() + Duration::from_millis(1500));
    mi_server.remove();
    if let Err(e) = state.shm.remove() {
        warn!("{e}");
    }
    info!("stopped");
    Ok(())
}

/// Register new stream listeners after a reload. A removed listener's fd is closed by the reload,
/// which takes it out of the poll set by itself.
fn sync_listeners(poll: &Poll, sockets: &Sockets, listening: &mut HashMap<u32, RawFd>) {
    let current: HashMap<u32, RawFd> = sockets
        .listeners()
        .map(|(slot, fd)| (slot, fd.as_raw_fd()))
        .collect();
    for (slot, raw) in &current {
        if listening.get(slot) == Some(raw) {
            continue;
        }
        if let Err(e) = poll.registry().register(
            &mut SourceFd(raw),
            Token(LISTENER_BASE + *slot as usize),
            Interest::READABLE,
        ) {
            error!("slot {slot}: cannot watch the listener: {e}");
        }
    }
    *listening = current;
}

/// Register each worker's control channel once per process (a restarted worker has a new one).
fn register_workers(poll: &Poll, pool: &Pool, registered: &mut [u64]) -> std::io::Result<()> {
    for (i, w) in pool.workers().iter().enumerate() {
        if registered[i] == w.spawns() {
            continue;
        }
        if let Some(fd) = w.channel_fd() {
            poll.registry().register(
                &mut SourceFd(&fd.as_raw_fd()),
                Token(WORKER_BASE + i),
                Interest::READABLE,
            )?;
            registered[i] = w.spawns();
        }
    }
    Ok(())
}

impl State {
    /// Accept every pending connection of the stream socket in `slot` and hand each to a worker.
    fn accept(&mut self, slot: u32) {
        let max = u64::from(self.config.tcp.max_connections);
        loop {
            let accepted = match self.sockets.listener(slot) {
                Some(fd) => sys::accept(fd),
                None => return,
            };
            let (conn, peer) = match accepted {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    warn!("slot {slot}: accept: {e}");
                    return;
                }
            };
            let shm = &self.shm;
            let load = |rank: u32| {
                shm.worker(WorkerKind::Stream, rank)
                    .map_or(0, |r| r.connections())
            };
            // Includes every connection handed over and not yet closed (raised at the hand-off).
            let open: u64 = (0..self.config.tcp.workers).map(load).sum();
            if open >= max {
                self.refused_connections += 1;
                self.shm.add_connections_refused(1);
                warn!(
                    "slot {slot}: connection from {peer} refused: max_connections ({max}) reached"
                );
                continue; // dropping `conn` closes it
            }
            if let Err(conn) = self.pool.hand_off(slot, peer, conn, &self.shm) {
                self.refused_connections += 1;
                self.shm.add_connections_refused(1);
                warn!(
                    "slot {slot}: connection from {peer} refused: no stream worker could take it"
                );
                drop(conn);
            }
        }
    }

    /// `sockets_reload`, SIGHUP and the initial load, recorded in the table's reload statistics.
    fn reload(&mut self) -> Result<Value, RpcError> {
        let t0 = Instant::now();
        let result = self.reload_table();
        let status = result
            .as_ref()
            .map_or_else(|e| u32::try_from(e.code).unwrap_or(500), |_| 200);
        self.shm.record_reload(status, t0.elapsed(), 0);
        result
    }

    fn reload_table(&mut self) -> Result<Value, RpcError> {
        let mgm = &self.config.sockets_mgm;
        let db = match &mut self.db {
            Some(db) => db,
            None => match Database::connect(mgm) {
                Ok(db) => self.db.insert(db),
                Err(e) => return methods::reload_reply(Reloaded::Database(&e)),
            },
        };
        let rows = match db.load_rows() {
            Ok(rows) => rows,
            Err(e) => {
                // Reconnect at the next reload: the connection may be what failed.
                self.db = None;
                return methods::reload_reply(Reloaded::Database(&e));
            }
        };
        let v = validate_table(&rows, mgm.max_sockets, mgm.invalid_rows, &self.resolver);
        if v.refused {
            return methods::reload_reply(Reloaded::Refused(&v.errors));
        }
        let report = self
            .sockets
            .apply(&v.defs, &self.config.tls, &mut self.pool, &self.shm);
        for i in 0..self.pool.workers().len() {
            self.pool.on_readable(i, &self.shm);
        }
        for w in &report.workers {
            warn!(
                "reload generation {}: {} worker {}: {}",
                report.generation, w.kind, w.rank, w.what
            );
        }
        methods::reload_reply(Reloaded::Applied {
            skipped: &v.errors,
            failures: &report.failures,
        })
    }
}

impl mi::Handler for State {
    fn sockets_reload(&mut self) -> Result<Value, RpcError> {
        self.reload()
    }

    fn sockets_list(&mut self) -> Result<Value, RpcError> {
        Ok(self.sockets.list_json())
    }

    fn sockets_status(&mut self) -> Result<Value, RpcError> {
        Ok(methods::sockets_status(
            &self.sockets,
            &self.pool,
            &self.shm,
            self.refused_connections,
        ))
    }

    fn statistics(&mut self) -> &mut crate::stats::Statistics {
        &mut self.statistics
    }

    fn ps(&mut self) -> Result<Value, RpcError> {
        Ok(methods::ps(&self.pool))
    }
}
