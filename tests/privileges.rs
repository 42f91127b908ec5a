//! Started as root with `[general] user`, the daemon and its workers run as that user, and a
//! reload after the drop can still bind a port below 1024: the supervisor keeps
//! CAP_NET_BIND_SERVICE and nothing else, its bounding set holds nothing else either, and the
//! workers have no capability. Read from `/proc/PID/status` (`CapEff`, `CapPrm`, `CapBnd`).
//! Needs root: CI runs as root; elsewhere the test is recorded as skipped (`skip`).

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

/// CAP_NET_BIND_SERVICE (capability 10) as a mask of /proc/PID/status.
const NET_BIND_SERVICE: u64 = 1 << 10;

/// The effective, permitted and bounding capability masks of `pid`.
fn caps_of(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = |key: &str| {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    (mask("CapEff:"), mask("CapPrm:"), mask("CapBnd:"))
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
    if !have_root("drops_to_the_user_and_still_binds_a_low_port_on_reload") {
        return;
    }
    let d = Daemon::start(
        "privs",
        Opts {
            processes: 2,
            extra: "[general]\nuser = \"nobody\"\ngroup = \"nogroup\"\n[tcp]\nworkers = 1\n".into(),
            ..Opts::default()
        },
    );
    let want = nobody();
    assert_eq!(uid_of(d.pid()), want, "supervisor did not drop to nobody");
    assert_eq!(
        caps_of(d.pid()),
        (NET_BIND_SERVICE, NET_BIND_SERVICE, NET_BIND_SERVICE),
        "supervisor: (CapEff, CapPrm, CapBnd) must be CAP_NET_BIND_SERVICE alone"
    );
    let workers = d.worker_pids();
    assert_eq!(workers.len(), 3, "two udp workers and one stream worker");
    for pid in workers {
        assert_eq!(uid_of(pid), want, "worker {pid} not running as nobody");
        assert_eq!(
            caps_of(pid),
            (0, 0, NET_BIND_SERVICE),
            "worker {pid}: (CapEff, CapPrm, CapBnd): no capability, the bounding set inherited"
        );
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
