//! The relay's test world, shared by `tests/relay_*.rs` (included with `#[path]`): a route table
//! of customer, core and trunk sockets, literal SIP messages sent through [`Relay::handle`], and
//! the output read back with the parser.
//!
//! Addresses are documentation ranges: nothing is sent anywhere, the relay only decides.
#![allow(dead_code)]

use shm::Proto;
use std::collections::HashMap;
use std::net::SocketAddr;
use worker::handler::{Responder, SocketParts};
use worker::relay::{
    Action, Arrival, Destination, Flow, PathMode, Relay, RelayKey, RelaySettings, RouteSocket,
    RouteTable, TagRoutes,
};
use worker::sip;

/// The core (tag `cust-a`'s and `cust-b`'s first destination).
pub const CORE: &str = "192.0.2.50:5060";
/// `cust-b`'s second destination.
pub const CORE2: &str = "192.0.2.51:5060";
/// `trunk`'s destination, over TCP.
pub const TCP_CORE: &str = "192.0.2.60:5060";
/// `named`'s destination, written with a host name.
pub const NAMED_CORE: &str = "192.0.2.70:5080";
/// Customer A's phone (UDP, behind a NAT: its Via says 10.1.1.5).
pub const PHONE_A: &str = "203.0.113.5:5062";
/// A client connected over TCP or WSS.
pub const CLIENT: &str = "203.0.113.9:40000";

/// Slots.
pub const A_UDP: u32 = 1;
pub const A_TCP: u32 = 2;
pub const B_UDP: u32 = 3;
pub const A_WSS: u32 = 5;
pub const PLAIN: u32 = 6;
pub const V6: u32 = 7;
pub const TRUNK_UDP: u32 = 8;
pub const TRUNK_TCP: u32 = 9;
pub const NAMED_UDP: u32 = 10;
pub const ROW_UDP: u32 = 11;
pub const ROW_OUT: u32 = 12;

/// Relay records.
pub const REC_A: u32 = 10;
pub const REC_B1: u32 = 11;
pub const REC_B2: u32 = 12;
pub const REC_TRUNK: u32 = 20;
pub const REC_NAMED: u32 = 30;
pub const REC_ROW: u32 = 40;

pub const SECRET: [u8; 32] = [0x5a; 32];

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn socket(
    slot: u32,
    proto: Proto,
    local: &str,
    adv: Option<(&str, u16)>,
    tag: &str,
) -> RouteSocket {
    let local = addr(local);
    let (host, port) = match adv {
        Some((h, p)) => (h.to_string(), p),
        None => (local.ip().to_string(), local.port()),
    };
    RouteSocket {
        slot,
        proto,
        local,
        host,
        port,
        tag: Some(tag.to_string()),
    }
}

pub fn dest(record: u32, uri: &str, at: &str, transport: Proto, weight: u32) -> Destination {
    let a = addr(at);
    Destination {
        relay_id: i64::from(record),
        record,
        uri: uri.to_string(),
        addr: a,
        transport,
        host: a.ip().to_string(),
        weight,
        out_slot: None,
        insecure: false,
    }
}

