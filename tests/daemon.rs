//! `sipsockd run` end to end: the real binary, its worker processes, the MI FIFO, the shm table and
//! SIP over UDP on loopback.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn slots(dump: &Value) -> Vec<Value> {
    dump["slots"].as_array().cloned().unwrap_or_default()
}

fn slot_of(dump: &Value, socket: &str) -> Option<Value> {
    slots(dump).into_iter().find(|s| s["socket"] == socket)
}

#[test]
fn reload_adds_and_the_new_socket_answers_options_with_its_contact() {
    let d = Daemon::start("add", Opts::default());
    let port = free_udp_port("127.0.0.1");
    let sock = format!("udp:127.0.0.1:{port}");
    d.add(&sock, &["--tag", "demo"]);
    d.reload_ok();
    let c = client("127.0.0.1");
    let reply = options(&c, udp("127.0.0.1", port), 1).expect("no reply to OPTIONS");
    assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains(&format!("Contact: <sip:127.0.0.1:{port};transport=udp>")),
        "{reply}"
    );
    assert!(reply.contains("Call-ID: call-1@test"), "{reply}");
    let slot = slot_of(&d.dump(), &sock).expect("slot in dump");
    assert_eq!(slot["state"], "active");
    assert_eq!(slot["tag"], "demo");
    assert_eq!(slot["proto"], "udp");
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn other_requests_get_the_configured_reply_and_ack_gets_nothing() {
    let d = Daemon::start(
        "reply",
        Opts {
            extra: "[sip]\nreply_code = 480\nreply_reason = \"Gone Fishing\"\n".into(),
            ..Opts::default()
        },
    );
    let port = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    let c = client("127.0.0.1");
    let to = udp("127.0.0.1", port);
    let from = c.local_addr().unwrap();
    let invite = options_request(from, to, 7).replace("OPTIONS", "INVITE");
    c.send_to(invite.as_bytes(), to).unwrap();
    let reply = recv_reply(&c, 7).expect("reply to INVITE");
    assert!(reply.starts_with("SIP/2.0 480 Gone Fishing\r\n"), "{reply}");
    let ack = options_request(from, to, 8).replace("OPTIONS", "ACK");
    c.send_to(ack.as_bytes(), to).unwrap();
    // The ACK taken and answered by nothing: the workers count it received and dropped once they
    // are done with it, after any reply would have been sent...
    let sum = |dump: &Value, key: &str| -> u64 {
        dump["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w[key].as_u64().unwrap())
            .sum()
    };
    let dump = d.wait_dump("the ACK counted", |dump| sum(dump, "received") == 2);
    assert_eq!(
        (sum(&dump, "replied"), sum(&dump, "dropped")),
        (1, 1),
        "the INVITE answered, the ACK dropped: {dump:#}"
    );
    // ...and no datagram at all, whatever its Call-ID, reaches the client.
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 65536];
    match c.recv_from(&mut buf) {
        Ok((n, from)) => panic!(
            "a datagram from {from} after the ACK: {}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
}

#[test]
fn reload_removes_and_the_port_is_free_when_the_reply_arrives() {
    let d = Daemon::start("rm", Opts::default());
    let port = free_udp_port("127.0.0.1");
    let sock = format!("udp:127.0.0.1:{port}");
    d.add(&sock, &[]);
    d.reload_ok();
    d.rm(&sock);
    d.reload_ok();
    std::net::UdpSocket::bind(("127.0.0.1", port))
        .expect("port still held after the reload returned");
    assert!(slot_of(&d.dump(), &sock).is_none());
}

#[test]
fn tag_advertised_and_tos_change_in_place_under_traffic_without_losing_a_datagram() {
    let d = Daemon::start("inplace", Opts::default());
    let port = free_udp_port("127.0.0.1");
    let sock = format!("udp:127.0.0.1:{port}");
    d.add(&sock, &["--tag", "before"]);
    d.reload_ok();
    let slot_before = slot_of(&d.dump(), &sock).unwrap()["index"].clone();
    let db = rusqlite::Connection::open(d.dir.path().join("s.db")).unwrap();

    // Traffic before the change (`start` returns once a request was answered)...
    let traffic = Traffic::start(&[port]);
    // ...during: an in-place change whose reload saw answers come back while it was in flight.
    // The traffic is a thread on a shared machine, so a reload may fall between two answers:
    // then the other of two changes is applied, each reload an in-place update, at most 10.
    let changes = [
        ("after-a", "192.0.2.7", 0x10),
        ("after-b", "192.0.2.8", 0x08),
    ];
    let mut overlapped = None;
    for attempt in 0..10 {
        let (tag, advertised, tos) = changes[attempt % 2];
        db.execute(
            "UPDATE sockets SET tag = ?1, advertised = ?2, tos = ?3, flags = 'frag' \
             WHERE socket = ?4",
            rusqlite::params![tag, advertised, tos.to_string(), sock],
        )
        .unwrap();
        let answered = traffic.answered();
        d.reload_ok();
        if traffic.answered() > answered {
            overlapped = Some(changes[attempt % 2]);
            break;
        }
    }
    let (tag, advertised, tos) = overlapped.expect("no answer came during any of 10 reloads");
    // ...and after it; every request was answered.
    traffic.finish("in-place reloads");

    let slot = slot_of(&d.dump(), &sock).unwrap();
    assert_eq!(
        slot["index"], slot_before,
        "the socket moved to another slot: it was rebound"
    );
    assert_eq!(slot["tag"], tag);
    assert_eq!(slot["advertised"], format!("{advertised}:{port}"));
    assert_eq!(slot["tos"], tos, "{slot:#}");
    // The TOS read back from the socket itself, as each worker holds it.
    let udp_workers: Vec<u32> = d.dump()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "udp")
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(udp_workers.len(), 2);
    for pid in udp_workers {
        let socket = socket_of(pid, udp("127.0.0.1", port))
            .unwrap_or_else(|| panic!("worker {pid} holds no socket on port {port}"));
        let got = nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::IpTos).unwrap();
        assert_eq!(got, tos, "IP_TOS of worker {pid}'s socket");
    }
    let c = client("127.0.0.1");
    let reply = options(&c, udp("127.0.0.1", port), 99_999).unwrap();
    assert!(
        reply.contains(&format!("Contact: <sip:{advertised}:{port};transport=udp>")),
        "{reply}"
    );
}

