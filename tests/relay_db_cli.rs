//! The relays table through the real binary: `db init`, `db relay add|rm|list`, and `check`
//! covering the relays (rows, bad rows refused as for sockets, warnings), on a real SQLite file, a
//! real PostgreSQL and a real MariaDB (a scratch database per test, dropped after).

mod common;

use common::{sipsockd, Run, ScratchDb, TempDir};
use serde_json::{json, Value};

/// Where the tables live: a SQLite file in the test directory, or a scratch server database.
enum Db {
    Sqlite(std::path::PathBuf),
    Server(ScratchDb),
}

impl Db {
    fn exec(&self, sql: &str) {
        match self {
            Db::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Db::Server(db) => db.exec(sql),
        }
    }
}

/// A test directory, its configuration (`db_url` plus `extra` lines after the `[sockets_mgm]`
/// keys, which may open other sections) and its database.
struct Setup {
    dir: TempDir,
    config: String,
    db: Db,
}

impl Setup {
    fn sqlite(test: &str, extra: &str) -> Setup {
        let dir = TempDir::new(test);
        let path = dir.path().join("s.db");
        Setup::with(dir, "sqlite://s.db", Db::Sqlite(path), extra)
    }

    fn server(test: &str, db: ScratchDb, extra: &str) -> Setup {
        let url = db.url.clone();
        Setup::with(TempDir::new(test), &url, Db::Server(db), extra)
    }

    fn with(dir: TempDir, url: &str, db: Db, extra: &str) -> Setup {
        let config = dir.write(
            "sipsockd.conf.toml",
            &format!("[sockets_mgm]\ndb_url = \"{url}\"\n{extra}\n"),
        );
        Setup { dir, config, db }
    }

    /// The same database with another configuration.
    fn reconfigured(&self, extra: &str) -> String {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let url = text.lines().nth(1).unwrap();
        self.dir.write(
            "other.conf.toml",
            &format!("[sockets_mgm]\n{url}\n{extra}\n"),
        )
    }

    /// `sipsockd --config FILE ARGS...`
    fn run(&self, args: &[&str]) -> Run {
        self.run_with(&self.config, args)
    }

    fn run_with(&self, config: &str, args: &[&str]) -> Run {
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        sipsockd(self.dir.path(), &all)
    }

    fn relays(&self) -> Value {
        self.run(&["db", "relay", "list", "--json"]).ok().json()
    }
}

/// The relays part of `check --json` for a row that parsed.
fn parsed(id: i64, tag: &str, destination: &str, parsed: Value) -> Value {
    json!({"id": id, "tag": tag, "destination": destination, "parsed": parsed})
}

