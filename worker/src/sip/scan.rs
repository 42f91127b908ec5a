//! The single scan: start line, header lines, the values later steps need, in one pass.
//!
//! The fast path walks the header section once, line by line: a line's end is found by a loop
//! that stops only on control bytes (so it also checks that there are none), its name is looked up
//! in O(1) ([`HeaderKind::of_bytes`]), and the values of the kinds that matter are parsed right
//! there from the bytes just scanned. UTF-8 is checked once over the whole header section at the
//! end. Nothing is allocated; limits ([`MAX_HEADERS`], [`MAX_VIAS`], [`MAX_ROUTES`]) refuse.
//!
//! When the fast path meets anything wrong it stops and [`classify`] (cold) names the error with
//! the precedence the parser has always had: unterminated header section, then invalid UTF-8, then
//! a control character anywhere in the header section, then the first syntax error in order.

use super::message::{CSeq, Entry, Line, NameAddr, Param, Parsed, Span, Start, Via, NO_LINE};
use super::names::{HeaderKind, Method, OptionTags};
use super::{leading_crlf_len, ParseError, MAX_HEADERS, MAX_ROUTES, MAX_VIAS};

/// Byte classes.
const CTL: u8 = 1; // stops the line scan: controls but HTAB (CR and LF included), DEL
const TOKEN: u8 = 2; // RFC 3261 token characters
const LWS: u8 = 4; // SP, HTAB, CR, LF

// Indexing in a const block is checked at compile time.
#[allow(clippy::indexing_slicing)]
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            c |= CTL;
        }
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            )
        {
            c |= TOKEN;
        }
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            c |= LWS;
        }
        t[i] = c;
        i += 1;
    }
    t
};

fn class(b: u8) -> u8 {
    // A 256-entry table indexed by a u8: `get` never fails.
    CLASS.get(usize::from(b)).copied().unwrap_or(0)
}

fn is_lws(b: u8) -> bool {
    class(b) & LWS != 0
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Eight bytes of `b` from `i`, little-endian (byte `i` lowest).
fn word(b: &[u8], i: usize) -> Option<u64> {
    let chunk = b.get(i..i.checked_add(8)?)?;
    <[u8; 8]>::try_from(chunk).ok().map(u64::from_le_bytes)
}

/// Bit 7 set in each byte of `x` that is zero. Only bytes above a zero byte can be flagged
/// wrongly (the borrow runs upward), so the lowest flag is exact.
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LO) & !x & HI
}

/// Bit 7 set in each byte of `x` below 0x20 or equal to 0x7f (controls, HTAB included); the
/// lowest flag is exact, as in [`zero_bytes`].
fn control_bytes(x: u64) -> u64 {
    (x.wrapping_sub(LO * 0x20) & !x & HI) | zero_bytes(x ^ (LO * 0x7f))
}

/// Index of the first byte of class [`CTL`] at or after `from`, eight bytes at a time.
fn find_ctl(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(x) = word(b, i) {
        let m = control_bytes(x);
        if m == 0 {
            i += 8;
            continue;
        }
        let at = i + (m.trailing_zeros() / 8) as usize;
        if b.get(at) != Some(&b'\t') {
            return Some(at);
        }
        i = at + 1;
    }
    let rest = b.get(i..)?;
    rest.iter()
        .position(|c| class(*c) & CTL != 0)
        .map(|j| i + j)
}

/// Index of the first `c` in `b[from..to]`, eight bytes at a time.
fn find_byte(b: &[u8], from: usize, to: usize, c: u8) -> Option<usize> {
    let mut i = from;
    while i + 8 <= to {
        let m = zero_bytes(word(b, i)? ^ (LO * u64::from(c)));
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let rest = b.get(i..to)?;
    rest.iter().position(|x| *x == c).map(|j| i + j)
}

/// Why the fast path stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// The header section is not complete in the buffer.
    Incomplete,
    /// Something is wrong here; [`classify`] decides what the error is.
    At(ParseError),
}

impl From<ParseError> for Fault {
    fn from(e: ParseError) -> Fault {
        Fault::At(e)
    }
}

