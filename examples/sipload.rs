//! `sipload`: a closed-loop SIP OPTIONS load generator over UDP.
//!
//! It keeps a bounded window of requests in flight against one or many target sockets (round
//! robin), for a bounded count and/or duration, matches each reply to its request in O(1) and
//! without allocation (the window slot and a generation are written in hex into the branch and the
//! Call-ID), and prints sent, answered, lost, late, non-200, latency percentiles, the answered rate
//! and its own CPU time, so a reader can check that the generator was not the bottleneck.
//!
//! There are no retransmissions: a request unanswered after `--timeout` counts as lost and its
//! slot is reused; a reply arriving after that counts as late. System calls are batched
//! (sendmmsg/recvmmsg) and the loop is single-threaded with poll(2), so on a 2-core machine the
//! generator leaves most of the CPU to the server under test.
//!
//! Run `sipload --help` for the options. Traffic goes only to loopback unless `--allow-remote`.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: sipload [OPTIONS]
  --target IP:PORT        a target socket (repeatable; `udp:IP:PORT` accepted)
  --targets-file FILE     targets, one per line (`IP:PORT` or `udp:IP:PORT`; `#` comments)
  --window N              requests in flight at most (default 128)
  --count N               stop sending after N requests
  --duration SECS         stop sending after SECS (default 5 when --count is not given)
  --warmup SECS           run this long first without counting (default 0)
  --timeout SECS          a request unanswered this long is lost and its slot reused (default 1)
  --grace SECS            wait this long at the end for the last replies (default 1)
  --sockets N             local UDP sockets to send from (default 1)
  --bind IP               local address (default 127.0.0.1)
  --batch N               datagrams per sendmmsg/recvmmsg (default 64, max 256)
  --json                  print one JSON object instead of text
  --check                 exit 1 unless every request was answered with 200
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

/// Parsed command line.
struct Opts {
    targets: Vec<SocketAddrV4>,
    window: usize,
    count: Option<u64>,
    duration: Option<Duration>,
    warmup: Duration,
    timeout: Duration,
    grace: Duration,
    sockets: usize,
    bind: Ipv4Addr,
    batch: usize,
    json: bool,
    check: bool,
}

fn parse_target(text: &str) -> Result<SocketAddrV4, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("udp:")
        .or_else(|| t.strip_prefix("UDP:"))
        .unwrap_or(t);
    t.parse::<SocketAddrV4>()
        .map_err(|_| format!("bad target {text:?}: expected IPv4:PORT"))
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
        window: 128,
        count: None,
        duration: None,
        warmup: Duration::ZERO,
        timeout: Duration::from_secs(1),
        grace: Duration::from_secs(1),
        sockets: 1,
        bind: Ipv4Addr::LOCALHOST,
        batch: 64,
        json: false,
        check: false,
    };
    let mut allow_remote = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--target" => o.targets.push(parse_target(&val()?)?),
            "--targets-file" => {
                let f = val()?;
                let text = std::fs::read_to_string(&f).map_err(|e| format!("{f}: {e}"))?;
                for line in text.lines() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if !line.is_empty() {
                        o.targets.push(parse_target(line)?);
                    }
                }
            }
            "--window" => o.window = parse_num(a, &val()?)?,
            "--count" => o.count = Some(parse_num(a, &val()?)?),
            "--duration" => o.duration = Some(parse_secs(a, &val()?)?),
            "--warmup" => o.warmup = parse_secs(a, &val()?)?,
            "--timeout" => o.timeout = parse_secs(a, &val()?)?,
            "--grace" => o.grace = parse_secs(a, &val()?)?,
            "--sockets" => o.sockets = parse_num(a, &val()?)?,
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
    fn new(target: SocketAddrV4, local: SocketAddrV4, tag: &str) -> Self {
        let head =
            format!("OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;").into_bytes();
        let mut head = head;
        head.extend_from_slice(MARKER);
        let mid = format!(
            "\r\nMax-Forwards: 70\r\nTo: <sip:{target}>\r\nFrom: <sip:sipload@{local}>;tag={tag}\r\nCall-ID: "
        )
        .into_bytes();
        let tail = format!(
            "@sipload\r\nCSeq: 1 OPTIONS\r\nContact: <sip:sipload@{local}>\r\nUser-Agent: sipload\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes();
        Template { head, mid, tail }
    }

    fn render(&self, out: &mut Vec<u8>, id: u64) {
        let mut hex = [0u8; ID_LEN];
        put_hex(&mut hex, id);
        out.clear();
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
    targets: usize,
    targets_silent: usize,
    window: usize,
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
        writeln!(
            out,
            "sipload: {} target(s), window {}, {} local socket(s), {:.2} s",
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
             \"targets_silent\": {}, \"window\": {}, \"sockets\": {}}}",
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
            self.sockets
        )
    }
}

