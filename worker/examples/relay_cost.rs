//! Instructions per message through the relay's decision core, counted by Valgrind's callgrind
//! (the trustworthy figure on a noisy shared machine; see `scripts/bench.sh`).
//!
//! `cargo build --release -p worker --example relay_cost && target/release/examples/relay_cost`
//! runs itself under `valgrind --tool=callgrind` twice per case (N1 and N2 messages) and prints
//! `(Ir(N2) - Ir(N1)) / (N2 - N1)`: start-up, table building and exit cancel out. Cases:
//!
//! - `options`: an OPTIONS from a customer relayed to the tag's core (parse + `Relay::handle`);
//! - `200`: the core's 200 to it relayed back (parse + `Relay::handle`);
//! - `invite`: an initial INVITE (Record-Route: two MACs) and `bye`: an in-dialog BYE (a Route
//!   checked and removed);
//! - `parse-options`, `parse-200`: the parse alone (so the relay's own share is the difference);
//! - `responder`: the responder's 200 to an OPTIONS (parse + `Responder::reply`), for reference.
//!
//! `relay_cost run CASE N` handles N messages of CASE and exits (what runs under Valgrind).
//! Valgrind does not run the SHA extensions: under it the `sha2` crate takes its portable code,
//! so the MAC share printed is an upper bound of what a CPU with SHA-NI spends.

use shm::Proto;
use std::hint::black_box;
use std::net::SocketAddr;
use std::process::Command;
use worker::handler::{Responder, SocketParts};
use worker::relay::{
    Action, Arrival, Destination, Relay, RelayKey, RelaySettings, RouteSocket, RouteTable,
    TagRoutes,
};
use worker::sip::Parsed;

const CASES: [&str; 7] = [
    "options",
    "200",
    "invite",
    "bye",
    "parse-options",
    "parse-200",
    "responder",
];

fn table() -> RouteTable {
    RouteTable {
        generation: 1,
        sockets: vec![RouteSocket {
            slot: 0,
            proto: Proto::Udp,
            local: "127.0.0.1:5070".parse().unwrap(),
            host: "127.0.0.1".into(),
            port: 5070,
            tag: Some("customers".into()),
        }],
        tags: vec![TagRoutes {
            tag: "customers".into(),
            destinations: vec![Destination {
                relay_id: 1,
                record: 0,
                uri: "sip:127.0.0.1:5080".into(),
                addr: "127.0.0.1:5080".parse().unwrap(),
                transport: Proto::Udp,
                host: "127.0.0.1".into(),
                weight: 1,
                out_slot: None,
                insecure: false,
            }],
        }],
        settings: RelaySettings::default(),
    }
}

const CLIENT: &str = "127.0.0.1:40000";
const CORE: &str = "127.0.0.1:5080";

/// sipload's OPTIONS, to a user at the core (so that it is relayed, not answered).
const OPTIONS: &[u8] = b"OPTIONS sip:ping@127.0.0.1:5080 SIP/2.0\r\n\
    Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bKsl0000000100000001\r\n\
    Max-Forwards: 70\r\n\
    To: <sip:ping@127.0.0.1:5080>\r\n\
    From: <sip:sipload@127.0.0.1:40000>;tag=x1\r\n\
    Call-ID: 0000000100000001@sipload\r\n\
    CSeq: 1 OPTIONS\r\n\
    Contact: <sip:sipload@127.0.0.1:40000>\r\n\
    User-Agent: sipload\r\n\
    Content-Length: 0\r\n\r\n";

const INVITE: &[u8] = b"INVITE sip:bob@127.0.0.1:5080 SIP/2.0\r\n\
    Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK-inv-1\r\n\
    Max-Forwards: 70\r\n\
    To: <sip:bob@127.0.0.1:5080>\r\n\
    From: <sip:alice@127.0.0.1:40000>;tag=a1\r\n\
    Call-ID: 1-4242@127.0.0.1\r\n\
    CSeq: 1 INVITE\r\n\
    Contact: <sip:alice@127.0.0.1:40000>\r\n\
    Content-Type: application/sdp\r\n\
    Content-Length: 0\r\n\r\n";

struct Bench {
    relay: Relay,
    responder: Responder,
    parts: SocketParts,
    parsed: Parsed,
    out: Vec<u8>,
}

impl Bench {
    fn new() -> Bench {
        let responder = Responder::new(503, "Service Unavailable");
        Bench {
            relay: Relay::new(&table(), RelayKey::new(&[9u8; 32]), responder.clone()),
            responder,
            parts: SocketParts::new("127.0.0.1:5070", Proto::Udp),
            parsed: Parsed::new(),
            out: Vec::with_capacity(8192),
        }
    }

