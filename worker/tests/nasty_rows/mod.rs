//! The nasty-message table: hand-written messages that once broke, or could break, a SIP parser,
//! each with what the responder and the stream framer must make of it. Shared by `nasty.rs` (which
//! checks each row), `differential.rs` (which feeds them to the old and the new parser) and the
//! seeds of the `sip_datagram` fuzz target (`fuzz/corpus/sip_datagram/nasty-*`, checked by
//! `differential.rs`).
#![allow(dead_code)]

use worker::sip::{ParseError, MAX_HEADERS, MAX_VIAS};

pub const CONTACT: &str = "198.51.100.1:5060";
pub const SOURCE: &str = "192.0.2.7:5062";
pub const MIB: usize = 1 << 20;

/// What the responder must do with a row.
#[derive(Clone, Copy)]
pub enum Want {
    Malformed,
    Ignored,
    /// A reply with this status code, then the row's own check of the reply text.
    Replied(u16, fn(&str)),
}

/// What `frame_len` must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `Complete` with the whole row as one message.
    Whole,
    /// `Complete` with the first `n` bytes.
    Complete(usize),
    Incomplete,
    Invalid(ParseError),
}

pub struct Row {
    pub name: &'static str,
    pub msg: Vec<u8>,
    pub want: Want,
    pub frame: Frame,
}

pub fn row(name: &'static str, msg: impl Into<Vec<u8>>, want: Want, frame: Frame) -> Row {
    Row {
        name,
        msg: msg.into(),
        want,
        frame,
    }
}

/// A good request: start line, the five required headers (Via first), `extra` header lines
/// (each ending in CRLF), then `Content-Length` of the body when `with_length`, and the body.
pub fn request(method: &str, extra: &str, with_length: bool, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "{method} sip:svc@198.51.100.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-nasty;rport\r\n\
         From: <sip:a@example.com>;tag=f1\r\n\
         To: <sip:svc@198.51.100.1>\r\n\
         Call-ID: nasty-1@10.0.0.1\r\n\
         CSeq: 1 {method}\r\n{extra}"
    );
    if with_length {
        m.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    m.push_str("\r\n");
    let mut m = m.into_bytes();
    m.extend_from_slice(body);
    m
}

pub fn options(extra: &str) -> Vec<u8> {
    request("OPTIONS", extra, true, b"")
}

/// Replace the first occurrence of `from` (which must be there).
pub fn replace(msg: &[u8], from: &str, to: &[u8]) -> Vec<u8> {
    let at = msg
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} not in the message"));
    let mut out = msg[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&msg[at + from.len()..]);
    out
}

pub fn no_check(_: &str) {}

pub fn vias(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "Via: SIP/2.0/UDP 10.0.{}.{}:5060;branch=z9hG4bK-{i}\r\n",
                i / 256,
                i % 256
            )
        })
        .collect()
}

/// `n` Via values (as [`vias`] has them), `per_line` to a header line.
pub fn via_lines(n: usize, per_line: usize) -> String {
    let values: Vec<String> = vias(n)
        .lines()
        .map(|l| l.trim_start_matches("Via: ").to_string())
        .collect();
    values
        .chunks(per_line)
        .map(|chunk| format!("Via: {}\r\n", chunk.join(", ")))
        .collect()
}

