//! A request: the steps of the module docs ([`super`]), in that order.

use super::rewrite::{self, Edits, MaxForwards, SenderVia};
use super::token::{self, Back, Binding, LoopHash, Token, BRANCH_LEN, BRANCH_PREFIX, HASH_CHARS};
use super::uri::{self, Uri};
use super::{
    hrw, ours, Action, Arrival, DropReason, Flow, Flows, Forward, Next, PathMode, Relay, ReplyKind,
    Sock, Unavailable,
};
use crate::handler::Required;
use crate::sip::{Entry, Message, Method, OptionTags, Span, Start};
use shm::Proto;
use std::net::SocketAddr;

/// What the last Route token removed names: the socket the request leaves through, and the flow
/// of the peer on that side.
#[derive(Debug, Clone, Copy)]
struct Named {
    /// Its index in the relay's sockets.
    sock: Option<usize>,
    slot: u32,
    flow: Option<Flow>,
}

/// Where a request goes, before addresses are resolved.
enum Target {
    Uri(Uri),
    Dest(usize),
    Flow { slot: u32, flow: Flow },
}

/// Where a request goes.
enum Resolved {
    Udp(SocketAddr),
    Dest(usize),
    Flow {
        slot: u32,
        flow: Flow,
    },
    /// Addressed to sipsockd.
    Us,
}

