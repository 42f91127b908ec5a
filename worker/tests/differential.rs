//! The single-pass parser and the responder built on it against the code they replaced
//! (`tests/old/`, kept verbatim): the same corpus through both must give the same accept/reject
//! decision, the same error, the same extracted fields, the same framing, and byte-identical
//! replies.
//!
//! Corpus: the nasty-message table (`nasty_rows/`), every seed of the fuzz corpora
//! (`fuzz/corpus/*/*`), the unit-test messages below, and proptest generators (random bytes,
//! mutations of good requests, requests assembled from tricky pieces).
//!
//! Deliberate differences, and only these, are allowed (each checked where it applies):
//! 1. Limits: a message with more than `MAX_HEADERS` header lines, `MAX_VIAS` Via values or
//!    `MAX_ROUTES` Route (or Record-Route) entries is refused (`TooMany*`), where the old parser
//!    accepted it: the new representation is fixed-size, nothing is allocated per message.
//! 2. Header kinds: `Max-Forwards`, `Route`, `Record-Route`, `Path`, `Require`, `Proxy-Require` have
//!    kinds of their own (the old parser called them `Other`).

mod nasty_rows;
mod old;

use old::handler as old_handler;
use old::sip as old_sip;
use proptest::prelude::*;
use shm::Proto;
use std::net::SocketAddr;
use std::path::Path;
use worker::handler::SocketParts;
use worker::sip::{self, FrameStatus, HeaderKind, Message, ParseError, Parsed};
use worker::Responder;

const CONTACT: &str = "198.51.100.1:5060";

fn sources() -> [SocketAddr; 4] {
    [
        "192.0.2.7:5062".parse().unwrap(),
        "[2001:db8::7]:1".parse().unwrap(),
        "[::ffff:192.0.2.9]:65535".parse().unwrap(),
        "[2001:db8:0:0:1:0:0:1]:5060".parse().unwrap(),
    ]
}

/// Deliberate difference 1.
fn over_a_limit(e: ParseError) -> bool {
    matches!(
        e,
        ParseError::TooManyHeaders | ParseError::TooManyVias | ParseError::TooManyRoutes
    )
}

fn new_error(e: ParseError) -> String {
    format!("{e:?}")
}

fn old_error(e: old_sip::ParseError) -> String {
    format!("{e:?}")
}

/// Deliberate difference 2: the kinds the old parser did not have read as `Other`.
fn old_kind(kind: HeaderKind) -> String {
    match kind {
        HeaderKind::MaxForwards
        | HeaderKind::Route
        | HeaderKind::RecordRoute
        | HeaderKind::Path
        | HeaderKind::Require
        | HeaderKind::ProxyRequire => "Other".into(),
        k => format!("{k:?}"),
    }
}

/// Everything the old code extracts from a message: start line, headers, body, length, and per
/// Via value / From / To / CSeq what its helpers say.
#[derive(Debug, PartialEq, Eq)]
struct Fields {
    start: String,
    headers: Vec<(String, String, String)>,
    body: Vec<u8>,
    len: usize,
    /// Per Via value: text, usable as a top Via, branch, rport, received.
    vias: Vec<ViaFields>,
    from_tag: Option<Option<String>>,
    to_tag: Option<Option<String>>,
    cseq: Option<(u32, String)>,
}

#[derive(Debug, PartialEq, Eq)]
struct ViaFields {
    value: String,
    usable: bool,
    branch: Option<Option<String>>,
    rport: Option<Option<String>>,
    received: Option<Option<String>>,
}

fn owned(v: Option<Option<&str>>) -> Option<Option<String>> {
    v.map(|v| v.map(str::to_string))
}

