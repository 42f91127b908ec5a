//! `sipload`: a closed-loop SIP OPTIONS load generator over UDP, TCP and TLS.
//!
//! It keeps a bounded window of requests in flight against one or many target sockets, for a
//! bounded count and/or duration, matches each reply to its request in O(1) and without
//! allocation (the window slot and a generation are written in hex into the branch and the
//! Call-ID), and prints sent, answered, lost, late, non-200, latency percentiles, the answered
//! rate and its own CPU time, so a reader can check that the generator was not the bottleneck.
//!
//! UDP: local sockets send round robin to the targets with sendmmsg/recvmmsg. TCP and TLS: the
//! window is spread over `--connections` persistent connections (connection i to target
//! i mod targets), requests are pipelined on each, and replies are framed by Content-Length
//! (`stream.rs`). TLS uses rustls with the ring provider, verifying the server against `--ca`, or
//! not at all with `--insecure` (benchmarks only).
//!
//! There are no retransmissions: a request unanswered after `--timeout` counts as lost and its
//! slot is reused; a reply arriving after that counts as late. The loop is single-threaded with
//! poll(2), so on a 2-core machine the generator leaves most of the CPU to the server under test.
//!
//! Run `sipload --help` for the options. Traffic goes only to loopback unless `--allow-remote`.

