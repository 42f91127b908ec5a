//! Malformed rows written behind the CLI's back (issue 6, item 8): the table is refused as a
//! whole with one `data` entry per bad row, what runs stays (the running sockets keep answering,
//! the shm dump does not change); with `invalid_rows = "skip"` the valid rows are applied and the
//! reply still lists every skipped row. On SQLite, then the same table on PostgreSQL and MariaDB.

mod common;

use common::*;
use serde_json::Value;

/// Where the rows are written.
enum Store<'a> {
    Sqlite(&'a Daemon),
    Server(&'a ScratchDb),
}

impl Store<'_> {
    fn exec(&self, sql: &str) {
        match self {
            Store::Sqlite(d) => rusqlite::Connection::open(d.dir.path().join("s.db"))
                .unwrap()
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Store::Server(db) => db.exec(sql),
        }
    }

    /// Replace the sockets table by one that takes anything: no NOT NULL, unbounded text.
    fn recreate(&self) {
        self.exec("DROP TABLE sockets");
        self.exec(match self {
            Store::Sqlite(_) => {
                "CREATE TABLE sockets (id INTEGER PRIMARY KEY AUTOINCREMENT, socket TEXT, \
                 advertised TEXT, tag TEXT, flags TEXT, tos TEXT)"
            }
            Store::Server(db) if db.server == Server::Postgres => {
                "CREATE TABLE sockets (id SERIAL PRIMARY KEY, socket TEXT, advertised TEXT, \
                 tag TEXT, flags TEXT, tos TEXT)"
            }
            Store::Server(_) => {
                "CREATE TABLE sockets (id INT AUTO_INCREMENT PRIMARY KEY, socket TEXT, \
                 advertised TEXT, tag TEXT, flags TEXT, tos TEXT)"
            }
        });
    }
}

/// One row as written: (socket, tag, flags, tos), `None` = NULL; `bad` = the daemon must refuse it.
struct Row {
    socket: Option<String>,
    tag: Option<String>,
    flags: Option<String>,
    tos: Option<String>,
    bad: bool,
    what: &'static str,
}

fn row(what: &'static str, socket: Option<String>, bad: bool) -> Row {
    Row {
        socket,
        tag: None,
        flags: None,
        tos: None,
        bad,
        what,
    }
}

fn lit(v: &Option<String>) -> String {
    v.as_ref().map_or("NULL".to_string(), |s| {
        format!("'{}'", s.replace('\'', "''"))
    })
}

/// The table of issue 6 item 8, around the two running sockets `ports[0..2]`; `fresh` is a valid
/// new socket (applied in skip mode), `duplicate` adds a second spelling of the first running one.
fn table(ports: &[u16], fresh: u16, duplicate: bool) -> Vec<Row> {
    let s = |t: &str| Some(t.to_string());
    let free = || free_udp_port("127.0.0.1");
    let mut rows = vec![
        row("NULL socket in the first row", None, true),
        row("running", s(&format!("udp:127.0.0.1:{}", ports[0])), false),
        row("running", s(&format!("udp:127.0.0.1:{}", ports[1])), false),
        row("bad proto", s("sctp:127.0.0.1:5090"), true),
        row("bad port", s("udp:127.0.0.1:50x0"), true),
        row("port 0", s("udp:127.0.0.1:0"), true),
        row("port 70000", s("udp:127.0.0.1:70000"), true),
        row(
            "IPv6 without brackets, with a port",
            s("udp:::1:5090"),
            true,
        ),
        row("IPv6 without brackets", s("udp:2001:db8::1"), true),
        Row {
            flags: s("frag,bogus"),
            ..row(
                "unknown flag",
                s(&format!("udp:127.0.0.1:{}", free())),
                true,
            )
        },
        Row {
            tos: s("300"),
            ..row("tos 300", s(&format!("udp:127.0.0.1:{}", free())), true)
        },
        row(
            "10 KiB socket",
            Some(format!("udp:127.0.0.1:{}", "9".repeat(10 * 1024))),
            true,
        ),
        Row {
            tag: Some("t".repeat(10 * 1024)),
            ..row("10 KiB tag", s(&format!("udp:127.0.0.1:{}", free())), true)
        },
        row("new", s(&format!("udp:127.0.0.1:{fresh}")), false),
    ];
    if duplicate {
        rows.push(row(
            "duplicate identity",
            s(&format!("UDP:localhost:{}", ports[0])),
            true,
        ));
    }
    rows
}

/// Write `rows` with ids 1, 2, ... into a recreated table.
fn write(store: &Store, rows: &[Row]) {
    store.recreate();
    for (i, r) in rows.iter().enumerate() {
        store.exec(&format!(
            "INSERT INTO sockets (id, socket, tag, flags, tos) VALUES ({}, {}, {}, {}, {})",
            i + 1,
            lit(&r.socket),
            lit(&r.tag),
            lit(&r.flags),
            lit(&r.tos)
        ));
    }
}

/// The ids (1-based) of the bad rows.
fn bad_ids(rows: &[Row]) -> Vec<u64> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.bad)
        .map(|(i, _)| i as u64 + 1)
        .collect()
}

