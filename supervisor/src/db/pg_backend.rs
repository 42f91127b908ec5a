//! The PostgreSQL driver (`tokio-postgres` without TLS: the database is expected on a trusted
//! network or the local host).
//!
//! Why tokio-postgres on a private current-thread runtime rather than the blocking `postgres`
//! crate: the supervisor is single-threaded, so a query that never returns would stop signals, the
//! MI FIFO and worker restarts with it. Here every round trip runs under a client-side deadline of
//! `db_timeout`, whatever the server or the network does. The session also gets
//! `statement_timeout` and `lock_timeout` so the server gives up on the statement too (a backend
//! waiting on a lock does not notice that its client left).
//!
//! Statements are prepared once per connection and kept, so a load in the steady state is one
//! round trip (Bind/Execute) instead of two (Parse, then Bind/Execute).

use super::{chain, Backend, Cells, Column, Failure, Param};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

pub(super) struct Postgres {
    /// Always `Some` until drop (taken there to shut it down without waiting).
    runtime: Option<Runtime>,
    client: Client,
    timeout: Duration,
    /// Prepared statements by SQL text: a handful (the fixed SQL of this module's caller).
    prepared: HashMap<String, Statement>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A host-name lookup runs on tokio's blocking pool; a plain drop of the runtime would wait
        // for it however long the resolver hangs.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Sort a driver error: the link is gone, the server refused the statement, or one of the
/// session's timeouts fired on the server side.
fn classify(e: &tokio_postgres::Error) -> Failure {
    let message = chain(e);
    if e.is_closed() {
        return Failure::link(message);
    }
    let Some(db) = e.as_db_error() else {
        // I/O errors, protocol errors: the connection cannot be trusted any more.
        return Failure::link(message);
    };
    let code = db.code();
    if *code == SqlState::LOCK_NOT_AVAILABLE
        || (*code == SqlState::QUERY_CANCELED && db.message().contains("timeout"))
    {
        return Failure::timeout(db.message().to_string());
    }
    // Class 08 (connection exception) and 57P (the server is shutting down or the session was
    // terminated) end the session.
    if code.code().starts_with("08") || code.code().starts_with("57P") {
        return Failure::link(message);
    }
    Failure::statement(message)
}

impl Postgres {
    /// Connect to `url` (no user info in it) as `user` with `password`.
    pub(super) fn connect(
        url: &str,
        user: Option<&str>,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Postgres, Failure> {
        let mut config: Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| Failure::link(chain(&e)))?;
        if let Some(user) = user {
            config.user(user);
        }
        if let Some(password) = password {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        // Data the server does not acknowledge within the timeout kills the connection in the
        // kernel: a vanished host is noticed even outside our own deadline.
        config.tcp_user_timeout(timeout);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| Failure::link(format!("cannot start the PostgreSQL client: {e}")))?;
        let (client, connection) = match runtime
            .block_on(async { tokio::time::timeout(timeout, config.connect(NoTls)).await })
        {
            Err(_) => return Err(Failure::timeout("no answer".into())),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(pair)) => pair,
        };
        // The connection task runs whenever the runtime runs, i.e. during each of our round
        // trips; its error, if any, surfaces as the next query's error.
        runtime.spawn(async move {
            let _ = connection.await;
        });
        let mut pg = Postgres {
            runtime: Some(runtime),
            client,
            timeout,
            prepared: HashMap::new(),
        };
        let ms = timeout.as_millis().max(1);
        // `CREATE TABLE IF NOT EXISTS` notices would otherwise reach the log as noise.
        pg.batch(&[format!(
            "SET client_min_messages TO WARNING; SET statement_timeout = {ms}; \
             SET lock_timeout = {ms}"
        )])?;
        Ok(pg)
    }

