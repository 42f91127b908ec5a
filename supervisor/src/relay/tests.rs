//! Relay rows, the validation of both tables, the warnings and the route table, without a
//! database (a fixed name table stands for DNS).

use super::*;
use crate::row::parse_row;
use proptest::prelude::*;
use std::net::IpAddr;
use worker::relay::{PathMode, RelaySettings, RouteTable};

/// A fixed name table: deterministic resolution for names that are not on this host.
pub(crate) struct Names(Vec<(&'static str, Vec<IpAddr>)>);

impl Resolver for Names {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        self.0
            .iter()
            .find(|(n, _)| *n == host)
            .map(|(_, ips)| ips.clone())
            .ok_or_else(|| format!("unknown host {host}"))
    }
}

pub(crate) fn names() -> Names {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    Names(vec![
        ("core.example", vec![ip("192.0.2.50")]),
        ("multi.example", vec![ip("192.0.2.8"), ip("192.0.2.9")]),
        ("v6.example", vec![ip("2001:db8::7")]),
        ("edge.example", vec![ip("127.0.0.1")]),
        ("void.example", vec![]),
    ])
}

fn relay(id: i64, tag: &str, destination: &str) -> RawRelayRow {
    RawRelayRow {
        id: Some(id),
        tag: Some(tag.into()),
        destination: Some(destination.into()),
        ..RawRelayRow::default()
    }
}

fn socket(id: i64, text: &str, tag: Option<&str>) -> RawRow {
    RawRow {
        id: Some(id),
        socket: Some(text.into()),
        tag: tag.map(str::to_string),
        ..RawRow::default()
    }
}

fn cfg() -> Config {
    Config::default()
}

fn parse(raw: &RawRelayRow) -> Result<RelayDef, RowError> {
    parse_relay_row(raw, "relays", &names())
}

fn refused(raw: &RawRelayRow) -> RowError {
    parse(raw).expect_err(&format!("{raw:?} was accepted"))
}

#[test]
fn a_full_row_parses() {
    let d = parse(&RawRelayRow {
        id: Some(4),
        tag: Some("tenant a".into()),
        destination: Some("sips:core.example:5071  ".into()),
        socket: Some("TLS:edge.example:5061".into()),
        weight: Some("7".into()),
        flags: Some("INSECURE".into()),
    })
    .unwrap();
    assert_eq!(d.id, 4);
    assert_eq!(d.tag, "tenant a");
    assert_eq!(d.upstream.uri, "sips:core.example:5071");
    assert_eq!(d.upstream.transport, Proto::Tls);
    assert_eq!(d.upstream.host, "core.example");
    assert_eq!(d.upstream.addr, "192.0.2.50:5071".parse().unwrap());
    let out = d.socket.clone().unwrap();
    assert_eq!(out.text, "TLS:edge.example:5061");
    assert_eq!(
        out.identity,
        (Proto::Tls, "127.0.0.1:5061".parse().unwrap())
    );
    assert_eq!((d.weight, d.insecure), (7, true));
    assert_eq!(
        d.describe("relays"),
        "relays row 4 (tag \"tenant a\" -> sips:core.example:5071)"
    );
    // The defaults: weight 1, no flag, no socket.
    let d = parse(&relay(1, "a", "sip:192.0.2.1")).unwrap();
    assert_eq!((d.weight, d.insecure, d.socket), (1, false, None));
}

#[test]
fn bad_rows_name_table_id_column_value_and_reason() {
    let cases: Vec<(RawRelayRow, &str, Option<&str>, &str)> = vec![
        (
            RawRelayRow {
                id: None,
                ..relay(0, "a", "sip:192.0.2.1")
            },
            "id",
            None,
            "needs an id",
        ),
        (
            RawRelayRow {
                tag: Some("  ".into()),
                ..relay(2, "", "sip:192.0.2.1")
            },
            "tag",
            None,
            "empty",
        ),
        (
            relay(2, "a\nb", "sip:192.0.2.1"),
            "tag",
            Some("a\nb"),
            "control",
        ),
        (
            RawRelayRow {
                destination: None,
                ..relay(2, "a", "")
            },
            "destination",
            None,
            "needs a destination",
        ),
        (
            relay(2, "a", "sip:192.0.2.1;transport=ws"),
            "destination",
            Some("sip:192.0.2.1;transport=ws"),
            "unsupported transport",
        ),
        (
            RawRelayRow {
                socket: Some("bin:127.0.0.1".into()),
                ..relay(2, "a", "sip:192.0.2.1")
            },
            "socket",
            Some("bin:127.0.0.1"),
            "unsupported protocol bin",
        ),
        (
            RawRelayRow {
                socket: Some("tcp:127.0.0.1:5060".into()),
                ..relay(2, "a", "sip:192.0.2.1")
            },
            "socket",
            Some("tcp:127.0.0.1:5060"),
            "a tcp socket cannot send to a udp destination (sip:192.0.2.1)",
        ),
        (
            RawRelayRow {
                weight: Some("0".into()),
                ..relay(2, "a", "sip:192.0.2.1")
            },
            "weight",
            Some("0"),
            "0 is out of range (1-65535)",
        ),
        (
            RawRelayRow {
                weight: Some("65536".into()),
                ..relay(2, "a", "sip:192.0.2.1")
            },
            "weight",
            Some("65536"),
            "out of range",
        ),
        (
            RawRelayRow {
                weight: Some("-1".into()),
                ..relay(2, "a", "sip:192.0.2.1")
            },
            "weight",
            Some("-1"),
            "not a whole number",
        ),
        (
            RawRelayRow {
                weight: Some("1.5".into()),
                ..relay(2, "a", "sip:192.0.2.1")
            },
            "weight",
            Some("1.5"),
            "not a whole number",
        ),
        (
            RawRelayRow {
                flags: Some("insecure,fast".into()),
                ..relay(2, "a", "sips:192.0.2.1")
            },
            "flags",
            Some("insecure,fast"),
            "unknown flag \"fast\" (known: insecure)",
        ),
        (
            RawRelayRow {
                flags: Some("insecure".into()),
                ..relay(2, "a", "sip:192.0.2.1;transport=tcp")
            },
            "flags",
            Some("insecure"),
            "insecure applies to TLS destinations only",
        ),
    ];
    for (raw, column, value, want) in cases {
        let e = refused(&raw);
        assert_eq!(e.table(), Some("relays"), "{raw:?}");
        assert_eq!(e.id, raw.id);
        assert_eq!(e.column.as_deref(), Some(column), "{raw:?}: {e:?}");
        assert_eq!(e.value.as_deref(), value, "{raw:?}");
        assert!(
            e.reason.contains(want),
            "{raw:?}: {:?} lacks {want:?}",
            e.reason
        );
        assert!(!e.is_table_error());
    }
    // As an MI `data` entry and as a log line.
    let e = refused(&RawRelayRow {
        weight: Some("0".into()),
        ..relay(3, "a", "sip:192.0.2.1")
    });
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        serde_json::json!({"table": "relays", "id": 3, "column": "weight", "value": "0",
                           "reason": "0 is out of range (1-65535)"})
    );
    assert_eq!(
        e.to_string(),
        "relays row 3: weight \"0\": 0 is out of range (1-65535)"
    );
}