/// The route table of the world.
pub fn table() -> RouteTable {
    let named = Destination {
        host: "Core.Example.NET".into(),
        ..dest(
            REC_NAMED,
            "sip:core.example.net:5080",
            NAMED_CORE,
            Proto::Udp,
            1,
        )
    };
    let row = Destination {
        out_slot: Some(ROW_OUT),
        ..dest(
            REC_ROW,
            "sip:192.0.2.80:5060",
            "192.0.2.80:5060",
            Proto::Udp,
            1,
        )
    };
    RouteTable {
        generation: 1,
        sockets: vec![
            socket(
                A_UDP,
                Proto::Udp,
                "198.51.100.1:5060",
                Some(("a.sbc.example", 5060)),
                "cust-a",
            ),
            socket(
                A_TCP,
                Proto::Tcp,
                "198.51.100.1:5060",
                Some(("a.sbc.example", 5060)),
                "cust-a",
            ),
            socket(B_UDP, Proto::Udp, "198.51.100.2:5060", None, "cust-b"),
            socket(
                A_WSS,
                Proto::Wss,
                "198.51.100.1:443",
                Some(("ws.sbc.example", 443)),
                "cust-a",
            ),
            socket(PLAIN, Proto::Udp, "198.51.100.3:5060", None, "plain"),
            socket(V6, Proto::Udp, "[2001:db8::1]:5060", None, "v6"),
            socket(TRUNK_UDP, Proto::Udp, "198.51.100.4:5060", None, "trunk"),
            socket(TRUNK_TCP, Proto::Tcp, "198.51.100.4:5060", None, "trunk"),
            socket(NAMED_UDP, Proto::Udp, "198.51.100.5:5060", None, "named"),
            socket(ROW_UDP, Proto::Udp, "198.51.100.6:5060", None, "row"),
            socket(ROW_OUT, Proto::Udp, "198.51.100.7:5090", None, "core-side"),
        ],
        tags: vec![
            TagRoutes {
                tag: "cust-a".into(),
                destinations: vec![dest(REC_A, "sip:192.0.2.50:5060", CORE, Proto::Udp, 1)],
            },
            TagRoutes {
                tag: "cust-b".into(),
                destinations: vec![
                    dest(REC_B1, "sip:192.0.2.50:5060", CORE, Proto::Udp, 1),
                    dest(REC_B2, "sip:192.0.2.51:5060", CORE2, Proto::Udp, 2),
                ],
            },
            TagRoutes {
                tag: "v6".into(),
                destinations: vec![dest(
                    50,
                    "sip:[2001:db8::50]:5060",
                    "[2001:db8::50]:5060",
                    Proto::Udp,
                    1,
                )],
            },
            TagRoutes {
                tag: "trunk".into(),
                destinations: vec![dest(
                    REC_TRUNK,
                    "sip:192.0.2.60:5060;transport=tcp",
                    TCP_CORE,
                    Proto::Tcp,
                    1,
                )],
            },
            TagRoutes {
                tag: "named".into(),
                destinations: vec![named],
            },
            TagRoutes {
                tag: "row".into(),
                destinations: vec![row],
            },
        ],
        settings: RelaySettings {
            force_rport: true,
            path: PathMode::Always,
        },
    }
}

/// A relay over a table, with the reply parts of its sockets.
pub struct World {
    pub relay: Relay,
    parts: HashMap<u32, SocketParts>,
}

/// How a test message arrives.
#[derive(Debug, Clone, Copy)]
pub struct In {
    pub slot: u32,
    pub transport: Proto,
    pub source: SocketAddr,
    pub flow: Option<Flow>,
    pub outbound: Option<u32>,
}

/// Over UDP.
pub fn udp(slot: u32, source: &str) -> In {
    In {
        slot,
        transport: Proto::Udp,
        source: addr(source),
        flow: None,
        outbound: None,
    }
}

/// Over a client's connection.
pub fn over(slot: u32, transport: Proto, source: &str, flow: Flow) -> In {
    In {
        slot,
        transport,
        source: addr(source),
        flow: Some(flow),
        outbound: None,
    }
}

/// Over the outbound connection to a destination.
pub fn outbound(slot: u32, source: &str, record: u32) -> In {
    In {
        slot,
        transport: Proto::Tcp,
        source: addr(source),
        flow: None,
        outbound: Some(record),
    }
}

pub const FLOW: Flow = Flow {
    rank: 1,
    conn: 77,
    generation: 3,
};

pub fn world() -> World {
    world_of(&table())
}

pub fn world_of(table: &RouteTable) -> World {
    let parts = table
        .sockets
        .iter()
        .map(|s| {
            let host = if s.host.contains(':') {
                format!("[{}]", s.host)
            } else {
                s.host.clone()
            };
            (
                s.slot,
                SocketParts::new(&format!("{host}:{}", s.port), s.proto),
            )
        })
        .collect();
    World {
        relay: Relay::new(
            table,
            RelayKey::new(&SECRET),
            Responder::new(404, "Not Here"),
        ),
        parts,
    }
}

