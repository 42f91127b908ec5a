//! Regression tests of issue 12, item 4: the MI FIFO accepted `fifo_mode` 0666 (any local user
//! could reload); a second daemon with the same `fifo_name` started silently, took the FIFO and
//! deleted it when it stopped; a deleted FIFO was never recreated, not even by SIGHUP; the root
//! daemon wrote replies into another user's reply FIFO. Now the FIFO is the daemon's alone.

mod common;
mod stall_util;

use common::*;
use stall_util::*;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

/// The inode at the FIFO's path.
fn inode(d: &Daemon) -> u64 {
    std::fs::symlink_metadata(&d.fifo).unwrap().ino()
}

#[test]
fn a_fifo_mode_writable_by_others_is_refused_at_start() {
    for mode in ["0666", "0777", "0662"] {
        let d = Daemon::configure("fifomode", &Opts::default());
        let text = std::fs::read_to_string(&d.config).unwrap();
        let text = text.replacen(
            "[mi_fifo]\n",
            &format!("[mi_fifo]\nfifo_mode = {mode:?}\n"),
            1,
        );
        std::fs::write(&d.config, text).unwrap();
        d.cli(&["db", "init"]).ok();
        let err = d.cli(&["run"]).code(1).stderr;
        assert!(
            err.contains(&format!("[mi_fifo] fifo_mode = \"{mode}\"")) && err.contains("others"),
            "{mode}: {err}"
        );
        assert!(!d.fifo.exists() && !d.shm.exists(), "{mode}: files left");
    }
}

#[test]
fn a_second_daemon_on_the_same_fifo_is_refused_naming_the_first() {
    let first = Daemon::start("fifotwo", Opts::default());
    let before = inode(&first);
    // Same FIFO, its own shm file (so only the FIFO can stop it).
    let second = Daemon::configure("fifotwo2", &Opts::default());
    let text = std::fs::read_to_string(&second.config).unwrap();
    let text = text.replace(
        &format!("fifo_name = {:?}", second.fifo.display().to_string()),
        &format!("fifo_name = {:?}", first.fifo.display().to_string()),
    );
    std::fs::write(&second.config, text).unwrap();
    second.cli(&["db", "init"]).ok();
    let err = second.cli(&["run"]).code(1).stderr;
    assert!(
        err.contains(&format!(
            "MI FIFO {} is in use by another sipsockd (pid {})",
            first.fifo.display(),
            first.pid()
        )),
        "{err}"
    );
    assert!(!second.shm.exists(), "the refused one left its shm file");
    // The first one still has its FIFO and answers through it.
    assert_eq!(inode(&first), before);
    assert!(first.mi("version").is_ok());
    assert_eq!(first.stop(), Some(0));
}

#[test]
fn a_deleted_fifo_is_created_again_and_opensips_mi_is_answered_within_2_s() {
    if !have_tool(
        "a_deleted_fifo_is_created_again_and_opensips_mi_is_answered_within_2_s",
        "opensips-mi",
    ) {
        return;
    }
    let d = Daemon::start("fifogone", Opts::default());
    let port = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{port}"), &[]);
    d.reload_ok();
    let opensips_mi = |method: &str| {
        Command::new("opensips-mi")
            .arg("-f")
            .arg(&d.fifo)
            .arg("-fd")
            .arg(format!("{}/", d.dir.path().display()))
            .arg(method)
            .output()
            .unwrap()
    };
    let before = inode(&d);
    std::fs::remove_file(&d.fifo).unwrap();
    let t0 = Instant::now();
    let out = loop {
        // The client fails while the FIFO is missing; each try is bounded by its own timeout.
        if d.fifo.exists() {
            let out = opensips_mi("sockets_list");
            if out.status.success() {
                break out;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "no answer within 2 s of the deletion; log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains(&format!("udp:127.0.0.1:{port}")), "{list}");
    assert_ne!(inode(&d), before, "a new FIFO");
    wait_log(&d, "was removed: created it again");

    // Replaced by someone's FIFO (nobody holds it): SIGHUP makes it ours again at once.
    std::fs::remove_file(&d.fifo).unwrap();
    nix::unistd::mkfifo(&d.fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let planted = inode(&d);
    signal(d.pid(), libc::SIGHUP);
    wait_for("the planted FIFO replaced", || inode(&d) != planted);
    assert!(d.mi("version").is_ok());
    // On stop the daemon removes its own FIFO.
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn the_fifo_of_a_stopping_daemon_is_removed_only_when_it_is_still_its_own() {
    let d = Daemon::start("fifoown", Opts::default());
    // Someone else's file put over the path (the daemon logs it and leaves it alone).
    let other = d.dir.path().join("other");
    std::fs::write(&other, "not mine to delete").unwrap();
    std::fs::rename(&other, &d.fifo).unwrap();
    wait_log(
        &d,
        "was replaced by a regular file and cannot be created again",
    );
    // Stopped by hand: the scratch directory must outlive the daemon to be looked at.
    signal(d.pid(), libc::SIGTERM);
    wait_for("the daemon gone", || gone(d.pid()));
    assert!(d
        .log_text()
        .contains("replaced or removed by someone else; left alone"));
    assert_eq!(
        std::fs::read_to_string(&d.fifo).unwrap(),
        "not mine to delete"
    );
}

#[test]
fn a_reply_fifo_of_another_user_is_ignored() {
    if !have_root("a_reply_fifo_of_another_user_is_ignored") {
        return;
    }
    let d = Daemon::start("fiforeply", Opts::default());
    // A reply FIFO in reply_dir, mode 0600, owned by nobody (not root, not the daemon's user,
    // not in the MI FIFO's group).
    let theirs = d.dir.path().join("theirs");
    nix::unistd::mkfifo(&theirs, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&theirs)
        .unwrap();
    let mut fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(&d.fifo)
        .unwrap();
    fifo.write_all(b":theirs:{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"version\"}\n")
        .unwrap();
    drop(fifo);
    let line = wait_log(&d, "MI reply to");
    assert!(line.contains("belongs to uid 65534"), "{line}");
    let mut got = Vec::new();
    match reader.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => panic!("{e}"),
    }
    assert!(got.is_empty(), "the reply was written: {got:?}");
    // A client of its own is answered.
    assert!(d.mi("version").is_ok());
}
