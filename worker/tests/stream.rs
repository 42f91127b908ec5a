//! The stream worker in-process: `worker::serve(.., Stream, ..)` runs on a thread with one end of
//! a control channel; the test plays the supervisor on the other end (Setup with a real shm table,
//! Describe, and Conn with connections it accepted on its own listeners) and the SIP, TLS and
//! WebSocket clients on loopback.

mod common;

use common::{scratch, WAIT};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use shm::{Proto, Reader, SlotData, SlotState, Table, WorkerKind};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;
use worker::ipc::{FromWorker, SocketInfo, StreamSettings, TlsMaterial, ToWorker};
use worker::{Channel, ServeError};

/// A shm table with one UDP and two stream worker records, every slot occupied (so the reader
/// lists them all).
struct Shm {
    table: Table,
    _dir: tempfile::TempDir,
}

const SLOTS: u32 = 8;

impl Shm {
    fn new() -> Shm {
        let dir = scratch();
        let table = Table::create(&dir.path().join("t.shm"), SLOTS, 1, 2, 0).unwrap();
        for i in 0..SLOTS {
            let data = SlotData {
                state: SlotState::Active,
                socket: format!("tcp:127.0.0.1:{}", 5000 + i),
                proto: Some(Proto::Tcp),
                ..Default::default()
            };
            assert_eq!(table.occupy(&data), Some(i));
        }
        Shm { table, _dir: dir }
    }

    /// (received, replied, dropped) of stream worker `rank`.
    fn counters(&self, rank: u32) -> (u64, u64, u64) {
        let r = self.table.worker(WorkerKind::Stream, rank).unwrap();
        (r.received(), r.replied(), r.dropped())
    }

    /// The open-connection gauge of stream worker `rank`.
    fn connections(&self, rank: u32) -> u64 {
        self.table
            .worker(WorkerKind::Stream, rank)
            .unwrap()
            .connections()
    }

    /// (received, connections) of a slot, as `shm-dump` shows them.
    fn slot(&self, index: u32) -> (u64, i64) {
        let snap = Reader::open(self.table.path()).unwrap().snapshot();
        let s = snap.slots.iter().find(|s| s.index == index).unwrap();
        (s.received, s.connections)
    }

    /// Wait until `what` holds (the worker updates the table from its own thread).
    fn wait_for(&self, what: &str, cond: impl Fn(&Shm) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A worker thread and the supervisor's end of its channel.
struct Worker {
    channel: Channel,
    buf: Vec<u8>,
    done: mpsc::Receiver<Result<u8, ServeError>>,
    generation: u64,
    /// The worker's record, through the test's own mapping: the supervisor raises its gauge at
    /// each hand-off, and so does [`Worker::hand_over`].
    shm: shm::Attached,
    rank: u32,
}

impl Worker {
    fn start(shm: &Shm, rank: u32, stream: StreamSettings) -> Worker {
        let (channel, theirs) = Channel::pair().unwrap();
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(worker::serve(theirs, WorkerKind::Stream, rank));
        });
        let mut w = Worker {
            channel,
            buf: Vec::new(),
            done,
            generation: 0,
            shm: shm::Attached::from_file(shm.table.file().try_clone().unwrap()).unwrap(),
            rank,
        };
        assert_eq!(
            w.expect(),
            FromWorker::Hello {
                rank,
                pid: std::process::id()
            }
        );
        w.send(
            ToWorker::Setup {
                reply_code: 503,
                reply_reason: "Service Unavailable".into(),
                stream,
            },
            &[shm.table.file().as_fd()],
        );
        w
    }

    fn expect(&mut self) -> FromWorker {
        assert!(
            self.channel.wait_readable(Some(WAIT)).unwrap(),
            "no message from the worker within {WAIT:?}"
        );
        self.channel
            .recv_from_worker(&mut self.buf)
            .unwrap()
            .expect("the worker closed its channel")
    }

