//! Zero-copy SIP message parsing (RFC 3261 §7), in one pass.
//!
//! Owns the syntax of one message: the start line (request or status), the header fields (full and
//! compact names, RFC 3261 §7.3.3 plus the compact forms registered since), the values that later
//! steps need (Via list, From/To tags, Call-ID, CSeq, Max-Forwards, Route and Record-Route entries,
//! option tags), the body delimited by `Content-Length`, and the framing of messages on a stream.
//! One scan produces all of it ([`Parsed::parse`]); no header is walked twice. The result is
//! offsets into the caller's buffer ([`message`] says what is there and how a relay splices with
//! it); nothing here allocates on the hot path or panics, whatever the bytes (indexing and `unwrap`
//! are denied by lint outside tests).
//!
//! - [`names`]: O(1) recognition of header names, methods, option tags;
//! - `scan`: the single pass (and, cold, the naming of an error);
//! - [`message`]: the representation ([`Parsed`], [`Message`], [`Via`], ...).
//!
//! Choices where RFC 3261 leaves room, applied the same way everywhere:
//! - lines end with CRLF or a bare LF; a CR anywhere else in the header section is refused;
//! - folded header lines (a line starting with SP or HTAB continues the previous one) are
//!   accepted; the fold stays in the value, and [`put_unfolded`] writes it back as one SP;
//! - CR and LF before the start line are skipped (RFC 3261 §7.5);
//! - the header section must be UTF-8 with no control character but HTAB; the body is any bytes;
//! - on a datagram, `Content-Length` is optional (RFC 3261 §18.3): when given, bytes past it are
//!   discarded and a shorter body is an error; when absent, the body is the rest of the datagram.
//!   On a stream ([`frame_len`], [`Parsed::frame_stream`]) it is required;
//! - at most [`MAX_HEADERS`] header lines, [`MAX_VIAS`] Via values and [`MAX_ROUTES`] Route (and as
//!   many Record-Route) entries: a message with more is refused, so that the tables of a
//!   [`Parsed`] have a fixed capacity, reserved once, and nothing is allocated per message.
//!
//! When a message has several faults, the error named is, in this order: the header section not
//! terminated, not UTF-8, a control character in it, then the first syntax error from the top.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

pub mod message;
pub mod names;
mod scan;

pub use message::{
    alone_in_line, CSeq, Entry, Header, Headers, Line, LineValue, Message, NameAddr, OwnedMessage,
    Param, Parsed, Span, Start, StartLine, Via,
};
pub use names::{HeaderKind, Method, OptionTags};

/// The largest message [`frame_len`] accepts on a stream (header section and body), in bytes.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// The most header lines a message may have (a SIP message has tens; a 64 KiB datagram could
/// hold thousands).
pub const MAX_HEADERS: usize = 1024;

/// The most Via values a message may have (all Via lines together; a request that went through
/// `Max-Forwards: 70` proxies has 71).
pub const MAX_VIAS: usize = 1024;

/// The most Route entries a message may have, and the most Record-Route entries.
pub const MAX_ROUTES: usize = 1024;

/// Why a message could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but CR/LF (or nothing at all).
    #[error("empty message")]
    Empty,
    /// The header section does not end with an empty line.
    #[error("header section not terminated by an empty line")]
    Unterminated,
    /// The header section is not UTF-8.
    #[error("header section is not UTF-8")]
    NotUtf8,
    /// A control character (NUL, a lone CR, ...) in the header section.
    #[error("control character in the header section")]
    ControlChar,
    /// The start line is neither a Request-Line nor a Status-Line.
    #[error("bad start line")]
    BadStartLine,
    /// The SIP version is not `SIP/2.0`.
    #[error("unsupported SIP version")]
    BadVersion,
    /// The status code is not three digits from 100 to 699.
    #[error("bad status code")]
    BadStatusCode,
    /// A header line without a colon, with an empty or invalid name, or a fold with nothing
    /// before it.
    #[error("bad header line")]
    BadHeader,
    /// `Content-Length` is not a number that fits.
    #[error("bad Content-Length")]
    BadContentLength,
    /// Two `Content-Length` headers with different values.
    #[error("conflicting Content-Length headers")]
    ConflictingContentLength,
    /// No `Content-Length` on a stream.
    #[error("missing Content-Length")]
    MissingContentLength,
    /// The body is shorter than `Content-Length`.
    #[error("body shorter than Content-Length")]
    ShortBody,
    /// Larger than [`MAX_FRAME_LEN`] (streams only).
    #[error("message larger than the limit")]
    TooLarge,
    /// More than [`MAX_HEADERS`] header lines.
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    /// More than [`MAX_VIAS`] Via values.
    #[error("more than {MAX_VIAS} Via values")]
    TooManyVias,
    /// More than [`MAX_ROUTES`] Route or Record-Route entries.
    #[error("more than {MAX_ROUTES} Route or Record-Route entries")]
    TooManyRoutes,
}

