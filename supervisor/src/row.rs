//! Socket rows: the raw text read from the table, its parsed form, and the table validation.
//!
//! Pure: no I/O except host-name resolution, which goes through a [`Resolver`] so tests can
//! substitute their own.

use serde::Serialize;
use shm::Proto;
use std::net::{IpAddr, SocketAddr};

/// One row as read from the database: every value already stripped of trailing blanks, and an empty
/// string turned into `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RawRow {
    /// The row's `id`, when the table has an `id` column.
    pub id: Option<i64>,
    /// `socket` (NOT NULL in the schema; `None` here is a bad row).
    pub socket: Option<String>,
    /// `advertised`.
    pub advertised: Option<String>,
    /// `tag`.
    pub tag: Option<String>,
    /// `flags`.
    pub flags: Option<String>,
    /// `tos`, as text (an integer column is read as its decimal text).
    pub tos: Option<String>,
}

/// Socket options a row can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Flags {
    /// Bind even if the address is not (yet) on the host (IP_FREEBIND / IPV6_FREEBIND).
    pub anycast: bool,
    /// Allow fragmentation: path-MTU discovery off.
    pub frag: bool,
    /// SO_REUSEPORT.
    pub reuse_port: bool,
}

/// The running identity of a socket: two rows with the same identity are the same socket.
pub type Identity = (Proto, SocketAddr);

/// An advertised address: host as written (IP or name) and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Advertised {
    /// Host as written; IPv6 without brackets.
    pub host: String,
    /// Port (defaults to the socket's).
    pub port: u16,
}

/// A valid row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketDef {
    /// The row's `id`, if the table has one.
    pub id: Option<i64>,
    /// The `socket` text exactly as stored (after stripping trailing blanks).
    pub text: String,
    /// Transport.
    pub proto: Proto,
    /// Resolved IP.
    pub ip: IpAddr,
    /// Port (explicit or the proto's default).
    pub port: u16,
    /// Advertised address, if any.
    pub advertised: Option<Advertised>,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Flags.
    pub flags: Flags,
    /// TOS byte; 0 means none.
    pub tos: u8,
}

impl SocketDef {
    /// The running identity (proto, IP, port).
    pub fn identity(&self) -> Identity {
        (self.proto, SocketAddr::new(self.ip, self.port))
    }
}

/// Why a row was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// The row's `id`, if the table has one.
    pub id: Option<i64>,
    /// The row's socket text, if any.
    pub socket: Option<String>,
    /// The column at fault (`socket`, `advertised`, `tag`, `flags`, `tos`), or `None` for a
    /// table-level error (duplicate identity, too many rows).
    pub column: Option<String>,
    /// The offending value.
    pub value: Option<String>,
    /// What is wrong, in words.
    pub reason: String,
}
