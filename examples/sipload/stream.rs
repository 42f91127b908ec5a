//! TCP and TLS: the window spread over persistent connections, requests pipelined on each, and
//! replies framed by Content-Length (RFC 3261 section 18.3: mandatory on a stream).
//!
//! Connections (and TLS handshakes) are set up before the clock starts, blocking and with a
//! deadline; then every socket is non-blocking and one poll(2) loop drives them all. A
//! connection the server closes is counted and its requests in flight are lost; it is not
//! reopened, so the count says how much of the window was cut.

use crate::{sys, Opts, Phases, Report, Template, Transport, Window};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// Deadline for one connection's connect and handshake.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer per connection; a message longer than this is refused.
const IN_BUF: usize = 256 * 1024;
/// A header section longer than this without its blank line is refused.
const MAX_HEAD: usize = 64 * 1024;
/// Bound on the reads and writes one connection gets per loop turn, so one busy connection
/// cannot starve the others.
const TURNS: usize = 16;

/// What the start of a receive buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole message yet.
    Partial,
    /// Keep-alive CRLFs (RFC 5626) before a message: skip this many bytes.
    Skip(usize),
    /// A whole message of this many bytes (header section and body).
    Message(usize),
    /// Not SIP framing we can follow.
    Bad(&'static str),
}

/// Frame the next message at the start of `buf`.
pub fn frame(buf: &[u8]) -> Frame {
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if skip > 0 {
        return Frame::Skip(skip);
    }
    let Some(end) = find_blank_line(buf) else {
        return if buf.len() > MAX_HEAD {
            Frame::Bad("header section too long")
        } else {
            Frame::Partial
        };
    };
    let head = &buf[..end];
    let body = match content_length(head) {
        Ok(n) => n,
        Err(why) => return Frame::Bad(why),
    };
    let total = end + 4 + body;
    if total > IN_BUF {
        return Frame::Bad("message longer than the receive buffer");
    }
    if buf.len() < total {
        Frame::Partial
    } else {
        Frame::Message(total)
    }
}

/// Offset of the `\r\n\r\n` that ends the header section.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 4 <= buf.len() {
        // Step on the last byte of the pattern: most positions are rejected by one compare.
        match buf[i + 3] {
            b'\n' if &buf[i..i + 4] == b"\r\n\r\n" => return Some(i),
            b'\n' => i += 1,
            b'\r' => i += 1,
            _ => i += 4,
        }
    }
    None
}

/// The Content-Length of a header section (long or compact form); 0 when absent.
fn content_length(head: &[u8]) -> Result<usize, &'static str> {
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = line[colon + 1..].trim_ascii();
            if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
                return Err("bad Content-Length");
            }
            return Ok(v.iter().fold(0usize, |a, d| a * 10 + (d - b'0') as usize));
        }
    }
    Ok(0)
}

/// What one read gave.
enum Fill {
    Data,
    Empty,
    Eof,
}

/// One persistent connection to a target.
struct Conn {
    sock: TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
    /// Requests rendered and not yet handed to the socket (or to rustls), from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    inb: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    /// The server sent a TCP FIN; what rustls still holds is read before reporting it.
    peer_closed: bool,
    template: Template,
    target: usize,
    open: bool,
}

