//! The transport-independent SIP responder.
//!
//! Given one message and where it came from, writes the stateless reply (if any) into a buffer the
//! caller reuses: `200 OK` to OPTIONS, the configured `[sip] reply_code` / `reply_reason` to any
//! other request but ACK; nothing to ACK, responses and keep-alives. The reply copies Via (the top
//! one with `received` and a filled `rport`, RFC 3261 §18.2.1 and RFC 3581), From, To (with a tag
//! added when absent), Call-ID and CSeq as RFC 3261 §8.2.6 says.
//!
//! This module does no I/O and keeps no state between messages: the UDP loop uses it today and
//! the stream transports will later. It never panics and allocates nothing but `out`'s growth.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use crate::sip::{self, HeaderKind, Message, StartLine};
use shm::Proto;
use std::io::Write;
use std::net::SocketAddr;

/// What [`Responder::respond`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A reply is in `out`.
    Replied,
    /// Nothing to answer: ACK, a response, a CRLF keep-alive. `out` is empty.
    Ignored,
    /// Not SIP, or a request missing Via / From / To / Call-ID / CSeq, or whose CSeq method is not
    /// its method. `out` is empty.
    Malformed,
}

/// Stateless SIP replies; one per worker, shared by every socket it serves.
#[derive(Debug, Clone)]
pub struct Responder {
    reply_code: u16,
    reply_reason: String,
    /// `SIP/2.0 CODE REASON\r\n` for requests other than OPTIONS.
    status_line: String,
    /// `Server: sipsockd/VERSION\r\n`.
    server: String,
}

impl Responder {
    /// A responder answering requests other than OPTIONS and ACK with `reply_code reply_reason`.
    ///
    /// A code outside 100..=699 (the config should have refused it) becomes 500; control
    /// characters in the reason are dropped, so the reply stays one line.
    pub fn new(reply_code: u16, reply_reason: &str) -> Responder {
        let reply_code = if (100..=699).contains(&reply_code) {
            reply_code
        } else {
            log::warn!("reply code {reply_code} is not a SIP final status; using 500");
            500
        };
        let reply_reason: String = reply_reason
            .chars()
            .filter(|c| !c.is_control())
            .collect::<String>()
            .trim()
            .to_string();
        Responder {
            status_line: format!("SIP/2.0 {reply_code} {reply_reason}\r\n"),
            server: format!("Server: sipsockd/{}\r\n", env!("CARGO_PKG_VERSION")),
            reply_code,
            reply_reason,
        }
    }

    /// The status code of replies to requests other than OPTIONS.
    pub fn reply_code(&self) -> u16 {
        self.reply_code
    }

    /// The reason phrase of those replies.
    pub fn reply_reason(&self) -> &str {
        &self.reply_reason
    }

