//! The MI FIFO wire format as pure code: framing the byte stream a FIFO delivers into
//! `:REPLY_NAME:` + JSON-RPC 2.0 requests, validating them, and encoding the one-line replies.
//!
//! It owns no file descriptor and never blocks, so every odd input (split writes, several requests
//! in one write, garbage, truncated or huge requests, bad reply names) is tested here without a FIFO.
//! It must never panic on what a writer sends: everything that is not a request becomes a
//! [`Frame::Invalid`] (answered when possible) or a [`Frame::Dropped`] (logged).
//!
//! Framing: a request starts with `:`, a reply name up to the next `:`, then one JSON value. The
//! request ends where that value ends (brackets are balanced outside strings), so a writer that keeps
//! the FIFO open does not delay it, or where the writer closes ([`RequestParser::finish`]). Garbage is
//! skipped up to the next `:`, where a request may start again.
//!
//! All writers share one byte stream, so a request left unfinished by a writer that keeps the FIFO
//! open would take every later writer's bytes for its own rest. It therefore has
//! [`REQUEST_STALL`] to end: after that it is cut where the bytes stop, as at end-of-file, and the
//! requests it swallowed are found again ([`RequestParser::expire`]).

use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Largest request accepted; a longer one is skipped without being buffered and answered -32600.
pub const MAX_REQUEST: usize = 1 << 20;

/// Longest reply name (the longest file name Linux accepts).
pub const MAX_REPLY_NAME: usize = 255;

/// How long a request may stay unfinished after its first byte arrived.
///
/// Clients write a request in one go, so it is complete in microseconds; one still unfinished
/// after this is from a writer that stopped mid-request while holding the FIFO open, and waiting
/// longer would hold up every other client. It is answered with a parse error and the bytes after
/// its first one are parsed again.
pub const REQUEST_STALL: Duration = Duration::from_secs(1);

/// Bytes arriving within this of the last recorded arrival share its time: the record stays a
/// few entries long however small the writes, and a request is cut at most this much early.
const ARRIVAL_GRAIN: Duration = Duration::from_millis(10);

/// A JSON-RPC 2.0 error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The code: the JSON-RPC ones (-32700...-32600) or an application one (400, 500).
    pub code: i64,
    /// A short message.
    pub message: String,
    /// Details, when there are any.
    pub data: Option<Value>,
}

impl RpcError {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Valid JSON, but not a JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Wrong parameters for the method.
    pub const INVALID_PARAMS: i64 = -32602;

    /// An error without data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The same error with `data`.
    pub fn with_data(mut self, data: impl Into<Value>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// -32700 `Parse error`, the reason as data.
    pub fn parse_error(reason: impl fmt::Display) -> Self {
        Self::new(Self::PARSE_ERROR, "Parse error").with_data(reason.to_string())
    }

    /// -32600 `Invalid Request`, the reason as data.
    pub fn invalid_request(reason: impl fmt::Display) -> Self {
        Self::new(Self::INVALID_REQUEST, "Invalid Request").with_data(reason.to_string())
    }

    /// -32601 `Method not found`, the method as data.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(Self::METHOD_NOT_FOUND, "Method not found").with_data(method)
    }

    /// -32602 `Invalid params`, the reason as data.
    pub fn invalid_params(reason: impl fmt::Display) -> Self {
        Self::new(Self::INVALID_PARAMS, "Invalid params").with_data(reason.to_string())
    }

    /// The JSON-RPC error object.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("code".into(), self.code.into());
        obj.insert("message".into(), self.message.clone().into());
        if let Some(data) = &self.data {
            obj.insert("data".into(), data.clone());
        }
        Value::Object(obj)
    }

    /// Reads an error object of a reply; `None` when it is not one.
    pub fn from_json(value: &Value) -> Option<Self> {
        let obj = value.as_object()?;
        Some(RpcError {
            code: obj.get("code")?.as_i64()?,
            message: obj.get("message")?.as_str()?.to_owned(),
            data: obj.get("data").cloned(),
        })
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.message)?;
        match &self.data {
            None => Ok(()),
            Some(Value::String(s)) => write!(f, ": {s}"),
            Some(v) => write!(f, ": {v}"),
        }
    }
}

impl std::error::Error for RpcError {}

/// The parameters of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// No `params` member (or `null`).
    None,
    /// `params` as an object.
    Named(Map<String, Value>),
    /// `params` as an array.
    Positional(Vec<Value>),
}

impl Params {
    /// True when there is no parameter at all (`{}` and `[]` count as none: the clients send them).
    pub fn is_empty(&self) -> bool {
        match self {
            Params::None => true,
            Params::Named(m) => m.is_empty(),
            Params::Positional(v) => v.is_empty(),
        }
    }

    /// The JSON of the `params` member; `None` for [`Params::None`].
    pub fn to_json(&self) -> Option<Value> {
        match self {
            Params::None => None,
            Params::Named(m) => Some(Value::Object(m.clone())),
            Params::Positional(v) => Some(Value::Array(v.clone())),
        }
    }
}

/// A valid request, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The method.
    pub method: String,
    /// Its parameters.
    pub params: Params,
    /// The `id`: `None` for a notification, which runs but gets no reply.
    pub id: Option<Value>,
    /// Where the reply goes, relative to `reply_dir`; `None` when the name was empty (no reply).
    pub reply_name: Option<String>,
}

