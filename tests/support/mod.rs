//! Small helpers for tests that run the real binary against real databases: a scratch directory,
//! running `sipsockd`, and a scratch PostgreSQL / MariaDB database per test, dropped after.
//!
//! Database URLs come from `SIPSOCKD_TEST_PG_URL` / `SIPSOCKD_TEST_MYSQL_URL` (defaults: the
//! local servers). An unreachable server fails the test under `CI=true` and is skipped loudly
//! elsewhere, so a developer without the servers still runs everything else.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Default PostgreSQL of the development machines and CI (trust auth).
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Default MariaDB of the development machines and CI (root, empty password).
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

/// A name no other test (process or thread) uses: `sipsockd_t_<pid>_<n>_<test>`, at most 63
/// bytes (PostgreSQL's identifier limit), lower case.
pub fn unique(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut name = format!(
        "sipsockd_t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        test.to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    name.truncate(63);
    name
}

/// A scratch directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(test));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Write `text` to `name` in the directory; returns its path as a string.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a run of the binary gave.
#[derive(Debug)]
pub struct Run {
    /// Exit status (-1 when killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the whole output unless the exit status is 0.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    /// Panics with the whole output unless the exit status is `code`.
    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.code, code, "expected exit status {code}: {self:#?}");
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Run `sipsockd ARGS` in `dir`, with no input, and wait for it.
pub fn sipsockd(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_sipsockd"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sipsockd");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `url` with its database (the path) replaced by `db`, the query kept.
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = rest.split('/').next().unwrap();
    format!("{scheme}://{authority}/{db}{query}")
}

/// `url` without its password, for messages.
fn shown(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let (userinfo, host) = rest.split_at(rest.rfind('@').unwrap());
            let user = userinfo.split(':').next().unwrap();
            format!("{scheme}://{user}{host}")
        }
        _ => url.to_string(),
    }
}

/// A server that cannot be reached: fail under CI, else say so loudly and skip.
fn unreachable(what: &str, url: &str, error: &dyn std::fmt::Display) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "no {what} at {} (CI=true, so this fails): {error}",
            shown(url)
        );
    }
    eprintln!("SKIPPED: no {what} at {}: {error}", shown(url));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Mysql,
}

/// A database created for one test on a real server, dropped on drop.
pub struct ScratchDb {
    pub server: Server,
    /// The URL of the scratch database (what goes in `db_url`).
    pub url: String,
    pub name: String,
    admin_url: String,
}

fn pg_connect(url: &str) -> Result<postgres::Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(10));
    config.connect(postgres::NoTls)
}

fn mysql_connect(url: &str) -> Result<mysql::Conn, mysql::Error> {
    let opts = mysql::Opts::from_url(url).map_err(mysql::Error::UrlError)?;
    mysql::Conn::new(
        mysql::OptsBuilder::from_opts(opts).tcp_connect_timeout(Some(Duration::from_secs(10))),
    )
}

impl ScratchDb {
    /// A scratch database on the test PostgreSQL, or `None` (after the SKIPPED line) when the
    /// server cannot be reached outside CI.
    pub fn postgres(test: &str) -> Option<ScratchDb> {
        let admin_url =
            std::env::var("SIPSOCKD_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.into());
        let mut admin = match pg_connect(&admin_url) {
            Ok(c) => c,
            Err(e) => {
                unreachable("PostgreSQL", &admin_url, &e);
                return None;
            }
        };
        let name = unique(test);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        Some(ScratchDb {
            server: Server::Postgres,
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        })
    }

    /// A scratch database on the test MariaDB / MySQL, or `None` (after the SKIPPED line) when
    /// the server cannot be reached outside CI.
    pub fn mysql(test: &str) -> Option<ScratchDb> {
        use mysql::prelude::Queryable;
        let admin_url =
            std::env::var("SIPSOCKD_TEST_MYSQL_URL").unwrap_or_else(|_| DEFAULT_MYSQL_URL.into());
        let mut admin = match mysql_connect(&admin_url) {
            Ok(c) => c,
            Err(e) => {
                unreachable("MariaDB/MySQL", &admin_url, &e);
                return None;
            }
        };
        let name = unique(test);
        admin
            .query_drop(format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        Some(ScratchDb {
            server: Server::Mysql,
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        })
    }

    /// Run one SQL statement in the scratch database.
    pub fn exec(&self, sql: &str) {
        match self.server {
            Server::Postgres => pg_connect(&self.url)
                .and_then(|mut c| c.batch_execute(sql))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Server::Mysql => {
                use mysql::prelude::Queryable;
                mysql_connect(&self.url)
                    .and_then(|mut c| c.query_drop(sql))
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        // Best effort: a failed drop leaves a uniquely named database, never a test failure.
        match self.server {
            Server::Postgres => {
                if let Ok(mut c) = pg_connect(&self.admin_url) {
                    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                    if c.batch_execute(&sql).is_err() {
                        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {}", self.name));
                    }
                }
            }
            Server::Mysql => {
                use mysql::prelude::Queryable;
                if let Ok(mut c) = mysql_connect(&self.admin_url) {
                    let _ = c.query_drop(format!("DROP DATABASE IF EXISTS {}", self.name));
                }
            }
        }
    }
}
