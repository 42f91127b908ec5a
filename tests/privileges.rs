//! Started as root with `[general] user`, the daemon and its workers run as that user, and a
//! reload after the drop can still bind a port below 1024 (CAP_NET_BIND_SERVICE is kept).
//! Needs root: CI runs as root; elsewhere the test says SKIPPED.

mod common;

use common::*;

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    // Real, effective, saved, filesystem: all must be the user.
    let ids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        ids.iter().all(|&i| i == ids[0]),
        "mixed uids for {pid}: {line}"
    );
    ids[0]
}

fn nobody() -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .and_then(|l| l.split(':').nth(2))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn drops_to_the_user_and_still_binds_a_low_port_on_reload() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run this as root"
        );
        println!("SKIPPED: not root");
        return;
    }
    let d = Daemon::start(
        "privs",
        Opts {
            extra: "[general]\nuser = \"nobody\"\ngroup = \"nogroup\"\n".into(),
            ..Opts::default()
        },
    );
    let want = nobody();
    assert_eq!(uid_of(d.pid()), want, "supervisor did not drop to nobody");
    let workers = d.worker_pids();
    assert!(!workers.is_empty());
    for pid in workers {
        assert_eq!(uid_of(pid), want, "worker {pid} not running as nobody");
    }
    // A reload after the drop binds a port below 1024.
    d.add("udp:127.0.0.1:506", &[]);
    d.reload_ok();
    let reply =
        options(&client("127.0.0.1"), udp("127.0.0.1", 506), 1).expect("port 506 not served");
    assert!(reply.starts_with("SIP/2.0 200 OK"));
    // The shm file and the FIFO belong to the daemon's user; the shm file is 0600.
    use std::os::unix::fs::MetadataExt;
    let shm = std::fs::metadata(&d.shm).unwrap();
    assert_eq!((shm.uid(), shm.mode() & 0o777), (want, 0o600));
    let fifo = std::fs::metadata(&d.fifo).unwrap();
    assert_eq!(fifo.uid(), want);
    assert_eq!(fifo.mode() & 0o002, 0, "FIFO is world-writable");
    assert_eq!(d.stop(), Some(0));
}