/// What the parser makes of the bytes of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A valid request.
    Request(Request),
    /// A request that cannot run; answered with `error` (and `id`) when there is a reply name.
    Invalid {
        /// The reply name (already checked), `None` when empty.
        reply_name: Option<String>,
        /// The request's id when it could be read, else `null`.
        id: Value,
        /// Why.
        error: RpcError,
    },
    /// Bytes that are not a request, or a request whose reply name is refused: logged, not run.
    Dropped(String),
}

/// Checks a reply name: `Ok(None)` when empty (no reply wanted), the reason when refused.
///
/// The name is joined to `reply_dir`, so anything that could leave that directory or name a
/// hidden or relative entry (`.`, `/`, `\`) is refused, as OpenSIPS does.
pub fn check_reply_name(name: &[u8]) -> Result<Option<String>, String> {
    if name.is_empty() {
        return Ok(None);
    }
    let shown = snippet(name);
    let Ok(text) = std::str::from_utf8(name) else {
        return Err(format!("reply name {shown} is not UTF-8"));
    };
    if name.len() > MAX_REPLY_NAME {
        return Err(format!(
            "reply name {shown} is longer than {MAX_REPLY_NAME} bytes"
        ));
    }
    // Also refused: what no client puts in a file name it creates (quotes, blanks, controls), so
    // that resynchronising inside garbage does not take a JSON fragment for a reply name.
    if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '.' | '/' | '\\' | '"') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("reply name {shown} contains {c:?}"));
    }
    Ok(Some(text.to_owned()))
}

/// Checks the JSON of a request; on error, the id to answer with and the error.
pub fn validate(value: Value, reply_name: Option<String>) -> Result<Request, (Value, RpcError)> {
    let mut obj = match value {
        Value::Object(obj) => obj,
        Value::Array(_) => {
            return Err((
                Value::Null,
                RpcError::invalid_request("batch requests are not supported"),
            ))
        }
        _ => {
            return Err((
                Value::Null,
                RpcError::invalid_request("a request must be a JSON object"),
            ))
        }
    };
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => {
            return Err((
                Value::Null,
                RpcError::invalid_request("\"id\" must be a string, a number or null"),
            ))
        }
    };
    let answer_id = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((
            answer_id,
            RpcError::invalid_request("\"jsonrpc\" must be \"2.0\""),
        ));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => {
            return Err((
                answer_id,
                RpcError::invalid_request("\"method\" must be a non-empty string"),
            ))
        }
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Params::None,
        Some(Value::Object(m)) => Params::Named(m),
        Some(Value::Array(v)) => Params::Positional(v),
        Some(_) => {
            return Err((
                answer_id,
                RpcError::invalid_request("\"params\" must be an object or an array"),
            ))
        }
    };
    Ok(Request {
        method,
        params,
        id,
        reply_name,
    })
}

/// The reply line: one JSON-RPC 2.0 response object ending in `\n`.
///
/// `serde_json` escapes control characters in strings, so the line holds no other newline.
pub fn encode_reply(id: &Value, result: &Result<Value, RpcError>) -> Vec<u8> {
    let mut line = String::from("{\"jsonrpc\":\"2.0\",");
    match result {
        Ok(value) => {
            line.push_str("\"result\":");
            line.push_str(&value.to_string());
        }
        Err(error) => {
            line.push_str("\"error\":");
            line.push_str(&error.to_json().to_string());
        }
    }
    line.push_str(",\"id\":");
    line.push_str(&id.to_string());
    line.push_str("}\n");
    line.into_bytes()
}

/// Bytes shown in a log line: at most 64 of them, escaped.
fn snippet(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let cut = bytes.len().min(SHOWN);
    let mut s = format!("\"{}\"", bytes[..cut].escape_ascii());
    if bytes.len() > SHOWN {
        s.push_str(&format!(" (+{} bytes)", bytes.len() - SHOWN));
    }
    s
}

/// Finds where one JSON value ends without parsing it, across any number of reads.
///
/// It only tracks strings and bracket depth; `serde_json` then parses exactly those bytes and
/// reports any syntax error. This keeps a request that arrives in many pieces linear to frame.
#[derive(Debug, Default)]
struct Scanner {
    kind: Kind,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum Kind {
    /// Only whitespace so far.
    #[default]
    Blank,
    /// An object or array.
    Nested,
    /// A string.
    Text,
    /// A number, `true`, `false`, `null`, or garbage: up to the next delimiter.
    Bare,
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b':' | b'{' | b'}' | b'[' | b']' | b'"' | b',')
}

