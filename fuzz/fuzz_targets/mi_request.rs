//! The MI FIFO request-stream parser (`supervisor::mi::proto::RequestParser`) on arbitrary bytes
//! delivered in arbitrary reads, with the writer closing (end-of-file) or stalling past
//! `REQUEST_STALL` where the fuzzer says.
//!
//! Input layout: byte 0 = flags (bit 0: also call `finish` at every cut, as when the writers of a
//! FIFO come and go between reads; bit 1: at every cut the writer stalls, i.e. `expire` is called
//! `REQUEST_STALL` after the read), byte 1 = number of cuts (mod 16), two bytes per cut
//! (little-endian offset), then the bytes written to the FIFO.
//!
//! The clock is explicit (`push_at`), so how long a run takes never changes what it checks.
//!
//! Checks: no panic; a reply name that comes out is one `check_reply_name` accepts (never `.`, `/`
//! or `\`: it is joined to `reply_dir`); every reply encodes to one JSON line; without
//! end-of-files or stalls in between, the requests and errors do not depend on how reads split the
//! bytes; after a stall nothing is left with a deadline; after `finish` the parser is idle; after
//! either, the next writer's request is served.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::time::Instant;
use supervisor::mi::proto::{check_reply_name, encode_reply, Frame, RequestParser, REQUEST_STALL};

/// Everything but the text of drops, which depends on where reads split garbage.
#[derive(Debug, PartialEq)]
enum Seen {
    Request(String, Option<String>, Option<Value>),
    Invalid(Option<String>, Value, i64, Option<Value>),
    Dropped,
}

fn check(frames: Vec<Frame>, seen: &mut Vec<Seen>) {
    for frame in frames {
        let s = match frame {
            Frame::Request(r) => {
                assert!(!r.method.is_empty());
                check_name(r.reply_name.as_deref());
                if let Some(id) = &r.id {
                    one_line(&encode_reply(id, &Ok(Value::Null)));
                }
                Seen::Request(r.method, r.reply_name, r.id)
            }
            Frame::Invalid { reply_name, id, error } => {
                check_name(reply_name.as_deref());
                one_line(&encode_reply(&id, &Err(error.clone())));
                Seen::Invalid(reply_name, id, error.code, error.data)
            }
            Frame::Dropped(reason) => {
                assert!(!reason.is_empty());
                Seen::Dropped
            }
        };
        // Consecutive drops are one drop: garbage split by a read is dropped in two pieces.
        if !(s == Seen::Dropped && seen.last() == Some(&Seen::Dropped)) {
            seen.push(s);
        }
    }
}

fn check_name(name: Option<&str>) {
    if let Some(name) = name {
        assert_eq!(check_reply_name(name.as_bytes()), Ok(Some(name.to_owned())));
        assert!(!name.contains(['.', '/', '\\', '\0']), "{name:?}");
    }
}

fn one_line(line: &[u8]) {
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
    serde_json::from_slice::<Value>(line).expect("reply is not JSON");
}

const NEXT: &[u8] = br#":next_reply:{"jsonrpc":"2.0","id":"n","method":"version"}"#;

fuzz_target!(|data: &[u8]| {
    let [flags, cuts, rest @ ..] = data else {
        return;
    };
    let eof_at_cuts = flags & 1 == 1;
    let stall_at_cuts = flags & 2 == 2;
    let ncuts = usize::from(cuts % 16);
    let Some((cut_bytes, stream)) = rest.split_at_checked(2 * ncuts) else {
        return;
    };
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let t0 = Instant::now();
    let mut now = t0;
    let mut pieces = RequestParser::new();
    let mut seen_pieces = Vec::new();
    let mut at = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        check(pieces.push_at(&stream[at..cut], now), &mut seen_pieces);
        if let Some(deadline) = pieces.deadline() {
            assert!(deadline > now, "a deadline already past after a read");
        }
        if stall_at_cuts {
            now += REQUEST_STALL;
            check(pieces.expire(now), &mut seen_pieces);
            assert_eq!(pieces.deadline(), None, "left unfinished after a stall");
        }
        if eof_at_cuts {
            check(pieces.finish(), &mut seen_pieces);
            assert!(pieces.is_idle());
        }
        at = cut;
    }
    if stall_at_cuts {
        // A writer that stalled is served once the next one comes, without any end-of-file.
        let mut stalled = RequestParser::new();
        let mut ignored = Vec::new();
        check(stalled.push_at(stream, t0), &mut ignored);
        check(stalled.expire(t0 + REQUEST_STALL), &mut ignored);
        let frames = stalled.push_at(NEXT, t0 + REQUEST_STALL);
        match &frames[..] {
            [Frame::Request(r)] => assert_eq!(r.method, "version"),
            other => panic!("next writer's request not served after a stall: {other:?}"),
        }
    }
    check(pieces.finish(), &mut seen_pieces);
    assert!(pieces.is_idle());

    if !eof_at_cuts && !stall_at_cuts {
        let mut whole = RequestParser::new();
        let mut seen_whole = Vec::new();
        check(whole.push_at(stream, t0), &mut seen_whole);
        check(whole.finish(), &mut seen_whole);
        assert_eq!(seen_whole, seen_pieces);
    }

    // Whatever came before, the next writer is served.
    let frames = pieces.push_at(NEXT, now);
    match &frames[..] {
        [Frame::Request(r)] => assert_eq!(r.method, "version"),
        other => panic!("next writer's request not served: {other:?}"),
    }
});