    /// Answer one message received on `transport` from `source`. `contact` is the `host:port` of
    /// the receiving socket put in the Contact of a 200 to OPTIONS. `out` is cleared first and
    /// holds the reply when the outcome is [`Outcome::Replied`].
    pub fn respond(
        &self,
        msg: &[u8],
        transport: Proto,
        source: SocketAddr,
        contact: &str,
        out: &mut Vec<u8>,
    ) -> Outcome {
        out.clear();
        if sip::is_keepalive(msg) {
            return Outcome::Ignored;
        }
        let Ok(message) = sip::parse(msg) else {
            return Outcome::Malformed;
        };
        let method = match message.start_line() {
            StartLine::Response { .. } => return Outcome::Ignored,
            StartLine::Request { method, .. } => method,
        };
        let Some(fields) = Required::find(&message, method) else {
            return Outcome::Malformed;
        };
        if method == "ACK" {
            return Outcome::Ignored;
        }
        let options = method == "OPTIONS";
        let code = if options { 200 } else { self.reply_code };
        if options {
            out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
        } else {
            out.extend_from_slice(self.status_line.as_bytes());
        }
        let mut top = true;
        for via in message.headers().filter(|h| h.kind == HeaderKind::Via) {
            out.extend_from_slice(b"Via: ");
            if top {
                put_top_via(out, via.value, source);
                top = false;
            } else {
                sip::put_unfolded(out, via.value);
            }
            out.extend_from_slice(b"\r\n");
        }
        put_header(out, "From", fields.from);
        out.extend_from_slice(b"To: ");
        sip::put_unfolded(out, fields.to);
        // RFC 3261 §8.2.6.2: a tag unless the request had one; 100 Trying never gets one. The tag
        // is a function of the dialog so that a retransmission answered by any worker gets the
        // same one.
        let to_params = sip::header_params(fields.to);
        if code != 100 && sip::find_param(to_params, "tag").is_none() {
            let from_tag = sip::find_param(sip::header_params(fields.from), "tag")
                .flatten()
                .unwrap_or("");
            out.extend_from_slice(b";tag=");
            sip::put_hex64(out, to_tag(fields.call_id, from_tag));
        }
        out.extend_from_slice(b"\r\n");
        put_header(out, "Call-ID", fields.call_id);
        put_header(out, "CSeq", fields.cseq);
        if options {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "Contact: <sip:{contact};transport={transport}>\r\n");
        }
        out.extend_from_slice(self.server.as_bytes());
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        Outcome::Replied
    }
}

/// The headers every request must carry once (Via at least once), as RFC 3261 §8.1.1 says.
struct Required<'a> {
    from: &'a str,
    to: &'a str,
    call_id: &'a str,
    cseq: &'a str,
}

