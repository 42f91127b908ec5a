//! Regression tests of issue 12, item 6 (the list; item 5 of the brief): a reload that
//! had to restart a stuck worker, or whose worker answered `Refused`, or whose in-place setsockopt
//! failed, answered a bare "OK". Now "OK" means everything asked runs; anything else is in the
//! reply (the restarted worker is in `stall_reload.rs`). `anycast` changes are applied in place.

mod common;
mod stall_util;

use common::*;
use serde_json::json;
use stall_util::*;
use std::os::fd::AsRawFd;

#[test]
fn a_worker_that_refuses_sockets_makes_the_reload_an_error_naming_it_and_the_slots() {
    let d = Daemon::start(
        "replyrefused",
        Opts {
            processes: 2,
            ..Opts::default()
        },
    );
    d.serve_udp(1);
    // UDP worker 1 can take no more fds (only stdio's numbers are below its limit): the sockets
    // of the next reload reach it without them.
    let pid = worker_pid(&d, "udp", 1);
    set_nofile(pid, 3, nofile_of(pid).1);
    let held = hold_udp_ports("127.0.0.1", 3);
    let ports = held.ports();
    for p in &ports {
        d.add(&format!("udp:127.0.0.1:{p}"), &[]);
    }
    drop(held);
    let e = d
        .mi_call("sockets_reload")
        .expect_err("not OK: a worker refused");
    assert_eq!(e.code, 500, "{e:?}");
    assert_eq!(e.message, "3 sockets refused by workers", "{e:?}");
    let data = e.data.unwrap();
    let entries = data.as_array().unwrap();
    assert_eq!(entries.len(), 3, "{data}");
    let dump = d.dump();
    for p in &ports {
        let slot = dump["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["socket"] == format!("udp:127.0.0.1:{p}"))
            .unwrap()["index"]
            .clone();
        let entry = entries
            .iter()
            .find(|x| x["slot"] == slot)
            .unwrap_or_else(|| panic!("slot {slot} not reported: {data}"));
        assert_eq!(entry["worker"], "udp worker 1", "{entry}");
        assert_eq!(entry["pid"], pid, "{entry}");
        assert!(
            entry["reason"]
                .as_str()
                .unwrap()
                .contains("fds for 3 sockets"),
            "{entry}"
        );
    }
    // The worker lives on; the other one serves the new sockets.
    assert_eq!(worker_pid(&d, "udp", 1), pid);
    d.assert_answering(&ports, "served by the worker that took them");
    // The refusals belong to the reload that met them: the next one asks nothing new of anyone.
    set_nofile(pid, 1024, nofile_of(pid).1);
    d.reload_ok();
}

/// IP_FREEBIND on the socket the supervisor holds for `port`, and the socket's inode.
fn freebind(d: &Daemon, port: u16) -> (bool, u64) {
    let fd = socket_of(d.pid(), udp("127.0.0.1", port)).expect("the supervisor holds the socket");
    let on: bool =
        nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::IpFreebind).unwrap();
    let ino = nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_ino;
    (on, ino)
}

#[test]
fn an_anycast_change_is_applied_in_place() {
    let d = Daemon::start("replyanycast", Opts::default());
    let port = d.serve_udp(1)[0];
    let (on, ino) = freebind(&d, port);
    assert!(!on);
    let db = rusqlite::Connection::open(d.dir.path().join("s.db")).unwrap();
    db.execute("UPDATE sockets SET flags = 'anycast'", [])
        .unwrap();
    d.reload_ok();
    assert_eq!(freebind(&d, port), (true, ino), "set on the same socket");
    let list = d.mi_call("sockets_list").unwrap();
    assert_eq!(list[0]["flags"], json!("anycast"), "{list}");
    d.assert_answering(&[port], "with anycast");
    db.execute("UPDATE sockets SET flags = NULL", []).unwrap();
    d.reload_ok();
    assert_eq!(
        freebind(&d, port),
        (false, ino),
        "cleared on the same socket"
    );
    let list = d.mi_call("sockets_list").unwrap();
    assert!(list[0].get("flags").is_none(), "{list}");
}
