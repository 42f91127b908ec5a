//! sipsockd's worker processes.
//!
//! A worker is started by the supervisor (fork + exec of the same binary, hidden `worker`
//! subcommand), receives socket fds over its own Unix-domain control socket (SCM_RIGHTS), and
//! serves SIP on them. It never binds, never reads the database and never writes a slot of the
//! shared table: it only bumps its own counters there.
//!
//! Modules, from the wire up:
//! - [`sip`]: zero-copy SIP parsing and stream framing;
//! - [`handler`]: the stateless responder, independent of the transport;
//! - [`relay`]: the stateless relay's decision for one message (route table, tokens, splicing),
//!   pure like the responder;
//! - [`ipc`]: the control messages; [`channel`]: the socket that carries them with their fds;
//! - `control`: the worker's side of the channel that both kinds share (the entry handshake,
//!   checked receiving, replies);
//! - [`udp`]: the UDP serving loop;
//! - [`stream`]: the stream worker (TCP, TLS, WS, WSS connections handed over by the supervisor);
//! - `sys`: every system call that needs `unsafe` (fd passing, recvmmsg/sendmmsg, epoll).
#![deny(missing_docs)]

pub mod channel;
mod control;
pub mod handler;
pub mod ipc;
pub mod relay;
pub mod sip;
pub mod stream;
mod sys;
pub mod udp;

/// How a unit test that cannot run its peer fails under CI or is recorded as skipped.
#[cfg(test)]
#[path = "../tests/common/skip.rs"]
mod skip;

pub use channel::{Channel, ChannelError};
pub use control::{ServeError, EXIT_BAD_CONTROL};
pub use handler::{Outcome, Responder};

/// What the supervisor passes on the `worker` command line.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The worker's pool.
    pub kind: shm::WorkerKind,
    /// Rank in the pool.
    pub rank: u32,
    /// The inherited control socket.
    pub control_fd: i32,
    /// The supervisor's pid (the worker exits when its parent is gone).
    pub parent: i32,
}

/// Why a worker process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `prctl(PR_SET_PDEATHSIG)` failed.
    #[error("cannot ask for a parent-death signal: {0}")]
    DeathSignal(#[source] std::io::Error),
    /// The inherited control fd is not usable.
    #[error("control fd {fd}: {source}")]
    ControlFd {
        /// The fd number given with `--control-fd`.
        fd: i32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Run a worker of `kind` on `control` until `Shutdown` (0), the supervisor closing its end (0),
/// or a control message it cannot take ([`EXIT_BAD_CONTROL`]): [`udp::serve`] or
/// [`stream::serve`].
///
/// In the `worker` process this is called by [`run`]; tests call it on a thread with one end of
/// [`Channel::pair`].
pub fn serve(control: Channel, kind: shm::WorkerKind, rank: u32) -> Result<u8, ServeError> {
    match kind {
        shm::WorkerKind::Udp => udp::serve(control, rank),
        shm::WorkerKind::Stream => stream::serve(control, rank),
    }
}

/// The worker's main: returns the process exit code (0: told to stop, or the supervisor is gone;
/// [`EXIT_BAD_CONTROL`]: a control message it could not take).
pub fn run(args: WorkerArgs) -> Result<u8, Box<dyn std::error::Error>> {
    // First, so that no window is left where the supervisor dies unnoticed; then check it did not
    // die before the prctl.
    sys::kill_me_with_parent().map_err(StartError::DeathSignal)?;
    if sys::parent_pid() != args.parent {
        return Ok(0);
    }
    let fd = sys::adopt_inherited_fd(args.control_fd).map_err(|source| StartError::ControlFd {
        fd: args.control_fd,
        source,
    })?;
    let socket_type = sys::socket_type(std::os::fd::AsFd::as_fd(&fd));
    if !matches!(socket_type, Ok(nix::sys::socket::SockType::SeqPacket)) {
        return Err(StartError::ControlFd {
            fd: args.control_fd,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a SOCK_SEQPACKET socket",
            ),
        }
        .into());
    }
    Ok(serve(Channel::from_fd(fd), args.kind, args.rank)?)
}
