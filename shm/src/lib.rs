//! sipsockd's shared-memory slot table.
//!
//! The supervisor creates one file (`[shm] path`, mode 0600) at start. It holds a header, `max_sockets`
//! slots allocated once, and one record per worker. The supervisor is the only writer of slots and of
//! the header; workers only bump counters (atomics). Readers outside the supervisor (the `shm-dump`
//! tool) map the file read-only and read each slot under its sequence counter, so a reader never
//! takes a lock the supervisor waits on.
//!
//! The three sides:
//! - [`Table`] (`table`): the supervisor's writer; single instance by `flock`, FIFO slot rotation.
//! - [`Attached`] (`attach`): a worker's read-write view of an fd the supervisor passed it.
//! - [`Reader`] (`reader`): a read-only view giving a [`Snapshot`]; [`dump`] prints one.
//!
//! The binary layout is in `layout` (documented there, sizes pinned at compile time); every
//! `unsafe` block is in `sys`.
//!
//! This crate never binds, forks or talks to a database.
#![deny(missing_docs)]

mod attach;
mod dump;
mod layout;
mod proc;
mod reader;
mod region;
mod sys;
mod table;

pub use attach::Attached;
pub use dump::dump;
pub use layout::{
    RelayRecord, SlotCounter, WorkerRecord, LAYOUT_VERSION, RELOAD_BUCKETS, RELOAD_BUCKETS_US,
};
pub use reader::{Reader, RelaySnapshot, ReloadStats, SlotSnapshot, Snapshot, WorkerSnapshot};
pub use table::Table;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A SIP transport, as written in the `socket` column (`udp:...`) and as stored in a slot.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Proto {
    /// SIP over UDP.
    Udp = 1,
    /// SIP over TCP.
    Tcp = 2,
    /// SIP over TLS.
    Tls = 3,
    /// SIP over WebSocket.
    Ws = 4,
    /// SIP over secure WebSocket.
    Wss = 5,
}

impl Proto {
    /// Every proto, in slot-code order.
    pub const ALL: [Proto; 5] = [Proto::Udp, Proto::Tcp, Proto::Tls, Proto::Ws, Proto::Wss];

    /// The lower-case name used in rows, Contact `transport=` and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
            Proto::Tls => "tls",
            Proto::Ws => "ws",
            Proto::Wss => "wss",
        }
    }

    /// The port a row gets when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Proto::Udp | Proto::Tcp => 5060,
            Proto::Tls => 5061,
            Proto::Ws => 80,
            Proto::Wss => 443,
        }
    }

    /// True for the datagram transport; false for the stream ones.
    pub fn is_datagram(self) -> bool {
        self == Proto::Udp
    }

    /// The code stored in a slot (0 is "none").
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The proto of a slot code, `None` for 0 or an unknown code.
    pub fn from_code(code: u8) -> Option<Proto> {
        Proto::ALL.into_iter().find(|p| p.code() == code)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = ();
    /// Case-insensitive; only the five SIP transports.
    fn from_str(s: &str) -> Result<Proto, ()> {
        Proto::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

/// Which pool a worker belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum WorkerKind {
    /// A UDP worker: serves every dynamic UDP socket.
    Udp = 1,
    /// A stream worker: serves TCP, TLS, WS and WSS connections.
    Stream = 2,
}

impl WorkerKind {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Udp => "udp",
            WorkerKind::Stream => "stream",
        }
    }
}

impl fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown worker kind on the command line.
#[derive(Debug, thiserror::Error)]
#[error("unknown worker kind {0:?} (udp or stream)")]
pub struct UnknownWorkerKind(String);

impl FromStr for WorkerKind {
    type Err = UnknownWorkerKind;
    fn from_str(s: &str) -> Result<WorkerKind, UnknownWorkerKind> {
        match s {
            "udp" => Ok(WorkerKind::Udp),
            "stream" => Ok(WorkerKind::Stream),
            _ => Err(UnknownWorkerKind(s.to_string())),
        }
    }
}

/// The state of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// Not in use.
    #[default]
    Free,
    /// A socket is bound and served.
    Active,
    /// The row is applied but its bind failed; `error` says why.
    Error,
    /// The row's address is not on this host (yet): nothing is bound; it is bound when the address
    /// appears.
    Absent,
}

impl SlotState {
    /// The name used in JSON and in the text dump.
    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Active => "active",
            SlotState::Error => "error",
            SlotState::Absent => "absent",
        }
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts a worker adds to one slot's counters at once (e.g. per received batch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounts([u64; SlotCounter::ALL.len()]);

