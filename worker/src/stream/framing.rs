//! SIP message framing on one byte stream (RFC 3261 §18.3), incremental.
//!
//! Owns a connection's input buffer: bytes go in as they are read, whole messages and keep-alive
//! pings come out. The syntax decisions are [`Parsed::frame_stream`]'s (the parser's one scan);
//! this type only makes them cheap on a stream that trickles in: each byte is scanned once for the
//! end of the header section, and the framing scan runs once at the first line end (to refuse junk
//! before the rest arrives) and once when the header section is complete, never per read. A
//! message handed out comes with its parse in the caller's [`Parsed`]: framed whole in one go, it
//! is not parsed again; framed before its body arrived, it is parsed when handed out. No I/O here.
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

use crate::sip::{ParseError, Parsed};

/// The RFC 5626 §3.5.1 keep-alive ping; its pong is one CRLF.
const PING: &[u8] = b"\r\n\r\n";

/// What [`Deframer::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A double-CRLF keep-alive ping: answer with a single CRLF.
    Ping,
    /// One whole SIP message (header section and `Content-Length` bytes of body).
    Message(&'a [u8]),
}

/// The input side of one SIP-over-stream connection.
#[derive(Debug)]
pub(crate) struct Deframer {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    start: usize,
    /// Bytes after `start` already searched for the end of the header section.
    scanned: usize,
    /// The first line of the pending message was checked.
    first_line_checked: bool,
    /// The length of the pending message, once its header section is complete.
    frame: Option<usize>,
    /// The caller's `Parsed` describes the pending message (it was framed whole in this call).
    fresh: bool,
    max_head: usize,
    max_body: usize,
}