fn old_fields(m: &old_sip::Message<'_>) -> Fields {
    let start = match m.start_line() {
        old_sip::StartLine::Request { method, uri } => format!("{method} {uri}"),
        old_sip::StartLine::Response { code, reason } => format!("{code} {reason}"),
    };
    let headers = m
        .headers()
        .map(|h| {
            (
                h.name.to_string(),
                h.value.to_string(),
                format!("{:?}", h.kind),
            )
        })
        .collect();
    let mut vias = Vec::new();
    for h in m.headers().filter(|h| h.kind == old_sip::HeaderKind::Via) {
        // Every value of the line, split the way the old responder split the first one.
        let mut rest = Some(h.value);
        while let Some(value) = rest {
            let (first, others) = old_sip::split_first_value(value);
            let (_, params) = old_sip::via_params(first);
            vias.push(ViaFields {
                value: first.to_string(),
                usable: old_valid_via(first),
                branch: owned(old_sip::find_param(params, "branch")),
                rport: owned(old_sip::find_param(params, "rport")),
                received: owned(old_sip::find_param(params, "received")),
            });
            rest = others;
        }
    }
    let first = |kind| m.headers().find(|h| h.kind == kind).map(|h| h.value);
    let tag = |v: Option<&str>| {
        v.and_then(|v| owned(old_sip::find_param(old_sip::header_params(v), "tag")))
    };
    Fields {
        start,
        headers,
        body: m.body().to_vec(),
        len: m.len(),
        vias,
        from_tag: tag(first(old_sip::HeaderKind::From)),
        to_tag: tag(first(old_sip::HeaderKind::To)),
        cseq: first(old_sip::HeaderKind::CSeq)
            .and_then(old_sip::parse_cseq)
            .map(|(n, method)| (n, method.to_string())),
    }
}

/// `valid_via` of the old responder (private there).
fn old_valid_via(value: &str) -> bool {
    let (sent_by, _) = old_sip::via_params(value);
    let is_lws = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    let Some((protocol, host)) = sent_by.split_once(is_lws) else {
        return false;
    };
    protocol
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/2.0/"))
        && protocol.len() > 8
        && !host.trim_matches(is_lws).is_empty()
}

fn new_fields(m: &Message<'_>) -> Fields {
    let start = match m.start_line() {
        sip::StartLine::Request { method, uri } => format!("{method} {uri}"),
        sip::StartLine::Response { code, reason } => format!("{code} {reason}"),
    };
    let headers = m
        .headers()
        .map(|h| (h.name.to_string(), h.value.to_string(), old_kind(h.kind)))
        .collect();
    let param = |p: Option<sip::Param>| p.map(|p| p.value.map(|v| m.text(v).to_string()));
    let vias = m
        .vias()
        .iter()
        .map(|v| ViaFields {
            value: m.text(v.value).to_string(),
            usable: v.is_usable(),
            branch: param(v.branch),
            rport: param(v.rport),
            received: param(v.received),
        })
        .collect();
    // The first From / To / CSeq line, as the old helpers read the first one.
    let first_from_tag = m.from().map(|f| f.tag).map(param);
    let first_to_tag = m.to().map(|t| t.tag).map(param);
    Fields {
        start,
        headers,
        body: m.body().to_vec(),
        len: m.len(),
        vias,
        from_tag: first_from_tag.flatten(),
        to_tag: first_to_tag.flatten(),
        cseq: m.cseq().map(|c| (c.number, m.text(c.method).to_string())),
    }
}

/// How many variants of framing limits, reply codes, transports and sources to try per input.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Depth {
    All,
    /// For the large rows and the many prefixes and deletions: one of each.
    Few,
}

/// Compare the whole picture of one input; `Err` says what differs.
fn compare(input: &[u8]) -> Result<(), String> {
    compare_at(input, Depth::All)
}

fn compare_at(input: &[u8], depth: Depth) -> Result<(), String> {
    let show = || {
        String::from_utf8_lossy(input)
            .chars()
            .take(300)
            .collect::<String>()
    };
    let old = old_sip::parse(input);
    let new = sip::parse(input);
    match (&old, &new) {
        (_, Err(e)) if over_a_limit(*e) => {}
        (Ok(o), Ok(n)) => {
            let (o, n) = (old_fields(o), new_fields(&n.message()));
            if o != n {
                return Err(format!(
                    "fields differ on {:?}:\nold {o:?}\nnew {n:?}",
                    show()
                ));
            }
        }
        (Err(o), Err(n)) if old_error(*o) == new_error(*n) => {}
        (o, n) => {
            return Err(format!(
                "parse differs on {:?}: old {:?}, new {:?}",
                show(),
                o.as_ref().map(|m| m.len()).map_err(|e| old_error(*e)),
                n.as_ref().map(|m| m.len()).map_err(|e| new_error(*e))
            ))
        }
    }
    compare_framing(input, depth)?;
    compare_replies(input, depth)
}