    fn send(&self, msg: ToWorker, fds: &[BorrowedFd<'_>]) {
        self.channel.send_to_worker(&msg, fds).unwrap();
    }

    /// Commit the next generation; returns how many sockets the worker serves. Everything sent
    /// before is applied once this returns (the worker handles its channel in order).
    fn commit(&mut self) -> u32 {
        self.generation += 1;
        let generation = self.generation;
        self.send(ToWorker::Commit { generation }, &[]);
        match self.expect() {
            FromWorker::Ack {
                generation: g,
                serving,
            } if g == generation => serving,
            other => panic!("expected the ack of {generation}, got {other:?}"),
        }
    }

    fn describe(&mut self, sockets: Vec<SocketInfo>) {
        self.send(
            ToWorker::Describe {
                generation: self.generation + 1,
                sockets,
            },
            &[],
        );
    }

    fn remove(&mut self, slot: u32) {
        self.send(
            ToWorker::Remove {
                generation: self.generation + 1,
                slots: vec![slot],
            },
            &[],
        );
    }

    /// Accept a client of `listener` and hand the connection over as the supervisor does.
    fn connect(&self, listener: &Listener) -> TcpStream {
        let client = TcpStream::connect(listener.addr()).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        client.set_write_timeout(Some(WAIT)).unwrap();
        let (accepted, peer) = listener.socket.accept().unwrap();
        self.hand_over(listener.slot, peer, accepted.as_fd());
        // The worker has its copy; ours closes here.
        client
    }

    /// Hand an accepted connection over as the supervisor does: raise the worker's connection
    /// gauge, then send the fd (the worker lowers the gauge when the connection ends). Only
    /// after a commit, as the supervisor hands connections only to ready workers.
    fn hand_over(&self, slot: u32, peer: SocketAddr, fd: BorrowedFd<'_>) {
        self.shm
            .worker(WorkerKind::Stream, self.rank)
            .unwrap()
            .add_connections(1);
        self.send(ToWorker::Conn { slot, peer }, &[fd]);
    }

    fn shutdown(self) -> u8 {
        self.send(ToWorker::Shutdown, &[]);
        self.done
            .recv_timeout(WAIT)
            .expect("the worker did not stop")
            .unwrap()
    }
}

/// A listener the test accepts on, standing for the supervisor's, and the slot it is.
struct Listener {
    socket: TcpListener,
    slot: u32,
}

impl Listener {
    fn new(slot: u32) -> Listener {
        Listener {
            socket: TcpListener::bind("127.0.0.1:0").unwrap(),
            slot,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    fn info(&self, proto: Proto, contact: &str, tls: Option<TlsMaterial>) -> SocketInfo {
        SocketInfo {
            slot: self.slot,
            proto,
            local: self.addr(),
            contact: contact.into(),
            tag: None,
            tls,
        }
    }
}

fn options(call_id: &str) -> String {
    format!(
        "OPTIONS sip:ping@example.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP client.invalid:5999;branch=z9hG4bK-{call_id};rport\r\n\
         From: <sip:tester@example.com>;tag=t-{call_id}\r\n\
         To: <sip:ping@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Reads SIP messages off a stream, keeping what comes after one for the next.
#[derive(Default)]
struct SipReader {
    buf: Vec<u8>,
}

impl SipReader {
    /// The next message (the replies here have no body).
    fn next(&mut self, r: &mut impl Read) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let msg: Vec<u8> = self.buf.drain(..end + 4).collect();
                let msg = String::from_utf8(msg).unwrap();
                assert!(msg.contains("\r\nContent-Length: 0\r\n"), "{msg}");
                return msg;
            }
            let mut chunk = [0u8; 4096];
            let n = r.read(&mut chunk).expect("no reply");
            assert!(n > 0, "closed before a whole reply: {:?}", self.buf);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Send an OPTIONS and return the reply.
fn ask(stream: &mut (impl Read + Write), reader: &mut SipReader, call_id: &str) -> String {
    stream.write_all(options(call_id).as_bytes()).unwrap();
    reader.next(stream)
}

/// Wait until the worker closes `stream` (EOF or reset); returns the bytes it sent before.
fn wait_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the connection was not closed within {WAIT:?}: {e}"),
        }
    }
}

fn settings() -> StreamSettings {
    StreamSettings::default()
}

#[test]
fn tcp_options_get_200_with_a_tcp_contact_and_counters_move() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0, settings());
    let l = Listener::new(2);
    w.describe(vec![l.info(Proto::Tcp, "sip.example.com:5070", None)]);
    assert_eq!(w.commit(), 1);

