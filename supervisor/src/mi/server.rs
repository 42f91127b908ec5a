//! The MI FIFO server: the FIFO's read end in the daemon's event loop, and the replies.
//!
//! It owns the server FIFO (created at start, unlinked by [`MiServer::remove`]) and every reply
//! pipe it has opened. It must never block the daemon: the FIFO is read without blocking, a reply
//! FIFO is opened without blocking (a client that has not opened its end yet is retried every
//! [`RETRY`] for [`OPEN_WAIT`]) and written in pieces as the client drains it. Nothing is ever
//! written to a path that is not a FIFO in `reply_dir` (no symlink, no other directory), nor to a
//! reply FIFO whose owner is not root, the daemon's user, or a member of the MI FIFO's group.
//!
//! The FIFO is ours alone:
//! - `fifo_mode` with write permission for others is refused at start (anyone could reload);
//! - the daemon holds an exclusive `flock` on the FIFO for its life (on an fd of its own, as the
//!   read end is reopened), so a second daemon with the same `fifo_name` refuses to start and
//!   names the pid holding it; a FIFO left by a dead daemon (unlocked) is replaced;
//! - it is created under a temporary name, locked, then linked into place (or renamed over a
//!   stale one while holding the stale one's lock), so no other daemon can take it in between;
//! - [`MiServer::check`] (each turn of the loop, at most every [`CHECK_EVERY`], and on SIGHUP)
//!   notices a FIFO deleted or replaced by another inode and creates ours again (logged), unless
//!   the new one is another live daemon's or not a FIFO (logged, left alone);
//! - on stop only the FIFO we created (same inode) is removed.
//!
//! There is no dummy writer keeping the FIFO open: when the last writer closes, a read returns
//! end-of-file, which ends a request a writer left unfinished; the read end is then reopened,
//! because a FIFO whose writers have all gone stays "hung up" and would wake the loop forever.
//!
//! A request left unfinished by a writer that keeps the FIFO open is ended by [`MiServer::on_tick`]
//! at its deadline ([`REQUEST_STALL`](super::proto::REQUEST_STALL)); `on_tick` returns the requests
//! it had swallowed, for the loop to run like those of [`MiServer::on_readable`].

use super::proto::{check_reply_name, encode_reply, Frame, Request, RequestParser, RpcError};
use crate::config::MiFifo;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::Mode;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often [`MiServer::check`] looks at the FIFO's path (the issue's bound is 1 s).
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// How often a pending reply is retried (opening the client's FIFO, or writing more of it).
pub const RETRY: Duration = Duration::from_millis(1);

/// How long a client has to open its reply FIFO for reading before its reply is dropped.
pub const OPEN_WAIT: Duration = Duration::from_secs(5);

/// How long a client may leave a partly written reply unread before it is dropped.
pub const WRITE_STALL: Duration = Duration::from_secs(10);

/// Most replies waiting at once; beyond it the oldest is dropped (clients that never read).
pub const MAX_PENDING: usize = 256;

/// Size of one read from the FIFO.
const READ_CHUNK: usize = 64 * 1024;

/// Why the MI FIFO could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MiError {
    /// `fifo_mode` is not an octal mode.
    #[error("invalid [mi_fifo] fifo_mode {0:?}: expected an octal mode such as \"0660\"")]
    Mode(String),
    /// `fifo_mode` lets any local user write requests (reload the sockets, ...).
    #[error(
        "[mi_fifo] fifo_mode = {0:?} gives write permission to others: any local user could run \
         MI commands (sockets_reload); use a mode without it, such as \"0660\" or \"0600\""
    )]
    WorldWritable(String),
    /// Another live daemon holds the FIFO.
    #[error(
        "MI FIFO {} is in use by another sipsockd ({}); stop it or set another [mi_fifo] fifo_name",
        path.display(),
        match pid { Some(p) => format!("pid {p}"), None => "pid unknown".to_string() }
    )]
    Busy {
        /// The FIFO.
        path: PathBuf,
        /// The pid holding its lock, when /proc/locks tells.
        pid: Option<u32>,
    },
    /// Something other than a FIFO is at `fifo_name`; it is left alone.
    #[error("{}: exists and is not a FIFO (remove it or set another [mi_fifo] fifo_name)", .0.display())]
    NotAFifo(PathBuf),
    /// A system call on the FIFO failed.
    #[error("cannot {what} MI FIFO {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The FIFO.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MiError {
    let path = path.to_owned();
    move |source| MiError::Io { what, path, source }
}

