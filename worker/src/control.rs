//! The worker's side of its control channel, the same for both kinds of worker: the entry
//! handshake (`Hello`, then `Setup` with the shm file), taking the next control message with its
//! fd count and its addressee checked, and telling the supervisor something.
//!
//! [`crate::udp`] and [`crate::stream`] call this module; it calls neither, and serves nothing.
//! What a message means for a worker stays with the worker.

use crate::channel::{fds_carried, message_name, Channel, ChannelError, Inbound};
use crate::handler::Responder;
use crate::ipc::{FromWorker, StreamSettings, ToWorker};
use shm::{Attached, WorkerKind};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Exit status after a control message the worker does not understand (the supervisor starts
/// a new worker and gives it the whole current state).
pub const EXIT_BAD_CONTROL: u8 = 3;

/// How long a worker waits for room in its control socket to tell the supervisor something.
const TELL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a worker stopped other than by `Shutdown` or the supervisor closing the channel.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The control socket failed.
    #[error("control socket: {0}")]
    Control(#[source] io::Error),
    /// The shared table could not be attached.
    #[error("shared memory: {0}")]
    Shm(#[from] shm::ShmError),
    /// The shared table has no record for this worker.
    #[error("the shared table has no record for {kind} worker {rank}")]
    NoRecord {
        /// The worker's pool.
        kind: WorkerKind,
        /// The worker's rank.
        rank: u32,
    },
    /// epoll failed.
    #[error("epoll: {0}")]
    Poll(#[source] io::Error),
}

/// What to do after a control message.
pub(crate) enum Flow {
    Continue,
    Exit(u8),
}

/// What `Setup` gave a worker.
pub(crate) struct Setup {
    pub(crate) responder: Responder,
    /// Connection limits (used by stream workers).
    pub(crate) stream: StreamSettings,
    /// The shared table, with a record for this worker.
    pub(crate) shm: Attached,
}

/// The end of the entry handshake.
pub(crate) enum Entry {
    /// Set up: serve.
    Serve(Setup),
    /// Stop with this exit status (the supervisor left, or sent something else than `Setup`).
    Exit(u8),
}

/// Say `Hello`, then wait for `Setup` and attach the shm file it brings.
pub(crate) fn enter(
    control: &Channel,
    kind: WorkerKind,
    rank: u32,
    buf: &mut Vec<u8>,
) -> Result<Entry, ServeError> {
    let hello = FromWorker::Hello {
        rank,
        pid: std::process::id(),
    };
    match control.send_from_worker(&hello) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Entry::Exit(0)),
        Err(e) => return Err(ServeError::Control(e)),
    }
    let (responder, stream, shm_fd) = match control.recv_to_worker(buf) {
        Ok(None) => return Ok(Entry::Exit(0)),
        Ok(Some(Inbound {
            msg:
                ToWorker::Setup {
                    reply_code,
                    reply_reason,
                    stream,
                },
            mut fds,
            ..
        })) if fds.len() == 1 => (Responder::new(reply_code, &reply_reason), stream, fds.pop()),
        Ok(Some(Inbound { msg, fds, fds_lost })) => {
            log::error!(
                "{kind} worker {rank}: expected setup with one fd, got {} with {}{}",
                message_name(&msg),
                fds.len(),
                if fds_lost {
                    " (the others lost to the open-file limit)"
                } else {
                    ""
                }
            );
            return Ok(Entry::Exit(EXIT_BAD_CONTROL));
        }
        Err(ChannelError::Io(e)) => return Err(ServeError::Control(e)),
        Err(e) => {
            log::error!("{kind} worker {rank}: {e}");
            return Ok(Entry::Exit(EXIT_BAD_CONTROL));
        }
    };
    let Some(shm_fd) = shm_fd else {
        return Ok(Entry::Exit(EXIT_BAD_CONTROL));
    };
    let shm = Attached::from_file(File::from(shm_fd))?;
    if shm.worker(kind, rank).is_none() {
        return Err(ServeError::NoRecord { kind, rank });
    }
    log::debug!("{kind} worker {rank}: set up");
    Ok(Entry::Serve(Setup {
        responder,
        stream,
        shm,
    }))
}

/// The next control message.
pub(crate) enum Received {
    /// A message for this kind of worker, with its fds (an `Add`'s count is the worker's to
    /// check, entry by entry; any other message carries what [`fds_carried`] says, except a
    /// `Conn` whose connection was lost to the open-file limit: it comes with none, and the
    /// worker counts it refused).
    Message(ToWorker, Vec<OwnedFd>),
    /// None waiting (the channel is non-blocking).
    Empty,
    /// Stop with this exit status: the supervisor is gone (0), or the message could not be taken
    /// ([`EXIT_BAD_CONTROL`]; its fds are closed).
    Exit(u8),
}

/// Take the next control message of a `kind` worker.
pub(crate) fn receive(
    control: &Channel,
    buf: &mut Vec<u8>,
    kind: WorkerKind,
    rank: u32,
) -> Result<Received, ServeError> {
    let (msg, fds, fds_lost) = loop {
        match control.recv_to_worker(buf) {
            Ok(Some(Inbound { msg, fds, fds_lost })) => break (msg, fds, fds_lost),
            Ok(None) => {
                log::debug!("{kind} worker {rank}: supervisor closed the control socket");
                return Ok(Received::Exit(0));
            }
            Err(ChannelError::Io(e)) => match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(Received::Empty),
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::ConnectionReset => return Ok(Received::Exit(0)),
                io::ErrorKind::InvalidData => {
                    log::error!("{kind} worker {rank}: bad control message: {e}");
                    return Ok(Received::Exit(EXIT_BAD_CONTROL));
                }
                _ => return Err(ServeError::Control(e)),
            },
            Err(e) => {
                log::error!("{kind} worker {rank}: {e}");
                return Ok(Received::Exit(EXIT_BAD_CONTROL));
            }
        }
    };
    let refuse = |why: String| {
        log::error!("{kind} worker {rank}: {why}");
        Ok(Received::Exit(EXIT_BAD_CONTROL))
    };
    match (&msg, kind) {
        (ToWorker::Setup { .. }, _) => return refuse("setup received twice".into()),
        (ToWorker::Describe { .. } | ToWorker::Conn { .. }, WorkerKind::Udp)
        | (ToWorker::Add { .. } | ToWorker::Update { .. }, WorkerKind::Stream) => {
            let other = match kind {
                WorkerKind::Udp => WorkerKind::Stream,
                WorkerKind::Stream => WorkerKind::Udp,
            };
            return refuse(format!(
                "a {} message is for {other} workers",
                message_name(&msg)
            ));
        }
        _ => {}
    }
    if fds_lost {
        // The process is at its open-file limit: the kernel closed the fds it could not install.
        // Not a broken channel: the message is whole, and what its fds were is refused.
        log::warn!(
            "{kind} worker {rank}: open-file limit reached: {} of the {} fds of a {} message \
             could not be received (closed)",
            fds_carried(&msg).saturating_sub(fds.len()),
            fds_carried(&msg),
            message_name(&msg)
        );
    }
    // An Add with the wrong count is answered entry by entry by the udp worker; a Conn whose
    // connection was lost to the limit is refused by the stream worker.
    let lost_conn = fds_lost && fds.is_empty() && matches!(msg, ToWorker::Conn { .. });
    if !matches!(msg, ToWorker::Add { .. }) && !lost_conn && fds.len() != fds_carried(&msg) {
        return refuse(format!(
            "a {} message carried {} fds",
            message_name(&msg),
            fds.len()
        ));
    }
    Ok(Received::Message(msg, fds))
}

/// Send `msg` to the supervisor: `Exit(0)` when it is gone. On a non-blocking channel a full
/// queue is waited out (the supervisor reads its workers' channels, and replies are one per
/// reload step), for at most [`TELL_TIMEOUT`].
pub(crate) fn tell(control: &Channel, msg: &FromWorker) -> Result<Flow, ServeError> {
    let deadline = Instant::now() + TELL_TIMEOUT;
    loop {
        match control.send_from_worker(msg) {
            Ok(()) => return Ok(Flow::Continue),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                return Ok(Flow::Exit(0))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(ServeError::Control(e)),
        }
    }
}
