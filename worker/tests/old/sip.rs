//! Zero-copy SIP message parsing (RFC 3261 §7).
//!
//! Owns the syntax of one message: the start line (request or status), the header fields (full and
//! compact names, RFC 3261 §7.3.3 plus the compact forms registered since), the body delimited by
//! `Content-Length`, and the framing of messages on a stream ([`frame_len`]). Everything borrows
//! from the caller's buffer; nothing here allocates or panics, whatever the bytes (indexing and
//! `unwrap` are denied by lint outside tests).
//!
//! Choices where RFC 3261 leaves room, applied the same way everywhere:
//! - lines end with CRLF or a bare LF; a CR anywhere else in the header section is refused;
//! - folded header lines (a line starting with SP or HTAB continues the previous one) are
//!   accepted; the fold stays in the value, and [`put_unfolded`] writes it back as one SP;
//! - CR and LF before the start line are skipped (RFC 3261 §7.5);
//! - the header section must be UTF-8 with no control character but HTAB; the body is any bytes;
//! - on a datagram, `Content-Length` is optional (RFC 3261 §18.3): when given, bytes past it are
//!   discarded and a shorter body is an error; when absent, the body is the rest of the datagram.
//!   On a stream ([`frame_len`]) it is required.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use std::io::Write;

/// The largest message [`frame_len`] accepts on a stream (header section and body), in bytes.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

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
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `METHOD Request-URI SIP/2.0`.
    Request {
        /// The method, case-sensitive as RFC 3261 says (`INVITE`, `OPTIONS`, ...).
        method: &'a str,
        /// The Request-URI, as written.
        uri: &'a str,
    },
    /// `SIP/2.0 CODE Reason`.
    Response {
        /// The status code, 100 to 699.
        code: u16,
        /// The reason phrase (may be empty).
        reason: &'a str,
    },
}

/// The header fields this crate tells apart; every other one is [`HeaderKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// `Via` / `v`.
    Via,
    /// `From` / `f`.
    From,
    /// `To` / `t`.
    To,
    /// `Call-ID` / `i`.
    CallId,
    /// `CSeq` (no compact form).
    CSeq,
    /// `Content-Length` / `l`.
    ContentLength,
    /// `Contact` / `m`.
    Contact,
    /// `Content-Type` / `c`.
    ContentType,
    /// `Content-Encoding` / `e`.
    ContentEncoding,
    /// `Subject` / `s`.
    Subject,
    /// `Supported` / `k`.
    Supported,
    /// `Event` / `o` (RFC 6665).
    Event,
    /// `Allow-Events` / `u` (RFC 6665).
    AllowEvents,
    /// `Refer-To` / `r` (RFC 3515).
    ReferTo,
    /// `Referred-By` / `b` (RFC 3892).
    ReferredBy,
    /// `Session-Expires` / `x` (RFC 4028).
    SessionExpires,
    /// `Accept-Contact` / `a` (RFC 3841).
    AcceptContact,
    /// `Reject-Contact` / `j` (RFC 3841).
    RejectContact,
    /// `Request-Disposition` / `d` (RFC 3841).
    RequestDisposition,
    /// `Identity` / `y` (RFC 8224).
    Identity,
    /// Any other header.
    Other,
}