/// Parses `fifo_mode` (`"0660"`, `"660"` or `"0o660"`).
fn parse_mode(text: &str) -> Result<u32, MiError> {
    let digits = text.trim();
    let digits = digits.strip_prefix("0o").unwrap_or(digits);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && mode <= 0o7777 => Ok(mode),
        _ => Err(MiError::Mode(text.to_owned())),
    }
}

/// Refuses a mode that lets others write (checked on the parsed mode).
fn check_mode(text: &str) -> Result<u32, MiError> {
    let mode = parse_mode(text)?;
    if mode & 0o002 != 0 {
        return Err(MiError::WorldWritable(text.to_owned()));
    }
    Ok(mode)
}

/// The device and inode of a file: what tells our FIFO from another at the same path.
fn ident(meta: &fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Opens another read end of the FIFO open as `fd` (through `/proc/self/fd`, which reopens that
/// very inode), without blocking.
fn reopen_read_end(fd: std::os::fd::RawFd, path: &Path) -> Result<File, MiError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{fd}"))
        .map_err(io_err("reopen", path))?;
    match file.metadata() {
        Ok(m) if m.file_type().is_fifo() => Ok(file),
        Ok(_) => Err(MiError::NotAFifo(path.to_owned())),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// A FIFO of ours at the path: its read end, and the fd that holds its lock.
#[derive(Debug)]
struct Owned {
    read: File,
    lock: Flock<File>,
    ident: (u64, u64),
}

/// The server FIFO and the replies on their way.
#[derive(Debug)]
pub struct MiServer {
    path: PathBuf,
    reply_dir: PathBuf,
    mode: u32,
    fifo: File,
    /// Held for the daemon's life: the lock a second daemon finds.
    lock: Flock<File>,
    /// (dev, ino) of our FIFO.
    ident: (u64, u64),
    next_check: Instant,
    /// The last problem [`MiServer::check`] logged (logged again only when it changes).
    problem: Option<String>,
    token: Option<Token>,
    parser: RequestParser,
    replies: VecDeque<PendingReply>,
    chunk: Vec<u8>,
}

/// How a series of reads from the FIFO ended.
enum ReadEnd {
    /// Nothing more to read for now.
    Drained,
    /// Every writer has closed.
    Closed,
    /// The read failed (already logged).
    Failed,
}

impl MiServer {
    /// Creates the FIFO at `fifo_name` with `fifo_mode`, locks it and opens its read end.
    ///
    /// A mode with write permission for others is refused. A FIFO already there is replaced when
    /// it is stale (left by a dead instance: nobody holds its lock), refused naming the pid when a
    /// live daemon holds it; anything else there is an error naming it, and is not touched.
    pub fn create(cfg: &MiFifo) -> Result<MiServer, MiError> {
        let mode = check_mode(&cfg.fifo_mode)?;
        let path = cfg.fifo_name.clone();
        let owned = make_fifo(&path, mode)?;
        log::info!("MI FIFO {} ready (mode {mode:04o})", path.display());
        Ok(MiServer {
            path,
            reply_dir: cfg.reply_dir.clone(),
            mode,
            fifo: owned.read,
            lock: owned.lock,
            ident: owned.ident,
            next_check: Instant::now() + CHECK_EVERY,
            problem: None,
            token: None,
            parser: RequestParser::new(),
            replies: VecDeque::new(),
            chunk: vec![0; READ_CHUNK],
        })
    }

    /// True when [`MiServer::check`] is due.
    pub fn check_due(&self, now: Instant) -> bool {
        now >= self.next_check
    }

    /// Looks at the FIFO's path: when our FIFO is gone (a /tmp cleaner) or another inode is there,
    /// creates ours again and logs it; a FIFO another live daemon holds, or a file that is not a
    /// FIFO, is left alone (logged once). Returns true when the FIFO was created again.
    pub fn check(&mut self, registry: &Registry) -> bool {
        self.next_check = Instant::now() + CHECK_EVERY;
        let why = match fs::symlink_metadata(&self.path) {
            Ok(m) if ident(&m) == self.ident => {
                if self.problem.take().is_some() {
                    log::info!("MI FIFO {} is ours again", self.path.display());
                }
                return false;
            }
            Ok(m) => format!("replaced by {}", crate::sys::file_kind(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => "removed".to_string(),
            Err(e) => {
                self.note(format!("cannot be looked at: {e}"));
                return false;
            }
        };
        let owned = match make_fifo(&self.path, self.mode) {
            Ok(o) => o,
            Err(e) => {
                self.note(format!("was {why} and cannot be created again: {e}"));
                return false;
            }
        };
        if let Some(token) = self.token {
            if let Err(e) = registry.deregister(&mut SourceFd(&self.fifo.as_raw_fd())) {
                log::warn!("MI FIFO {}: deregister failed: {e}", self.path.display());
            }
            self.fifo = owned.read;
            if let Err(e) = self.watch_fifo(registry, token) {
                log::error!("MI FIFO {}: cannot watch it: {e}", self.path.display());
            }
        } else {
            self.fifo = owned.read;
        }
        self.lock = owned.lock;
        self.ident = owned.ident;
        // What was half written into the old FIFO is gone with it.
        self.parser = RequestParser::new();
        self.problem = None;
        log::warn!(
            "MI FIFO {} was {why}: created it again (mode {:04o})",
            self.path.display(),
            self.mode
        );
        true
    }

    fn note(&mut self, problem: String) {
        if self.problem.as_deref() != Some(problem.as_str()) {
            log::error!("MI FIFO {} {problem}", self.path.display());
            self.problem = Some(problem);
        }
    }

    /// The FIFO's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Registers the FIFO for reading; after a reopen the server registers the new fd itself.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.watch_fifo(registry, token)
    }

    fn watch_fifo(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fifo.as_raw_fd()),
            token,
            Interest::READABLE,
        )?;
        self.token = Some(token);
        Ok(())
    }

    /// Reads everything the FIFO holds; returns the valid requests, in order.
    ///
    /// Invalid requests are answered here (or logged when they have no reply name), garbage and
    /// refused reply names are logged; none of them is returned.
    pub fn on_readable(&mut self, registry: &Registry) -> Vec<Request> {
        let mut requests = Vec::new();
        match self.read_fifo(&mut requests) {
            ReadEnd::Drained => {}
            ReadEnd::Closed => {
                let frames = self.parser.finish();
                self.take(frames, &mut requests);
                self.reopen(registry);
            }
            ReadEnd::Failed => self.reopen(registry),
        }
        requests
    }

    /// Reads and parses until the FIFO has nothing more, or has no writer, or fails.
    fn read_fifo(&mut self, requests: &mut Vec<Request>) -> ReadEnd {
        // Each read consumes data, returns WouldBlock (drained: mio is edge-triggered, so this is
        // required) or end-of-file.
        loop {
            match self.fifo.read(&mut self.chunk) {
                Ok(0) => return ReadEnd::Closed,
                Ok(n) => {
                    let frames = self.parser.push(&self.chunk[..n]);
                    self.take(frames, requests);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("MI FIFO {}: read failed: {e}", self.path.display());
                    return ReadEnd::Failed;
                }
            }
        }
    }

    fn take(&mut self, frames: Vec<Frame>, requests: &mut Vec<Request>) {
        for frame in frames {
            match frame {
                Frame::Request(req) => {
                    log::debug!(
                        "MI request {} (reply to {:?})",
                        req.method,
                        req.reply_name.as_deref().unwrap_or("")
                    );
                    requests.push(req)
                }
                Frame::Invalid {
                    reply_name,
                    id,
                    error,
                } => {
                    log::warn!("MI FIFO {}: {error}", self.path.display());
                    if let Some(name) = reply_name {
                        self.queue(name, encode_reply(&id, &Err(error)));
                    }
                }
                Frame::Dropped(reason) => log::warn!("MI FIFO {}: {reason}", self.path.display()),
            }
        }
    }

    /// Replaces the read end with a fresh one (opened before the old one closes, so the FIFO
    /// never has zero readers and a writer arriving meanwhile loses nothing).
    fn reopen(&mut self, registry: &Registry) {
        // Through the lock's fd, not the path: the same FIFO even if the path changed meanwhile.
        let fresh = match reopen_read_end(self.lock.as_raw_fd(), &self.path) {
            Ok(f) => f,
            Err(e) => {
                // Keep the old end: requests can still arrive through it.
                log::error!("{e}");
                return;
            }
        };
        if self.token.is_some() {
            if let Err(e) = registry.deregister(&mut SourceFd(&self.fifo.as_raw_fd())) {
                log::warn!("MI FIFO {}: deregister failed: {e}", self.path.display());
            }
        }
        let old = std::mem::replace(&mut self.fifo, fresh);
        drop(old);
        if let Some(token) = self.token {
            if let Err(e) = self.watch_fifo(registry, token) {
                log::error!(
                    "MI FIFO {}: cannot watch it again: {e}",
                    self.path.display()
                );
            }
        }
    }

    /// Answers a request: nothing when it has no reply name or no id, else the reply is queued
    /// and sent as soon as the client's FIFO has a reader.
    pub fn reply(&mut self, req: &Request, result: Result<serde_json::Value, RpcError>) {
        if let Err(e) = &result {
            log::info!("MI {} failed: {e}", req.method);
        }
        let (Some(name), Some(id)) = (&req.reply_name, &req.id) else {
            return;
        };
        // The parser checked it; a Request built elsewhere is checked again here.
        match check_reply_name(name.as_bytes()) {
            Ok(Some(name)) => self.queue(name, encode_reply(id, &result)),
            Ok(None) => {}
            Err(reason) => log::warn!("MI reply for {} refused: {reason}", req.method),
        }
    }

    fn queue(&mut self, name: String, line: Vec<u8>) {
        let now = Instant::now();
        // Who may own a reply FIFO: root, us, or a member of the MI FIFO's group (as it is now:
        // the FIFO is given to the daemon's user and group at start).
        let owners = Owners {
            euid: nix::unistd::geteuid().as_raw(),
            gid: self
                .fifo
                .metadata()
                .map(|m| m.gid())
                .unwrap_or_else(|_| nix::unistd::getegid().as_raw()),
        };
        self.replies.push_back(PendingReply {
            path: self.reply_dir.join(&name),
            owners,
            line,
            written: 0,
            pipe: None,
            queued: now,
            progress: now,
        });
        if self.replies.len() > MAX_PENDING {
            if let Some(old) = self.replies.pop_front() {
                log::warn!(
                    "MI reply to {} dropped: more than {MAX_PENDING} replies waiting",
                    old.path.display()
                );
            }
        }
        // Most clients are already waiting: answer now rather than at the next tick.
        self.advance_replies();
    }

    /// `Some(RETRY)` while replies wait for their reader or are partly written; else the time
    /// left before an unfinished request is ended, if there is one.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let replies = (!self.replies.is_empty()).then_some(RETRY);
        let stall = self
            .parser
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        match (replies, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends a request left unfinished past its deadline, and moves every pending reply on (open,
    /// write); never blocks. Returns the requests the ended one had swallowed, to be run like
    /// those of [`on_readable`](Self::on_readable).
    #[must_use = "the requests a stalled one had swallowed must be run"]
    pub fn on_tick(&mut self) -> Vec<Request> {
        let found = if self.parser.deadline().is_some_and(|d| d <= Instant::now()) {
            self.end_stalled()
        } else {
            Vec::new()
        };
        self.advance_replies();
        found
    }

    fn end_stalled(&mut self) -> Vec<Request> {
        let mut found = Vec::new();
        // Its end may be waiting in the FIFO if the loop was busy: read first, so that only a
        // writer that really stopped is cut. End-of-file is left to `on_readable` (the hang-up is
        // an event not yet handled), which finishes the parser and reopens.
        let _ = self.read_fifo(&mut found);
        let frames = self.parser.expire(Instant::now());
        self.take(frames, &mut found);
        found
    }

    /// Opens and writes every pending reply as far as it goes without blocking.
    fn advance_replies(&mut self) {
        let now = Instant::now();
        self.replies.retain_mut(|r| match r.advance(now) {
            Ok(true) => false,
            Ok(false) => true,
            Err(reason) => {
                log::warn!("MI reply to {} dropped: {reason}", r.path.display());
                false
            }
        });
    }

    /// Unlinks the FIFO (when it is still ours: same inode) and drops any pending reply; the
    /// lock goes with the process's fds.
    pub fn remove(self) {
        let ours = matches!(fs::symlink_metadata(&self.path), Ok(m) if ident(&m) == self.ident);
        if !ours {
            log::warn!(
                "MI FIFO {} was replaced or removed by someone else; left alone",
                self.path.display()
            );
            return;
        }
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!("cannot remove MI FIFO {}: {e}", self.path.display());
        }
    }
}

/// Puts a FIFO of ours at `path`, locked: made under a temporary name in the same directory,
/// locked, then linked into place when the path is free, or renamed over a stale FIFO while
/// holding that one's lock (so two daemons never both believe they own the path).
fn make_fifo(path: &Path, mode: u32) -> Result<Owned, MiError> {
    for _ in 0..4 {
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_fifo() => {
                let theirs = open_read_end(path)?;
                let stale = match Flock::lock(theirs, FlockArg::LockExclusiveNonblock) {
                    Ok(l) => l,
                    Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                        return Err(MiError::Busy {
                            path: path.to_owned(),
                            pid: crate::sys::flock_holder(&m),
                        })
                    }
                    Err((_, e)) => return Err(io_err("lock", path)(e.into())),
                };
                let stale_ident = stale
                    .metadata()
                    .map(|m| ident(&m))
                    .map_err(io_err("inspect", path))?;
                let (owned, temp) = new_locked_fifo(path, mode)?;
                // Still the one we hold? (Another daemon may have replaced it before we locked.)
                let same = matches!(fs::symlink_metadata(path), Ok(m) if ident(&m) == stale_ident);
                if !same {
                    let _ = fs::remove_file(&temp);
                    continue;
                }
                let renamed = fs::rename(&temp, path);
                if let Err(e) = renamed {
                    let _ = fs::remove_file(&temp);
                    return Err(io_err("replace the stale", path)(e));
                }
                log::info!("MI FIFO {}: replaced a stale one", path.display());
                drop(stale);
                return Ok(owned);
            }
            Ok(_) => return Err(MiError::NotAFifo(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (owned, temp) = new_locked_fifo(path, mode)?;
                let linked = fs::hard_link(&temp, path);
                let _ = fs::remove_file(&temp);
                match linked {
                    Ok(()) => return Ok(owned),
                    // Someone put something there meanwhile: look again.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io_err("create", path)(e)),
                }
            }
            Err(e) => return Err(io_err("inspect", path)(e)),
        }
    }
    Err(io_err("create", path)(io::Error::other(
        "the path keeps changing under us",
    )))
}

/// A new FIFO with `mode` under a temporary name beside `path`, opened and locked; returns it and
/// the temporary path (the caller links or renames it into place).
fn new_locked_fifo(path: &Path, mode: u32) -> Result<(Owned, PathBuf), MiError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.new", std::process::id()));
    let _ = fs::remove_file(&temp);
    nix::unistd::mkfifo(&temp, Mode::from_bits_truncate(mode))
        .map_err(|e| io_err("create", path)(e.into()))?;
    let made = (|| {
        // mkfifo applies the umask; the configured mode is what the operator asked for.
        fs::set_permissions(&temp, fs::Permissions::from_mode(mode))
            .map_err(io_err("set the mode of", path))?;
        let read = open_read_end(&temp)?;
        let lock = Flock::lock(open_read_end(&temp)?, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io_err("lock", path)(e.into()))?;
        let ident = read
            .metadata()
            .map(|m| ident(&m))
            .map_err(io_err("inspect", path))?;
        Ok(Owned { read, lock, ident })
    })();
    match made {
        Ok(o) => Ok((o, temp)),
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Opens the read end without blocking (no writer needed) and checks it is a FIFO.
fn open_read_end(path: &Path) -> Result<File, MiError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("inspect", path))?;
    if !meta.file_type().is_fifo() {
        return Err(MiError::NotAFifo(path.to_owned()));
    }
    Ok(file)
}

/// Who may own a reply FIFO: root, the daemon's user (`euid`), a member of group `gid` (the MI
/// FIFO's).
#[derive(Debug, Clone, Copy)]
struct Owners {
    euid: u32,
    gid: u32,
}

impl Owners {
    fn allow(&self, uid: u32) -> bool {
        uid == 0 || uid == self.euid || crate::sys::user_in_group(uid, self.gid)
    }
}

/// A reply on its way to a client's FIFO.
#[derive(Debug)]
struct PendingReply {
    path: PathBuf,
    owners: Owners,
    line: Vec<u8>,
    written: usize,
    pipe: Option<File>,
    queued: Instant,
    progress: Instant,
}

enum OpenFailure {
    /// The FIFO has no reader yet: retry.
    NoReader,
    /// Never to be written: refused or gone.
    Refused(String),
}

/// Opens a client's reply FIFO for writing without blocking and without following a symlink, when
/// its owner is one `owners` allows.
fn open_reply_pipe(path: &Path, owners: Owners) -> Result<File, OpenFailure> {
    // Look before opening: opening anything but a FIFO (a device, say) could have effects.
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(OpenFailure::Refused("it is a symlink".into()))
        }
        Ok(m) if !m.file_type().is_fifo() => {
            return Err(OpenFailure::Refused("it is not a FIFO".into()))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(OpenFailure::Refused(
                "it does not exist (client gone?)".into(),
            ))
        }
        Err(e) => return Err(OpenFailure::Refused(e.to_string())),
    }
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Err(OpenFailure::NoReader),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(OpenFailure::NoReader),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(OpenFailure::Refused("it is a symlink".into()))
        }
        Err(e) => return Err(OpenFailure::Refused(e.to_string())),
    };
    // Checked again on what was opened: the path may have been swapped since the look.
    match file.metadata() {
        Ok(m) if !m.file_type().is_fifo() => Err(OpenFailure::Refused("it is not a FIFO".into())),
        // Another user's FIFO: writing there would let anyone have the daemon write into a pipe
        // of a user who never asked.
        Ok(m) if !owners.allow(m.uid()) => Err(OpenFailure::Refused(format!(
            "it belongs to uid {}, not root, this daemon's user (uid {}) or a member of the MI \
             FIFO's group (gid {})",
            m.uid(),
            owners.euid,
            owners.gid
        ))),
        Ok(_) => Ok(file),
        Err(e) => Err(OpenFailure::Refused(e.to_string())),
    }
}