fn compare_framing(input: &[u8], depth: Depth) -> Result<(), String> {
    let show = || {
        String::from_utf8_lossy(input)
            .chars()
            .take(300)
            .collect::<String>()
    };
    let old = match old_sip::frame_len(input) {
        old_sip::FrameStatus::Incomplete => "Incomplete".to_string(),
        old_sip::FrameStatus::Complete(n) => format!("Complete({n})"),
        old_sip::FrameStatus::Invalid(e) => format!("Invalid({})", old_error(e)),
    };
    let new = sip::frame_len(input);
    let same = match new {
        FrameStatus::Invalid(e) if over_a_limit(e) => true,
        FrameStatus::Incomplete => old == "Incomplete",
        FrameStatus::Complete(n) => old == format!("Complete({n})"),
        FrameStatus::Invalid(e) => old == format!("Invalid({})", new_error(e)),
    };
    if !same {
        return Err(format!(
            "frame_len differs on {:?}: old {old}, new {new:?}",
            show()
        ));
    }
    let limits: &[(usize, usize)] = match depth {
        Depth::All => &[(65535, 65536), (64, 16), (20, 0), (1000, 3)],
        Depth::Few => &[(64, 16)],
    };
    for &(max_head, max_body) in limits {
        let old = old_sip::stream_frame_len(input, max_head, max_body).map_err(old_error);
        let mut parsed = Parsed::new();
        let new = parsed.frame_stream(input, max_head, max_body);
        if new.is_err_and(over_a_limit) {
            continue;
        }
        if old != new.map_err(new_error) {
            return Err(format!(
                "stream_frame_len({max_head}, {max_body}) differs on {:?}: old {old:?}, new {new:?}",
                show()
            ));
        }
        // A complete frame is handed on parsed: the same as parsing it.
        if let Ok(Some(total)) = new {
            if let Some(frame) = input.get(..total) {
                let by_frame = parsed.message(frame).map(|m| new_fields(&m));
                let by_parse = sip::parse(frame).map(|o| new_fields(&o.message()));
                if by_frame != by_parse.ok() {
                    return Err(format!("a framed message reads differently: {:?}", show()));
                }
            }
        }
    }
    Ok(())
}

