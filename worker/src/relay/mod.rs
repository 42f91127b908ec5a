//! The stateless relay (RFC 3261 §16.11, with RFC 3581, 3327 and 5626 where they apply): what a
//! worker does with a message that arrives on one of sipsockd's sockets once a route table is
//! known.
//!
//! This module owns the contract between the supervisor and the workers for relaying
//! ([`table`]: the route table the supervisor builds at each reload), and the decision for one
//! message: [`Relay::handle`] turns a parsed message and its [`Arrival`] into one [`Action`] (a
//! local reply, a message to forward and where, or a drop), writing the bytes to send into the
//! caller's buffer. It does no I/O, keeps no state between messages, never panics on what it is
//! given, and allocates nothing per message (the output buffer grows to the largest message once).
//!
//! Files: [`token`] (MACs, tokens, branch, hashes), [`uri`] (the parts of a SIP URI it reads),
//! [`ours`] (recognising sipsockd's own addresses and destination names), [`hrw`] (weighted
//! rendezvous hashing), `request` and `response` (the decisions), `rewrite` (the splicing
//! writer).
//!
//! # A request, in order
//! 1. A request missing what RFC 3261 §8.1.1 requires (Via, From, To, Call-ID, CSeq of its method)
//!    is dropped ([`DropReason::Malformed`]).
//! 2. Route preprocessing (§16.4). A Request-URI naming one of sipsockd's addresses with its
//!    Record-Route token (a strict router put it there) is checked (403 when forged) and replaced
//!    by the last Route, which is removed. Then, while the top Route names one of sipsockd's
//!    addresses: with an `sk` token, the token is checked (403 when forged: another key, another
//!    Call-ID, another host) and the entry removed (a "double" Record-Route gives two such); without
//!    one (a phone's outbound-proxy setting), the entry is removed and the request stays initial.
//!    The last token removed names the socket the request leaves through, and the flow (if any)
//!    on that side. A request that had such a token is *routed* (in-dialog, or sent through a
//!    Path).
//! 3. A socket whose tag has no relay answers a request that is not routed as the responder does
//!    (OPTIONS 200, others `[sip] reply_code`).
//! 4. An OPTIONS with no Route left and a Request-URI without user part naming one of sipsockd's
//!    addresses is a keep-alive for sipsockd: 200, whatever its Max-Forwards. (Only OPTIONS: a
//!    REGISTER or INVITE whose Request-URI is sipsockd's address, as phones configured with
//!    sipsockd as their registrar send, is relayed to the tag's destination like any other.)
//! 5. Max-Forwards 0: 483.
//! 6. Loop detection (§16.3 step 4): a Via of sipsockd's (branch prefix and sent-by one of its
//!    addresses) whose loop hash equals this request's: 482. Another loop hash is a spiral and goes
//!    on. The loop hash covers the arrival slot besides what §16.6 step 8 lists (see
//!    [`token`]): the same request coming back on another socket is a spiral.
//! 7. The target:
//!    - routed: a Route token naming a flow that the request did not come over (a request from the
//!      core to a client behind a connection), or a Path token: that flow (430 when it is gone).
//!      Else the next Route, else the Request-URI, out of the socket the last token named.
//!    - from one of the tag's destinations (over UDP: its address and port; over a connection:
//!      the outbound connection to it, or a connection from the address of a TCP or TLS
//!      destination, whatever the port): the next Route, else the Request-URI, out of the arrival
//!      socket. The core reaches a customer by sending to the customer's socket. (A client
//!      connecting from the host of a UDP destination is a client: on one test host, a SIPp UAC
//!      over TCP beside a UDP upstream.)
//!    - from anyone else: a Route left must name one of the tag's destinations (else 403: no open
//!      relay); with no Route, the destination chosen by weighted rendezvous hashing of the
//!      Call-ID ([`hrw`]). The Request-URI is left as it is.
//!
//!    A target URI naming sipsockd itself without a flow token is addressed to sipsockd and
//!    answered as the responder does. A target must be an IP literal, or a host name equal to a
//!    relay destination's host (its resolved address is used): there is no DNS in a worker; any
//!    other name is a 503 with a Warning, counted with the 503s. A TCP or TLS target must be a flow
//!    of a client connected to sipsockd or a relay destination (reached over the stream workers'
//!    outbound connection): sipsockd opens no connection to anyone else (503 with a Warning).
//! 8. The outgoing socket: the relay row's `socket` when set; else the preferred one (the arrival
//!    socket, or the socket a Route token named) when its transport is the target's; else a socket
//!    of the target's transport on the preferred socket's IP; else 503. A flow leaves through the
//!    socket its connection was accepted on.
//! 9. The rewrite (one pass, splicing the parser's spans): sipsockd's Via on top (the outgoing
//!    socket's advertised address, the transport used, the stateless branch, the `sk` token naming
//!    the arrival and `;rport` on UDP); Record-Route (below); Path (below); Max-Forwards
//!    decremented (70 added when absent); the sender's Via given `received` when its sent-by host
//!    is not the source address and `rport=PORT` when it asks (RFC 3581), or both always with
//!    `[relay] force_rport`; the removed Route entries dropped (the Request-URI replaced for a
//!    strict router); `Content-Length` added when the request goes over a stream without one. The
//!    body is untouched.
//!
//! Record-Route: on a request without a To tag whose method may create a dialog: INVITE,
//! SUBSCRIBE, REFER, NOTIFY and any method sipsockd does not know (an extension may create one).
//! Not on REGISTER, OPTIONS, MESSAGE, PUBLISH, INFO, PRACK, UPDATE, BYE, ACK, CANCEL: they create no
//! dialog, a UA ignores it there, and it would cost a MAC each. One entry `<sip:ADV:PORT;
//! transport=X;lr;sk=TOKEN>` for the outgoing socket; two (outgoing socket first, then arrival
//! socket; RFC 5658) when the request leaves through another socket than it came in on, or
//! connects two different flows. An entry on a side that is a client's connection carries the flow
//! in its token, so that later requests toward that side reach the connection.
//!
//! Path (RFC 3327): on a REGISTER that came over a client's connection, when it has
//! `Supported: path` or `[relay] path = "always"`: one `<sip:ADV:PORT;transport=X;lr;ob;sk=TOKEN>`
//! for the outgoing socket, the token naming the flow. Its MAC does not cover a Call-ID: the core
//! uses it in later dialogs.
//!
//! # A response
//! Its top Via must be sipsockd's and valid (branch prefix, sent-by one of its addresses, `sk`
//! token checked with the Call-ID); else it is dropped ([`DropReason::NotOurs`]). That Via is
//! removed and the token says where the response goes: over the client's connection
//! ([`Next::Flow`]; dropped when it is gone), over the outbound connection it came on
//! ([`Next::Outbound`]), or out of the UDP socket the request arrived on to the `received` (else
//! sent-by, which must be an IP literal) and `rport` (else the sent-by port, else the transport's
//! default) of the next Via.
//!
//! Every response is forwarded, 100 Trying included (a stateless proxy has no transaction to
//! absorb it in).
//!
//! # Counting
//! [`Action::slot_counter`] names the counter of the arrival slot to bump (beside `received`,
//! which the caller counts for every message); [`Forward::record`] the relay record whose
//! `requests` (a request to its destination) or `responses` (a response from its destination over
//! UDP or its outbound connection; not over a connection the destination opened itself, whose
//! port says nothing) to bump.
//!
//! # Using it
//! Build one [`Relay`] per route table ([`Relay::new`]: the table, the [`RelayKey`] of the
//! `[relay]` secret, the worker's [`Responder`]); for each message, [`Relay::handle`] (or
//! [`Relay::handle_bytes`], which parses) with its [`Arrival`] and a [`Flows`] that says whether a
//! flow is still open. Send the buffer as the [`Action`] says: [`Next::Outbound`]'s destination is
//! [`Relay::destination`]; [`Forward::call_hash`] picks the stream worker for an outbound send
//! (every message of a dialog over the same connection).
//!
//! # Where this departs from RELAY-DESIGN.md §3, and why
//! - Order: Route preprocessing (and its 403) comes before Max-Forwards and loop detection: the
//!   keep-alive answer (step 4) and the responder's behaviour on sockets without relay (step 3)
//!   depend on it, and a socket without relay keeps answering exactly as before (no 483 there).
//! - Step 4 answers OPTIONS only; other requests whose Request-URI is sipsockd's address are
//!   relayed (REGISTER to the SBC's address is the normal case). A request whose *target* is
//!   sipsockd's own address (after routing) is answered as the responder does.
//! - The loop hash also covers the arrival slot (the spiral, customer A to the core to
//!   customer B's socket, with a Request-URI the core did not change, would otherwise be a 482).
//! - Record-Route tokens carry the flow of the side they face, and a Path token's MAC does not
//!   cover the Call-ID; a Route token's MAC covers the URI's host:port besides the Call-ID.
//! - A connection counts as coming from a destination only for TCP and TLS destinations.
//! - Targets over TCP or TLS that are neither a flow nor a destination, and host names that are
//!   not a destination's, are 503s with a Warning (counted as `sent_503`).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod hrw;
pub mod ours;
mod request;
mod response;
mod rewrite;
pub mod table;
pub mod token;
pub mod uri;

