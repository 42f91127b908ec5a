//! The provisioning commands and `check`, through the real binary, on a real SQLite file, a real
//! PostgreSQL and a real MariaDB (a scratch database per test, dropped after).

mod common;

use common::{sipsockd, Run, ScratchDb, Server, TempDir};
use serde_json::{json, Value};

/// A test directory with a configuration file pointing at `db_url` (plus `extra` keys of
/// `[sockets_mgm]`), and a way to run the binary with it.
struct Setup {
    dir: TempDir,
    config: String,
}

impl Setup {
    fn new(test: &str, db_url: &str, extra: &str) -> Setup {
        let dir = TempDir::new(test);
        let config = dir.write(
            "sipsockd.conf.toml",
            &format!("[sockets_mgm]\ndb_url = \"{db_url}\"\n{extra}\n"),
        );
        Setup { dir, config }
    }

    /// `sipsockd --config FILE ARGS...`
    fn run(&self, args: &[&str]) -> Run {
        let mut all = vec!["--config", self.config.as_str()];
        all.extend_from_slice(args);
        sipsockd(self.dir.path(), &all)
    }
}

fn sqlite_exec(path: &std::path::Path, sql: &str) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
}

/// `check --json` of a table with one good row (id 1) as `db add ... --tag demo` leaves it.
fn demo_row() -> Value {
    json!({
        "id": 1,
        "socket": "udp:127.0.0.1:5070",
        "parsed": {
            "proto": "udp", "ip": "127.0.0.1", "port": 5070,
            "advertised": null, "tag": "demo", "flags": "", "tos": 0
        }
    })
}

#[test]
fn sqlite_first_commands_work_from_an_empty_directory() {
    // No configuration file at all: the embedded default, sqlite://sipsockd.db in the directory.
    let dir = TempDir::new("first_commands");
    let run = |args: &[&str]| sipsockd(dir.path(), args);
    let init = run(&["db", "init"]).ok();
    assert!(
        init.stdout
            .contains("table sockets in sqlite://sipsockd.db: created"),
        "{init:?}"
    );
    assert!(dir.path().join("sipsockd.db").exists());
    let add = run(&["db", "add", "udp:127.0.0.1:5070", "--tag", "demo"]).ok();
    assert!(add.stdout.contains("added row 1"), "{add:?}");
    let check = run(&["check"]).ok();
    assert!(
        check
            .stdout
            .contains("row 1 udp:127.0.0.1:5070: ok: udp 127.0.0.1:5070, tag \"demo\""),
        "{check:?}"
    );
    assert!(check.stdout.contains("1 rows, 0 bad; valid"), "{check:?}");
    // Idempotent.
    let again = run(&["db", "init"]).ok();
    assert!(
        again.stdout.contains("already there; nothing to do"),
        "{again:?}"
    );
    assert_eq!(
        run(&["check", "--json"]).ok().json(),
        json!({"valid": true, "rows": [demo_row()], "relays": [], "warnings": []})
    );
}

#[test]
fn sqlite_a_bad_row_makes_check_exit_1_naming_the_row_and_the_reason() {
    let s = Setup::new("bad_row", "sqlite://s.db", "");
    s.run(&["db", "init"]).ok();
    s.run(&["db", "add", "udp:127.0.0.1:5070", "--tag", "demo"])
        .ok();
    sqlite_exec(
        &s.dir.path().join("s.db"),
        "INSERT INTO sockets (socket, tos) VALUES ('udp:127.0.0.1:5071', '300');
         INSERT INTO sockets (socket) VALUES ('bin:127.0.0.1:5072');",
    );
    let check = s.run(&["check"]).code(1);
    assert!(
        check
            .stdout
            .contains("row 2 udp:127.0.0.1:5071: ERROR: tos \"300\": 300 is out of range (0-255)"),
        "{check:?}"
    );
    assert!(check.stdout.contains("row 3 bin:127.0.0.1:5072: ERROR: unsupported protocol bin for dynamic sockets (SIP only: udp, tcp, tls, ws, wss)"), "{check:?}");
    assert!(
        check
            .stdout
            .contains("a reload would refuse the table and change nothing (invalid_rows = reject)"),
        "{check:?}"
    );
    let report = s.run(&["check", "--json"]).code(1).json();
    assert_eq!(
        report,
        json!({"valid": false, "rows": [
            demo_row(),
            {"id": 2, "socket": "udp:127.0.0.1:5071",
             "error": {"column": "tos", "value": "300", "reason": "300 is out of range (0-255)"}},
            {"id": 3, "socket": "bin:127.0.0.1:5072",
             "error": {"column": "socket", "value": "bin:127.0.0.1:5072",
                       "reason": "unsupported protocol bin for dynamic sockets (SIP only: udp, tcp, tls, ws, wss)"}},
        ], "relays": [], "warnings": []})
    );

    // In skip mode the table is still not valid, but a reload would apply the good row.
    let skip = Setup::new("bad_row_skip", "sqlite://s.db", "invalid_rows = \"skip\"");
    std::fs::copy(s.dir.path().join("s.db"), skip.dir.path().join("s.db")).unwrap();
    let check = skip.run(&["check"]).code(1);
    assert!(
        check.stdout.contains("apply the 1 valid rows and skip 2"),
        "{check:?}"
    );
}