fn compare_replies(input: &[u8], depth: Depth) -> Result<(), String> {
    let show = || {
        String::from_utf8_lossy(input)
            .chars()
            .take(300)
            .collect::<String>()
    };
    let mut scratch = Parsed::new();
    let (codes, protos, n_sources) = match depth {
        Depth::All => (2, 2, 4),
        Depth::Few => (1, 1, 2),
    };
    for (code, reason) in [(503, "Service Unavailable"), (100, "Trying")]
        .into_iter()
        .take(codes)
    {
        let old = old_handler::Responder::new(code, reason);
        let new = Responder::new(code, reason);
        for proto in [Proto::Udp, Proto::Tls].into_iter().take(protos) {
            let parts = SocketParts::new(CONTACT, proto);
            for source in sources().into_iter().take(n_sources) {
                let (mut a, mut b, mut c) = (b"x".to_vec(), b"y".to_vec(), b"z".to_vec());
                let oa = old.respond(input, proto, source, CONTACT, &mut a);
                let ob = new.respond(input, proto, source, CONTACT, &mut b);
                let oc = new.answer(&mut scratch, input, source, &parts, &mut c);
                let (oa, ob, oc) = (format!("{oa:?}"), format!("{ob:?}"), format!("{oc:?}"));
                let limited = sip::parse(input).is_err_and(over_a_limit);
                if limited && ob == "Malformed" && b.is_empty() {
                    continue;
                }
                if (&oa, &a) != (&ob, &b) || (&ob, &b) != (&oc, &c) {
                    return Err(format!(
                        "replies differ ({code}, {proto}, {source}) on {:?}:\nold {oa} {:?}\nnew {ob} {:?}\nnew with scratch {oc} {:?}",
                        show(),
                        String::from_utf8_lossy(&a),
                        String::from_utf8_lossy(&b),
                        String::from_utf8_lossy(&c),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The corpus files under `fuzz/corpus/`.
fn fuzz_seeds() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut seeds = Vec::new();
    for dir in std::fs::read_dir(&root).expect("fuzz/corpus") {
        let dir = dir.unwrap().path();
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            seeds.push((file.display().to_string(), std::fs::read(&file).unwrap()));
        }
    }
    seeds.sort();
    seeds
}

#[test]
fn nasty_rows_agree() {
    let mut failures = Vec::new();
    let mut limited = 0;
    for row in nasty_rows::rows() {
        if sip::parse(&row.msg).is_err_and(over_a_limit) {
            limited += 1;
        }
        let depth = if row.msg.len() > 4096 {
            Depth::Few
        } else {
            Depth::All
        };
        if let Err(e) = compare_at(&row.msg, depth) {
            failures.push(format!("{}: {e}", row.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The table exercises the limits (difference 1) and nothing else differs.
    assert!(limited >= 3, "{limited}");
}

/// Every prefix and every single-byte deletion of the small nasty rows.
#[test]
fn nasty_row_prefixes_and_deletions_agree() {
    let mut failures = Vec::new();
    for row in nasty_rows::rows()
        .into_iter()
        .filter(|r| r.msg.len() <= 400)
    {
        for cut in 0..=row.msg.len() {
            if let Err(e) = compare_at(&row.msg[..cut], Depth::Few) {
                failures.push(format!("{} cut {cut}: {e}", row.name));
            }
            if cut < row.msg.len() {
                let mut less = row.msg.clone();
                less.remove(cut);
                if let Err(e) = compare_at(&less, Depth::Few) {
                    failures.push(format!("{} without byte {cut}: {e}", row.name));
                }
            }
        }
    }
    let n = failures.len();
    failures.truncate(5);
    assert_eq!(n, 0, "{}", failures.join("\n\n"));
}

#[test]
fn fuzz_seeds_agree() {
    let seeds = fuzz_seeds();
    assert!(seeds.len() >= 10, "{} seeds", seeds.len());
    for (name, bytes) in seeds {
        // The stream_framing seeds start with three bytes of framer settings; both ways are fed.
        for input in [&bytes[..], bytes.get(3..).unwrap_or_default()] {
            if let Err(e) = compare(input) {
                panic!("{name}: {e}");
            }
        }
    }
}

/// The fuzz target `sip_datagram` starts from the nasty table: every row that fits in a fuzz input
/// is a seed (`SIPSOCKD_WRITE_SEEDS=1` writes the missing ones).
#[test]
fn the_nasty_rows_seed_the_datagram_fuzzer() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/sip_datagram");
    let write = std::env::var_os("SIPSOCKD_WRITE_SEEDS").is_some();
    let mut missing = Vec::new();
    let mut wanted = std::collections::HashSet::new();
    for row in nasty_rows::rows()
        .into_iter()
        .filter(|r| r.msg.len() <= 4096)
    {
        let slug: String = row
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let path = dir.join(format!("nasty-{slug}"));
        wanted.insert(path.clone());
        match std::fs::read(&path) {
            Ok(bytes) if bytes == row.msg => {}
            _ if write => std::fs::write(&path, &row.msg).unwrap(),
            _ => missing.push(path.display().to_string()),
        }
    }
    assert!(
        missing.is_empty(),
        "seeds missing or stale (run with SIPSOCKD_WRITE_SEEDS=1): {missing:?}"
    );
    // And no seed is left from a row that is gone.
    let orphans: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("nasty-")
        })
        .filter(|p| !wanted.contains(p))
        .collect();
    assert!(orphans.is_empty(), "seeds of no row: {orphans:?}");
}

const MESSAGES: &[&[u8]] = &[
    b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h ;rport ; branch=z9hG4bK1 ;received=1.2.3.4\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;rport=1;rport\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;received;rport;received=x\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;;rport;\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;x=\"a;rport\";rport, SIP/2.0/UDP g\r\n ,SIP/2.0/UDP f\r\nVia: , x\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h\"x;y, z\";rport ,\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP\r\n\th;rport\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;RPORT;Received=q\r\nFrom: <sip:a>;tag\r\nTo: <sip:b>;TAG=x\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h;rport=\r\nFrom: \"a\\\"<x>;tag=2\" <sip:a>;tag=1\r\nTo: b;x=\"<\";tag=2\r\nCall-ID: c\r\n d\r\nCSeq: 1 OPTIONS\r\n\r\n",
    b"INVITE sip:a SIP/2.0\r\nv: SIP/2.0/TCP [::1]:5060;branch=z9hG4bK;rport\r\nf: <sip:a>\r\nt: <sip:b>\r\ni: c\r\nCSeq: 0001 INVITE\r\nMax-Forwards: 70\r\nRoute: <sip:x;lr>, <sip:y>\r\nRecord-Route: <sip:z>\r\nRequire: path\r\nl: 0\r\n\r\n",
    b"ACK sip:a SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n",
    b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h\r\n\r\n",
];

#[test]
fn hand_written_messages_agree() {
    for m in MESSAGES {
        if let Err(e) = compare(m) {
            panic!("{e}");
        }
    }
}

/// A good request to mutate.
const TEMPLATE: &[u8] = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;rport;received=1.2.3.4, SIP/2.0/UDP g\r\n\
From: \"a;b\" <sip:a;x=y>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nRoute: <sip:r>\r\nl: 2\r\n\r\nhi";

/// Pieces requests are assembled from: each is likely to hit a rule of the parser.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "Via: SIP/2.0/UDP h;rport",
        "Via: SIP/2.0/UDP h:5060;branch=z9hG4bK1;received=1.1.1.1",
        "v: sip/2.0/tcp [::1]:5061 ;rport=1",
        "Via: SIP/2.0/UDP a, SIP/2.0/UDP b",
        "Via: x",
        "Via:",
        "Via: SIP/2.0/UDP h;x=\"a,b\";rport",
        "From: <sip:a>;tag=1",
        "f: sip:a;tag",
        "From: \"x;tag=2\" <sip:a>",
        "To: <sip:b>",
        "t: <sip:b>;tag=9",
        "To: <sip:b",
        "Call-ID: c1",
        "i: c2",
        "CSeq: 1 OPTIONS",
        "CSeq: 2 INVITE",
        "CSeq: 99999999999 OPTIONS",
        "Content-Length: 0",
        "l: 2",
        "l: x",
        "Max-Forwards: 70",
        "Route: <sip:a>, <sip:b>",
        "Record-Route: <sip:c;lr>",
        "Require: path, x",
        "X-Other: a\tb",
        " folded",
        "\tfolded",
        "NoColon",
        ": empty",
        "A B: c",
        "",
        "\r",
        "Subject: \u{e9}t\u{e9}",
    ])
}

fn start() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "OPTIONS sip:a SIP/2.0",
        "INVITE sip:a SIP/2.0",
        "ACK sip:a SIP/2.0",
        "options sip:a sip/2.0",
        "SIP/2.0 200 OK",
        "SIP/2.0 99 x",
        "OPTIONS  sip:a SIP/2.0",
        "OPTIONS sip:a SIP/3.0",
        "GET / HTTP/1.1",
    ])
}