pub use table::{Destination, PathMode, RelaySettings, RouteSocket, RouteTable, TagRoutes};
pub use token::{Flow, RelayKey};

use crate::handler::{Responder, SocketParts};
use crate::sip::{self, Message, Parsed, Start};
use ours::{FastMap, HostKey, HostMap};
use shm::{Proto, SlotCounter};
use std::net::{IpAddr, SocketAddr};

/// Where and how a message arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The slot of the socket it arrived on (for a message on an outbound connection: the socket
    /// the connection was opened from).
    pub slot: u32,
    /// The transport it came over.
    pub transport: Proto,
    /// The peer's address.
    pub source: SocketAddr,
    /// The connection it came over, when it is a connection a client opened to sipsockd.
    pub flow: Option<Flow>,
    /// The relay record of the destination, when it came over the stream workers' outbound
    /// connection to that destination.
    pub outbound: Option<u32>,
    /// The arrival socket's reply parts (the Contact of a local 200 to OPTIONS).
    pub parts: &'a SocketParts,
}

/// Whether a flow can still be written to, as far as the caller knows (a UDP worker: the stream
/// worker of that rank runs in that generation; a stream worker: the connection is open).
pub trait Flows {
    /// True when `flow` is alive.
    fn alive(&self, flow: Flow) -> bool;
}

