//! Log lines of the real daemon and its workers: `--log-format json` / `[general] log_format`,
//! and journald's form (a `<N>` priority, no timestamp) when stderr is the stream that
//! `JOURNAL_STREAM` names.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// `sipsockd [ARGS] run` with stderr to the daemon's log file and `env`; waits until the FIFO
/// answers (so the workers have started and logged).
fn run(d: &Daemon, args: &[&str], env: &[(&str, String)]) -> Child {
    d.cli(&["db", "init"]).ok();
    let log = std::fs::File::create(&d.log).unwrap();
    let mut cmd = sipsockd_command::<&str>(&[]);
    cmd.arg("--config")
        .arg(&d.config)
        .args(args)
        .arg("run")
        .env("RUST_LOG", "debug")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited: {}",
            d.log_text()
        );
        if d.fifo.exists() && d.cli(&["mi", "--timeout", "5", "version"]).success() {
            break;
        }
        assert!(t0.elapsed() < DEADLINE, "not ready: {}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The workers' first lines are written by then or very soon: wait for one.
    let t0 = Instant::now();
    while !d.log_text().contains("udp worker 1: set up") {
        assert!(t0.elapsed() < DEADLINE, "no worker line: {}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child) {
    signal(child.id(), libc::SIGTERM);
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < DEADLINE, "did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn configured(name: &str, general: &str) -> Daemon {
    let d = Daemon::configure(name, &Opts::default());
    let mut text = std::fs::read_to_string(&d.config).unwrap();
    text.push_str(&format!("[general]\n{general}\n"));
    std::fs::write(&d.config, text).unwrap();
    d
}

#[test]
fn json_lines_from_the_supervisor_and_its_workers() {
    let d = configured("obs-log-json", "log_format = \"json\"");
    let child = run(&d, &[], &[]);
    let supervisor = child.id();
    let port = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    stop(child);
    let text = d.log_text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{text}")))
        .collect();
    for l in &lines {
        for key in ["ts", "level", "target", "msg", "pid"] {
            assert!(l.get(key).is_some(), "{key} missing: {l}");
        }
    }
    assert!(lines
        .iter()
        .any(|l| l["level"] == "info" && l["msg"] == "stopped" && l["pid"] == supervisor));
    let worker = lines
        .iter()
        .find(|l| l["msg"] == "udp worker 1: set up")
        .unwrap();
    assert_ne!(worker["pid"], supervisor, "the workers log in JSON too");
    assert_eq!(worker["level"], "debug");
}

#[test]
fn the_command_line_format_wins_over_the_file() {
    let d = configured("obs-log-flag", "log_format = \"json\"");
    let child = run(&d, &["--log-format", "text"], &[]);
    stop(child);
    let text = d.log_text();
    assert!(
        text.lines().all(|l| l.starts_with("[20")) && text.contains("Z INFO "),
        "{text}"
    );
    assert!(text.lines().all(|l| !l.starts_with('{')), "{text}");
}

#[test]
fn under_journald_lines_carry_priorities_and_no_timestamps() {
    let d = configured("obs-log-journal", "");
    // Our stderr file is the "journal stream": its device and inode, as systemd sets them.
    std::fs::File::create(&d.log).unwrap();
    let meta = std::fs::metadata(&d.log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let child = run(&d, &[], &[("JOURNAL_STREAM", stream)]);
    // A failed reload logs a warning: a socket whose port is taken.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    d.add(&format!("udp:{}", taken.local_addr().unwrap()), &[]);
    signal(child.id(), libc::SIGHUP);
    let t0 = Instant::now();
    while !d
        .log_text()
        .contains("<4>supervisor::daemon: reload (SIGHUP): ")
    {
        assert!(t0.elapsed() < DEADLINE, "no warning: {}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(child);
    let text = d.log_text();
    for l in text.lines() {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| l.starts_with(p)),
            "no priority: {l:?}"
        );
        assert!(
            !l.contains("Z INFO") && !l.starts_with("[20"),
            "a timestamp: {l:?}"
        );
    }
    assert!(text.contains("<6>supervisor::daemon: stopped"), "{text}");
    assert!(
        text.contains("<7>worker::control: udp worker 1: set up"),
        "{text}"
    );
}

#[test]
fn a_journal_stream_that_is_not_our_stderr_is_ignored() {
    let d = configured("obs-log-not-journal", "");
    let child = run(&d, &[], &[("JOURNAL_STREAM", "1:2".to_string())]);
    stop(child);
    let first = d.log_text().lines().next().unwrap().to_string();
    assert!(first.starts_with("[20"), "{first}");
}