    /// Run one client operation under the deadline.
    fn run<T>(
        &self,
        op: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Failure> {
        let Some(rt) = self.runtime.as_ref() else {
            return Err(Failure::link("the PostgreSQL client is shut down".into()));
        };
        match rt.block_on(async { tokio::time::timeout(self.timeout, op).await }) {
            Err(_) => Err(Failure::timeout("no answer".into())),
            Ok(Err(e)) => Err(classify(&e)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, Failure> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.run(self.client.prepare(sql))?;
        self.prepared.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    /// Run a statement through the cache; any failure empties the cache, since a statement
    /// prepared before a schema change may be what failed ("cached plan must not change result
    /// type").
    fn with_statement<T>(
        &mut self,
        sql: &str,
        params: &[Param],
        op: impl FnOnce(&Self, &Statement, &[&(dyn ToSql + Sync)]) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let result = self.statement(sql).and_then(|stmt| {
            let bound = params
                .iter()
                .zip(stmt.params())
                .map(|(p, ty)| bind(p, ty))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Failure::statement)?;
            let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
            op(self, &stmt, &refs)
        });
        if result.is_err() {
            self.prepared.clear();
        }
        result
    }

    fn run_query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>, Failure> {
        self.with_statement(sql, params, |pg, stmt, refs| {
            pg.run(pg.client.query(stmt, refs))
        })
    }
}

/// A parameter converted to the type the server expects for it (an integer `tos` column, a
/// SERIAL `id`), so the same [`Param`] works whatever the column's type.
fn bind(p: &Param, ty: &Type) -> Result<Box<dyn ToSql + Sync>, String> {
    let int = |s: &str| {
        s.trim()
            .parse::<i64>()
            .map_err(|_| format!("{s:?} is not an integer (column type {ty})"))
    };
    let narrow = |v: i64| -> Result<Box<dyn ToSql + Sync>, String> {
        let range = || format!("{v} is out of range for type {ty}");
        Ok(match *ty {
            Type::INT2 => Box::new(i16::try_from(v).map_err(|_| range())?),
            Type::INT4 => Box::new(i32::try_from(v).map_err(|_| range())?),
            _ => Box::new(v),
        })
    };
    let integer = matches!(*ty, Type::INT2 | Type::INT4 | Type::INT8);
    Ok(match (p, integer) {
        (Param::Text(None), true) => match *ty {
            Type::INT2 => Box::new(None::<i16>),
            Type::INT4 => Box::new(None::<i32>),
            _ => Box::new(None::<i64>),
        },
        (Param::Text(None), false) => Box::new(None::<String>),
        (Param::Text(Some(s)), true) => narrow(int(s)?)?,
        (Param::Text(Some(s)), false) => Box::new(s.clone()),
        (Param::Int(i), true) => narrow(*i)?,
        (Param::Int(i), false) => Box::new(i.to_string()),
    })
}

/// One value as text; integer and boolean columns in their usual text form.
fn cell(row: &Row, i: usize) -> Result<Option<String>, String> {
    let column = &row.columns()[i];
    let ty = column.type_();
    let fail = |e: tokio_postgres::Error| format!("column {}: {e}", column.name());
    Ok(match *ty {
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(fail)?
            .map(|v| v.to_string()),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(fail)?
            .map(|v| v.to_string()),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(fail)?
            .map(|v| v.to_string()),
        Type::OID => row
            .try_get::<_, Option<u32>>(i)
            .map_err(fail)?
            .map(|v| v.to_string()),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(fail)?
            .map(|v| v.to_string()),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)
            .map_err(fail)?
            .map(|v| v.to_string()),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(i)
            .map_err(fail)?
            .map(|v| v.to_string()),
        _ => row.try_get::<_, Option<String>>(i).map_err(|_| {
            format!(
                "column {} has type {ty}, which sipsockd cannot read as text",
                column.name()
            )
        })?,
    })
}

impl Backend for Postgres {
    fn columns(&mut self, table: &str) -> Result<Option<Vec<Column>>, Failure> {
        // to_regclass follows search_path and folds case as the bare name in our SQL does; the
        // outer row exists iff the table does (a table may have zero columns in PostgreSQL).
        let rows = self.query(
            "SELECT a.attname::text, a.atttypid IN (20, 21, 23) \
             FROM (SELECT to_regclass($1) AS oid) r \
             LEFT JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE r.oid IS NOT NULL ORDER BY a.attnum",
            &[Param::Text(Some(table.to_string()))],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            rows.into_iter()
                .filter_map(|r| {
                    let mut it = r.into_iter();
                    let name = it.next().flatten()?;
                    let integer = it.next().flatten().as_deref() == Some("true");
                    Some(Column { name, integer })
                })
                .collect(),
        ))
    }

    fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Cells>, Failure> {
        self.run_query(sql, params)?
            .iter()
            .map(|row| (0..row.len()).map(|i| cell(row, i)).collect())
            .collect::<Result<_, String>>()
            .map_err(Failure::statement)
    }

    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, Failure> {
        self.with_statement(sql, params, |pg, stmt, refs| {
            pg.run(pg.client.execute(stmt, refs))
        })
    }

    fn insert(
        &mut self,
        sql: &str,
        params: &[Param],
        id_column: bool,
    ) -> Result<Option<i64>, Failure> {
        if !id_column {
            self.execute(sql, params)?;
            return Ok(None);
        }
        // The SQL ends with RETURNING id.
        let rows = self.query(sql, params)?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .and_then(|v| v.parse().ok()))
    }

    fn batch(&mut self, statements: &[String]) -> Result<(), Failure> {
        for s in statements {
            self.run(self.client.batch_execute(s))?;
        }
        // DDL may have changed what a kept statement reads.
        self.prepared.clear();
        Ok(())
    }
}
