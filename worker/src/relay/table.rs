//! The route table: everything a worker needs to relay, built by the supervisor from the
//! validated sockets and relays tables at each reload and handed to every worker whole.
//!
//! It is plain data (serde), built by the supervisor (`supervisor::relay::route_table`) from
//! validated tables: every destination's transport is one of `udp`, `tcp`, `tls`, and every
//! `out_slot` is the slot of a row of the sockets table, which is in `sockets` unless its bind
//! failed. A worker never trusts it blindly: a slot it does not know is a 503, not a panic.

use serde::{Deserialize, Serialize};
use shm::Proto;
use std::net::SocketAddr;

/// The whole table of one reload generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// The reload generation it belongs to.
    pub generation: u64,
    /// Every bound socket of every transport (the relay chooses outgoing sockets among them and
    /// recognises its own addresses in Via, Route and Request-URI by them).
    pub sockets: Vec<RouteSocket>,
    /// The relay destinations, by socket tag. A tag absent here has no relay: its sockets
    /// answer as a responder does.
    pub tags: Vec<TagRoutes>,
    /// Settings of `[relay]`.
    pub settings: RelaySettings,
}

/// A bound socket as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSocket {
    /// Its slot in the shm table (its identity for the workers).
    pub slot: u32,
    /// Its transport.
    pub proto: Proto,
    /// The bound address.
    pub local: SocketAddr,
    /// The host written in Via, Record-Route and Path: the advertised host, else the bound IP
    /// (an IPv6 address without brackets).
    pub host: String,
    /// The port written with it: the advertised port, else the bound one.
    pub port: u16,
    /// The socket's tag.
    pub tag: Option<String>,
}

/// The destinations of one tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRoutes {
    /// The tag.
    pub tag: String,
    /// Its destinations (at least one), in relays-table order.
    pub destinations: Vec<Destination>,
}

/// One row of the relays table, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The row id.
    pub relay_id: i64,
    /// Its record of counters in the shm table (requests, responses, failures).
    pub record: u32,
    /// The destination URI as written in the table (also the stable key of its share in the
    /// rendezvous hashing: the same URI keeps the same dialogs across reloads).
    pub uri: String,
    /// Where to send: the host resolved at reload, and the port.
    pub addr: SocketAddr,
    /// `udp`, `tcp` or `tls`.
    pub transport: Proto,
    /// The host as written (the name a TLS certificate is checked against).
    pub host: String,
    /// Weight in the rendezvous hashing, at least 1.
    pub weight: u32,
    /// The socket to send from (the row's `socket`), by slot; `None`: chosen per request. A slot
    /// absent from [`RouteTable::sockets`] (its bind failed) answers 503 until a reload binds it.
    pub out_slot: Option<u32>,
    /// TLS without certificate verification (row flag `insecure`, lab use only).
    pub insecure: bool,
}

/// When a REGISTER from a stream client gets a Path header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMode {
    /// Always (stream clients cannot be reached without it).
    #[default]
    Always,
    /// Only when the REGISTER carries `Supported: path` (RFC 3327 §5.2).
    Supported,
}

/// The `[relay]` settings workers apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaySettings {
    /// Fill `rport` and add `received` on the sender's Via even when it did not ask (an edge
    /// faces NATs).
    pub force_rport: bool,
    /// When Path is added.
    pub path: PathMode,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            force_rport: true,
            path: PathMode::Always,
        }
    }
}

impl RouteTable {
    /// The destinations of `tag`, if it has a relay.
    pub fn destinations(&self, tag: &str) -> Option<&[Destination]> {
        self.tags
            .iter()
            .find(|t| t.tag == tag)
            .map(|t| t.destinations.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = RouteTable {
            generation: 3,
            sockets: vec![RouteSocket {
                slot: 0,
                proto: Proto::Udp,
                local: "127.0.0.1:5060".parse().unwrap(),
                host: "sip.example.com".into(),
                port: 5060,
                tag: Some("a".into()),
            }],
            tags: vec![TagRoutes {
                tag: "a".into(),
                destinations: vec![Destination {
                    relay_id: 1,
                    record: 0,
                    uri: "sip:127.0.0.2:5080;transport=tcp".into(),
                    addr: "127.0.0.2:5080".parse().unwrap(),
                    transport: Proto::Tcp,
                    host: "127.0.0.2".into(),
                    weight: 2,
                    out_slot: None,
                    insecure: false,
                }],
            }],
            settings: RelaySettings::default(),
        };
        let json = serde_json::to_vec(&t).unwrap();
        assert_eq!(serde_json::from_slice::<RouteTable>(&json).unwrap(), t);
        assert_eq!(t.destinations("a").map(<[_]>::len), Some(1));
        assert!(t.destinations("b").is_none());
    }
}
