//! The UDP serving loop in-process: `worker::serve` runs on a thread with one end of a control
//! channel, the test plays the supervisor on the other end (Setup with a real shm table, Add with
//! real UDP sockets it bound) and a SIP client on loopback.

mod common;

use common::{scratch, skip, WAIT};
use shm::{Table, WorkerKind};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc;
use std::time::Duration;
use worker::ipc::{FromWorker, SocketInfo, ToWorker};
use worker::{Channel, ServeError};

/// A shm table for two UDP workers.
struct Shm {
    table: Table,
    _dir: tempfile::TempDir,
}

impl Shm {
    fn new() -> Shm {
        let dir = scratch();
        let table = Table::create(&dir.path().join("t.shm"), 8, 2, 0, 0).unwrap();
        Shm { table, _dir: dir }
    }

    /// (received, replied, dropped, wakeups) of a worker.
    fn counters(&self, rank: u32) -> (u64, u64, u64, u64) {
        let r = self.table.worker(WorkerKind::Udp, rank).unwrap();
        (r.received(), r.replied(), r.dropped(), r.wakeups())
    }
}

/// A worker thread and the supervisor's end of its channel.
struct Worker {
    channel: Channel,
    buf: Vec<u8>,
    done: mpsc::Receiver<Result<u8, ServeError>>,
    /// The serving thread's id, to read its scheduler statistics.
    tid: i32,
}

impl Worker {
    /// Start a worker thread; check its Hello; send Setup with the table unless `setup` is false.
    fn start(shm: &Shm, rank: u32) -> Worker {
        let w = Worker::spawn(rank);
        w.channel
            .send_to_worker(
                &ToWorker::Setup {
                    reply_code: 503,
                    reply_reason: "Service Unavailable".into(),
                    stream: Default::default(),
                },
                &[shm.table.file().as_fd()],
            )
            .unwrap();
        w
    }

