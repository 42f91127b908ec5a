//! The few parts of a SIP URI (RFC 3261 §19.1) the relay acts on: scheme, whether it has a user
//! part, host, port, and the `transport`, `lr` and `sk` parameters. Found in one walk over the
//! bytes of a Request-URI or of a Route / Record-Route entry (`name-addr`), as spans into the
//! message; nothing is copied or allocated.

use crate::sip::Span;
use shm::Proto;

/// A parsed `sip:` or `sips:` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Uri {
    /// The URI itself (inside the `<...>` of a name-addr).
    pub span: Span,
    /// `sips:`.
    pub secure: bool,
    /// There is a user part (`user@`).
    pub user: bool,
    /// The host as written (an IPv6 reference keeps its brackets).
    pub host: Span,
    /// Host and port as written.
    pub hostport: Span,
    /// The port, when written.
    pub port: Option<u16>,
    /// The `transport` parameter.
    pub transport: Option<UriTransport>,
    /// sipsockd's `sk` parameter (its value).
    pub token: Option<Span>,
}

/// A `transport` parameter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UriTransport {
    /// One of the five SIP transports sipsockd serves.
    Known(Proto),
    /// Any other (`sctp`, ...).
    Other,
}

impl Uri {
    /// The transport a request to this URI uses: the `transport` parameter, else TLS for `sips:`,
    /// else UDP (no DNS here: RFC 3263's NAPTR step is the caller's configuration's business).
    /// `None` for a transport sipsockd cannot send over.
    pub fn proto(&self) -> Option<Proto> {
        match self.transport {
            Some(UriTransport::Known(p)) => Some(p),
            Some(UriTransport::Other) => None,
            None if self.secure => Some(Proto::Tls),
            None => Some(Proto::Udp),
        }
    }

    /// The port, else the default of the URI's transport.
    pub fn port_or_default(&self) -> u16 {
        self.port
            .unwrap_or_else(|| self.proto().unwrap_or(Proto::Udp).default_port())
    }
}

/// Parse the Request-URI `span` of `buf`. `None` when it is not a `sip:`/`sips:` URI with a host.
pub(crate) fn parse_uri(buf: &[u8], span: Span) -> Option<Uri> {
    let bytes = buf.get(span.range())?;
    parse_at(bytes, span.start as usize)
}

/// Parse a Route or Record-Route entry (`[display-name] <URI> *(;param)`; a bare URI is read
/// whole). `None` when its URI is not a `sip:`/`sips:` URI with a host.
pub(crate) fn parse_entry(buf: &[u8], span: Span) -> Option<Uri> {
    let bytes = buf.get(span.range())?;
    let base = span.start as usize;
    // The usual form, and the one sipsockd writes: no display name.
    if let Some(inner) = bytes.strip_prefix(b"<") {
        let end = inner.iter().position(|c| *c == b'>')?;
        return parse_at(inner.get(..end)?, base + 1);
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in bytes.iter().enumerate() {
        if quoted {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => quoted = true,
            b'<' => {
                let inner = bytes.get(i + 1..)?;
                let end = inner.iter().position(|c| *c == b'>')?;
                return parse_at(inner.get(..end)?, base + i + 1);
            }
            _ => {}
        }
    }
    parse_at(bytes, base)
}

/// Parse `bytes`, which start at offset `base` of the message.
fn parse_at(bytes: &[u8], base: usize) -> Option<Uri> {
    let span = |from: usize, to: usize| Span::new(base + from, base + to);
    let colon = bytes.iter().position(|b| *b == b':')?;
    let scheme = bytes.get(..colon)?;
    let secure = if scheme.eq_ignore_ascii_case(b"sip") {
        false
    } else if scheme.eq_ignore_ascii_case(b"sips") {
        true
    } else {
        return None;
    };
    let after = colon + 1;
    let rest = bytes.get(after..)?;
    // `@` cannot appear in a host, a port, URI parameters or headers: one there ends the userinfo.
    let (user, host_at) = match rest.iter().position(|b| *b == b'@') {
        Some(0) => return None,
        Some(at) => (true, after + at + 1),
        None => (false, after),
    };
    let hostpart = bytes.get(host_at..)?;
    let host_len = if hostpart.first() == Some(&b'[') {
        hostpart.iter().position(|b| *b == b']')? + 1
    } else {
        hostpart
            .iter()
            .position(|b| matches!(b, b':' | b';' | b'?'))
            .unwrap_or(hostpart.len())
    };
    if host_len == 0 {
        return None;
    }
    let mut at = host_at + host_len;
    let mut port = None;
    if bytes.get(at) == Some(&b':') {
        let digits = bytes.get(at + 1..)?;
        let n = digits
            .iter()
            .position(|b| matches!(b, b';' | b'?'))
            .unwrap_or(digits.len());
        port = Some(parse_port(digits.get(..n)?)?);
        at += 1 + n;
    }
    let hostport = span(host_at, at);
    let mut uri = Uri {
        span: span(0, bytes.len()),
        secure,
        user,
        host: span(host_at, host_at + host_len),
        hostport,
        port,
        transport: None,
        token: None,
    };
    // Parameters, up to the headers.
    let params_end = bytes
        .get(at..)?
        .iter()
        .position(|b| *b == b'?')
        .map_or(bytes.len(), |q| at + q);
    let mut p = at;
    while bytes.get(p) == Some(&b';') {
        let start = p + 1;
        let len = bytes
            .get(start..params_end)?
            .iter()
            .position(|b| *b == b';')
            .unwrap_or(params_end - start);
        let param = bytes.get(start..start + len)?;
        let (name, value) = match param.iter().position(|b| *b == b'=') {
            Some(eq) => (param.get(..eq)?, Some((start + eq + 1, start + len))),
            None => (param, None),
        };
        if name.eq_ignore_ascii_case(b"transport") {
            let v = value.and_then(|(a, b)| bytes.get(a..b)).unwrap_or_default();
            uri.transport = Some(transport_of(v));
        } else if name.eq_ignore_ascii_case(b"sk") {
            if let Some((a, b)) = value {
                uri.token.get_or_insert(span(a, b));
            }
        }
        p = start + len;
    }
    Some(uri)
}

fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok()
}