/// Provisioning the relays table end to end, the same on every backend.
fn provisioning(s: &Setup) {
    let init = s.run(&["db", "init"]).ok();
    assert!(
        init.stdout.contains("table sockets in ") && init.stdout.contains(": created"),
        "{init:?}"
    );
    let relays_line = init
        .stdout
        .lines()
        .find(|l| l.starts_with("table relays in "))
        .unwrap_or_else(|| panic!("{init:?}"));
    assert!(relays_line.ends_with(": created"), "{init:?}");
    let again = s.run(&["db", "init"]).ok();
    assert_eq!(
        again.stdout.matches("already there; nothing to do").count(),
        2,
        "{again:?}"
    );
    assert_eq!(s.relays(), json!([]));
    let empty = s.run(&["db", "relay", "list"]).ok();
    assert!(
        empty.stdout.contains("no rows in table relays"),
        "{empty:?}"
    );

    s.run(&["db", "add", "udp:127.0.0.1:5070", "--tag", "a"])
        .ok();
    s.run(&["db", "add", "tcp:127.0.0.1:5070", "--tag", "a"])
        .ok();
    let add = s
        .run(&["db", "relay", "add", "a", "sip:127.0.0.2:5080"])
        .ok();
    assert_eq!(
        add.stdout,
        "added relays row 1 (tag \"a\" -> sip:127.0.0.2:5080): udp 127.0.0.2:5080, weight 1\n"
    );
    let add = s
        .run(&[
            "db",
            "relay",
            "add",
            "a",
            "sips:localhost:5071",
            "--weight",
            "3",
            "--insecure",
        ])
        .ok();
    assert!(
        add.stdout.contains(
            "added relays row 2 (tag \"a\" -> sips:localhost:5071): tls 127.0.0.1:5071, weight \
             3, insecure"
        ),
        "{add:?}"
    );
    assert!(
        add.stdout.contains(
            "warning: relays row 2 (tag \"a\" -> sips:localhost:5071): no tls socket on the IP \
             of udp:127.0.0.1:5070, tcp:127.0.0.1:5070 and no socket set in the row: requests \
             arriving there would get 503"
        ),
        "{add:?}"
    );
    assert!(
        add.stdout.contains("TLS certificate is not verified"),
        "{add:?}"
    );
    let add = s
        .run(&[
            "db",
            "relay",
            "add",
            "b",
            "sip:127.0.0.3;transport=tcp",
            "--socket",
            "TCP:localhost:5070",
        ])
        .ok();
    assert!(
        add.stdout.contains("from socket TCP:localhost:5070")
            && add
                .stdout
                .contains("warning: relays row(s) 3: no socket has tag \"b\""),
        "{add:?}"
    );

    // Refused as a reload would refuse them, and nothing is added.
    let refusals: &[(&[&str], &str)] = &[
        (
            &["a", "sip:127.0.0.2:5080;transport=udp"],
            "same destination (udp 127.0.0.2:5080) for tag \"a\" as relays row 1",
        ),
        (
            &["a", "sip:127.0.0.4", "--weight", "0"],
            "weight \"0\": 0 is out of range (1-65535)",
        ),
        (
            &["a", "sip:127.0.0.4", "--socket", "udp:127.0.0.1:5099"],
            "socket udp 127.0.0.1:5099 is not in table sockets",
        ),
        (
            &["a", "sip:127.0.0.4", "--socket", "tcp:127.0.0.1:5070"],
            "a tcp socket cannot send to a udp destination",
        ),
        (
            &["a", "sip:127.0.0.4;transport=sctp"],
            "unsupported transport \"sctp\"",
        ),
        (
            &["a", "sip:127.0.0.4", "--insecure"],
            "insecure applies to TLS destinations only",
        ),
        (&["a", "sip:alice@127.0.0.4"], "not a user"),
        (&["a\tb", "sip:127.0.0.4"], "control characters"),
    ];
    for (args, want) in refusals {
        let mut all = vec!["db", "relay", "add"];
        all.extend_from_slice(args);
        let r = s.run(&all).code(1);
        assert!(
            r.stderr.contains("refused, nothing added") && r.stderr.contains(want),
            "{args:?}: {r:?}"
        );
    }

    // As stored, CHAR padding stripped, weights as numbers.
    assert_eq!(
        s.relays(),
        json!([
            {"id": 1, "tag": "a", "destination": "sip:127.0.0.2:5080", "socket": null,
             "weight": 1, "flags": null},
            {"id": 2, "tag": "a", "destination": "sips:localhost:5071", "socket": null,
             "weight": 3, "flags": "insecure"},
            {"id": 3, "tag": "b", "destination": "sip:127.0.0.3;transport=tcp",
             "socket": "TCP:localhost:5070", "weight": 1, "flags": null},
        ])
    );
    let text = s.run(&["db", "relay", "list"]).ok();
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{text:?}");
    assert!(lines[0].starts_with("ID  TAG  DESTINATION"), "{text:?}");
    assert!(lines[3].contains("TCP:localhost:5070"), "{text:?}");

    let report = s.run(&["check", "--json"]).ok().json();
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(
        report["relays"],
        json!([
            parsed(
                1,
                "a",
                "sip:127.0.0.2:5080",
                json!({"transport": "udp",
                "host": "127.0.0.2", "address": "127.0.0.2:5080", "socket": null, "weight": 1,
                "insecure": false})
            ),
            parsed(
                2,
                "a",
                "sips:localhost:5071",
                json!({"transport": "tls",
                "host": "localhost", "address": "127.0.0.1:5071", "socket": null, "weight": 3,
                "insecure": true})
            ),
            parsed(
                3,
                "b",
                "sip:127.0.0.3;transport=tcp",
                json!({"transport": "tcp",
                "host": "127.0.0.3", "address": "127.0.0.3:5060",
                "socket": "TCP:localhost:5070", "weight": 1, "insecure": false})
            ),
        ])
    );
    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{report}");
    assert!(warnings[0]
        .as_str()
        .unwrap()
        .contains("no socket has tag \"b\""));

    // Bad rows written behind the CLI's back: check names table, id, column, value, reason.
    s.db.exec(
        "INSERT INTO relays (tag, destination, weight) VALUES ('a', 'sip:127.0.0.5', 0);
         INSERT INTO relays (tag, destination, socket) VALUES ('a', 'sip:127.0.0.6', 'udp:127.0.0.1:5071');",
    );
    let check = s.run(&["check"]).code(1);
    assert!(
        check.stdout.contains(
            "relays row 4 tag \"a\" -> sip:127.0.0.5: ERROR: weight \"0\": 0 is out of range \
             (1-65535)"
        ),
        "{check:?}"
    );
    assert!(
        check.stdout.contains(
            "relays row 5 tag \"a\" -> sip:127.0.0.6: ERROR: socket \"udp:127.0.0.1:5071\": \
             socket udp 127.0.0.1:5071 is not in table sockets"
        ),
        "{check:?}"
    );
    assert!(
        check.stdout.contains("table relays in ") && check.stdout.contains(": 5 rows, 2 bad"),
        "{check:?}"
    );
    assert!(
        check.stdout.contains(
            "2 rows, 0 bad; NOT valid: a reload would refuse the table and change nothing \
             (invalid_rows = reject)"
        ),
        "{check:?}"
    );
    let report = s.run(&["check", "--json"]).code(1).json();
    assert_eq!(report["valid"], false);
    assert_eq!(
        report["relays"][3],
        json!({"id": 4, "tag": "a", "destination": "sip:127.0.0.5",
               "error": {"column": "weight", "value": "0",
                         "reason": "0 is out of range (1-65535)"}})
    );
    // In skip mode, the valid rows of both tables would apply.
    let skip = s.reconfigured("invalid_rows = \"skip\"");
    let check = s.run_with(&skip, &["check"]).code(1);
    assert!(
        check
            .stdout
            .contains("a reload would apply the 5 valid rows and skip 2 (invalid_rows = skip)"),
        "{check:?}"
    );

    // A socket row that a relay names goes: the relay is now a bad row.
    s.run(&["db", "rm", "tcp:127.0.0.1:5070"]).ok();
    let check = s.run(&["check"]).code(1);
    assert!(
        check.stdout.contains(
            "relays row 3 tag \"b\" -> sip:127.0.0.3;transport=tcp: ERROR: socket \
             \"TCP:localhost:5070\": socket tcp 127.0.0.1:5070 is not in table sockets"
        ),
        "{check:?}"
    );

    let rm = s.run(&["db", "relay", "rm", "--id", "4"]).ok();
    assert_eq!(
        rm.stdout,
        "removed relays row 4 (tag \"a\" -> sip:127.0.0.5)\n"
    );
    let again = s.run(&["db", "relay", "rm", "--id", "4"]).code(1);
    assert!(
        again
            .stderr
            .contains("nothing removed: no row with id 4 in relays"),
        "{again:?}"
    );
    for id in ["1", "2", "3", "5"] {
        s.run(&["db", "relay", "rm", "--id", id]).ok();
    }
    assert_eq!(s.relays(), json!([]));
    s.run(&["check"]).ok();
}

