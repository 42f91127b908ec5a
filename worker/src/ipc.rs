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
    /// Stop serving these slots and close the worker's copy of their fds.
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