/// Parse one datagram with a scratch of its own (allocated: for tests and tools; a worker keeps a
/// [`Parsed`] and calls [`Parsed::parse`]).
pub fn parse(buf: &[u8]) -> Result<OwnedMessage<'_>, ParseError> {
    let mut parsed = Parsed::new();
    scan::datagram(&mut parsed, buf)?;
    Ok(OwnedMessage::new(buf, parsed))
}

thread_local! {
    /// The scratch of [`frame_len`] and [`stream_frame_len`], which return no borrowed data.
    static SCRATCH: std::cell::RefCell<Parsed> = std::cell::RefCell::new(Parsed::new());
}

fn with_scratch<T>(f: impl FnOnce(&mut Parsed) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut parsed) => f(&mut parsed),
        Err(_) => f(&mut Parsed::new()),
    })
}

/// Where the next message on a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStatus {
    /// More bytes are needed.
    Incomplete,
    /// The first `n` bytes are one message (leading CRLFs included, see [`frame_len`]).
    Complete(usize),
    /// The stream cannot be framed (bad header section, missing or bad `Content-Length`, over
    /// [`MAX_FRAME_LEN`]): the connection should be closed.
    Invalid(ParseError),
}

/// Frame the next message of a stream: its header section up to the empty line, then
/// `Content-Length` bytes of body (RFC 3261 §18.3; the header is mandatory on streams).
///
/// CR and LF before the start line are part of the frame (RFC 3261 §7.5 says to skip them), so a
/// buffer holding only CRLFs is `Incomplete`; a transport that answers RFC 5626 keep-alives
/// (`CRLFCRLF` ping, `CRLF` pong) takes them off first with [`leading_crlf_len`].
///
/// For tests and tools; a connection reader uses [`Parsed::frame_stream`].
pub fn frame_len(buf: &[u8]) -> FrameStatus {
    with_scratch(|parsed| frame_len_with(parsed, buf))
}

fn frame_len_with(parsed: &mut Parsed, buf: &[u8]) -> FrameStatus {
    match scan::head(parsed, buf) {
        Ok(()) => {}
        Err(ParseError::Empty | ParseError::Unterminated) if buf.len() > MAX_FRAME_LEN => {
            return FrameStatus::Invalid(ParseError::TooLarge)
        }
        Err(ParseError::Empty | ParseError::Unterminated) => return FrameStatus::Incomplete,
        Err(e) => return FrameStatus::Invalid(e),
    }
    let Some(content_length) = parsed.content_length else {
        return FrameStatus::Invalid(ParseError::MissingContentLength);
    };
    match (parsed.body_start as usize).checked_add(content_length) {
        Some(total) if total <= MAX_FRAME_LEN => {
            if buf.len() >= total {
                FrameStatus::Complete(total)
            } else {
                FrameStatus::Incomplete
            }
        }
        _ => FrameStatus::Invalid(ParseError::TooLarge),
    }
}

/// [`Parsed::frame_stream`] with a scratch of the thread's (for tests and tools).
pub fn stream_frame_len(
    buf: &[u8],
    max_head: usize,
    max_body: usize,
) -> Result<Option<usize>, ParseError> {
    with_scratch(|parsed| parsed.frame_stream(buf, max_head, max_body))
}

impl Parsed {
    /// Frame the next message of a stream under a transport's limits, telling its length as soon
    /// as its header section is there: `Ok(Some(total))` (leading CRLFs included; `total` may be
    /// more than `buf` holds: the body is still coming), `Ok(None)` when the header section is not
    /// complete yet, `Err` when the stream cannot be framed and the connection should be closed.
    ///
    /// This is the scan [`Parsed::parse`] makes: when the whole message is in `buf`, `self` then
    /// describes it and [`Parsed::message`]`(&buf[..total])` reads it without parsing again.
    ///
    /// Stricter than [`frame_len`] in what it refuses, and sooner:
    /// - the start line is checked as soon as its line end is there, and bytes that cannot begin
    ///   one (a control character: say a TLS ClientHello sent to a TCP port) are refused at once;
    /// - the header section (start line to the empty line) may be at most `max_head` bytes, the
    ///   body at most `max_body`: [`ParseError::TooLarge`] otherwise, without waiting for more;
    /// - `Content-Length` is required ([`ParseError::MissingContentLength`]).
    pub fn frame_stream(
        &mut self,
        buf: &[u8],
        max_head: usize,
        max_body: usize,
    ) -> Result<Option<usize>, ParseError> {
        let skip = leading_crlf_len(buf);
        let rest = buf.get(skip..).unwrap_or_default();
        match scan::head(self, buf) {
            Ok(()) => {}
            Err(ParseError::Empty | ParseError::Unterminated) => {
                check_first_line(rest)?;
                return if rest.len() > max_head {
                    Err(ParseError::TooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(e) => return Err(stream_error(rest, max_head, e)),
        }
        let head_len = self.body_start as usize;
        if head_len.saturating_sub(skip) > max_head {
            return Err(ParseError::TooLarge);
        }
        let content_length = self
            .content_length
            .ok_or(ParseError::MissingContentLength)?;
        if content_length > max_body {
            return Err(ParseError::TooLarge);
        }
        let total = head_len
            .checked_add(content_length)
            .ok_or(ParseError::TooLarge)?;
        if buf.len() >= total {
            scan::complete(self, content_length);
        }
        Ok(Some(total))
    }
}

/// The error of a complete header section on a stream, by the stream's precedence: the start line
/// first, then UTF-8, then the header section's size, then the rest.
#[cold]
fn stream_error(rest: &[u8], max_head: usize, e: ParseError) -> ParseError {
    if let Err(first_line) = check_first_line(rest) {
        return first_line;
    }
    if e == ParseError::NotUtf8 {
        return e;
    }
    let head_len =
        scan::head_end(rest).map(|end| end + if rest.get(end) == Some(&b'\n') { 1 } else { 2 });
    if head_len.is_some_and(|n| n > max_head) {
        return ParseError::TooLarge;
    }
    e
}

/// The start line of a stream message, checked before the rest of the header section is there:
/// once complete, it must be a request or status line; before that, its bytes must be ones a start
/// line can hold.
fn check_first_line(rest: &[u8]) -> Result<(), ParseError> {
    match rest.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let line = rest.get(..end).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
            if line.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
                return Err(ParseError::ControlChar);
            }
            scan::start_line(line, 0, line.len()).map(|_| ())
        }
        None => {
            let last = rest.len().saturating_sub(1);
            let bad = rest
                .iter()
                .enumerate()
                .any(|(i, b)| b.is_ascii_control() && *b != b'\t' && !(*b == b'\r' && i == last));
            if bad {
                return Err(ParseError::ControlChar);
            }
            // A UTF-8 sequence cut at the end is fine; an invalid one is not.
            match std::str::from_utf8(rest) {
                Err(e) if e.error_len().is_some() => Err(ParseError::NotUtf8),
                _ => Ok(()),
            }
        }
    }
}