/// A database made before the relays table existed: no relays, said; `db init` adds the table.
fn older_database(s: &Setup) {
    s.run(&["db", "init"]).ok();
    s.run(&["db", "add", "udp:127.0.0.1:5070", "--tag", "a"])
        .ok();
    s.db.exec("DROP TABLE relays");
    let check = s.run(&["check"]).ok();
    assert!(
        check.stdout.contains("table relays does not exist in ")
            && check
                .stdout
                .contains(": no relays (`sipsockd db init` creates it)"),
        "{check:?}"
    );
    assert_eq!(s.run(&["check", "--json"]).ok().json()["relays"], json!([]));
    for args in [
        &["db", "relay", "list"][..],
        &["db", "relay", "add", "a", "sip:127.0.0.2"],
        &["db", "relay", "rm", "--id", "1"],
    ] {
        let r = s.run(args).code(1);
        assert!(
            r.stderr.contains("table relays does not exist")
                && r.stderr.contains("create it with `sipsockd db init`"),
            "{args:?}: {r:?}"
        );
    }
    let init = s.run(&["db", "init"]).ok();
    assert!(
        init.stdout.contains("already there; nothing to do")
            && init
                .stdout
                .lines()
                .any(|l| l.starts_with("table relays in ") && l.ends_with(": created")),
        "{init:?}"
    );
    s.run(&["db", "relay", "add", "a", "sip:127.0.0.2"]).ok();

    // A relays table made by hand without a column is a clear error, not "no relays".
    s.db.exec("DROP TABLE relays");
    s.db.exec(
        "CREATE TABLE relays (id INTEGER PRIMARY KEY, tag CHAR(128), destination CHAR(255), \
         socket CHAR(128), flags CHAR(64))",
    );
    let r = s.run(&["check"]).code(1);
    assert!(
        r.stderr.contains("table relays in ") && r.stderr.contains("has no column weight"),
        "{r:?}"
    );
}