impl PendingReply {
    /// Opens and writes as far as possible: `Ok(true)` when done, `Ok(false)` to retry later.
    fn advance(&mut self, now: Instant) -> Result<bool, String> {
        if self.pipe.is_none() {
            match open_reply_pipe(&self.path, self.owners) {
                Ok(f) => {
                    self.pipe = Some(f);
                    self.progress = now;
                }
                Err(OpenFailure::NoReader) if now.duration_since(self.queued) < OPEN_WAIT => {
                    return Ok(false)
                }
                Err(OpenFailure::NoReader) => {
                    return Err(format!(
                        "no reader opened it within {} s",
                        OPEN_WAIT.as_secs()
                    ))
                }
                Err(OpenFailure::Refused(reason)) => return Err(format!("refused: {reason}")),
            }
        }
        let Some(pipe) = &mut self.pipe else {
            return Ok(false);
        };
        while self.written < self.line.len() {
            match pipe.write(&self.line[self.written..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.written += n;
                    self.progress = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if now.duration_since(self.progress) >= WRITE_STALL {
                        return Err(format!(
                            "the reader stopped reading ({} of {} bytes sent)",
                            self.written,
                            self.line.len()
                        ));
                    }
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(format!(
                        "write failed after {} of {} bytes: {e}",
                        self.written,
                        self.line.len()
                    ))
                }
            }
        }
        // Dropping the pipe closes it: the client reads end-of-file after the line.
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory for one test, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "sipsockd-mi-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn cfg(dir: &Path, mode: &str) -> MiFifo {
        MiFifo {
            fifo_name: dir.join("fifo"),
            fifo_mode: mode.into(),
            reply_dir: dir.join("replies"),
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660").unwrap(), 0o660);
        assert_eq!(parse_mode("600").unwrap(), 0o600);
        assert_eq!(parse_mode("0o640").unwrap(), 0o640);
        for bad in ["", "rw", "0880", "77777"] {
            assert!(matches!(parse_mode(bad), Err(MiError::Mode(_))), "{bad}");
        }
        for open in ["0666", "0777", "0662", "2"] {
            let e = check_mode(open).unwrap_err();
            assert!(
                matches!(&e, MiError::WorldWritable(v) if v == open),
                "{open}"
            );
            assert!(e.to_string().contains("fifo_mode"), "{e}");
        }
        assert_eq!(check_mode("0664").unwrap(), 0o664);
    }

    #[test]
    fn a_second_server_on_the_same_fifo_is_refused_naming_the_holder() {
        let d = Dir::new("busy");
        let c = cfg(&d.0, "0600");
        let first = MiServer::create(&c).unwrap();
        let e = MiServer::create(&c).unwrap_err();
        match &e {
            MiError::Busy { path, pid } => {
                assert_eq!(path, &c.fifo_name);
                assert_eq!(*pid, Some(std::process::id()), "{e}");
            }
            other => panic!("{other}"),
        }
        assert!(e
            .to_string()
            .contains(&format!("pid {}", std::process::id())));
        // The first one's FIFO is untouched.
        let meta = fs::symlink_metadata(&c.fifo_name).unwrap();
        assert_eq!(ident(&meta), first.ident);
        first.remove();
        assert!(!c.fifo_name.exists());
        // Its lock went with it: a new server starts.
        MiServer::create(&c).unwrap().remove();
        // No temporary name left behind.
        assert_eq!(fs::read_dir(&d.0).unwrap().count(), 0);
    }

    #[test]
    fn a_deleted_or_replaced_fifo_is_created_again_and_requests_reach_it() {
        use mio::{Events, Poll};
        let d = Dir::new("again");
        let c = cfg(&d.0, "0640");
        let mut server = MiServer::create(&c).unwrap();
        let mut poll = Poll::new().unwrap();
        server.register(poll.registry(), Token(7)).unwrap();
        assert!(!server.check(poll.registry()), "nothing to do");
        fs::remove_file(&c.fifo_name).unwrap();
        assert!(server.check(poll.registry()));
        let meta = fs::symlink_metadata(&c.fifo_name).unwrap();
        assert!(meta.file_type().is_fifo());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        // Replaced by someone's unlocked FIFO: ours again.
        fs::remove_file(&c.fifo_name).unwrap();
        nix::unistd::mkfifo(&c.fifo_name, Mode::from_bits_truncate(0o600)).unwrap();
        assert!(server.check(poll.registry()));
        assert_eq!(
            ident(&fs::symlink_metadata(&c.fifo_name).unwrap()),
            server.ident
        );
        // A request written to the path now reaches the server.
        let mut w = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&c.fifo_name)
            .unwrap();
        w.write_all(b":r:{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"which\"}\n")
            .unwrap();
        drop(w);
        let mut events = Events::with_capacity(8);
        let mut got = Vec::new();
        let give_up = Instant::now() + Duration::from_secs(10);
        while got.is_empty() && Instant::now() < give_up {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            if events.iter().any(|e| e.token() == Token(7)) {
                got.extend(server.on_readable(poll.registry()));
            }
        }
        assert_eq!(got.len(), 1);
        // A regular file put there is left alone.
        fs::remove_file(&c.fifo_name).unwrap();
        fs::write(&c.fifo_name, "mine").unwrap();
        assert!(!server.check(poll.registry()));
        assert_eq!(fs::read_to_string(&c.fifo_name).unwrap(), "mine");
        server.remove();
        assert_eq!(fs::read_to_string(&c.fifo_name).unwrap(), "mine");
    }

