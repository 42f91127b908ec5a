//! The parsed representation of one message: byte offsets into the caller's buffer, found by one
//! scan ([`Parsed::parse`]), read through a [`Message`] view.
//!
//! [`Parsed`] holds no reference: it is a reusable scratch (tables allocated once at their full
//! capacity, cleared by each parse, never grown: memory is touched only as far as a message
//! reaches) that a worker keeps for its lifetime, and can be kept next to a buffer that moves.
//! [`Message`] pairs it with the bytes it was parsed from and hands out slices.
//!
//! # What a parse gives
//! Every position is a [`Span`] (`start..end`, absolute offsets into the parsed buffer):
//! - the start line: [`Start::Request`] (method as [`Method`] and its span, Request-URI span) or
//!   [`Start::Response`] (code, reason span); [`Message::start_line_span`] covers the line and its
//!   line end;
//! - every header line, in order ([`Message::lines`]): name, value (trimmed; folds inside are kept,
//!   [`Line::folded`] says so), the whole line with its line end ([`Line::span`]) and its
//!   [`HeaderKind`]; at most [`MAX_HEADERS`];
//! - every Via value ([`Message::vias`]; one header line may carry several, comma-separated), top
//!   first: its span, its header line, transport, sent-by (host, port) and its `branch`, `rport`
//!   and `received` parameters; at most [`MAX_VIAS`];
//! - every Route and Record-Route entry ([`Message::routes`], [`Message::record_routes`]), in
//!   order, with their header line; at most [`MAX_ROUTES`] of each;
//! - From and To ([`NameAddr`]: value, `tag` parameter), Call-ID, CSeq (number, method), Max-Forwards
//!   (value), Content-Length, the option tags of Supported / Require / Proxy-Require
//!   ([`OptionTags`]), and for any kind the number of lines and the first one
//!   ([`Message::count`], [`Message::first`]); Contact and Path lines through [`Message::lines_of`];
//! - the body ([`Message::body_span`]).
//!
//! A message over a limit is refused ([`ParseError`](super::ParseError)`::TooMany*`): nothing is
//! ever allocated for it.
//!
//! # Splicing (how a relay builds what it sends)
//! The spans cover the message without gaps: `start_line_span()`, then each `lines()[i].span()`
//! back to back, then the empty line (`head_end()..body_start()`), then `body_span()`. A relay
//! writes its output by copying these ranges and changing only what it must:
//! - *insert a header* (a new top Via, a Record-Route, a Path): write it before copying the line it
//!   goes before (`lines()[0]` for "first", or the first line of a kind with [`Message::first`]);
//! - *replace a value* (Max-Forwards decremented): copy the line up to `value.start`, write the new
//!   value, copy from `value.end` to the line's end;
//! - *drop a Via value or a Route entry*: when it is the only one of its line
//!   ([`alone_in_line`]), skip the whole line (`lines()[via.line].span()`); otherwise skip
//!   from its start to the start of the next value of the line (or, for the last one of a line, from
//!   the end of the previous value to its end), which removes the comma between them;
//! - *add to the top Via* (`received`, `rport=PORT`, RFC 3261 §18.2.1, RFC 3581): copy the value,
//!   skipping an existing `received` parameter (its span is the parameter without its `;`, so
//!   skip from `span.start - 1`), writing `=PORT` right after a valueless `rport`, then the new
//!   `;received=IP` at the end of the value.
//!
//! Spans index the buffer given to the parse; a value that contains folds ([`Line::folded`]) must
//! be unfolded ([`put_unfolded`](super::put_unfolded)) when it is copied into a context that does
//! not allow them.

use super::names::{HeaderKind, Method, OptionTags, KINDS};
use super::{MAX_HEADERS, MAX_ROUTES, MAX_VIAS};

/// A byte range `start..end` of the parsed buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        // Buffers are bounded far below 4 GiB (a datagram, or a stream frame under its limits),
        // and offsets past u32 would only make a span read as empty.
        Span {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end).unwrap_or(u32::MAX),
        }
    }

    /// As a `usize` range.
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Its length in bytes.
    pub fn len(self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    /// True when it covers no byte.
    pub fn is_empty(self) -> bool {
        self.end <= self.start
    }
}