impl<F: Fn(Flow) -> bool + ?Sized> Flows for F {
    fn alive(&self, flow: Flow) -> bool {
        self(flow)
    }
}

/// What to do with one message. The bytes to send, if any, are in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the buffer back where the message came from (the arrival socket to the source, or
    /// the connection it came over).
    Reply(ReplyKind),
    /// Send the buffer as [`Forward`] says.
    Forward(Forward),
    /// Send nothing.
    Drop(DropReason),
}

impl Action {
    /// The counter of the arrival slot this action bumps.
    pub fn slot_counter(&self) -> SlotCounter {
        match self {
            Action::Reply(kind) => kind.slot_counter(),
            Action::Forward(f) => match f.direction {
                Direction::Request => SlotCounter::RelayedRequests,
                Direction::Response => SlotCounter::RelayedResponses,
            },
            Action::Drop(_) => SlotCounter::Dropped,
        }
    }
}

/// Why sipsockd answered itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// As the responder does: 200 to OPTIONS, `[sip] reply_code` to others.
    Local,
    /// 403: a forged Route, or an initial request to someone other than the tag's destinations.
    Forbidden,
    /// 482 Loop Detected.
    Loop,
    /// 483 Too Many Hops.
    TooManyHops,
    /// 430 Flow Failed: the client connection a request should reach is gone.
    FlowFailed,
    /// 503 Service Unavailable, with a Warning saying why.
    Unavailable(Unavailable),
}

