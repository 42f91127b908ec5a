//! `sipsockd mi`: a client of the MI FIFO.
//!
//! It creates a uniquely named reply FIFO (mode 0600) in `reply_dir` and opens its read end
//! *before* sending the request, so the server can answer at once (the Python clients open theirs
//! only after writing, which makes the server retry). The reply FIFO is removed on every path out.
//! Everything waits with a deadline: a daemon that is gone, stuck or never answers gives exit
//! status 2 within the timeout, never a hang.

use super::proto::{Params, RpcError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;
use serde_json::{json, Map, Value};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why no answer was obtained.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody reads the server FIFO (no such path, or no daemon).
    #[error("cannot reach the MI FIFO {}: {reason} (is sipsockd running?)", path.display())]
    Unreachable {
        /// The server FIFO.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A local system call failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The deadline passed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Something came back that is not a reply to this request.
    #[error("unusable reply: {0}")]
    BadReply(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ClientError {
    let path = path.to_owned();
    move |source| ClientError::Io { what, path, source }
}

/// Parameters from the command line, as `opensips-cli` reads them: all `NAME=VALUE` → named;
/// otherwise positional. Values stay strings, as the OpenSIPS clients send them.
pub fn params_from_args(args: &[String]) -> Params {
    if args.is_empty() {
        return Params::Named(Map::new());
    }
    let split: Option<Map<String, Value>> = args
        .iter()
        .map(|a| {
            let (name, value) = a.split_once('=')?;
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            ok.then(|| (name.to_owned(), Value::String(value.to_owned())))
        })
        .collect();
    match split {
        Some(named) => Params::Named(named),
        None => Params::Positional(args.iter().map(|a| Value::String(a.clone())).collect()),
    }
}

/// The reply FIFO; removed when dropped.
struct ReplyFifo {
    path: PathBuf,
}

impl ReplyFifo {
    /// Create the reply FIFO (mode 0600) so that the daemon, which may run as another user after
    /// dropping privileges, can open it: `server_fifo`'s owner is the daemon's user. As root, the
    /// reply FIFO is given to that user; as a member of the daemon's group, it is given to that
    /// group with mode 0620. Nobody else can write into it.
    fn create(reply_dir: &Path, server_fifo: &Path) -> Result<(ReplyFifo, String), ClientError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // No '.' in it: the server refuses such names.
        let name = format!(
            "sipsockd_mi_reply_{}_{nanos}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = reply_dir.join(&name);
        nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
            .map_err(|e| io_err("create the reply FIFO", &path)(e.into()))?;
        let fifo = ReplyFifo { path };
        fs::set_permissions(&fifo.path, fs::Permissions::from_mode(0o600))
            .map_err(io_err("set the mode of", &fifo.path))?;
        if let Ok(server) = fs::metadata(server_fifo) {
            use std::os::unix::fs::MetadataExt;
            let me = nix::unistd::geteuid();
            if server.uid() != me.as_raw() {
                let (uid, gid) = (
                    nix::unistd::Uid::from_raw(server.uid()),
                    nix::unistd::Gid::from_raw(server.gid()),
                );
                if me.is_root() {
                    nix::unistd::chown(&fifo.path, Some(uid), Some(gid))
                        .map_err(|e| io_err("give the daemon's user", &fifo.path)(e.into()))?;
                } else if nix::unistd::chown(&fifo.path, None, Some(gid)).is_ok() {
                    fs::set_permissions(&fifo.path, fs::Permissions::from_mode(0o620))
                        .map_err(io_err("set the mode of", &fifo.path))?;
                }
            }
        }
        Ok((fifo, name))
    }
}

impl Drop for ReplyFifo {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Waits until `file` is ready for `flags` or the deadline passes.
fn wait(
    file: &File,
    flags: PollFlags,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), ClientError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(timeout));
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(file.as_fd(), flags)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => {
                return Err(ClientError::Io {
                    what: "poll",
                    path: PathBuf::new(),
                    source: e.into(),
                })
            }
        }
    }
}

/// Sends one request and waits for its reply: `Ok(Ok(result))`, `Ok(Err(rpc error))`, or why
/// there was no answer.
pub fn call(
    fifo: &Path,
    reply_dir: &Path,
    method: &str,
    params: &Params,
    timeout: Duration,
) -> Result<Result<Value, RpcError>, ClientError> {
    let deadline = Instant::now() + timeout;
    let (reply_fifo, reply_name) = ReplyFifo::create(reply_dir, fifo)?;
    // Read end first (non-blocking: there is no writer yet), so the server finds a reader.
    let mut reply = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&reply_fifo.path)
        .map_err(io_err("open the reply FIFO", &reply_fifo.path))?;

    let id = format!("{}", std::process::id());
    let mut body = json!({"jsonrpc": "2.0", "id": id, "method": method});
    if let Some(p) = params.to_json() {
        body["params"] = p;
    }
    let request = format!(":{reply_name}:{body}\n");
    send(fifo, request.as_bytes(), deadline, timeout)?;

    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let line = loop {
        wait(&reply, PollFlags::POLLIN, deadline, timeout)?;
        match reply.read(&mut buf) {
            Ok(0) if got.is_empty() => {
                // A writer came and went without a word: nothing more will come.
                return Err(ClientError::BadReply(
                    "the server closed the reply FIFO empty".into(),
                ));
            }
            Ok(0) => break got,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.iter().position(|&b| b == b'\n') {
                    got.truncate(end);
                    break got;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io_err("read the reply FIFO", &reply_fifo.path)(e)),
        }
    };
    drop(reply_fifo);
    parse_reply(&line, &id)
}