    let mut c = w.connect(&l);
    let mut r = SipReader::default();
    let reply = ask(&mut c, &mut r, "call-1");
    let want_via = format!(
        "Via: SIP/2.0/TCP client.invalid:5999;branch=z9hG4bK-call-1;rport={};received=127.0.0.1\r\n",
        c.local_addr().unwrap().port()
    );
    assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
    assert!(reply.contains(&want_via), "{reply}");
    assert!(
        reply.contains("\r\nContact: <sip:sip.example.com:5070;transport=tcp>\r\n"),
        "{reply}"
    );
    // Other requests: the configured reply, on the same connection.
    c.write_all(options("call-2").replace("OPTIONS", "INVITE").as_bytes())
        .unwrap();
    assert!(r
        .next(&mut c)
        .starts_with("SIP/2.0 503 Service Unavailable\r\n"));
    // An ACK gets nothing: the next reply is the next OPTIONS'.
    c.write_all(options("call-3").replace("OPTIONS", "ACK").as_bytes())
        .unwrap();
    assert!(ask(&mut c, &mut r, "call-4").contains("Call-ID: call-4\r\n"));

    assert_eq!(w.commit(), 1);
    assert_eq!(shm.counters(0), (4, 3, 1));
    assert_eq!(shm.slot(2), (4, 1));
    assert_eq!(shm.connections(0), 1);

