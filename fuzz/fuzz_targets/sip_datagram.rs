//! One UDP datagram through the single-pass parser and the stateless responder, as a worker
//! handles it (a reused `Parsed` scratch, per-socket `SocketParts`), and through the code they
//! replaced (`worker/tests/old/`, compiled in here) for a differential check.
//!
//! Besides "never panics", it checks what callers rely on: `answer` leaves `out` empty unless it
//! replied, a reply is itself a well-formed SIP response with the same Call-ID, `parse` and
//! `frame_len` agree on where a message ends, the spans of a parse tile the message (what a relay
//! splices with), and the old and new code agree (accept/reject, error, framing, reply bytes) but
//! where the new parser's limits refuse (`TooMany*`, the one deliberate difference).
//!
//! Seeds: `fuzz/corpus/sip_datagram/`, the nasty-message table among them (`nasty-*`).
#![no_main]

#[path = "../../worker/tests/old/mod.rs"]
mod old;

use libfuzzer_sys::fuzz_target;
use shm::Proto;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::OnceLock;
use worker::handler::SocketParts;
use worker::sip::{self, FrameStatus, HeaderKind, Message, ParseError, Parsed, StartLine};
use worker::{Outcome, Responder};

/// The receiving socket's advertised address, as a worker gets it from its manifest.
const CONTACT: &str = "198.51.100.1:5060";

fn responder() -> &'static Responder {
    static R: OnceLock<Responder> = OnceLock::new();
    R.get_or_init(|| Responder::new(503, "Service Unavailable"))
}

fn old_responder() -> &'static old::handler::Responder {
    static R: OnceLock<old::handler::Responder> = OnceLock::new();
    R.get_or_init(|| old::handler::Responder::new(503, "Service Unavailable"))
}

fn parts() -> &'static SocketParts {
    static P: OnceLock<SocketParts> = OnceLock::new();
    P.get_or_init(|| SocketParts::new(CONTACT, Proto::Udp))
}

fn sources() -> &'static [SocketAddr; 2] {
    static S: OnceLock<[SocketAddr; 2]> = OnceLock::new();
    S.get_or_init(|| {
        [
            "192.0.2.7:5062".parse().unwrap(),
            "[2001:db8::7]:5062".parse().unwrap(),
        ]
    })
}

thread_local! {
    /// The worker's scratch: reused across inputs, as a worker reuses it across datagrams.
    static SCRATCH: RefCell<Parsed> = RefCell::new(Parsed::new());
}

fn call_id<'a>(m: &Message<'a>) -> Option<&'a str> {
    m.headers().find(|h| h.kind == HeaderKind::CallId).map(|h| h.value)
}

fn over_a_limit(e: ParseError) -> bool {
    matches!(
        e,
        ParseError::TooManyHeaders | ParseError::TooManyVias | ParseError::TooManyRoutes
    )
}

fuzz_target!(|data: &[u8]| {
    check_parse(data);
    check_against_old(data);
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut out = Vec::new();
        for source in sources() {
            let outcome = responder().answer(&mut scratch, data, *source, parts(), &mut out);
            assert_eq!(out.is_empty(), outcome != Outcome::Replied, "{outcome:?}");
            if outcome != Outcome::Replied {
                continue;
            }
            check_reply(data, &out);
        }
    });
});

/// A reply to `data`: a well-formed response, with the request's Call-ID, framed the same on a
/// stream.
fn check_reply(data: &[u8], out: &[u8]) {
    // Only a request that parses is answered.
    let request = sip::parse(data).expect("replied to a message that does not parse");
    let request = request.message();
    let Some(method) = request.method() else {
        panic!("replied to a response");
    };
    assert_ne!(method, "ACK", "replied to an ACK");
    let reply = match sip::parse(out) {
        Ok(reply) => reply,
        Err(e) => panic!("reply does not parse ({e}): {:?}", String::from_utf8_lossy(out)),
    };
    let reply = reply.message();
    let want = if method == "OPTIONS" { 200 } else { 503 };
    assert!(
        matches!(reply.start_line(), StartLine::Response { code, .. } if code == want),
        "{:?}",
        reply.start_line()
    );
    assert_eq!(reply.len(), out.len(), "reply has bytes past its Content-Length");
    assert!(reply.body().is_empty());
    // The reply carries the request's Call-ID, unfolded.
    let mut want_call_id = Vec::new();
    sip::put_unfolded(&mut want_call_id, call_id(&request).expect("answered without Call-ID"));
    assert_eq!(call_id(&reply).map(str::as_bytes), Some(&want_call_id[..]));
    // The reply is framed the same on a stream (Content-Length: 0, nothing after it).
    if out.len() <= sip::MAX_FRAME_LEN {
        assert_eq!(sip::frame_len(out), FrameStatus::Complete(out.len()));
    }
}