/// Writes the request into the server FIFO without ever blocking past the deadline.
fn send(
    fifo: &Path,
    request: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<(), ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        path: fifo.to_owned(),
        reason,
    };
    let mut server = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(unreachable("nobody reads it".into()))
        }
        Err(e) => return Err(unreachable(e.to_string())),
    };
    match server.metadata() {
        Ok(m) if m.file_type().is_fifo() => {}
        Ok(_) => return Err(unreachable("not a FIFO".into())),
        Err(e) => return Err(unreachable(e.to_string())),
    }
    let mut sent = 0;
    while sent < request.len() {
        match server.write(&request[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(&server, PollFlags::POLLOUT, deadline, timeout)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreachable(e.to_string())),
        }
    }
    Ok(())
}

fn parse_reply(line: &[u8], id: &str) -> Result<Result<Value, RpcError>, ClientError> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| ClientError::BadReply(format!("{e}: {}", String::from_utf8_lossy(line))))?;
    if v.get("id").is_some_and(|got| got != id && !got.is_null()) {
        return Err(ClientError::BadReply(format!(
            "reply to another request: {v}"
        )));
    }
    if let Some(err) = v.get("error") {
        return RpcError::from_json(err)
            .map(Err)
            .ok_or_else(|| ClientError::BadReply(format!("malformed error: {err}")));
    }
    match v.get("result") {
        Some(result) => Ok(Ok(result.clone())),
        None => Err(ClientError::BadReply(format!(
            "neither result nor error: {v}"
        ))),
    }
}

/// Send one request and print the result; returns the exit code (0 ok, 1 JSON-RPC error, 2 no answer).
pub fn run(
    fifo: &Path,
    reply_dir: &Path,
    method: &str,
    params: &[String],
    timeout: Duration,
    out: &mut dyn Write,
) -> u8 {
    match call(fifo, reply_dir, method, &params_from_args(params), timeout) {
        Ok(Ok(result)) => {
            let text = serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string());
            match writeln!(out, "{text}") {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("sipsockd mi: cannot print the result: {e}");
                    2
                }
            }
        }
        Ok(Err(e)) => {
            match &e.data {
                // Structured details (e.g. the bad rows of a refused reload) read better pretty.
                Some(data @ (Value::Array(_) | Value::Object(_))) => eprintln!(
                    "sipsockd mi: {method}: {} {}\n{}",
                    e.code,
                    e.message,
                    serde_json::to_string_pretty(data).unwrap_or_else(|_| data.to_string())
                ),
                _ => eprintln!("sipsockd mi: {method}: {e}"),
            }
            1
        }
        Err(e) => {
            eprintln!("sipsockd mi: {method}: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn params_named_positional_and_none() {
        assert_eq!(params_from_args(&[]), Params::Named(Map::new()));
        assert_eq!(
            params_from_args(&args(&["command=sockets_list", "x_y=a=b"])),
            Params::Named(
                json!({"command": "sockets_list", "x_y": "a=b"})
                    .as_object()
                    .cloned()
                    .unwrap()
            )
        );
        assert_eq!(
            params_from_args(&args(&["command=ps", "plain"])),
            Params::Positional(vec![json!("command=ps"), json!("plain")])
        );
        // Values stay strings.
        assert_eq!(
            params_from_args(&args(&["n=5"])),
            Params::Named(json!({"n": "5"}).as_object().cloned().unwrap())
        );
    }

    #[test]
    fn replies_are_checked() {
        assert_eq!(
            parse_reply(br#"{"jsonrpc":"2.0","result":"OK","id":"9"}"#, "9").unwrap(),
            Ok(json!("OK"))
        );
        let e = parse_reply(
            br#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":"9"}"#,
            "9",
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(e.code, -32601);
        // A parse error is answered with a null id.
        assert!(parse_reply(
            br#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}"#,
            "9"
        )
        .unwrap()
        .is_err());
        assert!(parse_reply(br#"{"jsonrpc":"2.0","result":1,"id":"8"}"#, "9").is_err());
        assert!(parse_reply(b"garbage", "9").is_err());
        assert!(parse_reply(br#"{"jsonrpc":"2.0","id":"9"}"#, "9").is_err());
    }

    #[test]
    fn no_daemon_is_exit_2_and_leaves_no_reply_fifo() {
        let dir = std::env::temp_dir().join(format!("sipsockd-mi-client-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut out = Vec::new();
        let code = run(
            &dir.join("no-such-fifo"),
            &dir,
            "ps",
            &[],
            Duration::from_secs(5),
            &mut out,
        );
        assert_eq!(code, 2);
        assert!(out.is_empty());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "reply FIFO removed");
        fs::remove_dir(&dir).unwrap();
    }
}