    fn spawn(rank: u32) -> Worker {
        let (channel, theirs) = Channel::pair().unwrap();
        let (tx, done) = mpsc::channel();
        let (tid_tx, tid_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tid_tx.send(nix::unistd::gettid().as_raw());
            let _ = tx.send(worker::serve(theirs, WorkerKind::Udp, rank));
        });
        let mut w = Worker {
            channel,
            buf: Vec::new(),
            done,
            tid: tid_rx.recv_timeout(WAIT).unwrap(),
        };
        assert_eq!(
            w.expect(),
            FromWorker::Hello {
                rank,
                pid: std::process::id()
            }
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

    /// Commit `generation`; returns how many sockets the worker serves.
    fn commit(&mut self, generation: u64) -> u32 {
        self.send(ToWorker::Commit { generation }, &[]);
        match self.expect() {
            FromWorker::Ack {
                generation: g,
                serving,
            } if g == generation => serving,
            other => panic!("expected the ack of {generation}, got {other:?}"),
        }
    }

    fn add(&mut self, generation: u64, slot: u32, socket: &UdpSocket, contact: &str) {
        self.send(
            ToWorker::Add {
                generation,
                sockets: vec![info(slot, socket.local_addr().unwrap(), contact)],
            },
            &[socket.as_fd()],
        );
    }

    fn remove(&mut self, generation: u64, slot: u32) {
        self.send(
            ToWorker::Remove {
                generation,
                slots: vec![slot],
            },
            &[],
        );
    }

    /// How many times the serving thread went to sleep (each wakeup from `epoll_wait` is followed
    /// by one): the kernel's count, which sees wakeups that `epoll_wait` swallows when the
    /// datagram was taken by another worker meanwhile.
    fn sleeps(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/self/task/{}/status", self.tid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Wait until the serving thread sleeps (in `epoll_wait`: it waits nowhere else once set up).
    fn wait_asleep(&self) {
        let path = format!("/proc/self/task/{}/stat", self.tid);
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let stat = std::fs::read_to_string(&path).unwrap();
            // "tid (comm) STATE ...": the comm may hold spaces, so look after its ')'.
            let state = stat.rsplit_once(')').unwrap().1.trim_start().chars().next();
            if state == Some('S') {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker thread never went to sleep"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The exit status of the serving thread.
    fn exit_status(self) -> u8 {
        self.done
            .recv_timeout(WAIT)
            .expect("the worker did not stop")
            .unwrap()
    }
}

fn info(slot: u32, local: SocketAddr, contact: &str) -> SocketInfo {
    SocketInfo {
        slot,
        proto: shm::Proto::Udp,
        local,
        contact: contact.into(),
        tag: None,
        tls: None,
    }
}

fn options(call_id: &str) -> String {
    format!(
        "OPTIONS sip:ping@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP client.invalid:5999;branch=z9hG4bK-{call_id};rport\r\n\
         From: <sip:tester@example.com>;tag=t-{call_id}\r\n\
         To: <sip:ping@example.com>;tag=fixed\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn client(like: SocketAddr) -> UdpSocket {
    let c = UdpSocket::bind(if like.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c
}

/// Send `msg` to `to` and return the reply (which must come from `to`).
fn ask(client: &UdpSocket, to: SocketAddr, msg: &str) -> String {
    client.send_to(msg.as_bytes(), to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, from) = client.recv_from(&mut buf).expect("no reply");
    assert_eq!(from, to, "the reply must come from the socket asked");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn server() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

#[test]
fn options_answered_then_removed_and_port_free() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0);
    let sock = server();
    let addr = sock.local_addr().unwrap();
    w.add(1, 0, &sock, "203.0.113.5:5099");
    assert_eq!(w.commit(1), 1);

    let c = client(addr);
    let reply = ask(&c, addr, &options("call-a"));
    let want = format!(
        "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/UDP client.invalid:5999;branch=z9hG4bK-call-a;rport={port};received=127.0.0.1\r\n\
         From: <sip:tester@example.com>;tag=t-call-a\r\n\
         To: <sip:ping@example.com>;tag=fixed\r\n\
         Call-ID: call-a\r\n\
         CSeq: 1 OPTIONS\r\n\
         Contact: <sip:203.0.113.5:5099;transport=udp>\r\n\
         Server: sipsockd/{version}\r\n\
         Content-Length: 0\r\n\r\n",
        port = c.local_addr().unwrap().port(),
        version = env!("CARGO_PKG_VERSION"),
    );
    assert_eq!(reply, want);

    // Other requests get the configured reply; the ack of a commit sent after a reply was read
    // means the batch's counters were flushed (the loop is single-threaded).
    let invite = options("call-b").replace("OPTIONS", "INVITE");
    assert!(ask(&c, addr, &invite).starts_with("SIP/2.0 503 Service Unavailable\r\n"));
    assert_eq!(w.commit(2), 1);
    let (received, replied, dropped, _) = shm.counters(0);
    assert_eq!((received, replied, dropped), (2, 2, 0));
    assert_eq!(shm.table.slot_received(0), 2);

    w.remove(3, 0);
    assert_eq!(w.commit(3), 0);
    // Nobody serves it now: the datagram stays for whoever reads the socket.
    c.send_to(options("call-c").as_bytes(), addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"OPTIONS"));
    // The worker closed its copy: once ours is closed, the port can be bound again.
    drop(sock);
    UdpSocket::bind(addr).expect("the worker still holds the removed socket");

    w.send(ToWorker::Shutdown, &[]);
    assert_eq!(w.exit_status(), 0);
}

#[test]
fn drops_are_counted_and_replies_keep_flowing() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 1);
    let sock = server();
    let addr = sock.local_addr().unwrap();
    w.add(1, 5, &sock, "127.0.0.1:5060");
    assert_eq!(w.commit(1), 1);
    let c = client(addr);
    let ack = options("x").replace("OPTIONS", "ACK");
    let response = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n";
    let huge = vec![b'A'; 65_000];
    for junk in [
        &b"\r\n\r\n"[..],
        b"\0\0\0\0",
        b"garbage",
        ack.as_bytes(),
        response.as_bytes(),
        b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\nTo: \xff\xfe\r\n\r\n",
        &huge,
    ] {
        c.send_to(junk, addr).unwrap();
    }
    // Datagrams on one socket are read in order: once this is answered, the junk was taken.
    assert!(ask(&c, addr, &options("after-junk")).starts_with("SIP/2.0 200 OK\r\n"));
    assert_eq!(w.commit(2), 1);
    // received = replied + dropped: the 8 junk datagrams got nothing.
    let (received, replied, dropped, _) = shm.counters(1);
    assert_eq!((received, replied, dropped), (9, 1, 8));
    assert_eq!(shm.table.slot_received(5), 9);
    drop(w.channel);
    assert_eq!(
        w.done
            .recv_timeout(WAIT)
            .expect("the worker did not stop")
            .unwrap(),
        0,
        "a closed control channel is a quiet exit"
    );
}

#[test]
fn update_changes_the_contact_in_place() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0);
    let sock = server();
    let addr = sock.local_addr().unwrap();
    w.add(1, 2, &sock, "192.0.2.1:5060");
    assert_eq!(w.commit(1), 1);
    let c = client(addr);
    assert!(
        ask(&c, addr, &options("u1")).contains("Contact: <sip:192.0.2.1:5060;transport=udp>\r\n")
    );
    w.send(
        ToWorker::Update {
            generation: 2,
            sockets: vec![info(2, addr, "sip.example.com:5070")],
        },
        &[],
    );
    assert_eq!(w.commit(2), 1);
    assert!(ask(&c, addr, &options("u2"))
        .contains("Contact: <sip:sip.example.com:5070;transport=udp>\r\n"));
    // Our copy dropped: the worker's copy alone still serves it (the update did not touch it).
    drop(sock);
    assert!(ask(&c, addr, &options("u3")).starts_with("SIP/2.0 200 OK\r\n"));
}