impl Scanner {
    /// Scans the next bytes of the value; returns where it ends in `bytes` (exclusive), if it does.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            match self.kind {
                Kind::Blank => match b {
                    _ if b.is_ascii_whitespace() => {}
                    b'{' | b'[' => {
                        self.kind = Kind::Nested;
                        self.depth = 1;
                    }
                    b'"' => {
                        self.kind = Kind::Text;
                        self.in_string = true;
                    }
                    // No value at all (e.g. `:name:` directly followed by the next request).
                    _ if is_delimiter(b) => return Some(i),
                    _ => self.kind = Kind::Bare,
                },
                Kind::Bare => {
                    if is_delimiter(b) {
                        return Some(i);
                    }
                }
                Kind::Text | Kind::Nested => {
                    if self.in_string {
                        if self.escaped {
                            self.escaped = false;
                        } else if b == b'\\' {
                            self.escaped = true;
                        } else if b == b'"' {
                            self.in_string = false;
                            if self.kind == Kind::Text {
                                return Some(i + 1);
                            }
                        }
                        continue;
                    }
                    match b {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                return Some(i + 1);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        None
    }
}

/// The request being read: its reply name is known, its value is being scanned.
#[derive(Debug)]
struct Pending {
    /// The checked reply name, or why it is refused.
    name: Result<Option<String>, String>,
    /// Index in the buffer where the value starts.
    start: usize,
    /// Index in the buffer up to which the scanner has looked.
    scanned: usize,
    scanner: Scanner,
    /// Bytes of this value already thrown away because it is too large.
    discarded: usize,
    /// When its first byte (the `:` before the reply name) arrived.
    arrived: Instant,
}

/// Turns the bytes read from the FIFO into [`Frame`]s.
///
/// Feed it with [`push`](Self::push) as reads return data, and call [`finish`](Self::finish) when
/// a read returns end-of-file (every writer closed): a request still open then ends there. A
/// request still unfinished [`REQUEST_STALL`] after it began ends at the next
/// [`push_at`](Self::push_at) or [`expire`](Self::expire) past its [`deadline`](Self::deadline).
#[derive(Debug, Default)]
pub struct RequestParser {
    buf: Vec<u8>,
    /// Start of the bytes not yet consumed.
    pos: usize,
    pending: Option<Pending>,
    /// Skipping the rest of a request that failed to parse (already reported).
    resyncing: bool,
    /// The last bytes skipped were garbage ending in something other than a blank.
    after_garbage: bool,
    /// When the bytes of `buf` arrived: (offset where they start, time), in buffer order. A
    /// request found while resynchronising keeps the time its bytes really arrived, so requests
    /// stalled one behind the other all end at their own deadline, not one deadline after another.
    arrivals: VecDeque<(usize, Instant)>,
}

enum Step {
    Frame(Frame),
    Again,
    Wait,
}

/// Why an unfinished request ends where the buffered bytes end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Every writer closed.
    Closed,
    /// It has been unfinished for [`REQUEST_STALL`].
    Stalled,
}

impl RequestParser {
    /// An empty parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the FIFO now; returns the requests they complete.
    pub fn push(&mut self, data: &[u8]) -> Vec<Frame> {
        self.push_at(data, Instant::now())
    }

    /// Adds bytes that arrived at `now`; returns the requests they complete, and ends (as
    /// [`expire`](Self::expire) does) whatever is still unfinished past its deadline.
    pub fn push_at(&mut self, data: &[u8], now: Instant) -> Vec<Frame> {
        let recent = self
            .arrivals
            .back()
            .is_some_and(|&(_, t)| now.saturating_duration_since(t) < ARRIVAL_GRAIN);
        if !data.is_empty() && !recent {
            self.arrivals.push_back((self.buf.len(), now));
        }
        self.buf.extend_from_slice(data);
        let frames = self.run(None, now);
        self.compact();
        frames
    }

    /// Ends what has been unfinished for [`REQUEST_STALL`] at `now`, as end-of-file would: a parse
    /// error for it (answered when it has a reply name), then the bytes after its first one are
    /// parsed again, so the requests of other writers it took for its rest are returned too.
    pub fn expire(&mut self, now: Instant) -> Vec<Frame> {
        self.push_at(&[], now)
    }

    /// When the unfinished request (or reply name) buffered, if any, is to be ended by
    /// [`expire`](Self::expire).
    pub fn deadline(&self) -> Option<Instant> {
        if let Some(p) = &self.pending {
            return Some(p.arrived + REQUEST_STALL);
        }
        let first = self.buf[self.pos..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())?;
        Some(self.arrival(self.pos + first)? + REQUEST_STALL)
    }

    /// Every writer has closed: whatever is buffered ends here. The parser is empty afterwards.
    pub fn finish(&mut self) -> Vec<Frame> {
        let frames = self.run(Some(Cut::Closed), Instant::now());
        self.buf.clear();
        self.pos = 0;
        self.pending = None;
        self.resyncing = false;
        self.after_garbage = false;
        self.arrivals.clear();
        frames
    }

    /// True when nothing is buffered (no request half-read).
    pub fn is_idle(&self) -> bool {
        self.pending.is_none() && self.buf[self.pos..].iter().all(u8::is_ascii_whitespace)
    }

    /// When the byte at `offset` in the buffer arrived (its batch's time).
    fn arrival(&self, offset: usize) -> Option<Instant> {
        let after = self.arrivals.partition_point(|&(o, _)| o <= offset);
        // Before the first entry only after a too-large value was dropped: its own time then.
        let i = after.saturating_sub(1);
        self.arrivals.get(i).map(|&(_, t)| t)
    }

