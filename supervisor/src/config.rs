//! The configuration file (`--config FILE`, TOML).
//!
//! Sections and keys mirror the OpenSIPS modparams of `sockets_mgm` and `mi_fifo`, with the seed's
//! defaults. Loading refuses unknown sections and keys, wrong types and out-of-range values with an
//! error naming the key and the value. This module owns parsing and validation only; it never opens
//! the database or a socket.

use serde::Deserialize;
use std::path::PathBuf;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[sockets_mgm]`: where the sockets table is and how many processes serve it.
    pub sockets_mgm: SocketsMgm,
    /// `[mi_fifo]`: the management FIFO.
    pub mi_fifo: MiFifo,
    /// `[shm]`: the shared-memory slot table.
    pub shm: Shm,
    /// `[sip]`: what the SIP handler answers.
    pub sip: Sip,
}

/// What to do with a table that has bad rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InvalidRows {
    /// Refuse the whole table (the default): a typo never tears down a live socket.
    #[default]
    Reject,
    /// Apply the valid rows and report the bad ones.
    Skip,
}

/// `[sockets_mgm]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketsMgm {
    /// Database URL: `sqlite://rel/path`, `sqlite:///abs/path`, `mysql://...`, `postgres://...`.
    pub db_url: String,
    /// Table holding the sockets.
    pub table_name: String,
    /// Column with the socket definition.
    pub socket_column: String,
    /// Column with the advertised address.
    pub advertised_column: String,
    /// Column with the tag.
    pub tag_column: String,
    /// Column with the flags.
    pub flags_column: String,
    /// Column with the TOS.
    pub tos_column: String,
    /// Number of UDP worker processes (fixed pool).
    pub processes: u32,
    /// Slots in the shared table: the most sockets that can run at once.
    pub max_sockets: u32,
    /// Bad rows: reject the table (default) or skip them.
    pub invalid_rows: InvalidRows,
}

impl Default for SocketsMgm {
    fn default() -> Self {
        SocketsMgm {
            db_url: "sqlite://sipsockd.db".into(),
            table_name: "sockets".into(),
            socket_column: "socket".into(),
            advertised_column: "advertised".into(),
            tag_column: "tag".into(),
            flags_column: "flags".into(),
            tos_column: "tos".into(),
            processes: 8,
            max_sockets: 100,
            invalid_rows: InvalidRows::Reject,
        }
    }
}

/// `[mi_fifo]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MiFifo {
    /// Path of the server FIFO.
    pub fifo_name: PathBuf,
    /// Octal mode of the server FIFO, as a string (`"0660"`).
    pub fifo_mode: String,
    /// Directory where clients' reply FIFOs live.
    pub reply_dir: PathBuf,
}

impl Default for MiFifo {
    fn default() -> Self {
        MiFifo {
            fifo_name: "/tmp/opensips_fifo".into(),
            fifo_mode: "0660".into(),
            reply_dir: "/tmp/".into(),
        }
    }
}

/// `[shm]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shm {
    /// Path of the shared-memory file.
    pub path: PathBuf,
}

impl Default for Shm {
    fn default() -> Self {
        Shm {
            path: "/dev/shm/sipsockd".into(),
        }
    }
}

/// `[sip]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sip {
    /// Status code of the stateless reply to requests other than OPTIONS and ACK.
    pub reply_code: u16,
    /// Reason phrase of that reply.
    pub reply_reason: String,
}

impl Default for Sip {
    fn default() -> Self {
        Sip {
            reply_code: 503,
            reply_reason: "Service Unavailable".into(),
        }
    }
}

/// Load the configuration: `path` when given, else `./sipsockd.toml` when present, else defaults.
pub fn load(path: Option<&std::path::Path>) -> Result<Config, Box<dyn std::error::Error>> {
    let _ = path;
    todo!()
}
