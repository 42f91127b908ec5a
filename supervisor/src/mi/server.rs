//! The MI FIFO server: the FIFO's read end in the daemon's event loop, and the replies.
//!
//! It owns the server FIFO (created at start, unlinked by [`MiServer::remove`]) and every reply
//! pipe it has opened. It must never block the daemon: the FIFO is read without blocking, a reply
//! FIFO is opened without blocking (a client that has not opened its end yet is retried every
//! [`RETRY`] for [`OPEN_WAIT`]) and written in pieces as the client drains it. Nothing is ever
//! written to a path that is not a FIFO in `reply_dir` (no symlink, no other directory).
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
use nix::sys::stat::Mode;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// The server FIFO and the replies on their way.
#[derive(Debug)]
pub struct MiServer {
    path: PathBuf,
    reply_dir: PathBuf,
    fifo: File,
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
    /// Creates the FIFO at `fifo_name` with `fifo_mode` and opens its read end.
    ///
    /// A FIFO already there (left by a dead instance) is replaced; anything else there is an
    /// error naming it, and is not touched.
    pub fn create(cfg: &MiFifo) -> Result<MiServer, MiError> {
        let mode = parse_mode(&cfg.fifo_mode)?;
        let path = cfg.fifo_name.clone();
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_fifo() => {
                fs::remove_file(&path).map_err(io_err("remove the stale", &path))?
            }
            Ok(_) => return Err(MiError::NotAFifo(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", &path)(e)),
        }
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(mode))
            .map_err(|e| io_err("create", &path)(e.into()))?;
        // mkfifo applies the umask; the configured mode is what the operator asked for.
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(io_err("set the mode of", &path))?;
        let fifo = open_read_end(&path)?;
        log::info!("MI FIFO {} ready (mode {mode:04o})", path.display());
        Ok(MiServer {
            path,
            reply_dir: cfg.reply_dir.clone(),
            fifo,
            token: None,
            parser: RequestParser::new(),
            replies: VecDeque::new(),
            chunk: vec![0; READ_CHUNK],
        })
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
        let fresh = match open_read_end(&self.path) {
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
        self.replies.push_back(PendingReply {
            path: self.reply_dir.join(&name),
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

    /// Unlinks the FIFO (when it is still ours) and drops any pending reply.
    pub fn remove(self) {
        let ours = match (fs::symlink_metadata(&self.path), self.fifo.metadata()) {
            (Ok(at_path), Ok(open)) => at_path.dev() == open.dev() && at_path.ino() == open.ino(),
            _ => false,
        };
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

/// A reply on its way to a client's FIFO.
#[derive(Debug)]
struct PendingReply {
    path: PathBuf,
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

/// Opens a client's reply FIFO for writing without blocking and without following a symlink.
fn open_reply_pipe(path: &Path) -> Result<File, OpenFailure> {
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
        Ok(m) if m.file_type().is_fifo() => Ok(file),
        Ok(_) => Err(OpenFailure::Refused("it is not a FIFO".into())),
        Err(e) => Err(OpenFailure::Refused(e.to_string())),
    }
}

impl PendingReply {
    /// Opens and writes as far as possible: `Ok(true)` when done, `Ok(false)` to retry later.
    fn advance(&mut self, now: Instant) -> Result<bool, String> {
        if self.pipe.is_none() {
            match open_reply_pipe(&self.path) {
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
        assert!(
            matches!(open_reply_pipe(&d.0.join("link")), Err(OpenFailure::Refused(r)) if r.contains("symlink"))
        );
        assert!(
            matches!(open_reply_pipe(&d.0.join("file")), Err(OpenFailure::Refused(r)) if r.contains("not a FIFO"))
        );
        assert!(matches!(
            open_reply_pipe(&d.0.join("missing")),
            Err(OpenFailure::Refused(_))
        ));
        assert!(matches!(
            open_reply_pipe(&outside),
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