mod stream;
mod sys;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: sipload [OPTIONS]
  --target IP:PORT        a target socket (repeatable; `udp:`, `tcp:`, `tls:` prefixes accepted
                          when they match --transport)
  --targets-file FILE     targets, one per line (same forms; `#` comments)
  --transport T           udp (default), tcp or tls
  --window N              requests in flight at most (default 128)
  --count N               stop sending after N requests
  --duration SECS         stop sending after SECS (default 5 when --count is not given)
  --warmup SECS           run this long first without counting (default 0)
  --timeout SECS          a request unanswered this long is lost and its slot reused (default 1)
  --grace SECS            wait this long at the end for the last replies (default 1)
  --sockets N             udp: local sockets to send from (default 1)
  --connections N         tcp/tls: persistent connections, the window spread over them
                          (default 16, at least the number of targets, at most the window)
  --ca FILE               tls: PEM certificates to verify the server with
  --insecure              tls: accept any server certificate (benchmarks only)
  --server-name NAME      tls: the name to verify (default: the target's IP address)
  --bind IP               local address (default 127.0.0.1)
  --batch N               datagrams per sendmmsg/recvmmsg, or requests per write on a
                          connection (default 64, max 256)
  --json                  print one JSON object instead of text
  --check                 exit 1 unless every request was answered with 200 (and, on tcp/tls,
                          no connection was closed)
  --allow-remote          allow targets outside 127.0.0.0/8
SIGINT/SIGTERM stop sending early; the run then drains and reports as usual.";

/// Hex digits of the request id (slot in the high 32 bits, generation in the low 32).
const ID_LEN: usize = 16;
/// Written before the id in the branch; searched for in replies (responders copy the Via).
const MARKER: &[u8] = b"branch=z9hG4bKsl";
/// Largest datagram accepted back.
const RECV_BUF: usize = 4096;
/// How often in-flight requests are checked for the timeout.
const SCAN_EVERY: Duration = Duration::from_millis(20);

/// The transport of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    fn parse(text: &str) -> Option<Transport> {
        match text.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }

    /// The name in a Via header (`SIP/2.0/UDP`).
    fn via(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// Parsed command line.
struct Opts {
    targets: Vec<SocketAddrV4>,
    transport: Transport,
    window: usize,
    count: Option<u64>,
    duration: Option<Duration>,
    warmup: Duration,
    timeout: Duration,
    grace: Duration,
    sockets: usize,
    connections: usize,
    ca: Option<PathBuf>,
    insecure: bool,
    server_name: Option<String>,
    bind: Ipv4Addr,
    batch: usize,
    json: bool,
    check: bool,
}

/// A target and the transport its prefix named, if any.
fn parse_target(text: &str) -> Result<(SocketAddrV4, Option<Transport>), String> {
    let t = text.trim();
    let (proto, rest) = match t.split_once(':') {
        Some((p, rest)) if Transport::parse(p).is_some() => (Transport::parse(p), rest),
        _ => (None, t),
    };
    let addr = rest
        .parse::<SocketAddrV4>()
        .map_err(|_| format!("bad target {text:?}: expected IPv4:PORT"))?;
    Ok((addr, proto))
}

fn parse_secs(name: &str, v: &str) -> Result<Duration, String> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e6)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{name}: bad number of seconds {v:?}"))
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse::<T>()
        .map_err(|_| format!("{name}: bad number {v:?}"))
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        targets: Vec::new(),
        transport: Transport::Udp,
        window: 128,
        count: None,
        duration: None,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(1),
        grace: Duration::from_secs(1),
        sockets: 1,
        connections: 16,
        ca: None,
        insecure: false,
        server_name: None,
        bind: Ipv4Addr::LOCALHOST,
        batch: 64,
        json: false,
        check: false,
    };
    let mut allow_remote = false;
    let mut connections_given = false;
    // Transports named by target prefixes, checked against --transport once it is known.
    let mut named: Vec<(String, Transport)> = Vec::new();
    let mut add_target = |o: &mut Opts, text: &str| -> Result<(), String> {
        let (addr, proto) = parse_target(text)?;
        if let Some(p) = proto {
            named.push((text.trim().to_string(), p));
        }
        o.targets.push(addr);
        Ok(())
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--target" => add_target(&mut o, &val()?)?,
            "--targets-file" => {
                let f = val()?;
                let text = std::fs::read_to_string(&f).map_err(|e| format!("{f}: {e}"))?;
                for line in text.lines() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if !line.is_empty() {
                        add_target(&mut o, line)?;
                    }
                }
            }
            "--transport" => {
                let v = val()?;
                o.transport = Transport::parse(&v)
                    .ok_or_else(|| format!("--transport: {v:?} is not udp, tcp or tls"))?;
            }
            "--window" => o.window = parse_num(a, &val()?)?,
            "--count" => o.count = Some(parse_num(a, &val()?)?),
            "--duration" => o.duration = Some(parse_secs(a, &val()?)?),
            "--warmup" => o.warmup = parse_secs(a, &val()?)?,
            "--timeout" => o.timeout = parse_secs(a, &val()?)?,
            "--grace" => o.grace = parse_secs(a, &val()?)?,
            "--sockets" => o.sockets = parse_num(a, &val()?)?,
            "--connections" => {
                o.connections = parse_num(a, &val()?)?;
                connections_given = true;
            }
            "--ca" => o.ca = Some(PathBuf::from(val()?)),
            "--insecure" => o.insecure = true,
            "--server-name" => o.server_name = Some(val()?),
            "--bind" => o.bind = parse_num(a, &val()?)?,
            "--batch" => o.batch = parse_num(a, &val()?)?,
            "--json" => o.json = true,
            "--check" => o.check = true,
            "--allow-remote" => allow_remote = true,
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown option {a:?}")),
        }
    }
    if o.targets.is_empty() {
        return Err("no target: give --target or --targets-file".into());
    }
    if let Some((text, _)) = named.iter().find(|(_, p)| *p != o.transport) {
        return Err(format!(
            "target {text:?} does not match --transport {}",
            o.transport.name()
        ));
    }
    if !allow_remote {
        if let Some(t) = o.targets.iter().find(|t| !t.ip().is_loopback()) {
            return Err(format!(
                "target {t} is not on loopback (pass --allow-remote to allow it)"
            ));
        }
    }
    if o.window == 0 || o.window > 1 << 20 {
        return Err("--window must be 1..=1048576".into());
    }
    if o.sockets == 0 || o.sockets > 1024 {
        return Err("--sockets must be 1..=1024".into());
    }
    if o.batch == 0 || o.batch > 256 {
        return Err("--batch must be 1..=256".into());
    }
    if o.transport == Transport::Udp {
        if connections_given || o.ca.is_some() || o.insecure || o.server_name.is_some() {
            return Err("--connections, --ca, --insecure and --server-name are for tcp/tls".into());
        }
    } else {
        if !connections_given {
            // The default, but never more connections than requests in flight.
            o.connections = o.connections.min(o.window).max(o.targets.len());
        }
        if o.connections == 0 || o.connections > 4096 {
            return Err("--connections must be 1..=4096".into());
        }
        if o.connections < o.targets.len() {
            return Err(format!(
                "--connections {} is below the number of targets ({}): each target needs one",
                o.connections,
                o.targets.len()
            ));
        }
        if o.window < o.connections {
            return Err("--window must be at least --connections".into());
        }
        if o.transport == Transport::Tcp
            && (o.ca.is_some() || o.insecure || o.server_name.is_some())
        {
            return Err("--ca, --insecure and --server-name are for tls".into());
        }
        if o.transport == Transport::Tls && o.ca.is_none() && !o.insecure {
            return Err("tls needs --ca FILE (or --insecure, for benchmarks only)".into());
        }
        if o.ca.is_some() && o.insecure {
            return Err("give --ca or --insecure, not both".into());
        }
    }
    if o.count.is_none() && o.duration.is_none() {
        // Always bounded.
        o.duration = Some(Duration::from_secs(5));
    }
    if o.timeout.is_zero() {
        return Err("--timeout must be above 0".into());
    }
    Ok(o)
}