impl ReplyKind {
    /// The counter it bumps.
    pub fn slot_counter(self) -> SlotCounter {
        match self {
            ReplyKind::Local => SlotCounter::Replied,
            ReplyKind::Forbidden => SlotCounter::Sent403,
            ReplyKind::Loop => SlotCounter::Sent482,
            ReplyKind::TooManyHops => SlotCounter::Sent483,
            ReplyKind::FlowFailed => SlotCounter::Sent430,
            ReplyKind::Unavailable(_) => SlotCounter::Sent503,
        }
    }

    /// The status code.
    pub fn code(self) -> Option<u16> {
        match self {
            ReplyKind::Local => None,
            ReplyKind::Forbidden => Some(403),
            ReplyKind::Loop => Some(482),
            ReplyKind::TooManyHops => Some(483),
            ReplyKind::FlowFailed => Some(430),
            ReplyKind::Unavailable(_) => Some(503),
        }
    }
}

/// Why a request could not be forwarded (a 503, its Warning says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No socket of the target's transport on the preferred socket's IP.
    NoSocket,
    /// The target's host is a name no relay destination has (no DNS in a worker).
    Hostname,
    /// A TCP, TLS, WS or WSS target that is neither a client's flow nor a relay destination.
    NoConnection,
    /// The target is not a `sip:`/`sips:` URI over a transport sipsockd has.
    Unroutable,
}

impl Unavailable {
    /// The Warning header line of the 503.
    fn warning(self) -> &'static [u8] {
        match self {
            Unavailable::NoSocket => {
                b"Warning: 399 sipsockd \"no socket of the target's transport\"\r\n"
            }
            Unavailable::Hostname => {
                b"Warning: 399 sipsockd \"target host is not an address nor a relay destination (no DNS)\"\r\n"
            }
            Unavailable::NoConnection => {
                b"Warning: 399 sipsockd \"no connection to the stream target\"\r\n"
            }
            Unavailable::Unroutable => {
                b"Warning: 399 sipsockd \"target is not a SIP URI over a known transport\"\r\n"
            }
        }
    }
}

/// Why nothing is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A CRLF keep-alive.
    KeepAlive,
    /// Not SIP, or missing what a relay or a reply needs.
    Malformed,
    /// An ACK sipsockd would have answered (no response to an ACK), or that the responder ignores.
    Ack,
    /// A response whose top Via is not sipsockd's valid Via.
    NotOurs,
    /// A response sipsockd cannot route: the socket named in its Via is gone, the next Via's
    /// address is a host name, no Via is left.
    NoRoute,
    /// A response for a client connection that is gone.
    FlowGone,
}

/// Whether a forwarded message is a request or a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A request.
    Request,
    /// A response.
    Response,
}

/// A message to forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// The socket to send from (UDP: the fd; a flow: the socket its connection was accepted on;
    /// outbound: the socket whose IP the connection binds).
    pub out_slot: u32,
    /// Where to.
    pub next: Next,
    /// Request or response.
    pub direction: Direction,
    /// The relay record to count it on: a request to its destination, a response from it.
    pub record: Option<u32>,
    /// A hash of the Call-ID (a UDP worker picks the stream worker for an outbound send with it:
    /// every message of a dialog over one connection).
    pub call_hash: u64,
}

/// Where a forwarded message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A datagram to this address, from `out_slot`.
    Udp(SocketAddr),
    /// Over a client's connection (the stream worker `rank` owns it).
    Flow(Flow),
    /// Over the outbound connection to the destination of this relay record.
    Outbound {
        /// The relay record ([`Relay::destination`] gives the address, transport and TLS name).
        record: u32,
    },
}