/// Check `data`: one entry per bad row, in table order, each with its id, a reason, and no
/// 10 KiB echo of what it was given beyond the value itself.
fn check_entries(data: &Value, rows: &[Row]) {
    let entries = data.as_array().expect("data is an array");
    let ids: Vec<u64> = entries
        .iter()
        .map(|e| e["id"].as_u64().expect("each entry has the row id"))
        .collect();
    assert_eq!(ids, bad_ids(rows), "one entry per bad row: {data:#}");
    for e in entries {
        let id = e["id"].as_u64().unwrap() as usize;
        let r = &rows[id - 1];
        let reason = e["reason"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "{}: no reason: {e}", r.what);
        // The reason itself is short; only `value` may carry the row's text.
        assert!(
            reason.len() < 1024,
            "{}: reason of {} bytes",
            r.what,
            reason.len()
        );
        let column = e["column"].as_str();
        match r.what {
            "unknown flag" => assert_eq!(column, Some("flags"), "{e}"),
            "tos 300" => assert_eq!(column, Some("tos"), "{e}"),
            "10 KiB tag" => assert_eq!(column, Some("tag"), "{e}"),
            "NULL socket in the first row" | "bad proto" | "bad port" | "port 0" | "port 70000" => {
                assert_eq!(column, Some("socket"), "{e}")
            }
            _ => {}
        }
    }
}

/// Reject mode: refused as a whole, nothing changes, the running sockets keep answering.
fn refused_as_a_whole(d: &Daemon, store: &Store, ports: &[u16]) {
    let before = d.running();
    let fresh = free_udp_port("127.0.0.1");
    let rows = table(ports, fresh, true);
    write(store, &rows);
    let n = bad_ids(&rows).len();

    let traffic = Traffic::start(ports);
    let e = d
        .mi_call("sockets_reload")
        .expect_err("the table must be refused");
    traffic.finish("a refused reload");
    assert_eq!(e.code, 400, "{e:?}");
    assert_eq!(e.message, format!("Table refused: {n} bad rows"));
    check_entries(e.data.as_ref().expect("data"), &rows);

    assert_eq!(d.running(), before, "a refused table changed the shm table");
    d.assert_answering(ports, "after the refused table");
    // The valid new row was not applied either.
    let c = client("127.0.0.1");
    c.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    assert!(
        options(&c, udp("127.0.0.1", fresh), 77).is_none(),
        "a row of a refused table is served"
    );

    // The command-line client says the same, with exit status 1.
    let err = d.reload().expect_err("refused");
    assert!(
        err.contains(&format!("Table refused: {n} bad rows")),
        "{err}"
    );
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
}

fn start(name: &str, db_url: Option<String>, mgm: &str) -> Daemon {
    start_with_mgm(
        name,
        Opts {
            db_url,
            ..Opts::default()
        },
        mgm,
    )
}

#[test]
fn malformed_rows_refuse_the_table_on_sqlite() {
    let d = start("rows-sqlite", None, "");
    let ports = d.serve_udp(2);
    refused_as_a_whole(&d, &Store::Sqlite(&d), &ports);
    // Fixed table: applied.
    write(
        &Store::Sqlite(&d),
        &table(&ports, free_udp_port("127.0.0.1"), false)
            .into_iter()
            .filter(|r| !r.bad)
            .collect::<Vec<_>>(),
    );
    d.reload_ok();
    d.assert_answering(&ports, "after the table was fixed");
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn malformed_rows_refuse_the_table_on_postgresql() {
    let Some(db) = ScratchDb::postgres("malformed_rows_refuse_the_table_on_postgresql") else {
        return;
    };
    let d = start("rows-pg", Some(db.url.clone()), "");
    let ports = d.serve_udp(2);
    refused_as_a_whole(&d, &Store::Server(&db), &ports);
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn malformed_rows_refuse_the_table_on_mariadb() {
    let Some(db) = ScratchDb::mysql("malformed_rows_refuse_the_table_on_mariadb") else {
        return;
    };
    let d = start("rows-my", Some(db.url.clone()), "");
    let ports = d.serve_udp(2);
    refused_as_a_whole(&d, &Store::Server(&db), &ports);
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn skip_mode_applies_the_valid_rows_and_lists_the_others() {
    let d = start("rows-skip", None, "invalid_rows = \"skip\"");
    let ports = d.serve_udp(2);
    let slots_before = d.running()["slots"].clone();
    let store = Store::Sqlite(&d);
    let fresh = free_udp_port("127.0.0.1");
    let rows = table(&ports, fresh, false);
    write(&store, &rows);
    let n = bad_ids(&rows).len();

    let traffic = Traffic::start(&ports);
    let e = d
        .mi_call("sockets_reload")
        .expect_err("skipped rows are reported");
    traffic.finish("a reload that skipped rows");
    assert_eq!(e.code, 400, "{e:?}");
    assert_eq!(e.message, format!("{n} bad rows skipped, the rest applied"));
    check_entries(e.data.as_ref().expect("data"), &rows);

    // The running sockets stayed where they were; the valid new one runs.
    let slots = d.running()["slots"].clone();
    for s in slots_before.as_array().unwrap() {
        assert!(
            slots.as_array().unwrap().contains(s),
            "running slot changed: {s} not in {slots:#}"
        );
    }
    assert_eq!(slots.as_array().unwrap().len(), 3, "{slots:#}");
    d.assert_answering(&ports, "after the skipping reload");
    d.assert_answering(&[fresh], "(the valid new row)");

    // A duplicate identity refuses the table even in skip mode: nothing changes.
    let before = d.running();
    let rows = table(&ports, fresh, true);
    write(&store, &rows);
    let e = d.mi_call("sockets_reload").expect_err("refused");
    assert_eq!(e.code, 400, "{e:?}");
    assert_eq!(
        e.message,
        format!("Table refused: {} bad rows", bad_ids(&rows).len())
    );
    check_entries(e.data.as_ref().expect("data"), &rows);
    assert_eq!(d.running(), before);
    d.assert_answering(&ports, "after the refused table");
    d.assert_answering(&[fresh], "after the refused table");
    assert_eq!(d.stop(), Some(0));
}