/// Scan a datagram: the header section, then the body bounded by `Content-Length`.
pub(super) fn datagram(p: &mut Parsed, buf: &[u8]) -> Result<(), ParseError> {
    head(p, buf)?;
    let body_start = p.body_start as usize;
    let after = buf.get(body_start..).unwrap_or_default();
    let body_len = match p.content_length {
        Some(n) if n > after.len() => return Err(ParseError::ShortBody),
        Some(n) => n,
        None => after.len(),
    };
    complete(p, body_len);
    Ok(())
}

/// Record the body (it follows the header section) and the message length.
pub(super) fn complete(p: &mut Parsed, body_len: usize) {
    let start = p.body_start as usize;
    let end = start.saturating_add(body_len);
    p.body = Span::new(start, end);
    p.len = u32::try_from(end).unwrap_or(0);
}

/// Scan the header section of `buf` into `p`. `Err(Empty)` or `Err(Unterminated)` when it is not
/// all there.
pub(super) fn head(p: &mut Parsed, buf: &[u8]) -> Result<(), ParseError> {
    p.reset();
    let skip = leading_crlf_len(buf);
    if skip >= buf.len() {
        return Err(ParseError::Empty);
    }
    match scan(p, buf, skip) {
        Ok(()) => {
            let head = buf.get(skip..p.head_end as usize).unwrap_or_default();
            if std::str::from_utf8(head).is_err() {
                return Err(ParseError::NotUtf8);
            }
            Ok(())
        }
        Err(Fault::Incomplete) => Err(ParseError::Unterminated),
        Err(Fault::At(first)) => Err(classify(buf, skip, first)),
    }
}

fn scan(p: &mut Parsed, b: &[u8], skip: usize) -> Result<(), Fault> {
    p.skip = skip as u32;
    // The start line ends at its first LF (a line starting with a blank after it is not a fold:
    // it is a header line with nothing to continue).
    let (content_end, lf) = start_line_end(b, skip)?;
    p.start = start_line(b, skip, content_end)?;
    p.start_end = (lf + 1) as u32;
    let mut pos = lf + 1;
    loop {
        match b.get(pos) {
            None => return Err(Fault::Incomplete),
            Some(b'\n') => {
                p.head_end = pos as u32;
                p.body_start = (pos + 1) as u32;
                return Ok(());
            }
            Some(b'\r') => match b.get(pos + 1) {
                Some(b'\n') => {
                    p.head_end = pos as u32;
                    p.body_start = (pos + 2) as u32;
                    return Ok(());
                }
                None => return Err(Fault::Incomplete),
                Some(_) => return Err(ParseError::ControlChar.into()),
            },
            // A continuation line with no header before it.
            Some(b' ' | b'\t') => return Err(ParseError::BadHeader.into()),
            Some(_) => pos = header_line(p, b, pos)?,
        }
    }
}

/// The start line from `from`: (end of its content, index of its LF).
fn start_line_end(b: &[u8], from: usize) -> Result<(usize, usize), Fault> {
    let Some(at) = find_ctl(b, from) else {
        return Err(Fault::Incomplete);
    };
    match b.get(at) {
        Some(b'\n') => Ok((at, at)),
        Some(b'\r') => match b.get(at + 1) {
            Some(b'\n') => Ok((at, at + 1)),
            None => Err(Fault::Incomplete),
            Some(_) => Err(ParseError::ControlChar.into()),
        },
        _ => Err(ParseError::ControlChar.into()),
    }
}

/// Where a logical header line from `from` (just after its colon) ends: (index of its LF, whether
/// it was folded). Stops at the first control byte; only CRLF and LF (with a fold after them, or
/// not) may be there.
fn logical_end(b: &[u8], from: usize) -> Result<(usize, bool), Fault> {
    let mut at = from;
    let mut folded = false;
    loop {
        let Some(mut lf) = find_ctl(b, at) else {
            return Err(Fault::Incomplete);
        };
        match b.get(lf) {
            Some(b'\n') => {}
            Some(b'\r') => match b.get(lf + 1) {
                Some(b'\n') => lf += 1,
                None => return Err(Fault::Incomplete),
                Some(_) => return Err(ParseError::ControlChar.into()),
            },
            _ => return Err(ParseError::ControlChar.into()),
        }
        match b.get(lf + 1) {
            Some(b' ' | b'\t') => {
                folded = true;
                at = lf + 2;
            }
            None => return Err(Fault::Incomplete),
            Some(_) => return Ok((lf, folded)),
        }
    }
}