#[test]
fn weights_and_flags_forms() {
    for (text, want) in [("1", 1), ("+2", 2), ("0007", 7), ("65535", 65535)] {
        assert_eq!(parse_weight(text), Ok(want), "{text}");
    }
    for bad in ["", "0", "x", "1e3", "99999999999999999999999", " 1"] {
        assert!(parse_weight(bad).is_err(), "{bad:?}");
    }
    for (text, want) in [
        ("insecure", true),
        ("Insecure, insecure|INSECURE", true),
        (",|", false),
    ] {
        assert_eq!(parse_relay_flags(text), Ok(want), "{text}");
    }
    assert!(parse_relay_flags(&"insecure,".repeat(10))
        .unwrap_err()
        .contains("too long"));
}

/// A sockets table: udp and tcp on 127.0.0.1 tagged `a`, udp on 127.0.0.2 tagged `b`.
fn sockets() -> Vec<RawRow> {
    vec![
        socket(1, "udp:127.0.0.1:5060", Some("a")),
        socket(2, "tcp:127.0.0.1:5060", Some("a")),
        socket(3, "udp:127.0.0.2:5060", Some("b")),
    ]
}

#[test]
fn a_relay_socket_must_be_a_valid_row_of_the_sockets_table() {
    let mut rows = sockets();
    rows.push(socket(4, "udp:127.0.0.3:5060", None));
    rows.push(RawRow {
        tos: Some("300".into()),
        ..socket(5, "udp:127.0.0.4:5060", None)
    });
    rows.push(socket(6, "udp:127.0.0.5:0", None));
    let with_socket = |id, s: &str| RawRelayRow {
        socket: Some(s.into()),
        ..relay(id, "a", "sip:192.0.2.1")
    };
    let relays = vec![
        // The same socket written otherwise: found by identity.
        with_socket(10, "UDP:edge.example"),
        with_socket(11, "udp:127.0.0.9:5060"),
        with_socket(12, "udp:127.0.0.4:5060"),
        with_socket(13, "udp:127.0.0.5:0"),
    ];
    let outcomes = examine_table(&rows, 100, &names());
    let got = examine_relays(&relays, &outcomes, &cfg(), &names());
    assert!(got[0].is_ok(), "{:?}", got[0]);
    let reason = |i: usize| got[i].as_ref().unwrap_err().reason.clone();
    assert_eq!(
        reason(1),
        "socket udp 127.0.0.9:5060 is not in table sockets"
    );
    assert_eq!(
        reason(2),
        "socket udp 127.0.0.4:5060 is row 5 of table sockets, which is bad (300 is out of \
         range (0-255))"
    );
    // A socket text that does not parse names no socket at all: the relay's own column says so.
    let e = got[3].as_ref().unwrap_err();
    assert_eq!(e.column.as_deref(), Some("socket"));
    assert!(e.reason.contains("port 0"), "{e:?}");
}

