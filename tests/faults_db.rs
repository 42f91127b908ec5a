//! The database goes away or hangs (issue 6, item 1): a reload fails with a clear error within
//! `[sockets_mgm] db_timeout`, every running socket keeps answering meanwhile, and the next
//! reload after the database is back applies the table; the supervisor reconnects by itself.
//!
//! The real PostgreSQL and MariaDB servers are shared with other tests running in parallel, so
//! they are never stopped: "away" is a TCP proxy in the test, between the daemon and the server,
//! that is cut (listener and every proxied connection closed) and started again on the same port.
//! "Hangs" is a table lock held by another session.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---- a cuttable TCP proxy ----

/// 127.0.0.1:port → upstream, one pair of pump threads per connection.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Listen on 127.0.0.1:`port` (0: a free one).
    fn start(port: u16, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("proxy listener");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (flag, registry) = (stop.clone(), conns.clone());
        let acceptor = std::thread::spawn(move || {
            let mut pumps = Vec::new();
            // Bounded: a test makes a handful of connections.
            for incoming in listener.incoming().take(10_000) {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = incoming else { continue };
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(10))
                else {
                    continue;
                };
                let mut list = registry.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pumps.push(pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                ));
                pumps.push(pump(server, client));
            }
            pumps
        });
        Proxy {
            port,
            stop,
            conns,
            acceptor: Some(acceptor),
        }
    }

    /// Close the listener and every proxied connection; returns once all are closed.
    fn cut(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the listener is dropped.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let pumps = acceptor.join().unwrap();
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        for p in pumps {
            p.join().unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copy `from` to `to` until either end closes, then close both directions.
fn pump(mut from: TcpStream, mut to: TcpStream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    })
}

/// The server address of a database URL (`scheme://user[:pw]@host[:port]/db`).
fn server_of(url: &str, default_port: u16) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:{default_port}")
    };
    addr.to_socket_addrs().unwrap().next().unwrap()
}

/// `url` pointing at 127.0.0.1:`port` instead of its server.
fn through(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let user = authority
        .rsplit_once('@')
        .map_or(String::new(), |(u, _)| format!("{u}@"));
    format!("{scheme}://{user}127.0.0.1:{port}{tail}")
}

fn default_port(db: &ScratchDb) -> u16 {
    match db.server {
        Server::Postgres => 5432,
        Server::Mysql => 3306,
    }
}

// ---- a session holding the sockets table ----

/// Another session that holds the sockets table locked (and may write to it) until released.
enum Locker {
    Postgres(Box<postgres::Client>),
    Mysql(mysql::Conn),
}

impl Locker {
    fn lock(db: &ScratchDb) -> Locker {
        match db.server {
            Server::Postgres => {
                let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
                c.batch_execute("BEGIN; LOCK TABLE sockets IN ACCESS EXCLUSIVE MODE")
                    .unwrap();
                Locker::Postgres(Box::new(c))
            }
            Server::Mysql => {
                use mysql::prelude::Queryable;
                let opts = mysql::Opts::from_url(&db.url).unwrap();
                let mut c = mysql::Conn::new(opts).unwrap();
                c.query_drop("LOCK TABLES sockets WRITE").unwrap();
                Locker::Mysql(c)
            }
        }
    }

    /// A statement in the locking session (its writes show once released).
    fn exec(&mut self, sql: &str) {
        match self {
            Locker::Postgres(c) => c.batch_execute(sql).unwrap(),
            Locker::Mysql(c) => {
                use mysql::prelude::Queryable;
                c.query_drop(sql).unwrap()
            }
        }
    }

    fn release(mut self) {
        match &mut self {
            Locker::Postgres(_) => self.exec("COMMIT"),
            Locker::Mysql(_) => self.exec("UNLOCK TABLES"),
        }
    }
}

/// True once a session of `db` waits for a table lock (the daemon's reload query).
fn someone_waits_for_the_lock(db: &ScratchDb) -> bool {
    match db.server {
        Server::Postgres => {
            let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .unwrap()
                .get(0);
            n > 0
        }
        Server::Mysql => {
            use mysql::prelude::Queryable;
            let mut c = mysql::Conn::new(mysql::Opts::from_url(&db.url).unwrap()).unwrap();
            let n: Option<i64> = c
                .exec_first(
                    "SELECT count(*) FROM information_schema.PROCESSLIST \
                     WHERE DB = ? AND STATE LIKE 'Waiting for table%'",
                    (db.name.clone(),),
                )
                .unwrap();
            n.unwrap_or(0) > 0
        }
    }
}

