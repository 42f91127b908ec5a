//! sipsockd's shared-memory slot table.
//!
//! The supervisor creates one file (`[shm] path`, mode 0600) at start. It holds a header, `max_sockets`
//! slots allocated once, and one record per worker. The supervisor is the only writer of slots and of
//! the header; workers only bump their own counters (atomics). Readers outside the supervisor (the
//! `shm-dump` tool) map the file read-only and read each slot under its sequence counter, so a reader
//! never takes a lock the supervisor waits on.
//!
//! This crate never binds, forks or talks to a database.
#![deny(missing_docs)]

use std::fmt;
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

/// Print the table at `path` (read-only attach), as text or as the `--json` object.
pub fn dump(
    path: &std::path::Path,
    json: bool,
    out: &mut dyn std::io::Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let _ = (path, json, out);
    todo!("shm helper: implement")
}
