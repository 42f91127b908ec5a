//! One UDP datagram through the parser and the stateless responder, as a worker handles it.
//!
//! Besides "never panics", it checks what callers rely on: `respond` leaves `out` empty unless it
//! replied, a reply is itself a well-formed SIP response with the same Call-ID, and `parse` and
//! `frame_len` agree on where a message ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm::Proto;
use std::net::SocketAddr;
use std::sync::OnceLock;
use worker::sip::{self, FrameStatus, HeaderKind, StartLine};
use worker::{Outcome, Responder};

/// The receiving socket's advertised address, as a worker gets it from its manifest.
const CONTACT: &str = "198.51.100.1:5060";

fn responder() -> &'static Responder {
    static R: OnceLock<Responder> = OnceLock::new();
    R.get_or_init(|| Responder::new(503, "Service Unavailable"))
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

fn call_id<'a>(m: &sip::Message<'a>) -> Option<&'a str> {
    m.headers().find(|h| h.kind == HeaderKind::CallId).map(|h| h.value)
}

fuzz_target!(|data: &[u8]| {
    check_parse(data);
    let mut out = Vec::new();
    for source in sources() {
        let outcome = responder().respond(data, Proto::Udp, *source, CONTACT, &mut out);
        assert_eq!(out.is_empty(), outcome != Outcome::Replied, "{outcome:?}");
        if outcome != Outcome::Replied {
            continue;
        }
        // Only a request that parses is answered.
        let request = sip::parse(data).expect("replied to a message that does not parse");
        let Some(method) = request.method() else {
            panic!("replied to a response");
        };
        assert_ne!(method, "ACK", "replied to an ACK");
        let reply = match sip::parse(&out) {
            Ok(reply) => reply,
            Err(e) => panic!("reply does not parse ({e}): {:?}", String::from_utf8_lossy(&out)),
        };
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
            assert_eq!(sip::frame_len(&out), FrameStatus::Complete(out.len()));
        }
    }
});

/// `parse` and `frame_len` on the same bytes: lengths stay inside the buffer and agree.
fn check_parse(data: &[u8]) {
    let parsed = sip::parse(data);
    if let Ok(m) = &parsed {
        assert!(m.len() <= data.len());
        assert!(m.body().len() <= m.len());
        // Iterating the headers ends, and every value is trimmed.
        for h in m.headers() {
            assert!(!h.name.is_empty());
            assert_eq!(h.value, h.value.trim_matches([' ', '\t', '\r', '\n']));
        }
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
            assert_eq!(whole.body(), framed.body());
        }
        FrameStatus::Incomplete => assert!(data.len() <= sip::MAX_FRAME_LEN),
        FrameStatus::Invalid(_) => {}
    }
}