/// A log-linear latency histogram in nanoseconds: exact below 128 ns, then 64 buckets per power
/// of two (under 1.6 % error), fixed size, so recording never allocates.
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

const SUB: u32 = 64;

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: vec![0; (2 * SUB + (64 - 7) * SUB) as usize],
            count: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < 2 * SUB as u64 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= 7
        let shift = e - 6;
        let mant = (v >> shift) as u32; // 64..=127
        (2 * SUB + (shift - 1) * SUB + (mant - SUB)) as usize
    }

    fn value(i: usize) -> u64 {
        let i = i as u32;
        if i < 2 * SUB {
            return i as u64;
        }
        let shift = (i - 2 * SUB) / SUB + 1;
        let mant = (i - 2 * SUB) % SUB + SUB;
        ((mant as u64) << shift) + (1u64 << (shift - 1))
    }

    fn record(&mut self, v: u64) {
        self.buckets[Self::index(v)] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }

    /// The value at quantile `q` (0..=1), in nanoseconds; 0 when empty.
    fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }
}

/// One place of the window.
#[derive(Clone, Copy)]
struct Slot {
    /// Bumped whenever the slot is reused, so a late reply never matches a newer request.
    gen: u32,
    in_flight: bool,
    /// Sent after the warm-up: counted in the results.
    counted: bool,
    target: u32,
    sent_at: u64,
}

/// What a run counts.
#[derive(Default)]
struct Counters {
    sent: u64,
    answered: u64,
    lost: u64,
    late: u64,
    non200: u64,
    junk: u64,
    send_errors: u64,
    /// tcp/tls: connections the server closed (or that failed) during the run.
    closed: u64,
}

/// The window of requests in flight, split into lanes (a local UDP socket, or a connection):
/// slot `s` always goes out on lane `s % lanes`, so its reply can only come back there. Owns the
/// counting, so both transports match, time out and count the same way.
struct Window {
    slots: Vec<Slot>,
    /// Free slots per lane (a stack: the most recently freed is reused first).
    free: Vec<Vec<u32>>,
    lanes: usize,
    in_flight: usize,
    c: Counters,
    hist: Histogram,
    per_target: Vec<u64>,
    last_answer_ns: u64,
}

impl Window {
    fn new(size: usize, lanes: usize, targets: usize) -> Self {
        Window {
            slots: vec![
                Slot {
                    gen: 0,
                    in_flight: false,
                    counted: false,
                    target: 0,
                    sent_at: 0,
                };
                size
            ],
            free: (0..lanes)
                .map(|j| {
                    (0..size as u32)
                        .rev()
                        .filter(|s| *s as usize % lanes == j)
                        .collect()
                })
                .collect(),
            lanes,
            in_flight: 0,
            c: Counters::default(),
            hist: Histogram::new(),
            per_target: vec![0; targets],
            last_answer_ns: 0,
        }
    }

    fn free_in(&self, lane: usize) -> usize {
        self.free[lane].len()
    }

    fn all_busy(&self) -> bool {
        self.free.iter().all(Vec::is_empty)
    }

    /// Take a free slot of `lane` for a request to `target`: (slot, request id).
    fn take(&mut self, lane: usize, target: usize) -> Option<(u32, u64)> {
        let s = self.free[lane].pop()?;
        let slot = &mut self.slots[s as usize];
        slot.gen = slot.gen.wrapping_add(1);
        slot.target = target as u32;
        Some((s, (s as u64) << 32 | slot.gen as u64))
    }

    /// A taken slot whose request did not go out.
    fn put_back(&mut self, s: u32) {
        self.free[s as usize % self.lanes].push(s);
    }

    /// A taken slot whose request went out at `now`.
    fn sent(&mut self, s: u32, now: u64, warm: bool) {
        let slot = &mut self.slots[s as usize];
        slot.in_flight = true;
        slot.counted = warm;
        slot.sent_at = now;
        self.in_flight += 1;
        if warm {
            self.c.sent += 1;
        }
    }

