//! Reading and provisioning the sockets and relays tables on SQLite, PostgreSQL and
//! MySQL/MariaDB.
//!
//! Only the supervisor (and the provisioning commands) ever talk to the database. This module owns
//! the SQL: the schema (`db init`), the one `SELECT` per table a load makes, and the few writes of
//! `db add` / `db rm` / `db relay add|rm`. It hands out [`RawRow`]s and [`RawRelayRow`]s with the
//! database rule already applied (trailing blanks stripped, empty = NULL) and never interprets
//! them: that is [`crate::row`]'s and [`crate::relay`]'s job.
//!
//! A load is ONE query per table, so a load sees each table consistent ([`Database::load_tables`]
//! reads both in one call, one round trip each). Before the first load on a connection, and again
//! after any failed load, a cheap look at the catalog (does the table exist, which columns, is
//! there an `id`) and the `version` table rule run first, so a missing table or column is reported
//! as such; in the steady state a load is one round trip per table. A database without the relays
//! table (made by an older `db init`) reads as having no relays (said once in the log); the
//! catalog is then looked at at each load, so a relays table created later is read at once.
//! Errors say which step failed; no error or log line ever shows the password of `db_url`.
//!
//! `[sockets_mgm] db_timeout` bounds every connect and every round trip on the client side (a
//! reload's query runs on the database's own thread, [`thread`], so the event loop never waits on
//! it, but a stuck query would still hold up the next reload), and is
//! set as the server's own statement / lock time limits where the database has them. A timeout is
//! [`DbError::Timeout`], which names the setting. A connection that served an earlier load and
//! is found broken (the server restarted since) is reopened once, at once, so the first reload
//! after the database came back already succeeds.
//!
//! Table and column names come from the configuration, where they were checked to be plain SQL
//! identifiers, so they are spliced into the SQL text; values always travel as parameters.

mod mysql_backend;
mod pg_backend;
mod sqlite_backend;
pub mod thread;
pub mod url;

use crate::config::{Config, SocketsMgm};
use crate::relay::RawRelayRow;
use crate::row::{clean, parse_tos, RawRow};
use std::time::Duration;
pub use url::Kind;
use url::{DbUrl, Target, UrlError};

/// The schema version of the sockets table in OpenSIPS' `version` table; the only one read.
pub const TABLE_VERSION: i64 = 1;

/// The schema version of the relays table in the `version` table; the only one read.
pub const RELAY_TABLE_VERSION: i64 = 1;

/// The default name of the relays table (`[relay] table_name`).
pub const DEFAULT_RELAY_TABLE: &str = "relays";

/// The columns of the relays table, in `SELECT` order (fixed names; `id` first).
pub const RELAY_COLUMNS: [&str; 6] = ["id", "tag", "destination", "socket", "weight", "flags"];

/// A database failure. Every URL in it is redacted and driver messages are scrubbed of the password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `db_url` cannot be used.
    #[error("invalid db_url {url}: {reason}")]
    Url {
        /// The redacted URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The database could not be reached or opened.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The redacted URL.
        url: String,
        /// The driver's reason.
        reason: String,
    },
    /// The sockets table does not exist.
    #[error("table {table} does not exist in {url} (create it with `sipsockd db init`)")]
    TableMissing {
        /// The table name.
        table: String,
        /// The redacted URL.
        url: String,
    },
    /// A configured column is not in the table.
    #[error("table {table} in {url} has no column {column} (named by [sockets_mgm] {key})")]
    ColumnMissing {
        /// The table name.
        table: String,
        /// The missing column.
        column: String,
        /// The configuration key that names it.
        key: String,
        /// The redacted URL.
        url: String,
    },
    /// A column of the relays table is missing.
    #[error(
        "table {table} in {url} has no column {column} (the relays table has the columns id, \
         tag, destination, socket, weight, flags: see `sipsockd db init` and scripts/sql/)"
    )]
    RelayColumnMissing {
        /// The table name.
        table: String,
        /// The missing column.
        column: String,
        /// The redacted URL.
        url: String,
    },
    /// The `version` table gives another schema version for the table.
    #[error(
        "table {table} is at version {found} in the version table of {url}; sipsockd reads \
         version {wanted} ({schema})"
    )]
    VersionMismatch {
        /// The table name.
        table: String,
        /// The version found.
        found: String,
        /// The version sipsockd reads.
        wanted: i64,
        /// Which schema that is.
        schema: &'static str,
        /// The redacted URL.
        url: String,
    },
    /// The database did not answer within `[sockets_mgm] db_timeout`.
    #[error(
        "{server} {step} timed out after {} s ([sockets_mgm] db_timeout): {what} ({url}): {reason}",
        .after.as_secs_f64()
    )]
    Timeout {
        /// `PostgreSQL`, `MySQL/MariaDB` or `SQLite`.
        server: &'static str,
        /// `connection` or `query`.
        step: &'static str,
        /// The configured limit.
        after: Duration,
        /// What was being done (`connecting`, `reading table sockets`, ...).
        what: String,
        /// The redacted URL.
        url: String,
        /// The driver's or the server's words.
        reason: String,
    },
    /// A statement failed.
    #[error("{what} in {url} failed: {reason}")]
    Query {
        /// What was being done (`reading table sockets`, ...).
        what: String,
        /// The redacted URL.
        url: String,
        /// The driver's reason.
        reason: String,
    },
}

