//! HTTP/1.x as pure code: framing one request out of the bytes read so far (httparse for the
//! head, `Content-Length` for the body), within fixed limits, and encoding a response.
//!
//! One request per connection: every response says `Connection: close`. Anything the server does
//! not take (a head or body over the limits, chunked bodies, bad syntax) becomes the status to
//! answer; nothing a client sends can make this panic or buffer past the limits.

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body (a JSON-RPC request; the FIFO's limit is larger, but nobody sends that).
pub const MAX_BODY: usize = 64 * 1024;
/// Most headers in a request.
const MAX_HEADERS: usize = 32;

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`...
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// The `Authorization` header, when there is one.
    pub authorization: Option<String>,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

/// What the bytes read so far make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed; `expect_continue`: the head is complete and the client waits for
    /// `100 Continue` before it sends the body.
    Incomplete {
        /// The client sent `Expect: 100-continue` and the body is still to come.
        expect_continue: bool,
    },
    /// A whole request.
    Complete(Request),
    /// Not a request this server takes: answer this status and close.
    Refused(u16),
}

/// Frames the request at the start of `buf` (what was read so far).
pub fn parse(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Parse::Refused(431),
        Ok(httparse::Status::Partial) => {
            return Parse::Incomplete {
                expect_continue: false,
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Parse::Refused(431),
        Err(_) => return Parse::Refused(400),
    };
    if head_len > MAX_HEAD {
        return Parse::Refused(431);
    }
    let mut length = 0usize;
    let mut authorization = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = || std::str::from_utf8(h.value).map(str::trim);
        if h.name.eq_ignore_ascii_case("content-length") {
            match value().ok().and_then(|v| v.parse::<usize>().ok()) {
                Some(n) if n <= MAX_BODY => length = n,
                Some(_) => return Parse::Refused(413),
                None => return Parse::Refused(400),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parse::Refused(411);
        } else if h.name.eq_ignore_ascii_case("authorization") {
            authorization = value().ok().map(str::to_string);
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value().is_ok_and(|v| v.eq_ignore_ascii_case("100-continue"));
        }
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parse::Refused(400);
    };
    let body = &buf[head_len..];
    if body.len() < length {
        return Parse::Incomplete { expect_continue };
    }
    Parse::Complete(Request {
        method: method.to_string(),
        target: target.to_string(),
        authorization,
        body: body[..length].to_vec(),
    })
}

/// The reason phrase of the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// `Content-Type` (none without a body).
    pub content_type: &'static str,
    /// More headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text response (the reason phrase and `detail`).
    pub fn text(status: u16, detail: &str) -> Response {
        let mut body = reason(status).to_string();
        if !detail.is_empty() {
            body.push_str(": ");
            body.push_str(detail);
        }
        body.push('\n');
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.into_bytes(),
        }
    }

    /// A JSON response.
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    /// The same response with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if !self.body.is_empty() {
            head.push_str(&format!("Content-Type: {}\r\n", self.content_type));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n",
            self.body.len()
        ));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(text: &[u8]) -> Request {
        match parse(text) {
            Parse::Complete(r) => r,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(text)),
        }
    }

    #[test]
    fn a_post_with_its_body_byte_by_byte() {
        let text = b"POST /mi HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                     Authorization: Basic dTpw\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        for cut in 0..text.len() {
            assert_eq!(
                parse(&text[..cut]),
                Parse::Incomplete {
                    expect_continue: false
                },
                "{cut}"
            );
        }
        let r = complete(text);
        assert_eq!((r.method.as_str(), r.target.as_str()), ("POST", "/mi"));
        assert_eq!(r.authorization.as_deref(), Some("Basic dTpw"));
        assert_eq!(r.body, b"{\"a\":1}");
        // Bytes after the body (a pipelined request) are not taken.
        let mut more = text.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(complete(&more).body, b"{\"a\":1}");
    }

    #[test]
    fn get_without_body_and_expect_continue() {
        let r = complete(b"GET /mi/which?command=ps HTTP/1.0\r\n\r\n");
        assert_eq!(r.target, "/mi/which?command=ps");
        assert!(r.body.is_empty());
        assert_eq!(
            parse(b"POST /mi HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"),
            Parse::Incomplete {
                expect_continue: true
            }
        );
    }

    #[test]
    fn what_is_refused_and_with_which_status() {
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (b"garbage\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(), 400),
            (big_head.into_bytes(), 431),
            (many.into_bytes(), 431),
            (
                format!(
                    "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                    MAX_BODY + 1
                )
                .into_bytes(),
                413,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(),
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                411,
            ),
            (vec![0xff; 64], 400),
        ];
        for (text, status) in cases {
            assert_eq!(
                parse(&text),
                Parse::Refused(status),
                "{:?}",
                String::from_utf8_lossy(&text[..text.len().min(60)])
            );
        }
    }

    #[test]
    fn responses_encode_with_length_and_close() {
        let r = Response::json(200, b"{}".to_vec()).with_header("X-A", "b");
        assert_eq!(
            String::from_utf8(r.encode()).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\
             Connection: close\r\nX-A: b\r\n\r\n{}"
        );
        let r = Response::text(403, "10.0.0.1 is not allowed");
        assert_eq!(r.body, b"Forbidden: 10.0.0.1 is not allowed\n");
        let empty = Response {
            status: 202,
            content_type: "",
            headers: vec![],
            body: vec![],
        };
        assert_eq!(
            empty.encode(),
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
}