pub fn rows() -> Vec<Row> {
    use Frame::*;
    use Want::*;
    let huge_value = "a".repeat(MIB);
    let mut rows = vec![
        // --- Sizes.
        row(
            "1 MiB header line, not copied into the reply",
            options(&format!("X-Huge: {huge_value}\r\n")),
            Replied(200, |r| {
                assert!(r.len() < 1000 && !r.contains("X-Huge"), "{} bytes", r.len())
            }),
            Invalid(ParseError::TooLarge),
        ),
        row(
            "1 MiB Via value, copied back as the top Via",
            replace(
                &options(""),
                "branch=z9hG4bK-nasty",
                format!("branch={huge_value}").as_bytes(),
            ),
            Replied(200, |r| {
                assert!(r.len() > MIB, "{} bytes", r.len());
                assert!(r.contains(";rport=5062;received=192.0.2.7\r\n"));
            }),
            Invalid(ParseError::TooLarge),
        ),
        row(
            "1 MiB header line that never ends",
            format!("OPTIONS sip:x SIP/2.0\r\nX-Huge: {huge_value}").into_bytes(),
            Malformed,
            Invalid(ParseError::TooLarge),
        ),
        row(
            "1 MiB of header name",
            options(&format!("{huge_value}: x\r\n")),
            Replied(200, no_check),
            Invalid(ParseError::TooLarge),
        ),
        row(
            "64 KiB method, answered with the configured code",
            request(&"M".repeat(64 * 1024), "", true, b""),
            Replied(503, |r| {
                assert!(r.contains(&format!("CSeq: 1 {}\r\n", "M".repeat(64 * 1024))))
            }),
            Invalid(ParseError::TooLarge),
        ),
        // Over the parser's limits (MAX_HEADERS, MAX_VIAS): refused as malformed, as the parser
        // keeps tables of a fixed capacity and allocates nothing per message. (Before the
        // single-pass parser these three were answered; 1,000 Via lines still are, see
        // tests/faults_mi.rs.)
        row(
            "10,000 Via headers, refused",
            replace(
                &options(""),
                "Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-nasty;rport\r\n",
                vias(10_000).as_bytes(),
            ),
            Malformed,
            Invalid(ParseError::TooManyHeaders),
        ),
        row(
            "10,000 Via values in one header line, refused",
            replace(
                &options(""),
                "Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-nasty;rport",
                format!(
                    "Via: SIP/2.0/UDP h;rport{}",
                    ", SIP/2.0/UDP g;branch=z9hG4bK-x".repeat(10_000)
                )
                .as_bytes(),
            ),
            Malformed,
            Invalid(ParseError::TooManyVias),
        ),
        row(
            "10,000 unknown headers, refused",
            options(&"X-A: b\r\n".repeat(10_000)),
            Malformed,
            Invalid(ParseError::TooManyHeaders),
        ),
        row(
            "as many Via values as allowed, 16 to a line, all copied in order",
            replace(
                &options(""),
                "Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-nasty;rport\r\n",
                via_lines(MAX_VIAS, 16).as_bytes(),
            ),
            Replied(200, |r| {
                assert_eq!(r.matches("\r\nVia: ").count(), MAX_VIAS / 16);
                assert_eq!(r.matches("SIP/2.0/UDP 10.0.").count(), MAX_VIAS);
                assert!(r.contains(
                    "\r\nVia: SIP/2.0/UDP 10.0.0.0:5060;branch=z9hG4bK-0;received=192.0.2.7, \
                     SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1, "
                ));
                let last = MAX_VIAS - 1;
                assert!(r.contains(&format!(
                    ", SIP/2.0/UDP 10.0.{}.{}:5060;branch=z9hG4bK-{last}\r\nFrom: ",
                    last / 256,
                    last % 256,
                )));
            }),
            Whole,
        ),
        row(
            "one Via value too many in one line",
            replace(
                &options(""),
                "Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-nasty;rport",
                format!(
                    "Via: SIP/2.0/UDP h;rport{}",
                    ", SIP/2.0/UDP g;branch=z9hG4bK-x".repeat(MAX_VIAS)
                )
                .as_bytes(),
            ),
            Malformed,
            Invalid(ParseError::TooManyVias),
        ),
        row(
            "as many header lines as allowed",
            // The request has 6 lines of its own.
            options(&"X-A: b\r\n".repeat(MAX_HEADERS - 6)),
            Replied(200, |r| assert!(!r.contains("X-A"))),
            Whole,
        ),
        row(
            "one header line too many",
            options(&"X-A: b\r\n".repeat(MAX_HEADERS - 5)),
            Malformed,
            Invalid(ParseError::TooManyHeaders),
        ),
        row(
            "100,000 empty Via parameters",
            replace(&options(""), ";rport", ";".repeat(100_000).as_bytes()),
            Replied(200, |r| {
                assert!(
                    r.contains("branch=z9hG4bK-nasty;received=192.0.2.7\r\n"),
                    "{r}"
                )
            }),
            Invalid(ParseError::TooLarge),
        ),
        // --- NUL bytes.
        row(
            "NUL first",
            [b"\0".as_slice(), &options("")].concat(),
            Malformed,
            Invalid(ParseError::ControlChar),
        ),
        row(
            "NUL in the method",
            replace(&options(""), "OPTIONS sip", b"OPT\0IONS sip"),
            Malformed,
            Invalid(ParseError::ControlChar),
        ),
        row(
            "NUL in the Request-URI",
            replace(&options(""), "sip:svc@", b"sip:s\0vc@"),
            Malformed,
            Invalid(ParseError::ControlChar),
        ),
        row(
            "NUL in a header name",
            options("X-\0: y\r\n"),
            Malformed,
            Invalid(ParseError::ControlChar),
        ),
        row(
            "NUL in the Call-ID",
            replace(&options(""), "nasty-1@", b"nasty\0-1@"),
            Malformed,
            Invalid(ParseError::ControlChar),
        ),
        row(
            "NUL as the empty line",
            replace(
                &options(""),
                "Content-Length: 0\r\n\r\n",
                b"Content-Length: 0\r\n\0\r\n",
            ),
            Malformed,
            Incomplete,
        ),
        row(
            "NUL bytes in the body",
            request("MESSAGE", "", true, b"\0\0\0\xff\0"),
            Replied(503, no_check),
            Whole,
        ),
        row("only NUL bytes", vec![0u8; 100], Malformed, Incomplete),
        // --- Bad UTF-8.
        row(
            "overlong encoding in the Call-ID",
            replace(&options(""), "nasty-1", b"nasty\xc0\xaf1"),
            Malformed,
            Invalid(ParseError::NotUtf8),
        ),
        row(
            "surrogate in the From",
            replace(&options(""), "<sip:a@", b"<sip:\xed\xa0\x80@"),
            Malformed,
            Invalid(ParseError::NotUtf8),
        ),
        row(
            "bad UTF-8 in the method",
            replace(&options(""), "OPTIONS sip", b"OPTIONS\xff sip"),
            Malformed,
            Invalid(ParseError::NotUtf8),
        ),
        row(
            "bad UTF-8 in the body",
            request("MESSAGE", "", true, b"\xff\xfe\xc0"),
            Replied(503, no_check),
            Whole,
        ),
        // --- Content-Length.
        row(
            "negative Content-Length",
            replace(&options(""), "Content-Length: 0", b"Content-Length: -1"),
            Malformed,
            Invalid(ParseError::BadContentLength),
        ),
        row(
            "Content-Length +0",
            replace(&options(""), "Content-Length: 0", b"Content-Length: +0"),
            Malformed,
            Invalid(ParseError::BadContentLength),
        ),
        row(
            "Content-Length u64::MAX",
            replace(
                &options(""),
                "Content-Length: 0",
                b"Content-Length: 18446744073709551615",
            ),
            Malformed,
            Invalid(ParseError::TooLarge),
        ),
        row(
            "Content-Length over u64",
            replace(
                &options(""),
                "Content-Length: 0",
                b"Content-Length: 18446744073709551616",
            ),
            Malformed,
            Invalid(ParseError::BadContentLength),
        ),
        row(
            "Content-Length of 30 zeros",
            replace(
                &options(""),
                "Content-Length: 0",
                format!("Content-Length: {}", "0".repeat(30)).as_bytes(),
            ),
            Replied(200, no_check),
            Whole,
        ),
        row(
            "Content-Length 1e3",
            replace(&options(""), "Content-Length: 0", b"Content-Length: 1e3"),
            Malformed,
            Invalid(ParseError::BadContentLength),
        ),
        row(
            "Content-Length 0x10",
            replace(&options(""), "Content-Length: 0", b"Content-Length: 0x10"),
            Malformed,
            Invalid(ParseError::BadContentLength),
        ),
        row(
            "Content-Length empty",
            replace(&options(""), "Content-Length: 0", b"Content-Length:"),
            Malformed,
            Invalid(ParseError::BadContentLength),
        ),
        row(
            "Content-Length two values",
            replace(&options(""), "Content-Length: 0", b"Content-Length: 0, 0"),
            Malformed,
            Invalid(ParseError::BadContentLength),
        ),
        row(
            "Content-Length with inner blank",
            replace(&options(""), "Content-Length: 0", b"Content-Length: 1 0"),
            Malformed,
            Invalid(ParseError::BadContentLength),
        ),
        row(
            "Content-Length duplicated, same value",
            replace(
                &options(""),
                "Content-Length: 0",
                b"Content-Length: 0\r\nl: 0",
            ),
            Replied(200, no_check),
            Whole,
        ),
        row(
            "Content-Length duplicated, different values",
            request("MESSAGE", "l: 4\r\n", true, b"abc"),
            Malformed,
            Invalid(ParseError::ConflictingContentLength),
        ),
        row(
            "Content-Length longer than the body",
            replace(
                &request("MESSAGE", "", true, b"abc"),
                "Content-Length: 3",
                b"Content-Length: 4",
            ),
            Malformed,
            Incomplete,
        ),
        row(
            "Content-Length shorter than the body: the rest is discarded",
            replace(
                &request("MESSAGE", "", true, b"abcdef"),
                "Content-Length: 6",
                b"Content-Length: 2",
            ),
            Replied(503, no_check),
            // On a stream the extra bytes are the next message.
            Frame::Complete(request("MESSAGE", "", true, b"abcdef").len() - 4),
        ),
        row(
            "no Content-Length: fine in a datagram, not on a stream",
            request("MESSAGE", "", false, b"body"),
            Replied(503, no_check),
            Invalid(ParseError::MissingContentLength),
        ),
        // --- Truncated and bad start lines.
        row("OPTIONS", "OPTIONS", Malformed, Incomplete),
        row("OPTIONS sip:x", "OPTIONS sip:x", Malformed, Incomplete),
        row("SIP/2.0", "SIP/2.0", Malformed, Incomplete),
        row(
            "OPTIONS, then the empty line",
            "OPTIONS\r\n\r\n",
            Malformed,
            Invalid(ParseError::BadStartLine),
        ),
        row(
            "OPTIONS sip:x, then the empty line",
            "OPTIONS sip:x\r\n\r\n",
            Malformed,
            Invalid(ParseError::BadStartLine),
        ),
        row(
            "SIP/2.0, then the empty line",
            "SIP/2.0\r\n\r\n",
            Malformed,
            Invalid(ParseError::BadStartLine),
        ),
        row(
            "a request line alone",
            "OPTIONS sip:x SIP/2.0\r\n\r\n",
            Malformed,
            Invalid(ParseError::MissingContentLength),
        ),
        row(
            "a status line alone is a response",
            "SIP/2.0 200\r\n\r\n",
            Ignored,
            Invalid(ParseError::MissingContentLength),
        ),
        row(
            "status code 999",
            "SIP/2.0 999 Nope\r\nl: 0\r\n\r\n",
            Malformed,
            Invalid(ParseError::BadStatusCode),
        ),
        row(
            "SIP/3.0",
            replace(&options(""), "SIP/2.0\r\n", b"SIP/3.0\r\n"),
            Malformed,
            Invalid(ParseError::BadVersion),
        ),
        row(
            "lower-case version",
            replace(&options(""), "SIP/2.0\r\n", b"sip/2.0\r\n"),
            Replied(200, no_check),
            Whole,
        ),
        row(
            "blank before the method",
            [b" ".as_slice(), &options("")].concat(),
            Malformed,
            Invalid(ParseError::BadStartLine),
        ),
        row(
            "two blanks in the start line",
            replace(&options(""), "OPTIONS sip", b"OPTIONS  sip"),
            Malformed,
            Invalid(ParseError::BadStartLine),
        ),
        row(
            "HTTP request",
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Malformed,
            Invalid(ParseError::BadVersion),
        ),
        // --- Line ends and header syntax.
        row(
            "missing the empty line",
            options("").strip_suffix(b"\r\n").unwrap().to_vec(),
            Malformed,
            Incomplete,
        ),
        row(
            "only LF",
            String::from_utf8(options(""))
                .unwrap()
                .replace("\r\n", "\n"),
            Replied(200, |r| {
                assert!(
                    !r.replace("\r\n", "").contains('\n'),
                    "bare LF in the reply: {r:?}"
                )
            }),
            Whole,
        ),
        row(
            "only CR",
            String::from_utf8(options(""))
                .unwrap()
                .replace("\r\n", "\r"),
            Malformed,
            Incomplete,
        ),
        row(
            "CR inside a header",
            options("X-A: b\rc\r\n"),
            Malformed,
            Invalid(ParseError::ControlChar),
        ),
        row(
            "LF CR as line end",
            String::from_utf8(options(""))
                .unwrap()
                .replace("\r\n", "\n\r"),
            Malformed,
            Invalid(ParseError::ControlChar),
        ),
        row(
            "header without colon",
            options("NoColonHere\r\n"),
            Malformed,
            Invalid(ParseError::BadHeader),
        ),
        row(
            "Via without colon",
            replace(&options(""), "Via:", b"Via"),
            Malformed,
            Invalid(ParseError::BadHeader),
        ),
        row(
            "header with an empty name",
            options(": x\r\n"),
            Malformed,
            Invalid(ParseError::BadHeader),
        ),
        row(
            "blank inside a header name",
            options("X A: b\r\n"),
            Malformed,
            Invalid(ParseError::BadHeader),
        ),
        row(
            "fold before the first header",
            replace(&options(""), "\r\nVia:", b"\r\n Via:"),
            Malformed,
            Invalid(ParseError::BadHeader),
        ),
        row(
            "header injection through a fold in the Call-ID",
            replace(
                &options(""),
                "Call-ID: nasty-1@10.0.0.1",
                b"Call-ID: nasty-1@10.0.0.1\r\n X-Injected: yes",
            ),
            Replied(200, |r| {
                assert!(
                    r.contains("\r\nCall-ID: nasty-1@10.0.0.1 X-Injected: yes\r\n"),
                    "{r}"
                );
                assert!(!r.contains("\r\nX-Injected"), "{r}");
            }),
            Whole,
        ),
        row("empty message", "", Malformed, Incomplete),
        row("blanks only", "     ", Malformed, Incomplete),
        row(
            "blanks and line ends",
            " \t \r\n\r\n",
            Malformed,
            Invalid(ParseError::BadStartLine),
        ),
        row("CRLF keep-alive", "\r\n\r\n", Ignored, Incomplete),
        row(
            "1 MiB of CRLF",
            "\r\n".repeat(MIB / 2),
            Ignored,
            Invalid(ParseError::TooLarge),
        ),
        // --- Required headers.
        row(
            "no Via",
            remove_line(&options(""), "Via:"),
            Malformed,
            Whole,
        ),
        row(
            "Via without a host",
            replace(&options(""), "SIP/2.0/UDP 10.0.0.1:5062", b"SIP/2.0/UDP"),
            Malformed,
            Whole,
        ),
        row(
            "empty Via",
            replace(
                &options(""),
                "Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-nasty;rport",
                b"Via:",
            ),
            Malformed,
            Whole,
        ),
        row(
            "two From",
            options("From: <sip:b@example.com>\r\n"),
            Malformed,
            Whole,
        ),
        row(
            "two Call-ID (full and compact)",
            options("i: other\r\n"),
            Malformed,
            Whole,
        ),
        row(
            "CSeq 2^31",
            replace(&options(""), "CSeq: 1 ", b"CSeq: 2147483648 "),
            Malformed,
            Whole,
        ),
        row(
            "CSeq method differs",
            replace(&options(""), "CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"),
            Malformed,
            Whole,
        ),
        row(
            "From with an unbalanced quote",
            replace(
                &options(""),
                "From: <sip:a@example.com>;tag=f1",
                b"From: \"a <sip:a@example.com>;tag=f1",
            ),
            Replied(200, |r| {
                assert!(r.contains("\r\nFrom: \"a <sip:a@example.com>;tag=f1\r\n"))
            }),
            Whole,
        ),
        row(
            "To without its closing bracket gets a tag",
            replace(
                &options(""),
                "To: <sip:svc@198.51.100.1>",
                b"To: <sip:svc@198.51.100.1",
            ),
            Replied(200, |r| {
                assert!(r.contains("\r\nTo: <sip:svc@198.51.100.1;tag="), "{r}")
            }),
            Whole,
        ),
        row(
            "spoofed received and rport are replaced",
            replace(
                &options(""),
                ";rport",
                b";received=203.0.113.66;rport=1;received=1.2.3.4",
            ),
            Replied(200, |r| {
                assert!(
                    r.contains("branch=z9hG4bK-nasty;rport=1;received=192.0.2.7\r\n"),
                    "{r}"
                )
            }),
            Whole,
        ),
        // --- Not answered by design.
        row("ACK", request("ACK", "", true, b""), Ignored, Whole),
        row(
            "a response",
            replace(
                &options(""),
                "OPTIONS sip:svc@198.51.100.1 SIP/2.0",
                b"SIP/2.0 200 OK",
            ),
            Ignored,
            Whole,
        ),
    ];
    rows.push(row(
        "bad UTF-8 in a header value",
        replace(
            &options("Subject: X\r\n"),
            "Subject: X",
            b"Subject: \xc3\x28",
        ),
        Malformed,
        Invalid(ParseError::NotUtf8),
    ));
    rows.push(row(
        "truncated UTF-8 at the end of a header",
        replace(
            &options("Subject: X\r\n"),
            "Subject: X",
            b"Subject: \xe2\x82",
        ),
        Malformed,
        Invalid(ParseError::NotUtf8),
    ));
    rows
}

/// Remove the header line that starts with `prefix`.
pub fn remove_line(msg: &[u8], prefix: &str) -> Vec<u8> {
    let text = String::from_utf8(msg.to_vec()).unwrap();
    text.split_inclusive("\r\n")
        .filter(|l| !l.starts_with(prefix))
        .collect::<String>()
        .into_bytes()
}