fn wait_for(what: &str, mut pred: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !pred() {
        assert!(t0.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The server name in our error texts.
fn server_name(db: &ScratchDb) -> &'static str {
    match db.server {
        Server::Postgres => "PostgreSQL",
        Server::Mysql => "MySQL/MariaDB",
    }
}

fn assert_failed_cleanly(
    d: &Daemon,
    reply: Result<serde_json::Value, supervisor::mi::RpcError>,
    expect: &[&str],
) -> String {
    let e = reply.expect_err("the reload must fail");
    assert_eq!(e.code, 500, "{e:?}");
    assert!(e.message.starts_with("Could not reload sockets: "), "{e:?}");
    for part in expect {
        assert!(e.message.contains(part), "{part:?} not in {:?}", e.message);
    }
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    eprintln!("reload failed as expected: {}", e.message);
    e.message
}

// ---- the database hangs ----

fn hang(db: ScratchDb, name: &str) {
    let d = start_with_mgm(
        name,
        Opts {
            db_url: Some(db.url.clone()),
            ..Opts::default()
        },
        "db_timeout = 1",
    );
    let ports = d.serve_udp(2);
    let before = d.running();

    let mut locker = Locker::lock(&db);
    let new_port = free_udp_port("127.0.0.1");
    locker.exec(&format!(
        "INSERT INTO sockets (socket) VALUES ('udp:127.0.0.1:{new_port}')"
    ));
    let traffic = Traffic::start(&ports);
    let reply = d.mi_call("sockets_reload");
    traffic.finish("a reload that timed out");
    let timeout = format!(
        "{} query timed out after 1 s ([sockets_mgm] db_timeout)",
        server_name(&db)
    );
    assert_failed_cleanly(&d, reply, &[&timeout, "reading table sockets"]);
    assert_eq!(d.running(), before, "a failed reload changed what runs");
    d.assert_answering(&ports, "after the timed-out reload");

    // Still locked: the next reload fails the same way (and reconnects first).
    let reply = d.mi_call("sockets_reload");
    assert_failed_cleanly(&d, reply, &[&timeout]);

    locker.release();
    d.reload_ok();
    d.assert_answering(&ports, "after the lock was released");
    d.assert_answering(&[new_port], "(the row written under the lock)");
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn a_table_lock_on_postgresql_times_out_the_reload() {
    if let Some(db) = ScratchDb::postgres("fault_hang_pg") {
        hang(db, "hang-pg");
    }
}

#[test]
fn a_table_lock_on_mariadb_times_out_the_reload() {
    if let Some(db) = ScratchDb::mysql("fault_hang_my") {
        hang(db, "hang-my");
    }
}

// ---- the database goes away ----

/// Between reloads: the proxy is cut while the daemon's connection is idle.
fn away_between_reloads(db: ScratchDb, name: &str) {
    let upstream = server_of(&db.url, default_port(&db));
    let mut proxy = Proxy::start(0, upstream);
    let port = proxy.port;
    let d = start_with_mgm(
        name,
        Opts {
            db_url: Some(through(&db.url, port)),
            ..Opts::default()
        },
        "db_timeout = 1",
    );
    let ports = d.serve_udp(2);
    let before = d.running();

    // Gone: the reload says the server cannot be reached; nothing changes.
    proxy.cut();
    let added = free_udp_port("127.0.0.1");
    db.exec(&format!(
        "INSERT INTO sockets (socket) VALUES ('udp:127.0.0.1:{added}')"
    ));
    let traffic = Traffic::start(&ports);
    let reply = d.mi_call("sockets_reload");
    traffic.finish("a reload with the database gone");
    let message = assert_failed_cleanly(
        &d,
        reply,
        &[
            "cannot connect to",
            &format!("127.0.0.1:{port}"),
            "after losing the connection: reading table sockets",
        ],
    );
    assert!(!message.contains("timed out"), "{message}");
    assert_eq!(d.running(), before);
    // Still gone: same answer (the supervisor tries again at each reload).
    let reply = d.mi_call("sockets_reload");
    assert_failed_cleanly(&d, reply, &["cannot connect to"]);
    d.assert_answering(&ports, "while the database is gone");

    // Back: the next reload reconnects by itself and applies the table.
    let mut proxy = Proxy::start(port, upstream);
    d.reload_ok();
    d.assert_answering(&ports, "after the database came back");
    d.assert_answering(&[added], "(the row added while it was gone)");

    // Gone and back between two reloads: the broken connection is replaced at once, so the
    // first reload after it already succeeds.
    proxy.cut();
    let _proxy = Proxy::start(port, upstream);
    let added2 = free_udp_port("127.0.0.1");
    db.exec(&format!(
        "INSERT INTO sockets (socket) VALUES ('udp:127.0.0.1:{added2}')"
    ));
    d.reload_ok();
    d.assert_answering(&[added, added2], "after a restart between reloads");
    assert_eq!(d.stop(), Some(0));
}

/// During a reload: the reload's query is blocked on a lock when the proxy is cut; the reload
/// returns at once with the lost connection, well before its (long) timeout.
fn away_during_a_reload(db: ScratchDb, name: &str) {
    let upstream = server_of(&db.url, default_port(&db));
    let mut proxy = Proxy::start(0, upstream);
    let port = proxy.port;
    let d = start_with_mgm(
        name,
        Opts {
            db_url: Some(through(&db.url, port)),
            ..Opts::default()
        },
        // Long enough that only the cut can end the reload below.
        "db_timeout = 600",
    );
    let ports = d.serve_udp(2);
    let before = d.running();

    let mut locker = Locker::lock(&db);
    let added = free_udp_port("127.0.0.1");
    locker.exec(&format!(
        "INSERT INTO sockets (socket) VALUES ('udp:127.0.0.1:{added}')"
    ));
    let traffic = Traffic::start(&ports);
    let reload = {
        let (fifo, dir) = (d.fifo.clone(), d.dir.path().to_owned());
        std::thread::spawn(move || {
            supervisor::mi::client::call(
                &fifo,
                &dir,
                "sockets_reload",
                &supervisor::mi::client::params_from_args(&[]),
                Duration::from_secs(300),
            )
        })
    };
    wait_for("the reload's query to wait for the lock", || {
        someone_waits_for_the_lock(&db)
    });
    proxy.cut();
    let reply = reload.join().unwrap().expect("an answer to the reload");
    traffic.finish("a reload whose database went away");
    let message = assert_failed_cleanly(
        &d,
        reply,
        &["after losing the connection: reading table sockets"],
    );
    assert!(!message.contains("timed out"), "{message}");
    assert_eq!(d.running(), before);
    d.assert_answering(&ports, "after the database went away during a reload");

    locker.release();
    let _proxy = Proxy::start(port, upstream);
    d.reload_ok();
    d.assert_answering(&ports, "after the database came back");
    d.assert_answering(&[added], "(the row written under the lock)");
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn postgresql_away_between_reloads() {
    if let Some(db) = ScratchDb::postgres("fault_away_pg") {
        away_between_reloads(db, "away-pg");
    }
}

#[test]
fn mariadb_away_between_reloads() {
    if let Some(db) = ScratchDb::mysql("fault_away_my") {
        away_between_reloads(db, "away-my");
    }
}

#[test]
fn postgresql_away_during_a_reload() {
    if let Some(db) = ScratchDb::postgres("fault_during_pg") {
        away_during_a_reload(db, "during-pg");
    }
}

#[test]
fn mariadb_away_during_a_reload() {
    if let Some(db) = ScratchDb::mysql("fault_during_my") {
        away_during_a_reload(db, "during-my");
    }
}

// ---- SQLite: the file breaks ----

#[test]
fn a_broken_sqlite_file_is_a_clear_error_and_recovers() {
    let d = start_with_mgm("sqlite-broken", Opts::default(), "db_timeout = 1");
    let ports = d.serve_udp(2);
    let before = d.running();
    let file = d.dir.path().join("s.db");
    let good = d.dir.path().join("good.db");
    std::fs::copy(&file, &good).unwrap();
    let restore = || {
        let tmp = d.dir.path().join("restore.db");
        std::fs::copy(&good, &tmp).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    let check = |what: &str, expect: &[&str]| {
        let traffic = Traffic::start(&ports);
        let reply = d.mi_call("sockets_reload");
        traffic.finish(what);
        assert_failed_cleanly(&d, reply, expect);
        assert_eq!(d.running(), before, "{what} changed what runs");
        d.assert_answering(&ports, what);
    };

    // Overwritten in place with garbage (same inode, under the open connection).
    std::fs::write(&file, vec![b'x'; 8192]).unwrap();
    check("garbage in place", &["not a database"]);
    restore();
    d.reload_ok();

    // Replaced by a rename with garbage (a new inode: the open connection would still read the
    // old file).
    let tmp = d.dir.path().join("garbage.db");
    std::fs::write(&tmp, b"garbage!".repeat(1024)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    check(
        "garbage moved into place",
        &["cannot connect to", "not a database"],
    );
    restore();
    d.reload_ok();

    // The table dropped.
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch("DROP TABLE sockets")
        .unwrap();
    check(
        "the table dropped",
        &["table sockets does not exist", "sipsockd db init"],
    );
    restore();
    d.reload_ok();

    // The file locked by another process: the busy wait is bounded by db_timeout.
    let holder = rusqlite::Connection::open(&file).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    check(
        "the file locked",
        &["SQLite query timed out after 1 s ([sockets_mgm] db_timeout)"],
    );
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);

    // Back: a row added now is applied by the next reload.
    let added = free_udp_port("127.0.0.1");
    d.add(&format!("udp:127.0.0.1:{added}"), &[]);
    d.reload_ok();
    d.assert_answering(&ports, "after the file was restored");
    d.assert_answering(&[added], "(the row added after the restore)");
    assert_eq!(d.stop(), Some(0));
}