/// `parse` and `frame_len` on the same bytes: lengths stay inside the buffer and agree; the spans
/// tile the message.
fn check_parse(data: &[u8]) {
    let parsed = sip::parse(data);
    if let Ok(owned) = &parsed {
        let m = owned.message();
        assert!(m.len() <= data.len());
        assert!(m.body().len() <= m.len());
        // Iterating the headers ends, and every value is trimmed.
        for h in m.headers() {
            assert!(!h.name.is_empty());
            assert_eq!(h.value, h.value.trim_matches([' ', '\t', '\r', '\n']));
        }
        check_spans(&m);
    }
    match sip::frame_len(data) {
        FrameStatus::Complete(n) => {
            assert!(n > 0 && n <= data.len() && n <= sip::MAX_FRAME_LEN, "{n}");
            // A framed message parses as a datagram of exactly those bytes, and the longer buffer
            // parses to the same message.
            let framed = sip::parse(&data[..n]).expect("a complete frame does not parse");
            assert_eq!(framed.len(), n);
            let whole = parsed.expect("frame_len found a message parse refuses");
            assert_eq!(whole.len(), n);
            assert_eq!(whole.message().body(), framed.message().body());
        }
        FrameStatus::Incomplete => assert!(data.len() <= sip::MAX_FRAME_LEN),
        FrameStatus::Invalid(_) => {}
    }
}

/// Start line, header lines, empty line and body follow each other without a gap; every value
/// sits in its line; Vias and Route entries are in order, each inside its line's value.
fn check_spans(m: &Message<'_>) {
    let mut at = m.start_line_span().end as usize;
    assert!(m.start_line_span().start as usize <= at);
    for line in m.lines() {
        assert_eq!(line.span().start as usize, at);
        assert!(line.name.start < line.name.end && line.name.end <= line.value.start);
        assert!(line.value.start <= line.value.end && line.value.end < line.end);
        at = line.end as usize;
    }
    assert_eq!(m.head_end(), at);
    assert!(m.head_end() < m.body_start());
    assert_eq!(m.body_span().start as usize, m.body_start());
    let lines = m.lines();
    let mut last = 0;
    for via in m.vias() {
        let line = lines[usize::from(via.line)];
        assert_eq!(line.kind, HeaderKind::Via);
        assert!(line.value.start <= via.value.start && via.value.end <= line.value.end);
        assert!(via.value.start >= last);
        last = via.value.end;
        for p in [via.branch, via.rport, via.received].into_iter().flatten() {
            assert!(via.params.start < p.span.start && p.span.end <= via.value.end);
        }
    }
    for entry in m.routes().iter().chain(m.record_routes()) {
        let line = lines[usize::from(entry.line)];
        assert!(line.value.start <= entry.value.start && entry.value.end <= line.value.end);
    }
}

/// The old parser and responder agree with the new ones, but where the new limits refuse.
fn check_against_old(data: &[u8]) {
    let new = sip::parse(data);
    if new.as_ref().is_err_and(|e| over_a_limit(*e)) {
        return;
    }
    let old = old::sip::parse(data);
    match (&old, &new) {
        (Ok(o), Ok(n)) => {
            let n = n.message();
            assert_eq!(o.len(), n.len());
            assert_eq!(o.body(), n.body());
            let old_headers: Vec<_> = o.headers().map(|h| (h.name, h.value)).collect();
            let new_headers: Vec<_> = n.headers().map(|h| (h.name, h.value)).collect();
            assert_eq!(old_headers, new_headers);
        }
        (Err(o), Err(n)) => assert_eq!(format!("{o:?}"), format!("{n:?}")),
        (o, n) => panic!(
            "old {:?}, new {:?}",
            o.as_ref().map(|m| m.len()),
            n.as_ref().map(|m| m.len())
        ),
    }
    let old_frame = format!("{:?}", old::sip::frame_len(data));
    let new_frame = format!("{:?}", sip::frame_len(data));
    assert_eq!(old_frame, new_frame, "frame_len");
    for source in sources() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let oa = old_responder().respond(data, Proto::Udp, *source, CONTACT, &mut a);
        let ob = responder().respond(data, Proto::Udp, *source, CONTACT, &mut b);
        assert_eq!(format!("{oa:?}"), format!("{ob:?}"));
        // The old code compiled here says this crate's version in its Server header.
        assert_eq!(without_server(&a), without_server(&b), "reply bytes");
    }
}

/// A reply without its `Server:` line.
fn without_server(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply)
        .split_inclusive("\r\n")
        .filter(|line| !line.starts_with("Server: sipsockd/"))
        .collect()
}