impl SlotCounts {
    /// Adds `n` to one counter.
    #[inline]
    pub fn add(&mut self, which: SlotCounter, n: u64) {
        // `which as usize` is below SlotCounter::ALL.len() by construction of the enum.
        if let Some(c) = self.0.get_mut(which as usize) {
            *c += n;
        }
    }

    /// Adds one to a counter.
    #[inline]
    pub fn bump(&mut self, which: SlotCounter) {
        self.add(which, 1);
    }

    /// One counter's value.
    pub fn get(&self, which: SlotCounter) -> u64 {
        self.0.get(which as usize).copied().unwrap_or(0)
    }

    /// True when nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|c| *c == 0)
    }

    /// The counts in [`SlotCounter::ALL`] order.
    pub fn values(&self) -> &[u64; SlotCounter::ALL.len()] {
        &self.0
    }
}

/// What the supervisor stores in a slot (texts longer than their capacity are cut on a character
/// boundary: socket 128 bytes, address 64, advertised 160, tag 128, flags 32, error 256).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotData {
    /// Free, active or error.
    pub state: SlotState,
    /// The `socket` column as stored in the database.
    pub socket: String,
    /// The transport.
    pub proto: Option<Proto>,
    /// The bound address, `ip:port` (`[ip6]:port`).
    pub address: String,
    /// The advertised `host:port`, empty when none.
    pub advertised: String,
    /// The row's tag.
    pub tag: String,
    /// The flags, comma-joined (`anycast,frag,reuse_port` order).
    pub flags: String,
    /// The TOS byte (0: not set).
    pub tos: u8,
    /// Why the bind failed (state `Error`).
    pub error: String,
}

/// The state of a worker, as the supervisor records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Started, not yet serving every current socket.
    Starting,
    /// Serving every current socket.
    Ready,
    /// Exited; waiting to be started again.
    Dead,
    /// Not running (never started, or stopped at shutdown).
    Stopped,
}

impl WorkerState {
    /// The name used in JSON and in the text dump.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Dead => "dead",
            WorkerState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of the shm table, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// Another live sipsockd holds the file.
    #[error("{} is held by a running sipsockd (pid {pid})", path.display())]
    Busy {
        /// The shm file.
        path: PathBuf,
        /// The supervisor pid found in its header.
        pid: u32,
    },
    /// A system call on the file failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The shm file.
        path: PathBuf,
        /// What we were doing (open, lock, map...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a table this build can read (foreign, truncated, other layout version).
    #[error("{}: bad shm layout: {what}", path.display())]
    BadLayout {
        /// The shm file.
        path: PathBuf,
        /// What does not match.
        what: String,
    },
    /// A count given to `Table::create` is beyond what the layout allows.
    #[error("{}: {what} {value} is above the limit {max}", path.display())]
    TooLarge {
        /// The shm file.
        path: PathBuf,
        /// Which count.
        what: &'static str,
        /// The value given.
        value: u32,
        /// The limit.
        max: u32,
    },
}

impl ShmError {
    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: std::io::Error) -> ShmError {
        ShmError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    pub(crate) fn bad(path: &std::path::Path, what: impl Into<String>) -> ShmError {
        ShmError::BadLayout {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    /// The supervisor shares its table between threads; workers and readers may too.
    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<crate::Table>();
        send_sync::<crate::Attached>();
        send_sync::<crate::Reader>();
        send_sync::<crate::WorkerRecord>();
    }

    #[test]
    fn error_texts() {
        let e = crate::ShmError::Busy {
            path: "/dev/shm/sipsockd".into(),
            pid: 12,
        };
        assert_eq!(
            e.to_string(),
            "/dev/shm/sipsockd is held by a running sipsockd (pid 12)"
        );
    }
}

#[cfg(test)]
mod testdir {
    //! A scratch directory per test, removed afterwards.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct TestDir(PathBuf);

    impl TestDir {
        pub fn new(name: &str) -> TestDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("shm-test-{}-{n}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }

        pub fn root(&self) -> &Path {
            &self.0
        }

        pub fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A test that cannot run here: a failure under `CI=true` (CI has what every test needs);
    /// elsewhere it says so on stderr and appends `name<TAB>reason` to `$SIPSOCKD_SKIP_FILE`,
    /// which `scripts/test.sh` lists at the end of the run.
    pub fn skip(name: &str, reason: &str) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{name} cannot run under CI=true: {reason}");
        }
        eprintln!("SKIPPED: {name}: {reason}");
        if let Some(file) = std::env::var_os("SIPSOCKD_SKIP_FILE") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
            {
                let _ = writeln!(f, "{name}\t{reason}");
            }
        }
    }
}