impl Deframer {
    /// A header section may be `max_head` bytes, a body `max_body`.
    pub(crate) fn new(max_head: usize, max_body: usize) -> Deframer {
        Deframer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            first_line_checked: false,
            frame: None,
            fresh: false,
            max_head,
            max_body,
        }
    }

    /// Append bytes just read.
    pub(crate) fn extend(&mut self, data: &[u8]) {
        // Drop what was handed out before growing: a long-lived connection keeps a small buffer.
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && (self.start >= 16 * 1024 || self.start * 2 >= self.buf.len()) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that are not yet part of a message handed out.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next ping or message, `Ok(None)` when more bytes are needed, `Err` when the stream
    /// cannot be framed (the connection must be closed). When it is a message, `parsed` holds its
    /// parse: [`Parsed::message`] reads it.
    pub(crate) fn next(&mut self, parsed: &mut Parsed) -> Result<Option<Item<'_>>, ParseError> {
        loop {
            let pending = self.buf.get(self.start..).unwrap_or_default();
            if let Some(total) = self.frame {
                if pending.len() < total {
                    return Ok(None);
                }
                let at = self.start;
                self.start += total;
                self.frame = None;
                self.scanned = 0;
                self.first_line_checked = false;
                let message = self.buf.get(at..at + total).unwrap_or_default();
                if !std::mem::take(&mut self.fresh) {
                    // Framed in an earlier call: `parsed` has served other connections since.
                    parsed.parse(message)?;
                }
                return Ok(Some(Item::Message(message)));
            }
            // Between messages: keep-alives and stray line ends.
            if pending.starts_with(PING) {
                self.start += PING.len();
                return Ok(Some(Item::Ping));
            }
            match pending.first() {
                None => return Ok(None),
                Some(b'\r' | b'\n') => {
                    if PING.starts_with(pending) {
                        // Maybe the first half of a ping: wait for the rest.
                        return Ok(None);
                    }
                    // A lone CRLF (RFC 3261 §7.5 lets them precede a start line; a peer's pong).
                    self.start += if pending.starts_with(b"\r\n") { 2 } else { 1 };
                    continue;
                }
                Some(_) => {}
            }
            return self.scan(parsed);
        }
    }

    /// Look for the end of the pending message's header section in the bytes not yet scanned.
    fn scan(&mut self, parsed: &mut Parsed) -> Result<Option<Item<'_>>, ParseError> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        // Resume two bytes back, so a "\n\r\n" split across reads is seen.
        let from = self.scanned.saturating_sub(2);
        let mut head_end = None;
        let mut first_lf = None;
        let tail = pending.get(from..).unwrap_or_default();
        for (i, b) in tail.iter().enumerate() {
            if *b != b'\n' {
                continue;
            }
            let at = from + i;
            first_lf.get_or_insert(at);
            let before = pending.get(..at).unwrap_or_default();
            if before.ends_with(b"\n") || before.ends_with(b"\n\r") {
                head_end = Some(at);
                break;
            }
        }
        self.scanned = pending.len();
        if head_end.is_some() || (first_lf.is_some() && !self.first_line_checked) {
            self.first_line_checked = true;
            match parsed.frame_stream(pending, self.max_head, self.max_body)? {
                Some(total) => {
                    self.frame = Some(total);
                    self.fresh = pending.len() >= total;
                    return self.next(parsed);
                }
                None if head_end.is_some() => {
                    // Cannot happen: the framing function found no end where this scan did.
                    return Err(ParseError::Unterminated);
                }
                None => {}
            }
        } else if !self.first_line_checked {
            // No line end yet: refuse what no start line holds (a TLS ClientHello on a TCP port,
            // say) now, without waiting for a line end that may never come. A CR not followed by
            // LF is refused once the line ends.
            let junk = tail
                .iter()
                .any(|b| b.is_ascii_control() && !matches!(b, b'\t' | b'\r'));
            if junk {
                return Err(ParseError::ControlChar);
            }
        }
        if pending.len() > self.max_head {
            return Err(ParseError::TooLarge);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] =
        b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 2\r\n\r\nhi";

    fn drain(d: &mut Deframer) -> Result<Vec<Option<Vec<u8>>>, ParseError> {
        let mut out = Vec::new();
        let mut parsed = Parsed::new();
        for _ in 0..100 {
            match d.next(&mut parsed)? {
                None => return Ok(out),
                Some(Item::Ping) => out.push(None),
                Some(Item::Message(m)) => {
                    // The message comes with its parse.
                    let read = parsed.message(m).expect("no parse with the message");
                    assert_eq!(read.len(), m.len());
                    assert_eq!(
                        read.body().len(),
                        read.content_length().unwrap(),
                        "{:?}",
                        String::from_utf8_lossy(m)
                    );
                    out.push(Some(m.to_vec()))
                }
            }
        }
        panic!("next() never said it needs more bytes");
    }

    #[test]
    fn two_messages_in_one_read() {
        let mut d = Deframer::new(1000, 100);
        d.extend(&[OPTIONS, OPTIONS].concat());
        assert_eq!(
            drain(&mut d).unwrap(),
            [Some(OPTIONS.to_vec()), Some(OPTIONS.to_vec())]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn one_message_byte_by_byte() {
        let mut d = Deframer::new(1000, 100);
        for (i, b) in OPTIONS.iter().enumerate() {
            d.extend(&[*b]);
            let got = drain(&mut d).unwrap();
            if i + 1 < OPTIONS.len() {
                assert!(got.is_empty(), "byte {i}");
            } else {
                assert_eq!(got, [Some(OPTIONS.to_vec())]);
            }
        }
    }

    #[test]
    fn a_message_framed_before_its_body_came_is_parsed_when_handed_out() {
        let mut d = Deframer::new(1000, 100);
        let mut parsed = Parsed::new();
        let cut = OPTIONS.len() - 1;
        d.extend(&OPTIONS[..cut]);
        assert_eq!(d.next(&mut parsed), Ok(None));
        // Meanwhile another connection's message, as long, goes through the same scratch.
        let other = String::from_utf8(OPTIONS.to_vec())
            .unwrap()
            .replace("sip:a", "sip:b")
            .replace("TCP", "UDP");
        parsed.parse(other.as_bytes()).unwrap();
        d.extend(&OPTIONS[cut..]);
        let Ok(Some(Item::Message(m))) = d.next(&mut parsed) else {
            panic!("no message");
        };
        let read = parsed.message(m).unwrap();
        assert_eq!(read.start_line_span().start, 0);
        assert_eq!(read.text(read.vias()[0].transport), "TCP");
        assert_eq!(read.body(), b"hi");
    }

    #[test]
    fn pings_and_stray_crlfs() {
        let mut d = Deframer::new(1000, 100);
        d.extend(b"\r\n\r\n");
        assert_eq!(drain(&mut d).unwrap(), [None]);
        // Half a ping waits for the other half.
        d.extend(b"\r\n");
        assert!(drain(&mut d).unwrap().is_empty());
        d.extend(b"\r\n");
        assert_eq!(drain(&mut d).unwrap(), [None]);
        // A lone CRLF before a message is skipped.
        d.extend(&[b"\r\n".as_slice(), OPTIONS].concat());
        assert_eq!(drain(&mut d).unwrap(), [Some(OPTIONS.to_vec())]);
        d.extend(&[b"\r\n\r\n\r\n\r\n".as_slice(), OPTIONS].concat());
        assert_eq!(drain(&mut d).unwrap(), [None, None, Some(OPTIONS.to_vec())]);
        d.extend(b"\n\n\r\n\r\n");
        assert_eq!(drain(&mut d).unwrap(), [None]);
    }

    #[test]
    fn junk_is_refused_early() {
        let mut d = Deframer::new(1000, 100);
        d.extend(b"\x16\x03\x01");
        assert_eq!(drain(&mut d), Err(ParseError::ControlChar));
        let mut d = Deframer::new(1000, 100);
        d.extend(b"hello there");
        assert!(drain(&mut d).unwrap().is_empty());
        d.extend(b"\r\n");
        assert_eq!(drain(&mut d), Err(ParseError::BadStartLine));
        // Junk after a good message.
        let mut d = Deframer::new(1000, 100);
        d.extend(&[OPTIONS, b"xyz\r\n"].concat());
        let mut parsed = Parsed::new();
        assert_eq!(d.next(&mut parsed), Ok(Some(Item::Message(OPTIONS))));
        assert_eq!(d.next(&mut parsed), Err(ParseError::BadStartLine));
    }

    #[test]
    fn limits() {
        let mut d = Deframer::new(40, 100);
        d.extend(b"OPTIONS sip:a SIP/2.0\r\n");
        assert!(drain(&mut d).unwrap().is_empty());
        d.extend(&[b'X'; 20]);
        assert_eq!(drain(&mut d), Err(ParseError::TooLarge));
        let mut d = Deframer::new(1000, 1);
        d.extend(OPTIONS);
        assert_eq!(drain(&mut d), Err(ParseError::TooLarge));
        let mut d = Deframer::new(1000, 100);
        d.extend(b"OPTIONS sip:a SIP/2.0\r\nTo: <sip:b>\r\n\r\n");
        assert_eq!(drain(&mut d), Err(ParseError::MissingContentLength));
    }

    #[test]
    fn the_end_of_the_header_split_across_reads() {
        for cut in 1..OPTIONS.len() {
            let mut d = Deframer::new(1000, 100);
            d.extend(&OPTIONS[..cut]);
            let mut got = drain(&mut d).unwrap();
            d.extend(&OPTIONS[cut..]);
            got.extend(drain(&mut d).unwrap());
            assert_eq!(got, [Some(OPTIONS.to_vec())], "cut {cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_split_gives_the_same_messages(
            cuts in proptest::collection::vec(0usize..200, 0..6),
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let stream = [OPTIONS, b"\r\n\r\n", OPTIONS, &junk].concat();
            let whole = {
                let mut d = Deframer::new(1000, 100);
                d.extend(&stream);
                drain(&mut d)
            };
            let mut d = Deframer::new(1000, 100);
            let mut got = Vec::new();
            let mut at = 0;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            cuts.push(stream.len());
            let mut result = Ok(());
            for cut in cuts {
                d.extend(&stream[at..cut]);
                at = cut;
                match drain(&mut d) {
                    Ok(items) => got.extend(items),
                    Err(e) => { result = Err(e); break; }
                }
            }
            match (whole, result) {
                (Ok(all), Ok(())) => proptest::prop_assert_eq!(all, got),
                // Junk is refused whatever the split (possibly sooner when split).
                (Err(_), Err(_)) => {}
                (w, r) => proptest::prop_assert!(false, "whole {:?}, split {:?}", w, r),
            }
        }
    }
}