#[test]
fn sqlite_duplicates_and_max_sockets_are_table_errors() {
    let s = Setup::new("table_errors", "sqlite://s.db", "max_sockets = 2");
    s.run(&["db", "init"]).ok();
    s.run(&["db", "add", "udp:127.0.0.1:5070"]).ok();
    sqlite_exec(
        &s.dir.path().join("s.db"),
        "INSERT INTO sockets (socket) VALUES ('UDP:localhost:5070');",
    );
    let report = s.run(&["check", "--json"]).code(1).json();
    let error = &report["rows"][1]["error"];
    assert_eq!(error["column"], Value::Null, "{report}");
    assert!(
        error["reason"]
            .as_str()
            .unwrap()
            .contains("same socket (udp 127.0.0.1:5070) as row 1"),
        "{report}"
    );

    sqlite_exec(
        &s.dir.path().join("s.db"),
        "DELETE FROM sockets WHERE id = 2;
         INSERT INTO sockets (socket) VALUES ('udp:127.0.0.1:5071'), ('udp:127.0.0.1:5072');",
    );
    let check = s.run(&["check"]).code(1);
    assert!(
        check
            .stdout
            .contains("the table has 3 valid rows and max_sockets is 2"),
        "{check:?}"
    );
}

#[test]
fn sqlite_db_list_json_shape() {
    let s = Setup::new("list_json", "sqlite://s.db", "");
    s.run(&["db", "init"]).ok();
    assert_eq!(s.run(&["db", "list", "--json"]).ok().json(), json!([]));
    s.run(&[
        "db",
        "add",
        "tcp:[::1]:5080",
        "--advertised",
        "sip.example.com",
        "--tag",
        "edge",
        "--flags",
        "reuse_port|frag",
        "--tos",
        "IPTOS_LOWDELAY",
    ])
    .ok();
    s.run(&["db", "add", "udp:127.0.0.1"]).ok();
    assert_eq!(
        s.run(&["db", "list", "--json"]).ok().json(),
        json!([
            {"id": 1, "socket": "tcp:[::1]:5080", "advertised": "sip.example.com", "tag": "edge",
             "flags": "reuse_port|frag", "tos": "IPTOS_LOWDELAY"},
            {"id": 2, "socket": "udp:127.0.0.1", "advertised": null, "tag": null,
             "flags": null, "tos": null},
        ])
    );
    let text = s.run(&["db", "list"]).ok();
    assert!(
        text.stdout
            .lines()
            .next()
            .unwrap()
            .starts_with("ID  SOCKET"),
        "{text:?}"
    );
    assert_eq!(
        s.run(&["check", "--json"]).ok().json()["rows"][0]["parsed"],
        json!({"proto": "tcp", "ip": "::1", "port": 5080, "advertised": "sip.example.com:5080",
               "tag": "edge", "flags": "frag,reuse_port", "tos": 16})
    );
}

/// Regression (issue 9): `db list` panicked (exit 101) on a value of 65,536 characters or more.
#[test]
fn regress_db_list_prints_a_value_of_65536_chars_or_more() {
    let s = Setup::new("list_long", "sqlite://s.db", "");
    s.run(&["db", "init"]).ok();
    let tag = format!("{}\nend", "t".repeat(70_000));
    rusqlite::Connection::open(s.dir.path().join("s.db"))
        .unwrap()
        .execute(
            "INSERT INTO sockets (socket, tag) VALUES ('udp:127.0.0.1:5070', ?1)",
            [&tag],
        )
        .unwrap();
    let table = s.run(&["db", "list"]).ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one line: {table:?}");
    assert!(
        lines[1].contains("udp:127.0.0.1:5070") && lines[1].contains("tttt...(+69957 chars)"),
        "{table:?}"
    );
    assert!(lines[1].len() < 200, "{}", lines[1]);
    let json = s.run(&["db", "list", "--json"]).ok().json();
    assert_eq!(json[0]["tag"], json!(tag), "--json shows it whole");
}