#[test]
fn one_validation_for_both_tables() {
    let mut relays = vec![
        relay(1, "a", "sip:192.0.2.1"),
        RawRelayRow {
            weight: Some("0".into()),
            ..relay(2, "a", "sip:192.0.2.2")
        },
    ];
    let mut rows = sockets();
    rows.push(RawRow {
        tos: Some("300".into()),
        ..socket(4, "udp:127.0.0.4:5060", None)
    });
    relays.push(RawRelayRow {
        socket: Some("udp:127.0.0.4:5060".into()),
        ..relay(3, "b", "sip:192.0.2.3")
    });

    let t = validate_tables(&rows, &relays, &cfg(), &names());
    assert!(t.refused, "reject: any bad row of either table");
    assert_eq!(t.errors.len(), 3, "{:?}", t.errors);
    let named: Vec<(Option<&str>, Option<i64>)> =
        t.errors.iter().map(|e| (e.table(), e.id)).collect();
    assert_eq!(
        named,
        vec![
            (None, Some(4)),
            (Some("relays"), Some(2)),
            (Some("relays"), Some(3))
        ]
    );

    let mut skip = cfg();
    skip.sockets_mgm.invalid_rows = InvalidRows::Skip;
    let t = validate_tables(&rows, &relays, &skip, &names());
    assert!(!t.refused, "skip: the valid rows of both apply");
    assert_eq!(t.sockets.len(), 3);
    assert_eq!(t.relays.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1]);
    assert_eq!(
        t.errors.len(),
        3,
        "the skipped socket takes its relay with it"
    );

    let t = validate_tables(&sockets(), &relays[..1], &cfg(), &names());
    assert!(!t.refused && t.errors.is_empty());
    assert_eq!((t.sockets.len(), t.relays.len()), (3, 1));
    let t = validate_tables(&[], &[], &cfg(), &names());
    assert!(!t.refused && t.sockets.is_empty() && t.relays.is_empty());
}