    /// A reply (or anything) received on `lane` at `now`.
    fn reply(&mut self, lane: usize, msg: &[u8], now: u64) {
        let Some(id) = find_id(msg) else {
            self.c.junk += 1;
            return;
        };
        let (s, gen) = ((id >> 32) as usize, id as u32);
        let lanes = self.lanes;
        let Some(slot) = self
            .slots
            .get_mut(s)
            .filter(|sl| s % lanes == lane && sl.gen == gen)
        else {
            self.c.junk += 1;
            return;
        };
        if !slot.in_flight {
            // Already timed out (or a duplicate): not an answer.
            if slot.counted {
                self.c.late += 1;
            }
            return;
        }
        slot.in_flight = false;
        self.in_flight -= 1;
        self.free[lane].push(s as u32);
        if slot.counted {
            self.c.answered += 1;
            self.per_target[slot.target as usize] += 1;
            self.hist.record(now.saturating_sub(slot.sent_at));
            self.last_answer_ns = now;
            if status_code(msg) != Some(200) {
                self.c.non200 += 1;
            }
        }
    }

    /// Requests unanswered for `timeout` are lost; their slots go back to their lanes.
    fn expire(&mut self, now: u64, timeout: u64) {
        for (s, slot) in self.slots.iter_mut().enumerate() {
            if slot.in_flight && now.saturating_sub(slot.sent_at) >= timeout {
                slot.in_flight = false;
                self.in_flight -= 1;
                self.free[s % self.lanes].push(s as u32);
                if slot.counted {
                    self.c.lost += 1;
                }
            }
        }
    }

    /// A lane is gone (a closed connection): its requests in flight are lost and its slots are
    /// never used again.
    fn close_lane(&mut self, lane: usize) {
        self.c.closed += 1;
        self.free[lane].clear();
        for (s, slot) in self.slots.iter_mut().enumerate() {
            if s % self.lanes == lane && slot.in_flight {
                slot.in_flight = false;
                self.in_flight -= 1;
                if slot.counted {
                    self.c.lost += 1;
                }
            }
        }
    }

    /// The end of a run: what is still in flight is lost.
    fn finish(&mut self) {
        self.c.lost += self
            .slots
            .iter()
            .filter(|s| s.in_flight && s.counted)
            .count() as u64;
    }
}

/// Lowercase hex of `v` into `out` (exactly 16 bytes).
fn put_hex(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn get_hex(s: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = v << 4 | d as u64;
    }
    Some(v)
}

/// Find the request id in a reply. The branch is in the top Via, near the start of the message,
/// so a forward scan stops early.
fn find_id(msg: &[u8]) -> Option<u64> {
    let last = msg.len().checked_sub(MARKER.len() + ID_LEN)?;
    let mut i = 0;
    while i <= last {
        if msg[i] == MARKER[0] && &msg[i..i + MARKER.len()] == MARKER {
            let s = i + MARKER.len();
            return get_hex(&msg[s..s + ID_LEN]);
        }
        i += 1;
    }
    None
}

/// The status code of a response (`SIP/2.0 200 OK`), or None for anything else.
fn status_code(msg: &[u8]) -> Option<u16> {
    if msg.len() < 12 || &msg[..8] != b"SIP/2.0 " {
        return None;
    }
    let d = &msg[8..11];
    if !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(d.iter().fold(0u16, |a, c| a * 10 + (c - b'0') as u16))
}

/// Pre-rendered pieces of a request, so building one is a few copies and 2 x 16 hex digits.
struct Template {
    /// Up to the id in the branch.
    head: Vec<u8>,
    /// From after the branch id to the id in the Call-ID.
    mid: Vec<u8>,
    /// After the Call-ID id.
    tail: Vec<u8>,
}

impl Template {
    fn new(transport: Transport, target: SocketAddrV4, local: SocketAddrV4, tag: &str) -> Self {
        // A Request-URI and Contact that name the transport, as a stream peer expects.
        let param = match transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        let mut head = format!(
            "OPTIONS sip:{target}{param} SIP/2.0\r\nVia: SIP/2.0/{} {local};rport;",
            transport.via()
        )
        .into_bytes();
        head.extend_from_slice(MARKER);
        let mid = format!(
            "\r\nMax-Forwards: 70\r\nTo: <sip:{target}>\r\nFrom: <sip:sipload@{local}>;tag={tag}\r\nCall-ID: "
        )
        .into_bytes();
        let tail = format!(
            "@sipload\r\nCSeq: 1 OPTIONS\r\nContact: <sip:sipload@{local}{param}>\r\nUser-Agent: sipload\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes();
        Template { head, mid, tail }
    }

    /// Append the request with id `id` to `out`.
    fn render(&self, out: &mut Vec<u8>, id: u64) {
        let mut hex = [0u8; ID_LEN];
        put_hex(&mut hex, id);
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&hex);
        out.extend_from_slice(&self.mid);
        out.extend_from_slice(&hex);
        out.extend_from_slice(&self.tail);
    }
}