#[test]
fn slots_rotate_fifo() {
    let d = Daemon::start("fifo", Opts::default());
    let held = hold_udp_ports("127.0.0.1", 3);
    let [a, b, c] = [0, 1, 2].map(|i| format!("udp:127.0.0.1:{}", held.ports()[i]));
    drop(held);
    d.add(&a, &[]);
    d.add(&b, &[]);
    d.reload_ok();
    let dump = d.dump();
    let (ia, ib) = (
        slot_of(&dump, &a).unwrap()["index"].as_u64().unwrap(),
        slot_of(&dump, &b).unwrap()["index"].as_u64().unwrap(),
    );
    d.rm(&a);
    d.reload_ok();
    d.add(&c, &[]);
    d.reload_ok();
    let ic = slot_of(&d.dump(), &c).unwrap()["index"].as_u64().unwrap();
    assert_eq!(
        ic,
        ib + 1,
        "C must take the slot after B's ({ib}), not A's ({ia})"
    );
}

#[test]
fn a_table_over_max_sockets_is_refused_and_nothing_changes() {
    let d = Daemon::start(
        "max",
        Opts {
            max_sockets: 2,
            ..Opts::default()
        },
    );
    let ports = hold_udp_ports("127.0.0.1", 3).ports();
    d.add(&format!("udp:127.0.0.1:{}", ports[0]), &[]);
    d.reload_ok();
    d.add(&format!("udp:127.0.0.1:{}", ports[1]), &[]);
    // The CLI refuses a row past max_sockets; insert it behind its back as an operator's SQL would.
    let conn = rusqlite::Connection::open(d.dir.path().join("s.db")).unwrap();
    conn.execute(
        "INSERT INTO sockets (socket) VALUES (?1)",
        [format!("udp:127.0.0.1:{}", ports[2])],
    )
    .unwrap();
    let err = d
        .reload()
        .expect_err("a table over max_sockets must be refused");
    assert!(err.contains("Table refused"), "{err}");
    assert_eq!(
        slots(&d.dump()).len(),
        1,
        "the refused table changed the running set"
    );
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", ports[0]), 1).is_some());
}