/// `[relay] table_name` is the table everything uses.
fn configured_name(s: &Setup) {
    let init = s.run(&["db", "init"]).ok();
    assert!(
        init.stdout
            .lines()
            .any(|l| l.starts_with("table upstreams in ")),
        "{init:?}"
    );
    s.run(&["db", "add", "udp:127.0.0.1:5070", "--tag", "a"])
        .ok();
    s.run(&["db", "relay", "add", "a", "sip:127.0.0.2"]).ok();
    s.db.exec("INSERT INTO upstreams (tag, destination) VALUES ('a', 'tel:1')");
    let report = s.run(&["check", "--json"]).code(1).json();
    assert_eq!(report["relays"][1]["error"]["column"], "destination");
    let check = s.run(&["check"]).code(1);
    assert!(
        check
            .stdout
            .contains("upstreams row 2 tag \"a\" -> tel:1: ERROR: scheme \"tel\" is not sip"),
        "{check:?}"
    );
    let list = s.run(&["db", "relay", "list", "--json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[test]
fn sqlite_relay_provisioning() {
    provisioning(&Setup::sqlite("relay_prov", ""));
}

#[test]
fn sqlite_a_database_without_the_relays_table() {
    older_database(&Setup::sqlite("relay_older", ""));
}

#[test]
fn sqlite_the_configured_relay_table() {
    configured_name(&Setup::sqlite(
        "relay_name",
        "[relay]\ntable_name = \"upstreams\"",
    ));
}

#[test]
fn sqlite_relay_list_cuts_long_values_in_the_table_view_only() {
    let s = Setup::sqlite("relay_long", "");
    s.run(&["db", "init"]).ok();
    let destination = format!("sip:{}.example", "d".repeat(200));
    let tag = format!("{}\nend", "t".repeat(70_000));
    s.db.exec(&format!(
        "INSERT INTO relays (tag, destination, weight) VALUES ('{tag}', '{destination}', 'heavy')"
    ));
    let text = s.run(&["db", "relay", "list"]).ok();
    let row = text.stdout.lines().nth(1).unwrap();
    assert!(row.contains("...(+69957 chars)"), "{row}");
    assert!(row.contains("...(+164 chars)"), "{row}");
    assert!(row.chars().count() < 300, "{row}");
    let json = s.relays();
    assert_eq!(json[0]["tag"], tag.as_str());
    assert_eq!(json[0]["destination"], destination.as_str());
    assert_eq!(
        json[0]["weight"], "heavy",
        "a weight that is no number is shown as stored"
    );
    // The values are bad, and said so, capped.
    let report = s.run(&["check", "--json"]).code(1).json();
    let error = &report["relays"][0]["error"];
    assert_eq!(error["column"], "tag");
    assert!(error["value"]
        .as_str()
        .unwrap()
        .ends_with("… (70004 bytes)"));
}

#[test]
fn postgres_relay_provisioning() {
    let Some(db) = ScratchDb::postgres("pg_relay_prov") else {
        return;
    };
    provisioning(&Setup::server("pg_relay_prov", db, ""));
}

#[test]
fn postgres_a_database_without_the_relays_table() {
    let Some(db) = ScratchDb::postgres("pg_relay_older") else {
        return;
    };
    older_database(&Setup::server("pg_relay_older", db, ""));
}

#[test]
fn postgres_the_configured_relay_table() {
    let Some(db) = ScratchDb::postgres("pg_relay_name") else {
        return;
    };
    configured_name(&Setup::server(
        "pg_relay_name",
        db,
        "[relay]\ntable_name = \"upstreams\"",
    ));
}

#[test]
fn mysql_relay_provisioning() {
    let Some(db) = ScratchDb::mysql("my_relay_prov") else {
        return;
    };
    provisioning(&Setup::server("my_relay_prov", db, ""));
}

#[test]
fn mysql_a_database_without_the_relays_table() {
    let Some(db) = ScratchDb::mysql("my_relay_older") else {
        return;
    };
    older_database(&Setup::server("my_relay_older", db, ""));
}

#[test]
fn mysql_the_configured_relay_table() {
    let Some(db) = ScratchDb::mysql("my_relay_name") else {
        return;
    };
    configured_name(&Setup::server(
        "my_relay_name",
        db,
        "[relay]\ntable_name = \"upstreams\"",
    ));
}