/// The results of one run.
struct Report {
    c: Counters,
    hist: Histogram,
    elapsed: Duration,
    cpu_user: Duration,
    cpu_sys: Duration,
    transport: Transport,
    targets: usize,
    targets_silent: usize,
    window: usize,
    /// Local UDP sockets, or connections.
    sockets: usize,
}

impl Report {
    fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.c.answered as f64 / s
        } else {
            0.0
        }
    }

    fn cpu_pct(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            100.0 * (self.cpu_user + self.cpu_sys).as_secs_f64() / s
        } else {
            0.0
        }
    }

    fn us(ns: u64) -> f64 {
        ns as f64 / 1000.0
    }

    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let c = &self.c;
        let what = if self.transport == Transport::Udp {
            "local socket(s)"
        } else {
            "connection(s)"
        };
        writeln!(
            out,
            "sipload: OPTIONS over {}, {} target(s), window {}, {} {what}, {:.2} s",
            self.transport.name(),
            self.targets,
            self.window,
            self.sockets,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            out,
            "sent {}  answered {}  lost {}  late {}  non-200 {}  junk {}  send errors {}",
            c.sent, c.answered, c.lost, c.late, c.non200, c.junk, c.send_errors
        )?;
        if self.transport != Transport::Udp {
            writeln!(out, "connections closed during the run: {}", c.closed)?;
        }
        writeln!(out, "rate {:.0} answered/s", self.rate())?;
        writeln!(
            out,
            "latency p50 {:.1} us  p90 {:.1} us  p99 {:.1} us  max {:.1} us",
            Self::us(self.hist.quantile(0.5)),
            Self::us(self.hist.quantile(0.9)),
            Self::us(self.hist.quantile(0.99)),
            Self::us(self.hist.max)
        )?;
        writeln!(
            out,
            "own cpu {:.2} s user + {:.2} s sys = {:.0}% of one core",
            self.cpu_user.as_secs_f64(),
            self.cpu_sys.as_secs_f64(),
            self.cpu_pct()
        )?;
        if self.targets_silent > 0 {
            writeln!(out, "targets that never answered: {}", self.targets_silent)?;
        }
        Ok(())
    }

    fn print_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        let c = &self.c;
        writeln!(
            out,
            "{{\"sent\": {}, \"answered\": {}, \"lost\": {}, \"late\": {}, \"non200\": {}, \
             \"junk\": {}, \"send_errors\": {}, \"elapsed_s\": {:.6}, \"rate\": {:.1}, \
             \"p50_us\": {:.1}, \"p90_us\": {:.1}, \"p99_us\": {:.1}, \"max_us\": {:.1}, \
             \"cpu_user_s\": {:.3}, \"cpu_sys_s\": {:.3}, \"cpu_pct\": {:.1}, \"targets\": {}, \
             \"targets_silent\": {}, \"window\": {}, \"sockets\": {}, \"transport\": \"{}\", \
             \"closed\": {}}}",
            c.sent,
            c.answered,
            c.lost,
            c.late,
            c.non200,
            c.junk,
            c.send_errors,
            self.elapsed.as_secs_f64(),
            self.rate(),
            Self::us(self.hist.quantile(0.5)),
            Self::us(self.hist.quantile(0.9)),
            Self::us(self.hist.quantile(0.99)),
            Self::us(self.hist.max),
            self.cpu_user.as_secs_f64(),
            self.cpu_sys.as_secs_f64(),
            self.cpu_pct(),
            self.targets,
            self.targets_silent,
            self.window,
            self.sockets,
            self.transport.name(),
            c.closed
        )
    }
}

/// The clock and phases of a run, shared by both transports: warm-up, sending (until the count
/// or the duration), then draining for at most the grace period.
struct Phases {
    t0: Instant,
    warm_end: u64,
    warm: bool,
    start_ns: u64,
    cpu0: (Duration, Duration),
    send_end: Option<u64>,
    stop_sending_at: Option<u64>,
    next_scan: u64,
    timeout: u64,
    grace: u64,
    count: Option<u64>,
}

