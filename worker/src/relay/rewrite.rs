//! The splicing writer: a relayed message is the received one copied range by range (the parser's
//! spans tile it, see [`crate::sip::message`]) with only what the relay changes written anew.
//! Nothing is formatted: numbers and addresses go through the small writers of the responder.

use crate::handler;
use crate::sip::{self, alone_in_line, HeaderKind, Message, Span};
use std::net::SocketAddr;

/// Copy `span` of the message.
fn copy(out: &mut Vec<u8>, m: &Message<'_>, span: Span) {
    out.extend_from_slice(m.bytes(span));
}

fn copy_range(out: &mut Vec<u8>, m: &Message<'_>, start: u32, end: u32) {
    copy(out, m, Span { start, end });
}

/// The start line, with the Request-URI replaced by `new_uri` (a span of the message) when given.
pub(super) fn start_line(out: &mut Vec<u8>, m: &Message<'_>, uri: Span, new_uri: Option<Span>) {
    let line = m.start_line_span();
    match new_uri {
        None => copy(out, m, line),
        Some(new) => {
            copy_range(out, m, line.start, uri.start);
            copy(out, m, new);
            copy_range(out, m, uri.end, line.end);
        }
    }
}

/// How the sender's (top) Via is edited (RFC 3261 §18.2.1, RFC 3581).
#[derive(Debug, Clone, Copy)]
pub(super) struct SenderVia {
    /// The source of the request.
    pub source: SocketAddr,
    /// Add `;rport=PORT` (the Via has no `rport`, `[relay] force_rport`).
    pub add_rport: bool,
}

/// Max-Forwards.
#[derive(Debug, Clone, Copy)]
pub(super) enum MaxForwards {
    /// Write this value in place of the first Max-Forwards line's.
    Replace(u32),
    /// Add `Max-Forwards: 70`.
    Add,
}

/// What the rest of a forwarded request changes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Edits {
    /// Route entries `0..drop_top` are removed...
    pub drop_top: usize,
    /// ...and this one (a strict router's last Route, now the Request-URI).
    pub drop_also: Option<usize>,
    pub max_forwards: MaxForwards,
    /// `None`: the sender's Via is copied as it is.
    pub sender: Option<SenderVia>,
    /// Add `Content-Length` when absent (the message goes over a stream).
    pub content_length: bool,
}

/// The header lines and body of a forwarded request (after the start line and the lines the relay
/// puts on top).
pub(super) fn request_rest(out: &mut Vec<u8>, m: &Message<'_>, edits: &Edits) {
    if let MaxForwards::Add = edits.max_forwards {
        out.extend_from_slice(b"Max-Forwards: 70\r\n");
    }
    let lines = m.lines();
    let routes = m.routes();
    let top_via = m.vias().first();
    let mf_line = m.first(HeaderKind::MaxForwards).map(|l| l.name.start);
    let dropped = |j: usize| j < edits.drop_top || edits.drop_also == Some(j);
    // Unchanged lines are copied in runs: `from` is where the current run started.
    let head_end = u32::try_from(m.head_end()).unwrap_or(u32::MAX);
    let mut from = lines.first().map_or(head_end, |l| l.name.start);
    let mut r = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.kind == HeaderKind::Route {
            let first = r;
            while routes.get(r).is_some_and(|e| usize::from(e.line) == i) {
                r += 1;
            }
            if !(first..r).any(dropped) {
                continue;
            }
            copy_range(out, m, from, line.name.start);
            from = line.end;
            let mut kept = (first..r)
                .filter(|j| !dropped(*j))
                .filter_map(|j| routes.get(j))
                .peekable();
            if kept.peek().is_none() {
                continue;
            }
            copy(out, m, line.name);
            out.extend_from_slice(b": ");
            for (n, e) in kept.enumerate() {
                if n > 0 {
                    out.extend_from_slice(b", ");
                }
                handler::put_value(out, m, e.value, line.folded);
            }
            out.extend_from_slice(b"\r\n");
            continue;
        }
        if let (Some(top), Some(sender)) = (top_via, edits.sender) {
            if usize::from(top.line) == i {
                copy_range(out, m, from, top.value.start);
                put_sender_via(out, m, top, sender);
                from = top.value.end;
                continue;
            }
        }
        if let (MaxForwards::Replace(n), Some(start)) = (edits.max_forwards, mf_line) {
            if line.name.start == start {
                copy_range(out, m, from, line.name.start);
                if line.value.is_empty() {
                    // No value to splice around (its span sits at the line end): a new line.
                    copy(out, m, line.name);
                    out.extend_from_slice(b": ");
                    handler::put_u32(out, n);
                    out.extend_from_slice(b"\r\n");
                    from = line.end;
                } else {
                    copy_range(out, m, line.name.start, line.value.start);
                    handler::put_u32(out, n);
                    from = line.value.end;
                }
                continue;
            }
        }
    }
    finish(out, m, from, edits.content_length);
}

/// The header lines and body of a forwarded response: the top Via value removed.
pub(super) fn response_rest(out: &mut Vec<u8>, m: &Message<'_>, content_length: bool) {
    let vias = m.vias();
    let lines = m.lines();
    let head_end = u32::try_from(m.head_end()).unwrap_or(u32::MAX);
    let mut from = lines.first().map_or(head_end, |l| l.name.start);
    if let Some((top, line)) = vias
        .first()
        .and_then(|top| Some((top, lines.get(usize::from(top.line))?)))
    {
        if alone_in_line(vias, 0) {
            copy_range(out, m, from, line.name.start);
            from = line.end;
        } else if let Some(next) = vias.get(1) {
            // The top Via is the first value of its line: keep the name, skip to the next value.
            copy_range(out, m, from, top.value.start);
            from = next.value.start;
        }
    }
    finish(out, m, from, content_length);
}

/// From `from` to the end of the body, with `Content-Length` added when asked and absent.
fn finish(out: &mut Vec<u8>, m: &Message<'_>, from: u32, content_length: bool) {
    let end = m.body_span().end;
    if content_length && m.content_length().is_none() {
        let head_end = u32::try_from(m.head_end()).unwrap_or(u32::MAX);
        copy_range(out, m, from, head_end);
        out.extend_from_slice(b"Content-Length: ");
        let len = u32::try_from(m.body_span().len()).unwrap_or(u32::MAX);
        handler::put_u32(out, len);
        out.extend_from_slice(b"\r\n");
        copy_range(out, m, head_end, end);
    } else {
        copy_range(out, m, from, end);
    }
}

/// The sender's Via value: an existing `received` dropped, a valueless `rport` filled, `rport`
/// added when asked, `received` added (every edit case needs it: the sent-by host is not the
/// source, or rport is asked or forced, RFC 3581 §4).
fn put_sender_via(out: &mut Vec<u8>, m: &Message<'_>, via: &sip::Via, sender: SenderVia) {
    let port = sender.source.port();
    if via.plain {
        handler::put_plain_via(out, m, via, port);
    } else {
        handler::put_via_by_params(out, m, via, port);
    }
    if sender.add_rport {
        out.extend_from_slice(b";rport=");
        handler::put_u32(out, u32::from(port));
    }
    out.extend_from_slice(b";received=");
    handler::put_ip(out, sender.source.ip().to_canonical());
}