/// Number of CR and LF bytes at the start of `buf` (keep-alives, or the CRLFs RFC 3261 §7.5 skips).
pub fn leading_crlf_len(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()
}

/// True for a datagram of CR and LF only: a keep-alive, not a message.
pub fn is_keepalive(buf: &[u8]) -> bool {
    !buf.is_empty() && leading_crlf_len(buf) == buf.len()
}

/// RFC 3261 `token`.
pub fn is_token(s: &str) -> bool {
    scan::is_token(s.as_bytes())
}

/// Write `value` with each fold (CR/LF and the whitespace around it) replaced by one SP.
pub fn put_unfolded(out: &mut Vec<u8>, value: &str) {
    put_unfolded_bytes(out, value.as_bytes());
}

/// [`put_unfolded`] on bytes.
pub fn put_unfolded_bytes(out: &mut Vec<u8>, value: &[u8]) {
    let mut rest = value;
    while let Some(i) = rest.iter().position(|b| matches!(b, b'\r' | b'\n')) {
        let before = rest.get(..i).unwrap_or_default();
        let kept = before
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\t'))
            .map_or(0, |j| j + 1);
        out.extend_from_slice(before.get(..kept).unwrap_or_default());
        out.push(b' ');
        let after = rest.get(i..).unwrap_or_default();
        let blanks = after
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .count();
        rest = after.get(blanks..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
        From: <sip:x@y>;tag=1\r\n\
        To: <sip:a@b>\r\n\
        Call-ID: c1\r\n\
        CSeq: 1 OPTIONS\r\n\
        Content-Length: 0\r\n\r\n";

    fn kinds(m: &Message<'_>) -> Vec<HeaderKind> {
        m.headers().map(|h| h.kind).collect()
    }

    #[test]
    fn request_with_headers() {
        let o = parse(OPTIONS).unwrap();
        let m = o.message();
        assert_eq!(
            m.start_line(),
            StartLine::Request {
                method: "OPTIONS",
                uri: "sip:a@b"
            }
        );
        assert_eq!(
            kinds(&m),
            [
                HeaderKind::Via,
                HeaderKind::From,
                HeaderKind::To,
                HeaderKind::CallId,
                HeaderKind::CSeq,
                HeaderKind::ContentLength
            ]
        );
        assert_eq!(m.len(), OPTIONS.len());
        assert!(m.body().is_empty());
    }

    #[test]
    fn status_line() {
        let o = parse(b"SIP/2.0 180 Ringing\r\nVia: x\r\n\r\n").unwrap();
        let m = o.message();
        assert_eq!(
            m.start_line(),
            StartLine::Response {
                code: 180,
                reason: "Ringing"
            }
        );
        assert_eq!(m.method(), None);
        let o = parse(b"sip/2.0 200\r\n\r\n").unwrap();
        let m = o.message();
        assert_eq!(
            m.start_line(),
            StartLine::Response {
                code: 200,
                reason: ""
            }
        );
    }

    #[test]
    fn compact_forms() {
        let o = parse(
            b"MESSAGE sip:a SIP/2.0\r\nv: a\r\nf: b\r\nt: c\r\ni: d\r\nl: 2\r\nm: e\r\nc: text/plain\r\n\
              k: f\r\ns: g\r\ne: gzip\r\no: h\r\nu: i\r\nr: j\r\nb: k\r\nx: 90\r\na: l\r\nj: m\r\n\
              d: n\r\ny: o\r\nZ: other\r\n\r\nhi",
        )
        .unwrap();
        let m = o.message();
        assert_eq!(
            kinds(&m),
            [
                HeaderKind::Via,
                HeaderKind::From,
                HeaderKind::To,
                HeaderKind::CallId,
                HeaderKind::ContentLength,
                HeaderKind::Contact,
                HeaderKind::ContentType,
                HeaderKind::Supported,
                HeaderKind::Subject,
                HeaderKind::ContentEncoding,
                HeaderKind::Event,
                HeaderKind::AllowEvents,
                HeaderKind::ReferTo,
                HeaderKind::ReferredBy,
                HeaderKind::SessionExpires,
                HeaderKind::AcceptContact,
                HeaderKind::RejectContact,
                HeaderKind::RequestDisposition,
                HeaderKind::Identity,
                HeaderKind::Other
            ]
        );
        assert_eq!(m.body(), b"hi");
        assert_eq!(HeaderKind::of("call-id"), HeaderKind::CallId);
        assert_eq!(HeaderKind::of("I"), HeaderKind::CallId);
        assert_eq!(HeaderKind::CallId.full_name(), Some("Call-ID"));
    }

    #[test]
    fn folded_lines_are_joined() {
        let o =
            parse(b"OPTIONS sip:a SIP/2.0\r\nSubject: one\r\n  two\r\n\tthree\r\nTo : x\r\n\r\n")
                .unwrap();
        let m = o.message();
        let h: Vec<_> = m.headers().collect();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].value, "one\r\n  two\r\n\tthree");
        assert_eq!((h[1].name, h[1].value), ("To", "x"));
        let mut out = Vec::new();
        put_unfolded(&mut out, h[0].value);
        assert_eq!(out, b"one two three");
        // A fold before any header has nothing to continue.
        assert_eq!(
            parse(b"OPTIONS sip:a SIP/2.0\r\n  x: y\r\n\r\n").unwrap_err(),
            ParseError::BadHeader
        );
    }

    #[test]
    fn bare_lf_and_leading_crlf() {
        let buf = b"\r\n\r\nOPTIONS sip:a SIP/2.0\nTo: x\n\nbody";
        let o = parse(buf).unwrap();
        let m = o.message();
        assert_eq!(m.headers().count(), 1);
        assert_eq!(m.body(), b"body");
        assert_eq!(m.len(), buf.len());
    }

    #[test]
    fn content_length_bounds_the_body() {
        let o = parse(b"OPTIONS sip:a SIP/2.0\r\nl: 3\r\n\r\nabcdef").unwrap();
        let m = o.message();
        assert_eq!(m.body(), b"abc");
        let both = b"OPTIONS sip:a SIP/2.0\r\nl: 3\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(parse(both).unwrap().message().body(), b"abc");
    }

    #[test]
    fn errors() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"", ParseError::Empty),
            (b"\r\n\r\n", ParseError::Empty),
            (
                b"OPTIONS sip:a SIP/2.0\r\nTo: x\r\n",
                ParseError::Unterminated,
            ),
            (b"OPTIONS sip:a", ParseError::Unterminated),
            (b"OPTIONS sip:a\r\n\r\n", ParseError::BadStartLine),
            (b"OPTIONS  sip:a SIP/2.0\r\n\r\n", ParseError::BadStartLine),
            (b"OPTIONS sip:a SIP/2.0 x\r\n\r\n", ParseError::BadStartLine),
            (b"OPT(ONS sip:a SIP/2.0\r\n\r\n", ParseError::BadStartLine),
            (b"OPTIONS sip:a SIP/3.0\r\n\r\n", ParseError::BadVersion),
            (b"SIP/1.0 200 OK\r\n\r\n", ParseError::BadVersion),
            (b"SIP/2.0 20 OK\r\n\r\n", ParseError::BadStatusCode),
            (b"SIP/2.0 099 OK\r\n\r\n", ParseError::BadStatusCode),
            (b"SIP/2.0 +99 OK\r\n\r\n", ParseError::BadStatusCode),
            (
                b"OPTIONS sip:a SIP/2.0\r\nnocolon\r\n\r\n",
                ParseError::BadHeader,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\n: x\r\n\r\n",
                ParseError::BadHeader,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nA B: x\r\n\r\n",
                ParseError::BadHeader,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nTo: \0\r\n\r\n",
                ParseError::ControlChar,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nTo: a\rb\r\n\r\n",
                ParseError::ControlChar,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nTo: \xff\r\n\r\n",
                ParseError::NotUtf8,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nl: x\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nl: -1\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nl:\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nl: 99999999999999999999999\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nl: 5\r\n\r\nabc",
                ParseError::ShortBody,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\nab",
                ParseError::ConflictingContentLength,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).unwrap_err(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn body_may_be_binary() {
        let o = parse(b"MESSAGE sip:a SIP/2.0\r\nl: 3\r\n\r\n\0\xff\r").unwrap();
        let m = o.message();
        assert_eq!(m.body(), b"\0\xff\r");
    }

    #[test]
    fn framing_on_streams() {
        let one = b"OPTIONS sip:a SIP/2.0\r\nl: 2\r\n\r\nhi";
        let mut two = one.to_vec();
        two.extend_from_slice(b"\r\n");
        two.extend_from_slice(one);
        assert_eq!(frame_len(one), FrameStatus::Complete(one.len()));
        assert_eq!(frame_len(&two), FrameStatus::Complete(one.len()));
        let rest = &two[one.len()..];
        assert_eq!(frame_len(rest), FrameStatus::Complete(rest.len()));
        for cut in 0..one.len() {
            assert_eq!(frame_len(&one[..cut]), FrameStatus::Incomplete, "cut {cut}");
        }
        assert_eq!(frame_len(b"\r\n\r\n"), FrameStatus::Incomplete);
        assert_eq!(leading_crlf_len(b"\r\n\r\nOPT"), 4);
        assert_eq!(
            frame_len(b"OPTIONS sip:a SIP/2.0\r\nTo: x\r\n\r\n"),
            FrameStatus::Invalid(ParseError::MissingContentLength)
        );
        assert_eq!(
            frame_len(b"OPTIONS sip:a SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\n"),
            FrameStatus::Invalid(ParseError::ConflictingContentLength)
        );
        assert_eq!(
            frame_len(b"OPTIONS sip:a SIP/2.0\r\nl: 65536\r\n\r\n"),
            FrameStatus::Invalid(ParseError::TooLarge)
        );
        assert_eq!(
            frame_len(b"OPTIONS sip:a SIP/2.0\r\nl: 18446744073709551615\r\n\r\n"),
            FrameStatus::Invalid(ParseError::TooLarge)
        );
        assert_eq!(
            frame_len(b"garbage\r\n\r\n"),
            FrameStatus::Invalid(ParseError::BadStartLine)
        );
        let endless = vec![b'a'; MAX_FRAME_LEN + 1];
        assert_eq!(
            frame_len(&endless),
            FrameStatus::Invalid(ParseError::TooLarge)
        );
        assert_eq!(
            frame_len(&endless[..MAX_FRAME_LEN]),
            FrameStatus::Incomplete
        );
        let crlfs = vec![b'\n'; MAX_FRAME_LEN + 1];
        assert_eq!(
            frame_len(&crlfs),
            FrameStatus::Invalid(ParseError::TooLarge)
        );
    }

    #[test]
    fn stream_framing_with_limits() {
        let one = b"OPTIONS sip:a SIP/2.0\r\nl: 2\r\n\r\nhi";
        let head = one.len() - 2;
        assert_eq!(stream_frame_len(one, 1000, 10), Ok(Some(one.len())));
        // Known as soon as the header section is there.
        assert_eq!(
            stream_frame_len(&one[..head], 1000, 10),
            Ok(Some(one.len()))
        );
        for cut in 0..head {
            assert_eq!(
                stream_frame_len(&one[..cut], 1000, 10),
                Ok(None),
                "cut {cut}"
            );
        }
        let mut crlf = b"\r\n\r\n".to_vec();
        crlf.extend_from_slice(one);
        assert_eq!(stream_frame_len(&crlf, head, 2), Ok(Some(crlf.len())));
        // Limits: the header section, then the body.
        assert_eq!(
            stream_frame_len(one, head - 1, 10),
            Err(ParseError::TooLarge)
        );
        assert_eq!(stream_frame_len(one, head, 1), Err(ParseError::TooLarge));
        let endless = [b"OPTIONS sip:a SIP/2.0\r\nX: ".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(
            stream_frame_len(&endless, 100, 10),
            Err(ParseError::TooLarge)
        );
        assert_eq!(stream_frame_len(&endless, 200, 10), Ok(None));
        // Junk is refused as soon as it shows.
        assert_eq!(
            stream_frame_len(b"\x16\x03\x01\x02\x00", 1000, 10),
            Err(ParseError::ControlChar)
        );
        assert_eq!(
            stream_frame_len(b"hello world\r\n", 1000, 10),
            Err(ParseError::BadStartLine)
        );
        assert_eq!(
            stream_frame_len(b"GET / HTTP/1.1\r\n", 1000, 10),
            Err(ParseError::BadVersion)
        );
        assert_eq!(
            stream_frame_len(b"OPTIONS sip:a\xff", 1000, 10),
            Err(ParseError::NotUtf8)
        );
        // A start line cut in the middle of a character, or before its LF, waits.
        assert_eq!(stream_frame_len(b"OPTIONS sip:\xc3", 1000, 10), Ok(None));
        assert_eq!(
            stream_frame_len(b"OPTIONS sip:a SIP/2.0\r", 1000, 10),
            Ok(None)
        );
        assert_eq!(
            stream_frame_len(b"OPTIONS sip:a SIP/2.0\r\nTo: x\r\n\r\n", 1000, 10),
            Err(ParseError::MissingContentLength)
        );
    }

    /// The text of a span.
    fn t<'a>(m: &Message<'a>, s: Span) -> &'a str {
        m.text(s)
    }

    #[test]
    fn fields_of_a_typical_request() {
        let buf = b"OPTIONS sip:127.0.0.1:5070 SIP/2.0\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bKsl0000000100000001\r\n\
            Max-Forwards: 70\r\n\
            To: <sip:127.0.0.1:5070>\r\n\
            From: <sip:sipload@127.0.0.1:40000>;tag=x1\r\n\
            Call-ID: 0000000100000001@sipload\r\n\
            CSeq: 1 OPTIONS\r\n\
            Contact: <sip:sipload@127.0.0.1:40000>\r\n\
            User-Agent: sipload\r\n\
            Content-Length: 0\r\n\r\n";
        let o = parse(buf).unwrap();
        let m = o.message();
        let Start::Request {
            method,
            method_span,
            uri,
        } = m.start()
        else {
            panic!("{:?}", m.start());
        };
        assert_eq!((method, t(&m, method_span)), (Method::Options, "OPTIONS"));
        assert_eq!(t(&m, uri), "sip:127.0.0.1:5070");
        assert_eq!(m.lines().len(), 9);
        let [via] = m.vias() else {
            panic!("{:?}", m.vias());
        };
        assert_eq!(via.line, 0);
        assert_eq!(t(&m, via.transport), "UDP");
        assert_eq!(t(&m, via.sent_by), "127.0.0.1:40000");
        assert_eq!((t(&m, via.host), via.port), ("127.0.0.1", Some(40000)));
        assert_eq!(
            t(&m, via.branch.unwrap().value.unwrap()),
            "z9hG4bKsl0000000100000001"
        );
        assert_eq!(t(&m, via.rport.unwrap().span), "rport");
        assert_eq!(via.rport.unwrap().value, None);
        assert_eq!(via.received, None);
        assert!(via.plain && via.is_usable());
        let from = m.from().unwrap();
        assert_eq!(t(&m, from.value), "<sip:sipload@127.0.0.1:40000>;tag=x1");
        assert_eq!(t(&m, from.tag.unwrap().value.unwrap()), "x1");
        assert_eq!(m.to().unwrap().tag, None);
        assert_eq!(t(&m, m.call_id().unwrap()), "0000000100000001@sipload");
        let cseq = m.cseq().unwrap();
        assert_eq!((cseq.number, t(&m, cseq.method)), (1, "OPTIONS"));
        assert_eq!(m.max_forwards(), Some(70));
        assert_eq!(m.content_length(), Some(0));
        assert_eq!(m.count(HeaderKind::Contact), 1);
        assert_eq!(
            t(&m, m.first(HeaderKind::Contact).unwrap().value),
            "<sip:sipload@127.0.0.1:40000>"
        );
        assert_eq!(m.lines_of(HeaderKind::Other).count(), 1);
        assert!(m.routes().is_empty() && m.record_routes().is_empty());
        assert!(m.require().is_empty() && m.supported().is_empty());
        assert_eq!(m.len(), buf.len());
        assert_eq!(m.body_start(), buf.len());
    }

    #[test]
    fn several_via_values_and_their_parameters() {
        let buf = b"SIP/2.0 200 OK\r\n\
            Via: SIP/2.0/UDP a.example:5060;branch=z9hG4bK1;received=192.0.2.1 , \
            sip/2.0/tcp [2001:db8::1]:5061 ;rport=9;x=\"a;b,c\"\r\n\
            v: SIP/2.0/TLS b;Branch=z9hG4bK3;RPORT;received=1.2.3.4;received=5.6.7.8\r\n\
            Via: garbage, ,SIP/2.0/ c\r\n\r\n";
        let o = parse(buf).unwrap();
        let m = o.message();
        let vias = m.vias();
        assert_eq!(vias.len(), 6);
        assert_eq!(
            vias.iter().map(|v| v.line).collect::<Vec<_>>(),
            [0, 0, 1, 2, 2, 2]
        );
        assert_eq!(
            t(&m, vias[0].value),
            "SIP/2.0/UDP a.example:5060;branch=z9hG4bK1;received=192.0.2.1"
        );
        assert_eq!(t(&m, vias[0].received.unwrap().span), "received=192.0.2.1");
        assert!(vias[0].plain);
        assert_eq!(
            t(&m, vias[1].value),
            "sip/2.0/tcp [2001:db8::1]:5061 ;rport=9;x=\"a;b,c\""
        );
        assert_eq!(t(&m, vias[1].transport), "tcp");
        assert_eq!(
            (t(&m, vias[1].host), vias[1].port),
            ("[2001:db8::1]", Some(5061))
        );
        assert_eq!(t(&m, vias[1].rport.unwrap().value.unwrap()), "9");
        assert!(!vias[1].plain, "a blank before the parameters");
        let params: Vec<_> = m
            .params(vias[1].params)
            .map(|(p, name)| (t(&m, name), p.value.map(|v| t(&m, v))))
            .collect();
        assert_eq!(params, [("rport", Some("9")), ("x", Some("\"a;b,c\""))]);
        assert_eq!(t(&m, vias[2].branch.unwrap().value.unwrap()), "z9hG4bK3");
        assert_eq!(t(&m, vias[2].rport.unwrap().span), "RPORT");
        assert_eq!(t(&m, vias[2].received.unwrap().span), "received=1.2.3.4");
        assert!(!vias[2].plain, "two received parameters");
        assert!(!vias[3].is_usable() && vias[4].value.is_empty() && !vias[5].is_usable());
        assert!(!alone_in_line(vias, 0) && alone_in_line(vias, 2) && !alone_in_line(vias, 9));
    }

    #[test]
    fn routes_split_at_commas_outside_quotes_and_brackets() {
        let buf = b"INVITE sip:b SIP/2.0\r\n\
            Route: <sip:p1;lr>, \"a, b\" <sip:p2?h=x,y>;lr\r\n\
            Record-Route: <sip:r1;lr>\r\n\
            Route: <sip:p3>\r\n\
            Supported: path, Outbound ,x-foo\r\n\
            Require: 100rel\r\n\
            Proxy-Require: sec-agree\r\n\
            k: timer\r\n\r\n";
        let o = parse(buf).unwrap();
        let m = o.message();
        let routes: Vec<_> = m
            .routes()
            .iter()
            .map(|e| (t(&m, e.value), e.line))
            .collect();
        assert_eq!(
            routes,
            [
                ("<sip:p1;lr>", 0),
                ("\"a, b\" <sip:p2?h=x,y>;lr", 0),
                ("<sip:p3>", 2)
            ]
        );
        assert_eq!(m.record_routes().len(), 1);
        assert_eq!(
            m.supported(),
            OptionTags::PATH | OptionTags::OUTBOUND | OptionTags::OTHER | OptionTags::TIMER
        );
        assert_eq!(m.require(), OptionTags::REL100);
        assert_eq!(m.proxy_require(), OptionTags::OTHER);
        assert_eq!(m.count(HeaderKind::Route), 2);
        assert_eq!(m.lines_of(HeaderKind::Route).count(), 2);
    }

    #[test]
    fn from_and_to_tags() {
        let tag = |value: &str| {
            let buf = format!("OPTIONS sip:a SIP/2.0\r\nTo: {value}\r\n\r\n");
            let o = parse(buf.as_bytes()).unwrap();
            let m = o.message();
            m.to()
                .unwrap()
                .tag
                .map(|p| p.value.map(|v| t(&m, v).to_string()))
        };
        assert_eq!(tag("<sip:a>;tag=1"), Some(Some("1".into())));
        assert_eq!(tag("sip:a;TAG = 2 ;x"), Some(Some("2".into())));
        assert_eq!(tag("<sip:a;tag=no>"), None);
        assert_eq!(tag("<sip:a>;x;tag"), Some(None));
        assert_eq!(tag("\"A;tag=q <x>\" <sip:a>;tag=3"), Some(Some("3".into())));
        assert_eq!(tag("<sip:a"), None);
        assert_eq!(tag("<sip:a> junk;tag=4"), None);
    }

    #[test]
    fn cseq_and_max_forwards() {
        let fields = |cseq: &str, mf: &str| {
            let buf =
                format!("OPTIONS sip:a SIP/2.0\r\nCSeq: {cseq}\r\nMax-Forwards: {mf}\r\n\r\n");
            let o = parse(buf.as_bytes()).unwrap();
            let m = o.message();
            (
                m.cseq().map(|c| (c.number, t(&m, c.method).to_string())),
                m.max_forwards(),
            )
        };
        assert_eq!(
            fields("1 OPTIONS", "70"),
            (Some((1, "OPTIONS".into())), Some(70))
        );
        assert_eq!(
            fields("42\r\n INVITE", "0"),
            (Some((42, "INVITE".into())), Some(0))
        );
        assert_eq!(fields("2147483647 X", "007").0.unwrap().0, 2147483647);
        assert_eq!(fields("2147483647 X", "007").1, Some(7));
        for bad in [
            "2147483648 INVITE",
            "99999999999999999999 INVITE",
            "1OPTIONS",
            "1 OPTIONS x",
            "OPTIONS",
            "1",
            "-1 X",
        ] {
            assert_eq!(fields(bad, "1").0, None, "{bad}");
        }
        for bad in ["x", "-1", "1 2", "99999999999"] {
            assert_eq!(fields("1 A", bad).1, None, "{bad}");
        }
    }

    /// The start line, the header lines, the empty line and the body cover the message without a
    /// gap: what a relay relies on to splice.
    #[test]
    fn spans_tile_the_message() {
        for buf in [
            OPTIONS,
            b"\r\n\r\nOPTIONS sip:a SIP/2.0\nTo: x\n folded\n\nbody".as_slice(),
            b"SIP/2.0 200 OK\r\nv: a, b\r\nl: 2\r\n\r\nhi+extra",
            b"OPTIONS sip:a SIP/2.0\r\n\r\n",
        ] {
            let o = parse(buf).unwrap();
            let m = o.message();
            let mut at = m.start_line_span().start as usize;
            assert_eq!(at, leading_crlf_len(buf));
            at = m.start_line_span().end as usize;
            for line in m.lines() {
                assert_eq!(line.span().start as usize, at);
                assert!(line.name.end <= line.value.start && line.value.end <= line.end);
                at = line.end as usize;
            }
            assert_eq!(m.head_end(), at);
            assert!(matches!(
                &buf[m.head_end()..m.body_start()],
                b"\r\n" | b"\n"
            ));
            assert_eq!(m.body_span().start as usize, m.body_start());
            assert_eq!(m.body_span().end as usize, m.len());
        }
    }

    #[test]
    fn limits_refuse_rather_than_allocate() {
        let with = |extra: String| {
            let buf = format!("OPTIONS sip:a SIP/2.0\r\n{extra}l: 0\r\n\r\n").into_bytes();
            (parse(&buf).map(|o| o.len()), frame_len(&buf))
        };
        // `n` values of a header, 16 to a line.
        let values = |name: &str, value: &str, n: usize| -> String {
            let mut out = String::new();
            for chunk in vec![value; n].chunks(16) {
                out.push_str(&format!("{name}: {}\r\n", chunk.join(", ")));
            }
            out
        };
        let vias = |n| values("Via", "SIP/2.0/UDP h", n);
        assert!(with(vias(MAX_VIAS)).0.is_ok());
        assert_eq!(with(vias(MAX_VIAS + 1)).0, Err(ParseError::TooManyVias));
        assert_eq!(
            with(vias(MAX_VIAS + 1)).1,
            FrameStatus::Invalid(ParseError::TooManyVias)
        );
        assert!(with("X: y\r\n".repeat(MAX_HEADERS - 1)).0.is_ok());
        assert_eq!(
            with("X: y\r\n".repeat(MAX_HEADERS)).0,
            Err(ParseError::TooManyHeaders)
        );
        let routes = values("Route", "<sip:a>", MAX_ROUTES);
        assert!(with(routes.clone()).0.is_ok());
        assert_eq!(
            with(format!("{routes}Route: <sip:b>\r\n")).0,
            Err(ParseError::TooManyRoutes)
        );
        assert_eq!(
            with(format!("{routes}Record-Route: <sip:b>\r\n"))
                .0
                .map(|_| ()),
            Ok(())
        );
        // A control character later on still names the error.
        assert_eq!(
            with(format!("{}X: \0\r\n", vias(MAX_VIAS + 5))).0,
            Err(ParseError::ControlChar)
        );
    }

    #[test]
    fn the_first_error_by_precedence() {
        let cases: &[(&[u8], ParseError)] = &[
            (
                b"OPTIONS sip:a SIP/2.0\r\nbad\r\nX: \0\r\n\r\n",
                ParseError::ControlChar,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nbad\r\nX: \xff\r\n\r\n",
                ParseError::NotUtf8,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nbad\r\nX: \0\r\n",
                ParseError::Unterminated,
            ),
            (b"OPTIONS sip:a\r\nl: x\r\n\r\n", ParseError::BadStartLine),
            (
                b"OPTIONS sip:a SIP/2.0\r\nl: x\r\nbad\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\n\rX\r\n\r\n",
                ParseError::ControlChar,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\r\nX: a\r\r\n\r\n",
                ParseError::ControlChar,
            ),
            (
                b"OPTIONS sip:a SIP/2.0\x7f\r\n\r\n",
                ParseError::ControlChar,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input).unwrap_err(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_framed_stream_message_is_read_without_parsing_again() {
        let one = b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 2\r\n\r\nhi";
        let mut buf = one.to_vec();
        buf.extend_from_slice(b"OPTIONS");
        let mut parsed = Parsed::new();
        assert_eq!(parsed.frame_stream(&buf, 1000, 10), Ok(Some(one.len())));
        let m = parsed.message(&buf[..one.len()]).unwrap();
        assert_eq!(m.body(), b"hi");
        assert_eq!(t(&m, m.vias()[0].transport), "TCP");
        assert!(parsed.message(&buf).is_none());
        // The header section alone: framed, but not readable as a message yet.
        assert_eq!(
            parsed.frame_stream(&one[..one.len() - 1], 1000, 10),
            Ok(Some(one.len()))
        );
        assert!(parsed.message(&one[..one.len() - 1]).is_none());
        assert!(parsed.message(one).is_none());
    }

    proptest::proptest! {
        #[test]
        fn parse_and_frame_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&bytes);
            let _ = frame_len(&bytes);
            let _ = stream_frame_len(&bytes, 100, 100);
        }

        #[test]
        fn complete_frames_parse(body in proptest::collection::vec(proptest::num::u8::ANY, 0..100),
                                 extra in proptest::collection::vec(proptest::num::u8::ANY, 0..50)) {
            let mut buf = format!("MESSAGE sip:a SIP/2.0\r\nl: {}\r\n\r\n", body.len()).into_bytes();
            buf.extend_from_slice(&body);
            let len = buf.len();
            buf.extend_from_slice(&extra);
            proptest::prop_assert_eq!(frame_len(&buf), FrameStatus::Complete(len));
            let o = parse(&buf).unwrap();
            let m = o.message();
            proptest::prop_assert_eq!(m.body(), &body[..]);
            proptest::prop_assert_eq!(m.len(), len);
        }
    }
}