    drop(c);
    shm.wait_for("the gauges to go down", |s| {
        s.connections(0) == 0 && s.slot(2).1 == 0
    });
    // A connection for a slot that is not served is refused: closed at once, and counted.
    let stranger = Listener::new(3);
    let mut refused = w.connect(&stranger);
    assert!(wait_closed(&mut refused).is_empty());
    assert_eq!(w.commit(), 1);
    assert_eq!(shm.counters(0), (4, 3, 2));
    assert_eq!(shm.connections(0), 0);
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn two_messages_in_one_write_and_one_byte_by_byte() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0, settings());
    let l = Listener::new(0);
    w.describe(vec![l.info(Proto::Tcp, "127.0.0.1:5060", None)]);
    w.commit();
    let mut c = w.connect(&l);
    let mut r = SipReader::default();

    let two = format!("{}{}", options("one"), options("two"));
    c.write_all(two.as_bytes()).unwrap();
    assert!(r.next(&mut c).contains("Call-ID: one\r\n"));
    assert!(r.next(&mut c).contains("Call-ID: two\r\n"));

    // With a body, byte by byte: framed by Content-Length, nothing answered before the end.
    let with_body = options("slow").replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    );
    c.set_nodelay(true).unwrap();
    for b in with_body.as_bytes() {
        c.write_all(&[*b]).unwrap();
    }
    let reply = r.next(&mut c);
    assert!(reply.contains("Call-ID: slow\r\n"), "{reply}");
    assert!(ask(&mut c, &mut r, "after").contains("Call-ID: after\r\n"));
    assert_eq!(w.commit(), 1);
    assert_eq!(shm.counters(0), (4, 4, 0));
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn framing_errors_close_the_connection_and_are_counted() {
    let shm = Shm::new();
    let mut w = Worker::start(
        &shm,
        0,
        StreamSettings {
            max_message_size: 300,
            ..settings()
        },
    );
    let l = Listener::new(0);
    w.describe(vec![l.info(Proto::Tcp, "127.0.0.1:5060", None)]);
    w.commit();
    let no_length = options("x").replace("Content-Length: 0\r\n", "");
    let big = options("y").replace("Max-Forwards: 70", &format!("X-Big: {}", "a".repeat(300)));
    let cases: [(&str, &[u8]); 4] = [
        ("junk", b"hello there\r\n"),
        ("binary junk", b"\x16\x03\x01\x00\xa5\x01"),
        ("no Content-Length", no_length.as_bytes()),
        ("header over max_message_size", big.as_bytes()),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let mut c = w.connect(&l);
        let mut r = SipReader::default();
        // A good message first: the connection works until the bad bytes.
        assert!(ask(&mut c, &mut r, "good").starts_with("SIP/2.0 200 OK"));
        c.write_all(bytes).unwrap();
        assert!(wait_closed(&mut c).is_empty(), "{what}");
        assert_eq!(w.commit(), 1);
        let (received, replied, dropped) = shm.counters(0);
        assert_eq!(
            (received, replied, dropped),
            (i as u64 + 1, i as u64 + 1, i as u64 + 1),
            "{what}"
        );
    }
    shm.wait_for("no connection left", |s| s.connections(0) == 0);
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn double_crlf_ping_gets_a_single_crlf_pong() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0, settings());
    let l = Listener::new(0);
    w.describe(vec![l.info(Proto::Tcp, "127.0.0.1:5060", None)]);
    w.commit();
    let mut c = w.connect(&l);
    c.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    c.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
    // Two pings, then a message: two pongs, then its reply, nothing in between.
    c.write_all(format!("\r\n\r\n\r\n\r\n{}", options("p")).as_bytes())
        .unwrap();
    let mut r = SipReader::default();
    let mut pongs = [0u8; 4];
    c.read_exact(&mut pongs).unwrap();
    assert_eq!(&pongs, b"\r\n\r\n");
    assert!(r.next(&mut c).starts_with("SIP/2.0 200 OK\r\n"));
    assert_eq!(w.commit(), 1);
    // Pings are not messages.
    assert_eq!(shm.counters(0), (1, 1, 0));
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn lifetime_closes_a_slow_client_but_not_a_busy_one() {
    let shm = Shm::new();
    let lifetime = Duration::from_millis(1000);
    let mut w = Worker::start(
        &shm,
        0,
        StreamSettings {
            connection_lifetime_ms: 1000,
            ..settings()
        },
    );
    let l = Listener::new(0);
    w.describe(vec![l.info(Proto::Tcp, "127.0.0.1:5060", None)]);
    w.commit();

    // One header byte every 100 ms: never a complete message, closed by the lifetime.
    let mut slow = w.connect(&l);
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let msg = options("slow");
    let mut closed = false;
    for b in msg.as_bytes().iter().take(100) {
        let _ = slow.write_all(&[*b]);
        let mut buf = [0u8; 16];
        match slow.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Ok(n) => panic!("unexpected bytes {:?}", &buf[..n]),
            Err(_) => {} // timed out: still open
        }
        assert!(start.elapsed() < WAIT, "the slow client was never closed");
    }
    assert!(closed, "the slow client was never closed");
    assert!(start.elapsed() >= lifetime - Duration::from_millis(50));

    // Messages keep a connection alive past the lifetime.
    let mut busy = w.connect(&l);
    let mut r = SipReader::default();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < lifetime * 2 {
        assert!(ask(&mut busy, &mut r, &format!("busy-{n}")).starts_with("SIP/2.0 200 OK"));
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    // And once it stops, it is closed too.
    assert!(wait_closed(&mut busy).is_empty());
    assert_eq!(w.commit(), 1);
    // Idle closes are not errors.
    assert_eq!(shm.counters(0).2, 0);
    shm.wait_for("no connection left", |s| s.connections(0) == 0);
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn a_removed_socket_drains_its_connections() {
    let shm = Shm::new();
    let drain = Duration::from_millis(1500);
    let mut w = Worker::start(
        &shm,
        0,
        StreamSettings {
            drain_timeout_ms: 1500,
            ..settings()
        },
    );
    let l = Listener::new(4);
    w.describe(vec![l.info(Proto::Tcp, "127.0.0.1:5060", None)]);
    assert_eq!(w.commit(), 1);
    let mut c = w.connect(&l);
    let mut r = SipReader::default();
    assert!(ask(&mut c, &mut r, "before").starts_with("SIP/2.0 200 OK"));
    assert_eq!(w.commit(), 1);
    assert_eq!(shm.slot(4), (1, 1));

    w.remove(4);
    assert_eq!(w.commit(), 0);
    let removed_at = Instant::now();
    // The slot's gauge lets go at once (the slot may be reused); the worker still holds it.
    assert_eq!(shm.slot(4).1, 0);
    assert_eq!(shm.connections(0), 1);
    // The established connection keeps working during the drain...
    assert!(ask(&mut c, &mut r, "during").starts_with("SIP/2.0 200 OK"));
    // ...while a new one for the removed slot is refused.
    let mut late = w.connect(&l);
    assert!(wait_closed(&mut late).is_empty());
    // Then the drain timeout closes it.
    assert!(wait_closed(&mut c).is_empty());
    assert!(removed_at.elapsed() >= drain - Duration::from_millis(100));
    shm.wait_for("the worker's gauge to go down", |s| s.connections(0) == 0);
    assert_eq!(shm.slot(4).1, 0);
    assert_eq!(w.commit(), 0);
    // The refused connection is counted; the drained one is not an error.
    assert_eq!(shm.counters(0), (2, 2, 1));
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn describe_updates_in_place_without_dropping_connections() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0, settings());
    let l = Listener::new(1);
    w.describe(vec![l.info(Proto::Tcp, "old.example.com:5060", None)]);
    w.commit();
    let mut c = w.connect(&l);
    let mut r = SipReader::default();
    assert!(ask(&mut c, &mut r, "a").contains("<sip:old.example.com:5060;transport=tcp>"));

    let mut info = l.info(Proto::Tcp, "new.example.com:5080", None);
    info.tag = Some("tenant-b".into());
    w.describe(vec![info]);
    assert_eq!(w.commit(), 1);
    // Same connection, the new Contact.
    assert!(ask(&mut c, &mut r, "b").contains("<sip:new.example.com:5080;transport=tcp>"));
    // And a new connection too.
    let mut c2 = w.connect(&l);
    let mut r2 = SipReader::default();
    assert!(ask(&mut c2, &mut r2, "c").contains("<sip:new.example.com:5080;transport=tcp>"));
    assert_eq!(shm.slot(1).1, 2);
    assert_eq!(shm.connections(0), 2);
    // A udp entry, or a tls one without material, is refused and changes nothing.
    let mut udp = l.info(Proto::Udp, "x:1", None);
    udp.slot = 6;
    w.describe(vec![udp, l.info(Proto::Tls, "x:2", None)]);
    w.send(ToWorker::Commit { generation: 99 }, &[]);
    for slot in [6, 1] {
        match w.expect() {
            FromWorker::Refused { slot: s, .. } => assert_eq!(s, slot),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(
        w.expect(),
        FromWorker::Ack {
            generation: 99,
            serving: 1
        }
    );
    assert!(ask(&mut c, &mut r, "d").contains("<sip:new.example.com:5080;transport=tcp>"));
    assert_eq!(w.shutdown(), 0);
    // The worker closed everything on its way out, and said so in the gauges.
    assert_eq!(shm.connections(0), 0);
    assert_eq!(shm.slot(1).1, 0);
}

// ---- TLS ------------------------------------------------------------------------------------

struct Cert {
    material: TlsMaterial,
    der: CertificateDer<'static>,
}

fn cert(name: &str) -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    Cert {
        material: TlsMaterial {
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
            ca_pem: None,
            require_client_cert: false,
        },
        der: ck.cert.der().clone(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `roots` (self-signed server certificates).
fn client_config(
    roots: &[&CertificateDer<'static>],
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    Arc::new(match identity {
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
        None => builder.with_no_client_auth(),
    })
}

type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_client(tcp: TcpStream, config: Arc<rustls::ClientConfig>, name: &str) -> TlsClient {
    let name = ServerName::try_from(name.to_string()).unwrap();
    rustls::StreamOwned::new(rustls::ClientConnection::new(config, name).unwrap(), tcp)
}

/// The certificate the server presented.
fn presented(c: &TlsClient) -> CertificateDer<'static> {
    c.conn.peer_certificates().unwrap()[0].clone()
}

#[test]
fn tls_options_and_the_certificate_of_each_socket() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0, settings());
    let (a, b) = (cert("a.example.com"), cert("b.example.com"));
    let (la, lb) = (Listener::new(0), Listener::new(1));
    w.describe(vec![
        la.info(Proto::Tls, "a.example.com:5061", Some(a.material.clone())),
        lb.info(Proto::Tls, "b.example.com:5061", Some(b.material.clone())),
    ]);
    assert_eq!(w.commit(), 2);
    let config = client_config(&[&a.der, &b.der], None);

    let mut ca = tls_client(w.connect(&la), config.clone(), "a.example.com");
    let mut r = SipReader::default();
    let reply = ask(&mut ca, &mut r, "tls-a");
    assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains("\r\nContact: <sip:a.example.com:5061;transport=tls>\r\n"),
        "{reply}"
    );
    assert_eq!(presented(&ca), a.der);

    let mut cb = tls_client(w.connect(&lb), config.clone(), "b.example.com");
    let mut r = SipReader::default();
    let reply = ask(&mut cb, &mut r, "tls-b");
    assert!(reply.contains(";transport=tls>"), "{reply}");
    assert_eq!(presented(&cb), b.der);
    // The ping/pong works over TLS too.
    cb.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    cb.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");

    // A new certificate for socket a (rotation): new connections get it, the open one goes on.
    let a2 = cert("a.example.com");
    w.describe(vec![la.info(
        Proto::Tls,
        "a.example.com:5061",
        Some(a2.material.clone()),
    )]);
    assert_eq!(w.commit(), 2);
    let config2 = client_config(&[&a2.der], None);
    let mut ca2 = tls_client(w.connect(&la), config2, "a.example.com");
    let mut r2 = SipReader::default();
    assert!(ask(&mut ca2, &mut r2, "tls-a2").starts_with("SIP/2.0 200 OK"));
    assert_eq!(presented(&ca2), a2.der);
    let mut r = SipReader::default();
    assert!(ask(&mut ca, &mut r, "tls-a-again").starts_with("SIP/2.0 200 OK"));

    assert_eq!(w.commit(), 2);
    assert_eq!(shm.counters(0), (4, 4, 0));
    assert_eq!(shm.connections(0), 3);
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn handshakes_that_do_not_finish_are_dropped() {
    let shm = Shm::new();
    let timeout = Duration::from_millis(500);
    let mut w = Worker::start(
        &shm,
        0,
        StreamSettings {
            handshake_timeout_ms: 500,
            ..settings()
        },
    );
    let c = cert("localhost");
    let (tls, ws) = (Listener::new(0), Listener::new(1));
    w.describe(vec![
        tls.info(Proto::Tls, "localhost:5061", Some(c.material.clone())),
        ws.info(Proto::Ws, "localhost:80", None),
    ]);
    w.commit();
    for (n, l) in [&tls, &ws].into_iter().enumerate() {
        let start = Instant::now();
        let mut silent = w.connect(l);
        assert!(wait_closed(&mut silent).is_empty());
        assert!(start.elapsed() >= timeout - Duration::from_millis(50));
        shm.wait_for("the drop to be counted", |s| {
            s.counters(0).2 == n as u64 + 1
        });
    }
    // A plain TCP connection has no handshake: it is still there after the same time.
    let plain = Listener::new(2);
    w.describe(vec![plain.info(Proto::Tcp, "localhost:5060", None)]);
    w.commit();
    let mut quiet = w.connect(&plain);
    std::thread::sleep(timeout * 2);
    let mut r = SipReader::default();
    assert!(ask(&mut quiet, &mut r, "still").starts_with("SIP/2.0 200 OK"));
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn client_certificates_are_required_when_configured() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0, settings());
    // A CA, and a client certificate it signs.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &ca).unwrap();

    let server = cert("localhost");
    let l = Listener::new(0);
    w.describe(vec![l.info(
        Proto::Tls,
        "localhost:5061",
        Some(TlsMaterial {
            ca_pem: Some(ca.pem()),
            require_client_cert: true,
            ..server.material.clone()
        }),
    )]);
    assert_eq!(w.commit(), 1);

    let identity = (
        client_cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.serialize_der())),
    );
    let mut good = tls_client(
        w.connect(&l),
        client_config(&[&server.der], Some(identity)),
        "localhost",
    );
    let mut r = SipReader::default();
    assert!(ask(&mut good, &mut r, "with-cert").starts_with("SIP/2.0 200 OK"));

    // Without a certificate: the handshake fails, the connection is closed and counted.
    let mut bad = tls_client(
        w.connect(&l),
        client_config(&[&server.der], None),
        "localhost",
    );
    let _ = bad.write_all(options("no-cert").as_bytes());
    let mut buf = [0u8; 64];
    assert!(
        !matches!(bad.read(&mut buf), Ok(n) if n > 0),
        "a client without a certificate was answered"
    );
    shm.wait_for("the refused handshake to be counted", |s| {
        s.counters(0).2 == 1
    });
    assert_eq!(w.shutdown(), 0);
}