/// One `;name[=value]` parameter (of a Via, From or To value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Param {
    /// The parameter without its `;`, trimmed: `name` or `name=value`.
    pub span: Span,
    /// Its value (after `=`, trimmed, quotes kept); `None` when it has no `=`.
    pub value: Option<Span>,
}

/// One header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// What the name designates.
    pub kind: HeaderKind,
    /// The name as written (possibly compact); starts the line.
    pub name: Span,
    /// The value without leading and trailing whitespace; may contain folds.
    pub value: Span,
    /// One past the line's last byte: its line end (CRLF or LF) included.
    pub end: u32,
    /// The value spans several physical lines (RFC 3261 §7.3.1 folding).
    pub folded: bool,
}

impl Line {
    /// The whole line, from its name to its line end included.
    pub fn span(&self) -> Span {
        Span {
            start: self.name.start,
            end: self.end,
        }
    }
}

/// One Via value (`via-parm`, RFC 3261 §20.42): `SIP/2.0/TRANSPORT sent-by;params`.
///
/// The parser keeps every Via value, well-formed or not (so that replies and relays copy what they
/// were given); a reader checks what it relies on: [`Via::is_usable`] is what the responder asks of
/// the top one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Via {
    /// The whole value, trimmed (may be empty: `Via: a,,b`).
    pub value: Span,
    /// Index of its header line in [`Message::lines`].
    pub line: u16,
    /// The transport after `SIP/2.0/` (`UDP`, `TCP`, ...); empty when the protocol is not
    /// `SIP/2.0/` followed by something (case-insensitive).
    pub transport: Span,
    /// `host[:port]` between the protocol and the first `;`, trimmed; may be empty.
    pub sent_by: Span,
    /// The host of `sent_by` (an IPv6 reference keeps its brackets); all of `sent_by` when its port
    /// is not a number below 65536.
    pub host: Span,
    /// The port of `sent_by`, when one is written and valid.
    pub port: Option<u16>,
    /// From the first `;` to the end of the value (empty when there are no parameters).
    pub params: Span,
    /// The first `branch` parameter.
    pub branch: Option<Param>,
    /// The first `rport` parameter (RFC 3581).
    pub rport: Option<Param>,
    /// The first `received` parameter.
    pub received: Option<Param>,
    /// The value is in the simple form where copying it with the edits of the module docs gives
    /// the same bytes as rewriting it parameter by parameter: no fold, no blank around a `;`, no
    /// empty parameter, at most one `received` and one `rport` (in lower case when valueless).
    pub(crate) plain: bool,
}

impl Via {
    /// `SIP/2.0/TRANSPORT` followed by a non-empty sent-by: the least a reply to it needs.
    pub fn is_usable(&self) -> bool {
        !self.transport.is_empty() && !self.sent_by.is_empty()
    }
}

/// One Route or Record-Route entry (a `name-addr`, `<...>` with its parameters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    /// The entry, trimmed (commas inside quotes or `<...>` do not split entries).
    pub value: Span,
    /// Index of its header line in [`Message::lines`].
    pub line: u16,
}

/// A From or To value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr {
    /// Index of its header line in [`Message::lines`] (the first line of the kind).
    pub line: u16,
    /// The whole value.
    pub value: Span,
    /// Its first `tag` parameter (after the `<...>` when the address is bracketed).
    pub tag: Option<Param>,
}

/// A CSeq value that parsed: `number method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq {
    /// The sequence number (below 2^31, RFC 3261 §8.1.1.5).
    pub number: u32,
    /// The method, a token.
    pub method: Span,
}

/// The start line, as spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `METHOD Request-URI SIP/2.0`.
    Request {
        /// The method, when it is one of the common ones.
        method: Method,
        /// The method as written.
        method_span: Span,
        /// The Request-URI.
        uri: Span,
    },
    /// `SIP/2.0 CODE Reason`.
    Response {
        /// 100 to 699.
        code: u16,
        /// The reason phrase (may be empty).
        reason: Span,
    },
}

/// The first line of a message, as text.
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

/// One header field, as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// The name as written (possibly compact).
    pub name: &'a str,
    /// The value, without the leading and trailing whitespace; may contain folds (CRLF + WSP).
    pub value: &'a str,
    /// What the name designates.
    pub kind: HeaderKind,
}

