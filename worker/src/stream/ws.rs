//! The WebSocket opening handshake of `ws` and `wss` connections (RFC 6455 §4.2, RFC 7118 §4).
//!
//! Pure: given the bytes a client sent so far, either more are needed, or the upgrade is accepted
//! (the `101` response to send, and how many bytes the request took: what follows is already
//! WebSocket frames), or refused (an HTTP error response to send before closing). A request must
//! ask for the `sip` subprotocol, which the `101` echoes. The frames after the handshake are
//! tungstenite's business.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use tungstenite::handshake::derive_accept_key;

/// The subprotocol of SIP over WebSocket (RFC 7118 §4.1).
pub(crate) const SUBPROTOCOL: &str = "sip";

/// At most this many header fields in an upgrade request.
const MAX_HEADERS: usize = 64;

/// What to do with the bytes of an upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// The request is not complete yet.
    Incomplete,
    /// Send `response` (a `101`), then speak WebSocket; the request was the first `consumed`
    /// bytes.
    Accept {
        /// The `101 Switching Protocols` response.
        response: Vec<u8>,
        /// Length of the request.
        consumed: usize,
    },
    /// Send `response` (an HTTP error), then close.
    Refuse {
        /// The error response.
        response: Vec<u8>,
        /// Why, for the log.
        why: String,
    },
}

/// Decide on an upgrade request held in `buf`; a request over `max_len` bytes is refused.
pub(crate) fn upgrade(buf: &[u8], max_len: usize) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_len => {
            return refuse(
                431,
                "Request Header Fields Too Large",
                "",
                "request too large",
            )
        }
        Ok(httparse::Status::Partial) => return Upgrade::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(
                431,
                "Request Header Fields Too Large",
                "",
                "too many headers",
            )
        }
        Err(e) => return refuse(400, "Bad Request", "", &format!("not HTTP: {e}")),
    };
    if consumed > max_len {
        return refuse(
            431,
            "Request Header Fields Too Large",
            "",
            "request too large",
        );
    }
    if req.method != Some("GET") {
        return refuse(405, "Method Not Allowed", "Allow: GET\r\n", "not a GET");
    }
    if req.version != Some(1) {
        return refuse(400, "Bad Request", "", "not HTTP/1.1");
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let values = |name: &'static str| values(headers, name);
    let has_token = |name: &'static str, token: &str| has_token(headers, name, token);
    if !has_token("Upgrade", "websocket") {
        return refuse(
            426,
            "Upgrade Required",
            "Upgrade: websocket\r\n",
            "no Upgrade: websocket",
        );
    }
    if !has_token("Connection", "upgrade") {
        return refuse(400, "Bad Request", "", "no Connection: upgrade");
    }
    if !values("Sec-WebSocket-Version").any(|v| v.trim() == "13") {
        return refuse(
            426,
            "Upgrade Required",
            "Sec-WebSocket-Version: 13\r\n",
            "not WebSocket version 13",
        );
    }
    let mut keys = values("Sec-WebSocket-Key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) if valid_key(k.trim()) => k.trim(),
        _ => return refuse(400, "Bad Request", "", "bad Sec-WebSocket-Key"),
    };
    if !has_token("Sec-WebSocket-Protocol", SUBPROTOCOL) {
        return refuse(
            400,
            "Bad Request",
            "",
            "the sip subprotocol was not requested",
        );
    }
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\
         Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\
         Server: sipsockd/{}\r\n\r\n",
        derive_accept_key(key.as_bytes()),
        env!("CARGO_PKG_VERSION")
    );
    Upgrade::Accept {
        response: response.into_bytes(),
        consumed,
    }
}

/// The values of header `name` that are text.
fn values<'h>(
    headers: &'h [httparse::Header<'h>],
    name: &'static str,
) -> impl Iterator<Item = &'h str> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

/// True when a comma-separated list in header `name` (possibly over several lines) has `token`.
fn has_token(headers: &[httparse::Header<'_>], name: &'static str, token: &str) -> bool {
    values(headers, name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn refuse(code: u16, reason: &str, extra: &str, why: &str) -> Upgrade {
    Upgrade::Refuse {
        response: format!(
            "HTTP/1.1 {code} {reason}\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes(),
        why: why.to_string(),
    }
}

/// RFC 6455 §4.1: the base64 of 16 bytes (24 characters, the last two `==`).
fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && key.ends_with("==")
        && b.iter()
            .take(22)
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(extra: &str) -> String {
        format!(
            "GET /sip HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn status(u: &Upgrade) -> String {
        let r = match u {
            Upgrade::Accept { response, .. } | Upgrade::Refuse { response, .. } => response,
            Upgrade::Incomplete => return "incomplete".into(),
        };
        String::from_utf8_lossy(r)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn accepts_the_sip_subprotocol_and_echoes_it() {
        let req = request("Sec-WebSocket-Protocol: chat, sip\r\n");
        let mut bytes = req.clone().into_bytes();
        bytes.extend_from_slice(b"\x81\x85frame");
        let Upgrade::Accept { response, consumed } = upgrade(&bytes, 8192) else {
            panic!("refused");
        };
        assert_eq!(consumed, req.len());
        let text = String::from_utf8(response).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        // The RFC 6455 §1.3 example key and its accept value.
        assert!(
            text.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nSec-WebSocket-Protocol: sip\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
        // Several header lines make one list.
        let two = request("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: sip\r\n");
        assert!(matches!(
            upgrade(two.as_bytes(), 8192),
            Upgrade::Accept { .. }
        ));
    }

    #[test]
    fn waits_for_the_whole_request() {
        let req = request("Sec-WebSocket-Protocol: sip\r\n");
        for cut in 0..req.len() {
            assert_eq!(upgrade(&req.as_bytes()[..cut], 8192), Upgrade::Incomplete);
        }
    }

    #[test]
    fn refusals() {
        let cases = [
            (request(""), "HTTP/1.1 400 Bad Request"),
            (
                request("Sec-WebSocket-Protocol: chat\r\n"),
                "HTTP/1.1 400 Bad Request",
            ),
            (
                request("Sec-WebSocket-Protocol: sip\r\n").replace("Version: 13", "Version: 8"),
                "HTTP/1.1 426 Upgrade Required",
            ),
            (
                request("Sec-WebSocket-Protocol: sip\r\n").replace("Upgrade: websocket", "X: y"),
                "HTTP/1.1 426 Upgrade Required",
            ),
            (
                request("Sec-WebSocket-Protocol: sip\r\n").replace("GET", "POST"),
                "HTTP/1.1 405 Method Not Allowed",
            ),
            (
                request("Sec-WebSocket-Protocol: sip\r\n").replace(KEY, "short"),
                "HTTP/1.1 400 Bad Request",
            ),
            (
                request("Sec-WebSocket-Protocol: sip\r\n").replace("HTTP/1.1", "HTTP/1.0"),
                "HTTP/1.1 400 Bad Request",
            ),
            (
                "OPTIONS sip:a SIP/2.0\r\n\r\n".to_string(),
                "HTTP/1.1 400 Bad Request",
            ),
        ];
        for (req, want) in cases {
            let u = upgrade(req.as_bytes(), 8192);
            assert!(matches!(u, Upgrade::Refuse { .. }), "{req}");
            assert_eq!(status(&u), want, "{req}");
        }
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(100));
        assert_eq!(
            status(&upgrade(long.as_bytes(), 50)),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        assert_eq!(
            status(&upgrade(b"\x16\x03\x01\x00", 8192)),
            "HTTP/1.1 400 Bad Request"
        );
    }
}