impl World {
    /// Every flow alive.
    pub fn handle(&self, msg: &str, arrival: In) -> (Action, String) {
        self.handle_with(msg, arrival, &|_| true)
    }

    pub fn handle_with(
        &self,
        msg: &str,
        arrival: In,
        alive: &dyn Fn(Flow) -> bool,
    ) -> (Action, String) {
        let (action, out) = self.handle_bytes(msg.as_bytes(), arrival, alive);
        (action, String::from_utf8(out).expect("output is UTF-8"))
    }

    pub fn handle_bytes(
        &self,
        msg: &[u8],
        arrival: In,
        alive: &dyn Fn(Flow) -> bool,
    ) -> (Action, Vec<u8>) {
        let empty = SocketParts::new("0.0.0.0:0", Proto::Udp);
        let a = Arrival {
            slot: arrival.slot,
            transport: arrival.transport,
            source: arrival.source,
            flow: arrival.flow,
            outbound: arrival.outbound,
            parts: self.parts.get(&arrival.slot).unwrap_or(&empty),
        };
        let mut parsed = sip::Parsed::new();
        let mut out = b"stale".to_vec();
        let action = self
            .relay
            .handle_bytes(&mut parsed, msg, &a, alive, &mut out);
        (action, out)
    }
}

/// A message read back: what tests look at.
#[derive(Debug)]
pub struct Read {
    pub text: String,
    pub start: String,
    /// Every Via value, top first.
    pub vias: Vec<String>,
    pub routes: Vec<String>,
    pub record_routes: Vec<String>,
    pub paths: Vec<String>,
    pub max_forwards: Option<String>,
    pub body: Vec<u8>,
}

/// Parse `out` (it must parse) and read what tests look at.
pub fn read(out: &str) -> Read {
    let owned = sip::parse(out.as_bytes())
        .unwrap_or_else(|e| panic!("output does not parse ({e}):\n{out}"));
    let m = owned.message();
    let text = |s: sip::Span| m.text(s).to_string();
    let start = out.split("\r\n").next().unwrap_or_default().to_string();
    Read {
        text: out.to_string(),
        start,
        vias: m.vias().iter().map(|v| text(v.value)).collect(),
        routes: m.routes().iter().map(|e| text(e.value)).collect(),
        record_routes: m.record_routes().iter().map(|e| text(e.value)).collect(),
        paths: m
            .lines_of(sip::HeaderKind::Path)
            .map(|l| text(l.value))
            .collect(),
        max_forwards: m.first(sip::HeaderKind::MaxForwards).map(|l| text(l.value)),
        body: m.body().to_vec(),
    }
}

/// The value of the first header `name` (full name, case-insensitive) in a message's text.
pub fn header(msg: &str, name: &str) -> Option<String> {
    msg.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The branch parameter of a Via value.
pub fn branch(via: &str) -> String {
    param(via, "branch").unwrap_or_default()
}

/// A `;name=value` parameter of a Via value or URI.
pub fn param(s: &str, name: &str) -> Option<String> {
    s.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_end_matches('>').to_string())
    })
}

/// A response to a forwarded request, as a UAS or the next proxy writes it (RFC 3261 §8.2.6):
/// the status line, every Via line, the Record-Route lines, From, To with `to_tag`, Call-ID and
/// CSeq copied, a Contact.
pub fn response_to(request: &str, status: &str, to_tag: Option<&str>, contact: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "record-route" | "from" | "f" | "call-id" | "i" | "cseq" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(line);
                if let Some(tag) = to_tag {
                    if !line.contains(";tag=") {
                        out.push_str(&format!(";tag={tag}"));
                    }
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str(&format!(
        "Contact: <{contact}>\r\nContent-Length: 0\r\n\r\n"
    ));
    out
}
