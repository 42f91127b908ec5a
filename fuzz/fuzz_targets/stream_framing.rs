//! Stream framing driven the way a TCP/TLS connection reader drives it: bytes arrive in pieces
//! (split where the fuzzer says), each piece is appended to the connection's buffer, and complete
//! messages are taken off the front until the framer says "more" or "invalid".
//!
//! Two framers: `frame_len` (with or without taking CR/LF keep-alives off first with
//! `leading_crlf_len`, as a transport answering RFC 5626 pings does), and `stream_frame_len` under
//! fuzzer-chosen head and body limits (keep-alives always taken off first).
//!
//! Input layout: byte 0 = flags (bit 0: strip keep-alives; bits 1..=5: the stream is the payload
//! repeated that many times plus one, so that small inputs reach the 64 KiB limit; bit 6: use
//! `stream_frame_len`), byte 1 = limits for `stream_frame_len` (max_head = 128 << (bits 0..=2),
//! max_body = 16 << (bits 3..=7), at most 1 MiB), byte 2 = number of cuts (mod 16), two bytes per
//! cut (little-endian offset into the stream, scaled by the repeat count), then the payload.
//!
//! Checks: every framed length is within the buffer and the limits and parses as one message of
//! that length; the messages framed and the final state do not depend on where the stream was split
//! (the reference frames it in one piece); a connection waiting for more never buffers more than
//! the limits allow; the two framers agree where both accept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worker::sip::{self, FrameStatus, ParseError};

#[derive(Debug, Clone, Copy)]
enum Framer {
    FrameLen { strip: bool },
    Stream { max_head: usize, max_body: usize },
}

/// What a connection saw.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    messages: Vec<Vec<u8>>,
    /// CR/LF bytes taken off as keep-alives.
    keepalive_bytes: usize,
    /// `Ok(bytes held)`: waiting for more; `Err`: the connection is to be closed.
    end: Result<usize, ParseError>,
}

/// A connection's receive side.
struct Conn {
    buf: Vec<u8>,
    framer: Framer,
    seen: Seen,
    closed: bool,
}

/// Where the next message ends: `Ok(Some(n))` complete, `Ok(None)` more needed.
fn next(framer: Framer, buf: &[u8]) -> Result<Option<usize>, ParseError> {
    match framer {
        Framer::FrameLen { .. } => match sip::frame_len(buf) {
            FrameStatus::Complete(n) => {
                assert!(n <= buf.len(), "frame of {n} in a buffer of {}", buf.len());
                assert!(n <= sip::MAX_FRAME_LEN, "frame of {n} over the limit");
                Ok(Some(n))
            }
            FrameStatus::Incomplete => {
                // Bounded buffering: waiting never holds more than one message's limit.
                assert!(buf.len() <= sip::MAX_FRAME_LEN, "waiting with {} bytes", buf.len());
                Ok(None)
            }
            FrameStatus::Invalid(e) => Err(e),
        },
        Framer::Stream { max_head, max_body } => match sip::stream_frame_len(buf, max_head, max_body)? {
            Some(total) => {
                assert!(total > 0);
                assert!(total <= max_head + max_body, "frame of {total} over the limits");
                // Agrees with frame_len once the whole message is there.
                if total <= buf.len() && total <= sip::MAX_FRAME_LEN {
                    assert_eq!(sip::frame_len(buf), FrameStatus::Complete(total));
                }
                Ok((total <= buf.len()).then_some(total))
            }
            None => {
                assert!(buf.len() <= max_head, "waiting with {} bytes, head limit {max_head}", buf.len());
                Ok(None)
            }
        },
    }
}

impl Conn {
    fn new(framer: Framer) -> Conn {
        Conn {
            buf: Vec::new(),
            framer,
            seen: Seen {
                messages: Vec::new(),
                keepalive_bytes: 0,
                end: Ok(0),
            },
            closed: false,
        }
    }

    fn receive(&mut self, piece: &[u8]) {
        if self.closed {
            return;
        }
        self.buf.extend_from_slice(piece);
        let strip = matches!(self.framer, Framer::FrameLen { strip: true } | Framer::Stream { .. });
        loop {
            if strip {
                let n = sip::leading_crlf_len(&self.buf);
                assert!(n <= self.buf.len());
                self.buf.drain(..n);
                self.seen.keepalive_bytes += n;
            }
            match next(self.framer, &self.buf) {
                Ok(Some(n)) => {
                    assert!(n > 0, "an empty frame would loop forever");
                    let message: Vec<u8> = self.buf.drain(..n).collect();
                    // What was framed parses as one message of exactly that length.
                    match sip::parse(&message) {
                        Ok(m) => assert_eq!(m.len(), n),
                        Err(e) => panic!("framed {n} bytes that do not parse: {e}"),
                    }
                    self.seen.messages.push(message);
                }
                Ok(None) => {
                    self.seen.end = Ok(self.buf.len());
                    return;
                }
                Err(e) => {
                    self.seen.end = Err(e);
                    self.closed = true;
                    return;
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, limits, cuts, rest @ ..] = data else {
        return;
    };
    let framer = if flags & 0x40 != 0 {
        Framer::Stream {
            max_head: 128 << (limits & 7),
            max_body: (16usize << (limits >> 3)).min(1 << 20),
        }
    } else {
        Framer::FrameLen { strip: flags & 1 == 1 }
    };
    let repeat = 1 + usize::from((flags >> 1) & 0x1f);
    let ncuts = usize::from(cuts % 16);
    let Some((cut_bytes, payload)) = rest.split_at_checked(2 * ncuts) else {
        return;
    };
    let stream: Vec<u8> = payload.repeat(repeat);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) * repeat % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let mut whole = Conn::new(framer);
    whole.receive(&stream);

    let mut pieces = Conn::new(framer);
    let mut at = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        pieces.receive(&stream[at..cut]);
        at = cut;
    }

    // Where the stream was split changes nothing, except which error closes the connection:
    // an invalid stream may be noticed earlier (e.g. over the limit before its header is complete).
    assert_eq!(whole.seen.messages, pieces.seen.messages);
    assert_eq!(whole.seen.keepalive_bytes, pieces.seen.keepalive_bytes);
    match (&whole.seen.end, &pieces.seen.end) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("one piece: {a:?}, in pieces: {b:?}"),
    }
});
