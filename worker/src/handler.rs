//! The transport-independent SIP responder.
//!
//! Given one parsed message and where it came from, writes the stateless reply (if any) into a
//! buffer the caller reuses: `200 OK` to OPTIONS, the configured `[sip] reply_code` /
//! `reply_reason` to any other request but ACK; nothing to ACK, responses and keep-alives. The
//! reply copies Via (the top one with `received` and a filled `rport`, RFC 3261 §18.2.1 and
//! RFC 3581), From, To (with a tag added when absent), Call-ID and CSeq as RFC 3261 §8.2.6 says.
//!
//! No formatting machinery on the way: what depends on the socket (the Contact of a 200 to OPTIONS,
//! the Server header, the end of the reply) is rendered once into [`SocketParts`] when the socket
//! is handed over or updated; the reply is then the status line, the copied header values (spans
//! of the request, unfolded only when a value holds a fold), a To tag in hex, the source address
//! and port written by hand, and the socket's tail.
//!
//! This module does no I/O and keeps no state between messages: the UDP loop and the stream
//! connections use it. It never panics and allocates nothing but `out`'s growth.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use crate::sip::{self, HeaderKind, Line, Message, Method, Parsed, Span, Start, Via};
use shm::Proto;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What [`Responder::reply`] did with a message.
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

/// `Server: sipsockd/VERSION`, in every reply.
const SERVER: &str = concat!("Server: sipsockd/", env!("CARGO_PKG_VERSION"), "\r\n");

/// The end of a reply to a request other than OPTIONS.
const TAIL: &[u8] = concat!(
    "Server: sipsockd/",
    env!("CARGO_PKG_VERSION"),
    "\r\nContent-Length: 0\r\n\r\n"
)
.as_bytes();

/// The parts of a reply that depend on the receiving socket, rendered once per socket (at its
/// hand-over and at each in-place update) so that answering writes no formatted text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketParts {
    /// The end of a 200 to OPTIONS: Contact, Server, `Content-Length: 0`, the empty line.
    options_tail: Box<[u8]>,
}

impl SocketParts {
    /// For a socket of transport `proto` whose advertised (or bound) `host:port` is `contact`.
    pub fn new(contact: &str, proto: Proto) -> SocketParts {
        SocketParts {
            options_tail: format!(
                "Contact: <sip:{contact};transport={proto}>\r\n{SERVER}Content-Length: 0\r\n\r\n"
            )
            .into_bytes()
            .into_boxed_slice(),
        }
    }
}

/// Stateless SIP replies; one per worker, shared by every socket it serves.
#[derive(Debug, Clone)]
pub struct Responder {
    reply_code: u16,
    reply_reason: String,
    /// `SIP/2.0 CODE REASON\r\n` for requests other than OPTIONS.
    status_line: Box<[u8]>,
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
            status_line: format!("SIP/2.0 {reply_code} {reply_reason}\r\n")
                .into_bytes()
                .into_boxed_slice(),
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

    /// Answer one datagram (or one message a stream transport delivered whole): keep-alives are
    /// ignored, the rest is parsed into `parsed` (the worker's scratch) and answered by
    /// [`Responder::reply`].
    pub fn answer(
        &self,
        parsed: &mut Parsed,
        msg: &[u8],
        source: SocketAddr,
        socket: &SocketParts,
        out: &mut Vec<u8>,
    ) -> Outcome {
        out.clear();
        if sip::is_keepalive(msg) {
            return Outcome::Ignored;
        }
        match parsed.parse(msg) {
            Ok(message) => self.reply(&message, source, socket, out),
            Err(_) => Outcome::Malformed,
        }
    }

    /// [`Responder::answer`] with a scratch and socket parts of its own (allocated): for tests and
    /// tools, not for a serving loop. `contact` is the `host:port` of the receiving socket.
    pub fn respond(
        &self,
        msg: &[u8],
        transport: Proto,
        source: SocketAddr,
        contact: &str,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let mut parsed = Parsed::new();
        self.answer(
            &mut parsed,
            msg,
            source,
            &SocketParts::new(contact, transport),
            out,
        )
    }

