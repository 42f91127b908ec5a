//! Hand-written nasty messages through the stateless responder (`Responder::respond`, as a UDP
//! worker calls it on a datagram) and the stream framer (`sip::frame_len`, as a connection reader
//! calls it on its buffer).
//!
//! Each row states what must happen: `Malformed` or `Ignored` (no reply, `out` left empty) or
//! `Replied` with the status code and a check of the reply, and what `frame_len` says of the same
//! bytes. No row may panic. The same kinds of datagram are sent to the real daemon in
//! `tests/faults_mi.rs` (`nasty_datagrams_*`).
//!
//! The table itself is in `nasty_rows/mod.rs`.

mod nasty_rows;

use nasty_rows::{rows, Frame, Row, Want, CONTACT, SOURCE};
use shm::Proto;
use std::net::SocketAddr;
use worker::sip::{self, FrameStatus, HeaderKind, StartLine, MAX_FRAME_LEN};
use worker::{Outcome, Responder};

fn header<'a>(m: &sip::Message<'a>, kind: HeaderKind) -> Option<&'a str> {
    m.headers().find(|h| h.kind == kind).map(|h| h.value)
}

#[test]
fn nasty_messages_get_the_stated_outcome_and_frame() {
    let responder = Responder::new(503, "Service Unavailable");
    let source: SocketAddr = SOURCE.parse().unwrap();
    let mut failures = Vec::new();
    for row in rows() {
        let mut out = b"stale bytes from the last datagram".to_vec();
        let outcome = responder.respond(&row.msg, Proto::Udp, source, CONTACT, &mut out);
        let reply = String::from_utf8_lossy(&out).into_owned();
        let verdict = std::panic::catch_unwind(|| check_row(&row, outcome, &reply));
        if let Err(e) = verdict {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!(
                "{}: {}",
                row.name,
                why.chars().take(400).collect::<String>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check_row(row: &Row, outcome: Outcome, reply: &str) {
    match row.want {
        Want::Malformed => assert_eq!((outcome, reply), (Outcome::Malformed, "")),
        Want::Ignored => assert_eq!((outcome, reply), (Outcome::Ignored, "")),
        Want::Replied(code, check) => {
            assert_eq!(outcome, Outcome::Replied);
            let parsed = sip::parse(reply.as_bytes())
                .unwrap_or_else(|e| panic!("reply does not parse: {e}"));
            let m = parsed.message();
            match m.start_line() {
                StartLine::Response { code: got, .. } => assert_eq!(got, code),
                other => panic!("reply starts with {other:?}"),
            }
            assert_eq!(
                m.len(),
                reply.len(),
                "bytes after the reply's Content-Length"
            );
            assert!(reply.ends_with("\r\nContent-Length: 0\r\n\r\n"));
            // The request's Call-ID and CSeq, unfolded; a Contact only on a 200 to OPTIONS.
            let request = sip::parse(&row.msg).unwrap();
            let request = request.message();
            for kind in [HeaderKind::CallId, HeaderKind::CSeq] {
                let mut want = Vec::new();
                sip::put_unfolded(&mut want, header(&request, kind).unwrap());
                assert_eq!(
                    header(&m, kind).map(str::as_bytes),
                    Some(&want[..]),
                    "{kind:?}"
                );
            }
            assert_eq!(
                header(&m, HeaderKind::Contact),
                (code == 200).then_some("<sip:198.51.100.1:5060;transport=udp>")
            );
            check(reply);
        }
    }
    let want = match row.frame {
        Frame::Whole => FrameStatus::Complete(row.msg.len()),
        Frame::Incomplete => FrameStatus::Incomplete,
        Frame::Invalid(e) => FrameStatus::Invalid(e),
        Frame::Complete(n) => FrameStatus::Complete(n),
    };
    assert_eq!(sip::frame_len(&row.msg), want, "frame_len");
    // Whatever the row, framing never claims more than the buffer or the limit.
    if let FrameStatus::Complete(n) = want {
        assert!(n <= row.msg.len() && n <= MAX_FRAME_LEN);
    }
}

/// Every prefix of every row, through both entry points: a connection reader sees them all.
#[test]
fn every_prefix_of_the_small_rows_is_handled() {
    let responder = Responder::new(503, "Service Unavailable");
    let source: SocketAddr = SOURCE.parse().unwrap();
    let mut out = Vec::new();
    for row in rows().into_iter().filter(|r| r.msg.len() <= 400) {
        for cut in 0..=row.msg.len() {
            let prefix = &row.msg[..cut];
            let outcome = responder.respond(prefix, Proto::Udp, source, CONTACT, &mut out);
            assert_eq!(
                out.is_empty(),
                outcome != Outcome::Replied,
                "{}: cut {cut}",
                row.name
            );
            match sip::frame_len(prefix) {
                FrameStatus::Complete(n) => assert!(n <= cut, "{}: cut {cut}", row.name),
                FrameStatus::Incomplete => assert!(cut <= MAX_FRAME_LEN),
                FrameStatus::Invalid(_) => {}
            }
        }
    }
}