/// "No line of this kind".
pub(crate) const NO_LINE: u16 = u16::MAX;

/// What one scan found; reusable (see the module docs): keep one per worker. Its tables reserve
/// about 160 KiB of address space at creation, of which a message touches what it fills.
#[derive(Debug)]
pub struct Parsed {
    pub(crate) start: Start,
    /// Offset of the start line (CR/LF bytes before it skipped).
    pub(crate) skip: u32,
    /// One past the start line's line end.
    pub(crate) start_end: u32,
    /// Start of the empty line.
    pub(crate) head_end: u32,
    /// One past the empty line.
    pub(crate) body_start: u32,
    pub(crate) body: Span,
    /// Bytes of the message (0 until a parse has completed it).
    pub(crate) len: u32,
    pub(crate) content_length: Option<usize>,
    /// At most [`MAX_HEADERS`] (capacity reserved; the scanner never pushes past it).
    pub(crate) lines: Vec<Line>,
    /// At most [`MAX_VIAS`].
    pub(crate) vias: Vec<Via>,
    /// At most [`MAX_ROUTES`].
    pub(crate) routes: Vec<Entry>,
    /// At most [`MAX_ROUTES`].
    pub(crate) record_routes: Vec<Entry>,
    /// Index of the first line of each kind, or [`NO_LINE`].
    pub(crate) first: [u16; KINDS],
    /// Lines of each kind.
    pub(crate) count: [u16; KINDS],
    /// Bit `kind`: a line of that kind has an empty value.
    pub(crate) empty: u32,
    pub(crate) from: Option<NameAddr>,
    pub(crate) to: Option<NameAddr>,
    pub(crate) cseq: Option<CSeq>,
    pub(crate) max_forwards: Option<u32>,
    pub(crate) supported: OptionTags,
    pub(crate) require: OptionTags,
    pub(crate) proxy_require: OptionTags,
}

impl Default for Parsed {
    fn default() -> Parsed {
        Parsed::new()
    }
}

impl Parsed {
    /// An empty scratch.
    pub fn new() -> Parsed {
        Parsed {
            start: Start::Response {
                code: 0,
                reason: Span::default(),
            },
            skip: 0,
            start_end: 0,
            head_end: 0,
            body_start: 0,
            body: Span::default(),
            len: 0,
            content_length: None,
            lines: Vec::with_capacity(MAX_HEADERS),
            vias: Vec::with_capacity(MAX_VIAS),
            routes: Vec::with_capacity(MAX_ROUTES),
            record_routes: Vec::with_capacity(MAX_ROUTES),
            first: [NO_LINE; KINDS],
            count: [0; KINDS],
            empty: 0,
            from: None,
            to: None,
            cseq: None,
            max_forwards: None,
            supported: OptionTags::NONE,
            require: OptionTags::NONE,
            proxy_require: OptionTags::NONE,
        }
    }

    /// Forget the last message (the tables keep their capacity).
    pub(crate) fn reset(&mut self) {
        self.len = 0;
        self.content_length = None;
        self.lines.clear();
        self.vias.clear();
        self.routes.clear();
        self.record_routes.clear();
        self.first = [NO_LINE; KINDS];
        self.count = [0; KINDS];
        self.empty = 0;
        self.from = None;
        self.to = None;
        self.cseq = None;
        self.max_forwards = None;
        self.supported = OptionTags::NONE;
        self.require = OptionTags::NONE;
        self.proxy_require = OptionTags::NONE;
    }

    /// Parse one datagram (see the module docs of [`crate::sip`] for what is accepted); the
    /// result borrows `self` and `buf`.
    pub fn parse<'a>(&'a mut self, buf: &'a [u8]) -> Result<Message<'a>, super::ParseError> {
        super::scan::datagram(self, buf)?;
        Ok(Message { buf, parsed: self })
    }

    /// The message last parsed (or framed complete) from exactly `buf`: `None` when `buf` is not as
    /// long as that message. The caller vouches that `buf` holds the same bytes (the stream
    /// deframer hands a message out with the scratch that framed it).
    pub fn message<'a>(&'a self, buf: &'a [u8]) -> Option<Message<'a>> {
        (self.len != 0 && self.len as usize == buf.len()).then_some(Message { buf, parsed: self })
    }