/// One socket, with what the relay writes for it rendered once.
#[derive(Debug, Clone)]
struct Sock {
    slot: u32,
    proto: Proto,
    local: SocketAddr,
    /// Index in `Relay::tags` when the socket's tag has a relay.
    tag: Option<usize>,
    /// `host:port` as written in Via, Record-Route and Path (IPv6 in brackets).
    hostport: Box<[u8]>,
    /// `Via: SIP/2.0/PROTO host:port;branch=z9hG4bKsS`.
    via: Box<[u8]>,
    /// `<sip:host:port;transport=proto;lr;sk=`.
    rr: Box<[u8]>,
    /// `Path: <sip:host:port;transport=proto;lr;ob;sk=`.
    path: Box<[u8]>,
}

/// One destination.
#[derive(Debug, Clone)]
struct Dest {
    record: u32,
    addr: SocketAddr,
    transport: Proto,
    /// The host as written, lower case.
    host: Box<[u8]>,
    out_slot: Option<u32>,
}

/// One tag with a relay.
#[derive(Debug, Clone, Default)]
struct Tag {
    /// Indices in `Relay::dests`, in table order.
    dests: Vec<usize>,
    /// Their rendezvous keys and weights, in the same order.
    candidates: Vec<hrw::Candidate>,
}

/// The relay of one route table: built once per reload ([`Relay::new`]), then asked about each
/// message ([`Relay::handle`]).
#[derive(Debug, Clone)]
pub struct Relay {
    table: RouteTable,
    key: RelayKey,
    responder: Responder,
    socks: Vec<Sock>,
    by_slot: FastMap<u32, usize>,
    /// The first socket of a transport on an IP.
    by_ip_proto: FastMap<(IpAddr, Proto), usize>,
    /// sipsockd's addresses (advertised and bound), to the sockets that have them.
    ours: HostMap<Vec<usize>>,
    tags: Vec<Tag>,
    dests: Vec<Dest>,
    /// The table's destinations, in the order of `dests`.
    destinations: Vec<Destination>,
    /// Destinations by address and by name (with their port).
    dest_by_host: HostMap<Vec<usize>>,
    dest_by_record: FastMap<u32, usize>,
}

