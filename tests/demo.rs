//! The README's first command, `run --demo`, as a newcomer runs it: on an empty table it adds the
//! demo socket, says how to reach it, and the daemon answers an OPTIONS there with 200 OK; on a
//! table with rows it changes nothing; a demo port already taken is a clear error at once.
//!
//! Each test has its own scratch directory, FIFO and shm file (through `--config`) and its demo
//! socket on a port chosen by binding it (`--demo-socket`), since 5060 may be taken on the machine.

mod common;

use common::{client, free_udp_port, options, signal, udp, Daemon, Opts, DEADLINE};
use common::{sipsockd_command, Run};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A `sipsockd run --demo` started as the README says, with a test config; killed on drop.
struct Demo {
    d: Daemon,
    child: Option<Child>,
    stdout: std::path::PathBuf,
}

impl Demo {
    /// Start `run --demo --demo-socket SOCKET` and wait (bounded) until the FIFO answers.
    fn start(d: Daemon, socket: &str) -> Demo {
        let stdout = d.dir.path().join("demo.out");
        let config = d.config.display().to_string();
        let child = sipsockd_command(&[
            "--config",
            &config,
            "run",
            "--demo",
            "--demo-socket",
            socket,
        ])
        .current_dir(d.dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&d.log).unwrap())
        .spawn()
        .unwrap();
        let mut demo = Demo {
            d,
            child: Some(child),
            stdout,
        };
        let t0 = Instant::now();
        loop {
            if let Some(status) = demo.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "run --demo exited at start ({status}):\n{}\n{}",
                    demo.printed(),
                    demo.d.log_text()
                );
            }
            if demo.d.fifo.exists() && demo.d.cli(&["mi", "--timeout", "5", "version"]).success() {
                return demo;
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "run --demo not ready in time:\n{}",
                demo.d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it printed on stdout.
    fn printed(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// SIGTERM, and the exit status once it is gone (bounded).
    fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        signal(child.id(), libc::SIGTERM);
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(t0.elapsed() < DEADLINE, "run --demo did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.d.shm);
    }
}

fn text(out: &Run) -> String {
    format!("{}{}", out.stdout, out.stderr)
}

/// A config in a scratch directory whose SQLite file does not exist yet, as on a fresh machine.
fn fresh(name: &str) -> Daemon {
    let d = Daemon::configure(name, &Opts::default());
    assert!(!d.dir.path().join("s.db").exists());
    d
}

#[test]
fn the_demo_command_serves_options_on_its_socket() {
    let port = free_udp_port("127.0.0.1");
    let socket = format!("udp:127.0.0.1:{port}");
    let demo = Demo::start(fresh("demo"), &socket);
    let printed = demo.printed();
    assert!(
        printed.contains(&format!("added row 1 (\"{socket}\")"))
            && printed.contains(&format!("options {socket}"))
            && printed.contains(&format!("-m 1 127.0.0.1:{port}")),
        "the demo says what it added and how to reach it: {printed}"
    );
    // A plain SIP client...
    let reply = options(&client("127.0.0.1"), udp("127.0.0.1", port), 1)
        .unwrap_or_else(|| panic!("no reply on {socket}:\n{}", demo.d.log_text()));
    assert!(reply.starts_with("SIP/2.0 200 OK\r\n"), "{reply}");
    // ... and the command the demo prints.
    let said = demo.d.cli(&["options", &socket]);
    assert!(
        said.success() && text(&said).starts_with("SIP/2.0 200 OK"),
        "{}",
        text(&said)
    );
    assert_eq!(demo.stop(), Some(0));
}

#[test]
fn the_demo_runs_a_table_with_rows_as_it_is() {
    let d = fresh("demo-rows");
    d.cli(&["db", "init"]).ok();
    let kept = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{kept}"), &[]);
    let unused = free_udp_port("127.0.0.1");
    let demo = Demo::start(d, &format!("udp:127.0.0.1:{unused}"));
    assert!(
        demo.printed().contains("already has 1 row(s)"),
        "{}",
        demo.printed()
    );
    let reply = options(&client("127.0.0.1"), udp("127.0.0.1", kept), 1);
    assert!(
        reply.is_some_and(|r| r.starts_with("SIP/2.0 200 OK\r\n")),
        "{}",
        demo.d.log_text()
    );
    let listed = demo.d.cli(&["db", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    // Nothing listens on the demo socket: `options` says so with exit 2.
    let none = demo.d.cli(&[
        "options",
        "--timeout",
        "1",
        &format!("udp:127.0.0.1:{unused}"),
    ]);
    assert_eq!(none.code, 2, "{}", text(&none));
    assert_eq!(demo.stop(), Some(0));
}

#[test]
fn a_taken_demo_port_is_a_clear_error_and_adds_nothing() {
    let d = fresh("demo-taken");
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let socket = format!("udp:127.0.0.1:{port}");
    let config = d.config.display().to_string();
    let out = Run::of(
        sipsockd_command(&[
            "--config",
            &config,
            "run",
            "--demo",
            "--demo-socket",
            &socket,
        ])
        .current_dir(d.dir.path()),
    );
    let said = text(&out);
    assert_eq!(out.code, 1, "{said}");
    assert!(
        said.contains(&format!("the demo socket {socket} cannot be used"))
            && said.contains("in use")
            && said.contains("--demo-socket"),
        "{said}"
    );
    assert!(!Path::new(&d.fifo).exists(), "the daemon did not start");
    let listed = d.cli(&["db", "list", "--json"]);
    assert_eq!(text(&listed).trim(), "[]", "nothing was added");
}