/// `SIP/2.0 CODE Reason` or `METHOD Request-URI SIP/2.0` in `b[s..e]`.
pub(super) fn start_line(b: &[u8], s: usize, e: usize) -> Result<Start, ParseError> {
    let line = b.get(s..e).unwrap_or_default();
    let is_version = |v: &[u8]| v.eq_ignore_ascii_case(b"SIP/2.0");
    let looks_like_version = line
        .get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"SIP/"));
    if looks_like_version {
        let sp = line
            .iter()
            .position(|c| *c == b' ')
            .ok_or(ParseError::BadStartLine)?;
        if !is_version(line.get(..sp).unwrap_or_default()) {
            return Err(ParseError::BadVersion);
        }
        let rest = line.get(sp + 1..).unwrap_or_default();
        let (code, reason) = match rest.iter().position(|c| *c == b' ') {
            Some(i) => (
                rest.get(..i).unwrap_or_default(),
                Span::new(s + sp + 1 + i + 1, e),
            ),
            None => (rest, Span::new(e, e)),
        };
        let [a, b2, c] = code else {
            return Err(ParseError::BadStatusCode);
        };
        if !(a.is_ascii_digit() && b2.is_ascii_digit() && c.is_ascii_digit()) {
            return Err(ParseError::BadStatusCode);
        }
        let code = u16::from(a - b'0') * 100 + u16::from(b2 - b'0') * 10 + u16::from(c - b'0');
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStatusCode);
        }
        return Ok(Start::Response { code, reason });
    }
    let n = line.len();
    let sp1 = find_byte(line, 0, n, b' ');
    let sp2 = sp1.and_then(|i| find_byte(line, i + 1, n, b' '));
    let (Some(sp1), Some(sp2)) = (sp1, sp2) else {
        return Err(ParseError::BadStartLine);
    };
    if find_byte(line, sp2 + 1, n, b' ').is_some() {
        return Err(ParseError::BadStartLine);
    }
    let method = line.get(..sp1).unwrap_or_default();
    let uri_empty = sp2 == sp1 + 1;
    if !is_token(method) || uri_empty || find_byte(line, sp1 + 1, sp2, b'\t').is_some() {
        return Err(ParseError::BadStartLine);
    }
    if !is_version(line.get(sp2 + 1..).unwrap_or_default()) {
        return Err(ParseError::BadVersion);
    }
    Ok(Start::Request {
        method: Method::of(method),
        method_span: Span::new(s, s + sp1),
        uri: Span::new(s + sp1 + 1, s + sp2),
    })
}

/// RFC 3261 `token`.
pub(super) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|c| class(*c) & TOKEN != 0)
}

