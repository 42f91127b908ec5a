//! How sipsockd is watched and driven from outside the FIFO: MI over HTTP (`[mi_http]`, as
//! OpenSIPS `mi_http`), MI over datagrams (`[mi_datagram]`, as `mi_datagram`) and Prometheus
//! `/metrics` (`[metrics]`).
//!
//! All three run on one thread of their own ([`server`]), started after the privilege drop by
//! [`start`], one call from the daemon's `run`. MI calls reach the supervisor's loop through the
//! bridge ([`crate::mi::bridge`]), exactly as FIFO requests do; the loop's only part is to drain
//! [`Observers::inbox`] when its token fires. Metrics are read from the shared table on this
//! thread. This module never touches the daemon's state; a slow client, a scrape or a password
//! check cannot stall the loop.
//!
//! - [`http`]: HTTP/1.x framing and responses (pure);
//! - [`mi_http`]: what an HTTP request means for MI, and the response of a result (pure);
//! - [`mi_datagram`]: the datagram requests and replies (pure);
//! - [`auth`]: the users file and basic-auth checks (on a verifier thread);
//! - [`metrics`]: the OpenMetrics text of a snapshot;
//! - [`server`]: the event loop.

pub mod auth;
pub mod http;
pub mod metrics;
pub mod mi_datagram;
pub mod mi_http;
mod server;