    /// Answer one parsed message from `source`, received on the socket `socket` describes. `out`
    /// is cleared first and holds the reply when the outcome is [`Outcome::Replied`].
    pub fn reply(
        &self,
        m: &Message<'_>,
        source: SocketAddr,
        socket: &SocketParts,
        out: &mut Vec<u8>,
    ) -> Outcome {
        out.clear();
        let (method, fields) = match Required::of_request(m) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let options = method == Method::Options;
        let (status_line, code): (&[u8], u16) = if options {
            (b"SIP/2.0 200 OK\r\n", 200)
        } else {
            (&self.status_line, self.reply_code)
        };
        put_head(out, m, &fields, source, status_line, code);
        out.extend_from_slice(if options { &socket.options_tail } else { TAIL });
        Outcome::Replied
    }
}

/// A reply the relay gives itself (403, 482, 483, 430, 503) to a request it does not forward:
/// `status_line` (`SIP/2.0 CODE Reason` and CRLF), the Via, From, To (tagged), Call-ID and CSeq
/// copied as [`Responder::reply`] copies them, then `extra` (whole header lines, e.g. a Warning),
/// Server and `Content-Length: 0`. `out` is cleared first; nothing is written for an ACK
/// ([`Outcome::Ignored`]) or a request missing what a reply copies ([`Outcome::Malformed`]).
pub(crate) fn reply_with_status(
    m: &Message<'_>,
    source: SocketAddr,
    status_line: &[u8],
    code: u16,
    extra: &[u8],
    out: &mut Vec<u8>,
) -> Outcome {
    out.clear();
    let fields = match Required::of_request(m) {
        Ok((_, fields)) => fields,
        Err(outcome) => return outcome,
    };
    put_head(out, m, &fields, source, status_line, code);
    out.extend_from_slice(extra);
    out.extend_from_slice(TAIL);
    Outcome::Replied
}

/// The status line and the copied header lines of a reply.
fn put_head(
    out: &mut Vec<u8>,
    m: &Message<'_>,
    fields: &Required<'_>,
    source: SocketAddr,
    status_line: &[u8],
    code: u16,
) {
    out.extend_from_slice(status_line);
    let vias = m.vias();
    let lines = m.lines();
    out.extend_from_slice(b"Via: ");
    put_top_via(out, m, vias, lines, source);
    out.extend_from_slice(b"\r\n");
    let mut last = fields.top.line;
    for via in vias.iter().skip(1) {
        if via.line == last {
            continue;
        }
        last = via.line;
        if let Some(line) = lines.get(usize::from(via.line)) {
            put_header(out, b"Via: ", m, line.value, line.folded);
        }
    }
    put_header(out, b"From: ", m, fields.from.value, fields.from.folded);
    out.extend_from_slice(b"To: ");
    put_value(out, m, fields.to.value, fields.to.folded);
    // RFC 3261 §8.2.6.2: a tag unless the request had one; 100 Trying never gets one. The tag
    // is a function of the dialog so that a retransmission answered by any worker gets the
    // same one.
    if code != 100 && !fields.to_tagged {
        out.extend_from_slice(b";tag=");
        put_hex64(
            out,
            to_tag(m.bytes(fields.call_id.value), m.bytes(fields.from_tag)),
        );
    }
    out.extend_from_slice(b"\r\n");
    put_header(
        out,
        b"Call-ID: ",
        m,
        fields.call_id.value,
        fields.call_id.folded,
    );
    put_header(out, b"CSeq: ", m, fields.cseq.value, fields.cseq.folded);
}

/// What a reply copies, from a request that carries every header RFC 3261 §8.1.1 requires: Via
/// (at least one, none empty, the top one usable), From, To, Call-ID and CSeq exactly once and not
/// empty, the CSeq method being the request's.
pub(crate) struct Required<'a> {
    top: &'a Via,
    from: &'a Line,
    to: &'a Line,
    call_id: &'a Line,
    cseq: &'a Line,
    /// The From tag's value ("" when there is none, or when it has no value).
    from_tag: Span,
    /// The To has a tag.
    to_tagged: bool,
}

impl<'a> Required<'a> {
    /// The method and fields of a request a reply can be given to; the outcome otherwise
    /// (`Ignored` for a response or an ACK, `Malformed` for a request missing a field).
    fn of_request(m: &Message<'a>) -> Result<(Method, Required<'a>), Outcome> {
        let Start::Request {
            method,
            method_span,
            ..
        } = m.start()
        else {
            return Err(Outcome::Ignored);
        };
        let fields = Required::find(m, method_span).ok_or(Outcome::Malformed)?;
        if method == Method::Ack {
            return Err(Outcome::Ignored);
        }
        Ok((method, fields))
    }