pub(super) fn handle(
    relay: &Relay,
    m: &Message<'_>,
    arrival: &Arrival<'_>,
    flows: &(impl Flows + ?Sized),
    out: &mut Vec<u8>,
) -> Action {
    let Start::Request {
        method,
        method_span,
        uri: uri_span,
    } = m.start()
    else {
        return Action::Drop(DropReason::Malformed);
    };
    // 1. What a reply or a relay needs.
    let (Some(_), Some(call_id_span), Some(cseq)) =
        (Required::find(m, method_span), m.call_id(), m.cseq())
    else {
        return Action::Drop(DropReason::Malformed);
    };
    let call_id = m.bytes(call_id_span);
    let buf = m.buf();
    let routes = m.routes();
    let ruri = uri::parse_uri(buf, uri_span);
    let arrival_sock = relay.by_slot.get(&arrival.slot).copied();

    // 2. Route preprocessing (RFC 3261 §16.4).
    let mut named: Option<Named> = None;
    let mut uri_flow: Option<(u32, Flow)> = None;
    let mut strict_last: Option<usize> = None;
    let mut routed = false;
    if let Some(u) = ruri.as_ref().filter(|u| u.token.is_some()) {
        if let Some(socks) = relay.ours_uri(m, u) {
            match read_token(relay, m, u, call_id) {
                Some(Token::Route { slot, flow }) => {
                    // A strict router put our Record-Route here: the remote target is the last Route.
                    strict_last = routes.len().checked_sub(1);
                    named = Some(name_socket(relay, m, u, socks, slot, flow));
                }
                Some(Token::Path { slot, flow }) => uri_flow = Some((slot, flow)),
                _ => return relay.refuse(m, arrival, ReplyKind::Forbidden, out),
            }
            routed = true;
        }
    }
    let end = strict_last.unwrap_or(routes.len());
    let mut top = 0;
    while let Some(e) = routes.get(top).filter(|_| top < end) {
        let Some(u) = uri::parse_entry(buf, e.value) else {
            break;
        };
        let Some(socks) = relay.ours_uri(m, &u) else {
            break;
        };
        if u.token.is_some() {
            named = Some(match read_token(relay, m, &u, call_id) {
                Some(Token::Route { slot, flow }) => name_socket(relay, m, &u, socks, slot, flow),
                Some(Token::Path { slot, flow }) => Named {
                    sock: relay.by_slot.get(&slot).copied(),
                    slot,
                    flow: Some(flow),
                },
                _ => return relay.refuse(m, arrival, ReplyKind::Forbidden, out),
            });
            routed = true;
        }
        // Without a token: a preloaded Route to sipsockd (an outbound-proxy setting), removed.
        top += 1;
    }
    let remaining = routes.get(top..end).unwrap_or_default();
    let tag = arrival_sock
        .and_then(|i| relay.socks.get(i))
        .and_then(|s| s.tag);

    // 3. A socket without relay answers what is not routed, as the responder does.
    if !routed && tag.is_none() {
        return relay.respond(m, arrival, out);
    }

    // 4. Keep-alives for sipsockd.
    if method == Method::Options && !routed && remaining.is_empty() {
        if let Some(u) = &ruri {
            if !u.user && relay.ours_uri(m, u).is_some() {
                return relay.respond(m, arrival, out);
            }
        }
    }

    // 5. Max-Forwards.
    if m.max_forwards() == Some(0) {
        return relay.refuse(m, arrival, ReplyKind::TooManyHops, out);
    }

    // 6. Loops and spirals.
    let from_tag = m
        .from()
        .and_then(|f| f.tag)
        .and_then(|t| t.value)
        .map(|v| m.bytes(v))
        .unwrap_or_default();
    let mut loop_hash = LoopHash::new(
        arrival.slot,
        m.bytes(uri_span),
        from_tag,
        call_id,
        cseq.number,
    );
    for e in routes {
        loop_hash.route(m.bytes(e.value));
    }
    let h2 = token::hash_text(loop_hash.finish());
    if looped(relay, m, &h2) {
        return relay.refuse(m, arrival, ReplyKind::Loop, out);
    }

    // 7. The target.
    let call_hash = token::hash(call_id);
    let next_uri = || -> Option<Uri> {
        match remaining.first() {
            Some(e) => uri::parse_entry(buf, e.value),
            None => match strict_last.and_then(|i| routes.get(i)) {
                Some(last) => uri::parse_entry(buf, last.value),
                None => ruri,
            },
        }
    };
    let (target, preferred, row_slot) = if routed {
        let flow_target = named
            .and_then(|n| {
                n.flow
                    .filter(|f| arrival.flow != Some(*f))
                    .map(|f| (n.slot, f))
            })
            .or(uri_flow);
        match flow_target {
            Some((slot, flow)) => (Some(Target::Flow { slot, flow }), None, None),
            None => (
                next_uri().map(Target::Uri),
                named.and_then(|n| n.sock).or(arrival_sock),
                None,
            ),
        }
    } else {
        let Some(tag) = tag.and_then(|t| relay.tags.get(t)) else {
            return relay.respond(m, arrival, out);
        };
        if relay.sent_by_destination(tag, arrival) {
            (next_uri().map(Target::Uri), arrival_sock, None)
        } else {
            let chosen = match remaining.first() {
                Some(e) => match relay.route_to_destination(m, tag, e) {
                    Some(d) => d,
                    None => return relay.refuse(m, arrival, ReplyKind::Forbidden, out),
                },
                None => {
                    match hrw::choose(call_hash, &tag.candidates).and_then(|i| tag.dests.get(i)) {
                        Some(d) => *d,
                        None => return relay.respond(m, arrival, out),
                    }
                }
            };
            let row = relay.dests.get(chosen).and_then(|d| d.out_slot);
            (Some(Target::Dest(chosen)), arrival_sock, row)
        }
    };
    let resolved = match target {
        None => Err(ReplyKind::Unavailable(Unavailable::Unroutable)),
        Some(Target::Flow { slot, flow }) => Ok(Resolved::Flow { slot, flow }),
        Some(Target::Dest(d)) => Ok(Resolved::Dest(d)),
        Some(Target::Uri(u)) => relay.resolve(m, &u, call_id),
    };

    // 8. The outgoing socket.
    let (next, out_index, record, target_flow) = match resolved {
        Err(kind) => return relay.refuse(m, arrival, kind, out),
        Ok(Resolved::Us) => return relay.respond(m, arrival, out),
        Ok(Resolved::Flow { slot, flow }) => match relay.by_slot.get(&slot).copied() {
            Some(i) if flows.alive(flow) => (Next::Flow(flow), i, None, Some(flow)),
            _ => return relay.refuse(m, arrival, ReplyKind::FlowFailed, out),
        },
        Ok(Resolved::Dest(d)) => {
            let Some(dest) = relay.dests.get(d) else {
                return relay.refuse(m, arrival, ReplyKind::Forbidden, out);
            };
            let i = match relay.out_socket(preferred, row_slot, dest.transport) {
                Ok(i) => i,
                Err(why) => return relay.refuse(m, arrival, ReplyKind::Unavailable(why), out),
            };
            let next = if dest.transport == Proto::Udp {
                Next::Udp(dest.addr)
            } else {
                Next::Outbound {
                    record: dest.record,
                }
            };
            (next, i, Some(dest.record), None)
        }
        Ok(Resolved::Udp(addr)) => match relay.out_socket(preferred, None, Proto::Udp) {
            Ok(i) => (Next::Udp(addr), i, relay.udp_record(addr), None),
            Err(why) => return relay.refuse(m, arrival, ReplyKind::Unavailable(why), out),
        },
    };
    let Some(out_sock) = relay.socks.get(out_index) else {
        return relay.refuse(
            m,
            arrival,
            ReplyKind::Unavailable(Unavailable::NoSocket),
            out,
        );
    };
    let in_sock = arrival_sock.and_then(|i| relay.socks.get(i));

    // 9. The rewrite.
    let new_uri = strict_last
        .and_then(|i| routes.get(i))
        .map(|e| entry_uri(buf, e.value));
    rewrite::start_line(out, m, uri_span, new_uri);
    put_via(relay, m, arrival, out_sock, call_id, &h2, out);
    let to_tagged = m.to().is_some_and(|t| t.tag.is_some());
    if !to_tagged && record_routes(method) {
        out.extend_from_slice(b"Record-Route: ");
        let flows_differ = matches!((target_flow, arrival.flow), (Some(a), Some(b)) if a != b);
        match in_sock {
            Some(in_sock) if arrival_sock != Some(out_index) || flows_differ => {
                put_record_route(relay, out_sock, target_flow, call_id, out);
                out.extend_from_slice(b", ");
                put_record_route(relay, in_sock, arrival.flow, call_id, out);
            }
            _ => put_record_route(relay, out_sock, target_flow.or(arrival.flow), call_id, out),
        }
        out.extend_from_slice(b"\r\n");
    }
    if let (Method::Register, Some(flow)) = (method, arrival.flow) {
        if relay.table.settings.path == PathMode::Always || m.supported().contains(OptionTags::PATH)
        {
            out.extend_from_slice(&out_sock.path);
            Token::Path {
                slot: arrival.slot,
                flow,
            }
            .write(
                &relay.key,
                Binding {
                    hostport: &out_sock.hostport,
                    call_id: b"",
                },
                out,
            );
            out.extend_from_slice(b">\r\n");
        }
    }
    let max_forwards = match (
        m.max_forwards(),
        m.first(crate::sip::HeaderKind::MaxForwards),
    ) {
        (Some(n), _) => MaxForwards::Replace(n.saturating_sub(1)),
        // Not a number: rewritten as if it had been absent.
        (None, Some(_)) => MaxForwards::Replace(70),
        (None, None) => MaxForwards::Add,
    };
    rewrite::request_rest(
        out,
        m,
        &Edits {
            drop_top: top,
            drop_also: strict_last,
            max_forwards,
            sender: sender_via(relay, m, arrival),
            content_length: !matches!(next, Next::Udp(_)),
        },
    );
    Action::Forward(Forward {
        out_slot: out_sock.slot,
        next,
        direction: super::Direction::Request,
        record,
        call_hash,
    })
}

