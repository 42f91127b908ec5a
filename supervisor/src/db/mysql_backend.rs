//! The MySQL / MariaDB driver (`mysql`, without TLS: the database is expected on a trusted network
//! or the local host).
//!
//! `db_timeout` bounds the TCP connect and every read and write on the socket, on the client side
//! (a query that never returns would stop the single-threaded supervisor). The session also gets
//! `lock_wait_timeout` and the server's statement time limit (`max_statement_time` on MariaDB,
//! `max_execution_time` on MySQL), so the server gives up too rather than keep a lock wait queued.
//! A query without parameters (the load) is one round trip; the driver keeps prepared statements
//! for the others.

use super::{chain, Backend, Cells, Column, Failure, Param};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Params, Row, Value};
use std::io;
use std::time::Duration;

pub(super) struct Mysql {
    conn: Conn,
}

/// Server error codes that mean one of the session's time limits fired: lock wait timeout,
/// MariaDB's max_statement_time, MySQL's max_execution_time.
const TIMEOUT_CODES: [u16; 3] = [1205, 1969, 3024];
/// Server error codes that end the session: server shutdown, connection killed, and the client
/// library's "gone away" / "lost connection" that some servers send back.
const LINK_CODES: [u16; 4] = [1053, 1927, 2006, 2013];

fn is_timeout(e: &io::Error) -> bool {
    // A socket read timeout is EAGAIN on Linux.
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sort a driver error: the link is gone (I/O, protocol), a time limit fired (socket timeout on
/// our side, or a session limit on the server's), or the server refused the statement.
fn classify(e: &mysql::Error) -> Failure {
    let message = chain(e);
    match e {
        mysql::Error::IoError(io) if is_timeout(io) => Failure::timeout(message),
        mysql::Error::CodecError(c)
            if std::error::Error::source(c)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .is_some_and(is_timeout) =>
        {
            Failure::timeout(message)
        }
        mysql::Error::DriverError(mysql::DriverError::ConnectTimeout)
        | mysql::Error::DriverError(mysql::DriverError::Timeout) => Failure::timeout(message),
        mysql::Error::MySqlError(m) if TIMEOUT_CODES.contains(&m.code) => Failure::timeout(message),
        mysql::Error::MySqlError(m) if LINK_CODES.contains(&m.code) => Failure::link(message),
        mysql::Error::MySqlError(_)
        | mysql::Error::FromValueError(_)
        | mysql::Error::FromRowError(_)
        | mysql::Error::UrlError(_) => Failure::statement(message),
        _ => Failure::link(message),
    }
}

impl Mysql {
    /// Connect to `url` (no user info in it) as `user` with `password`.
    pub(super) fn connect(
        url: &str,
        user: Option<&str>,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Mysql, Failure> {
        let opts = Opts::from_url(url).map_err(|e| Failure::link(chain(&e)))?;
        // The driver would otherwise ask a server reached on 127.0.0.1 for its Unix socket and
        // reconnect there: past a local proxy or port forward the URL names on purpose. The URL
        // may still ask for it with `prefer_socket=true`.
        let prefer_socket = url.contains("prefer_socket=") && opts.get_prefer_socket();
        let opts = OptsBuilder::from_opts(opts)
            .user(user)
            .pass(password)
            .prefer_socket(prefer_socket)
            .tcp_connect_timeout(Some(timeout))
            .read_timeout(Some(timeout))
            .write_timeout(Some(timeout));
        let mut conn = Conn::new(opts).map_err(|e| classify(&e))?;
        // Whole seconds at least 1: lock_wait_timeout takes an integer.
        let secs = timeout.as_secs_f64().ceil().max(1.0) as u64;
        conn.query_drop(format!("SET SESSION lock_wait_timeout = {secs}"))
            .map_err(|e| classify(&e))?;
        // One of the two exists, depending on the server; the socket timeout covers the other.
        let limit = format!("SET SESSION max_statement_time = {}", timeout.as_secs_f64());
        if conn.query_drop(limit).is_err() {
            let ms = timeout.as_millis().max(1);
            let _ = conn.query_drop(format!("SET SESSION max_execution_time = {ms}"));
        }
        Ok(Mysql { conn })
    }
}

fn value(p: &Param) -> Value {
    match p {
        Param::Text(Some(s)) => Value::Bytes(s.clone().into_bytes()),
        Param::Text(None) => Value::NULL,
        Param::Int(i) => Value::Int(*i),
    }
}

fn params(params: &[Param]) -> Params {
    if params.is_empty() {
        Params::Empty
    } else {
        Params::Positional(params.iter().map(value).collect())
    }
}

fn cells(row: Row) -> Result<Cells, String> {
    let names: Vec<String> = row
        .columns_ref()
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    row.unwrap()
        .into_iter()
        .zip(names)
        .map(|(v, name)| match v {
            Value::NULL => Ok(None),
            Value::Bytes(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Value::Int(i) => Ok(Some(i.to_string())),
            Value::UInt(u) => Ok(Some(u.to_string())),
            Value::Float(f) => Ok(Some(f.to_string())),
            Value::Double(f) => Ok(Some(f.to_string())),
            Value::Date(..) | Value::Time(..) => Err(format!(
                "column {name} has a date/time type, which sipsockd cannot read as text"
            )),
        })
        .collect()
}

impl Backend for Mysql {
    fn columns(&mut self, table: &str) -> Result<Option<Vec<Column>>, Failure> {
        let rows = self.query(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            &[Param::Text(Some(table.to_string()))],
        )?;
        let columns: Vec<Column> = rows
            .into_iter()
            .map(|r| {
                let mut it = r.into_iter();
                let name = it.next().flatten().unwrap_or_default();
                let ty = it.next().flatten().unwrap_or_default().to_ascii_lowercase();
                Column {
                    name,
                    integer: ty.ends_with("int"),
                }
            })
            .collect();
        Ok((!columns.is_empty()).then_some(columns))
    }

    fn query(&mut self, sql: &str, p: &[Param]) -> Result<Vec<Cells>, Failure> {
        let rows: Vec<Row> = if p.is_empty() {
            self.conn.query(sql)
        } else {
            self.conn.exec(sql, params(p))
        }
        .map_err(|e| classify(&e))?;
        rows.into_iter()
            .map(cells)
            .collect::<Result<_, String>>()
            .map_err(Failure::statement)
    }

    fn execute(&mut self, sql: &str, p: &[Param]) -> Result<u64, Failure> {
        if p.is_empty() {
            self.conn.query_drop(sql)
        } else {
            self.conn.exec_drop(sql, params(p))
        }
        .map_err(|e| classify(&e))?;
        Ok(self.conn.affected_rows())
    }

    fn insert(&mut self, sql: &str, p: &[Param], id_column: bool) -> Result<Option<i64>, Failure> {
        self.execute(sql, p)?;
        Ok(id_column.then(|| self.conn.last_insert_id() as i64))
    }

    fn batch(&mut self, statements: &[String]) -> Result<(), Failure> {
        for s in statements {
            self.conn.query_drop(s).map_err(|e| classify(&e))?;
        }
        Ok(())
    }
}