#[test]
fn sqlite_db_add_refuses_bad_rows_duplicates_and_a_full_table() {
    let s = Setup::new("add_refusals", "sqlite://s.db", "max_sockets = 2");
    // No table yet: says how to make one.
    let missing = s.run(&["db", "add", "udp:127.0.0.1:5070"]).code(1);
    assert!(
        missing
            .stderr
            .contains("does not exist (create it with `sipsockd db init`)"),
        "{missing:?}"
    );
    s.run(&["db", "init"]).ok();
    for (args, needle) in [
        (
            vec!["bin:127.0.0.1:5070"],
            "unsupported protocol bin for dynamic sockets (SIP only: udp, tcp, tls, ws, wss)",
        ),
        (vec!["udp:::1:5070"], "must be written in brackets"),
        (vec!["udp:127.0.0.1:70000"], "port 70000 is out of range"),
        (
            vec!["udp:127.0.0.1", "--flags", "fast"],
            "unknown flag \"fast\"",
        ),
        (
            vec!["udp:127.0.0.1", "--tos", "300"],
            "300 is out of range (0-255)",
        ),
        (
            vec!["udp:127.0.0.1", "--advertised", "2001:db8::1"],
            "brackets",
        ),
        (vec![""], "empty"),
    ] {
        let mut all = vec!["db", "add"];
        all.extend(args.iter().copied());
        let r = s.run(&all).code(1);
        assert!(
            r.stderr.contains("refused, nothing added") && r.stderr.contains(needle),
            "{args:?}: {r:?}"
        );
    }
    s.run(&["db", "add", "udp:127.0.0.1:5070"]).ok();
    let dup = s.run(&["db", "add", "UDP:localhost:5070"]).code(1);
    assert!(
        dup.stderr
            .contains("is the same socket (udp 127.0.0.1:5070) as row 1"),
        "{dup:?}"
    );
    s.run(&["db", "add", "udp:127.0.0.1:5071"]).ok();
    let full = s.run(&["db", "add", "udp:127.0.0.1:5072"]).code(1);
    assert!(
        full.stderr
            .contains("already has 2 valid rows and max_sockets is 2"),
        "{full:?}"
    );
    assert_eq!(
        s.run(&["db", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn sqlite_db_rm_by_socket_identity_and_id() {
    let s = Setup::new("rm", "sqlite://s.db", "");
    s.run(&["db", "init"]).ok();
    for sock in [
        "udp:127.0.0.1:5070",
        "udp:127.0.0.1:5071",
        "tcp:127.0.0.1:5070",
    ] {
        s.run(&["db", "add", sock]).ok();
    }
    // Another spelling of the same socket removes it; the TCP one on the same port stays.
    let rm = s.run(&["db", "rm", "UDP:localhost:5070"]).ok();
    assert!(
        rm.stdout.contains("removed row 1 (\"udp:127.0.0.1:5070\")"),
        "{rm:?}"
    );
    s.run(&["db", "rm", "--id", "2"]).ok();
    let none = s.run(&["db", "rm", "--id", "2"]).code(1);
    assert!(none.stderr.contains("no row with id 2"), "{none:?}");
    let none = s.run(&["db", "rm", "udp:127.0.0.1:5999"]).code(1);
    assert!(none.stderr.contains("nothing removed"), "{none:?}");
    let left = s.run(&["db", "list", "--json"]).ok().json();
    assert_eq!(left[0]["socket"], "tcp:127.0.0.1:5070");
    assert_eq!(left.as_array().unwrap().len(), 1);
}

#[test]
fn config_errors_name_their_key_and_value() {
    let cases = [
        (
            "[sockets_mgm]\nprocesses = 0\n",
            "sockets_mgm.processes = 0",
        ),
        (
            "[sockets_mgm]\nmax_sockets = 0\n",
            "sockets_mgm.max_sockets = 0",
        ),
        (
            "[sockets_mgm]\nmax_sockets = 70000\n",
            "sockets_mgm.max_sockets = 70000",
        ),
        (
            "[sockets_mgm]\nprocesses = \"eight\"\n",
            "sockets_mgm.processes = \"eight\"",
        ),
        (
            "[sockets_mgm]\ntable_name = \"sockets;drop\"\n",
            "sockets_mgm.table_name = \"sockets;drop\"",
        ),
        (
            "[sockets_mgm]\ntos_column = \"t os\"\n",
            "sockets_mgm.tos_column = \"t os\"",
        ),
        (
            "[sockets_mgm]\ndb_urll = \"x\"\n",
            "unknown key sockets_mgm.db_urll",
        ),
        ("[sockets]\n", "unknown section [sockets]"),
        (
            "[mi_fifo]\nfifo_mode = \"rw\"\n",
            "mi_fifo.fifo_mode = \"rw\"",
        ),
        ("[sip]\nreply_code = 99\n", "sip.reply_code = 99"),
    ];
    let dir = TempDir::new("config_errors");
    for (text, needle) in cases {
        let file = dir.write("c.toml", text);
        // --config is global: accepted after the subcommand too.
        let r = sipsockd(dir.path(), &["check", "--config", &file]).code(1);
        assert!(r.stderr.contains(needle), "{text:?}: {r:?}");
        assert!(r.stderr.contains("c.toml"), "names the file: {r:?}");
    }
    let missing = sipsockd(dir.path(), &["--config", "nope.toml", "check"]).code(1);
    assert!(missing.stderr.contains("nope.toml"), "{missing:?}");
}

#[test]
fn sqlite_missing_file_table_and_column_say_which() {
    let s = Setup::new("missing", "sqlite://s.db", "");
    let r = s.run(&["check"]).code(1);
    assert!(
        r.stderr.contains("cannot connect to sqlite://s.db") && r.stderr.contains("does not exist"),
        "{r:?}"
    );
    assert!(
        !s.dir.path().join("s.db").exists(),
        "check never creates the file"
    );
    sqlite_exec(&s.dir.path().join("s.db"), "CREATE TABLE other (x TEXT);");
    let r = s.run(&["check"]).code(1);
    assert!(
        r.stderr
            .contains("table sockets does not exist in sqlite://s.db"),
        "{r:?}"
    );
    sqlite_exec(
        &s.dir.path().join("s.db"),
        "CREATE TABLE sockets (socket TEXT, advertised TEXT, tag TEXT, flags TEXT);",
    );
    let r = s.run(&["check"]).code(1);
    assert!(
        r.stderr
            .contains("has no column tos (named by [sockets_mgm] tos_column)"),
        "{r:?}"
    );
}

#[test]
fn sqlite_absolute_url_hand_made_table_blanks_and_integer_tos() {
    let dir = TempDir::new("hand_made");
    let db = dir.path().join("abs.db");
    sqlite_exec(
        &db,
        "CREATE TABLE sockets_def (sock VARCHAR(200) NOT NULL, adv TEXT, tag TEXT, flags TEXT, tos INTEGER);
         INSERT INTO sockets_def VALUES ('udp:127.0.0.1:5070   ', '1.2.3.4  ', '', ' frag ', 8);",
    );
    let config = dir.write(
        "c.toml",
        &format!(
            "[sockets_mgm]\ndb_url = \"sqlite://{}\"\ntable_name = \"sockets_def\"\n\
             socket_column = \"sock\"\nadvertised_column = \"adv\"\n",
            db.display()
        ),
    );
    assert!(config.starts_with('/'));
    let run = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        sipsockd(dir.path(), &all)
    };
    // The tos column is an integer column: a name is stored as its number.
    run(&["db", "add", "udp:127.0.0.1:5071", "--tos", "IPTOS_LOWDELAY"]).ok();
    assert_eq!(
        run(&["db", "list", "--json"]).ok().json(),
        json!([
            {"id": null, "socket": "udp:127.0.0.1:5070", "advertised": "1.2.3.4", "tag": null,
             "flags": " frag", "tos": "8"},
            {"id": null, "socket": "udp:127.0.0.1:5071", "advertised": null, "tag": null,
             "flags": null, "tos": "16"},
        ])
    );
    let report = run(&["check", "--json"]).ok().json();
    assert_eq!(report["rows"][0]["parsed"]["advertised"], "1.2.3.4:5070");
    assert_eq!(report["rows"][0]["parsed"]["tos"], 8);
    assert_eq!(report["rows"][1]["id"], Value::Null);
    run(&["db", "rm", "udp:127.0.0.1:5070"]).ok();
    assert_eq!(
        run(&["db", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// The done-when commands and the bad-row report on a server database.
fn server_first_commands(db: &ScratchDb, test: &str) {
    let s = Setup::new(test, &db.url, "");
    let init = s.run(&["db", "init"]).ok();
    assert!(init.stdout.contains(": created"), "{init:?}");
    s.run(&["db", "init"]).ok();
    s.run(&["db", "add", "udp:127.0.0.1:5070", "--tag", "demo"])
        .ok();
    s.run(&["check"]).ok();
    assert_eq!(
        s.run(&["check", "--json"]).ok().json(),
        json!({"valid": true, "rows": [demo_row()], "relays": [], "warnings": []})
    );
    // CHAR(128) pads on the server; nothing of it shows.
    assert_eq!(
        s.run(&["db", "list", "--json"]).ok().json(),
        json!([{"id": 1, "socket": "udp:127.0.0.1:5070", "advertised": null, "tag": "demo",
                "flags": null, "tos": null}])
    );
    let dup = s.run(&["db", "add", "UDP:localhost:5070"]).code(1);
    assert!(dup.stderr.contains("same socket"), "{dup:?}");

    db.exec("INSERT INTO sockets (socket, tos) VALUES ('udp:127.0.0.1:5071', '300')");
    let check = s.run(&["check"]).code(1);
    assert!(
        check
            .stdout
            .contains("row 2 udp:127.0.0.1:5071: ERROR: tos \"300\": 300 is out of range"),
        "{check:?}"
    );
    let report = s.run(&["check", "--json"]).code(1).json();
    assert_eq!(report["rows"][1]["error"]["column"], "tos");

    s.run(&["db", "rm", "--id", "2"]).ok();
    s.run(&["db", "rm", "udp:127.0.0.1:5070"]).ok();
    assert_eq!(s.run(&["db", "list", "--json"]).ok().json(), json!([]));

    db.exec("UPDATE version SET table_version = 2 WHERE table_name = 'sockets'");
    let r = s.run(&["check"]).code(1);
    assert!(r.stderr.contains("table sockets is at version 2"), "{r:?}");
    db.exec("DROP TABLE sockets");
    let r = s.run(&["check"]).code(1);
    assert!(r.stderr.contains("table sockets does not exist"), "{r:?}");
}

/// A table made by hand: no id, VARCHAR/TEXT columns, an integer tos, other names.
fn server_hand_made_table(db: &ScratchDb, test: &str) {
    let text = if db.server == Server::Mysql {
        "VARCHAR(255)"
    } else {
        "TEXT"
    };
    db.exec(&format!(
        "CREATE TABLE socks (sock VARCHAR(128) NOT NULL, adv {text}, tag CHAR(16), flags VARCHAR(64), tos INTEGER)"
    ));
    db.exec(
        "INSERT INTO socks VALUES ('udp:127.0.0.1:5070 ', NULL, 'edge', 'frag | reuse_port', 16)",
    );
    let s = Setup::new(
        test,
        &db.url,
        "table_name = \"socks\"\nsocket_column = \"sock\"\nadvertised_column = \"adv\"",
    );
    s.run(&[
        "db",
        "add",
        "udp:127.0.0.1:5071",
        "--tos",
        "IPTOS_THROUGHPUT",
        "--advertised",
        "[2001:db8::1]",
    ])
    .ok();
    assert_eq!(
        s.run(&["db", "list", "--json"]).ok().json(),
        json!([
            {"id": null, "socket": "udp:127.0.0.1:5070", "advertised": null, "tag": "edge",
             "flags": "frag | reuse_port", "tos": "16"},
            {"id": null, "socket": "udp:127.0.0.1:5071", "advertised": "[2001:db8::1]", "tag": null,
             "flags": null, "tos": "8"},
        ])
    );
    let report = s.run(&["check", "--json"]).ok().json();
    assert_eq!(report["rows"][0]["parsed"]["flags"], "frag,reuse_port");
    assert_eq!(
        report["rows"][1]["parsed"]["advertised"],
        "[2001:db8::1]:5071"
    );
    s.run(&["db", "rm", "udp:127.0.0.1:5070"]).ok();
    assert_eq!(
        s.run(&["db", "list", "--json"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = Setup::new(&format!("{test}_col"), &db.url, "table_name = \"socks\"")
        .run(&["check"])
        .code(1);
    assert!(
        r.stderr
            .contains("has no column socket (named by [sockets_mgm] socket_column)"),
        "{r:?}"
    );
}

#[test]
fn postgres_first_commands_and_bad_rows() {
    let Some(db) = ScratchDb::postgres("pg_first") else {
        return;
    };
    server_first_commands(&db, "pg_first");
}

#[test]
fn postgres_hand_made_table() {
    let Some(db) = ScratchDb::postgres("pg_hand") else {
        return;
    };
    server_hand_made_table(&db, "pg_hand");
}

#[test]
fn mysql_first_commands_and_bad_rows() {
    let Some(db) = ScratchDb::mysql("my_first") else {
        return;
    };
    server_first_commands(&db, "my_first");
}

#[test]
fn mysql_hand_made_table() {
    let Some(db) = ScratchDb::mysql("my_hand") else {
        return;
    };
    server_hand_made_table(&db, "my_hand");
}