impl From<UrlError> for DbError {
    fn from(e: UrlError) -> DbError {
        DbError::Url {
            url: e.shown,
            reason: e.reason,
        }
    }
}

/// A statement parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Param {
    /// Text, or NULL.
    Text(Option<String>),
    /// An integer.
    Int(i64),
}

/// A result row: each value as text (integers in decimal), `None` for NULL.
pub(crate) type Cells = Vec<Option<String>>;

/// A column of a table as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    /// Its name.
    pub name: String,
    /// True for an integer type (a `tos` stored as a number).
    pub integer: bool,
}

/// How a driver call failed: what the caller may do next depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailKind {
    /// The connection is gone or cannot be trusted (I/O error, closed by the server, protocol
    /// out of sync). Reconnecting may help.
    Link,
    /// `db_timeout` passed (on our side, or a session time limit on the server's).
    Timeout,
    /// The server refused the statement; the connection is fine (no such table or column, a
    /// type the driver cannot read, a file that is not a database).
    Statement,
}

/// A driver failure: its kind and the driver's words (not yet scrubbed of the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// What kind of failure.
    pub kind: FailKind,
    /// The driver's message.
    pub message: String,
}

impl Failure {
    pub(crate) fn link(message: String) -> Failure {
        Failure {
            kind: FailKind::Link,
            message,
        }
    }

    pub(crate) fn timeout(message: String) -> Failure {
        Failure {
            kind: FailKind::Timeout,
            message,
        }
    }

    pub(crate) fn statement(message: String) -> Failure {
        Failure {
            kind: FailKind::Statement,
            message,
        }
    }
}

/// What each driver provides; the SQL text is built by [`Database`] for the driver's dialect.
/// Every call is bounded by the `db_timeout` the driver was opened with.
trait Backend: Send {
    /// True when the connection no longer reads what `db_url` names (a SQLite file replaced by
    /// a rename): reopen before using it. Cheap: no round trip.
    fn stale(&self) -> bool {
        false
    }
    /// The table's columns in order, or `None` when there is no such table.
    fn columns(&mut self, table: &str) -> Result<Option<Vec<Column>>, Failure>;
    /// Run a query and return every row.
    fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Cells>, Failure>;
    /// Run a statement and return the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, Failure>;
    /// Run an `INSERT` and return the new row's `id` when `id_column` says the table has one.
    fn insert(
        &mut self,
        sql: &str,
        params: &[Param],
        id_column: bool,
    ) -> Result<Option<i64>, Failure>;
    /// Run several DDL statements, in order.
    fn batch(&mut self, statements: &[String]) -> Result<(), Failure>;
}

/// What `db init` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitReport {
    /// The sockets table was created (false: it was already there).
    pub created_table: bool,
    /// The table's row in `version` was added (false: it was already there).
    pub created_version_row: bool,
    /// The relays table was created (false: it was already there).
    pub created_relay_table: bool,
    /// The relays table's row in `version` was added (false: it was already there).
    pub created_relay_version_row: bool,
}

/// What the catalog says about the sockets table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// The table has an `id` column (read with the rows, used by `db rm --id` and in errors).
    pub has_id: bool,
    /// The tos column has an integer type.
    pub tos_is_integer: bool,
}