/// One header line from `start`; returns where the next line starts.
fn header_line(p: &mut Parsed, b: &[u8], start: usize) -> Result<usize, Fault> {
    let rest = b.get(start..).unwrap_or_default();
    let name_len = rest
        .iter()
        .position(|c| class(*c) & TOKEN == 0)
        .ok_or(Fault::Incomplete)?;
    let name_end = start + name_len;
    let mut colon = name_end;
    while matches!(b.get(colon), Some(b' ' | b'\t')) {
        colon += 1;
    }
    match b.get(colon) {
        Some(b':') if name_len > 0 => {}
        None => return Err(Fault::Incomplete),
        Some(_) => return Err(ParseError::BadHeader.into()),
    }
    let (lf, folded) = logical_end(b, colon + 1)?;
    let (vs, ve) = trim(b, colon + 1, lf);
    let kind = HeaderKind::lookup(b, start, name_len);
    let index = p.lines.len();
    if index == MAX_HEADERS {
        return Err(ParseError::TooManyHeaders.into());
    }
    // Within the capacity reserved at creation: no allocation.
    p.lines.push(Line {
        kind,
        name: Span::new(start, name_end),
        value: Span::new(vs, ve),
        end: (lf + 1) as u32,
        folded,
    });
    // MAX_HEADERS < u16::MAX, so the index fits.
    let index = index as u16;
    let k = kind as usize;
    if let Some(first) = p.first.get_mut(k) {
        if *first == NO_LINE {
            *first = index;
        }
    }
    if let Some(count) = p.count.get_mut(k) {
        *count = count.saturating_add(1);
    }
    if vs == ve {
        p.empty |= 1 << k;
    }
    match kind {
        HeaderKind::Via => via_values(p, b, vs, ve, index, simple(b, vs, ve, folded))?,
        HeaderKind::From if p.from.is_none() => {
            p.from = Some(name_addr(b, vs, ve, index, simple(b, vs, ve, folded)))
        }
        HeaderKind::To if p.to.is_none() => {
            p.to = Some(name_addr(b, vs, ve, index, simple(b, vs, ve, folded)))
        }
        HeaderKind::CSeq if p.count.get(k) == Some(&1) => p.cseq = cseq(b, vs, ve),
        HeaderKind::ContentLength => {
            let n = content_length(b.get(vs..ve).unwrap_or_default())?;
            if p.content_length.is_some_and(|m| m != n) {
                return Err(ParseError::ConflictingContentLength.into());
            }
            p.content_length = Some(n);
        }
        HeaderKind::MaxForwards if p.count.get(k) == Some(&1) => {
            p.max_forwards = digits(b.get(vs..ve).unwrap_or_default())
        }
        HeaderKind::Route => entries(&mut p.routes, b, vs, ve, index)?,
        HeaderKind::RecordRoute => entries(&mut p.record_routes, b, vs, ve, index)?,
        HeaderKind::Supported => p.supported |= option_tags(b, vs, ve),
        HeaderKind::Require => p.require |= option_tags(b, vs, ve),
        HeaderKind::ProxyRequire => p.proxy_require |= option_tags(b, vs, ve),
        _ => {}
    }
    Ok(lf + 1)
}

/// A value with no fold and no quote: commas and semicolons in it always separate, and no line
/// end is inside (the common case, parsed without tracking quotes).
fn simple(b: &[u8], vs: usize, ve: usize, folded: bool) -> bool {
    !folded && find_byte(b, vs, ve, b'"').is_none()
}

/// `b[s..e]` without leading and trailing LWS (SP, HTAB, CR, LF).
fn trim(b: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && b.get(s).is_some_and(|c| is_lws(*c)) {
        s += 1;
    }
    while e > s && b.get(e - 1).is_some_and(|c| is_lws(*c)) {
        e -= 1;
    }
    (s, e)
}

fn trim_end(b: &[u8], s: usize, mut e: usize) -> usize {
    while e > s && b.get(e - 1).is_some_and(|c| is_lws(*c)) {
        e -= 1;
    }
    e
}

fn skip_lws(b: &[u8], mut s: usize, e: usize) -> usize {
    while s < e && b.get(s).is_some_and(|c| is_lws(*c)) {
        s += 1;
    }
    s
}

/// Quote tracking as RFC 3261 `quoted-string` has it: `"` toggles, `\` escapes the next byte
/// inside quotes.
#[derive(Default)]
struct Quotes {
    quoted: bool,
    escaped: bool,
}

impl Quotes {
    /// Feed one byte; true when it is outside quotes (and not a quote or an escape itself).
    fn outside(&mut self, c: u8) -> bool {
        if self.escaped {
            self.escaped = false;
            false
        } else if self.quoted && c == b'\\' {
            self.escaped = true;
            false
        } else if c == b'"' {
            self.quoted = !self.quoted;
            false
        } else {
            !self.quoted
        }
    }
}