// ---- WebSocket --------------------------------------------------------------------------------

fn ws_request(url: &str, subprotocol: Option<&str>) -> tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    req
}

/// One OPTIONS in a text message; the reply must come back as one text message.
fn ws_ask<S: Read + Write>(ws: &mut tungstenite::WebSocket<S>, call_id: &str) -> String {
    ws.send(Message::text(options(call_id))).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Binary(b) => panic!("binary reply {b:?}"),
            _ => continue,
        }
    }
}

#[test]
fn websocket_with_the_sip_subprotocol() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0, settings());
    let l = Listener::new(3);
    w.describe(vec![l.info(Proto::Ws, "ws.example.com:8080", None)]);
    assert_eq!(w.commit(), 1);

    let tcp = w.connect(&l);
    let (mut ws, response) =
        tungstenite::client(ws_request(&format!("ws://{}/", l.addr()), Some("sip")), tcp).unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "sip");
    let reply = ws_ask(&mut ws, "ws-1");
    assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains("\r\nContact: <sip:ws.example.com:8080;transport=ws>\r\n"),
        "{reply}"
    );
    // A binary message is answered in binary.
    ws.send(Message::binary(options("ws-bin").into_bytes()))
        .unwrap();
    let reply = loop {
        match ws.read().unwrap() {
            Message::Binary(b) => break String::from_utf8(b.to_vec()).unwrap(),
            Message::Text(t) => panic!("text reply {t}"),
            _ => continue,
        }
    };
    assert!(reply.contains("Call-ID: ws-bin\r\n"), "{reply}");
    // Ping gets its pong.
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    let pong = match ws.read().unwrap() {
        Message::Pong(p) => p,
        other => panic!("expected a pong, got {other:?}"),
    };
    assert_eq!(&pong[..], b"are you there");
    assert_eq!(shm.connections(0), 1);
    // Close handshake: the worker answers and closes.
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close handshake: {e}"),
        }
    }
    shm.wait_for("the gauge to go down", |s| s.connections(0) == 0);
    assert_eq!(w.commit(), 1);
    assert_eq!(shm.counters(0), (2, 2, 0));
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn websocket_without_the_sip_subprotocol_gets_an_http_error() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0, settings());
    let l = Listener::new(0);
    w.describe(vec![l.info(Proto::Ws, "127.0.0.1:8080", None)]);
    w.commit();
    for sub in [None, Some("chat")] {
        let tcp = w.connect(&l);
        let err =
            tungstenite::client(ws_request(&format!("ws://{}/", l.addr()), sub), tcp).unwrap_err();
        match err {
            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{sub:?}")
            }
            other => panic!("expected an HTTP error, got {other:?}"),
        }
    }
    // Plain HTTP or SIP on a ws socket: an HTTP error too, then the connection is closed.
    let mut c = w.connect(&l);
    c.write_all(options("not-ws").as_bytes()).unwrap();
    let answer = String::from_utf8(wait_closed(&mut c)).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    shm.wait_for("the refusals to be counted", |s| s.counters(0).2 == 3);
    shm.wait_for("no connection left", |s| s.connections(0) == 0);
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn secure_websocket() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0, settings());
    let c = cert("localhost");
    let l = Listener::new(5);
    w.describe(vec![l.info(
        Proto::Wss,
        "wss.example.com:443",
        Some(c.material.clone()),
    )]);
    assert_eq!(w.commit(), 1);

    let tls = tls_client(w.connect(&l), client_config(&[&c.der], None), "localhost");
    let url = format!("wss://localhost:{}/", l.addr().port());
    let (mut ws, response) = tungstenite::client(ws_request(&url, Some("sip")), tls).unwrap();
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "sip");
    assert_eq!(presented(ws.get_ref()), c.der);
    for i in 0..3 {
        let reply = ws_ask(&mut ws, &format!("wss-{i}"));
        assert!(
            reply.contains("\r\nContact: <sip:wss.example.com:443;transport=wss>\r\n"),
            "{reply}"
        );
    }
    assert_eq!(shm.slot(5), (3, 1));
    drop(ws);
    shm.wait_for("the gauges to go down", |s| {
        s.connections(0) == 0 && s.slot(5).1 == 0
    });
    assert_eq!(w.shutdown(), 0);
}