/// The load loop.
fn run(o: &Opts) -> std::io::Result<Report> {
    sys::raise_nofile();
    sys::install_stop_handlers();
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
                .map(|t| Template::new(*t, *l, &tag))
                .collect()
        })
        .collect();

    let k = o.sockets;
    let mut slots = vec![
        Slot {
            gen: 0,
            in_flight: false,
            counted: false,
            target: 0,
            sent_at: 0,
        };
        o.window
    ];
    // Slot s always sends from socket s % k, so its replies come back there.
    let mut free: Vec<Vec<u32>> = (0..k)
        .map(|j| {
            (0..o.window as u32)
                .rev()
                .filter(|s| *s as usize % k == j)
                .collect()
        })
        .collect();
    let mut in_flight = 0usize;
    let mut next_target = 0usize;
    let mut sb = sys::SendBatch::new(o.batch);
    let mut rb = sys::RecvBatch::new(o.batch, RECV_BUF);
    let mut pfds = sys::PollSet::new(&socks);

    let mut c = Counters::default();
    let mut hist = Histogram::new();
    let mut per_target = vec![0u64; o.targets.len()];

    let t0 = Instant::now();
    let now_ns = |t0: Instant| t0.elapsed().as_nanos() as u64;
    let warm_end = o.warmup.as_nanos() as u64;
    let mut warm = o.warmup.is_zero();
    let mut start_ns = 0u64;
    let mut cpu0 = sys::cpu_time();
    let send_end = o.duration.map(|d| warm_end + d.as_nanos() as u64);
    let mut stop_sending_at: Option<u64> = None;
    let mut last_answer_ns = 0u64;
    let mut next_scan = SCAN_EVERY.as_nanos() as u64;
    let timeout = o.timeout.as_nanos() as u64;
    let grace = o.grace.as_nanos() as u64;

    loop {
        let mut now = now_ns(t0);
        if !warm && now >= warm_end {
            // Warm-up over: count from here; earlier requests still in flight are not counted.
            warm = true;
            start_ns = now;
            cpu0 = sys::cpu_time();
        }
        if stop_sending_at.is_none() {
            let by_count = o.count.is_some_and(|n| c.sent >= n && warm);
            let by_time = send_end.is_some_and(|e| now >= e);
            if by_count || by_time || sys::stop_requested() {
                stop_sending_at = Some(now);
            }
        }

        // Send: refill the window, one sendmmsg per batch.
        let mut send_stuck = false;
        if stop_sending_at.is_none() {
            for j in 0..k {
                loop {
                    let budget = match o.count {
                        Some(n) if warm => n.saturating_sub(c.sent) as usize,
                        _ => usize::MAX,
                    };
                    let take = o.batch.min(free[j].len()).min(budget);
                    if take == 0 {
                        break;
                    }
                    sb.clear();
                    for _ in 0..take {
                        let s = free[j].pop().expect("take <= len");
                        let slot = &mut slots[s as usize];
                        slot.gen = slot.gen.wrapping_add(1);
                        slot.target = next_target as u32;
                        let id = (s as u64) << 32 | slot.gen as u64;
                        let buf = sb.next_buf(o.targets[next_target], s);
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
                            c.send_errors += 1;
                            0
                        }
                    };
                    // Full send queue or an error: wait a little instead of spinning.
                    send_stuck |= sent == 0;
                    now = now_ns(t0);
                    for (i, &s) in sb.slots().iter().enumerate() {
                        if i < sent {
                            let slot = &mut slots[s as usize];
                            slot.in_flight = true;
                            slot.counted = warm;
                            slot.sent_at = now;
                            in_flight += 1;
                            if warm {
                                c.sent += 1;
                            }
                        } else {
                            free[j].push(s);
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
                let now = now_ns(t0);
                for i in 0..n {
                    let msg = rb.msg(i);
                    let Some(id) = find_id(msg) else {
                        c.junk += 1;
                        continue;
                    };
                    let (s, gen) = ((id >> 32) as usize, id as u32);
                    let Some(slot) = slots.get_mut(s).filter(|sl| s % k == j && sl.gen == gen)
                    else {
                        c.junk += 1;
                        continue;
                    };
                    if !slot.in_flight {
                        // Already timed out (or a duplicate): not an answer.
                        if slot.counted {
                            c.late += 1;
                        }
                        continue;
                    }
                    slot.in_flight = false;
                    in_flight -= 1;
                    free[j].push(s as u32);
                    if slot.counted {
                        c.answered += 1;
                        per_target[slot.target as usize] += 1;
                        hist.record(now.saturating_sub(slot.sent_at));
                        last_answer_ns = now;
                        if status_code(msg) != Some(200) {
                            c.non200 += 1;
                        }
                    }
                }
                if n < o.batch {
                    break;
                }
            }
        }

        let now = now_ns(t0);
        // Timeouts: unanswered requests are lost; their slots go back to the window.
        if now >= next_scan {
            next_scan = now + SCAN_EVERY.as_nanos() as u64;
            for (s, slot) in slots.iter_mut().enumerate() {
                if slot.in_flight && now.saturating_sub(slot.sent_at) >= timeout {
                    slot.in_flight = false;
                    in_flight -= 1;
                    free[s % k].push(s as u32);
                    if slot.counted {
                        c.lost += 1;
                    }
                }
            }
        }
        if let Some(stop) = stop_sending_at {
            if in_flight == 0 || now >= stop + grace {
                break;
            }
        }
        if got == 0 {
            // Nothing arrived: sleep until something does or the next check is due.
            let mut deadline = next_scan;
            if let Some(e) = send_end {
                deadline = deadline.min(e);
            }
            if !warm {
                deadline = deadline.min(warm_end);
            }
            if let Some(stop) = stop_sending_at {
                deadline = deadline.min(stop + grace);
            }
            let wait_ms = (deadline.saturating_sub(now) / 1_000_000).clamp(1, 50) as i32;
            if in_flight > 0
                || send_stuck
                || stop_sending_at.is_some()
                || free.iter().all(Vec::is_empty)
            {
                sys::poll_in(&mut pfds, wait_ms);
            }
        }
    }
    // What is still in flight after the grace period is lost.
    c.lost += slots.iter().filter(|s| s.in_flight && s.counted).count() as u64;
    let cpu1 = sys::cpu_time();
    let end = if last_answer_ns > start_ns {
        last_answer_ns
    } else {
        stop_sending_at.unwrap_or(now_ns(t0))
    };
    Ok(Report {
        elapsed: Duration::from_nanos(end.saturating_sub(start_ns)),
        cpu_user: cpu1.0.saturating_sub(cpu0.0),
        cpu_sys: cpu1.1.saturating_sub(cpu0.1),
        targets: o.targets.len(),
        targets_silent: if c.sent > 0 {
            per_target.iter().filter(|n| **n == 0).count()
        } else {
            0
        },
        window: o.window,
        sockets: o.sockets,
        c,
        hist,
    })
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
    let r = match run(&o) {
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
    if o.check && (c.answered == 0 || c.answered != c.sent || c.non200 > 0 || c.late > 0) {
        eprintln!("sipload: --check failed: not every request was answered with 200");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Every system call that std does not offer: batched send/receive, poll, getrusage, signals.
mod sys {
    use std::net::{SocketAddrV4, UdpSocket};
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    static STOP: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_stop(_sig: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }

    /// Make SIGINT and SIGTERM end the send phase instead of the process.
    pub fn install_stop_handlers() {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe; no memory
            // is shared with the kernel beyond the function pointer, valid for the program's life.
            unsafe {
                libc::signal(
                    sig,
                    on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
                );
            }
        }
    }

    /// True once SIGINT or SIGTERM arrived.
    pub fn stop_requested() -> bool {
        STOP.load(Ordering::Relaxed)
    }

    /// Raise the open-file soft limit to the hard limit (many targets need no more fds, but the
    /// bind floor of min_responder does; kept alike).
    pub fn raise_nofile() {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `rl` is a valid, exclusively borrowed rlimit for the duration of both calls.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
                rl.rlim_cur = rl.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
            }
        }
    }

    /// Ask for large socket buffers (best effort: the kernel caps them at rmem_max/wmem_max).
    pub fn set_bufsize(fd: BorrowedFd<'_>, bytes: libc::c_int) {
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            // SAFETY: the fd is borrowed from a live socket; the option value is a local c_int
            // whose size is passed alongside.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &bytes as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    /// (user, system) CPU time of this process.
    pub fn cpu_time() -> (Duration, Duration) {
        // SAFETY: rusage is plain data; zeroed is a valid value, and getrusage only writes it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is exclusively borrowed for the call.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return (Duration::ZERO, Duration::ZERO);
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec.max(0) as u64)
                + Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        (tv(ru.ru_utime), tv(ru.ru_stime))
    }

    fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }

    /// Datagrams to send with one sendmmsg; owns their buffers, so the pointers handed to the
    /// kernel always point into live memory owned by this struct.
    pub struct SendBatch {
        bufs: Vec<Vec<u8>>,
        addrs: Vec<libc::sockaddr_in>,
        slots: Vec<u32>,
        iovs: Vec<libc::iovec>,
        hdrs: Vec<libc::mmsghdr>,
        len: usize,
    }

    impl SendBatch {
        pub fn new(cap: usize) -> Self {
            SendBatch {
                bufs: (0..cap).map(|_| Vec::with_capacity(1024)).collect(),
                addrs: vec![to_sockaddr(SocketAddrV4::new([0, 0, 0, 0].into(), 0)); cap],
                slots: vec![0; cap],
                // SAFETY: iovec and mmsghdr are plain C structs; all-zero (null pointers, zero
                // lengths) is valid, and they are filled before any use.
                iovs: vec![unsafe { std::mem::zeroed() }; cap],
                // SAFETY: as above.
                hdrs: vec![unsafe { std::mem::zeroed() }; cap],
                len: 0,
            }
        }

        pub fn clear(&mut self) {
            self.len = 0;
        }

        /// The buffer of the next datagram (to `to`, for window slot `slot`); the caller fills it.
        pub fn next_buf(&mut self, to: SocketAddrV4, slot: u32) -> &mut Vec<u8> {
            let i = self.len;
            self.len += 1;
            self.addrs[i] = to_sockaddr(to);
            self.slots[i] = slot;
            &mut self.bufs[i]
        }

        /// Window slots of the datagrams in this batch, in order.
        pub fn slots(&self) -> &[u32] {
            &self.slots[..self.len]
        }
    }

    /// Send the batch on `fd`; returns how many datagrams went (the first ones).
    pub fn send_batch(fd: BorrowedFd<'_>, b: &mut SendBatch) -> std::io::Result<usize> {
        let n = b.len;
        for i in 0..n {
            b.iovs[i] = libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: b.bufs[i].len(),
            };
            b.hdrs[i].msg_hdr.msg_name =
                &mut b.addrs[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            b.hdrs[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            b.hdrs[i].msg_hdr.msg_iov = &mut b.iovs[i];
            b.hdrs[i].msg_hdr.msg_iovlen = 1;
            b.hdrs[i].msg_hdr.msg_control = std::ptr::null_mut();
            b.hdrs[i].msg_hdr.msg_controllen = 0;
            b.hdrs[i].msg_hdr.msg_flags = 0;
        }
        loop {
            // SAFETY: every pointer in hdrs[..n] points into buffers owned by `b`, which is
            // exclusively borrowed until the call returns; the fd is borrowed from a live socket.
            let r = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    b.hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receive buffers for one recvmmsg, owned here for the same reason as SendBatch.
    pub struct RecvBatch {
        bufs: Vec<Vec<u8>>,
        iovs: Vec<libc::iovec>,
        hdrs: Vec<libc::mmsghdr>,
        lens: Vec<usize>,
    }

    impl RecvBatch {
        pub fn new(cap: usize, size: usize) -> Self {
            RecvBatch {
                bufs: (0..cap).map(|_| vec![0u8; size]).collect(),
                // SAFETY: plain C structs, zero is valid; filled before use.
                iovs: vec![unsafe { std::mem::zeroed() }; cap],
                // SAFETY: as above.
                hdrs: vec![unsafe { std::mem::zeroed() }; cap],
                lens: vec![0; cap],
            }
        }

        /// Datagram `i` of the last receive.
        pub fn msg(&self, i: usize) -> &[u8] {
            &self.bufs[i][..self.lens[i]]
        }
    }

    /// Receive up to a batch without blocking; returns how many datagrams arrived.
    pub fn recv_batch(fd: BorrowedFd<'_>, b: &mut RecvBatch) -> std::io::Result<usize> {
        let cap = b.bufs.len();
        for i in 0..cap {
            b.iovs[i] = libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: b.bufs[i].len(),
            };
            b.hdrs[i].msg_hdr.msg_name = std::ptr::null_mut();
            b.hdrs[i].msg_hdr.msg_namelen = 0;
            b.hdrs[i].msg_hdr.msg_iov = &mut b.iovs[i];
            b.hdrs[i].msg_hdr.msg_iovlen = 1;
            b.hdrs[i].msg_hdr.msg_control = std::ptr::null_mut();
            b.hdrs[i].msg_hdr.msg_controllen = 0;
            b.hdrs[i].msg_len = 0;
        }
        // SAFETY: every pointer in hdrs points into buffers owned by `b`, exclusively borrowed
        // until the call returns; the kernel writes at most iov_len bytes into each.
        let r = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                b.hdrs.as_mut_ptr(),
                cap as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = r as usize;
        for i in 0..n {
            b.lens[i] = (b.hdrs[i].msg_len as usize).min(b.bufs[i].len());
        }
        Ok(n)
    }

    /// pollfds of the local sockets.
    pub struct PollSet(Vec<libc::pollfd>);

    impl PollSet {
        pub fn new(socks: &[UdpSocket]) -> Self {
            PollSet(
                socks
                    .iter()
                    .map(|s| libc::pollfd {
                        fd: s.as_fd().as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect(),
            )
        }
    }

    /// Wait until a socket is readable or `ms` pass (a signal also ends the wait).
    pub fn poll_in(p: &mut PollSet, ms: i32) {
        // SAFETY: the pollfd array is exclusively borrowed and its length passed; the fds belong
        // to sockets that outlive the PollSet (both live in `run`).
        unsafe {
            libc::poll(p.0.as_mut_ptr(), p.0.len() as libc::nfds_t, ms);
        }
    }
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
    }

    #[test]
    fn arguments_are_bounded_and_loopback_only() {
        let a = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse_args(&a("--target udp:127.0.0.1:5070")).unwrap();
        assert_eq!(o.duration, Some(Duration::from_secs(5)));
        assert!(parse_args(&a("--target 192.0.2.1:5060")).is_err());
        assert!(parse_args(&a("--target 192.0.2.1:5060 --allow-remote")).is_ok());
        assert!(parse_args(&a("--window 0 --target 127.0.0.1:1")).is_err());
        assert!(parse_args(&a("")).is_err());
        let o = parse_args(&a("--target 127.0.0.1:1 --count 10")).unwrap();
        assert_eq!((o.count, o.duration), (Some(10), None));
    }
}