proptest! {
    // PROPTEST_CASES=100000 for a long hunt.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1000)
    ))]

    #[test]
    fn random_bytes_agree(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Err(e) = compare(&bytes) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn mutations_agree(edits in prop::collection::vec((0usize..400, any::<u8>(), 0u8..3), 0..6)) {
        let mut msg = TEMPLATE.to_vec();
        for (at, byte, how) in edits {
            let at = at % (msg.len() + 1);
            match how {
                0 if at < msg.len() => msg[at] = byte,
                1 => msg.insert(at, byte),
                _ if at < msg.len() => { msg.remove(at); }
                _ => {}
            }
        }
        if let Err(e) = compare(&msg) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn assembled_requests_agree(
        start in start(),
        pieces in prop::collection::vec((piece(), prop::sample::select(vec!["\r\n", "\n"])), 0..12),
        end in prop::sample::select(vec!["\r\n\r\n", "\n\n", "\r\n", "\r\n\r\nhi", ""]),
        lead in prop::sample::select(vec!["", "\r\n", "\n\r\n"]),
    ) {
        let mut msg = format!("{lead}{start}\r\n");
        for (p, eol) in pieces {
            msg.push_str(p);
            msg.push_str(eol);
        }
        msg.push_str(end);
        if let Err(e) = compare(msg.as_bytes()) {
            prop_assert!(false, "{}", e);
        }
    }
}
