//! The reload path of `sipsockd run` on PostgreSQL and MariaDB (the full suite runs on SQLite in
//! tests/daemon.rs): add, update in place, remove, and a bind failure, against real servers.

mod common;

use common::*;

fn reload_cycle(db: ScratchDb, name: &str) {
    let d = Daemon::start(
        name,
        Opts {
            db_url: Some(db.url.clone()),
            ..Opts::default()
        },
    );
    let port = free_udp_port("127.0.0.1");
    let sock = format!("udp:127.0.0.1:{port}");
    d.add(&sock, &["--tag", "one"]);
    d.reload_ok();
    let c = client("127.0.0.1");
    assert!(
        options(&c, udp("127.0.0.1", port), 1).is_some(),
        "new socket not answering"
    );
    let slot = d.dump()["slots"][0]["index"].clone();

    // Same identity, other tag and advertised: in place (same slot, still answering).
    db.exec(&format!(
        "UPDATE sockets SET tag = 'two', advertised = '192.0.2.9' WHERE socket = '{sock}'"
    ));
    d.reload_ok();
    let dump = d.dump();
    assert_eq!(dump["slots"][0]["index"], slot);
    assert_eq!(dump["slots"][0]["tag"], "two");
    let reply = options(&c, udp("127.0.0.1", port), 2).expect("no answer after the update");
    assert!(
        reply.contains(&format!("Contact: <sip:192.0.2.9:{port};transport=udp>")),
        "{reply}"
    );

    // A bind failure is reported, the rest keeps running.
    db.exec("INSERT INTO sockets (socket) VALUES ('udp:192.0.2.1:5060')");
    let err = d.reload().expect_err("bind failure must not be OK");
    assert!(err.contains("1 sockets could not be bound"), "{err}");
    assert!(options(&c, udp("127.0.0.1", port), 3).is_some());

    // Removal frees the port by the time the reply arrives.
    db.exec("DELETE FROM sockets");
    d.reload_ok();
    std::net::UdpSocket::bind(("127.0.0.1", port)).expect("port still held after removal");
    assert_eq!(d.dump()["slots"].as_array().map_or(0, Vec::len), 0);
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn reload_cycle_on_postgresql() {
    if let Some(db) = ScratchDb::postgres("reload_cycle_on_postgresql") {
        reload_cycle(db, "pg");
    }
}

#[test]
fn reload_cycle_on_mariadb() {
    if let Some(db) = ScratchDb::mysql("reload_cycle_on_mariadb") {
        reload_cycle(db, "my");
    }
}