    /// Bytes of the buffer the message covers, leading CRLFs and body included (bytes of a datagram
    /// past `Content-Length` are not counted).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True until a parse completes (a message has at least a start line).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `Content-Length`, when given.
    pub fn content_length(&self) -> Option<usize> {
        self.content_length
    }
}

/// A parsed message: the buffer and what the scan found in it. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
    parsed: &'a Parsed,
}

impl<'a> Message<'a> {
    /// The bytes of a span (empty if it is not inside the buffer).
    pub fn bytes(&self, span: Span) -> &'a [u8] {
        self.buf.get(span.range()).unwrap_or_default()
    }

    /// The text of a span of the header section (UTF-8 there is checked by the parse; a span of the
    /// body that is not UTF-8 reads as "").
    pub fn text(&self, span: Span) -> &'a str {
        std::str::from_utf8(self.bytes(span)).unwrap_or_default()
    }

    /// The whole buffer the message was parsed from.
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// The start line, as spans.
    pub fn start(&self) -> Start {
        self.parsed.start
    }

    /// The start line, as text.
    pub fn start_line(&self) -> StartLine<'a> {
        match self.parsed.start {
            Start::Request {
                method_span, uri, ..
            } => StartLine::Request {
                method: self.text(method_span),
                uri: self.text(uri),
            },
            Start::Response { code, reason } => StartLine::Response {
                code,
                reason: self.text(reason),
            },
        }
    }

    /// The method of a request, `None` for a response.
    pub fn method(&self) -> Option<&'a str> {
        match self.parsed.start {
            Start::Request { method_span, .. } => Some(self.text(method_span)),
            Start::Response { .. } => None,
        }
    }

    /// The start line with its line end (leading CR/LF bytes not included).
    pub fn start_line_span(&self) -> Span {
        Span {
            start: self.parsed.skip,
            end: self.parsed.start_end,
        }
    }

    /// The header lines, in order.
    pub fn lines(&self) -> &'a [Line] {
        &self.parsed.lines
    }

    /// Number of lines of `kind`.
    pub fn count(&self, kind: HeaderKind) -> usize {
        usize::from(self.parsed.count.get(kind as usize).copied().unwrap_or(0))
    }

    /// The first line of `kind`.
    pub fn first(&self, kind: HeaderKind) -> Option<&'a Line> {
        let i = self.parsed.first.get(kind as usize).copied()?;
        self.lines().get(usize::from(i))
    }

    /// The lines of `kind`, in order (a walk over the line table, not over the bytes).
    pub fn lines_of(&self, kind: HeaderKind) -> impl Iterator<Item = &'a Line> + 'a {
        let from = self
            .parsed
            .first
            .get(kind as usize)
            .copied()
            .unwrap_or(NO_LINE);
        let lines = self.lines();
        lines
            .get(usize::from(from)..)
            .unwrap_or_default()
            .iter()
            .filter(move |l| l.kind == kind)
    }

    /// True when some line of `kind` has an empty value.
    pub fn has_empty(&self, kind: HeaderKind) -> bool {
        self.parsed.empty & (1 << kind as u32) != 0
    }

    /// The header fields as text, in order (the parsed lines; nothing is scanned again).
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            message: *self,
            lines: self.lines().iter(),
        }
    }

    /// The Via values, top first.
    pub fn vias(&self) -> &'a [Via] {
        &self.parsed.vias
    }

    /// The Route entries, in order.
    pub fn routes(&self) -> &'a [Entry] {
        &self.parsed.routes
    }

    /// The Record-Route entries, in order.
    pub fn record_routes(&self) -> &'a [Entry] {
        &self.parsed.record_routes
    }

    /// The parameters of `span` (the [`Via::params`] of a Via: text that starts with `;`), as
    /// `(parameter, name)`; blank parameters (`;;`) are skipped. Walks those bytes again: for the
    /// parameters the scan does not keep (it keeps `branch`, `rport`, `received` and `tag`).
    pub fn params(&self, span: Span) -> impl Iterator<Item = (Param, Span)> + 'a {
        let start = (span.start as usize)
            .saturating_add(1)
            .min(span.end as usize);
        super::scan::params_in(self.buf, start, span.end as usize)
    }

    /// The first From.
    pub fn from(&self) -> Option<NameAddr> {
        self.parsed.from
    }

    /// The first To.
    pub fn to(&self) -> Option<NameAddr> {
        self.parsed.to
    }

    /// The value of the first Call-ID.
    pub fn call_id(&self) -> Option<Span> {
        self.first(HeaderKind::CallId).map(|l| l.value)
    }

    /// The first CSeq, when it parsed (`number method`, number below 2^31, method a token).
    pub fn cseq(&self) -> Option<CSeq> {
        self.parsed.cseq
    }

    /// The first Max-Forwards, when it is a number (digits only) that fits in 32 bits; its line is
    /// `first(HeaderKind::MaxForwards)`.
    pub fn max_forwards(&self) -> Option<u32> {
        self.parsed.max_forwards
    }

    /// `Content-Length`, when given (several equal ones count once).
    pub fn content_length(&self) -> Option<usize> {
        self.parsed.content_length
    }

    /// The option tags of every Supported line.
    pub fn supported(&self) -> OptionTags {
        self.parsed.supported
    }

    /// The option tags of every Require line.
    pub fn require(&self) -> OptionTags {
        self.parsed.require
    }

    /// The option tags of every Proxy-Require line.
    pub fn proxy_require(&self) -> OptionTags {
        self.parsed.proxy_require
    }

    /// Start of the empty line that ends the header section.
    pub fn head_end(&self) -> usize {
        self.parsed.head_end as usize
    }

    /// Start of the body (one past the empty line).
    pub fn body_start(&self) -> usize {
        self.parsed.body_start as usize
    }

    /// Where the body is.
    pub fn body_span(&self) -> Span {
        self.parsed.body
    }

    /// The body (`Content-Length` bytes, or the rest of the datagram when it is absent).
    pub fn body(&self) -> &'a [u8] {
        self.bytes(self.parsed.body)
    }

    /// Bytes of the buffer this message covers, leading CRLFs and body included (bytes of a
    /// datagram past `Content-Length` are not counted).
    pub fn len(&self) -> usize {
        self.parsed.len as usize
    }

    /// Always false: a message has at least a start line (clippy wants `is_empty` next to `len`).
    pub fn is_empty(&self) -> bool {
        self.parsed.len == 0
    }
}