/// (full name, compact form, kind); names compare case-insensitively.
const NAMES: &[(&str, Option<&str>, HeaderKind)] = &[
    ("Via", Some("v"), HeaderKind::Via),
    ("From", Some("f"), HeaderKind::From),
    ("To", Some("t"), HeaderKind::To),
    ("Call-ID", Some("i"), HeaderKind::CallId),
    ("CSeq", None, HeaderKind::CSeq),
    ("Content-Length", Some("l"), HeaderKind::ContentLength),
    ("Contact", Some("m"), HeaderKind::Contact),
    ("Content-Type", Some("c"), HeaderKind::ContentType),
    ("Content-Encoding", Some("e"), HeaderKind::ContentEncoding),
    ("Subject", Some("s"), HeaderKind::Subject),
    ("Supported", Some("k"), HeaderKind::Supported),
    ("Event", Some("o"), HeaderKind::Event),
    ("Allow-Events", Some("u"), HeaderKind::AllowEvents),
    ("Refer-To", Some("r"), HeaderKind::ReferTo),
    ("Referred-By", Some("b"), HeaderKind::ReferredBy),
    ("Session-Expires", Some("x"), HeaderKind::SessionExpires),
    ("Accept-Contact", Some("a"), HeaderKind::AcceptContact),
    ("Reject-Contact", Some("j"), HeaderKind::RejectContact),
    (
        "Request-Disposition",
        Some("d"),
        HeaderKind::RequestDisposition,
    ),
    ("Identity", Some("y"), HeaderKind::Identity),
];

impl HeaderKind {
    /// The kind of a header name, full or compact, in any case.
    pub fn of(name: &str) -> HeaderKind {
        NAMES
            .iter()
            .find(|(full, compact, _)| {
                full.eq_ignore_ascii_case(name)
                    || compact.is_some_and(|c| c.eq_ignore_ascii_case(name))
            })
            .map_or(HeaderKind::Other, |(_, _, kind)| *kind)
    }

    /// The full name, as replies write it (`None` for [`HeaderKind::Other`]).
    pub fn full_name(self) -> Option<&'static str> {
        NAMES
            .iter()
            .find(|(_, _, kind)| *kind == self)
            .map(|(full, _, _)| *full)
    }
}

/// One header field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The name as written (possibly compact).
    pub name: &'a str,
    /// The value, without the leading and trailing whitespace; may contain folds (CRLF + WSP).
    pub value: &'a str,
    /// What the name designates.
    pub kind: HeaderKind,
}

/// A parsed message; everything borrows from the parsed buffer.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    start: StartLine<'a>,
    fields: &'a str,
    body: &'a [u8],
    len: usize,
}

impl<'a> Message<'a> {
    /// The start line.
    pub fn start_line(&self) -> StartLine<'a> {
        self.start
    }

    /// The method of a request, `None` for a response.
    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The header fields, in order.
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.fields }
    }

    /// The body (`Content-Length` bytes, or the rest of the datagram when it is absent).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// Bytes of the buffer this message covers, leading CRLFs and body included (bytes of a
    /// datagram past `Content-Length` are not counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a message has at least a start line (clippy wants `is_empty` next to `len`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Iterator over the header fields of a [`Message`].
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;
    fn next(&mut self) -> Option<Header<'a>> {
        // The section was validated by `parse`, so an error cannot happen here; stop if it does.
        match next_field(self.rest) {
            Some(Ok((header, rest))) => {
                self.rest = rest;
                Some(header)
            }
            _ => None,
        }
    }
}