/// The comma-separated Via values of one header line value `b[vs..ve]`.
fn via_values(
    p: &mut Parsed,
    b: &[u8],
    vs: usize,
    ve: usize,
    line: u16,
    simple: bool,
) -> Result<(), Fault> {
    let mut pos = vs;
    loop {
        let (end, semi) = if simple {
            let end = find_byte(b, pos, ve, b',').unwrap_or(ve);
            (end, find_byte(b, pos, end, b';'))
        } else {
            value_end_quoted(b, pos, ve)
        };
        let value_end = trim_end(b, pos, end);
        if p.vias.len() == MAX_VIAS {
            return Err(ParseError::TooManyVias.into());
        }
        p.vias.push(via_value(
            b,
            pos,
            semi.unwrap_or(value_end).min(value_end),
            value_end,
            line,
            simple,
        ));
        if end == ve {
            return Ok(());
        }
        pos = skip_lws(b, end + 1, ve);
    }
}

/// Where the value from `pos` ends (the first comma outside quotes, or `ve`), and its first `;`
/// (quoted or not: the parameters of a Via have always started there).
fn value_end_quoted(b: &[u8], pos: usize, ve: usize) -> (usize, Option<usize>) {
    let mut quotes = Quotes::default();
    let mut semi = None;
    let mut i = pos;
    while i < ve {
        let c = b.get(i).copied().unwrap_or(0);
        if quotes.outside(c) && c == b',' {
            return (i, semi);
        }
        if c == b';' && semi.is_none() {
            semi = Some(i);
        }
        i += 1;
    }
    (ve, semi)
}

/// One Via value `b[s..e]` whose parameters start at `semi` (`== e` when none); `simple` as for
/// [`simple`].
fn via_value(b: &[u8], s: usize, semi: usize, e: usize, line: u16, simple: bool) -> Via {
    let mut via = Via {
        value: Span::new(s, e),
        line,
        transport: Span::new(s, s),
        sent_by: Span::new(s, s),
        host: Span::new(s, s),
        port: None,
        params: Span::new(semi, e),
        branch: None,
        rport: None,
        received: None,
        plain: true,
    };
    let sent_by_end = trim_end(b, s, semi);
    if sent_by_end != semi {
        via.plain = false;
    }
    // The protocol runs to the first blank; the sent-by is what follows, trimmed.
    let head = b.get(s..sent_by_end).unwrap_or_default();
    if let Some(blank) = head.iter().position(|c| is_lws(*c)) {
        let protocol = head.get(..blank).unwrap_or_default();
        if protocol.len() > 8
            && protocol
                .get(..8)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"SIP/2.0/"))
        {
            via.transport = Span::new(s + 8, s + blank);
        }
        let (hs, he) = trim(b, s + blank + 1, sent_by_end);
        via.sent_by = Span::new(hs, he);
        (via.host, via.port) = host_port(b, hs, he);
    }
    if !simple && head.iter().any(|c| matches!(c, b'\r' | b'\n')) {
        via.plain = false;
    }
    if semi < e {
        via_params(&mut via, b, semi + 1, e, simple);
    }
    via
}

/// `host[:port]` in `b[s..e]`: the host and the port when one is written and valid.
fn host_port(b: &[u8], s: usize, e: usize) -> (Span, Option<u16>) {
    let text = b.get(s..e).unwrap_or_default();
    let colon = if text.first() == Some(&b'[') {
        match text.iter().position(|c| *c == b']') {
            Some(close) if text.get(close + 1) == Some(&b':') => Some(close + 1),
            _ => None,
        }
    } else {
        text.iter().position(|c| *c == b':')
    };
    if let Some(colon) = colon {
        let port = text.get(colon + 1..).unwrap_or_default();
        if (1..=5).contains(&port.len()) {
            if let Some(n) = digits(port).and_then(|n| u16::try_from(n).ok()) {
                return (Span::new(s, s + colon), Some(n));
            }
        }
    }
    (Span::new(s, e), None)
}