#[test]
fn a_bad_row_refuses_the_table_with_one_error_per_row() {
    let d = Daemon::start("badrow", Opts::default());
    let port = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    // Insert bad rows behind the CLI's back (it validates before inserting).
    let conn = rusqlite::Connection::open(d.dir.path().join("s.db")).unwrap();
    conn.execute(
        "INSERT INTO sockets (socket, tos) VALUES ('bin:127.0.0.1:5999', NULL)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO sockets (socket, flags) VALUES ('udp:127.0.0.1:5998', 'bogus')",
        [],
    )
    .unwrap();
    let out = d.cli(&["mi", "sockets_reload"]).code(1);
    let err = out.stderr;
    assert!(err.contains("Table refused: 2 bad rows"), "{err}");
    assert!(err.contains("unsupported protocol bin"), "{err}");
    assert!(err.contains("bogus"), "{err}");
    assert_eq!(slots(&d.dump()).len(), 1);
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", port), 1).is_some());
}

#[test]
fn a_bind_failure_is_reported_and_the_others_run() {
    let d = Daemon::start("bindfail", Opts::default());
    let port = free_udp_port("127.0.0.1");
    let good = format!("udp:127.0.0.1:{port}");
    let bad = "udp:192.0.2.1:5060"; // TEST-NET-1: not on this host; bind only, no traffic
    d.add(&good, &[]);
    d.add(bad, &[]);
    let err = d.reload().expect_err("a bind failure must not answer OK");
    assert!(err.contains("1 sockets could not be bound"), "{err}");
    assert!(err.contains("192.0.2.1"), "{err}");
    let dump = d.dump();
    assert_eq!(slot_of(&dump, bad).unwrap()["state"], "error");
    assert!(slot_of(&dump, bad).unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("bind"));
    assert_eq!(slot_of(&dump, &good).unwrap()["state"], "active");
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", port), 1).is_some());
    // sockets_list shows the failed row too, as OpenSIPS does.
    let list = d.mi("sockets_list").unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    // Retried at the next reload, still failing, still reported.
    assert!(d.reload().is_err());
}

#[test]
fn sockets_list_has_the_opensips_shape() {
    let d = Daemon::start("list", Opts::default());
    let p1 = free_udp_port("127.0.0.1");
    let p2 = free_udp_port("127.0.0.1");
    d.add(
        &format!("udp:127.0.0.1:{p1}"),
        &[
            "--advertised",
            "1.2.3.4",
            "--tag",
            "t1",
            "--flags",
            "reuse_port|frag",
            "--tos",
            "0x10",
        ],
    );
    d.add(&format!("UDP:127.0.0.1:{p2}"), &[]);
    d.reload_ok();
    let list = d.mi("sockets_list").unwrap();
    assert_eq!(
        list,
        json!([
            {"socket": format!("udp:127.0.0.1:{p1}"), "advertised": format!("1.2.3.4:{p1}"), "tag": "t1", "flags": "frag,reuse_port", "tos": 16},
            {"socket": format!("UDP:127.0.0.1:{p2}")}
        ])
    );
}

#[test]
fn a_stopped_worker_does_not_hold_up_traffic() {
    let d = Daemon::start(
        "sigstop",
        Opts {
            processes: 2,
            ..Opts::default()
        },
    );
    let ports = d.serve_udp(3);
    let pids = d.worker_pids();
    signal(pids[0], libc::SIGSTOP);
    let c = client("127.0.0.1");
    let mut lost = 0;
    for n in 0..300u32 {
        let port = ports[n as usize % ports.len()];
        if options(&c, udp("127.0.0.1", port), n).is_none() {
            lost += 1;
        }
    }
    signal(pids[0], libc::SIGCONT);
    assert_eq!(lost, 0, "OPTIONS lost while one worker was stopped");
}

#[test]
fn a_killed_worker_comes_back_and_serves_every_socket() {
    let d = Daemon::start(
        "kill9",
        Opts {
            processes: 1,
            ..Opts::default()
        },
    );
    let ports = d.serve_udp(3);
    let old = d.worker_pids()[0];
    signal(old, libc::SIGKILL);
    d.wait_dump("the worker to come back", |dump| {
        let w = &dump["workers"][0];
        w["pid"].as_u64().unwrap_or(0) as u32 != old
            && w["pid"] != 0
            && w["state"] == "ready"
            && w["restarts"] == 1
    });
    // With a single worker, an answer can only come from the restarted one.
    let c = client("127.0.0.1");
    for (n, p) in ports.iter().enumerate() {
        assert!(
            options(&c, udp("127.0.0.1", *p), n as u32).is_some(),
            "port {p} not served after the restart"
        );
    }
}

