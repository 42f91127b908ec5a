//! A `db_url` password never reaches an output, whatever it holds (`/ ? # @ :`, percent-escapes):
//! on every error path of every backend (connection refused, authentication refused, no such
//! database, a reload that fails), through the CLI, `run` at start, the MI reply and the daemon's
//! log. On MariaDB the same passwords also log in, as typed and percent-escaped: the URL is read
//! the way the redaction reads it.
//!
//! Every password below holds the marker `S3cr`, so a partial leak (up to the first `/` or `#`,
//! where a naive split cuts) is caught as well as a whole one.

mod common;

use common::{sipsockd, Daemon, Opts, Run, ScratchDb, TempDir};
use std::net::TcpListener;

const MARKER: &str = "S3cr";

/// (user as written, password as written, password the server gets).
const CREDENTIALS: &[(&str, &str, &str)] = &[
    ("alice", "S3cr/et", "S3cr/et"),
    ("alice", "S3cr?e#t", "S3cr?e#t"),
    ("alice", "S3cr@e:t/x?y#z", "S3cr@e:t/x?y#z"),
    ("al%40ice", "S3cr%2Fe%3Ft%23%40%3A", "S3cr/e?t#@:"),
    ("al/ice", "S3cr%off", "S3cr%off"),
    ("al#ice", "12#S3cret@", "12#S3cret@"),
];

/// `scheme://user:password@host_part`.
fn url(scheme: &str, user: &str, password: &str, host_part: &str) -> String {
    format!("{scheme}://{user}:{password}@{host_part}")
}

/// `host[:port]/db[?query]` of a URL (what follows its last `@`).
fn host_part(url: &str) -> &str {
    let rest = url.split_once("://").expect("a URL").1;
    rest.rsplit_once('@').map_or(rest, |(_, h)| h)
}

/// A TCP port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Panics when any output of `run` holds the marker.
fn assert_hidden(run: &Run, what: &str) {
    assert!(
        !run.stdout.contains(MARKER) && !run.stderr.contains(MARKER),
        "{what}: the password leaked: {run:#?}"
    );
}

/// Every command that opens the database, with `db_url`, in a scratch directory: each must fail
/// with exit 1, say `expect`, show the URL redacted, and hold no password.
fn refused_everywhere(dir: &TempDir, db_url: &str, shown: &str, expect: &str) {
    let config = dir.write(
        "c.toml",
        &format!(
            "[sockets_mgm]\ndb_url = {db_url:?}\ndb_timeout = 5\n[mi_fifo]\nfifo_name = \"{0}/fifo\"\n\
             reply_dir = \"{0}/\"\n[shm]\npath = \"/dev/shm/sipsockd-redaction-{1}\"\n",
            dir.path().display(),
            std::process::id()
        ),
    );
    for args in [
        &["check"][..],
        &["db", "list", "--json"],
        &["db", "init"],
        &["db", "add", "udp:127.0.0.1:5999"],
        &["run"],
    ] {
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        let what = format!("{db_url} {args:?}");
        let run = sipsockd(dir.path(), &all).code(1);
        assert_hidden(&run, &what);
        assert!(
            run.stderr.contains(shown),
            "{what}: {shown} not shown: {run:#?}"
        );
        assert!(
            run.stderr.contains(expect),
            "{what}: {expect:?} not said: {run:#?}"
        );
    }
}

#[test]
fn connection_refused_on_postgresql_and_mariadb_hides_every_password() {
    let dir = TempDir::new("redact_refused");
    let port = closed_port();
    for scheme in ["postgres", "postgresql", "mysql"] {
        for &(user, password, _) in CREDENTIALS {
            let host = format!("127.0.0.1:{port}/test");
            refused_everywhere(
                &dir,
                &url(scheme, user, password, &host),
                &format!("{scheme}://{user}:***@{host}"),
                "cannot connect to",
            );
        }
    }
}

#[test]
fn urls_that_do_not_parse_are_refused_with_all_the_user_info_hidden() {
    let dir = TempDir::new("redact_unparsed");
    for (db_url, shown) in [
        (
            "postgres://u:S3cr/et@127.0.0.1:99999/d",
            "postgres://***@127.0.0.1:99999/d",
        ),
        (
            "mysql://u:S3cr#et@127.0.0.1:port/d",
            "mysql://***@127.0.0.1:port/d",
        ),
        ("mysql://u:S3cr?et@", "mysql://***@"),
        ("sqlite://u:S3cr/et@s.db", "sqlite://u:***@s.db"),
        ("oracle://u:S3cr@et@h/d", "oracle://u:***@h/d"),
    ] {
        let config = dir.write("c.toml", &format!("[sockets_mgm]\ndb_url = {db_url:?}\n"));
        for args in [&["check"][..], &["run"]] {
            let mut all = vec!["--config", config.as_str()];
            all.extend_from_slice(args);
            let run = sipsockd(dir.path(), &all).code(1);
            assert_hidden(&run, db_url);
            assert!(
                run.stderr
                    .contains(&format!("sockets_mgm.db_url = \"{shown}\"")),
                "{db_url}: {run:#?}"
            );
        }
    }
}

#[test]
fn sqlite_errors_name_the_file() {
    let dir = TempDir::new("redact_sqlite");
    let config = |url: &str| dir.write("c.toml", &format!("[sockets_mgm]\ndb_url = {url:?}\n"));
    let missing = config("sqlite://missing.db");
    let run = sipsockd(dir.path(), &["--config", &missing, "check"]).code(1);
    assert!(
        run.stderr.contains("cannot connect to sqlite://missing.db")
            && run.stderr.contains("does not exist"),
        "{run:#?}"
    );
    std::fs::write(
        dir.path().join("junk.db"),
        "not a database at all, not at all",
    )
    .unwrap();
    let junk = config("sqlite://junk.db");
    let run = sipsockd(dir.path(), &["--config", &junk, "db", "list"]).code(1);
    assert!(
        run.stderr.contains("cannot connect to sqlite://junk.db")
            && run.stderr.contains("not a database"),
        "{run:#?}"
    );
}