#[test]
fn duplicates_and_max_relays_refuse_both_tables_in_both_modes() {
    let relays = vec![
        relay(1, "a", "sip:core.example"),
        relay(2, "b", "sip:core.example"),
        relay(3, "a", "sip:192.0.2.50:5060;transport=udp"),
        relay(4, "a", "sip:192.0.2.50;transport=tcp"),
    ];
    for mode in [InvalidRows::Reject, InvalidRows::Skip] {
        let mut c = cfg();
        c.sockets_mgm.invalid_rows = mode;
        let t = validate_tables(&sockets(), &relays, &c, &names());
        assert!(t.refused, "{mode:?}");
        assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
        let e = &t.errors[0];
        assert_eq!((e.id, e.column.as_deref()), (Some(3), None));
        assert!(e.is_table_error());
        assert_eq!(
            e.reason,
            "same destination (udp 192.0.2.50:5060) for tag \"a\" as relays row 1 (tag \"a\" \
             -> sip:core.example)"
        );
    }

    let relays: Vec<RawRelayRow> = (1..=4)
        .map(|i| relay(i, "a", &format!("sip:192.0.2.{i}")))
        .collect();
    let mut c = cfg();
    c.relay.max_relays = 3;
    c.sockets_mgm.invalid_rows = InvalidRows::Skip;
    let t = validate_tables(&sockets(), &relays, &c, &names());
    assert!(t.refused);
    assert_eq!(t.errors.len(), 1);
    assert_eq!(t.errors[0].id, Some(4));
    assert!(
        t.errors[0]
            .reason
            .contains("table relays has 4 valid rows and [relay] max_relays is 3"),
        "{:?}",
        t.errors[0]
    );
    c.relay.max_relays = 4;
    assert!(!validate_tables(&sockets(), &relays, &c, &names()).refused);
}

#[test]
fn errors_name_the_configured_table() {
    let mut c = cfg();
    c.relay.table_name = "upstreams".into();
    let t = validate_tables(
        &sockets(),
        &[RawRelayRow {
            weight: Some("x".into()),
            ..relay(9, "a", "sip:192.0.2.1")
        }],
        &c,
        &names(),
    );
    assert_eq!(t.errors[0].table(), Some("upstreams"));
    assert!(t.errors[0]
        .to_string()
        .starts_with("upstreams row 9: weight"));
}

fn defs(rows: &[RawRow]) -> Vec<SocketDef> {
    rows.iter()
        .map(|r| parse_row(r, &names()).unwrap())
        .collect()
}

fn relay_defs(rows: &[RawRelayRow]) -> Vec<RelayDef> {
    rows.iter().map(|r| parse(r).unwrap()).collect()
}