impl Relay {
    /// The relay of `table`, keyed with `key`, answering what it answers itself as `responder`
    /// does. Entries of the table that cannot be used (a second socket with the same slot, a
    /// destination whose `out_slot` is not a socket) are kept out, logged at warn.
    pub fn new(table: &RouteTable, key: RelayKey, responder: Responder) -> Relay {
        let mut relay = Relay {
            table: table.clone(),
            key,
            responder,
            socks: Vec::with_capacity(table.sockets.len()),
            by_slot: FastMap::default(),
            by_ip_proto: FastMap::default(),
            ours: HostMap::default(),
            tags: Vec::new(),
            dests: Vec::new(),
            destinations: Vec::new(),
            dest_by_host: HostMap::default(),
            dest_by_record: FastMap::default(),
        };
        let mut tag_index: std::collections::HashMap<&str, usize> = Default::default();
        for t in &table.tags {
            let index = *tag_index.entry(t.tag.as_str()).or_insert_with(|| {
                relay.tags.push(Tag::default());
                relay.tags.len() - 1
            });
            for d in &t.destinations {
                let i = relay.dests.len();
                relay.dests.push(Dest {
                    record: d.record,
                    addr: SocketAddr::new(d.addr.ip().to_canonical(), d.addr.port()),
                    transport: d.transport,
                    host: d.host.to_ascii_lowercase().into_bytes().into_boxed_slice(),
                    out_slot: d.out_slot,
                });
                relay.destinations.push(d.clone());
                relay.dest_by_record.entry(d.record).or_insert(i);
                let by_addr = HostKey::ip(d.addr.ip(), d.addr.port());
                push_to(&mut relay.dest_by_host, &by_addr, i);
                if ours::ip_of(d.host.as_bytes()).is_none() {
                    if let Some(by_name) = HostKey::new(d.host.as_bytes(), d.addr.port()) {
                        push_to(&mut relay.dest_by_host, &by_name, i);
                    }
                }
                if let Some(tag) = relay.tags.get_mut(index) {
                    tag.dests.push(i);
                    tag.candidates.push(hrw::Candidate {
                        key: token::hash(d.uri.as_bytes()),
                        weight: d.weight,
                    });
                }
            }
        }
        for s in &table.sockets {
            if relay.by_slot.contains_key(&s.slot) {
                log::warn!("route table: slot {} listed twice; the first kept", s.slot);
                continue;
            }
            let i = relay.socks.len();
            let hostport = hostport(&s.host, s.port);
            let proto_upper = s.proto.as_str().to_ascii_uppercase();
            let proto = s.proto.as_str();
            let cat = |parts: &[&[u8]]| parts.concat().into_boxed_slice();
            relay.socks.push(Sock {
                slot: s.slot,
                proto: s.proto,
                local: s.local,
                tag: s
                    .tag
                    .as_deref()
                    .and_then(|t| tag_index.get(t).copied())
                    .filter(|t| relay.tags.get(*t).is_some_and(|t| !t.dests.is_empty())),
                via: cat(&[
                    b"Via: SIP/2.0/",
                    proto_upper.as_bytes(),
                    b" ",
                    &hostport,
                    b";branch=",
                    token::BRANCH_PREFIX,
                ]),
                rr: cat(&[
                    b"<sip:",
                    &hostport,
                    b";transport=",
                    proto.as_bytes(),
                    b";lr;sk=",
                ]),
                path: cat(&[
                    b"Path: <sip:",
                    &hostport,
                    b";transport=",
                    proto.as_bytes(),
                    b";lr;ob;sk=",
                ]),
                hostport: hostport.into_boxed_slice(),
            });
            relay.by_slot.insert(s.slot, i);
            relay
                .by_ip_proto
                .entry((s.local.ip().to_canonical(), s.proto))
                .or_insert(i);
            if let Some(k) = HostKey::new(s.host.as_bytes(), s.port) {
                push_to(&mut relay.ours, &k, i);
            }
            push_to(
                &mut relay.ours,
                &HostKey::ip(s.local.ip(), s.local.port()),
                i,
            );
        }
        for d in &relay.dests {
            if let Some(slot) = d.out_slot {
                if !relay.by_slot.contains_key(&slot) {
                    log::warn!(
                        "route table: relay record {} sends from slot {slot}, which is not a socket: its requests get 503",
                        d.record
                    );
                }
            }
        }
        relay
    }

    /// The reload generation of the table.
    pub fn generation(&self) -> u64 {
        self.table.generation
    }

    /// The route table it was built from.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The destination of a relay record (where an [`Next::Outbound`] goes).
    pub fn destination(&self, record: u32) -> Option<&Destination> {
        self.dest_by_record
            .get(&record)
            .and_then(|i| self.destinations.get(*i))
    }

    /// True when the socket of `slot` has a tag with relay destinations.
    pub fn relays(&self, slot: u32) -> bool {
        self.sock(slot).is_some_and(|s| s.tag.is_some())
    }

    /// Decide what to do with one datagram or one message a stream delivered whole: keep-alives
    /// are dropped, the rest parsed into `parsed` (the worker's scratch) and given to
    /// [`Relay::handle`].
    pub fn handle_bytes(
        &self,
        parsed: &mut Parsed,
        bytes: &[u8],
        arrival: &Arrival<'_>,
        flows: &(impl Flows + ?Sized),
        out: &mut Vec<u8>,
    ) -> Action {
        out.clear();
        if sip::is_keepalive(bytes) {
            return Action::Drop(DropReason::KeepAlive);
        }
        match parsed.parse(bytes) {
            Ok(m) => self.handle(&m, arrival, flows, out),
            Err(_) => Action::Drop(DropReason::Malformed),
        }
    }