/// A daemon on `db_url` (a scratch database whose table `db init` creates): a reload after the
/// table is dropped fails with an MI error that shows the URL redacted; neither the MI reply,
/// the CLI client's output nor the daemon's log holds the password.
fn reload_error_hides_the_password(db: &ScratchDb, name: &str, db_url: &str, shown: &str) {
    let d = Daemon::configure(
        name,
        &Opts {
            db_url: Some(db_url.to_string()),
            ..Opts::default()
        },
    );
    let init = d.cli(&["db", "init"]);
    let init_err = init.stderr.clone();
    assert!(init.success(), "db init with {shown}: {init_err}");
    assert!(!init_err.contains(MARKER), "{init_err}");
    let d = d.spawn();
    db.exec("DROP TABLE sockets");
    let e = d
        .mi_call("sockets_reload")
        .expect_err("a reload without the table must fail");
    assert!(
        e.message.contains("table sockets does not exist") && e.message.contains(shown),
        "{e:?}"
    );
    assert!(!e.message.contains(MARKER), "{e:?}");
    let cli = d.cli(&["mi", "sockets_reload"]);
    let said = format!("{}{}", cli.stdout, cli.stderr);
    assert!(!cli.success() && said.contains(shown), "{said}");
    assert!(!said.contains(MARKER), "{said}");
    let log = d.log_text();
    assert!(log.contains(shown), "the log names the database: {log}");
    assert!(!log.contains(MARKER), "the password is in the log: {log}");
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn postgresql_auth_and_database_errors_and_a_failed_reload_hide_every_password() {
    let Some(db) = ScratchDb::postgres("redact_pg") else {
        return;
    };
    let dir = TempDir::new("redact_pg");
    let server = host_part(&db.url).split('/').next().unwrap().to_string();
    for &(_, password, _) in CREDENTIALS {
        // No such role: refused at authentication.
        refused_everywhere(
            &dir,
            &url(
                "postgres",
                "no_such_role",
                password,
                &format!("{server}/test"),
            ),
            &format!("postgres://no_such_role:***@{server}/test"),
            "role \"no_such_role\" does not exist",
        );
        // No such database (the local server trusts the user, whatever the password).
        refused_everywhere(
            &dir,
            &url(
                "postgres",
                "postgres",
                password,
                &format!("{server}/no_such_db"),
            ),
            &format!("postgres://postgres:***@{server}/no_such_db"),
            "database \"no_such_db\" does not exist",
        );
    }
    let (_, password, _) = CREDENTIALS[2];
    let db_url = url("postgres", "postgres", password, host_part(&db.url));
    let shown = format!("postgres://postgres:***@{}", host_part(&db.url));
    reload_error_hides_the_password(&db, "redact-pg", &db_url, &shown);
}

/// A MariaDB user that exists for one test, with a password, granted the scratch database.
struct MysqlUser<'a> {
    db: &'a ScratchDb,
    name: String,
}

impl<'a> MysqlUser<'a> {
    fn create(db: &'a ScratchDb, password: &str) -> MysqlUser<'a> {
        let name = format!("sipsockd_u{}", std::process::id());
        db.exec(&format!("DROP USER IF EXISTS '{name}'@'%'"));
        db.exec(&format!(
            "CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"
        ));
        db.exec(&format!("GRANT ALL ON `{}`.* TO '{name}'@'%'", db.name));
        MysqlUser { db, name }
    }
}

impl Drop for MysqlUser<'_> {
    fn drop(&mut self) {
        self.db
            .exec(&format!("DROP USER IF EXISTS '{}'@'%'", self.name));
    }
}

#[test]
fn mariadb_logs_in_with_awkward_passwords_and_its_errors_hide_them() {
    let Some(db) = ScratchDb::mysql("redact_my") else {
        return;
    };
    let dir = TempDir::new("redact_my");
    let server = host_part(&db.url).split('/').next().unwrap().to_string();
    // Serial: one user at a time (the tests of this file run in separate processes under
    // nextest, and the user name holds the process id).
    for (i, &(_, written, real)) in CREDENTIALS.iter().enumerate() {
        let user = MysqlUser::create(&db, real);
        let u = &user.name;
        let good = url("mysql", u, written, &format!("{server}/{}", db.name));
        let shown = format!("mysql://{u}:***@{server}/{}", db.name);
        // The password as typed (or percent-escaped) logs in: `db init` works.
        let config = dir.write("ok.toml", &format!("[sockets_mgm]\ndb_url = {good:?}\n"));
        let run = sipsockd(dir.path(), &["--config", &config, "db", "init"]).ok();
        assert_hidden(&run, &good);
        assert!(run.stdout.contains(&shown), "{run:#?}");
        // A wrong password: refused at authentication.
        let wrong = format!("{}x%2F", written.replace("S3cr", "S3crW"));
        refused_everywhere(
            &dir,
            &url("mysql", u, &wrong, &format!("{server}/{}", db.name)),
            &shown,
            "Access denied",
        );
        // The right password, a database the user may not use.
        refused_everywhere(
            &dir,
            &url("mysql", u, written, &format!("{server}/no_such_db")),
            &format!("mysql://{u}:***@{server}/no_such_db"),
            "'no_such_db'",
        );
        if i == 2 {
            reload_error_hides_the_password(&db, "redact-my", &good, &shown);
        }
        db.exec("DROP TABLE IF EXISTS sockets");
        db.exec("DROP TABLE IF EXISTS version");
    }
}