impl Phases {
    fn new(o: &Opts) -> Self {
        let warm_end = o.warmup.as_nanos() as u64;
        Phases {
            t0: Instant::now(),
            warm_end,
            warm: o.warmup.is_zero(),
            start_ns: 0,
            cpu0: sys::cpu_time(),
            send_end: o.duration.map(|d| warm_end + d.as_nanos() as u64),
            stop_sending_at: None,
            next_scan: SCAN_EVERY.as_nanos() as u64,
            timeout: o.timeout.as_nanos() as u64,
            grace: o.grace.as_nanos() as u64,
            count: o.count,
        }
    }

    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Start of a loop turn: leave the warm-up, stop sending when due.
    fn tick(&mut self, now: u64, sent: u64) {
        if !self.warm && now >= self.warm_end {
            // Warm-up over: count from here; earlier requests still in flight are not counted.
            self.warm = true;
            self.start_ns = now;
            self.cpu0 = sys::cpu_time();
        }
        if self.stop_sending_at.is_none() {
            let by_count = self.count.is_some_and(|n| sent >= n && self.warm);
            let by_time = self.send_end.is_some_and(|e| now >= e);
            if by_count || by_time || sys::stop_requested() {
                self.stop_sending_at = Some(now);
            }
        }
    }

    fn sending(&self) -> bool {
        self.stop_sending_at.is_none()
    }

    /// How many more requests may go out now.
    fn budget(&self, sent: u64) -> usize {
        match self.count {
            Some(n) if self.warm => n.saturating_sub(sent) as usize,
            _ => usize::MAX,
        }
    }

    /// Time out old requests when a scan is due.
    fn scan(&mut self, now: u64, w: &mut Window) {
        if now >= self.next_scan {
            self.next_scan = now + SCAN_EVERY.as_nanos() as u64;
            w.expire(now, self.timeout);
        }
    }

    /// Whether the run is over (sending stopped and everything answered, or the grace is over).
    fn done(&self, now: u64, in_flight: usize) -> bool {
        self.stop_sending_at
            .is_some_and(|stop| in_flight == 0 || now >= stop + self.grace)
    }

    /// How long an idle loop may sleep, in ms (1..=50).
    fn wait_ms(&self, now: u64) -> i32 {
        let mut deadline = self.next_scan;
        if let Some(e) = self.send_end {
            deadline = deadline.min(e);
        }
        if !self.warm {
            deadline = deadline.min(self.warm_end);
        }
        if let Some(stop) = self.stop_sending_at {
            deadline = deadline.min(stop + self.grace);
        }
        (deadline.saturating_sub(now) / 1_000_000).clamp(1, 50) as i32
    }

    fn report(&self, o: &Opts, mut w: Window, lanes: usize) -> Report {
        w.finish();
        let cpu1 = sys::cpu_time();
        let end = if w.last_answer_ns > self.start_ns {
            w.last_answer_ns
        } else {
            self.stop_sending_at.unwrap_or_else(|| self.now())
        };
        Report {
            elapsed: Duration::from_nanos(end.saturating_sub(self.start_ns)),
            cpu_user: cpu1.0.saturating_sub(self.cpu0.0),
            cpu_sys: cpu1.1.saturating_sub(self.cpu0.1),
            transport: o.transport,
            targets: o.targets.len(),
            targets_silent: if w.c.sent > 0 {
                w.per_target.iter().filter(|n| **n == 0).count()
            } else {
                0
            },
            window: o.window,
            sockets: lanes,
            c: w.c,
            hist: w.hist,
        }
    }
}

