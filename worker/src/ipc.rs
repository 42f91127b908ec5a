//! The control protocol between the supervisor and one worker.
//!
//! Each worker has its own `SOCK_SEQPACKET` socketpair with the supervisor (never a channel shared by
//! all processes). One message is one JSON document; a message that carries fds (`Add`) carries
//! exactly one fd per entry of its manifest, in order, and the receiver checks the count and what each
//! fd is before using it. A reload is a sequence of `Add` / `Update` / `Remove` messages closed by one
//! `Commit`, which the worker acknowledges once everything before it is applied.
//!
//! This module only defines the messages and their encoding; the fd-passing system calls live in
//! `crate::sys`.

use serde::{Deserialize, Serialize};
use shm::Proto;
use std::net::SocketAddr;

/// The most fds one `Add` message carries (the kernel takes at most 253 per message).
pub const MAX_FDS_PER_MESSAGE: usize = 200;

/// The largest encoded message either side sends or accepts, in bytes.
pub const MAX_MESSAGE_SIZE: usize = 128 * 1024;

/// What a worker needs to know about one socket besides its fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// Index of the socket's slot in the shared table (its identity for both sides).
    pub slot: u32,
    /// The socket's transport.
    pub proto: Proto,
    /// The bound local address; the worker checks it against `getsockname` of the fd it got.
    pub local: SocketAddr,
    /// `host:port` put in the Contact of replies: the advertised address, or the bound one.
    pub contact: String,
    /// The row's tag, if any.
    pub tag: Option<String>,
    /// Certificate material for `tls` and `wss` sockets (read by the supervisor at each reload, so
    /// a worker never needs the files or the permission to read them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMaterial>,
}

/// What a stream worker needs to run TLS on a socket's connections.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsMaterial {
    /// PEM certificate chain.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: String,
    /// PEM CA certificates that client certificates are verified against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Refuse clients without a valid certificate.
    #[serde(default)]
    pub require_client_cert: bool,
}

impl std::fmt::Debug for TlsMaterial {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"***")
            .field("ca_pem", &self.ca_pem.as_ref().map(|c| c.len()))
            .field("require_client_cert", &self.require_client_cert)
            .finish()
    }
}

/// Limits a stream worker applies to its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSettings {
    /// Largest SIP header section accepted on a stream, in bytes.
    pub max_message_size: u32,
    /// A connection with no complete message for this long is closed (ms).
    pub connection_lifetime_ms: u64,
    /// Connections of a removed socket are closed after this (ms).
    pub drain_timeout_ms: u64,
    /// A TLS or WebSocket handshake not finished within this is dropped (ms).
    pub handshake_timeout_ms: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            max_message_size: 65535,
            connection_lifetime_ms: 120_000,
            drain_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// Supervisor to worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// First message to a new worker. Carries one fd: the shared-memory file, opened read-write by
    /// the supervisor (so the worker never needs the path or the permission to open it).
    Setup {
        /// Status code of the stateless reply to requests other than OPTIONS and ACK.
        reply_code: u16,
        /// Reason phrase of that reply.
        reply_reason: String,
        /// Stream workers: connection limits (ignored by UDP workers).
        #[serde(default)]
        stream: StreamSettings,
    },
    /// Stream workers only: the sockets whose connections this worker may be handed (their
    /// listeners stay in the supervisor). Carries no fd. Also used for in-place updates.
    Describe {
        /// Reload generation this belongs to.
        generation: u64,
        /// Metadata, keyed by slot.
        sockets: Vec<SocketInfo>,
    },
    /// Stream workers only: serve this accepted connection of socket `slot`. Carries one fd.
    Conn {
        /// The listening socket's slot.
        slot: u32,
        /// The peer's address, as accept(2) gave it.
        peer: SocketAddr,
    },
    /// Start serving these sockets; the message carries `sockets.len()` fds, in order.
    Add {
        /// Reload generation this belongs to.
        generation: u64,
        /// One entry per attached fd.
        sockets: Vec<SocketInfo>,
    },
    /// Same sockets (same fds), new advertised address or tag: applied in place.
    Update {
        /// Reload generation this belongs to.
        generation: u64,
        /// The new metadata, keyed by slot.
        sockets: Vec<SocketInfo>,
    },
    /// Stop serving these slots and close the worker's copy of their fds. For a stream worker: the
    /// connections of these slots are drained (kept until the peer closes or the drain timeout).
    Remove {
        /// Reload generation this belongs to.
        generation: u64,
        /// Slots to drop.
        slots: Vec<u32>,
    },
    /// End of a reload: acknowledge with `Ack` once everything before is applied.
    Commit {
        /// Reload generation being committed.
        generation: u64,
    },
    /// Stop serving and exit 0.
    Shutdown,
}

/// Worker to supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// First message after start: the worker is up and listening on its control socket.
    Hello {
        /// The worker's rank in its pool.
        rank: u32,
        /// The worker's pid.
        pid: u32,
    },
    /// Everything up to and including `Commit { generation }` is applied.
    Ack {
        /// The committed generation.
        generation: u64,
        /// How many sockets the worker now serves.
        serving: u32,
    },
    /// An entry of an `Add` was refused (fd missing, not a socket of the announced kind, address
    /// mismatch): the worker does not serve that slot.
    Refused {
        /// Reload generation of the refused entry.
        generation: u64,
        /// The refused slot.
        slot: u32,
        /// Why.
        reason: String,
    },
}

/// An undecodable control message.
#[derive(Debug, thiserror::Error)]
#[error("bad control message: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl ToWorker {
    /// Encode for the wire.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control messages always serialize")
    }
    /// Decode from the wire.
    pub fn decode(bytes: &[u8]) -> Result<ToWorker, DecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

impl FromWorker {
    /// Encode for the wire.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control messages always serialize")
    }
    /// Decode from the wire.
    pub fn decode(bytes: &[u8]) -> Result<FromWorker, DecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = ToWorker::Add {
            generation: 7,
            sockets: vec![SocketInfo {
                slot: 3,
                proto: Proto::Udp,
                local: "127.0.0.1:5070".parse().unwrap(),
                contact: "1.2.3.4:5070".into(),
                tag: Some("t".into()),
                tls: None,
            }],
        };
        assert_eq!(ToWorker::decode(&m.encode()).unwrap(), m);
        let a = FromWorker::Ack {
            generation: 7,
            serving: 1,
        };
        assert_eq!(FromWorker::decode(&a.encode()).unwrap(), a);
        assert!(ToWorker::decode(b"{\"type\":\"nope\"}").is_err());
    }
}