#[test]
fn sighup_reloads() {
    let d = Daemon::start("hup", Opts::default());
    let port = free_udp_port("127.0.0.1");
    let sock = format!("udp:127.0.0.1:{port}");
    d.add(&sock, &[]);
    signal(d.pid(), libc::SIGHUP);
    d.wait_dump("the SIGHUP reload", |dump| {
        slot_of(dump, &sock).is_some_and(|s| s["state"] == "active")
    });
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", port), 1).is_some());
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_fifo_and_shm() {
    let d = Daemon::start("term", Opts::default());
    let (fifo, shm) = (d.fifo.clone(), d.shm.clone());
    let pids = d.worker_pids();
    let t0 = Instant::now();
    assert_eq!(d.stop(), Some(0));
    assert!(t0.elapsed() < DEADLINE);
    assert!(!fifo.exists(), "FIFO left behind");
    assert!(!shm.exists(), "shm file left behind");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie_or_gone(pid),
            "worker {pid} still running"
        );
    }
}

fn is_zombie_or_gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
}

#[test]
fn a_second_instance_on_the_same_shm_is_refused_naming_the_pid() {
    let d = Daemon::start("twice", Opts::default());
    let err = d.cli(&["run"]).code(1).stderr;
    assert!(err.contains(&d.pid().to_string()), "{err}");
    // The first one is untouched.
    assert!(d.mi("version").is_ok());
}

#[test]
fn an_unreachable_database_at_start_is_exit_1() {
    let opts = Opts {
        db_url: Some("postgres://nobody@127.0.0.1:1/none".into()),
        ..Opts::default()
    };
    let d = Daemon::configure("nodb", &opts);
    let err = d.cli(&["run"]).code(1).stderr;
    assert!(err.to_lowercase().contains("connect"), "{err}");
    assert!(!d.fifo.exists());
}

#[test]
fn core_mi_commands_answer_in_the_opensips_shapes() {
    let d = Daemon::start(
        "core",
        Opts {
            processes: 2,
            extra: "[tcp]\nworkers = 1\n".into(),
            ..Opts::default()
        },
    );
    let ps = d.mi("ps").unwrap();
    let procs = ps["Processes"].as_array().unwrap();
    let types: Vec<&str> = procs.iter().map(|p| p["Type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "supervisor",
            "udp worker 0",
            "udp worker 1",
            "stream worker 0"
        ]
    );
    assert!(procs.iter().all(|p| p["PID"].as_u64().unwrap() > 0), "{ps}");
    assert!(d.mi("version").unwrap()["Server"]
        .as_str()
        .unwrap()
        .starts_with("sipsockd "));
    assert!(d.mi("uptime").unwrap()["Up time"]
        .as_str()
        .unwrap()
        .ends_with("[sec]"));
    let which = d.mi("which").unwrap();
    for m in [
        "sockets_reload",
        "sockets_list",
        "sockets_status",
        "ps",
        "which",
        "version",
        "uptime",
    ] {
        assert!(
            which.as_array().unwrap().contains(&json!(m)),
            "which lacks {m}: {which}"
        );
    }
    let status = d.mi("sockets_status").unwrap();
    assert_eq!(status["workers"].as_array().unwrap().len(), 3);
    d.cli(&["mi", "no_such_method"]).code(1);
}

#[test]
fn systemd_is_told_ready_once_the_initial_load_is_applied() {
    let d = Daemon::configure("notify", &Opts::default());
    d.cli(&["db", "init"]).ok();
    let port = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{port}"), &[]);
    let sock_path = d.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    notify.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut child = d
        .command(&["run"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("no READY=1 from the daemon");
    assert_eq!(&buf[..n], b"READY=1\n");
    // Ready means the table is applied: the socket answers at once.
    assert!(options(&client("127.0.0.1"), udp("127.0.0.1", port), 1).is_some());
    signal(child.id(), libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