/// Parse one datagram.
pub fn parse(buf: &[u8]) -> Result<Message<'_>, ParseError> {
    let head = locate_head(buf)?.ok_or(ParseError::Unterminated)?;
    let (start, fields, content_length) = check_head(head.text)?;
    let body = match content_length {
        Some(n) => head.after.get(..n).ok_or(ParseError::ShortBody)?,
        None => head.after,
    };
    Ok(Message {
        start,
        fields,
        body,
        len: head.len.saturating_add(body.len()),
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
pub fn frame_len(buf: &[u8]) -> FrameStatus {
    let head = match locate_head(buf) {
        Ok(Some(head)) => head,
        Ok(None) | Err(ParseError::Empty) if buf.len() > MAX_FRAME_LEN => {
            return FrameStatus::Invalid(ParseError::TooLarge)
        }
        Ok(None) | Err(ParseError::Empty) => return FrameStatus::Incomplete,
        Err(e) => return FrameStatus::Invalid(e),
    };
    let content_length = match check_head(head.text) {
        Ok((_, _, Some(n))) => n,
        Ok((_, _, None)) => return FrameStatus::Invalid(ParseError::MissingContentLength),
        Err(e) => return FrameStatus::Invalid(e),
    };
    match head.len.checked_add(content_length) {
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

/// Frame the next message of a stream under a transport's limits, telling its length as soon as
/// its header section is there: `Ok(Some(total))` (leading CRLFs included; `total` may be more
/// than `buf` holds: the body is still coming), `Ok(None)` when the header section is not
/// complete yet, `Err` when the stream cannot be framed and the connection should be closed.
///
/// Stricter than [`frame_len`] in what it refuses, and sooner:
/// - the start line is checked as soon as its line end is there, and bytes that cannot begin one
///   (a control character: say a TLS ClientHello sent to a TCP port) are refused at once;
/// - the header section (start line to the empty line) may be at most `max_head` bytes, the body
///   at most `max_body`: [`ParseError::TooLarge`] otherwise, without waiting for more;
/// - `Content-Length` is required ([`ParseError::MissingContentLength`]).
pub fn stream_frame_len(
    buf: &[u8],
    max_head: usize,
    max_body: usize,
) -> Result<Option<usize>, ParseError> {
    let skip = leading_crlf_len(buf);
    let rest = buf.get(skip..).unwrap_or_default();
    check_first_line(rest)?;
    let head = match locate_head(buf) {
        Ok(Some(head)) => head,
        Ok(None) | Err(ParseError::Empty) if rest.len() > max_head => {
            return Err(ParseError::TooLarge)
        }
        Ok(None) | Err(ParseError::Empty) => return Ok(None),
        Err(e) => return Err(e),
    };
    if head.len.saturating_sub(skip) > max_head {
        return Err(ParseError::TooLarge);
    }
    let content_length = match check_head(head.text)? {
        (_, _, Some(n)) => n,
        (_, _, None) => return Err(ParseError::MissingContentLength),
    };
    if content_length > max_body {
        return Err(ParseError::TooLarge);
    }
    head.len
        .checked_add(content_length)
        .map(Some)
        .ok_or(ParseError::TooLarge)
}

/// The start line of a stream message, checked before the rest of the header section is there:
/// once complete, it must be a request or status line; before that, its bytes must be ones a start
/// line can hold.
fn check_first_line(rest: &[u8]) -> Result<(), ParseError> {
    match rest.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let line = rest.get(..end).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
            if line.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                return Err(ParseError::ControlChar);
            }
            parse_start_line(line).map(|_| ())
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

/// The header section of a buffer.
struct Head<'a> {
    /// From the start line to the end of the last header line (its line end included).
    text: &'a str,
    /// Bytes after the empty line.
    after: &'a [u8],
    /// Bytes of the buffer up to `after` (leading CRLFs, start line, headers, empty line).
    len: usize,
}

/// Find the header section: `Ok(None)` when its empty line is not there (yet).
fn locate_head(buf: &[u8]) -> Result<Option<Head<'_>>, ParseError> {
    let skip = leading_crlf_len(buf);
    let rest = buf.get(skip..).unwrap_or_default();
    if rest.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut line_start = 0usize;
    let mut found = None;
    for (i, b) in rest.iter().enumerate() {
        if *b != b'\n' {
            continue;
        }
        let line = rest.get(line_start..i).unwrap_or_default();
        if line.is_empty() || line == b"\r" {
            found = Some((line_start, i + 1));
            break;
        }
        line_start = i + 1;
    }
    let Some((head_end, after_start)) = found else {
        return Ok(None);
    };
    let head = rest.get(..head_end).unwrap_or_default();
    let after = rest.get(after_start..).unwrap_or_default();
    let text = std::str::from_utf8(head).map_err(|_| ParseError::NotUtf8)?;
    Ok(Some(Head {
        text,
        after,
        len: skip + after_start,
    }))
}

/// Validate a header section; returns the start line, the header lines and `Content-Length`.
fn check_head(text: &str) -> Result<(StartLine<'_>, &str, Option<usize>), ParseError> {
    check_controls(text)?;
    let (first, fields) = text.split_once('\n').unwrap_or((text, ""));
    let start = parse_start_line(first.strip_suffix('\r').unwrap_or(first))?;
    let mut content_length: Option<usize> = None;
    let mut rest = fields;
    while let Some(field) = next_field(rest) {
        let (header, after) = field?;
        if header.kind == HeaderKind::ContentLength {
            let n = parse_content_length(header.value)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(ParseError::ConflictingContentLength);
            }
            content_length = Some(n);
        }
        rest = after;
    }
    Ok((start, fields, content_length))
}

/// No control character but HTAB, and CR only right before LF.
fn check_controls(text: &str) -> Result<(), ParseError> {
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        let ok = match b {
            b'\t' | b'\n' => true,
            b'\r' => bytes.get(i + 1) == Some(&b'\n'),
            b => !b.is_ascii_control(),
        };
        if !ok {
            return Err(ParseError::ControlChar);
        }
    }
    Ok(())
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    let is_version = |s: &str| s.eq_ignore_ascii_case("SIP/2.0");
    let looks_like_version = line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
    if looks_like_version {
        let (version, rest) = line.split_once(' ').ok_or(ParseError::BadStartLine)?;
        if !is_version(version) {
            return Err(ParseError::BadVersion);
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::BadStatusCode);
        }
        let code: u16 = code.parse().map_err(|_| ParseError::BadStatusCode)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStatusCode);
        }
        return Ok(StartLine::Response { code, reason });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadStartLine);
    };
    if !is_token(method) || uri.is_empty() || uri.contains('\t') {
        return Err(ParseError::BadStartLine);
    }
    if !is_version(version) {
        return Err(ParseError::BadVersion);
    }
    Ok(StartLine::Request { method, uri })
}