/// Methods whose requests without a To tag get a Record-Route (see the module docs).
fn record_routes(method: Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Subscribe | Method::Refer | Method::Notify | Method::Other
    )
}

/// A Via of sipsockd's (its branch prefix and sent-by) carries this loop hash.
fn looped(relay: &Relay, m: &Message<'_>, h2: &[u8]) -> bool {
    m.vias().iter().any(|v| {
        let Some(branch) = v.branch.and_then(|p| p.value).map(|s| m.bytes(s)) else {
            return false;
        };
        branch.len() == BRANCH_LEN
            && branch.starts_with(BRANCH_PREFIX)
            && branch.get(BRANCH_PREFIX.len() + HASH_CHARS..) == Some(h2)
            && relay.via_is_ours(m, v)
    })
}

/// sipsockd's Via for a request leaving through `out_sock`.
fn put_via(
    relay: &Relay,
    m: &Message<'_>,
    arrival: &Arrival<'_>,
    out_sock: &Sock,
    call_id: &[u8],
    h2: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&out_sock.via);
    token::put_hash(out, branch_hash(m, call_id));
    out.extend_from_slice(h2);
    out.extend_from_slice(b";sk=");
    let back = match (arrival.flow, arrival.outbound) {
        (Some(flow), _) => Back::Flow(flow),
        (None, Some(record)) => Back::Outbound(record),
        (None, None) => Back::Socket,
    };
    Token::Via {
        slot: arrival.slot,
        back,
    }
    .write(
        &relay.key,
        Binding {
            hostport: b"",
            call_id,
        },
        out,
    );
    if out_sock.proto == Proto::Udp {
        out.extend_from_slice(b";rport");
    }
    out.extend_from_slice(b"\r\n");
}