#[test]
fn warnings_say_what_would_not_be_reached() {
    let mut rows = sockets();
    rows.push(socket(4, "ws:127.0.0.3:8080", Some("c")));
    let sockets = defs(&rows);
    let relays = relay_defs(&[
        // Fine: arrival udp or tcp on 127.0.0.1 fits or finds the other.
        relay(1, "a", "sip:192.0.2.1"),
        relay(2, "a", "sip:192.0.2.1;transport=tcp"),
        // No tls socket anywhere: both sockets of a are stranded.
        relay(3, "a", "sips:192.0.2.1"),
        // Tag b: udp arrival, tcp destination, no tcp socket on 127.0.0.2.
        relay(4, "b", "sip:192.0.2.2;transport=tcp"),
        // ... unless the row names its socket.
        RawRelayRow {
            socket: Some("tcp:127.0.0.1:5060".into()),
            ..relay(5, "b", "sip:192.0.2.3;transport=tcp")
        },
        // A ws arrival never fits a destination's transport: needs a udp socket on its IP.
        relay(6, "c", "sip:192.0.2.4"),
        // No socket has these tags.
        relay(7, "ghost", "sip:192.0.2.5"),
        relay(8, "ghost", "sip:192.0.2.6"),
        relay(9, "nobody", "sip:192.0.2.5"),
    ]);
    let w = warnings(&sockets, &relays, "relays");
    assert_eq!(
        w,
        vec![
            "relays row(s) 7, 8: no socket has tag \"ghost\": no request reaches these relays",
            "relays row(s) 9: no socket has tag \"nobody\": no request reaches these relays",
            "relays row 3 (tag \"a\" -> sips:192.0.2.1): no tls socket on the IP of \
             udp:127.0.0.1:5060, tcp:127.0.0.1:5060 and no socket set in the row: requests \
             arriving there would get 503",
            "relays row 4 (tag \"b\" -> sip:192.0.2.2;transport=tcp): no tcp socket on the IP of \
             udp:127.0.0.2:5060 and no socket set in the row: requests arriving there would get \
             503",
            "relays row 6 (tag \"c\" -> sip:192.0.2.4): no udp socket on the IP of \
             ws:127.0.0.3:8080 and no socket set in the row: requests arriving there would get \
             503",
        ]
    );
    assert!(warnings(&sockets, &relays[..2], "relays").is_empty());
}

#[test]
fn the_route_table_holds_bound_sockets_and_destinations_by_tag() {
    let mut rows = sockets();
    rows[0].advertised = Some("sip.example.com:5080".into());
    rows.push(socket(4, "tcp:[::1]:5070", Some("b")));
    let sockets = defs(&rows);
    let placed: Vec<Placed> = sockets
        .iter()
        .enumerate()
        .map(|(i, def)| Placed {
            // Slots in another order than the rows, and the last one not bound.
            slot: [7, 3, 5, 9][i],
            def,
            bound: i != 3,
        })
        .collect();
    let relays = relay_defs(&[
        RawRelayRow {
            weight: Some("3".into()),
            ..relay(10, "b", "sip:core.example")
        },
        relay(11, "a", "sip:192.0.2.1"),
        RawRelayRow {
            socket: Some("tcp:127.0.0.1:5060".into()),
            flags: None,
            ..relay(12, "b", "sip:192.0.2.2;transport=tcp")
        },
        RawRelayRow {
            socket: Some("tcp:[::1]:5070".into()),
            ..relay(13, "a", "sip:[2001:db8::2];transport=tcp")
        },
        RawRelayRow {
            flags: Some("insecure".into()),
            ..relay(14, "b", "sips:v6.example")
        },
    ]);
    let records = |id: i64| Some((id - 10) as u32 * 2);
    let settings = RelaySettings {
        force_rport: false,
        path: PathMode::Supported,
    };
    let t = route_table(42, &placed, &relays, &records, settings).unwrap();
    assert_eq!(t.generation, 42);
    assert_eq!(t.settings, settings);
    let sockets: Vec<(u32, &str, u16, String)> = t
        .sockets
        .iter()
        .map(|s| (s.slot, s.host.as_str(), s.port, s.local.to_string()))
        .collect();
    assert_eq!(
        sockets,
        vec![
            (3, "127.0.0.1", 5060, "127.0.0.1:5060".into()),
            (5, "127.0.0.2", 5060, "127.0.0.2:5060".into()),
            (7, "sip.example.com", 5080, "127.0.0.1:5060".into()),
        ]
    );
    assert_eq!(t.sockets[0].proto, Proto::Tcp);
    assert_eq!(t.sockets[2].tag.as_deref(), Some("a"));
    assert_eq!(
        t.tags.iter().map(|g| g.tag.as_str()).collect::<Vec<_>>(),
        vec!["b", "a"]
    );
    let b = t.destinations("b").unwrap();
    assert_eq!(
        b.iter().map(|d| d.relay_id).collect::<Vec<_>>(),
        vec![10, 12, 14]
    );
    assert_eq!(b[0].addr, "192.0.2.50:5060".parse().unwrap());
    assert_eq!((b[0].weight, b[0].record, b[0].out_slot), (3, 0, None));
    assert_eq!(b[0].host, "core.example");
    assert_eq!((b[1].out_slot, b[1].transport), (Some(3), Proto::Tcp));
    assert_eq!((b[2].transport, b[2].insecure), (Proto::Tls, true));
    assert_eq!(b[2].addr, "[2001:db8::7]:5061".parse().unwrap());
    assert_eq!(b[2].record, 8);
    let a = t.destinations("a").unwrap();
    assert_eq!(a[0].uri, "sip:192.0.2.1");
    assert_eq!(a[1].host, "2001:db8::2");
    // Its socket holds slot 9 but is not bound: the slot is kept, the worker answers 503.
    assert_eq!(a[1].out_slot, Some(9));
    assert!(t.sockets.iter().all(|s| s.slot != 9));
    // What the workers get survives the trip.
    let json = serde_json::to_vec(&t).unwrap();
    assert_eq!(serde_json::from_slice::<RouteTable>(&json).unwrap(), t);

    let none = |_: i64| None;
    assert_eq!(
        route_table(1, &placed, &relays, &none, settings),
        Err(RouteError::NoRecord { relay_id: 10 })
    );
    assert_eq!(
        route_table(1, &placed[..3], &relays, &records, settings),
        Err(RouteError::NoSlot {
            relay_id: 13,
            socket: "tcp:[::1]:5070".into()
        })
    );
    let empty = route_table(0, &[], &[], &records, RelaySettings::default()).unwrap();
    assert!(empty.sockets.is_empty() && empty.tags.is_empty());
}