/// The parameters of a Via value, from just after its first `;` to `e`.
fn via_params(via: &mut Via, b: &[u8], mut pos: usize, e: usize, simple: bool) {
    let mut rports = 0;
    let mut receiveds = 0;
    loop {
        let (found, end) = next_param(b, pos, e, simple);
        match found {
            None => via.plain = false,
            Some(Found { param, name, exact }) => {
                via.plain &= exact;
                if is_named(b, name, b"branch") {
                    via.branch.get_or_insert(param);
                } else if is_named(b, name, b"rport") {
                    via.rport.get_or_insert(param);
                    rports += 1;
                    // A reply writes a filled rport in lower case.
                    if param.value.is_none() && b.get(name.range()) != Some(b"rport") {
                        via.plain = false;
                    }
                } else if is_named(b, name, b"received") {
                    via.received.get_or_insert(param);
                    receiveds += 1;
                }
            }
        }
        if end >= e {
            break;
        }
        pos = end + 1;
    }
    if rports > 1 || receiveds > 1 {
        via.plain = false;
    }
}

/// One parameter found by [`next_param`].
struct Found {
    param: Param,
    /// Its name: before the `=`, trimmed.
    name: Span,
    /// It needed no trimming and holds no line end.
    exact: bool,
}

/// The parameter starting at `pos` (up to the next `;` outside quotes, or `e`; `None` when
/// blank), and where it ends; `simple` as for [`simple`].
fn next_param(b: &[u8], pos: usize, e: usize, simple: bool) -> (Option<Found>, usize) {
    let (end, eq, line_end) = if simple {
        let end = find_byte(b, pos, e, b';').unwrap_or(e);
        (end, find_byte(b, pos, end, b'='), false)
    } else {
        param_end_quoted(b, pos, e)
    };
    let (s, t) = trim(b, pos, end);
    if s == t {
        return (None, end);
    }
    // `=` is not a blank, so when there is one it is inside `s..t`.
    let (name, value) = match eq {
        Some(at) => {
            let (ns, ne) = trim(b, s, at);
            let (vs, ve) = trim(b, at + 1, t);
            (Span::new(ns, ne), Some(Span::new(vs, ve)))
        }
        None => (Span::new(s, t), None),
    };
    let found = Found {
        param: Param {
            span: Span::new(s, t),
            value,
        },
        name,
        exact: s == pos && t == end && !line_end,
    };
    (Some(found), end)
}

/// The parameters of `b[pos..e]` (the text after a `;`), as [`super::Message::params`] gives them.
pub(super) fn params_in(
    b: &[u8],
    pos: usize,
    e: usize,
) -> impl Iterator<Item = (Param, Span)> + '_ {
    let mut next = Some(pos);
    std::iter::from_fn(move || loop {
        let pos = next?;
        let (found, end) = next_param(b, pos, e, false);
        next = (end < e).then_some(end + 1);
        if let Some(found) = found {
            return Some((found.param, found.name));
        }
    })
}

/// Where the parameter from `pos` ends (the first `;` outside quotes, or `e`), its first `=`, and
/// whether it holds a line end.
fn param_end_quoted(b: &[u8], pos: usize, e: usize) -> (usize, Option<usize>, bool) {
    let mut quotes = Quotes::default();
    let mut eq = None;
    let mut line_end = false;
    let mut i = pos;
    while i < e {
        let c = b.get(i).copied().unwrap_or(0);
        if quotes.outside(c) && c == b';' {
            return (i, eq, line_end);
        }
        if c == b'=' && eq.is_none() {
            eq = Some(i);
        }
        line_end |= matches!(c, b'\r' | b'\n');
        i += 1;
    }
    (e, eq, line_end)
}

fn is_named(b: &[u8], name: Span, want: &[u8]) -> bool {
    b.get(name.range())
        .is_some_and(|n| n.eq_ignore_ascii_case(want))
}