/// An open connection to the database of `[sockets_mgm] db_url`, with the configured names.
pub struct Database {
    backend: Box<dyn Backend>,
    url: DbUrl,
    names: SocketsMgm,
    /// `[relay] table_name`.
    relay_table: String,
    /// What the catalog said on this connection, until a load fails.
    info: Option<TableInfo>,
    /// Whether the relays table exists, as the catalog said on this connection; `Some(true)` is
    /// kept until a load fails, `Some(false)` is asked again at each load.
    relays_exist: Option<bool>,
    /// "No relays table" was logged, and the table has not been seen since.
    relays_missing_said: bool,
    /// A load succeeded on this connection: a link failure at the next one means the server
    /// went away in between, worth one reconnect.
    used: bool,
    /// The kind of the last driver failure turned into a [`DbError`].
    last_failure: std::cell::Cell<Option<FailKind>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.url.shown())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Connect. A SQLite file must already exist (see [`Database::create`] and
    /// [`ensure_sqlite_default`]), so a mistyped path is an error rather than a new empty table.
    /// The relays table has its default name unless [`Database::with_relay_table`] says
    /// otherwise (or use [`Database::connect_config`]).
    pub fn connect(cfg: &SocketsMgm) -> Result<Database, DbError> {
        Self::open(cfg, false)
    }

    /// Connect, creating the SQLite file when it does not exist (what `db init` needs).
    pub fn create(cfg: &SocketsMgm) -> Result<Database, DbError> {
        Self::open(cfg, true)
    }

    /// [`Database::connect`] with every name of the configuration (`[sockets_mgm]` and
    /// `[relay] table_name`).
    pub fn connect_config(cfg: &Config) -> Result<Database, DbError> {
        Ok(Self::connect(&cfg.sockets_mgm)?.with_relay_table(&cfg.relay.table_name))
    }

    /// [`Database::create`] with every name of the configuration.
    pub fn create_config(cfg: &Config) -> Result<Database, DbError> {
        Ok(Self::create(&cfg.sockets_mgm)?.with_relay_table(&cfg.relay.table_name))
    }

    /// Use `table` as the relays table (a plain identifier, as `[relay] table_name` is checked to
    /// be).
    pub fn with_relay_table(mut self, table: &str) -> Database {
        if table != self.relay_table {
            self.relay_table = table.to_string();
            self.relays_exist = None;
        }
        self
    }

    /// The relays table's name.
    pub fn relay_table(&self) -> &str {
        &self.relay_table
    }

    /// Whether the last load found the relays table (`None` before a load).
    pub fn relay_table_exists(&self) -> Option<bool> {
        self.relays_exist
    }

    fn open(cfg: &SocketsMgm, create: bool) -> Result<Database, DbError> {
        let mut db = Database {
            // Replaced at once below; a placeholder needs no I/O.
            backend: Box::new(Closed),
            url: DbUrl::parse(&cfg.db_url)?,
            names: cfg.clone(),
            relay_table: DEFAULT_RELAY_TABLE.to_string(),
            info: None,
            relays_exist: None,
            relays_missing_said: false,
            used: false,
            last_failure: std::cell::Cell::new(None),
        };
        db.backend = db.open_backend(create)?;
        Ok(db)
    }

    /// A new driver connection to `db_url`, bounded by `db_timeout`.
    fn open_backend(&self, create: bool) -> Result<Box<dyn Backend>, DbError> {
        let timeout = self.names.db_timeout;
        let opened: Result<Box<dyn Backend>, Failure> = match self.url.target() {
            Target::Sqlite(path) => sqlite_backend::Sqlite::open(path, create, timeout)
                .map(|b| Box::new(b) as Box<dyn Backend>),
            Target::Server {
                url,
                user,
                password,
            } => {
                let (user, password) = (user.as_deref(), password.as_deref());
                match self.kind() {
                    Kind::Postgres => pg_backend::Postgres::connect(url, user, password, timeout)
                        .map(|b| Box::new(b) as Box<dyn Backend>),
                    _ => mysql_backend::Mysql::connect(url, user, password, timeout)
                        .map(|b| Box::new(b) as Box<dyn Backend>),
                }
            }
        };
        opened.map_err(|f| {
            let reason = self.url.scrub(f.message);
            if f.kind == FailKind::Timeout {
                DbError::Timeout {
                    server: self.kind().server(),
                    step: "connection",
                    after: timeout,
                    what: "connecting".into(),
                    url: self.url().to_string(),
                    reason,
                }
            } else {
                DbError::Connect {
                    url: self.url().to_string(),
                    reason,
                }
            }
        })
    }

    /// Drop the connection and open a new one (what was learnt about the table goes with it).
    fn reconnect(&mut self) -> Result<(), DbError> {
        self.info = None;
        self.relays_exist = None;
        self.used = false;
        // The old connection goes first: SQLite's file lock, a server's connection slot.
        self.backend = Box::new(Closed);
        self.backend = self.open_backend(false)?;
        Ok(())
    }

    /// Which database this is.
    pub fn kind(&self) -> Kind {
        self.url.kind()
    }

    /// The URL with its password hidden: the form to print.
    pub fn url(&self) -> &str {
        self.url.shown()
    }

    fn query_error(&self, what: &str, failure: Failure) -> DbError {
        self.last_failure.set(Some(failure.kind));
        let reason = self.url.scrub(failure.message);
        if failure.kind == FailKind::Timeout {
            return DbError::Timeout {
                server: self.kind().server(),
                step: "query",
                after: self.names.db_timeout,
                what: what.to_string(),
                url: self.url().to_string(),
                reason,
            };
        }
        DbError::Query {
            what: what.to_string(),
            url: self.url().to_string(),
            reason,
        }
    }

    /// An identifier as spliced into SQL. Names were checked to be plain identifiers at load;
    /// MySQL and SQLite get them quoted so a reserved word still works. PostgreSQL gets them bare,
    /// so they fold to lower case as they did when the table was created without quotes.
    fn ident(&self, name: &str) -> String {
        match self.kind() {
            Kind::Sqlite => format!("\"{name}\""),
            Kind::Mysql => format!("`{name}`"),
            Kind::Postgres => name.to_string(),
        }
    }

    fn placeholder(&self, n: usize) -> String {
        match self.kind() {
            Kind::Postgres => format!("${n}"),
            Kind::Sqlite => format!("?{n}"),
            Kind::Mysql => "?".to_string(),
        }
    }

    /// The configured columns with the configuration key naming each, in SELECT order.
    fn columns(&self) -> [(&'static str, &str); 5] {
        let n = &self.names;
        [
            ("socket_column", n.socket_column.as_str()),
            ("advertised_column", n.advertised_column.as_str()),
            ("tag_column", n.tag_column.as_str()),
            ("flags_column", n.flags_column.as_str()),
            ("tos_column", n.tos_column.as_str()),
        ]
    }

    /// Check the table exists with every configured column and the `version` rule; say whether
    /// it has an `id`. Always asks the database (and remembers the answer for the next loads).
    pub fn table_info(&mut self) -> Result<TableInfo, DbError> {
        self.info = None;
        let info = self.examine_table()?;
        self.info = Some(info.clone());
        Ok(info)
    }

    fn examine_table(&mut self) -> Result<TableInfo, DbError> {
        let table = self.names.table_name.clone();
        let found = self
            .backend
            .columns(&table)
            .map_err(|e| self.query_error(&format!("reading the columns of table {table}"), e))?
            .ok_or_else(|| DbError::TableMissing {
                table: table.clone(),
                url: self.url().to_string(),
            })?;
        let find = |name: &str| found.iter().find(|c| c.name.eq_ignore_ascii_case(name));
        for (key, column) in self.columns() {
            if find(column).is_none() {
                return Err(DbError::ColumnMissing {
                    table: table.clone(),
                    column: column.to_string(),
                    key: key.to_string(),
                    url: self.url().to_string(),
                });
            }
        }
        let info = TableInfo {
            has_id: find("id").is_some(),
            tos_is_integer: find(&self.names.tos_column).is_some_and(|c| c.integer),
        };
        self.check_version(&table, TABLE_VERSION, "the OpenSIPS sockets schema")?;
        Ok(info)
    }

    /// The `version` rule: when `table` has a row there, it must say `wanted`. No `version`
    /// table, or one without a row for this table, is fine (a hand-made table).
    fn check_version(
        &mut self,
        table: &str,
        wanted: i64,
        schema: &'static str,
    ) -> Result<(), DbError> {
        let table = table.to_string();
        let what = "reading table version";
        let Some(cols) = self
            .backend
            .columns("version")
            .map_err(|e| self.query_error(what, e))?
        else {
            return Ok(());
        };
        let has = |n: &str| cols.iter().any(|c| c.name.eq_ignore_ascii_case(n));
        if !(has("table_name") && has("table_version")) {
            // Not OpenSIPS' version table: it says nothing about ours.
            return Ok(());
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE {} = {}",
            self.ident("table_version"),
            self.ident("version"),
            self.ident("table_name"),
            self.placeholder(1)
        );
        let rows = self
            .backend
            .query(&sql, &[Param::Text(Some(table.clone()))])
            .map_err(|e| self.query_error(what, e))?;
        for row in rows {
            let v = clean(row.into_iter().next().flatten());
            if v.as_deref().and_then(|v| v.parse::<i64>().ok()) != Some(wanted) {
                return Err(DbError::VersionMismatch {
                    table,
                    found: v.unwrap_or_else(|| "NULL".into()),
                    wanted,
                    schema,
                    url: self.url().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Read the whole table with one query. The catalog look of [`Database::table_info`] runs
    /// first only on a new connection or after a failed load; a query that fails on the server
    /// with the table info remembered is diagnosed with it (so a dropped column is reported as
    /// [`DbError::ColumnMissing`], not as the server's words). A connection that served an
    /// earlier load and is found broken (the server restarted in between, or went away during
    /// this load) is reopened once, at once. Rows come in `id` order when there is an `id`, every
    /// value cleaned by [`clean`].
    pub fn load_rows(&mut self) -> Result<Vec<RawRow>, DbError> {
        self.load(Self::load_once)
    }

    /// Read the sockets table and the relays table in one go, as [`Database::load_rows`] reads the
    /// first (one query per table, the same reconnect rule, every call bounded by `db_timeout`).
    /// A relays table that does not exist reads as no relay rows, and is said once in the log
    /// (at info) until it is seen again; any other failure of either table fails the load.
    /// Relay rows come in `id` order, every value cleaned.
    pub fn load_tables(&mut self) -> Result<(Vec<RawRow>, Vec<RawRelayRow>), DbError> {
        self.load(|db| {
            let sockets = db.load_once()?;
            let relays = db.load_relays_once()?.unwrap_or_default();
            Ok((sockets, relays))
        })
    }

    /// Read the relays table alone; `None` when it does not exist.
    pub fn load_relays(&mut self) -> Result<Option<Vec<RawRelayRow>>, DbError> {
        self.load(Self::load_relays_once)
    }

    /// Run one load (`once`) with the connection rules of [`Database::load_rows`].
    fn load<T>(
        &mut self,
        once: impl Fn(&mut Database) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        if self.backend.stale() {
            log::info!("reopening {}", self.url);
            self.reconnect()?;
        }
        let reused = self.used;
        self.last_failure.set(None);
        let rows = match once(self) {
            Err(lost) if reused && self.last_failure.get() == Some(FailKind::Link) => {
                log::info!("{lost}; reconnecting");
                match self.reconnect() {
                    Ok(()) => once(self),
                    // Say both: the server went away, and is not back.
                    Err(DbError::Connect { url, reason }) => Err(DbError::Connect {
                        url,
                        reason: format!("{reason} (after losing the connection: {lost})"),
                    }),
                    Err(e) => Err(e),
                }
            }
            r => r,
        };
        match rows {
            Ok(rows) => {
                self.used = true;
                Ok(rows)
            }
            Err(e) => {
                self.info = None;
                self.relays_exist = None;
                Err(e)
            }
        }
    }

    /// Look at the relays table in the catalog: `false` when it does not exist; an error when a
    /// column is missing or its `version` row says another version.
    fn examine_relays(&mut self) -> Result<bool, DbError> {
        let table = self.relay_table.clone();
        let found = self
            .backend
            .columns(&table)
            .map_err(|e| self.query_error(&format!("reading the columns of table {table}"), e))?;
        let Some(found) = found else {
            self.relays_exist = Some(false);
            if !self.relays_missing_said {
                self.relays_missing_said = true;
                log::info!(
                    "table {table} does not exist in {}: no relays (create it with `sipsockd db \
                     init`)",
                    self.url
                );
            }
            return Ok(false);
        };
        for column in RELAY_COLUMNS {
            if !found.iter().any(|c| c.name.eq_ignore_ascii_case(column)) {
                return Err(DbError::RelayColumnMissing {
                    table,
                    column: column.to_string(),
                    url: self.url().to_string(),
                });
            }
        }
        self.check_version(&table, RELAY_TABLE_VERSION, "sipsockd's relays schema")?;
        self.relays_exist = Some(true);
        self.relays_missing_said = false;
        Ok(true)
    }

    /// The relays part of a load: the one query when the table is known to exist, else the
    /// catalog look first. `None` when the table does not exist.
    fn load_relays_once(&mut self) -> Result<Option<Vec<RawRelayRow>>, DbError> {
        let what = format!("reading table {}", self.relay_table);
        if self.relays_exist == Some(true) {
            match self.select_relays() {
                Ok(rows) => return Ok(Some(rows)),
                // Changed since we looked: look again, as for the sockets table.
                Err(f) if f.kind == FailKind::Statement => {
                    log::debug!(
                        "reading table {} failed ({}); looking again",
                        self.relay_table,
                        self.url.scrub(f.message)
                    );
                }
                Err(f) => return Err(self.query_error(&what, f)),
            }
        }
        if !self.examine_relays()? {
            return Ok(None);
        }
        self.select_relays()
            .map(Some)
            .map_err(|f| self.query_error(&what, f))
    }

    /// The one query of the relays table.
    fn select_relays(&mut self) -> Result<Vec<RawRelayRow>, Failure> {
        let columns: Vec<String> = RELAY_COLUMNS.iter().map(|c| self.ident(c)).collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            columns.join(", "),
            self.ident(&self.relay_table),
            self.ident("id")
        );
        let rows = self.backend.query(&sql, &[])?;
        Ok(rows
            .into_iter()
            .map(|cells| {
                let mut it = cells.into_iter();
                let mut next = || clean(it.next().flatten());
                RawRelayRow {
                    id: next().and_then(|v| v.parse::<i64>().ok()),
                    tag: next(),
                    destination: next(),
                    socket: next(),
                    weight: next(),
                    flags: next(),
                }
            })
            .collect())
    }

    fn load_once(&mut self) -> Result<Vec<RawRow>, DbError> {
        let what = format!("reading table {}", self.names.table_name);
        if let Some(info) = self.info.clone() {
            match self.select(&info) {
                Ok(rows) => return Ok(rows),
                // The table may have changed since we looked (a column gone, a type changed
                // under a prepared statement): look again, then say what is wrong with it or
                // read it as it is now.
                Err(f) if f.kind == FailKind::Statement => {
                    log::debug!(
                        "reading table {} failed ({}); looking again",
                        self.names.table_name,
                        self.url.scrub(f.message)
                    );
                }
                Err(f) => return Err(self.query_error(&what, f)),
            }
        }
        let info = self.table_info()?;
        self.select(&info).map_err(|f| self.query_error(&what, f))
    }

    /// The one query of a load, for a table as `info` describes it.
    fn select(&mut self, info: &TableInfo) -> Result<Vec<RawRow>, Failure> {
        let mut select: Vec<String> = Vec::new();
        if info.has_id {
            select.push(self.ident("id"));
        }
        select.extend(self.columns().iter().map(|(_, c)| self.ident(c)));
        let table = &self.names.table_name;
        let mut sql = format!("SELECT {} FROM {}", select.join(", "), self.ident(table));
        if info.has_id {
            sql.push_str(&format!(" ORDER BY {}", self.ident("id")));
        }
        let rows = self.backend.query(&sql, &[])?;
        Ok(rows
            .into_iter()
            .map(|cells| {
                let mut it = cells.into_iter();
                let id = if info.has_id {
                    clean(it.next().flatten()).and_then(|v| v.parse::<i64>().ok())
                } else {
                    None
                };
                let mut next = || clean(it.next().flatten());
                RawRow {
                    id,
                    socket: next(),
                    advertised: next(),
                    tag: next(),
                    flags: next(),
                    tos: next(),
                }
            })
            .collect())
    }

    /// Create the sockets table (OpenSIPS' schema) and the `version` table and row when missing.
    /// Idempotent; an existing table at another version is an error.
    pub fn init(&mut self) -> Result<InitReport, DbError> {
        let table = self.names.table_name.clone();
        let relays = self.relay_table.clone();
        let what = format!("creating tables {table} and {relays}");
        let exists = |db: &mut Database, t: &str| {
            db.backend
                .columns(t)
                .map(|c| c.is_some())
                .map_err(|e| db.query_error(&what, e))
        };
        let existed = exists(self, &table)?;
        let relays_existed = exists(self, &relays)?;
        let ddl = schema(self.kind(), &self.names, &relays);
        self.backend
            .batch(&ddl)
            .map_err(|e| self.query_error(&what, e))?;
        let added = self.add_version_row(&table, TABLE_VERSION)?;
        let relays_added = self.add_version_row(&relays, RELAY_TABLE_VERSION)?;
        // Checks the columns and the version of tables that were already there.
        self.table_info()?;
        self.relays_exist = None;
        self.examine_relays()?;
        Ok(InitReport {
            created_table: !existed,
            created_version_row: added,
            created_relay_table: !relays_existed,
            created_relay_version_row: relays_added,
        })
    }

    /// Add `table`'s row to `version` unless it has one; true when added.
    fn add_version_row(&mut self, table: &str, version: i64) -> Result<bool, DbError> {
        let sql = format!(
            "INSERT INTO {v} ({n}, {tv}) SELECT '{table}', {version}{dual} WHERE NOT EXISTS \
             (SELECT 1 FROM {v} WHERE {n} = '{table}')",
            v = self.ident("version"),
            n = self.ident("table_name"),
            tv = self.ident("table_version"),
            dual = if self.kind() == Kind::Mysql {
                " FROM DUAL"
            } else {
                ""
            },
        );
        self.backend
            .execute(&sql, &[])
            .map(|n| n > 0)
            .map_err(|e| self.query_error("adding the version row", e))
    }

    /// Insert one row as given (cleaned; the caller validates it first). A `tos` column of an
    /// integer type gets the number. Returns the new `id` when the table has one.
    pub fn insert(&mut self, row: &RawRow) -> Result<Option<i64>, DbError> {
        let info = self.table_info()?;
        let row = row.normalized();
        let tos = match (&row.tos, info.tos_is_integer) {
            (Some(t), true) => match parse_tos(t) {
                Ok(v) => Param::Int(v.into()),
                Err(e) => return Err(self.query_error("inserting a row", Failure::statement(e))),
            },
            (t, _) => Param::Text(t.clone()),
        };
        let params = [
            Param::Text(row.socket.clone()),
            Param::Text(row.advertised.clone()),
            Param::Text(row.tag.clone()),
            Param::Text(row.flags.clone()),
            tos,
        ];
        let columns: Vec<String> = self.columns().iter().map(|(_, c)| self.ident(c)).collect();
        let marks: Vec<String> = (1..=params.len()).map(|i| self.placeholder(i)).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.ident(&self.names.table_name),
            columns.join(", "),
            marks.join(", ")
        );
        if info.has_id && self.kind() == Kind::Postgres {
            sql.push_str(" RETURNING id");
        }
        self.backend
            .insert(&sql, &params, info.has_id)
            .map_err(|e| self.query_error("inserting a row", e))
    }

    /// Delete the row with this `id`; returns how many rows went (0 or 1).
    pub fn delete_by_id(&mut self, id: i64) -> Result<u64, DbError> {
        let sql = format!(
            "DELETE FROM {} WHERE {} = {}",
            self.ident(&self.names.table_name),
            self.ident("id"),
            self.placeholder(1)
        );
        self.backend
            .execute(&sql, &[Param::Int(id)])
            .map_err(|e| self.query_error("deleting a row", e))
    }

    /// Insert one relay row as given (cleaned; the caller validates it first; a NULL weight is
    /// stored as 1). Returns the new `id`.
    pub fn insert_relay(&mut self, row: &RawRelayRow) -> Result<i64, DbError> {
        let what = format!("inserting a row into {}", self.relay_table);
        if !self.examine_relays()? {
            return Err(DbError::TableMissing {
                table: self.relay_table.clone(),
                url: self.url().to_string(),
            });
        }
        let row = row.normalized();
        let weight = match &row.weight {
            None => Param::Int(1),
            Some(w) => match w.parse::<i64>() {
                Ok(w) => Param::Int(w),
                Err(_) => Param::Text(Some(w.clone())),
            },
        };
        let params = [
            Param::Text(row.tag.clone()),
            Param::Text(row.destination.clone()),
            Param::Text(row.socket.clone()),
            weight,
            Param::Text(row.flags.clone()),
        ];
        let columns: Vec<String> = RELAY_COLUMNS[1..].iter().map(|c| self.ident(c)).collect();
        let marks: Vec<String> = (1..=params.len()).map(|i| self.placeholder(i)).collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.ident(&self.relay_table),
            columns.join(", "),
            marks.join(", ")
        );
        if self.kind() == Kind::Postgres {
            sql.push_str(" RETURNING id");
        }
        let id = self
            .backend
            .insert(&sql, &params, true)
            .map_err(|e| self.query_error(&what, e))?;
        id.ok_or_else(|| {
            self.query_error(
                &what,
                Failure::statement("the new row's id was not returned".into()),
            )
        })
    }

    /// Delete the relay row with this `id`; returns how many rows went (0 or 1). A missing relays
    /// table is [`DbError::TableMissing`].
    pub fn delete_relay(&mut self, id: i64) -> Result<u64, DbError> {
        if !self.examine_relays()? {
            return Err(DbError::TableMissing {
                table: self.relay_table.clone(),
                url: self.url().to_string(),
            });
        }
        let sql = format!(
            "DELETE FROM {} WHERE {} = {}",
            self.ident(&self.relay_table),
            self.ident("id"),
            self.placeholder(1)
        );
        self.backend
            .execute(&sql, &[Param::Int(id)])
            .map_err(|e| self.query_error(&format!("deleting a row of {}", self.relay_table), e))
    }

    /// Delete the rows whose socket text is `socket` (trailing blanks ignored); returns how many.
    pub fn delete_by_socket(&mut self, socket: &str) -> Result<u64, DbError> {
        let sql = format!(
            "DELETE FROM {} WHERE RTRIM({}) = {}",
            self.ident(&self.names.table_name),
            self.ident(&self.names.socket_column),
            self.placeholder(1)
        );
        self.backend
            .execute(&sql, &[Param::Text(Some(socket.trim_end().to_string()))])
            .map_err(|e| self.query_error("deleting rows", e))
    }
}

/// The backend of a [`Database`] between two connections (and after a failed reconnect): always
/// stale, so the next load connects again; every call fails as a lost link.
struct Closed;

impl Backend for Closed {
    fn stale(&self) -> bool {
        // The next load tries to connect again.
        true
    }
    fn columns(&mut self, _: &str) -> Result<Option<Vec<Column>>, Failure> {
        Err(Failure::link("not connected".into()))
    }
    fn query(&mut self, _: &str, _: &[Param]) -> Result<Vec<Cells>, Failure> {
        Err(Failure::link("not connected".into()))
    }
    fn execute(&mut self, _: &str, _: &[Param]) -> Result<u64, Failure> {
        Err(Failure::link("not connected".into()))
    }
    fn insert(&mut self, _: &str, _: &[Param], _: bool) -> Result<Option<i64>, Failure> {
        Err(Failure::link("not connected".into()))
    }
    fn batch(&mut self, _: &[String]) -> Result<(), Failure> {
        Err(Failure::link("not connected".into()))
    }
}

/// When `db_url` is a SQLite file that does not exist, create it with the empty tables (so a
/// fresh machine can run the default configuration); the relays table with its default name (see
/// [`ensure_sqlite_tables`]). True when the file was created.
pub fn ensure_sqlite_default(cfg: &SocketsMgm) -> Result<bool, DbError> {
    ensure_sqlite(cfg, DEFAULT_RELAY_TABLE)
}

/// [`ensure_sqlite_default`] with every name of the configuration.
pub fn ensure_sqlite_tables(cfg: &Config) -> Result<bool, DbError> {
    ensure_sqlite(&cfg.sockets_mgm, &cfg.relay.table_name)
}

fn ensure_sqlite(cfg: &SocketsMgm, relay_table: &str) -> Result<bool, DbError> {
    let url = DbUrl::parse(&cfg.db_url)?;
    let Target::Sqlite(path) = url.target() else {
        return Ok(false);
    };
    if path.exists() {
        return Ok(false);
    }
    Database::create(cfg)?
        .with_relay_table(relay_table)
        .init()?;
    Ok(true)
}

/// The DDL of `db init` for a dialect, with the configured names (the `scripts/sql/*.sql` files are
/// the same with the default names): the version table, the sockets table, the relays table.
fn schema(kind: Kind, n: &SocketsMgm, relays: &str) -> Vec<String> {
    let (version, sockets) = match kind {
        Kind::Sqlite => (
            "CREATE TABLE IF NOT EXISTS version (\n    table_name CHAR(32) NOT NULL,\n    \
             table_version INTEGER DEFAULT 0 NOT NULL,\n    \
             CONSTRAINT version_t_name_idx UNIQUE (table_name)\n)"
                .to_string(),
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,\n    \
                 {s} CHAR(128) NOT NULL,\n    {a} CHAR(128) DEFAULT NULL,\n    \
                 {g} CHAR(128) DEFAULT NULL,\n    {f} CHAR(128) DEFAULT NULL,\n    \
                 {o} CHAR(32) DEFAULT NULL\n)",
                t = n.table_name,
                s = n.socket_column,
                a = n.advertised_column,
                g = n.tag_column,
                f = n.flags_column,
                o = n.tos_column
            ),
        ),
        Kind::Postgres => (
            "CREATE TABLE IF NOT EXISTS version (\n    table_name VARCHAR(32) NOT NULL,\n    \
             table_version INTEGER DEFAULT 0 NOT NULL,\n    \
             CONSTRAINT version_t_name_idx UNIQUE (table_name)\n)"
                .to_string(),
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (\n    id SERIAL PRIMARY KEY NOT NULL,\n    \
                 {s} CHAR(128) NOT NULL,\n    {a} CHAR(128) DEFAULT NULL,\n    \
                 {g} CHAR(128) DEFAULT NULL,\n    {f} CHAR(128) DEFAULT NULL,\n    \
                 {o} CHAR(32) DEFAULT NULL\n)",
                t = n.table_name,
                s = n.socket_column,
                a = n.advertised_column,
                g = n.tag_column,
                f = n.flags_column,
                o = n.tos_column
            ),
        ),
        Kind::Mysql => (
            "CREATE TABLE IF NOT EXISTS `version` (\n    `table_name` CHAR(32) NOT NULL,\n    \
             `table_version` INT UNSIGNED DEFAULT 0 NOT NULL,\n    \
             CONSTRAINT t_name_idx UNIQUE (`table_name`)\n) ENGINE=InnoDB"
                .to_string(),
            format!(
                "CREATE TABLE IF NOT EXISTS `{t}` (\n    \
                 `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,\n    \
                 `{s}` CHAR(128) NOT NULL,\n    `{a}` CHAR(128) DEFAULT NULL,\n    \
                 `{g}` CHAR(128) DEFAULT NULL,\n    `{f}` CHAR(128) DEFAULT NULL,\n    \
                 `{o}` CHAR(32) DEFAULT NULL\n) ENGINE=InnoDB",
                t = n.table_name,
                s = n.socket_column,
                a = n.advertised_column,
                g = n.tag_column,
                f = n.flags_column,
                o = n.tos_column
            ),
        ),
    };
    let relays = match kind {
        Kind::Sqlite => format!(
            "CREATE TABLE IF NOT EXISTS {relays} (\n    \
             id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,\n    tag CHAR(128) NOT NULL,\n    \
             destination CHAR(255) NOT NULL,\n    socket CHAR(128) DEFAULT NULL,\n    \
             weight INTEGER DEFAULT 1 NOT NULL,\n    flags CHAR(64) DEFAULT NULL\n)"
        ),
        Kind::Postgres => format!(
            "CREATE TABLE IF NOT EXISTS {relays} (\n    id SERIAL PRIMARY KEY NOT NULL,\n    \
             tag CHAR(128) NOT NULL,\n    destination CHAR(255) NOT NULL,\n    \
             socket CHAR(128) DEFAULT NULL,\n    weight INTEGER DEFAULT 1 NOT NULL,\n    \
             flags CHAR(64) DEFAULT NULL\n)"
        ),
        Kind::Mysql => format!(
            "CREATE TABLE IF NOT EXISTS `{relays}` (\n    \
             `id` INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,\n    \
             `tag` CHAR(128) NOT NULL,\n    `destination` CHAR(255) NOT NULL,\n    \
             `socket` CHAR(128) DEFAULT NULL,\n    `weight` INT DEFAULT 1 NOT NULL,\n    \
             `flags` CHAR(64) DEFAULT NULL\n) ENGINE=InnoDB"
        ),
    };
    vec![version, sockets, relays]
}

/// An error and its sources on one line: some drivers keep the useful part ("Connection refused")
/// only in the source.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests;