proptest! {
    /// Whatever the rows, validation never panics, gives one error per bad row, keeps table
    /// order, and in skip mode applies exactly the rows without an error.
    #[test]
    fn validation_accounts_for_every_row(
        relays in proptest::collection::vec(
            (
                prop::sample::select(vec!["a", "b", "", "ghost"]),
                prop::sample::select(vec![
                    "sip:192.0.2.1", "sip:192.0.2.1;transport=tcp", "sips:core.example",
                    "sip:nowhere.example", "sip:192.0.2.2:5080", "tel:1", "sip:multi.example",
                ]),
                proptest::option::of(prop::sample::select(vec![
                    "udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "udp:127.0.0.9", "tls:127.0.0.1",
                ])),
                proptest::option::of(prop::sample::select(vec!["1", "0", "70000", "5"])),
                proptest::option::of(prop::sample::select(vec!["insecure", "x"])),
            ),
            0..12,
        ),
        skip in any::<bool>(),
    ) {
        let rows: Vec<RawRelayRow> = relays
            .iter()
            .enumerate()
            .map(|(i, (tag, dest, socket, weight, flags))| RawRelayRow {
                id: Some(i as i64 + 1),
                tag: Some(tag.to_string()),
                destination: Some(dest.to_string()),
                socket: socket.map(str::to_string),
                weight: weight.map(str::to_string),
                flags: flags.map(str::to_string),
            })
            .collect();
        let mut c = cfg();
        c.sockets_mgm.invalid_rows = if skip { InvalidRows::Skip } else { InvalidRows::Reject };
        let t = validate_tables(&sockets(), &rows, &c, &names());
        prop_assert_eq!(t.relays.len() + t.errors.len(), rows.len());
        let mut ids: Vec<i64> = t.relays.iter().map(|r| r.id).collect();
        ids.extend(t.errors.iter().filter_map(|e| e.id));
        ids.sort_unstable();
        prop_assert_eq!(ids, (1..=rows.len() as i64).collect::<Vec<_>>());
        let table_error = t.errors.iter().any(RowError::is_table_error);
        prop_assert_eq!(t.refused, table_error || (!skip && !t.errors.is_empty()));
        for e in &t.errors {
            prop_assert_eq!(e.table(), Some("relays"));
            prop_assert!(!e.reason.is_empty());
        }
    }
}