/// The first part of the branch: the received top branch when it is an RFC 3261 one (a CANCEL
/// or the ACK of a non-2xx repeats it), else (RFC 2543 peers) the top Via, Call-ID, From tag
/// and CSeq number, as RFC 3261 §16.11 says.
fn branch_hash(m: &Message<'_>, call_id: &[u8]) -> u64 {
    let Some(top) = m.vias().first() else {
        return 0;
    };
    let branch = top
        .branch
        .and_then(|p| p.value)
        .map(|v| m.bytes(v))
        .unwrap_or_default();
    if branch.starts_with(b"z9hG4bK") {
        return token::hash(branch);
    }
    let mut h = token::Hasher64::new(2543);
    h.bytes(m.bytes(top.value));
    h.bytes(call_id);
    if let Some(tag) = m.from().and_then(|f| f.tag).and_then(|t| t.value) {
        h.bytes(m.bytes(tag));
    }
    h.u64(u64::from(m.cseq().map_or(0, |c| c.number)));
    h.finish()
}

/// One Record-Route entry for `sock`, its token naming `flow` (the connection on that side).
fn put_record_route(
    relay: &Relay,
    sock: &Sock,
    flow: Option<Flow>,
    call_id: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&sock.rr);
    Token::Route {
        slot: sock.slot,
        flow,
    }
    .write(
        &relay.key,
        Binding {
            hostport: &sock.hostport,
            call_id,
        },
        out,
    );
    out.push(b'>');
}

/// How the sender's Via is edited; `None` when it is left as it is (its sent-by host is the
/// source, it does not ask for rport and rport is not forced).
fn sender_via(relay: &Relay, m: &Message<'_>, arrival: &Arrival<'_>) -> Option<SenderVia> {
    let top = m.vias().first()?;
    let force = relay.table.settings.force_rport;
    let asked = top.rport.is_some_and(|p| p.value.is_none());
    let source = arrival.source;
    let host_differs = ours::ip_of(m.bytes(top.host)) != Some(source.ip().to_canonical());
    (host_differs || asked || force).then_some(SenderVia {
        source,
        add_rport: force && top.rport.is_none(),
    })
}

/// The URI of a Route entry (inside its `<...>`, else the whole value).
fn entry_uri(buf: &[u8], value: Span) -> Span {
    let bytes = buf.get(value.range()).unwrap_or_default();
    match (
        bytes.iter().position(|b| *b == b'<'),
        bytes.iter().position(|b| *b == b'>'),
    ) {
        (Some(open), Some(close)) if open < close => Span {
            start: value.start + open as u32 + 1,
            end: value.start + close as u32,
        },
        _ => value,
    }
}

/// The token of a URI of sipsockd's, checked against the URI's host:port and the Call-ID.
fn read_token(relay: &Relay, m: &Message<'_>, u: &Uri, call_id: &[u8]) -> Option<Token> {
    let text = m.bytes(u.token?);
    Token::read(
        text,
        &relay.key,
        Binding {
            hostport: m.bytes(u.hostport),
            call_id,
        },
    )
}

/// The socket a Route token names: its slot when that socket still has the URI's host:port, else
/// a socket with that address and the URI's transport (the table changed since).
fn name_socket(
    relay: &Relay,
    m: &Message<'_>,
    u: &Uri,
    socks: &[usize],
    slot: u32,
    flow: Option<Flow>,
) -> Named {
    let hostport = m.bytes(u.hostport);
    let by_slot = relay.by_slot.get(&slot).copied().filter(|i| {
        relay
            .socks
            .get(*i)
            .is_some_and(|s| s.hostport.eq_ignore_ascii_case(hostport))
    });
    let sock = by_slot
        .or_else(|| {
            socks
                .iter()
                .copied()
                .find(|i| relay.socks.get(*i).map(|s| s.proto) == u.proto())
        })
        .or_else(|| socks.first().copied());
    Named {
        sock,
        slot: sock
            .and_then(|i| relay.socks.get(i))
            .map_or(slot, |s| s.slot),
        flow,
    }
}