/// RFC 3261 `token`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
                )
        })
}

pub(crate) fn is_lws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// The next header field of `rest` (folded lines joined) and what follows it.
fn next_field(rest: &str) -> Option<Result<(Header<'_>, &str), ParseError>> {
    if rest.is_empty() {
        return None;
    }
    if rest.starts_with([' ', '\t']) {
        // A continuation line with no header before it.
        return Some(Err(ParseError::BadHeader));
    }
    // The logical line ends at the first LF not followed by SP or HTAB.
    let bytes = rest.as_bytes();
    let mut end = rest.len();
    let mut next = rest.len();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' && !matches!(bytes.get(i + 1), Some(b' ' | b'\t')) {
            end = i;
            next = i + 1;
            break;
        }
    }
    let line = rest.get(..end).unwrap_or_default();
    let after = rest.get(next..).unwrap_or_default();
    let Some((name, value)) = line.split_once(':') else {
        return Some(Err(ParseError::BadHeader));
    };
    let name = name.trim_end_matches([' ', '\t']);
    if !is_token(name) {
        return Some(Err(ParseError::BadHeader));
    }
    let header = Header {
        name,
        value: value.trim_matches(is_lws),
        kind: HeaderKind::of(name),
    };
    Some(Ok((header, after)))
}

fn parse_content_length(value: &str) -> Result<usize, ParseError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BadContentLength);
    }
    value.parse().map_err(|_| ParseError::BadContentLength)
}

/// Write `value` with each fold (CR/LF and the whitespace around it) replaced by one SP.
pub fn put_unfolded(out: &mut Vec<u8>, value: &str) {
    let mut rest = value;
    while let Some(i) = rest.find(['\r', '\n']) {
        let (before, after) = rest.split_at(i);
        out.extend_from_slice(before.trim_end_matches([' ', '\t']).as_bytes());
        out.push(b' ');
        rest = after.trim_start_matches(is_lws);
    }
    out.extend_from_slice(rest.as_bytes());
}