fn transport_of(v: &[u8]) -> UriTransport {
    Proto::ALL
        .into_iter()
        .find(|p| v.eq_ignore_ascii_case(p.as_str().as_bytes()))
        .map_or(UriTransport::Other, UriTransport::Known)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(buf: &[u8], s: Span) -> &str {
        std::str::from_utf8(&buf[s.range()]).unwrap()
    }

    type Parts = (bool, bool, String, Option<u16>, Option<UriTransport>);

    fn uri(s: &str) -> Option<Parts> {
        let u = parse_uri(s.as_bytes(), Span::new(0, s.len()))?;
        Some((
            u.secure,
            u.user,
            text(s.as_bytes(), u.host).to_string(),
            u.port,
            u.transport,
        ))
    }

    #[test]
    fn request_uris() {
        use UriTransport::*;
        assert_eq!(
            uri("sip:alice@atlanta.com"),
            Some((false, true, "atlanta.com".into(), None, None))
        );
        assert_eq!(
            uri("SIPS:[2001:db8::1]:5061;transport=TCP?subject=x"),
            Some((
                true,
                false,
                "[2001:db8::1]".into(),
                Some(5061),
                Some(Known(Proto::Tcp))
            ))
        );
        assert_eq!(
            uri("sip:+1555;npdi@10.0.0.1:5070;user=phone;transport=sctp"),
            Some((false, true, "10.0.0.1".into(), Some(5070), Some(Other)))
        );
        assert_eq!(
            uri("sip:a:secret@h;lr"),
            Some((false, true, "h".into(), None, None))
        );
        for bad in [
            "tel:+1555",
            "sip:",
            "sip:@h",
            "sip:h:99999",
            "sip:h:5x",
            "sip:[::1",
            "sip:h:",
            "",
            "urn:x",
        ] {
            assert_eq!(uri(bad), None, "{bad}");
        }
        let s = b"sip:h;sk=abc;lr;transport=ws";
        let u = parse_uri(s, Span::new(0, s.len())).unwrap();
        assert_eq!(text(s, u.token.unwrap()), "abc");
        assert_eq!(u.proto(), Some(Proto::Ws));
        assert_eq!(u.port_or_default(), 80);
        assert_eq!(text(s, u.hostport), "h");
    }

    #[test]
    fn entries() {
        let s = b"xx \"Bob <x>\" <sip:10.0.0.1:5060;lr;sk=tok>;foo=bar";
        let u = parse_entry(s, Span::new(3, s.len())).unwrap();
        assert_eq!(text(s, u.span), "sip:10.0.0.1:5060;lr;sk=tok");
        assert_eq!(text(s, u.hostport), "10.0.0.1:5060");
        assert_eq!(text(s, u.token.unwrap()), "tok");
        assert_eq!(u.proto(), Some(Proto::Udp));
        let s = b"sip:p.example;lr";
        let u = parse_entry(s, Span::new(0, s.len())).unwrap();
        assert_eq!(text(s, u.host), "p.example");
        assert_eq!(u.port_or_default(), 5060);
        let s = b"<sips:p.example>";
        let u = parse_entry(s, Span::new(0, s.len())).unwrap();
        assert_eq!((u.proto(), u.port_or_default()), (Some(Proto::Tls), 5061));
        assert!(parse_entry(b"<sip:h", Span::new(0, 6)).is_none());
        assert!(parse_entry(b"\"<sip:h>", Span::new(0, 8)).is_none());
    }
}