#[test]
fn the_least_loaded_worker_can_be_read_from_the_gauges() {
    let shm = Shm::new();
    let mut w0 = Worker::start(&shm, 0, settings());
    let mut w1 = Worker::start(&shm, 1, settings());
    let l = Listener::new(0);
    for w in [&mut w0, &mut w1] {
        w.describe(vec![l.info(Proto::Tcp, "127.0.0.1:5060", None)]);
        w.commit();
    }
    let a: Vec<TcpStream> = (0..3).map(|_| w0.connect(&l)).collect();
    let b = w1.connect(&l);
    shm.wait_for("3 and 1 connections", |s| {
        s.connections(0) == 3 && s.connections(1) == 1 && s.slot(0).1 == 4
    });
    drop(a);
    shm.wait_for("0 and 1 connections", |s| {
        s.connections(0) == 0 && s.connections(1) == 1 && s.slot(0).1 == 1
    });
    drop(b);
    shm.wait_for("no connection", |s| {
        s.connections(1) == 0 && s.slot(0).1 == 0
    });
    // Control EOF: the worker exits 0.
    drop(w1.channel);
    assert_eq!(w1.done.recv_timeout(WAIT).unwrap().unwrap(), 0);
    assert_eq!(w0.shutdown(), 0);
}

#[test]
fn a_client_that_does_not_read_its_replies_stalls_only_itself() {
    use nix::sys::socket::{setsockopt, sockopt};
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0, settings());
    let l = Listener::new(0);
    w.describe(vec![l.info(Proto::Tcp, "127.0.0.1:5060", None)]);
    w.commit();

    // Small kernel buffers both ways, so the replies pile up in the worker quickly.
    let client = TcpStream::connect(l.addr()).unwrap();
    setsockopt(&client, sockopt::RcvBuf, &65536).unwrap();
    setsockopt(&client, sockopt::SndBuf, &65536).unwrap();
    let (accepted, peer) = l.socket.accept().unwrap();
    setsockopt(&accepted, sockopt::SndBuf, &65536).unwrap();
    setsockopt(&accepted, sockopt::RcvBuf, &65536).unwrap();
    w.hand_over(0, peer, accepted.as_fd());
    drop(accepted);

    const N: usize = 5000;
    let mut writer = client.try_clone().unwrap();
    writer.set_write_timeout(Some(WAIT)).unwrap();
    let flood = std::thread::spawn(move || {
        for i in 0..N {
            writer.write_all(options(&format!("flood-{i}")).as_bytes())?;
        }
        Ok::<(), io::Error>(())
    });
    // The flood's replies (over two megabytes) cannot all leave: the worker stops reading that
    // connection, and serves another meanwhile.
    shm.wait_for("the flood to be partly answered", |s| s.counters(0).1 > 100);
    let mut other = w.connect(&l);
    let mut r = SipReader::default();
    for i in 0..5 {
        assert!(ask(&mut other, &mut r, &format!("other-{i}")).starts_with("SIP/2.0 200 OK"));
    }
    // The flood's writer is stuck: the worker stopped reading its requests (1.6 MB of them,
    // where the kernel buffers and the worker's reply limit hold well under one).
    assert!(!flood.is_finished(), "the worker read the whole flood");
    // Now read the flood's replies: all of them, in order.
    let mut client = client;
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = SipReader::default();
    for i in 0..N {
        let reply = r.next(&mut client);
        assert!(
            reply.contains(&format!("\r\nCall-ID: flood-{i}\r\n")),
            "reply {i}: {reply}"
        );
    }
    flood.join().unwrap().unwrap();
    assert_eq!(w.commit(), 1);
    assert_eq!(shm.counters(0), (N as u64 + 5, N as u64 + 5, 0));
    assert_eq!(w.shutdown(), 0);
}