    /// Decide what to do with a parsed message that arrived as `arrival` says; the bytes to send
    /// (a reply, or the message to forward) go to `out`, which is cleared first.
    pub fn handle(
        &self,
        m: &Message<'_>,
        arrival: &Arrival<'_>,
        flows: &(impl Flows + ?Sized),
        out: &mut Vec<u8>,
    ) -> Action {
        out.clear();
        match m.start() {
            Start::Request { .. } => request::handle(self, m, arrival, flows, out),
            Start::Response { .. } => response::handle(self, m, arrival, flows, out),
        }
    }

    fn sock(&self, slot: u32) -> Option<&Sock> {
        self.by_slot.get(&slot).and_then(|i| self.socks.get(*i))
    }

    /// The sockets that have `host:port` (advertised or bound) as address.
    fn ours(&self, host: &[u8], port: u16) -> Option<&[usize]> {
        let key = HostKey::new(host, port)?;
        self.ours.get(&key).map(Vec::as_slice)
    }

    /// The sockets a URI names (by host and port, the port defaulted by its transport).
    fn ours_uri(&self, m: &Message<'_>, u: &uri::Uri) -> Option<&[usize]> {
        self.ours(m.bytes(u.host), u.port_or_default())
    }

    /// A Via whose sent-by is one of sipsockd's addresses (the port defaulted by its transport).
    fn via_is_ours(&self, m: &Message<'_>, v: &sip::Via) -> bool {
        let port = v.port.unwrap_or_else(|| {
            m.text(v.transport)
                .parse::<Proto>()
                .map_or(5060, Proto::default_port)
        });
        self.ours(m.bytes(v.host), port).is_some()
    }

    /// A local reply of `kind`.
    fn refuse(
        &self,
        m: &Message<'_>,
        arrival: &Arrival<'_>,
        kind: ReplyKind,
        out: &mut Vec<u8>,
    ) -> Action {
        let (status_line, extra): (&[u8], &[u8]) = match kind {
            ReplyKind::Local => return self.respond(m, arrival, out),
            ReplyKind::Forbidden => (b"SIP/2.0 403 Forbidden\r\n", b""),
            ReplyKind::Loop => (b"SIP/2.0 482 Loop Detected\r\n", b""),
            ReplyKind::TooManyHops => (b"SIP/2.0 483 Too Many Hops\r\n", b""),
            ReplyKind::FlowFailed => (b"SIP/2.0 430 Flow Failed\r\n", b""),
            ReplyKind::Unavailable(why) => (b"SIP/2.0 503 Service Unavailable\r\n", why.warning()),
        };
        let code = kind.code().unwrap_or(500);
        let outcome =
            crate::handler::reply_with_status(m, arrival.source, status_line, code, extra, out);
        outcome_action(outcome, kind)
    }

    /// The responder's answer (OPTIONS 200, others `[sip] reply_code`).
    fn respond(&self, m: &Message<'_>, arrival: &Arrival<'_>, out: &mut Vec<u8>) -> Action {
        let outcome = self.responder.reply(m, arrival.source, arrival.parts, out);
        outcome_action(outcome, ReplyKind::Local)
    }
}

fn outcome_action(outcome: crate::handler::Outcome, kind: ReplyKind) -> Action {
    match outcome {
        crate::handler::Outcome::Replied => Action::Reply(kind),
        crate::handler::Outcome::Ignored => Action::Drop(DropReason::Ack),
        crate::handler::Outcome::Malformed => Action::Drop(DropReason::Malformed),
    }
}

fn push_to(map: &mut HostMap<Vec<usize>>, key: &HostKey, i: usize) {
    if let Some(list) = map.get_mut(key) {
        if !list.contains(&i) {
            list.push(i);
        }
    } else {
        map.insert_first(key, vec![i]);
    }
}

/// `host:port`, an IPv6 address in brackets.
fn hostport(host: &str, port: u16) -> Vec<u8> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let mut out = Vec::with_capacity(host.len() + 8);
    if bare.contains(':') {
        out.push(b'[');
        out.extend_from_slice(bare.as_bytes());
        out.push(b']');
    } else {
        out.extend_from_slice(host.as_bytes());
    }
    out.push(b':');
    crate::handler::put_u32(&mut out, u32::from(port));
    out
}
