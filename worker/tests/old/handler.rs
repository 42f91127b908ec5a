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

use super::sip::{self, HeaderKind, Message, StartLine};
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