impl<'a> Required<'a> {
    fn find(message: &Message<'a>, method: &str) -> Option<Required<'a>> {
        let (mut top_via, mut from, mut to, mut call_id, mut cseq) = (None, None, None, None, None);
        for h in message.headers() {
            match h.kind {
                HeaderKind::Via => {
                    if h.value.is_empty() {
                        return None;
                    }
                    top_via.get_or_insert(h.value);
                }
                HeaderKind::From => set_once(&mut from, h.value)?,
                HeaderKind::To => set_once(&mut to, h.value)?,
                HeaderKind::CallId => set_once(&mut call_id, h.value)?,
                HeaderKind::CSeq => set_once(&mut cseq, h.value)?,
                _ => {}
            }
        }
        let (cseq_method_ok, cseq) = match cseq.map(|v| (sip::parse_cseq(v), v)) {
            Some((Some((_, m)), v)) => (m == method, v),
            _ => return None,
        };
        if !cseq_method_ok || !valid_via(top_via?) {
            return None;
        }
        Some(Required {
            from: from?,
            to: to?,
            call_id: call_id?,
            cseq,
        })
    }
}

/// Keep the first non-empty value; a second one (or an empty one) makes the request malformed.
fn set_once<'a>(slot: &mut Option<&'a str>, value: &'a str) -> Option<()> {
    if slot.is_some() || value.is_empty() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// `SIP/2.0/TRANSPORT sent-by`, the least a top Via needs for a reply to make sense.
fn valid_via(value: &str) -> bool {
    let (first, _) = sip::split_first_value(value);
    let (sent_by, _) = sip::via_params(first);
    let Some((protocol, host)) = sent_by.split_once(sip::is_lws) else {
        return false;
    };
    let protocol_ok = protocol
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/2.0/"))
        && protocol.len() > 8;
    protocol_ok && !host.trim_matches(sip::is_lws).is_empty()
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    sip::put_unfolded(out, value);
    out.extend_from_slice(b"\r\n");
}

/// The top Via, with `received=SOURCE_IP` (an existing one replaced) and a valueless `rport`
/// filled with the source port; the other values of the same header line follow unchanged.
fn put_top_via(out: &mut Vec<u8>, value: &str, source: SocketAddr) {
    let (first, others) = sip::split_first_value(value);
    let (sent_by, params) = sip::via_params(first);
    sip::put_unfolded(out, sent_by);
    for param in sip::params(params) {
        if param.name.eq_ignore_ascii_case("received") {
            continue;
        }
        out.push(b';');
        if param.name.eq_ignore_ascii_case("rport") && param.value.is_none() {
            let _ = write!(out, "rport={}", source.port());
        } else {
            sip::put_unfolded(out, param.raw);
        }
    }
    // An IPv4 peer of a dual-stack socket shows as ::ffff:a.b.c.d; the Via wants a.b.c.d. IPv6
    // goes without brackets, as RFC 3261's `received` grammar has it.
    let _ = write!(out, ";received={}", source.ip().to_canonical());
    if let Some(others) = others {
        out.extend_from_slice(b", ");
        sip::put_unfolded(out, others);
    }
}

/// The To tag given to a request without one: 64-bit FNV-1a of Call-ID and From tag.
/// Deterministic across processes and runs, unlike std's randomly keyed hasher.
pub(crate) fn to_tag(call_id: &str, from_tag: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") hash apart.
    for b in call_id.bytes().chain([0xff]).chain(from_tag.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC4: &str = "192.0.2.7:5062";
    const CONTACT: &str = "198.51.100.1:5060";

    fn responder() -> Responder {
        Responder::new(503, "Service Unavailable")
    }

    fn reply(msg: &[u8], source: &str) -> (Outcome, String) {
        let mut out = b"stale".to_vec();
        let outcome =
            responder().respond(msg, Proto::Udp, source.parse().unwrap(), CONTACT, &mut out);
        (outcome, String::from_utf8(out).unwrap())
    }

    fn tag(call_id: &str, from_tag: &str) -> String {
        format!("{:016x}", to_tag(call_id, from_tag))
    }

    fn server() -> String {
        format!("Server: sipsockd/{}\r\n", env!("CARGO_PKG_VERSION"))
    }

    #[test]
    fn options_gets_200() {
        let msg = "OPTIONS sip:ping@198.51.100.1 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK.1;rport\r\n\
            Max-Forwards: 70\r\n\
            From: \"Al\" <sip:al@example.com>;tag=abc\r\n\
            To: <sip:ping@198.51.100.1>\r\n\
            Call-ID: call-1@10.0.0.1\r\n\
            CSeq: 7 OPTIONS\r\n\
            Content-Length: 0\r\n\r\n";
        let want = format!(
            "SIP/2.0 200 OK\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK.1;rport=5062;received=192.0.2.7\r\n\
             From: \"Al\" <sip:al@example.com>;tag=abc\r\n\
             To: <sip:ping@198.51.100.1>;tag={}\r\n\
             Call-ID: call-1@10.0.0.1\r\n\
             CSeq: 7 OPTIONS\r\n\
             Contact: <sip:198.51.100.1:5060;transport=udp>\r\n\
             {}Content-Length: 0\r\n\r\n",
            tag("call-1@10.0.0.1", "abc"),
            server()
        );
        assert_eq!(reply(msg.as_bytes(), SRC4), (Outcome::Replied, want));
    }

    #[test]
    fn compact_forms_multiple_vias_and_existing_tag() {
        let msg = "OPTIONS sip:x SIP/2.0\r\n\
            v: SIP/2.0/UDP proxy.example:5060;branch=z9hG4bK.2;received=203.0.113.9, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK.1\r\n\
            v: SIP/2.0/UDP 10.0.0.3;rport=1234;branch=z9hG4bK.0\r\n\
            f: sip:a@b;tag=f1\r\n\
            t: sip:x;tag=t1\r\n\
            i: c2\r\n\
            CSeq: 1 OPTIONS\r\n\
            l: 0\r\n\r\n";
        let want = format!(
            "SIP/2.0 200 OK\r\n\
             Via: SIP/2.0/UDP proxy.example:5060;branch=z9hG4bK.2;received=192.0.2.7, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK.1\r\n\
             Via: SIP/2.0/UDP 10.0.0.3;rport=1234;branch=z9hG4bK.0\r\n\
             From: sip:a@b;tag=f1\r\n\
             To: sip:x;tag=t1\r\n\
             Call-ID: c2\r\n\
             CSeq: 1 OPTIONS\r\n\
             Contact: <sip:198.51.100.1:5060;transport=udp>\r\n\
             {}Content-Length: 0\r\n\r\n",
            server()
        );
        assert_eq!(reply(msg.as_bytes(), SRC4), (Outcome::Replied, want));
    }

    #[test]
    fn other_requests_get_the_configured_reply() {
        let msg = "INVITE sip:x SIP/2.0\r\n\
            Via: SIP/2.0/UDP [2001:db8::1]:5060;rport;branch=z9hG4bK.3\r\n\
            From: <sip:a@b>;tag=f\r\n\
            To: <sip:x>\r\n\
            Call-ID: c3\r\n\
            CSeq: 2\r\n INVITE\r\n\
            Content-Type: application/sdp\r\n\
            Content-Length: 4\r\n\r\nv=0\n";
        let want = format!(
            "SIP/2.0 503 Service Unavailable\r\n\
             Via: SIP/2.0/UDP [2001:db8::1]:5060;rport=40000;branch=z9hG4bK.3;received=2001:db8::1\r\n\
             From: <sip:a@b>;tag=f\r\n\
             To: <sip:x>;tag={}\r\n\
             Call-ID: c3\r\n\
             CSeq: 2 INVITE\r\n\
             {}Content-Length: 0\r\n\r\n",
            tag("c3", "f"),
            server()
        );
        assert_eq!(
            reply(msg.as_bytes(), "[2001:db8::1]:40000"),
            (Outcome::Replied, want)
        );
    }

    #[test]
    fn mapped_ipv4_source_is_written_as_ipv4() {
        let msg = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a>\r\nTo: <sip:x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let (outcome, out) = reply(msg, "[::ffff:192.0.2.9]:5060");
        assert_eq!(outcome, Outcome::Replied);
        assert!(
            out.contains("Via: SIP/2.0/UDP h;received=192.0.2.9\r\n"),
            "{out}"
        );
        // A From without a tag (RFC 2543 style) still gives a deterministic tag.
        assert!(out.contains(&format!("To: <sip:x>;tag={}\r\n", tag("c", ""))));
    }

    #[test]
    fn folded_headers_are_unfolded() {
        let msg = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n ;branch=z9hG4bK.f ;rport\r\nFrom: <sip:a>\r\n\t;tag=1\r\nTo: <sip:x>;tag=2\r\nCall-ID: c\r\nCSeq: 1\r\n  OPTIONS\r\n\r\n";
        let (outcome, out) = reply(msg, SRC4);
        assert_eq!(outcome, Outcome::Replied);
        assert!(
            out.contains("Via: SIP/2.0/UDP h;branch=z9hG4bK.f;rport=5062;received=192.0.2.7\r\n")
        );
        assert!(out.contains("From: <sip:a> ;tag=1\r\n"), "{out}");
        assert!(out.contains("CSeq: 1 OPTIONS\r\n"), "{out}");
    }

    #[test]
    fn to_tag_is_stable_across_retransmissions() {
        let msg = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK.9\r\nFrom: <sip:a>;tag=q\r\nTo: <sip:x>\r\nCall-ID: stable\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let first = reply(msg, SRC4).1;
        let again = reply(msg, SRC4).1;
        assert_eq!(first, again);
        let other = reply(&msg.replace_call_id(), SRC4).1;
        let tag_of = |s: &str| s.split("To: <sip:x>;tag=").nth(1).unwrap()[..16].to_string();
        assert_ne!(tag_of(&first), tag_of(&other));
        assert_ne!(to_tag("ab", "c"), to_tag("a", "bc"));
    }

    trait ReplaceCallId {
        fn replace_call_id(&self) -> Vec<u8>;
    }
    impl ReplaceCallId for [u8] {
        fn replace_call_id(&self) -> Vec<u8> {
            String::from_utf8_lossy(self)
                .replace("Call-ID: stable", "Call-ID: other")
                .into_bytes()
        }
    }

    #[test]
    fn table() {
        const GOOD_TAIL: &str =
            "Via: SIP/2.0/UDP h\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\n";
        let owned: Vec<(String, Outcome)> = vec![
            // Not SIP at all.
            (String::new(), Outcome::Malformed),
            ("\r\n\r\n".into(), Outcome::Ignored),
            ("\r\n".into(), Outcome::Ignored),
            ("hello".into(), Outcome::Malformed),
            ("OPTIONS sip:x SIP/2.0".into(), Outcome::Malformed),
            ("OPTIONS sip:x".into(), Outcome::Malformed),
            ("OPTIONS\r\n\r\n".into(), Outcome::Malformed),
            // Responses and ACK.
            (
                format!("SIP/2.0 200 OK\r\n{GOOD_TAIL}CSeq: 1 OPTIONS\r\n\r\n"),
                Outcome::Ignored,
            ),
            (
                format!("ACK sip:x SIP/2.0\r\n{GOOD_TAIL}CSeq: 1 ACK\r\n\r\n"),
                Outcome::Ignored,
            ),
            // Requests.
            (
                format!("OPTIONS sip:x SIP/2.0\r\n{GOOD_TAIL}CSeq: 1 OPTIONS\r\n\r\n"),
                Outcome::Replied,
            ),
            (
                format!("REGISTER sip:x SIP/2.0\r\n{GOOD_TAIL}CSeq: 1 REGISTER\r\n\r\n"),
                Outcome::Replied,
            ),
            (
                format!("OPTIONS sip:x SIP/2.0\r\n{GOOD_TAIL}CSeq: 1 INVITE\r\n\r\n"),
                Outcome::Malformed,
            ),
            (
                format!("OPTIONS sip:x SIP/2.0\r\n{GOOD_TAIL}CSeq: x OPTIONS\r\n\r\n"),
                Outcome::Malformed,
            ),
            (
                format!("OPTIONS sip:x SIP/2.0\r\n{GOOD_TAIL}\r\n"),
                Outcome::Malformed,
            ),
            (
                "OPTIONS sip:x SIP/2.0\r\nFrom: <sip:a>\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
                    .into(),
                Outcome::Malformed,
            ),
            (
                "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
                    .into(),
                Outcome::Malformed,
            ),
            (
                "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
                    .into(),
                Outcome::Malformed,
            ),
            (
                "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a>\r\nTo: <sip:b>\r\nCSeq: 1 OPTIONS\r\n\r\n"
                    .into(),
                Outcome::Malformed,
            ),
            (
                format!("OPTIONS sip:x SIP/2.0\r\n{GOOD_TAIL}To: <sip:c>\r\nCSeq: 1 OPTIONS\r\n\r\n"),
                Outcome::Malformed,
            ),
            (
                "OPTIONS sip:x SIP/2.0\r\nVia: garbage\r\nFrom: <sip:a>\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
                    .into(),
                Outcome::Malformed,
            ),
            (
                "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/\r\nFrom: <sip:a>\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
                    .into(),
                Outcome::Malformed,
            ),
            (
                format!("OPTIONS sip:x SIP/2.0\r\n{GOOD_TAIL}CSeq: 1 OPTIONS\r\nContent-Length: 99999999999999999999\r\n\r\n"),
                Outcome::Malformed,
            ),
            (
                format!("OPTIONS sip:x SIP/2.0\r\n{GOOD_TAIL}CSeq: 1 OPTIONS\r\nContent-Length: 4000\r\n\r\nshort"),
                Outcome::Malformed,
            ),
            (
                format!("OPTIONS sip:x SIP/2.0\r\n{GOOD_TAIL}CSeq: 1 OPTIONS\r\nX: a\0b\r\n\r\n"),
                Outcome::Malformed,
            ),
        ];
        let mut cases: Vec<(Vec<u8>, Outcome)> = owned
            .into_iter()
            .map(|(s, o)| (s.into_bytes(), o))
            .collect();
        let mut bad_utf8 =
            format!("OPTIONS sip:x SIP/2.0\r\n{GOOD_TAIL}CSeq: 1 OPTIONS\r\n").into_bytes();
        bad_utf8.extend_from_slice(b"X: \xc3\x28\r\n\r\n");
        cases.push((bad_utf8, Outcome::Malformed));
        cases.push((b"\0\0\0\0".to_vec(), Outcome::Malformed));
        for (msg, want) in &cases {
            for source in [SRC4, "[2001:db8::2]:5060"] {
                let (got, out) = reply(msg, source);
                assert_eq!(got, *want, "{:?}", String::from_utf8_lossy(msg));
                assert_eq!(out.is_empty(), got != Outcome::Replied);
            }
        }
    }

    #[test]
    fn bad_reply_code_and_reason_are_sanitized() {
        let r = Responder::new(42, "Bad\r\nInjected: yes");
        assert_eq!(r.reply_code(), 500);
        assert_eq!(r.reply_reason(), "BadInjected: yes");
        let r = Responder::new(486, "Busy Here");
        let msg = b"MESSAGE sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\n\r\n";
        let mut out = Vec::new();
        let outcome = r.respond(msg, Proto::Tcp, SRC4.parse().unwrap(), CONTACT, &mut out);
        assert_eq!(outcome, Outcome::Replied);
        assert!(out.starts_with(b"SIP/2.0 486 Busy Here\r\n"));
    }

    #[test]
    fn contact_transport_follows_the_proto() {
        let msg = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TLS h\r\nFrom: <sip:a>;tag=1\r\nTo: <sip:b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let mut out = Vec::new();
        responder().respond(
            msg,
            Proto::Tls,
            SRC4.parse().unwrap(),
            "[2001:db8::5]:5061",
            &mut out,
        );
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("Contact: <sip:[2001:db8::5]:5061;transport=tls>\r\n"),
            "{out}"
        );
    }

    proptest::proptest! {
        #[test]
        fn respond_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..800)) {
            let mut out = Vec::new();
            let outcome = responder().respond(&bytes, Proto::Udp, SRC4.parse().unwrap(), CONTACT, &mut out);
            proptest::prop_assert_eq!(out.is_empty(), outcome != Outcome::Replied);
        }

        /// Mutations of a valid request reach deeper than random bytes do.
        #[test]
        fn respond_never_panics_on_mutations(
            edits in proptest::collection::vec((0usize..400, proptest::num::u8::ANY), 0..8),
        ) {
            let mut msg = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;rport;received=1.2.3.4, SIP/2.0/UDP g\r\n\
                From: \"a;b\" <sip:a;x=y>;tag=1\r\nTo: <sip:b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nl: 2\r\n\r\nhi".to_vec();
            for (at, byte) in edits {
                if let Some(b) = msg.get_mut(at % 130) {
                    *b = byte;
                }
            }
            let mut out = Vec::new();
            let outcome = responder().respond(&msg, Proto::Udp, "[::1]:1".parse().unwrap(), CONTACT, &mut out);
            if outcome == Outcome::Replied {
                // Whatever was mutated, the reply is itself a well-formed message.
                let reply = sip::parse(&out);
                proptest::prop_assert!(reply.is_ok(), "{:?}", String::from_utf8_lossy(&out));
            }
        }
    }
}