    #[test]
    fn a_reply_fifo_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            crate::skip::skip("a_reply_fifo_of_another_user_is_refused", "needs root");
            return;
        }
        let d = Dir::new("owner");
        let p = d.0.join("theirs");
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        // nobody (65534), not in root's group.
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .unwrap();
        // A daemon running as root, its FIFO in group root: nobody's FIFO is refused.
        let root = Owners { euid: 0, gid: 0 };
        assert!(
            matches!(open_reply_pipe(&p, root), Err(OpenFailure::Refused(r)) if r.contains("uid 65534")),
            "another user's FIFO"
        );
        // A daemon running as uid 12345: its own user's FIFO and root's are fine.
        let daemon = Owners {
            euid: 12345,
            gid: 54321,
        };
        assert!(matches!(
            open_reply_pipe(&p, daemon),
            Err(OpenFailure::Refused(_))
        ));
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(12345)), None).unwrap();
        assert!(
            open_reply_pipe(&p, daemon).is_ok(),
            "the daemon's user's FIFO"
        );
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
        assert!(open_reply_pipe(&p, daemon).is_ok(), "root's FIFO");
        // A member of the MI FIFO's group: nobody's primary group is nogroup (65534).
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let group = Owners {
            euid: 12345,
            gid: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(65534))
                .unwrap()
                .map_or(65534, |u| u.gid.as_raw()),
        };
        assert!(open_reply_pipe(&p, group).is_ok(), "a member of the group");
    }

    #[test]
    fn create_sets_the_mode_replaces_a_stale_fifo_and_refuses_a_file() {
        let d = Dir::new("create");
        let c = cfg(&d.0, "0640");
        nix::unistd::mkfifo(&c.fifo_name, Mode::from_bits_truncate(0o600)).unwrap();
        let stale = open_read_end(&c.fifo_name).unwrap();
        let server = MiServer::create(&c).unwrap();
        let meta = fs::symlink_metadata(&c.fifo_name).unwrap();
        assert!(meta.file_type().is_fifo());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!(
            stale.metadata().unwrap().nlink(),
            0,
            "the stale FIFO was unlinked"
        );
        server.remove();
        assert!(!c.fifo_name.exists());

        fs::write(&c.fifo_name, "precious").unwrap();
        let e = MiServer::create(&c).unwrap_err();
        assert!(
            matches!(&e, MiError::NotAFifo(p) if p == &c.fifo_name),
            "{e}"
        );
        assert!(e.to_string().contains("fifo"), "{e}");
        assert_eq!(fs::read_to_string(&c.fifo_name).unwrap(), "precious");
    }

    #[test]
    fn remove_leaves_a_fifo_that_is_no_longer_ours() {
        let d = Dir::new("remove");
        let c = cfg(&d.0, "0600");
        let server = MiServer::create(&c).unwrap();
        fs::remove_file(&c.fifo_name).unwrap();
        nix::unistd::mkfifo(&c.fifo_name, Mode::from_bits_truncate(0o600)).unwrap();
        server.remove();
        assert!(c.fifo_name.exists());
    }

    #[test]
    fn reply_paths_that_are_not_fifos_are_refused_untouched() {
        let d = Dir::new("refuse");
        let outside = d.0.join("outside");
        nix::unistd::mkfifo(&outside, Mode::from_bits_truncate(0o600)).unwrap();
        symlink(&outside, d.0.join("link")).unwrap();
        fs::write(d.0.join("file"), "keep").unwrap();
        let me = Owners {
            euid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        assert!(
            matches!(open_reply_pipe(&d.0.join("link"), me), Err(OpenFailure::Refused(r)) if r.contains("symlink"))
        );
        assert!(
            matches!(open_reply_pipe(&d.0.join("file"), me), Err(OpenFailure::Refused(r)) if r.contains("not a FIFO"))
        );
        assert!(matches!(
            open_reply_pipe(&d.0.join("missing"), me),
            Err(OpenFailure::Refused(_))
        ));
        assert!(matches!(
            open_reply_pipe(&outside, me),
            Err(OpenFailure::NoReader)
        ));
        assert_eq!(fs::read_to_string(d.0.join("file")).unwrap(), "keep");
    }

    #[test]
    fn a_reply_waits_for_its_reader_then_is_written_whole() {
        let d = Dir::new("wait");
        let c = cfg(&d.0, "0600");
        fs::create_dir(&c.reply_dir).unwrap();
        let mut server = MiServer::create(&c).unwrap();
        let reply_path = c.reply_dir.join("r1");
        nix::unistd::mkfifo(&reply_path, Mode::from_bits_truncate(0o600)).unwrap();
        let req = Request {
            method: "x".into(),
            params: super::super::proto::Params::None,
            id: Some(serde_json::json!(1)),
            reply_name: Some("r1".into()),
        };
        let big = "z".repeat(300_000);
        server.reply(&req, Ok(serde_json::json!(big)));
        assert_eq!(server.poll_timeout(), Some(RETRY), "waiting for a reader");
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&reply_path)
            .unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0; 65536];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !got.ends_with(b"\n") && Instant::now() < deadline {
            assert!(server.on_tick().is_empty());
            match reader.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["result"].as_str().map(str::len), Some(300_000));
        assert_eq!(server.poll_timeout(), None);
        // Notifications and empty reply names get nothing.
        server.reply(
            &Request {
                id: None,
                ..req.clone()
            },
            Ok(serde_json::json!(1)),
        );
        server.reply(
            &Request {
                reply_name: None,
                ..req
            },
            Ok(serde_json::json!(1)),
        );
        assert_eq!(server.poll_timeout(), None);
        server.remove();
    }

    #[test]
    fn a_request_held_unfinished_is_ended_by_the_tick_and_the_loop_woken_for_the_rest() {
        use super::super::proto::REQUEST_STALL;
        use mio::{Events, Poll};
        let d = Dir::new("stall");
        let c = cfg(&d.0, "0600");
        fs::create_dir(&c.reply_dir).unwrap();
        let mut server = MiServer::create(&c).unwrap();
        let mut poll = Poll::new().unwrap();
        server.register(poll.registry(), Token(7)).unwrap();
        let stall_reply = c.reply_dir.join("stall");
        nix::unistd::mkfifo(&stall_reply, Mode::from_bits_truncate(0o600)).unwrap();
        let mut stall_reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&stall_reply)
            .unwrap();
        let writer = || {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&c.fifo_name)
                .unwrap()
        };
        let begun = Instant::now();
        // Held open for the whole test: no end-of-file ends the half request.
        let mut staller = writer();
        staller
            .write_all(b":stall:{\"jsonrpc\":\"2.0\",\"id\":\"s\",")
            .unwrap();
        let mut other = writer();
        other
            .write_all(b":r:{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"which\"}")
            .unwrap();

        let mut events = Events::with_capacity(8);
        let mut got = Vec::new();
        let give_up = begun + Duration::from_secs(10);
        while got.is_empty() && Instant::now() < give_up {
            let timeout = server.poll_timeout().unwrap_or(Duration::from_secs(1));
            assert!(
                timeout <= REQUEST_STALL,
                "{timeout:?}: the deadline is waited for"
            );
            poll.poll(&mut events, Some(timeout)).unwrap();
            if events.iter().any(|e| e.token() == Token(7)) {
                got.extend(server.on_readable(poll.registry()));
            }
            got.extend(server.on_tick());
        }
        assert!(
            Instant::now() >= begun + REQUEST_STALL,
            "ended before its deadline"
        );
        assert_eq!(got.len(), 1, "the swallowed request was handed out");
        assert_eq!(got[0].method, "which");
        assert_eq!(got[0].reply_name.as_deref(), Some("r"));

        // The stalled request got its parse error.
        let mut line = Vec::new();
        let mut buf = [0u8; 4096];
        while !line.ends_with(b"\n") && Instant::now() < give_up {
            assert!(server.on_tick().is_empty());
            match stall_reader.read(&mut buf) {
                Ok(n) => line.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let _ = poll.poll(&mut events, Some(RETRY));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["error"]["code"], -32700, "{v}");
        assert_eq!(server.poll_timeout(), None);
        drop((staller, other));
        server.remove();
    }
}
