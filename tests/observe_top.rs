//! `sipsockd top` in a real terminal: tmux runs it against a daemon with traffic (as `nobody`
//! on a world-readable table when the tests run as root: it only reads), capture-pane reads the
//! screen, send-keys types. A missing tmux fails under CI=true and is skipped loudly elsewhere.

mod common;
mod observe_util;

use common::*;
use observe_util::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of our own (`-L`), killed on drop.
struct Tmux(String);

impl Tmux {
    fn new(name: &str) -> Tmux {
        Tmux(format!("sipsockd-{name}-{}", std::process::id()))
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Waits until the screen satisfies `pred`; returns it.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.cmd(&args).status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The rx/s of the screen line of `socket`: the number after its tag.
fn rate_of(screen: &str, socket: &str, tag: &str) -> Option<f64> {
    let line = screen.lines().find(|l| l.contains(socket))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == tag)?;
    let w = words.get(at + 1)?;
    match w.strip_suffix('k') {
        Some(k) => k.parse::<f64>().ok().map(|v| v * 1000.0),
        None => w.parse().ok(),
    }
}

/// How to run `top`: as `nobody` when we are root (on a table it may read), else as ourselves.
fn runner(d: &Daemon) -> String {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        return format!(
            "{} top --path {}",
            env!("CARGO_BIN_EXE_sipsockd"),
            d.shm.display()
        );
    }
    std::fs::set_permissions(&d.shm, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut program = PathBuf::from(env!("CARGO_BIN_EXE_sipsockd"));
    let reachable = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "test",
            "-x",
        ])
        .arg(&program)
        .status()
        .is_ok_and(|s| s.success());
    if !reachable {
        // The build tree is closed to others: a copy nobody can run.
        let copy = d.dir.path().join("sipsockd");
        std::fs::copy(&program, &copy).unwrap();
        program = copy;
    }
    format!(
        "setpriv --reuid=nobody --regid=nogroup --clear-groups {} top --path {}",
        program.display(),
        d.shm.display()
    )
}

#[test]
fn top_shows_a_socket_rate_and_sorts_filters_and_quits_by_keys() {
    if !have("top_under_tmux", "tmux") {
        return;
    }
    let d = Daemon::start("obs-top", Opts::default());
    let (pa, pb) = (free_udp_port("127.0.0.1"), free_udp_port("127.0.0.1"));
    let (a, b) = (format!("udp:127.0.0.1:{pa}"), format!("udp:127.0.0.1:{pb}"));
    d.add(&a, &["--tag", "alpha"]);
    d.add(&b, &["--tag", "beta"]);
    d.reload_ok();
    let traffic = Traffic::start(&[pa]);

    let tmux = Tmux::new("top");
    let command = runner(&d);
    let started = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        &command,
    ]);
    assert!(
        started.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let screen = tmux.wait("a non-zero rate on the busy socket", |s| {
        rate_of(s, &a, "alpha").is_some_and(|r| r > 0.0)
    });
    assert!(screen.contains("last reload: OK in"), "{screen}");
    assert_eq!(rate_of(&screen, &b, "beta"), Some(0.0), "{screen}");
    assert!(
        screen.contains("udp 0") && screen.contains("ready"),
        "{screen}"
    );

    // Filter on the idle socket's tag.
    tmux.keys(&["/", "beta", "Enter"]);
    let screen = tmux.wait("the filter", |s| s.contains("1 shown of 2"));
    assert!(screen.contains(&b) && !screen.contains(&a), "{screen}");
    tmux.keys(&["Escape"]);
    tmux.wait("the filter cleared", |s| s.contains("2 shown of 2"));
    // Sort by rate: the busy socket comes first.
    tmux.keys(&["s"]);
    let screen = tmux.wait("sorted by rate", |s| s.contains("sort: rx/s"));
    let (ia, ib) = (screen.find(&a).unwrap(), screen.find(&b).unwrap());
    assert!(ia < ib, "{screen}");
    tmux.keys(&["r"]);
    let screen = tmux.wait("reversed", |s| s.contains("(reversed)"));
    assert!(
        screen.find(&b).unwrap() < screen.find(&a).unwrap(),
        "{screen}"
    );

    tmux.keys(&["q"]);
    let t0 = Instant::now();
    while tmux.cmd(&["has-session", "-t", "top"]).status.success() {
        assert!(t0.elapsed() < DEADLINE, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
    traffic.finish("top");
    d.stop();
}