    fn relay(&mut self, msg: &[u8], source: SocketAddr) -> Action {
        let arrival = Arrival {
            slot: 0,
            transport: Proto::Udp,
            source,
            flow: None,
            outbound: None,
            parts: &self.parts,
        };
        self.relay.handle_bytes(
            &mut self.parsed,
            black_box(msg),
            black_box(&arrival),
            &|_| true,
            &mut self.out,
        )
    }

    /// The message of a case, made once (responses and in-dialog requests come from relaying).
    fn message(&mut self, case: &str) -> (Vec<u8>, &'static str) {
        match case {
            "options" | "parse-options" | "responder" => (OPTIONS.to_vec(), CLIENT),
            "invite" => (INVITE.to_vec(), CLIENT),
            "200" | "parse-200" => {
                self.expect_forward(OPTIONS, CLIENT);
                (ok_for(&self.out), CORE)
            }
            "bye" => {
                self.expect_forward(INVITE, CLIENT);
                let fwd = String::from_utf8(self.out.clone()).unwrap();
                let rr = fwd
                    .lines()
                    .find_map(|l| l.strip_prefix("Record-Route: "))
                    .unwrap()
                    .to_string();
                let bye = format!(
                    "BYE sip:bob@127.0.0.1:5080 SIP/2.0\r\n\
                     Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK-bye-1\r\n\
                     Route: {rr}\r\nMax-Forwards: 70\r\n\
                     To: <sip:bob@127.0.0.1:5080>;tag=b1\r\nFrom: <sip:alice@127.0.0.1:40000>;tag=a1\r\n\
                     Call-ID: 1-4242@127.0.0.1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
                );
                (bye.into_bytes(), CLIENT)
            }
            other => panic!("unknown case {other}; cases: {CASES:?}"),
        }
    }

    fn expect_forward(&mut self, msg: &[u8], source: &str) {
        let action = self.relay(msg, source.parse().unwrap());
        assert!(matches!(action, Action::Forward(_)), "{action:?}");
    }

    fn run(&mut self, case: &str, n: u64) {
        let (msg, source) = self.message(case);
        let source_addr: SocketAddr = source.parse().unwrap();
        // One check that the case does what it says, outside the count's difference.
        match case {
            "parse-options" | "parse-200" => {}
            "responder" => {}
            _ => {
                let action = self.relay(&msg, source_addr);
                assert!(matches!(action, Action::Forward(_)), "{case}: {action:?}");
            }
        }
        for _ in 0..n {
            match case {
                "parse-options" | "parse-200" => {
                    let ok = self.parsed.parse(black_box(&msg)).is_ok();
                    black_box(ok);
                }
                "responder" => {
                    let m = self.parsed.parse(black_box(&msg)).unwrap();
                    let outcome = self
                        .responder
                        .reply(&m, source_addr, &self.parts, &mut self.out);
                    black_box(outcome);
                }
                _ => {
                    black_box(self.relay(&msg, source_addr));
                }
            }
            black_box(&self.out);
        }
    }
}

/// The core's 200 to a relayed request.
fn ok_for(request: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for line in text.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default();
        if ["Via", "From", "Call-ID", "CSeq"].contains(&name) {
            out.push_str(line);
            out.push_str("\r\n");
        } else if name == "To" {
            out.push_str(line);
            out.push_str(";tag=up1\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// Instructions of `self run case n` under callgrind, and the part spent in SHA-256 compression.
fn count(case: &str, n: u64) -> (u64, u64) {
    let exe = std::env::current_exe().unwrap();
    let dir = std::env::temp_dir().join(format!("relay_cost.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{case}.{n}.out"));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(&exe)
        .args(["run", case, &n.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("valgrind (apt-get install valgrind)");
    assert!(status.success(), "{case} {n}: {status}");
    let profile = std::fs::read_to_string(&file).unwrap();
    let total = profile
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary: ")
                .or_else(|| l.strip_prefix("totals: "))
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("a callgrind summary line");
    let annotated = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(&file)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let sha = annotated
        .lines()
        .filter(|l| l.contains("sha256") && l.contains("compress"))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|v| v.replace(',', "").parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    (total, sha)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("run") {
        let case = args.get(2).expect("run CASE N");
        let n = args
            .get(3)
            .and_then(|n| n.parse().ok())
            .expect("run CASE N");
        Bench::new().run(case, n);
        return;
    }
    let (n1, n2) = (2_000u64, 10_000u64);
    println!("instructions per message (callgrind, (Ir(N2)-Ir(N1))/(N2-N1), N1={n1}, N2={n2})");
    println!(
        "{:<14} {:>12} {:>18}",
        "case", "Ir/message", "of which SHA-256"
    );
    for case in CASES {
        let (a, sha_a) = count(case, n1);
        let (b, sha_b) = count(case, n2);
        let per = (b.saturating_sub(a)) as f64 / (n2 - n1) as f64;
        let sha = (sha_b.saturating_sub(sha_a)) as f64 / (n2 - n1) as f64;
        println!("{case:<14} {per:>12.0} {sha:>18.0}");
    }
}