/// A From or To value `b[s..e]` and its `tag` parameter: the parameters follow the `>` of a
/// bracketed address, or start at the first `;` outside quotes.
fn name_addr(b: &[u8], s: usize, e: usize, line: u16, simple: bool) -> NameAddr {
    let open = if simple {
        let semi = find_byte(b, s, e, b';');
        match find_byte(b, s, semi.unwrap_or(e), b'<') {
            Some(at) => Some((at, b'<')),
            None => semi.map(|at| (at, b';')),
        }
    } else {
        addr_end_quoted(b, s, e)
    };
    let params = match open {
        // URIs never hold an unescaped '>'; the parameters follow it.
        Some((at, b'<')) => find_byte(b, at, e, b'>').map(|j| j + 1),
        Some((at, _)) => Some(at),
        None => None,
    };
    let mut tag = None;
    // Parameters are there only when the text after the address starts with `;`.
    if let Some(at) = params.map(|at| skip_lws(b, at, e)) {
        if b.get(at) == Some(&b';') && at < e {
            let mut pos = at + 1;
            loop {
                let (found, end) = next_param(b, pos, e, simple);
                if let Some(found) = found.filter(|f| is_named(b, f.name, b"tag")) {
                    tag = Some(found.param);
                    break;
                }
                if end >= e {
                    break;
                }
                pos = end + 1;
            }
        }
    }
    NameAddr {
        line,
        value: Span::new(s, e),
        tag,
    }
}

/// The first `<` or `;` outside quotes in `b[s..e]`, and which.
fn addr_end_quoted(b: &[u8], s: usize, e: usize) -> Option<(usize, u8)> {
    let mut quotes = Quotes::default();
    let mut i = s;
    while i < e {
        let c = b.get(i).copied().unwrap_or(0);
        if quotes.outside(c) && matches!(c, b'<' | b';') {
            return Some((i, c));
        }
        i += 1;
    }
    None
}

/// `number LWS method`, number below 2^31, method a token.
fn cseq(b: &[u8], s: usize, e: usize) -> Option<CSeq> {
    let value = b.get(s..e).unwrap_or_default();
    let n = value.iter().position(|c| !c.is_ascii_digit())?;
    if n == 0 || !value.get(n).is_some_and(|c| is_lws(*c)) {
        return None;
    }
    let number = digits(value.get(..n)?).filter(|n| *n < 1 << 31)?;
    let (ms, me) = trim(b, s + n, e);
    is_token(b.get(ms..me)?).then_some(CSeq {
        number,
        method: Span::new(ms, me),
    })
}

/// A non-empty run of ASCII digits that fits in 32 bits (leading zeros allowed).
fn digits(text: &[u8]) -> Option<u32> {
    if text.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for c in text {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u32::from(c - b'0'))?;
    }
    Some(n)
}

fn content_length(text: &[u8]) -> Result<usize, ParseError> {
    if text.is_empty() {
        return Err(ParseError::BadContentLength);
    }
    let mut n: usize = 0;
    for c in text {
        if !c.is_ascii_digit() {
            return Err(ParseError::BadContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(c - b'0')))
            .ok_or(ParseError::BadContentLength)?;
    }
    Ok(n)
}