/// True when the value at `index` of `values` (the Vias, the Routes or the Record-Routes of a
/// message) is the only one of its header line.
pub fn alone_in_line<T: LineValue>(values: &[T], index: usize) -> bool {
    let Some(line) = values.get(index).map(LineValue::line) else {
        return false;
    };
    let before = index
        .checked_sub(1)
        .and_then(|i| values.get(i))
        .is_some_and(|v| v.line() == line);
    let after = values.get(index + 1).is_some_and(|v| v.line() == line);
    !before && !after
}

/// Values that belong to a header line ([`Via`], [`Entry`]).
pub trait LineValue {
    /// Index of the header line.
    fn line(&self) -> u16;
}

impl LineValue for Via {
    fn line(&self) -> u16 {
        self.line
    }
}

impl LineValue for Entry {
    fn line(&self) -> u16 {
        self.line
    }
}

/// Iterator over the header fields of a [`Message`], as text.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    message: Message<'a>,
    lines: std::slice::Iter<'a, Line>,
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;
    fn next(&mut self) -> Option<Header<'a>> {
        let line = self.lines.next()?;
        Some(Header {
            name: self.message.text(line.name),
            value: self.message.text(line.value),
            kind: line.kind,
        })
    }
}

/// A message parsed with a scratch of its own (allocated): for tests and tools, not for a hot
/// path. Its [`Parsed`] is reachable through `Deref` (`len()`, `content_length()`).
#[derive(Debug)]
pub struct OwnedMessage<'a> {
    buf: &'a [u8],
    parsed: Parsed,
}

impl<'a> OwnedMessage<'a> {
    pub(crate) fn new(buf: &'a [u8], parsed: Parsed) -> OwnedMessage<'a> {
        OwnedMessage { buf, parsed }
    }

    /// The message.
    pub fn message(&self) -> Message<'_> {
        Message {
            buf: self.buf,
            parsed: &self.parsed,
        }
    }
}

impl std::ops::Deref for OwnedMessage<'_> {
    type Target = Parsed;
    fn deref(&self) -> &Parsed {
        &self.parsed
    }
}