impl Conn {
    fn connect(
        o: &Opts,
        target: usize,
        tls: Option<&Arc<rustls::ClientConfig>>,
        tag: &str,
    ) -> Result<Conn, String> {
        let addr = o.targets[target];
        let what = |e: &dyn std::fmt::Display| format!("{} {addr}: {e}", o.transport.name());
        let sock = TcpStream::connect_timeout(&SocketAddr::V4(addr), SETUP_TIMEOUT)
            .map_err(|e| what(&e))?;
        sock.set_nodelay(true).map_err(|e| what(&e))?;
        sock.set_read_timeout(Some(SETUP_TIMEOUT))
            .map_err(|e| what(&e))?;
        sock.set_write_timeout(Some(SETUP_TIMEOUT))
            .map_err(|e| what(&e))?;
        let local = match sock.local_addr().map_err(|e| what(&e))? {
            SocketAddr::V4(a) => a,
            other => return Err(what(&format!("unexpected local address {other}"))),
        };
        let mut sock = sock;
        let tls = match tls {
            None => None,
            Some(cfg) => {
                let name = match &o.server_name {
                    Some(n) => ServerName::try_from(n.clone())
                        .map_err(|e| format!("--server-name {n:?}: {e}"))?,
                    None => ServerName::IpAddress(IpAddr::V4(*addr.ip()).into()),
                };
                let mut c =
                    rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| what(&e))?;
                // Blocking, bounded by the socket timeouts above.
                while c.is_handshaking() {
                    c.complete_io(&mut sock)
                        .map_err(|e| what(&format!("TLS handshake: {e}")))?;
                }
                Some(Box::new(c))
            }
        };
        sock.set_nonblocking(true).map_err(|e| what(&e))?;
        Ok(Conn {
            sock,
            tls,
            out: Vec::with_capacity(64 * 1024),
            out_pos: 0,
            inb: vec![0u8; IN_BUF].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            peer_closed: false,
            template: Template::new(o.transport, addr, local, tag),
            target,
            open: true,
        })
    }

    /// Nothing rendered is waiting to go out (rustls may still hold ciphertext).
    fn out_empty(&self) -> bool {
        self.out_pos == self.out.len()
    }

    /// Whether poll should wait for room to write.
    fn wants_write(&self) -> bool {
        !self.out_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Write what can go without blocking.
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.tls {
            None => {
                for _ in 0..TURNS {
                    if self.out_pos == self.out.len() {
                        break;
                    }
                    match self.sock.write(&self.out[self.out_pos..]) {
                        Ok(0) => return Err(ErrorKind::WriteZero.into()),
                        Ok(n) => self.out_pos += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(tls) => {
                for _ in 0..TURNS {
                    // Plaintext into records (rustls bounds what it buffers), records out.
                    if self.out_pos < self.out.len() {
                        self.out_pos += tls.writer().write(&self.out[self.out_pos..])?;
                    }
                    let mut blocked = false;
                    while tls.wants_write() {
                        match tls.write_tls(&mut self.sock) {
                            Ok(_) => {}
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                blocked = true;
                                break;
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                    if blocked || self.out_pos == self.out.len() {
                        break;
                    }
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        Ok(())
    }

    /// Read more bytes into the receive buffer.
    fn fill(&mut self) -> std::io::Result<Fill> {
        if self.in_start > 0 && (self.in_end == self.inb.len() || self.in_start == self.in_end) {
            self.inb.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
        if self.in_end == self.inb.len() {
            return Err(std::io::Error::other("receive buffer full"));
        }
        let room = &mut self.inb[self.in_end..];
        let Some(tls) = &mut self.tls else {
            return match self.sock.read(room) {
                Ok(0) => Ok(Fill::Eof),
                Ok(n) => {
                    self.in_end += n;
                    Ok(Fill::Data)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Fill::Empty),
                Err(e) if e.kind() == ErrorKind::Interrupted => Ok(Fill::Empty),
                Err(e) => Err(e),
            };
        };
        for _ in 0..TURNS {
            // Plaintext rustls already holds first; then more records from the socket.
            match tls.reader().read(room) {
                Ok(0) => return Ok(Fill::Eof), // close_notify (room is never empty here)
                Ok(n) => {
                    self.in_end += n;
                    return Ok(Fill::Data);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(Fill::Eof),
                Err(e) => return Err(e),
            }
            if self.peer_closed {
                return Ok(Fill::Eof);
            }
            match tls.read_tls(&mut self.sock) {
                Ok(0) => self.peer_closed = true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Fill::Empty),
                Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(Fill::Empty),
                Err(e) => return Err(e),
            }
            tls.process_new_packets()
                .map_err(|e| std::io::Error::other(format!("TLS: {e}")))?;
        }
        Ok(Fill::Empty)
    }

    /// The next whole message in the receive buffer, as a range of it.
    fn next_message(&mut self) -> Result<Option<std::ops::Range<usize>>, &'static str> {
        loop {
            match frame(&self.inb[self.in_start..self.in_end]) {
                Frame::Partial => return Ok(None),
                Frame::Skip(n) => self.in_start += n,
                Frame::Message(n) => {
                    let r = self.in_start..self.in_start + n;
                    self.in_start += n;
                    return Ok(Some(r));
                }
                Frame::Bad(why) => return Err(why),
            }
        }
    }
}

/// The TLS client configuration: ring provider, the server verified against `--ca`, or not at
/// all with `--insecure`.
fn client_config(o: &Opts) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let cfg = match &o.ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("--ca {}: no certificate", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("--ca {}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// `--insecure`: any certificate is accepted, but the handshake signatures are still checked
/// (so the cost of a real handshake is measured).
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TCP/TLS load loop.
pub fn run(o: &Opts) -> Result<Report, String> {
    let tls = match o.transport {
        Transport::Tls => Some(client_config(o)?),
        _ => None,
    };
    let tag = format!("{:x}", std::process::id());
    let n = o.connections;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(Conn::connect(o, i % o.targets.len(), tls.as_ref(), &tag)?);
    }
    let mut w = Window::new(o.window, n, o.targets.len());
    let mut pfds = sys::PollSet::new(conns.iter().map(|c| c.sock.as_raw_fd()));
    let mut ph = Phases::new(o);
    let mut open = n;
    let mut first = true;

    loop {
        let now = ph.now();
        ph.tick(now, w.c.sent);
        if open == 0 && ph.sending() {
            ph.stop_sending_at = Some(now);
        }

        // Send: refill each connection's share of the window, one write per connection.
        if ph.sending() {
            for (j, c) in conns.iter_mut().enumerate() {
                if !c.open || !c.out_empty() {
                    continue;
                }
                let take = o.batch.min(w.free_in(j)).min(ph.budget(w.c.sent));
                for _ in 0..take {
                    let (s, id) = w.take(j, c.target).expect("take <= free");
                    c.template.render(&mut c.out, id);
                    w.sent(s, now, ph.warm);
                }
            }
        }
        let mut failed: Vec<usize> = Vec::new();
        for (j, c) in conns.iter_mut().enumerate() {
            if c.open && c.wants_write() && c.flush().is_err() {
                w.c.send_errors += 1;
                failed.push(j);
            }
        }

        // Receive from the connections poll found ready (all of them on the first turn).
        let mut got = 0;
        for (j, c) in conns.iter_mut().enumerate() {
            if !c.open || !(first || pfds.ready(j)) {
                continue;
            }
            let mut turns = 0;
            let closed = loop {
                turns += 1;
                match c.fill() {
                    Ok(Fill::Data) => {}
                    Ok(Fill::Empty) => break false,
                    Ok(Fill::Eof) | Err(_) => break true,
                }
                let now = ph.now();
                let mut bad = false;
                loop {
                    match c.next_message() {
                        Ok(Some(r)) => {
                            got += 1;
                            w.reply(j, &c.inb[r], now);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            bad = true;
                            break;
                        }
                    }
                }
                if bad {
                    w.c.junk += 1;
                    break true;
                }
                if turns == TURNS {
                    break false;
                }
            };
            if closed {
                failed.push(j);
            }
        }
        first = false;
        for j in failed {
            if conns[j].open {
                conns[j].open = false;
                pfds.ignore(j);
                w.close_lane(j);
                open -= 1;
            }
        }

        let now = ph.now();
        ph.scan(now, &mut w);
        if ph.done(now, w.in_flight) {
            break;
        }
        for (j, c) in conns.iter().enumerate() {
            if c.open {
                pfds.want_out(j, c.wants_write());
            }
        }
        // Busy: just look which connections are ready. Idle: sleep until one is.
        let idle = got == 0;
        pfds.wait(if idle { ph.wait_ms(now) } else { 0 });
    }
    Ok(ph.report(o, w, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    #[test]
    fn frames_follow_content_length() {
        let m = b"SIP/2.0 200 OK\r\nVia: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(frame(m), Frame::Message(m.len()));
        assert_eq!(frame(&m[..m.len() - 1]), Frame::Partial);
        assert_eq!(frame(&m[..20]), Frame::Partial);
        // Two in one read: the first is framed alone.
        let mut two = m.to_vec();
        two.extend_from_slice(b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n");
        assert_eq!(frame(&two), Frame::Message(m.len()));
        assert_eq!(frame(&two[m.len()..]), Frame::Message(24));
        // Compact form, any case, spaces; absent means no body.
        assert_eq!(
            frame(b"SIP/2.0 200 OK\r\ncontent-LENGTH :  0 \r\n\r\n"),
            Frame::Message(40)
        );
        assert_eq!(
            frame(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\nrest"),
            Frame::Message(26)
        );
        // Keep-alive CRLFs before a message are skipped.
        assert_eq!(frame(b"\r\n\r\nSIP/2.0"), Frame::Skip(4));
        assert!(matches!(
            frame(b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n"),
            Frame::Bad(_)
        ));
        assert!(matches!(
            frame(b"SIP/2.0 200 OK\r\nContent-Length: 999999999\r\n\r\n"),
            Frame::Bad(_)
        ));
        assert!(matches!(frame(&vec![b'a'; MAX_HEAD + 1]), Frame::Bad(_)));
    }

    #[test]
    fn the_blank_line_is_found_at_any_offset() {
        for pad in 0..12 {
            let mut m = vec![b'x'; pad];
            m.extend_from_slice(b"\r\n\r\n");
            assert_eq!(find_blank_line(&m), Some(pad), "pad {pad}");
            m.insert(pad, b'\r');
            assert_eq!(find_blank_line(&m), Some(pad + 1), "pad {pad} + CR");
        }
        assert_eq!(find_blank_line(b"a\r\nb\r\n\rc"), None);
    }

    /// Answer each framed request read from `s` with a 200 carrying its Via, in two writes
    /// split mid-message, until the peer closes or `max` requests were answered.
    fn answer(mut s: impl Read + Write, max: usize) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut done = 0;
        while done < max {
            let n = match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while done < max {
                let Frame::Message(len) = frame(&buf) else {
                    break;
                };
                let req = String::from_utf8_lossy(&buf[..len]).to_string();
                buf.drain(..len);
                let via = req.lines().find(|l| l.starts_with("Via:")).unwrap();
                let reply = format!("SIP/2.0 200 OK\r\n{via}\r\nContent-Length: 2\r\n\r\nok");
                let (a, b) = reply.as_bytes().split_at(reply.len() / 2);
                if s.write_all(a).and_then(|_| s.flush()).is_err() || s.write_all(b).is_err() {
                    return;
                }
                let _ = s.flush();
                done += 1;
            }
        }
    }

    /// A loopback server for one connection (TLS with `tls`), answering as `answer` does.
    fn echo_server(
        max: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (SocketAddrV4, std::thread::JoinHandle<()>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = match l.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            match tls {
                None => answer(s, max),
                Some(cfg) => {
                    let c = rustls::ServerConnection::new(cfg).unwrap();
                    answer(rustls::StreamOwned::new(c, s), max)
                }
            }
        });
        (addr, h)
    }

    /// A self-signed certificate for 127.0.0.1: (server config, CA file for `--ca`).
    fn tls_server_config() -> (Arc<rustls::ServerConfig>, std::path::PathBuf) {
        use rustls::pki_types::PrivateKeyDer;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = PrivateKeyDer::from_pem_slice(ck.signing_key.serialize_pem().as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
        let path = std::env::temp_dir().join(format!(
            "sipload-test-ca-{}-{:?}.pem",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, ck.cert.pem()).unwrap();
        (Arc::new(cfg), path)
    }

    fn opts(target: SocketAddrV4, extra: &str) -> Opts {
        let transport = if extra.contains("--ca") || extra.contains("--insecure") {
            "tls"
        } else {
            "tcp"
        };
        let args: Vec<String> = format!("--transport {transport} --target {target} {extra}")
            .split_whitespace()
            .map(String::from)
            .collect();
        crate::parse_args(&args).unwrap()
    }

    #[test]
    fn a_tcp_run_matches_every_pipelined_reply() {
        let (addr, h) = echo_server(usize::MAX, None);
        let o = opts(addr, "--connections 1 --window 8 --count 500 --timeout 5");
        let r = run(&o).unwrap();
        assert_eq!((r.c.sent, r.c.answered, r.c.lost), (500, 500, 0));
        assert_eq!((r.c.non200, r.c.junk, r.c.late, r.c.closed), (0, 0, 0, 0));
        drop(r);
        h.join().unwrap_or(());
    }

    #[test]
    fn a_closed_connection_is_counted_and_ends_the_run() {
        let (addr, h) = echo_server(10, None);
        let o = opts(addr, "--connections 1 --window 4 --duration 20 --timeout 5");
        let t = std::time::Instant::now();
        let r = run(&o).unwrap();
        h.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        assert_eq!(r.c.closed, 1);
        assert!(
            r.c.answered >= 10 - 4 && r.c.answered <= 10,
            "{}",
            r.c.answered
        );
        assert_eq!(r.c.sent, r.c.answered + r.c.lost);
    }

    #[test]
    fn a_refused_connection_is_an_error_naming_the_target() {
        // A port just released by a listener: nothing accepts there.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let o = opts(SocketAddrV4::new([127, 0, 0, 1].into(), port), "--count 1");
        let e = run(&o).err().expect("refused");
        assert!(e.contains(&format!("tcp 127.0.0.1:{port}")), "{e}");
    }

    #[test]
    fn a_tls_run_verifies_the_server_and_matches_every_reply() {
        let (cfg, ca) = tls_server_config();
        let (addr, h) = echo_server(usize::MAX, Some(cfg.clone()));
        let extra = format!(
            "--ca {} --connections 1 --window 8 --count 300 --timeout 5",
            ca.display()
        );
        let r = run(&opts(addr, &extra)).unwrap();
        h.join().unwrap_or(());
        assert_eq!(
            (r.c.sent, r.c.answered, r.c.lost, r.c.closed),
            (300, 300, 0, 0)
        );
        assert_eq!((r.c.non200, r.c.junk, r.c.late), (0, 0, 0));
        // The wrong name is refused at the handshake; --insecure accepts it.
        let (addr, h) = echo_server(usize::MAX, Some(cfg.clone()));
        let extra = format!(
            "--ca {} --server-name other.example --count 1",
            ca.display()
        );
        let e = run(&opts(addr, &extra)).err().expect("bad name accepted");
        assert!(e.contains("TLS handshake"), "{e}");
        h.join().unwrap_or(());
        let (addr, h) = echo_server(usize::MAX, Some(cfg));
        let r = run(&opts(
            addr,
            "--insecure --connections 1 --count 50 --timeout 5",
        ))
        .unwrap();
        h.join().unwrap_or(());
        assert_eq!((r.c.sent, r.c.answered), (50, 50));
        std::fs::remove_file(ca).unwrap();
    }
}