    pub(crate) fn find(m: &Message<'a>, method: Span) -> Option<Required<'a>> {
        if m.has_empty(HeaderKind::Via) {
            return None;
        }
        let once = |kind| {
            if m.count(kind) == 1 && !m.has_empty(kind) {
                m.first(kind)
            } else {
                None
            }
        };
        let (from, to, call_id, cseq) = (
            once(HeaderKind::From)?,
            once(HeaderKind::To)?,
            once(HeaderKind::CallId)?,
            once(HeaderKind::CSeq)?,
        );
        let cseq_method = m.cseq()?.method;
        let top = m.vias().first().filter(|v| v.is_usable())?;
        if m.bytes(cseq_method) != m.bytes(method) {
            return None;
        }
        Some(Required {
            top,
            from,
            to,
            call_id,
            cseq,
            from_tag: m
                .from()
                .and_then(|f| f.tag)
                .and_then(|t| t.value)
                .unwrap_or_default(),
            to_tagged: m.to().is_some_and(|t| t.tag.is_some()),
        })
    }
}

/// `NAME` (with its `: `), the value, CRLF.
fn put_header(out: &mut Vec<u8>, name: &[u8], m: &Message<'_>, value: Span, folded: bool) {
    out.extend_from_slice(name);
    put_value(out, m, value, folded);
    out.extend_from_slice(b"\r\n");
}

/// A value, unfolded when its line was folded.
pub(crate) fn put_value(out: &mut Vec<u8>, m: &Message<'_>, value: Span, folded: bool) {
    if folded {
        sip::put_unfolded_bytes(out, m.bytes(value));
    } else {
        out.extend_from_slice(m.bytes(value));
    }
}

/// The top Via, with `received=SOURCE_IP` (an existing one replaced) and a valueless `rport`
/// filled with the source port; the other values of the same header line follow unchanged.
fn put_top_via(
    out: &mut Vec<u8>,
    m: &Message<'_>,
    vias: &[Via],
    lines: &[Line],
    source: SocketAddr,
) {
    let Some(top) = vias.first() else {
        return;
    };
    if top.plain {
        put_plain_via(out, m, top, source.port());
    } else {
        put_via_by_params(out, m, top, source.port());
    }
    // An IPv4 peer of a dual-stack socket shows as ::ffff:a.b.c.d; the Via wants a.b.c.d. IPv6
    // goes without brackets, as RFC 3261's `received` grammar has it.
    out.extend_from_slice(b";received=");
    put_ip(out, source.ip().to_canonical());
    let next = vias.get(1).filter(|v| v.line == top.line);
    if let (Some(next), Some(line)) = (next, lines.get(usize::from(top.line))) {
        out.extend_from_slice(b", ");
        let others = Span {
            start: next.value.start,
            end: line.value.end,
        };
        put_value(out, m, others, line.folded);
    }
}

/// A Via value in the simple form ([`Via`]'s `plain`): copied, less its `received` parameter, with
/// `=PORT` after a valueless `rport`.
pub(crate) fn put_plain_via(out: &mut Vec<u8>, m: &Message<'_>, via: &Via, port: u16) {
    let buf = m.buf();
    let copy = |out: &mut Vec<u8>, from: usize, to: usize| {
        out.extend_from_slice(buf.get(from..to).unwrap_or_default());
    };
    let mut at = via.value.start as usize;
    // The `received` parameter and the `;` before it.
    let removed = via.received.map(|p| {
        (
            (p.span.start as usize).saturating_sub(1),
            p.span.end as usize,
        )
    });
    let fill = via
        .rport
        .filter(|p| p.value.is_none())
        .map(|p| p.span.end as usize);
    let put_fill = |out: &mut Vec<u8>, at: &mut usize, to: usize| {
        copy(out, *at, to);
        out.extend_from_slice(b"=");
        put_u32(out, u32::from(port));
        *at = to;
    };
    match (removed, fill) {
        (Some((from, to)), Some(f)) if f <= from => {
            put_fill(out, &mut at, f);
            copy(out, at, from);
            at = to;
        }
        (Some((from, to)), fill) => {
            copy(out, at, from);
            at = to;
            if let Some(f) = fill {
                put_fill(out, &mut at, f);
            }
        }
        (None, Some(f)) => put_fill(out, &mut at, f),
        (None, None) => {}
    }
    copy(out, at, via.value.end as usize);
}

/// Any Via value: the sent-by unfolded, then each parameter but `received` (blanks around it
/// dropped, folds unfolded, a valueless `rport` filled).
#[cold]
pub(crate) fn put_via_by_params(out: &mut Vec<u8>, m: &Message<'_>, via: &Via, port: u16) {
    let buf = m.buf();
    let start = via.value.start as usize;
    let mut sent_by_end = via.params.start as usize;
    while sent_by_end > start
        && buf
            .get(sent_by_end - 1)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    {
        sent_by_end -= 1;
    }
    sip::put_unfolded_bytes(out, buf.get(start..sent_by_end).unwrap_or_default());
    if via.params.is_empty() {
        return;
    }
    for (param, name) in m.params(via.params) {
        let name = m.bytes(name);
        if name.eq_ignore_ascii_case(b"received") {
            continue;
        }
        out.push(b';');
        if name.eq_ignore_ascii_case(b"rport") && param.value.is_none() {
            out.extend_from_slice(b"rport=");
            put_u32(out, u32::from(port));
        } else {
            sip::put_unfolded_bytes(out, m.bytes(param.span));
        }
    }
}

/// The To tag given to a request without one: 64-bit FNV-1a of Call-ID and From tag.
/// Deterministic across processes and runs, unlike std's randomly keyed hasher.
pub(crate) fn to_tag(call_id: &[u8], from_tag: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") hash apart.
    for b in call_id.iter().chain(&[0xff]).chain(from_tag) {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_digit(n: u64) -> u8 {
    HEX.get((n & 0xf) as usize).copied().unwrap_or(b'0')
}

/// Write `n` as 16 lower-case hex digits.
fn put_hex64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = hex_digit(n >> (60 - 4 * i));
    }
    out.extend_from_slice(&digits);
}

/// Write `n` in decimal.
pub(crate) fn put_u32(out: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

/// Write an address as `Display` does (IPv6 per RFC 5952: lower-case, longest run of two or more
/// zero groups as `::`, the first such run on a tie).
pub(crate) fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => put_ipv4(out, v4),
        IpAddr::V6(v6) => put_ipv6(out, v6),
    }
}