    /// `closed` is `Some(Cut::Closed)` when every writer has closed: what is unfinished then ends
    /// whatever its age; else it ends once [`REQUEST_STALL`] old at `now`.
    fn run(&mut self, closed: Option<Cut>, now: Instant) -> Vec<Frame> {
        let mut frames = Vec::new();
        // Every step but the last consumes bytes or moves from the prefix to the value, so this ends.
        loop {
            let step = if self.pending.is_some() {
                self.step_value(closed, now)
            } else {
                self.step_prefix(closed, now)
            };
            match step {
                Step::Frame(f) => frames.push(f),
                Step::Again => {}
                Step::Wait => return frames,
            }
        }
    }

    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        self.buf.drain(..self.pos);
        if let Some(p) = &mut self.pending {
            p.start -= self.pos;
            p.scanned -= self.pos;
        }
        if self.buf.is_empty() {
            self.arrivals.clear();
        } else {
            // Keep the batch the first kept byte belongs to, now starting at 0.
            let first_kept = self
                .arrivals
                .partition_point(|&(o, _)| o <= self.pos)
                .saturating_sub(1);
            self.arrivals.drain(..first_kept);
            for (offset, _) in &mut self.arrivals {
                *offset = offset.saturating_sub(self.pos);
            }
        }
        self.pos = 0;
    }

    /// Skips bytes that cannot start a request, up to the next `:`.
    fn skip_garbage(&mut self, why: &str) -> Step {
        let rest = &self.buf[self.pos..];
        let n = rest[1..]
            .iter()
            .position(|&b| b == b':')
            .map_or(rest.len(), |i| i + 1);
        let reason = format!("{why}, dropped {}", snippet(&rest[..n]));
        self.after_garbage = !rest[n - 1].is_ascii_whitespace();
        self.pos += n;
        if self.resyncing {
            // The rest of a request already answered with a parse error: not logged again.
            return Step::Again;
        }
        Step::Frame(Frame::Dropped(reason))
    }

    fn step_prefix(&mut self, closed: Option<Cut>, now: Instant) -> Step {
        let rest = &self.buf[self.pos..];
        // Blanks end garbage too, wherever a read split it.
        let Some(skip) = rest.iter().position(|b| !b.is_ascii_whitespace()) else {
            self.after_garbage &= rest.is_empty();
            self.pos = self.buf.len();
            return Step::Wait;
        };
        self.after_garbage &= skip == 0;
        self.pos += skip;
        let rest = &self.buf[self.pos..];
        if rest[0] != b':' {
            return self.skip_garbage("not a request (it must start with ':REPLY_NAME:')");
        }
        let window = &rest[1..rest.len().min(MAX_REPLY_NAME + 2)];
        // A name ends at ':'; JSON punctuation or a blank means this ':' did not start a request
        // (no client names its FIFO so, and it keeps resynchronisation out of JSON fragments).
        let stop = |b: &u8| {
            b.is_ascii_whitespace() || matches!(b, b':' | b'"' | b'{' | b'}' | b'[' | b']' | b',')
        };
        match window.iter().position(stop) {
            // `::` glued to garbage: the first `:` most likely ends a JSON fragment (`{"key":` left
            // by a writer that stopped) and the request starts at the second; else an empty reply
            // name would take that request's name for its value and lose it.
            Some(0) if window[0] == b':' && self.after_garbage => {
                self.pos += 1;
                self.after_garbage = false;
                Step::Again
            }
            Some(i) if window[i] == b':' => {
                let name = check_reply_name(&window[..i]);
                let arrived = self.arrival(self.pos).unwrap_or(now);
                self.pos += i + 2;
                self.resyncing = false;
                self.after_garbage = false;
                self.pending = Some(Pending {
                    name,
                    start: self.pos,
                    scanned: self.pos,
                    scanner: Scanner::default(),
                    discarded: 0,
                    arrived,
                });
                Step::Again
            }
            Some(_) => self.skip_garbage("not a request (bad reply name)"),
            None if window.len() > MAX_REPLY_NAME => self.skip_garbage("reply name too long"),
            None if closed == Some(Cut::Closed) => {
                self.skip_garbage("request truncated in its reply name")
            }
            None if self
                .arrival(self.pos)
                .is_some_and(|t| now.saturating_duration_since(t) >= REQUEST_STALL) =>
            {
                self.skip_garbage(&format!(
                    "reply name unfinished after {REQUEST_STALL:?} (a writer stalled mid-request?)"
                ))
            }
            None => Step::Wait,
        }
    }

    fn step_value(&mut self, closed: Option<Cut>, now: Instant) -> Step {
        let Some(mut p) = self.pending.take() else {
            return Step::Again;
        };
        let (end, cut) = match p.scanner.feed(&self.buf[p.scanned..]) {
            Some(n) => (p.scanned + n, None),
            None if closed.is_some() => (self.buf.len(), closed),
            None if now.saturating_duration_since(p.arrived) >= REQUEST_STALL => {
                (self.buf.len(), Some(Cut::Stalled))
            }
            None => {
                p.scanned = self.buf.len();
                let held = self.buf.len() - p.start;
                if held > MAX_REQUEST {
                    // Keep scanning for its end, but stop holding its bytes.
                    p.discarded += held;
                    self.buf.truncate(p.start);
                    p.scanned = p.start;
                    let len = self.buf.len();
                    self.arrivals.retain(|&(o, _)| o < len);
                }
                self.pending = Some(p);
                return Step::Wait;
            }
        };
        let bytes = &self.buf[p.start..end];
        self.pos = end;
        let reply_name = match p.name {
            Ok(n) => n,
            // Not run at all: a request whose answer cannot be delivered safely is not executed.
            Err(reason) => {
                return Step::Frame(Frame::Dropped(format!("request refused: {reason}")))
            }
        };
        if p.discarded + bytes.len() > MAX_REQUEST {
            return Step::Frame(Frame::Invalid {
                reply_name,
                id: Value::Null,
                error: RpcError::invalid_request(format!(
                    "request of {} bytes is larger than {MAX_REQUEST}",
                    p.discarded + bytes.len()
                )),
            });
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(value) => Step::Frame(match validate(value, reply_name.clone()) {
                Ok(req) => Frame::Request(req),
                Err((id, error)) => Frame::Invalid {
                    reply_name,
                    id,
                    error,
                },
            }),
            Err(e) => {
                let reason = match cut {
                    Some(Cut::Closed) if e.is_eof() => {
                        format!("request truncated where the writer closed: {e}")
                    }
                    Some(Cut::Stalled) => format!(
                        "request unfinished after {REQUEST_STALL:?} (a writer stalled mid-request?): {e}"
                    ),
                    _ => e.to_string(),
                };
                // What failed to parse may hold the next writer's request (an unfinished value
                // swallows what follows when no end-of-file was seen between the two writers):
                // look for a request start again just after this value's first byte.
                let first = bytes
                    .iter()
                    .position(|b| !b.is_ascii_whitespace())
                    .map_or(bytes.len(), |i| i + 1);
                self.pos = p.start + first;
                self.resyncing = true;
                Step::Frame(Frame::Invalid {
                    reply_name,
                    id: Value::Null,
                    error: RpcError::parse_error(reason),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(name: &str, id: u32, method: &str) -> String {
        format!(
            ":{name}:{}",
            json!({"jsonrpc": "2.0", "id": id.to_string(), "method": method, "params": {}})
        )
    }

    fn methods(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Request(r) => r.method.clone(),
                Frame::Invalid { error, .. } => format!("invalid {}", error.code),
                Frame::Dropped(_) => "dropped".into(),
            })
            .collect()
    }

    fn push_all(p: &mut RequestParser, chunks: &[&[u8]]) -> Vec<Frame> {
        chunks.iter().flat_map(|c| p.push(c)).collect()
    }

    #[test]
    fn one_request_without_newline_is_complete_before_the_writer_closes() {
        let mut p = RequestParser::new();
        let frames = p.push(req("r1", 7, "which").as_bytes());
        assert_eq!(frames.len(), 1);
        let Frame::Request(r) = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!(r.method, "which");
        assert_eq!(r.reply_name.as_deref(), Some("r1"));
        assert_eq!(r.id, Some(json!("7")));
        assert_eq!(r.params, Params::Named(Map::new()));
        assert!(p.is_idle());
        assert!(p.finish().is_empty());
    }

    #[test]
    fn several_requests_in_one_write_each_parsed() {
        let mut p = RequestParser::new();
        let data = format!(
            "{}\n{}{}\r\n",
            req("a", 1, "ps"),
            req("b", 2, "version"),
            req("c", 3, "uptime")
        );
        assert_eq!(
            methods(&p.push(data.as_bytes())),
            ["ps", "version", "uptime"]
        );
    }

    #[test]
    fn a_request_split_at_every_byte_is_parsed_once() {
        let data = format!("{}\n{}", req("a", 1, "ps"), req("b", 2, "which"));
        let mut p = RequestParser::new();
        let frames: Vec<Frame> = data.as_bytes().chunks(1).flat_map(|c| p.push(c)).collect();
        assert_eq!(methods(&frames), ["ps", "which"]);
        assert!(p.finish().is_empty());
    }

    #[test]
    fn braces_and_escapes_inside_strings_do_not_end_the_request() {
        let mut p = RequestParser::new();
        let data = r#":r:{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":"}{\"]","b":["\\"]}}"#;
        let frames = push_all(&mut p, &[&data.as_bytes()[..40], &data.as_bytes()[40..]]);
        let Frame::Request(r) = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!(
            r.params,
            Params::Named(
                json!({"a": "}{\"]", "b": ["\\"]})
                    .as_object()
                    .cloned()
                    .unwrap()
            )
        );
    }

    #[test]
    fn partial_request_waits_then_ends_at_close_with_a_parse_error() {
        let mut p = RequestParser::new();
        assert!(p.push(b":r:{\"jsonrpc\":\"2.0\",").is_empty());
        assert!(!p.is_idle());
        let frames = p.finish();
        assert_eq!(methods(&frames), ["invalid -32700"]);
        let Frame::Invalid { reply_name, id, .. } = &frames[0] else {
            unreachable!()
        };
        assert_eq!(reply_name.as_deref(), Some("r"));
        assert_eq!(id, &Value::Null);
        assert!(p.is_idle());
    }

    #[test]
    fn partial_reply_name_waits() {
        let mut p = RequestParser::new();
        assert!(p.push(b"  :repl").is_empty());
        let frames = push_all(&mut p, &[b"y:", &req("", 0, "ps").as_bytes()[2..]]);
        let Frame::Request(r) = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!(r.reply_name.as_deref(), Some("reply"));
    }

    #[test]
    fn garbage_then_valid_request() {
        let mut p = RequestParser::new();
        let data = format!("hello world\n{}", req("r", 1, "ps"));
        assert_eq!(methods(&p.push(data.as_bytes())), ["dropped", "ps"]);
        // Garbage glued to the next writer's request (no close seen in between).
        let data = format!("junk without end{}", req("r", 2, "which"));
        assert_eq!(methods(&p.push(data.as_bytes())), ["dropped", "which"]);
        // A JSON fragment ending in ':' glued to a request: the request keeps its reply name.
        let data = format!("{{\"key\":{}", req("r", 4, "ps"));
        let frames = p.push(data.as_bytes());
        assert_eq!(methods(&frames), ["dropped", "ps"]);
        assert!(matches!(&frames[1], Frame::Request(r) if r.reply_name.as_deref() == Some("r")));
        // After a blank, `::` is a request without reply name, wherever a read splits them.
        let data = format!("junk\n{}", req("", 5, "ps"));
        for cut in 0..=data.len() {
            let (a, b) = data.as_bytes().split_at(cut);
            let frames = push_all(&mut p, &[a, b]);
            assert_eq!(
                methods(&frames).last().map(String::as_str),
                Some("ps"),
                "{cut}"
            );
            assert!(
                matches!(&frames[frames.len() - 1], Frame::Request(r) if r.reply_name.is_none())
            );
        }
        // Garbage alone, then the writer closes: dropped, and the parser is clean again.
        assert_eq!(methods(&p.push(b"\x00\xff")), ["dropped"]);
        assert!(p.finish().is_empty());
        assert_eq!(methods(&p.push(req("r", 3, "ps").as_bytes())), ["ps"]);
    }

    #[test]
    fn invalid_json_is_a_parse_error_and_the_next_request_is_served() {
        let mut p = RequestParser::new();
        let data = format!(":r:{{\"jsonrpc\" 2.0}}{}", req("s", 1, "ps"));
        let frames = p.push(data.as_bytes());
        assert_eq!(methods(&frames), ["invalid -32700", "ps"]);
        // A bare word as the value.
        let frames = push_all(&mut p, &[b":r:hello", b" "]);
        assert_eq!(methods(&frames), ["invalid -32700"]);
        // A bare number at the end of the buffer waits: more digits may come.
        assert!(p.push(b":r:12").is_empty());
        assert_eq!(methods(&p.finish()), ["invalid -32600"]);
    }

    #[test]
    fn an_unfinished_value_does_not_swallow_the_next_writers_request() {
        // Writer 1 stops mid-value and closes, writer 2 sends garbage, writer 3 a request, and no
        // end-of-file was seen in between: everything arrives as one stream.
        let mut p = RequestParser::new();
        let data = format!(":r:{{\"jsonrpc\":garbage\n{}", req("s", 1, "ps"));
        assert!(
            p.push(data.as_bytes()).is_empty(),
            "the brackets never balance"
        );
        assert_eq!(methods(&p.finish()), ["invalid -32700", "ps"]);
        // Balanced, but broken: the request glued after it is found again.
        let data = format!(":r:{{\"k\":[1,2 3]}}{}", req("s", 2, "which"));
        assert_eq!(
            methods(&p.push(data.as_bytes())),
            ["invalid -32700", "which"]
        );
        let data = format!(":r:{{\"a\":1 \"b\":2}}\n{}", req("s", 3, "ps"));
        assert_eq!(methods(&p.push(data.as_bytes())), ["invalid -32700", "ps"]);
    }

    #[test]
    fn no_value_after_the_reply_name() {
        let mut p = RequestParser::new();
        let data = format!(":r:{}", req("s", 1, "ps"));
        assert_eq!(methods(&p.push(data.as_bytes())), ["invalid -32700", "ps"]);
        assert!(p.push(b":r:  ").is_empty());
        assert_eq!(methods(&p.finish()), ["invalid -32700"]);
    }

    #[test]
    fn invalid_requests_get_minus_32600_with_their_id() {
        let cases = [
            (r#"[1,2]"#, Value::Null),
            (r#""just a string""#, Value::Null),
            (r#"{"jsonrpc":"1.0","id":5,"method":"ps"}"#, json!(5)),
            (r#"{"id":5,"method":"ps"}"#, json!(5)),
            (r#"{"jsonrpc":"2.0","id":"x","method":3}"#, json!("x")),
            (r#"{"jsonrpc":"2.0","id":"x","method":""}"#, json!("x")),
            (
                r#"{"jsonrpc":"2.0","id":"x","method":"ps","params":"a"}"#,
                json!("x"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ps"}"#,
                Value::Null,
            ),
        ];
        for (body, want_id) in cases {
            let mut p = RequestParser::new();
            let frames = p.push(format!(":r:{body}").as_bytes());
            match &frames[..] {
                [Frame::Invalid {
                    reply_name,
                    id,
                    error,
                }] => {
                    assert_eq!(error.code, RpcError::INVALID_REQUEST, "{body}");
                    assert_eq!(id, &want_id, "{body}");
                    assert_eq!(reply_name.as_deref(), Some("r"));
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_id_is_a_notification_and_params_forms() {
        let mut p = RequestParser::new();
        let frames = p.push(
            br#":r:{"jsonrpc":"2.0","method":"ps"}:r:{"jsonrpc":"2.0","method":"ps","id":null,"params":["a",1]}"#,
        );
        let [Frame::Request(a), Frame::Request(b)] = &frames[..] else {
            panic!("{frames:?}")
        };
        assert_eq!(a.id, None);
        assert_eq!(a.params, Params::None);
        assert_eq!(b.id, Some(Value::Null));
        assert_eq!(b.params, Params::Positional(vec![json!("a"), json!(1)]));
    }

    #[test]
    fn empty_reply_name_runs_without_reply() {
        let mut p = RequestParser::new();
        let frames = p.push(req("", 1, "ps").as_bytes());
        let [Frame::Request(r)] = &frames[..] else {
            panic!("{frames:?}")
        };
        assert_eq!(r.reply_name, None);
    }

    #[test]
    fn bad_reply_names_are_refused_and_not_run() {
        for name in ["../x", "a.b", "a/b", "a\\b", ".", "x\ty"] {
            let mut p = RequestParser::new();
            let data = format!("{}{}", req(name, 1, "sockets_reload"), req("ok", 2, "ps"));
            let got = methods(&p.push(data.as_bytes()));
            // Refused (names with blanks are not even taken for names): never run.
            assert_eq!(got.last().map(String::as_str), Some("ps"), "{name:?}");
            assert!(
                got[..got.len() - 1].iter().all(|m| m == "dropped"),
                "{name:?}: {got:?}"
            );
        }
        let long = "n".repeat(MAX_REPLY_NAME);
        let mut p = RequestParser::new();
        assert_eq!(methods(&p.push(req(&long, 1, "ps").as_bytes())), ["ps"]);
        let longer = "n".repeat(MAX_REPLY_NAME + 1);
        let data = format!("{}{}", req(&longer, 1, "ps"), req("ok", 2, "which"));
        let frames = p.push(data.as_bytes());
        assert_eq!(
            frames.last().map(|f| methods(std::slice::from_ref(f))),
            Some(vec!["which".to_string()])
        );
        assert!(frames
            .iter()
            .all(|f| !matches!(f, Frame::Request(r) if r.method == "ps")));
    }

    #[test]
    fn check_reply_name_cases() {
        assert_eq!(check_reply_name(b""), Ok(None));
        assert_eq!(
            check_reply_name(b"opensips_fifo_reply_123_1700000000_5"),
            Ok(Some("opensips_fifo_reply_123_1700000000_5".into()))
        );
        assert!(check_reply_name(b"..").is_err());
        assert!(check_reply_name(b"\xff\xfe").is_err());
        assert!(check_reply_name(b"a\nb").is_err());
    }

    #[test]
    fn huge_request_is_framed_and_parsed() {
        let big = "x".repeat(MAX_REQUEST / 2);
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"v": big}});
        let data = format!(":r:{body}{}", req("r", 2, "ps"));
        let mut p = RequestParser::new();
        let frames: Vec<Frame> = data
            .as_bytes()
            .chunks(4096)
            .flat_map(|c| p.push(c))
            .collect();
        assert_eq!(methods(&frames), ["m", "ps"]);
    }

    #[test]
    fn too_large_request_is_skipped_without_being_held() {
        let big = "y".repeat(MAX_REQUEST + 10);
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "m", "params": [big, "}"]});
        let data = format!(":r:{body}\n{}", req("r", 2, "ps"));
        let mut p = RequestParser::new();
        let mut frames = Vec::new();
        for c in data.as_bytes().chunks(65536) {
            frames.extend(p.push(c));
            assert!(p.buf.len() <= MAX_REQUEST + 2 * 65536);
        }
        assert_eq!(methods(&frames), ["invalid -32600", "ps"]);
    }

    #[test]
    fn deep_nesting_is_a_parse_error_not_a_crash() {
        let data = format!(":r:{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let mut p = RequestParser::new();
        assert_eq!(methods(&p.push(data.as_bytes())), ["invalid -32700"]);
    }

    #[test]
    fn encode_reply_is_one_line() {
        let ok = encode_reply(&json!("7"), &Ok(json!({"a": "b\nc"})));
        let text = String::from_utf8(ok).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches('\n').count(), 1);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "result": {"a": "b\nc"}, "id": "7"})
        );

        let err = encode_reply(&Value::Null, &Err(RpcError::parse_error("bad")));
        let v: Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error", "data": "bad"}, "id": null})
        );
        assert_eq!(
            RpcError::from_json(&v["error"]),
            Some(RpcError::parse_error("bad"))
        );
    }

    /// The time `ms` milliseconds after `t0`.
    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    const STALL_MS: u64 = REQUEST_STALL.as_millis() as u64;

    #[test]
    fn a_request_held_unfinished_is_cut_at_its_deadline_and_what_it_swallowed_is_served() {
        let t0 = Instant::now();
        let mut p = RequestParser::new();
        assert_eq!(p.deadline(), None);
        assert!(p
            .push_at(b":stall:{\"jsonrpc\":\"2.0\",\"id\":\"s\",", t0)
            .is_empty());
        assert_eq!(p.deadline(), Some(t0 + REQUEST_STALL));
        // Another writer's request is taken for the rest of the unfinished one.
        assert!(p
            .push_at(req("c", 1, "version").as_bytes(), at(t0, 20))
            .is_empty());
        assert_eq!(
            p.deadline(),
            Some(t0 + REQUEST_STALL),
            "more bytes do not move the deadline"
        );
        assert!(p.expire(at(t0, STALL_MS - 1)).is_empty());
        let frames = p.expire(at(t0, STALL_MS));
        assert_eq!(methods(&frames), ["invalid -32700", "version"]);
        let Frame::Invalid {
            reply_name,
            id,
            error,
        } = &frames[0]
        else {
            unreachable!()
        };
        assert_eq!(reply_name.as_deref(), Some("stall"));
        assert_eq!(id, &Value::Null);
        assert!(error.to_string().contains("unfinished after 1s"), "{error}");
        let Frame::Request(r) = &frames[1] else {
            unreachable!()
        };
        assert_eq!(r.reply_name.as_deref(), Some("c"));
        assert!(p.is_idle());
        assert_eq!(p.deadline(), None);
        // The stalled writer's later bytes are garbage now, the next request is served, and the
        // close leaves nothing behind.
        let data = format!("\"x\":1}}{}", req("d", 2, "ps"));
        assert_eq!(
            methods(&p.push_at(data.as_bytes(), at(t0, 1500))),
            ["dropped", "dropped", "ps"]
        );
        assert!(p.finish().is_empty());
    }

    #[test]
    fn a_stalled_request_without_reply_name_or_with_a_refused_one() {
        let t0 = Instant::now();
        let mut p = RequestParser::new();
        assert!(p.push_at(b"::{\"jsonrpc\":", t0).is_empty());
        let frames = p.expire(at(t0, STALL_MS));
        let [Frame::Invalid {
            reply_name: None,
            error,
            ..
        }] = &frames[..]
        else {
            panic!("{frames:?}")
        };
        assert_eq!(error.code, RpcError::PARSE_ERROR);
        assert!(p.push_at(b":a.b:{\"jsonrpc\":", at(t0, 2000)).is_empty());
        assert_eq!(methods(&p.expire(at(t0, 2000 + STALL_MS))), ["dropped"]);
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn a_stalled_reply_name_is_dropped_and_the_next_request_served() {
        let t0 = Instant::now();
        let mut p = RequestParser::new();
        assert!(p.push_at(b"  :stall_rep", t0).is_empty());
        assert_eq!(p.deadline(), Some(t0 + REQUEST_STALL));
        assert!(p.expire(at(t0, 999)).is_empty());
        let frames = p.expire(at(t0, STALL_MS));
        let [Frame::Dropped(reason)] = &frames[..] else {
            panic!("{frames:?}")
        };
        assert!(reason.contains("unfinished"), "{reason}");
        assert_eq!(p.deadline(), None);
        assert_eq!(
            methods(&p.push_at(req("r", 1, "ps").as_bytes(), at(t0, 3000))),
            ["ps"]
        );
    }

    #[test]
    fn stalled_requests_one_behind_the_other_each_end_at_their_own_deadline() {
        // Two writers stall 400 ms apart, then a third sends a whole request.
        let t0 = Instant::now();
        let mut p = RequestParser::new();
        assert!(p.push_at(b":s1:{\"jsonrpc\":", t0).is_empty());
        assert!(p.push_at(b":s2:[1,", at(t0, 400)).is_empty());
        assert!(p
            .push_at(req("c", 1, "which").as_bytes(), at(t0, 500))
            .is_empty());
        // s1 ends; s2 is found again, still unfinished and not yet due.
        let frames = p.expire(at(t0, STALL_MS));
        assert_eq!(methods(&frames), ["invalid -32700"]);
        assert!(matches!(&frames[0], Frame::Invalid { reply_name: Some(n), .. } if n == "s1"));
        assert_eq!(p.deadline(), Some(at(t0, 400 + STALL_MS)));
        let frames = p.expire(at(t0, 400 + STALL_MS));
        assert_eq!(methods(&frames), ["invalid -32700", "which"]);
        assert!(matches!(&frames[0], Frame::Invalid { reply_name: Some(n), .. } if n == "s2"));
        assert!(p.is_idle());

        // Both already due when looked at late: both end at once, the request is served.
        let t1 = at(t0, 10_000);
        assert!(p.push_at(b":s1:{\"jsonrpc\":", t1).is_empty());
        assert!(p.push_at(b":s2:[1,", at(t1, 400)).is_empty());
        assert!(p
            .push_at(req("c", 2, "ps").as_bytes(), at(t1, 500))
            .is_empty());
        let frames = p.expire(at(t1, 5000));
        assert_eq!(methods(&frames), ["invalid -32700", "invalid -32700", "ps"]);
    }

    #[test]
    fn a_request_ending_before_its_deadline_or_in_the_bytes_read_late_is_not_cut() {
        let data = req("r", 1, "ps");
        let (head, tail) = data.as_bytes().split_at(12);
        let t0 = Instant::now();
        let mut p = RequestParser::new();
        assert!(p.push_at(head, t0).is_empty());
        assert_eq!(methods(&p.push_at(tail, at(t0, STALL_MS - 1))), ["ps"]);
        // The loop was busy past the deadline, but the end was in the next read: it counts.
        assert!(p.push_at(head, at(t0, 5000)).is_empty());
        assert_eq!(methods(&p.push_at(tail, at(t0, 9000))), ["ps"]);
        assert!(p.is_idle());
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn arrival_record_stays_small_under_tiny_writes() {
        let t0 = Instant::now();
        let mut p = RequestParser::new();
        assert!(p.push_at(b":r:[", t0).is_empty());
        // A write of one byte every millisecond for most of the deadline.
        for ms in 1..STALL_MS - 1 {
            assert!(p.push_at(b"1,", at(t0, ms)).is_empty());
        }
        assert!(p.arrivals.len() <= (STALL_MS / ARRIVAL_GRAIN.as_millis() as u64) as usize + 1);
        assert_eq!(p.deadline(), Some(t0 + REQUEST_STALL));
        assert_eq!(
            methods(&p.push_at(b"1]", at(t0, STALL_MS - 1))),
            ["invalid -32600"]
        );
        assert!(p.arrivals.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_always_resyncs(junk in proptest::collection::vec(proptest::num::u8::ANY, 0..300), cut in 0usize..400) {
            // Whatever comes first, once the writer closes the next writer's request is served.
            let mut p = RequestParser::new();
            let mut data = junk.clone();
            data.extend_from_slice(req("r", 1, "ps").as_bytes());
            let cut = cut.min(data.len());
            let _ = p.push(&data[..cut]);
            let _ = p.push(&data[cut..]);
            let _ = p.finish();
            proptest::prop_assert!(p.is_idle());
            proptest::prop_assert_eq!(methods(&p.push(req("r", 2, "which").as_bytes())), vec!["which".to_string()]);
        }

        #[test]
        fn a_stalled_writer_never_holds_up_the_next_one(junk in proptest::collection::vec(proptest::num::u8::ANY, 0..300), cut in 0usize..300) {
            // Whatever a writer leaves unfinished while keeping the FIFO open, once its deadline
            // passed the next writer's request is served.
            let t0 = Instant::now();
            let mut p = RequestParser::new();
            let cut = cut.min(junk.len());
            let _ = p.push_at(&junk[..cut], t0);
            let _ = p.push_at(&junk[cut..], at(t0, 5));
            let _ = p.expire(at(t0, STALL_MS + 5));
            proptest::prop_assert_eq!(p.deadline(), None);
            let got = methods(&p.push_at(req("r", 2, "which").as_bytes(), at(t0, 2 * STALL_MS)));
            proptest::prop_assert_eq!(got, vec!["which".to_string()]);
        }
    }
}