use crate::config::{Config, DatagramSocket};
use crate::mi::bridge::{self, MiInbox};
use log::info;
use mio::{Poll, Waker};
use server::{Datagram, Done, MiSettings, Parts, Role, Server};
pub use server::{MAX_CONNECTIONS, MI_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Why an endpoint could not be set up (at start: the daemon then does not start).
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// A socket could not be bound.
    #[error("{key} = {value:?}: cannot bind: {source}")]
    Bind {
        /// The configuration key (`mi_http.listen`).
        key: &'static str,
        /// Its value.
        value: String,
        /// Why.
        source: std::io::Error,
    },
    /// The unix datagram socket's path is taken.
    #[error("mi_datagram.socket = {path:?}: {reason}")]
    SocketPath {
        /// The path.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The users file of `[mi_http] auth_file` is unreadable or has a bad line.
    #[error("mi_http.auth_file = {path:?}{}: {reason}", if *line > 0 { format!(", line {line}") } else { String::new() })]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// The line at fault (from 1; 0 for the whole file).
        line: usize,
        /// Why.
        reason: String,
    },
    /// The shared table could not be mapped for `/metrics`.
    #[error("metrics: {0}")]
    Table(#[from] shm::ShmError),
    /// The thread or its poll could not be set up.
    #[error("observers: {0}")]
    Io(#[from] std::io::Error),
}

/// The running endpoints: the loop side of their MI bridge, and their thread.
#[derive(Debug)]
pub struct Observers {
    inbox: MiInbox,
    stop: Arc<AtomicBool>,
    waker: Option<Arc<Waker>>,
    thread: Option<JoinHandle<()>>,
}

impl Observers {
    /// The MI calls waiting for the supervisor's loop (drain it when its token fires).
    pub fn inbox(&self) -> &MiInbox {
        &self.inbox
    }
}

impl Drop for Observers {
    /// Stops the thread (it removes the unix datagram socket) and waits for it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(waker) = &self.waker {
            let _ = waker.wake();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds what `config` turns on and starts their thread; MI calls wake the supervisor's loop with
/// `waker` (the loop's one waker, shared with its database thread). With nothing configured, no
/// thread runs.
pub fn start(config: &Config, waker: Arc<Waker>) -> Result<Observers, ObserveError> {
    let (mi_bridge, inbox) = bridge::bridge_waking(waker);
    let stop = Arc::new(AtomicBool::new(false));
    let mut listeners = Vec::new();
    let mut mi = None;
    if let Some(addr) = config.mi_http.listen {
        let auth_users = match &config.mi_http.auth_file {
            Some(path) => Some(auth::Users::load(path)?),
            None => None,
        };
        listeners.push((bind_tcp("mi_http.listen", addr)?, Role::Mi));
        mi = Some((auth_users, &config.mi_http));
        info!(
            "MI over HTTP on http://{addr}/{} (allowed: {})",
            config.mi_http.root,
            config
                .mi_http
                .allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut table = None;
    if let Some(addr) = config.metrics.listen {
        table = Some(shm::Reader::open(&config.shm.path)?);
        listeners.push((bind_tcp("metrics.listen", addr)?, Role::Metrics));
        info!("metrics on http://{addr}/metrics");
    }
    let datagram = match &config.mi_datagram.socket {
        None => None,
        Some(DatagramSocket::Udp(addr)) => {
            let socket = mio::net::UdpSocket::bind(*addr).map_err(|source| ObserveError::Bind {
                key: "mi_datagram.socket",
                value: format!("udp:{addr}"),
                source,
            })?;
            info!("MI over datagrams on udp:{addr}");
            Some(Datagram::Udp(socket))
        }
        Some(DatagramSocket::Unix(path)) => {
            let socket = bind_unix(path, config.mi_datagram.mode())?;
            info!("MI over datagrams on {}", path.display());
            Some(Datagram::Unix(socket, path.clone()))
        }
    };
    if listeners.is_empty() && datagram.is_none() {
        return Ok(Observers {
            inbox,
            stop,
            waker: None,
            thread: None,
        });
    }
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), server::WAKE_TOKEN)?);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();
    let mi = match mi {
        None => None,
        Some((users, settings)) => {
            let auth = match users {
                None => None,
                Some(users) => {
                    let (tx, waker) = (done_tx.clone(), waker.clone());
                    Some(auth::Auth::start(users, move |verdict| {
                        let _ = tx.send(Done::Auth(verdict));
                        let _ = waker.wake();
                    })?)
                }
            };
            Some(MiSettings {
                root: settings.root.clone(),
                allow: settings.allow.clone(),
                auth,
            })
        }
    };
    let unix_path = match &datagram {
        Some(Datagram::Unix(_, path)) => Some(path.clone()),
        _ => None,
    };
    let server = Server::new(Parts {
        poll,
        waker: waker.clone(),
        done: (done_tx, done_rx),
        listeners,
        datagram,
        bridge: mi_bridge,
        mi,
        table,
        stop: stop.clone(),
    });
    let spawned = server.and_then(|server| {
        std::thread::Builder::new()
            .name("observers".into())
            .spawn(move || server.run())
    });
    match spawned {
        Ok(thread) => Ok(Observers {
            inbox,
            stop,
            waker: Some(waker),
            thread: Some(thread),
        }),
        Err(e) => {
            if let Some(path) = unix_path {
                let _ = std::fs::remove_file(path);
            }
            Err(e.into())
        }
    }
}

fn bind_tcp(
    key: &'static str,
    addr: std::net::SocketAddr,
) -> Result<mio::net::TcpListener, ObserveError> {
    mio::net::TcpListener::bind(addr).map_err(|source| ObserveError::Bind {
        key,
        value: addr.to_string(),
        source,
    })
}

/// Binds the unix datagram socket at `path` with permission bits `mode`. A socket file left by
/// a dead process is replaced; a live one (it takes a connect) or any other file is refused.
fn bind_unix(path: &Path, mode: u32) -> Result<mio::net::UnixDatagram, ObserveError> {
    let taken = |reason: &str| ObserveError::SocketPath {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let probe = std::os::unix::net::UnixDatagram::unbound()?;
            if probe.connect(path).is_ok() {
                return Err(taken("another process listens on it"));
            }
            std::fs::remove_file(path).map_err(|e| taken(&format!("cannot replace it: {e}")))?;
        }
        Ok(_) => return Err(taken("exists and is not a socket")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(taken(&e.to_string())),
    }
    let socket = mio::net::UnixDatagram::bind(path).map_err(|source| ObserveError::Bind {
        key: "mi_datagram.socket",
        value: path.display().to_string(),
        source,
    })?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        let _ = std::fs::remove_file(path);
        return Err(taken(&format!("cannot set its mode {mode:o}: {e}")));
    }
    Ok(socket)
}