fn put_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        put_u32(out, u32::from(octet));
    }
}

fn put_ipv6(out: &mut Vec<u8>, ip: Ipv6Addr) {
    if let Some(v4) = ip.to_ipv4_mapped() {
        out.extend_from_slice(b"::ffff:");
        put_ipv4(out, v4);
        return;
    }
    let groups = ip.segments();
    // The longest run of zero groups (the first one on a tie).
    let (mut best, mut best_len, mut run, mut run_len) = (0, 0, 0, 0);
    for (i, g) in groups.iter().enumerate() {
        if *g == 0 {
            if run_len == 0 {
                run = i;
            }
            run_len += 1;
            if run_len > best_len {
                (best, best_len) = (run, run_len);
            }
        } else {
            run_len = 0;
        }
    }
    let put_groups = |out: &mut Vec<u8>, groups: &[u16]| {
        for (i, g) in groups.iter().enumerate() {
            if i > 0 {
                out.push(b':');
            }
            put_hex16(out, *g);
        }
    };
    if best_len > 1 {
        put_groups(out, groups.get(..best).unwrap_or_default());
        out.extend_from_slice(b"::");
        put_groups(out, groups.get(best + best_len..).unwrap_or_default());
    } else {
        put_groups(out, &groups);
    }
}

/// Hex without leading zeros.
fn put_hex16(out: &mut Vec<u8>, g: u16) {
    let g = u64::from(g);
    let mut started = false;
    for shift in [12, 8, 4, 0] {
        let d = (g >> shift) & 0xf;
        if d != 0 || started || shift == 0 {
            out.push(hex_digit(d));
            started = true;
        }
    }
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
        format!("{:016x}", to_tag(call_id.as_bytes(), from_tag.as_bytes()))
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
        assert_ne!(to_tag(b"ab", b"c"), to_tag(b"a", b"bc"));
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