#[test]
fn two_workers_share_a_socket() {
    let shm = Shm::new();
    let mut w0 = Worker::start(&shm, 0);
    let mut w1 = Worker::start(&shm, 1);
    let sock = server();
    let addr = sock.local_addr().unwrap();
    for w in [&mut w0, &mut w1] {
        w.add(1, 0, &sock, "127.0.0.1:5060");
        assert_eq!(w.commit(1), 1);
    }
    let c = client(addr);
    let before: u64 = [0, 1].iter().map(|r| shm.counters(*r).3).sum();
    w0.wait_asleep();
    w1.wait_asleep();
    let sleeps_before = w0.sleeps() + w1.sleeps();
    const N: u64 = 40;
    for i in 0..N {
        let id = format!("both-{i}");
        let reply = ask(&c, addr, &options(&id));
        assert!(reply.contains(&format!("Call-ID: {id}\r\n")), "{reply}");
        // Both idle in epoll_wait again before the next datagram, so that each thread woken by
        // a datagram shows as exactly one more sleep.
        w0.wait_asleep();
        w1.wait_asleep();
    }
    // One datagram at a time to two idle workers: EPOLLEXCLUSIVE wakes one of them, not both
    // (without it, this count is about 2N).
    let sleeps = w0.sleeps() + w1.sleeps() - sleeps_before;
    assert!(
        sleeps <= N + N / 4,
        "{sleeps} thread wakeups for {N} datagrams"
    );
    assert_eq!(w0.commit(2), 1);
    assert_eq!(w1.commit(2), 1);
    let (r0, r1) = (shm.counters(0), shm.counters(1));
    assert_eq!(r0.0 + r1.0, N);
    assert_eq!(r0.1 + r1.1, N);
    // The workers' own count (each commit above adds one wakeup per worker).
    let wakeups = r0.3 + r1.3 - before - 2;
    assert!(
        (N..=N + N / 4).contains(&wakeups),
        "{wakeups} wakeups for {N} datagrams"
    );

    // Each can serve it alone.
    w0.remove(3, 0);
    assert_eq!(w0.commit(3), 0);
    for i in 0..5 {
        assert!(ask(&c, addr, &options(&format!("w1-{i}"))).starts_with("SIP/2.0 200"));
    }
    assert_eq!(w1.commit(3), 1);
    assert_eq!(shm.counters(0).0, r0.0);
    assert_eq!(shm.counters(1).0, r1.0 + 5);

    w0.add(4, 0, &sock, "127.0.0.1:5060");
    assert_eq!(w0.commit(4), 1);
    w1.remove(4, 0);
    assert_eq!(w1.commit(4), 0);
    for i in 0..5 {
        assert!(ask(&c, addr, &options(&format!("w0-{i}"))).starts_with("SIP/2.0 200"));
    }
    assert_eq!(w0.commit(5), 1);
    assert_eq!(shm.counters(0).0, r0.0 + 5);
    assert_eq!(shm.table.slot_received(0), N + 10);
}

