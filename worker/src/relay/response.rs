//! A response: routed by sipsockd's own Via (module docs of [`super`]).

use super::rewrite;
use super::token::{self, Back, Binding, Token, BRANCH_LEN, BRANCH_PREFIX};
use super::{ours, Action, Arrival, Direction, DropReason, Flows, Forward, Next, Relay};
use crate::sip::{Message, Span, Via};
use shm::Proto;
use std::net::SocketAddr;

pub(super) fn handle(
    relay: &Relay,
    m: &Message<'_>,
    arrival: &Arrival<'_>,
    flows: &(impl Flows + ?Sized),
    out: &mut Vec<u8>,
) -> Action {
    let vias = m.vias();
    let Some(top) = vias.first() else {
        return Action::Drop(DropReason::NotOurs);
    };
    let Some(call_id) = m.call_id().map(|s| m.bytes(s)) else {
        return Action::Drop(DropReason::Malformed);
    };
    let Some((slot, back)) = our_via(relay, m, top, call_id) else {
        return Action::Drop(DropReason::NotOurs);
    };
    let next = match back {
        Back::Socket => {
            let udp = relay.sock(slot).is_some_and(|s| s.proto == Proto::Udp);
            match vias.get(1).and_then(|v| next_hop(m, v)) {
                Some(addr) if udp => Next::Udp(addr),
                _ => return Action::Drop(DropReason::NoRoute),
            }
        }
        Back::Flow(flow) => {
            if relay.sock(slot).is_none() || !flows.alive(flow) {
                return Action::Drop(DropReason::FlowGone);
            }
            Next::Flow(flow)
        }
        Back::Outbound(record) => {
            if relay.destination(record).is_none() {
                return Action::Drop(DropReason::NoRoute);
            }
            Next::Outbound { record }
        }
    };
    rewrite::start_line(out, m, Span::default(), None);
    rewrite::response_rest(out, m, !matches!(next, Next::Udp(_)));
    Action::Forward(Forward {
        out_slot: slot,
        next,
        direction: Direction::Response,
        record: arrival
            .outbound
            .or_else(|| from_udp_destination(relay, arrival)),
        call_hash: token::hash(call_id),
    })
}

/// The arrival slot and way back a valid Via of sipsockd's names: its branch has sipsockd's
/// prefix, its sent-by is one of sipsockd's addresses, its `sk` token checks with the Call-ID.
fn our_via(relay: &Relay, m: &Message<'_>, via: &Via, call_id: &[u8]) -> Option<(u32, Back)> {
    let branch = m.bytes(via.branch?.value?);
    if branch.len() != BRANCH_LEN || !branch.starts_with(BRANCH_PREFIX) {
        return None;
    }
    if !relay.via_is_ours(m, via) {
        return None;
    }
    match Token::read(
        token_of(m, via)?,
        &relay.key,
        Binding {
            hostport: b"",
            call_id,
        },
    )? {
        Token::Via { slot, back } => Some((slot, back)),
        _ => None,
    }
}

/// The `sk` parameter's value: where sipsockd writes it (right after the branch), else found by
/// walking the parameters (a peer may have reordered them).
fn token_of<'a>(m: &Message<'a>, via: &Via) -> Option<&'a [u8]> {
    let branch = via.branch?;
    let rest = m.bytes(Span {
        start: branch.span.end,
        end: via.value.end,
    });
    if let Some(after) = rest.strip_prefix(b";sk=") {
        let len = after
            .iter()
            .position(|b| matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n'))
            .unwrap_or(after.len());
        return after.get(..len);
    }
    let (param, _) = m
        .params(via.params)
        .find(|(_, name)| m.bytes(*name).eq_ignore_ascii_case(b"sk"))?;
    Some(m.bytes(param.value?))
}

/// Where a response goes after sipsockd's Via is removed (RFC 3261 §18.2.2, RFC 3581 §4): the
/// `received` address (else the sent-by host, which must be an IP literal) and the `rport` port
/// (else the sent-by port, else the transport's default).
fn next_hop(m: &Message<'_>, via: &Via) -> Option<SocketAddr> {
    let ip = match via.received.and_then(|p| p.value) {
        Some(received) => ours::ip_of(m.bytes(received))?,
        None => ours::ip_of(m.bytes(via.host))?,
    };
    let rport = via
        .rport
        .and_then(|p| p.value)
        .and_then(|v| m.text(v).parse::<u16>().ok())
        .filter(|p| *p != 0);
    let port = rport.or(via.port).unwrap_or_else(|| {
        m.text(via.transport)
            .parse::<Proto>()
            .map_or(5060, Proto::default_port)
    });
    Some(SocketAddr::new(ip, port))
}

/// The relay record of the UDP destination a response came from.
fn from_udp_destination(relay: &Relay, arrival: &Arrival<'_>) -> Option<u32> {
    if arrival.transport != Proto::Udp {
        return None;
    }
    relay.udp_record(arrival.source)
}