/// Split at the first `sep` outside a quoted string (`"..."` with `\` escapes).
fn split_unquoted(s: &str, sep: char) -> Option<(&str, &str)> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted && c == sep {
            return Some((s.get(..i)?, s.get(i + c.len_utf8()..)?));
        }
    }
    None
}

/// Split a header value at its first top-level comma (the first of several Via values, say);
/// both parts are trimmed at the split.
pub fn split_first_value(value: &str) -> (&str, Option<&str>) {
    match split_unquoted(value, ',') {
        Some((first, rest)) => (
            first.trim_end_matches(is_lws),
            Some(rest.trim_start_matches(is_lws)),
        ),
        None => (value, None),
    }
}

/// The header parameters of a `name-addr` / `addr-spec` value (From, To, Contact): the text from
/// the `;` that starts them (after `<...>` when the address is bracketed), or "".
pub fn header_params(value: &str) -> &str {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => {
                // URIs never hold an unescaped '>'; the parameters follow it.
                let after = value.get(i..).unwrap_or_default();
                return match after.find('>') {
                    Some(j) => after.get(j + 1..).unwrap_or_default(),
                    None => "",
                };
            }
            ';' if !quoted => return value.get(i..).unwrap_or_default(),
            _ => {}
        }
    }
    ""
}

/// The parameters of a Via value (`SIP/2.0/UDP host:port;branch=...`): the sent-by part and the
/// text of the parameters (starting at `;`, or "").
pub fn via_params(via: &str) -> (&str, &str) {
    match via.find(';') {
        Some(i) => (
            via.get(..i).unwrap_or_default().trim_end_matches(is_lws),
            via.get(i..).unwrap_or_default(),
        ),
        None => (via, ""),
    }
}

/// One `;name[=value]` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// The whole parameter, trimmed, without its `;`.
    pub raw: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its value, if it has one (quotes kept).
    pub value: Option<&'a str>,
}

/// Iterate the parameters of text returned by [`header_params`] or [`via_params`].
pub fn params(text: &str) -> Params<'_> {
    Params {
        rest: text.trim_start_matches(is_lws).strip_prefix(';'),
    }
}

/// Iterator over `;name[=value]` parameters.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;
    fn next(&mut self) -> Option<Param<'a>> {
        loop {
            let rest = self.rest?;
            let (this, next) = match split_unquoted(rest, ';') {
                Some((this, next)) => (this, Some(next)),
                None => (rest, None),
            };
            self.rest = next;
            let raw = this.trim_matches(is_lws);
            if raw.is_empty() {
                continue;
            }
            let (name, value) = match raw.split_once('=') {
                Some((n, v)) => (n.trim_matches(is_lws), Some(v.trim_matches(is_lws))),
                None => (raw, None),
            };
            return Some(Param { raw, name, value });
        }
    }
}

/// The parameter `name` (case-insensitive) of parameter text: `Some(None)` when it has no value.
pub fn find_param<'a>(text: &'a str, name: &str) -> Option<Option<&'a str>> {
    params(text)
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .map(|p| p.value)
}

/// A CSeq value: sequence number (below 2^31, RFC 3261 §8.1.1.5) and method.
pub fn parse_cseq(value: &str) -> Option<(u32, &str)> {
    let digits = value.find(|c: char| !c.is_ascii_digit())?;
    let (number, rest) = value.split_at(digits);
    if number.is_empty() || !rest.starts_with(is_lws) {
        return None;
    }
    let number: u32 = number.parse().ok().filter(|n| *n < 1 << 31)?;
    let method = rest.trim_matches(is_lws);
    is_token(method).then_some((number, method))
}

/// Write `n` as 16 lower-case hex digits (no allocation, unlike `format!`).
pub fn put_hex64(out: &mut Vec<u8>, n: u64) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{n:016x}");
}