#[test]
fn bad_entries_are_refused_and_closed() {
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0);
    let a = server();
    let b = server();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    let refused = |w: &mut Worker| match w.expect() {
        FromWorker::Refused {
            generation: 1,
            slot,
            reason,
        } => (slot, reason),
        other => panic!("expected a refusal, got {other:?}"),
    };

    // Two entries, one fd: both refused (raw send: the typed sender would not let us).
    let two = ToWorker::Add {
        generation: 1,
        sockets: vec![
            info(0, a.local_addr().unwrap(), "x:1"),
            info(1, b.local_addr().unwrap(), "x:2"),
        ],
    };
    w.channel.send(&two.encode(), &[a.as_fd()]).unwrap();
    for want in [0, 1] {
        let (slot, reason) = refused(&mut w);
        assert_eq!(slot, want);
        assert!(reason.contains("1 fds for 2 sockets"), "{reason}");
    }

    // One message, four entries: wrong address, a TCP socket, a pipe, a good one.
    let tcp_addr = tcp.local_addr().unwrap();
    let mut tcp_info = info(3, tcp_addr, "x:4");
    tcp_info.proto = shm::Proto::Udp;
    let mixed = ToWorker::Add {
        generation: 1,
        sockets: vec![
            info(2, b.local_addr().unwrap(), "x:3"),
            tcp_info,
            info(4, a.local_addr().unwrap(), "x:5"),
            info(6, a.local_addr().unwrap(), "x:6"),
        ],
    };
    w.send(mixed, &[a.as_fd(), tcp.as_fd(), pipe_r.as_fd(), a.as_fd()]);
    let (slot, reason) = refused(&mut w);
    assert_eq!(slot, 2);
    assert!(reason.contains("bound to"), "{reason}");
    let (slot, reason) = refused(&mut w);
    assert_eq!(slot, 3);
    assert!(reason.contains("not a datagram socket"), "{reason}");
    let (slot, reason) = refused(&mut w);
    assert_eq!(slot, 4);
    assert!(reason.contains("not a socket"), "{reason}");

    // A stream proto for a UDP worker, and a slot already served.
    let mut tcp_proto = info(7, a.local_addr().unwrap(), "x:7");
    tcp_proto.proto = shm::Proto::Tcp;
    w.send(
        ToWorker::Add {
            generation: 1,
            sockets: vec![tcp_proto, info(6, a.local_addr().unwrap(), "x:6")],
        },
        &[a.as_fd(), a.as_fd()],
    );
    let (slot, reason) = refused(&mut w);
    assert_eq!((slot, reason.contains("tcp")), (7, true), "{reason}");
    let (slot, reason) = refused(&mut w);
    assert_eq!(
        (slot, reason.contains("already served")),
        (6, true),
        "{reason}"
    );
    assert_eq!(w.commit(1), 1);

    // The refused TCP listener was closed by the worker: its port binds again once ours is gone.
    drop(tcp);
    TcpListener::bind(tcp_addr).expect("the worker kept a refused fd");
}

#[test]
fn malformed_control_messages_exit_3() {
    let shm = Shm::new();
    let w = Worker::start(&shm, 0);
    w.channel.send(b"{\"type\":\"reboot\"}", &[]).unwrap();
    assert_eq!(w.exit_status(), worker::EXIT_BAD_CONTROL);

    let w = Worker::start(&shm, 0);
    let s = server();
    let update = ToWorker::Update {
        generation: 1,
        sockets: vec![],
    };
    w.channel.send(&update.encode(), &[s.as_fd()]).unwrap();
    assert_eq!(w.exit_status(), worker::EXIT_BAD_CONTROL);

    let w = Worker::start(&shm, 0);
    w.send(
        ToWorker::Setup {
            reply_code: 503,
            reply_reason: "again".into(),
            stream: Default::default(),
        },
        &[shm.table.file().as_fd()],
    );
    assert_eq!(w.exit_status(), worker::EXIT_BAD_CONTROL);

    // Anything but Setup first.
    let w = Worker::spawn(0);
    w.send(ToWorker::Commit { generation: 1 }, &[]);
    assert_eq!(w.exit_status(), worker::EXIT_BAD_CONTROL);

    // Setup without its fd.
    let w = Worker::spawn(0);
    let setup = ToWorker::Setup {
        reply_code: 503,
        reply_reason: "x".into(),
        stream: Default::default(),
    };
    w.channel.send(&setup.encode(), &[]).unwrap();
    assert_eq!(w.exit_status(), worker::EXIT_BAD_CONTROL);

    // A rank the table has no record for is an error, not a crash.
    let w = Worker::spawn(7);
    w.send(setup, &[shm.table.file().as_fd()]);
    assert!(matches!(
        w.done.recv_timeout(WAIT).unwrap(),
        Err(ServeError::NoRecord { rank: 7, .. })
    ));

    // The supervisor gone before Setup: quiet exit.
    let w = Worker::spawn(0);
    drop(w.channel);
    assert_eq!(w.done.recv_timeout(WAIT).unwrap().unwrap(), 0);
}

#[test]
fn ipv6_socket() {
    let sock = match UdpSocket::bind("[::1]:0") {
        Ok(sock) => sock,
        Err(e) => return skip("ipv6_socket", &format!("no IPv6 loopback: {e}")),
    };
    let shm = Shm::new();
    let mut w = Worker::start(&shm, 0);
    let addr = sock.local_addr().unwrap();
    w.add(1, 1, &sock, &addr.to_string());
    assert_eq!(w.commit(1), 1);
    let c = client(addr);
    let reply = ask(&c, addr, &options("v6"));
    let port = c.local_addr().unwrap().port();
    assert!(
        reply.contains(&format!(";rport={port};received=::1\r\n")),
        "{reply}"
    );
    assert!(reply.contains(&format!("Contact: <sip:{addr};transport=udp>\r\n")));
}