/// The UDP load loop.
fn run_udp(o: &Opts) -> std::io::Result<Report> {
    let mut socks = Vec::with_capacity(o.sockets);
    for _ in 0..o.sockets {
        let s = UdpSocket::bind(SocketAddrV4::new(o.bind, 0))?;
        s.set_nonblocking(true)?;
        sys::set_bufsize(s.as_fd(), 4 << 20);
        socks.push(s);
    }
    let locals: Vec<SocketAddrV4> = socks
        .iter()
        .map(|s| match s.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => Ok(a),
            Ok(other) => Err(std::io::Error::other(format!("unexpected {other}"))),
            Err(e) => Err(e),
        })
        .collect::<Result<_, _>>()?;
    let tag = format!("{:x}", std::process::id());
    // templates[k][t]: local socket k to target t. Bounded: 1024 x targets small strings.
    let templates: Vec<Vec<Template>> = locals
        .iter()
        .map(|l| {
            o.targets
                .iter()
                .map(|t| Template::new(Transport::Udp, *t, *l, &tag))
                .collect()
        })
        .collect();

    let k = o.sockets;
    let mut w = Window::new(o.window, k, o.targets.len());
    let mut next_target = 0usize;
    let mut sb = sys::SendBatch::new(o.batch);
    let mut rb = sys::RecvBatch::new(o.batch, RECV_BUF);
    let mut pfds = sys::PollSet::new(socks.iter().map(|s| s.as_fd().as_raw_fd()));
    let mut ph = Phases::new(o);

    loop {
        let mut now = ph.now();
        ph.tick(now, w.c.sent);

        // Send: refill the window, one sendmmsg per batch.
        let mut send_stuck = false;
        if ph.sending() {
            for j in 0..k {
                loop {
                    let take = o.batch.min(w.free_in(j)).min(ph.budget(w.c.sent));
                    if take == 0 {
                        break;
                    }
                    sb.clear();
                    for _ in 0..take {
                        let (s, id) = w.take(j, next_target).expect("take <= free");
                        let buf = sb.next_buf(o.targets[next_target], s);
                        buf.clear();
                        templates[j][next_target].render(buf, id);
                        next_target += 1;
                        if next_target == o.targets.len() {
                            next_target = 0;
                        }
                    }
                    let sent = match sys::send_batch(socks[j].as_fd(), &mut sb) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                        Err(_) => {
                            w.c.send_errors += 1;
                            0
                        }
                    };
                    // Full send queue or an error: wait a little instead of spinning.
                    send_stuck |= sent == 0;
                    now = ph.now();
                    for (i, &s) in sb.slots().iter().enumerate() {
                        if i < sent {
                            w.sent(s, now, ph.warm);
                        } else {
                            w.put_back(s);
                        }
                    }
                    if sent < take {
                        break;
                    }
                }
            }
        }

        // Receive whatever is there, without blocking.
        let mut got = 0;
        for (j, sock) in socks.iter().enumerate() {
            loop {
                let n = match sys::recv_batch(sock.as_fd(), &mut rb) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => 0,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    break;
                }
                got += n;
                let now = ph.now();
                for i in 0..n {
                    w.reply(j, rb.msg(i), now);
                }
                if n < o.batch {
                    break;
                }
            }
        }

        let now = ph.now();
        ph.scan(now, &mut w);
        if ph.done(now, w.in_flight) {
            break;
        }
        if got == 0 && (w.in_flight > 0 || send_stuck || !ph.sending() || w.all_busy()) {
            // Nothing arrived: sleep until something does or the next check is due.
            pfds.wait(ph.wait_ms(now));
        }
    }
    Ok(ph.report(o, w, k))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_args(&args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sipload: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    sys::raise_nofile();
    sys::install_stop_handlers();
    let r = match o.transport {
        Transport::Udp => run_udp(&o).map_err(|e| e.to_string()),
        Transport::Tcp | Transport::Tls => stream::run(&o),
    };
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sipload: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let printed = if o.json {
        r.print_json(&mut out)
    } else {
        r.print_text(&mut out)
    };
    if let Err(e) = printed {
        eprintln!("sipload: {e}");
        return ExitCode::from(1);
    }
    let c = &r.c;
    if o.check
        && (c.answered == 0 || c.answered != c.sent || c.non200 > 0 || c.late > 0 || c.closed > 0)
    {
        eprintln!("sipload: --check failed: not every request was answered with 200");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_within_two_percent() {
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            1000,
            12_345,
            1_000_000,
            987_654_321,
            u64::MAX / 3,
        ] {
            let back = Histogram::value(Histogram::index(v));
            let err = (back as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.02, "{v} -> {back}");
        }
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        assert_eq!(h.quantile(1.0), 1_000_000);
    }

    #[test]
    fn request_id_round_trips_through_a_reply() {
        let t = Template::new(
            Transport::Udp,
            "127.0.0.1:5070".parse().unwrap(),
            "127.0.0.1:40000".parse().unwrap(),
            "abc",
        );
        let mut buf = Vec::new();
        let id = (77u64 << 32) | 0xdead_beef;
        t.render(&mut buf, id);
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(
            text.starts_with("OPTIONS sip:127.0.0.1:5070 SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        assert!(
            text.contains("Call-ID: 0000004ddeadbeef@sipload\r\n"),
            "{text}"
        );
        // A responder adds received/rport values to the Via; the branch survives.
        let reply = text
            .replacen("OPTIONS sip:127.0.0.1:5070 SIP/2.0", "SIP/2.0 200 OK", 1)
            .replacen(";rport;", ";rport=40000;received=127.0.0.1;", 1);
        assert_eq!(find_id(reply.as_bytes()), Some(id));
        assert_eq!(status_code(reply.as_bytes()), Some(200));
        assert_eq!(status_code(b"OPTIONS sip:x SIP/2.0\r\n"), None);
        assert_eq!(
            find_id(b"SIP/2.0 200 OK\r\nVia: x;branch=z9hG4bKsl12\r\n"),
            None
        );
        // Rendering appends (a connection queues several requests in one buffer).
        t.render(&mut buf, id + 1);
        assert_eq!(buf.len(), 2 * text.len());
    }

    #[test]
    fn stream_requests_name_their_transport() {
        let t = Template::new(
            Transport::Tls,
            "127.0.0.1:5071".parse().unwrap(),
            "127.0.0.1:40001".parse().unwrap(),
            "abc",
        );
        let mut buf = Vec::new();
        t.render(&mut buf, 1);
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.starts_with("OPTIONS sip:127.0.0.1:5071;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40001;"),
            "{text}"
        );
        assert!(text.contains("Contact: <sip:sipload@127.0.0.1:40001;transport=tls>\r\n"));
    }

    #[test]
    fn the_window_matches_times_out_and_closes_lanes() {
        let mut w = Window::new(4, 2, 1);
        assert_eq!((w.free_in(0), w.free_in(1)), (2, 2));
        let (s0, id0) = w.take(0, 0).unwrap();
        assert_eq!(s0 % 2, 0);
        w.sent(s0, 100, true);
        let (s1, id1) = w.take(1, 0).unwrap();
        w.sent(s1, 100, true);
        let reply = |id: u64| {
            let mut hex = [0u8; ID_LEN];
            put_hex(&mut hex, id);
            let mut m = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP x;".to_vec();
            m.extend_from_slice(MARKER);
            m.extend_from_slice(&hex);
            m.extend_from_slice(b"\r\n\r\n");
            m
        };
        // A reply on the wrong lane is junk, on the right one an answer.
        w.reply(1, &reply(id0), 150);
        assert_eq!((w.c.junk, w.c.answered), (1, 0));
        w.reply(0, &reply(id0), 150);
        assert_eq!((w.c.answered, w.in_flight, w.free_in(0)), (1, 1, 2));
        // The other one times out, then its reply is late.
        w.expire(100 + 1000, 1000);
        assert_eq!((w.c.lost, w.in_flight), (1, 0));
        w.reply(1, &reply(id1), 2000);
        assert_eq!(w.c.late, 1);
        // A closed lane loses what it had in flight and is never used again.
        let (s2, _) = w.take(1, 0).unwrap();
        w.sent(s2, 3000, true);
        w.close_lane(1);
        assert_eq!(
            (w.c.lost, w.c.closed, w.in_flight, w.free_in(1)),
            (2, 1, 0, 0)
        );
        assert!(w.take(1, 0).is_none());
        assert_eq!(w.c.sent, 3);
    }

    #[test]
    fn arguments_are_bounded_and_loopback_only() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_args(&a("--target udp:127.0.0.1:5070")).unwrap();
        assert_eq!(o.duration, Some(Duration::from_secs(5)));
        assert_eq!(o.transport, Transport::Udp);
        assert!(parse_args(&a("--target 192.0.2.1:5060")).is_err());
        assert!(parse_args(&a("--target 192.0.2.1:5060 --allow-remote")).is_ok());
        assert!(parse_args(&a("--window 0 --target 127.0.0.1:1")).is_err());
        assert!(parse_args(&a("")).is_err());
        let o = parse_args(&a("--target 127.0.0.1:1 --count 10")).unwrap();
        assert_eq!((o.count, o.duration), (Some(10), None));
    }

    #[test]
    fn stream_arguments_are_checked() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_args(&a("--transport tcp --target tcp:127.0.0.1:5070")).unwrap();
        assert_eq!((o.transport, o.connections), (Transport::Tcp, 16));
        // The default never exceeds the window; an explicit value must fit in it.
        let o = parse_args(&a("--transport tcp --target 127.0.0.1:1 --window 4")).unwrap();
        assert_eq!(o.connections, 4);
        assert!(parse_args(&a(
            "--transport tcp --target 127.0.0.1:1 --window 4 --connections 8"
        ))
        .is_err());
        // A prefix that contradicts the transport, TLS without a policy, stream-only options
        // on UDP, fewer connections than targets: refused.
        assert!(parse_args(&a("--transport tcp --target udp:127.0.0.1:1")).is_err());
        assert!(parse_args(&a("--target tcp:127.0.0.1:1")).is_err());
        assert!(parse_args(&a("--transport tls --target 127.0.0.1:1")).is_err());
        assert!(parse_args(&a("--transport tls --target 127.0.0.1:1 --insecure")).is_ok());
        assert!(parse_args(&a(
            "--transport tls --target 127.0.0.1:1 --insecure --ca x.pem"
        ))
        .is_err());
        assert!(parse_args(&a("--target 127.0.0.1:1 --connections 2")).is_err());
        assert!(parse_args(&a("--transport tcp --target 127.0.0.1:1 --insecure")).is_err());
        assert!(parse_args(&a(
            "--transport tcp --target 127.0.0.1:1 --target 127.0.0.1:2 --connections 1"
        ))
        .is_err());
    }
}
