//! The framing every SIP-over-stream connection of a stream worker uses (`Deframer`,
//! worker/src/stream/framing.rs), driven the way a connection drives it: bytes arrive in pieces
//! (split where the fuzzer says), each piece is appended, and pings and messages are taken off
//! the front until it says "more" or "invalid".
//!
//! Input layout: byte 0 = flags (bits 1..=5: the stream is the payload repeated that many times
//! plus one, so that small inputs reach the limits), byte 1 = limits (max_head = 128 << (bits
//! 0..=2), max_body = 16 << (bits 3..=7), at most 1 MiB), byte 2 = number of cuts (mod 16), two
//! bytes per cut (little-endian offset into the stream, scaled by the repeat count), then the
//! payload.
//!
//! Checks: every message is within the limits, parses as one message of its length, and is what
//! `sip::frame_len` frames too; a connection waiting for more never holds more than a header
//! section and a body; the pings, the messages and the final state do not depend on where the
//! stream was split (the reference takes it in one piece), except which error closes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worker::sip::{self, FrameStatus, ParseError};
use worker::stream::fuzzing::{Deframer, Item};

/// What a connection saw.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// `None` for a ping.
    items: Vec<Option<Vec<u8>>>,
    /// `Ok(bytes held)`: waiting for more; `Err`: the connection is to be closed.
    end: Result<usize, ParseError>,
}

/// A connection's receive side.
struct Conn {
    input: Deframer,
    max_head: usize,
    max_body: usize,
    seen: Seen,
    closed: bool,
}

impl Conn {
    fn new(max_head: usize, max_body: usize) -> Conn {
        Conn {
            input: Deframer::new(max_head, max_body),
            max_head,
            max_body,
            seen: Seen {
                items: Vec::new(),
                end: Ok(0),
            },
            closed: false,
        }
    }

    fn receive(&mut self, piece: &[u8]) {
        if self.closed {
            return;
        }
        self.input.extend(piece);
        loop {
            let item = match self.input.next() {
                Ok(Some(Item::Ping)) => None,
                Ok(Some(Item::Message(m))) => Some(m.to_vec()),
                Ok(None) => {
                    let held = self.input.buffered();
                    assert!(
                        held <= self.max_head + self.max_body,
                        "waiting with {held} bytes, limits {} + {}",
                        self.max_head,
                        self.max_body
                    );
                    self.seen.end = Ok(held);
                    return;
                }
                Err(e) => {
                    self.seen.end = Err(e);
                    self.closed = true;
                    return;
                }
            };
            if let Some(m) = &item {
                let n = m.len();
                assert!(n > 0, "an empty message");
                assert!(n <= self.max_head + self.max_body, "message of {n} over the limits");
                // What was framed parses as one message of exactly that length...
                match sip::parse(m) {
                    Ok(parsed) => assert_eq!(parsed.len(), n),
                    Err(e) => panic!("framed {n} bytes that do not parse: {e}"),
                }
                // ...and the datagram framer agrees.
                if n <= sip::MAX_FRAME_LEN {
                    assert_eq!(sip::frame_len(m), FrameStatus::Complete(n));
                }
            }
            self.seen.items.push(item);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, limits, cuts, rest @ ..] = data else {
        return;
    };
    let max_head = 128 << (limits & 7);
    let max_body = (16usize << (limits >> 3)).min(1 << 20);
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

    let mut whole = Conn::new(max_head, max_body);
    whole.receive(&stream);

    let mut pieces = Conn::new(max_head, max_body);
    let mut at = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        pieces.receive(&stream[at..cut]);
        at = cut;
    }

    // Where the stream was split changes nothing, except which error closes the connection:
    // an invalid stream may be noticed earlier (e.g. over the limit before its header is complete).
    assert_eq!(whole.seen.items, pieces.seen.items);
    match (&whole.seen.end, &pieces.seen.end) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("one piece: {a:?}, in pieces: {b:?}"),
    }
});