/// The comma-separated entries of a Route or Record-Route value (commas inside quotes or `<...>`
/// do not separate).
fn entries(table: &mut Vec<Entry>, b: &[u8], vs: usize, ve: usize, line: u16) -> Result<(), Fault> {
    let mut pos = vs;
    loop {
        let mut quotes = Quotes::default();
        let mut angle = false;
        let mut end = ve;
        let mut i = pos;
        while i < ve {
            let c = b.get(i).copied().unwrap_or(0);
            if quotes.outside(c) {
                match c {
                    b'<' => angle = true,
                    b'>' => angle = false,
                    b',' if !angle => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        if table.len() == MAX_ROUTES {
            return Err(ParseError::TooManyRoutes.into());
        }
        table.push(Entry {
            value: Span::new(pos, trim_end(b, pos, end)),
            line,
        });
        if end == ve {
            return Ok(());
        }
        pos = skip_lws(b, end + 1, ve);
    }
}

/// The option tags of one Supported / Require / Proxy-Require value.
fn option_tags(b: &[u8], s: usize, e: usize) -> OptionTags {
    let mut tags = OptionTags::NONE;
    for tag in b.get(s..e).unwrap_or_default().split(|c| *c == b',') {
        let (ts, te) = trim(tag, 0, tag.len());
        if let Some(tag) = tag.get(ts..te).filter(|t| !t.is_empty()) {
            tags |= OptionTags::of(tag);
        }
    }
    tags
}

/// The error of a header section the fast path stopped in, by precedence: not terminated, not
/// UTF-8, a control character, then `first` (the first syntax error met, in order).
#[cold]
#[inline(never)]
pub(super) fn classify(buf: &[u8], skip: usize, first: ParseError) -> ParseError {
    let rest = buf.get(skip..).unwrap_or_default();
    let Some(end) = head_end(rest) else {
        return ParseError::Unterminated;
    };
    let head = rest.get(..end).unwrap_or_default();
    if std::str::from_utf8(head).is_err() {
        return ParseError::NotUtf8;
    }
    if has_control(head) {
        return ParseError::ControlChar;
    }
    first
}

/// The start of the empty line of `rest` (which starts with the start line): the first line that
/// is empty or a lone CR.
pub(super) fn head_end(rest: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, c) in rest.iter().enumerate() {
        if *c != b'\n' {
            continue;
        }
        if i == line_start || (i == line_start + 1 && rest.get(line_start) == Some(&b'\r')) {
            return Some(line_start);
        }
        line_start = i + 1;
    }
    None
}

/// A control character but HTAB, or a CR not followed by LF.
pub(super) fn has_control(text: &[u8]) -> bool {
    text.iter().enumerate().any(|(i, c)| match c {
        b'\t' | b'\n' => false,
        b'\r' => text.get(i + 1) != Some(&b'\n'),
        c => c.is_ascii_control(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for b in 0..=255u8 {
            let ctl = (b.is_ascii_control() && b != b'\t') as u8;
            assert_eq!(class(b) & CTL, ctl * CTL, "{b}");
        }
        assert!(is_token(b"Call-ID") && !is_token(b"A B") && !is_token(b""));
    }

    proptest::proptest! {
        /// The word-at-a-time searches find what a byte loop finds.
        #[test]
        fn word_searches_agree_with_byte_loops(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b'a', b'\t', b'\r', b'\n', 0, 0x7f, 0x80, 0xff, b';', b' ', 0x1f, 0x20]),
                0..40,
            ),
            from in 0usize..40,
            to in 0usize..40,
            c in proptest::sample::select(vec![b';', b'a', 0u8, 0xff]),
        ) {
            let from = from.min(bytes.len());
            let naive_ctl = bytes[from..].iter().position(|b| class(*b) & CTL != 0).map(|i| i + from);
            proptest::prop_assert_eq!(find_ctl(&bytes, from), naive_ctl);
            let to = to.clamp(from, bytes.len());
            let naive = bytes[from..to].iter().position(|b| *b == c).map(|i| i + from);
            proptest::prop_assert_eq!(find_byte(&bytes, from, to, c), naive);
        }
    }

    #[test]
    fn head_end_finds_the_empty_line() {
        assert_eq!(head_end(b"A\r\n\r\nx"), Some(3));
        assert_eq!(head_end(b"A\n\nx"), Some(2));
        assert_eq!(head_end(b"A\n \n\n"), Some(4));
        assert_eq!(head_end(b"A\r\n\rx\n"), None);
        assert_eq!(head_end(b"A\r\n"), None);
    }

    #[test]
    fn host_and_port() {
        let b = b"h:5060 [::1]:7 [::1] h:x h:70000 :1 h:";
        let at = |s: &str| {
            let i = b.windows(s.len()).position(|w| w == s.as_bytes()).unwrap();
            let (host, port) = host_port(b, i, i + s.len());
            (std::str::from_utf8(&b[host.range()]).unwrap(), port)
        };
        assert_eq!(at("h:5060"), ("h", Some(5060)));
        assert_eq!(at("[::1]:7"), ("[::1]", Some(7)));
        assert_eq!(at("[::1]"), ("[::1]", None));
        assert_eq!(at("h:x"), ("h:x", None));
        assert_eq!(at("h:70000"), ("h:70000", None));
        assert_eq!(at(":1"), ("", Some(1)));
        assert_eq!(at("h:"), ("h:", None));
    }
}
