//! Building the [`RouteTable`] the workers relay by, from what a reload already has: the sockets
//! with their slots (bound or not), the valid relays, the relays' counter records in the shm
//! table and the `[relay]` settings. Pure.

use super::RelayDef;
use crate::row::{Identity, SocketDef};
use std::collections::HashMap;
use worker::relay::{Destination, RelaySettings, RouteSocket, RouteTable, TagRoutes};

/// A socket of the running set as the route table needs it.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'a> {
    /// Its slot in the shm table.
    pub slot: u32,
    /// Its row.
    pub def: &'a SocketDef,
    /// True when it is bound (its bind did not fail): only bound sockets are in the table's
    /// `sockets`.
    pub bound: bool,
}

/// Why a route table could not be built: the caller's inputs disagree (a bug of the caller, said
/// rather than panicked on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A relay has no counter record.
    #[error("relay {relay_id} has no record in the shared table")]
    NoRecord {
        /// The relay's id.
        relay_id: i64,
    },
    /// A relay's `socket` is not among the sockets given.
    #[error("relay {relay_id}: its socket {socket} holds no slot")]
    NoSlot {
        /// The relay's id.
        relay_id: i64,
        /// The socket's text.
        socket: String,
    },
}

/// The route table of reload `generation`.
///
/// - `sockets`: every socket holding a slot; the bound ones become the table's `sockets` (in slot
///   order), with the advertised host and port when the row has them, else the bound IP and port.
/// - `relays`: the valid relays (as [`super::validate_tables`] gives them); grouped by tag in
///   the order tags first appear, each tag's destinations in table order.
/// - `records`: the shm counter record of a relay id.
///
/// A relay whose `socket` is in a slot but not bound (its bind failed) keeps that slot as its
/// `out_slot`: the worker finds no such socket and answers 503, as for any socket it cannot use,
/// until a reload binds it.
pub fn route_table(
    generation: u64,
    sockets: &[Placed<'_>],
    relays: &[RelayDef],
    records: &dyn Fn(i64) -> Option<u32>,
    settings: RelaySettings,
) -> Result<RouteTable, RouteError> {
    let slot_of: HashMap<Identity, u32> =
        sockets.iter().map(|p| (p.def.identity(), p.slot)).collect();
    let mut route_sockets: Vec<RouteSocket> = sockets
        .iter()
        .filter(|p| p.bound)
        .map(|p| {
            let d = p.def;
            let (host, port) = match &d.advertised {
                Some(a) => (a.host.clone(), a.port),
                None => (d.ip.to_string(), d.port),
            };
            RouteSocket {
                slot: p.slot,
                proto: d.proto,
                local: d.identity().1,
                host,
                port,
                tag: d.tag.clone(),
            }
        })
        .collect();
    route_sockets.sort_by_key(|s| s.slot);
    let mut tags: Vec<TagRoutes> = Vec::new();
    for r in relays {
        let record = records(r.id).ok_or(RouteError::NoRecord { relay_id: r.id })?;
        let out_slot = match &r.socket {
            Some(out) => Some(
                *slot_of
                    .get(&out.identity)
                    .ok_or_else(|| RouteError::NoSlot {
                        relay_id: r.id,
                        socket: out.text.clone(),
                    })?,
            ),
            None => None,
        };
        let destination = Destination {
            relay_id: r.id,
            record,
            uri: r.upstream.uri.clone(),
            addr: r.upstream.addr,
            transport: r.upstream.transport,
            host: r.upstream.host.clone(),
            weight: r.weight,
            out_slot,
            insecure: r.insecure,
        };
        match tags.iter_mut().find(|t| t.tag == r.tag) {
            Some(t) => t.destinations.push(destination),
            None => tags.push(TagRoutes {
                tag: r.tag.clone(),
                destinations: vec![destination],
            }),
        }
    }
    Ok(RouteTable {
        generation,
        sockets: route_sockets,
        tags,
        settings,
    })
}
