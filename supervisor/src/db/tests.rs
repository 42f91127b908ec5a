//! The SQLite driver against real files; PostgreSQL and MariaDB are exercised by
//! `tests/db_cli.rs` through the binary.

use super::*;
use crate::relay::RawRelayRow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sipsockd-db-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn cfg(&self) -> SocketsMgm {
        SocketsMgm {
            db_url: format!("sqlite://{}", self.0.join("s.db").display()),
            ..SocketsMgm::default()
        }
    }

    fn sql(&self, sql: &str) {
        rusqlite::Connection::open(self.0.join("s.db"))
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn row(socket: &str) -> RawRow {
    RawRow {
        socket: Some(socket.into()),
        ..RawRow::default()
    }
}

#[test]
fn a_missing_file_is_a_connection_error_and_is_not_created() {
    let dir = Scratch::new("missing");
    let cfg = dir.cfg();
    let e = Database::connect(&cfg).unwrap_err();
    assert!(matches!(e, DbError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!dir.0.join("s.db").exists());
}

#[test]
fn init_is_idempotent_and_rows_round_trip() {
    let dir = Scratch::new("init");
    let cfg = dir.cfg();
    assert!(ensure_sqlite_default(&cfg).unwrap());
    assert!(!ensure_sqlite_default(&cfg).unwrap(), "only when missing");
    let mut db = Database::connect(&cfg).unwrap();
    assert_eq!(
        db.init().unwrap(),
        InitReport {
            created_table: false,
            created_version_row: false,
            created_relay_table: false,
            created_relay_version_row: false,
        }
    );
    assert!(db.load_rows().unwrap().is_empty());
    let full = RawRow {
        id: None,
        socket: Some("udp:127.0.0.1:5070".into()),
        advertised: Some("1.2.3.4".into()),
        tag: Some("demo".into()),
        flags: Some("frag".into()),
        tos: Some("IPTOS_LOWDELAY".into()),
    };
    assert_eq!(db.insert(&full).unwrap(), Some(1));
    assert_eq!(db.insert(&row("udp:127.0.0.1:5071")).unwrap(), Some(2));
    let rows = db.load_rows().unwrap();
    assert_eq!(
        rows,
        vec![
            RawRow {
                id: Some(1),
                ..full.clone()
            },
            RawRow {
                id: Some(2),
                ..row("udp:127.0.0.1:5071")
            }
        ]
    );
    assert_eq!(db.delete_by_socket("udp:127.0.0.1:5071  ").unwrap(), 1);
    assert_eq!(db.delete_by_id(1).unwrap(), 1);
    assert_eq!(db.delete_by_id(1).unwrap(), 0);
    assert!(db.load_rows().unwrap().is_empty());
}

#[test]
fn values_are_cleaned_and_integer_tos_is_read() {
    let dir = Scratch::new("clean");
    dir.sql(
        "CREATE TABLE sockets (socket TEXT NOT NULL, advertised VARCHAR(64), tag TEXT, \
         flags TEXT, tos INTEGER);
         INSERT INTO sockets VALUES ('udp:127.0.0.1:5070   ', '', ' lead', '  ', 16);
         INSERT INTO sockets VALUES ('udp:127.0.0.1:5071', NULL, NULL, NULL, NULL);",
    );
    let mut db = Database::connect(&dir.cfg()).unwrap();
    let info = db.table_info().unwrap();
    assert!(!info.has_id && info.tos_is_integer);
    let rows = db.load_rows().unwrap();
    assert_eq!(
        rows[0],
        RawRow {
            id: None,
            socket: Some("udp:127.0.0.1:5070".into()),
            advertised: None,
            tag: Some(" lead".into()),
            flags: None,
            tos: Some("16".into()),
        }
    );
    assert_eq!(rows[1], row("udp:127.0.0.1:5071"));
    // An integer tos column gets the number, even for a name.
    let named = RawRow {
        tos: Some("IPTOS_THROUGHPUT".into()),
        ..row("udp:127.0.0.1:5072")
    };
    assert_eq!(db.insert(&named).unwrap(), None, "no id column");
    assert_eq!(db.load_rows().unwrap()[2].tos.as_deref(), Some("8"));
}

#[test]
fn missing_table_column_and_wrong_version_say_which() {
    let dir = Scratch::new("errors");
    dir.sql("CREATE TABLE other (x TEXT)");
    let cfg = dir.cfg();
    let mut db = Database::connect(&cfg).unwrap();
    let e = db.load_rows().unwrap_err();
    assert!(matches!(e, DbError::TableMissing { .. }), "{e}");
    assert!(
        e.to_string().contains("table sockets does not exist"),
        "{e}"
    );

    dir.sql("CREATE TABLE sockets (socket TEXT, advertised TEXT, tag TEXT, flags TEXT)");
    let e = db.load_rows().unwrap_err();
    assert!(
        e.to_string()
            .contains("has no column tos (named by [sockets_mgm] tos_column)"),
        "{e}"
    );

    dir.sql(
        "ALTER TABLE sockets ADD COLUMN tos TEXT;
         CREATE TABLE version (table_name CHAR(32), table_version INTEGER);
         INSERT INTO version VALUES ('sockets', 2);",
    );
    let e = db.load_rows().unwrap_err();
    assert!(matches!(e, DbError::VersionMismatch { .. }), "{e}");
    assert!(e.to_string().contains("version 2"), "{e}");
    // `db init` on such a table refuses too rather than pretending all is well.
    assert!(matches!(db.init(), Err(DbError::VersionMismatch { .. })));

    dir.sql("UPDATE version SET table_version = 1");
    assert!(db.load_rows().unwrap().is_empty());
    dir.sql("DELETE FROM version");
    assert!(db.load_rows().is_ok(), "no version row: a hand-made table");
}

#[test]
fn configured_names_are_used_everywhere() {
    let dir = Scratch::new("names");
    let cfg = SocketsMgm {
        table_name: "sockets_def".into(),
        socket_column: "sock".into(),
        advertised_column: "adv".into(),
        tag_column: "label".into(),
        flags_column: "opts".into(),
        tos_column: "dscp".into(),
        ..dir.cfg()
    };
    let mut db = Database::create(&cfg).unwrap();
    assert!(db.init().unwrap().created_table);
    db.insert(&RawRow {
        tag: Some("x".into()),
        ..row("udp:127.0.0.1:5070")
    })
    .unwrap();
    let rows = db.load_rows().unwrap();
    assert_eq!(rows[0].tag.as_deref(), Some("x"));
    // The default names do not exist in that file.
    let e = Database::connect(&dir.cfg())
        .unwrap()
        .load_rows()
        .unwrap_err();
    assert!(matches!(e, DbError::TableMissing { .. }));
}

#[test]
fn a_file_that_is_not_a_database_is_a_connection_error() {
    let dir = Scratch::new("garbage");
    std::fs::write(dir.0.join("s.db"), vec![b'x'; 4096]).unwrap();
    let e = Database::connect(&dir.cfg()).unwrap_err();
    assert!(matches!(e, DbError::Connect { .. }), "{e}");
}

#[test]
fn the_shipped_scripts_match_the_init_schema() {
    // scripts/sql/*.sql are what `db init` runs with the default names.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sql");
    let names = SocketsMgm::default();
    for (file, kind) in [
        ("sqlite.sql", Kind::Sqlite),
        ("postgres.sql", Kind::Postgres),
        ("mysql.sql", Kind::Mysql),
    ] {
        let script = std::fs::read_to_string(root.join(file)).unwrap();
        for statement in schema(kind, &names, DEFAULT_RELAY_TABLE) {
            assert!(
                script.contains(&format!("{statement};")),
                "{file} lacks:\n{statement}"
            );
        }
        assert!(
            script.contains("SELECT 'sockets', 1"),
            "{file}: version row"
        );
        assert!(
            script.contains("SELECT 'relays', 1"),
            "{file}: relays version row"
        );
    }
}

#[test]
fn timeout_errors_name_the_setting() {
    let e = DbError::Timeout {
        server: "PostgreSQL",
        step: "query",
        after: Duration::from_millis(2500),
        what: "reading table sockets".into(),
        url: "postgres://u:***@h/d".into(),
        reason: "canceling statement due to lock timeout".into(),
    };
    assert_eq!(
        e.to_string(),
        "PostgreSQL query timed out after 2.5 s ([sockets_mgm] db_timeout): reading table \
         sockets (postgres://u:***@h/d): canceling statement due to lock timeout"
    );
    let e = DbError::Timeout {
        server: "SQLite",
        step: "query",
        after: Duration::from_secs(5),
        what: "reading table sockets".into(),
        url: "sqlite://s.db".into(),
        reason: "database is locked".into(),
    };
    assert!(e.to_string().contains("timed out after 5 s ("), "{e}");
}

#[test]
fn after_a_good_load_a_changed_table_is_still_reported_clearly() {
    let dir = Scratch::new("cached");
    let cfg = dir.cfg();
    ensure_sqlite_default(&cfg).unwrap();
    let mut db = Database::connect(&cfg).unwrap();
    db.insert(&row("udp:127.0.0.1:5070")).unwrap();
    assert_eq!(db.load_rows().unwrap().len(), 1);
    // The table info is remembered: the next load is the SELECT alone, and still right.
    dir.sql("INSERT INTO sockets (socket) VALUES ('udp:127.0.0.1:5071')");
    assert_eq!(db.load_rows().unwrap().len(), 2);

    dir.sql("ALTER TABLE sockets DROP COLUMN tag");
    let e = db.load_rows().unwrap_err();
    assert!(
        matches!(&e, DbError::ColumnMissing { column, .. } if column == "tag"),
        "{e}"
    );
    dir.sql("DROP TABLE sockets");
    let e = db.load_rows().unwrap_err();
    assert!(matches!(e, DbError::TableMissing { .. }), "{e}");
    // Recovers on the same connection once the table is back.
    db.init().unwrap();
    assert!(db.load_rows().unwrap().is_empty());
}

#[test]
fn a_locked_sqlite_file_times_out_after_db_timeout() {
    let dir = Scratch::new("busy");
    let cfg = SocketsMgm {
        db_timeout: Duration::from_millis(200),
        ..dir.cfg()
    };
    ensure_sqlite_default(&cfg).unwrap();
    let mut db = Database::connect(&cfg).unwrap();
    assert!(db.load_rows().unwrap().is_empty());
    let holder = rusqlite::Connection::open(dir.0.join("s.db")).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let e = db.load_rows().unwrap_err();
    assert!(matches!(e, DbError::Timeout { step: "query", .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("SQLite query timed out after 0.2 s ([sockets_mgm] db_timeout)"),
        "{e}"
    );
    holder.execute_batch("COMMIT").unwrap();
    assert!(db.load_rows().unwrap().is_empty());
}

#[test]
fn a_sqlite_file_replaced_by_a_rename_is_reopened() {
    let dir = Scratch::new("rename");
    let cfg = dir.cfg();
    ensure_sqlite_default(&cfg).unwrap();
    let mut db = Database::connect(&cfg).unwrap();
    assert!(db.load_rows().unwrap().is_empty());

    // A new file with one row moved into place: the load reads it, not the unlinked old one.
    let next = SocketsMgm {
        db_url: format!("sqlite://{}", dir.0.join("next.db").display()),
        ..SocketsMgm::default()
    };
    let mut other = Database::create(&next).unwrap();
    other.init().unwrap();
    other.insert(&row("udp:127.0.0.1:5070")).unwrap();
    drop(other);
    std::fs::rename(dir.0.join("next.db"), dir.0.join("s.db")).unwrap();
    assert_eq!(db.load_rows().unwrap().len(), 1);

    // Garbage moved into place: a clear error, and the good file back is read again.
    std::fs::copy(dir.0.join("s.db"), dir.0.join("good.db")).unwrap();
    std::fs::write(dir.0.join("bad.db"), vec![b'x'; 4096]).unwrap();
    std::fs::rename(dir.0.join("bad.db"), dir.0.join("s.db")).unwrap();
    let e = db.load_rows().unwrap_err();
    assert!(matches!(e, DbError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("not a database"), "{e}");
    std::fs::rename(dir.0.join("good.db"), dir.0.join("s.db")).unwrap();
    assert_eq!(db.load_rows().unwrap().len(), 1);
}

/// A TCP listener that completes the handshake (the kernel's backlog) but never says a word: a
/// server that hangs.
fn silent_server() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

#[test]
fn a_server_that_never_answers_the_connection_times_out() {
    let (_listener, port) = silent_server();
    for url in [
        format!("postgres://u:secret@127.0.0.1:{port}/d"),
        format!("mysql://u:secret@127.0.0.1:{port}/d"),
    ] {
        let cfg = SocketsMgm {
            db_url: url.clone(),
            db_timeout: Duration::from_millis(300),
            ..SocketsMgm::default()
        };
        let e = Database::connect(&cfg).unwrap_err();
        assert!(
            matches!(
                e,
                DbError::Timeout {
                    step: "connection",
                    ..
                }
            ),
            "{url}: {e}"
        );
        let text = e.to_string();
        assert!(text.contains("connection timed out after 0.3 s"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}

fn relay(tag: &str, destination: &str) -> RawRelayRow {
    RawRelayRow {
        tag: Some(tag.into()),
        destination: Some(destination.into()),
        ..RawRelayRow::default()
    }
}

#[test]
fn both_tables_load_in_one_call_and_relay_rows_round_trip() {
    let dir = Scratch::new("relays");
    let cfg = dir.cfg();
    assert!(ensure_sqlite_default(&cfg).unwrap());
    let mut db = Database::connect(&cfg).unwrap();
    assert_eq!(db.relay_table_exists(), None);
    assert_eq!(db.load_tables().unwrap(), (vec![], vec![]));
    assert_eq!(db.relay_table_exists(), Some(true));
    db.insert(&row("udp:127.0.0.1:5070")).unwrap();
    let full = RawRelayRow {
        id: None,
        tag: Some("a".into()),
        destination: Some("sips:core.example  ".into()),
        socket: Some("tls:127.0.0.1".into()),
        weight: Some("7".into()),
        flags: Some("insecure".into()),
    };
    assert_eq!(db.insert_relay(&full).unwrap(), 1);
    assert_eq!(db.insert_relay(&relay("b", "sip:192.0.2.1")).unwrap(), 2);
    let (sockets, relays) = db.load_tables().unwrap();
    assert_eq!(sockets.len(), 1);
    assert_eq!(
        relays,
        vec![
            RawRelayRow {
                id: Some(1),
                destination: Some("sips:core.example".into()),
                ..full
            },
            RawRelayRow {
                id: Some(2),
                // The schema's default.
                weight: Some("1".into()),
                ..relay("b", "sip:192.0.2.1")
            },
        ]
    );
    assert_eq!(db.load_relays().unwrap().unwrap().len(), 2);
    assert_eq!(db.delete_relay(1).unwrap(), 1);
    assert_eq!(db.delete_relay(1).unwrap(), 0);
    assert_eq!(db.load_tables().unwrap().1.len(), 1);
}

#[test]
fn a_database_without_the_relays_table_has_no_relays_until_it_is_created() {
    let dir = Scratch::new("no_relays");
    // What an older `db init` made: the sockets and version tables only.
    dir.sql(
        "CREATE TABLE sockets (id INTEGER PRIMARY KEY, socket TEXT NOT NULL, advertised TEXT, \
         tag TEXT, flags TEXT, tos TEXT);
         INSERT INTO sockets (socket) VALUES ('udp:127.0.0.1:5070');",
    );
    let mut db = Database::connect(&dir.cfg()).unwrap();
    for _ in 0..2 {
        let (sockets, relays) = db.load_tables().unwrap();
        assert_eq!((sockets.len(), relays.len()), (1, 0));
        assert_eq!(db.relay_table_exists(), Some(false));
    }
    assert_eq!(db.load_relays().unwrap(), None);
    let e = db.insert_relay(&relay("a", "sip:192.0.2.1")).unwrap_err();
    assert!(matches!(e, DbError::TableMissing { .. }), "{e}");
    assert!(e.to_string().contains("table relays does not exist"), "{e}");
    assert!(matches!(
        db.delete_relay(1),
        Err(DbError::TableMissing { .. })
    ));
    // Created behind the connection's back: read at the next load.
    let report = db.init().unwrap();
    assert!(!report.created_table && report.created_relay_table);
    assert!(report.created_version_row && report.created_relay_version_row);
    dir.sql("INSERT INTO relays (tag, destination) VALUES ('a', 'sip:192.0.2.1')");
    let (_, relays) = db.load_tables().unwrap();
    assert_eq!(relays.len(), 1);
    assert_eq!(db.relay_table_exists(), Some(true));
}

#[test]
fn a_relays_table_with_a_missing_column_or_another_version_is_a_load_error() {
    let dir = Scratch::new("bad_relays");
    let cfg = dir.cfg();
    ensure_sqlite_default(&cfg).unwrap();
    let mut db = Database::connect(&cfg).unwrap();
    db.load_tables().unwrap();
    dir.sql("ALTER TABLE relays DROP COLUMN weight");
    let e = db.load_tables().unwrap_err();
    assert!(
        matches!(&e, DbError::RelayColumnMissing { column, .. } if column == "weight"),
        "{e}"
    );
    assert!(e.to_string().contains("table relays in sqlite://"), "{e}");
    // A column that was never there (a hand-made table).
    dir.sql(
        "DROP TABLE relays;
         CREATE TABLE relays (tag TEXT, destination TEXT, socket TEXT, weight INTEGER, flags TEXT)",
    );
    let e = db.load_tables().unwrap_err();
    assert!(
        matches!(&e, DbError::RelayColumnMissing { column, .. } if column == "id"),
        "{e}"
    );
    dir.sql(
        "DROP TABLE relays;
         UPDATE version SET table_version = 2 WHERE table_name = 'relays'",
    );
    db.init().unwrap_err();
    let e = db.load_tables().unwrap_err();
    assert!(
        matches!(e, DbError::VersionMismatch { wanted: 1, .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("table relays is at version 2 in the version table"),
        "{e}"
    );
    assert!(e.to_string().contains("sipsockd's relays schema"), "{e}");
    dir.sql("UPDATE version SET table_version = 1 WHERE table_name = 'relays'");
    assert_eq!(db.load_tables().unwrap().1.len(), 0);
}

#[test]
fn the_configured_relay_table_name_is_used_everywhere() {
    let dir = Scratch::new("relay_names");
    let config = crate::config::Config {
        sockets_mgm: dir.cfg(),
        relay: crate::config::Relay {
            table_name: "upstreams".into(),
            ..crate::config::Relay::default()
        },
        ..crate::config::Config::default()
    };
    assert!(ensure_sqlite_tables(&config).unwrap());
    let mut db = Database::connect_config(&config).unwrap();
    assert_eq!(db.relay_table(), "upstreams");
    assert_eq!(db.insert_relay(&relay("a", "sip:192.0.2.1")).unwrap(), 1);
    assert_eq!(db.load_tables().unwrap().1.len(), 1);
    // The default name does not exist in that file: no relays there.
    let mut other = Database::connect(&dir.cfg()).unwrap();
    assert_eq!(other.load_tables().unwrap().1.len(), 0);
    assert_eq!(other.relay_table_exists(), Some(false));
    let created = Database::create_config(&config).unwrap().init().unwrap();
    assert!(!created.created_relay_table);
}