impl Relay {
    /// The request came from one of the tag's destinations: over UDP from its address and port;
    /// over a connection, the outbound one to it, or one it opened from its address (a TCP or TLS
    /// destination's: a client on the host of a UDP destination is a client).
    fn sent_by_destination(&self, tag: &super::Tag, arrival: &Arrival<'_>) -> bool {
        let ip = arrival.source.ip().to_canonical();
        let udp = arrival.transport == Proto::Udp;
        tag.dests
            .iter()
            .filter_map(|d| self.dests.get(*d))
            .any(|d| {
                let from_its_host = d.addr.ip() == ip
                    && if udp {
                        d.addr.port() == arrival.source.port()
                    } else {
                        d.transport != Proto::Udp
                    };
                arrival.outbound == Some(d.record) || from_its_host
            })
    }

    /// The destination of `tag` a Route entry names (by address and port, or by host name and
    /// port).
    fn route_to_destination(&self, m: &Message<'_>, tag: &super::Tag, e: &Entry) -> Option<usize> {
        let u = uri::parse_entry(m.buf(), e.value)?;
        let host = m.bytes(u.host);
        let port = u.port_or_default();
        let ip = ours::ip_of(host);
        let bare = host.strip_suffix(b".").unwrap_or(host);
        tag.dests.iter().copied().find(|d| {
            self.dests.get(*d).is_some_and(|d| {
                d.addr.port() == port
                    && match ip {
                        Some(ip) => d.addr.ip() == ip,
                        None => d.host.eq_ignore_ascii_case(bare),
                    }
            })
        })
    }

    /// Where a target URI leads.
    fn resolve(&self, m: &Message<'_>, u: &Uri, call_id: &[u8]) -> Result<Resolved, ReplyKind> {
        if self.ours_uri(m, u).is_some() {
            if u.token.is_none() {
                return Ok(Resolved::Us);
            }
            return match read_token(self, m, u, call_id) {
                Some(Token::Path { slot, flow }) => Ok(Resolved::Flow { slot, flow }),
                Some(_) => Ok(Resolved::Us),
                None => Err(ReplyKind::Forbidden),
            };
        }
        let unavailable = ReplyKind::Unavailable;
        let proto = u.proto().ok_or(unavailable(Unavailable::Unroutable))?;
        let host = m.bytes(u.host);
        let port = u.port_or_default();
        let key = ours::HostKey::new(host, port).ok_or(unavailable(Unavailable::Unroutable))?;
        let dest = self.dest_by_host.get(&key).and_then(|list| {
            list.iter()
                .copied()
                .find(|d| self.dests.get(*d).is_some_and(|d| d.transport == proto))
        });
        match (dest, ours::ip_of(host), proto) {
            (Some(d), _, _) => Ok(Resolved::Dest(d)),
            (None, Some(ip), Proto::Udp) => Ok(Resolved::Udp(SocketAddr::new(ip, port))),
            (None, Some(_), _) => Err(unavailable(Unavailable::NoConnection)),
            (None, None, _) => Err(unavailable(Unavailable::Hostname)),
        }
    }

    /// The relay record of a UDP destination at `addr`.
    pub(super) fn udp_record(&self, addr: SocketAddr) -> Option<u32> {
        let list = self
            .dest_by_host
            .get(&ours::HostKey::ip(addr.ip(), addr.port()))?;
        list.iter()
            .filter_map(|d| self.dests.get(*d))
            .find(|d| d.transport == Proto::Udp)
            .map(|d| d.record)
    }

    /// The outgoing socket for `needed`: the row's socket when set; else the preferred one when
    /// its transport is `needed`; else a socket of `needed` on the preferred socket's IP.
    fn out_socket(
        &self,
        preferred: Option<usize>,
        row: Option<u32>,
        needed: Proto,
    ) -> Result<usize, Unavailable> {
        if let Some(slot) = row {
            return self
                .by_slot
                .get(&slot)
                .copied()
                .filter(|i| self.socks.get(*i).is_some_and(|s| s.proto == needed))
                .ok_or(Unavailable::NoSocket);
        }
        let p = preferred
            .and_then(|i| self.socks.get(i).map(|s| (i, s)))
            .ok_or(Unavailable::NoSocket)?;
        if p.1.proto == needed {
            return Ok(p.0);
        }
        self.by_ip_proto
            .get(&(p.1.local.ip().to_canonical(), needed))
            .copied()
            .ok_or(Unavailable::NoSocket)
    }
}
