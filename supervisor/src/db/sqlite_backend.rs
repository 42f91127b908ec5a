//! The SQLite driver (rusqlite, bundled): the embedded default, a file relative to the working
//! directory (`sqlite://rel`) or absolute (`sqlite:///abs`).
//!
//! `db_timeout` is the busy timeout: how long a statement waits for another process' write lock
//! (a `db add`, or an operator's open transaction) before it fails as timed out. The connection
//! remembers which file it opened, so a database replaced by a rename (`mv new.db sipsockd.db`) is
//! noticed and reopened instead of being read from the old, unlinked file.

use super::{chain, Backend, Cells, Column, FailKind, Failure, Param};
use rusqlite::config::DbConfig;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params_from_iter, Connection, ErrorCode, OpenFlags};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) struct Sqlite {
    conn: Connection,
    path: PathBuf,
    /// (device, inode) of the file opened.
    file: (u64, u64),
}

/// The file `path` names now, as (device, inode).
fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Sort a driver error: waiting for a lock past the busy timeout is a timeout; anything else
/// (not a database, no such table, I/O) is the statement's failure: there is no link to lose.
fn classify(e: &rusqlite::Error) -> Failure {
    let message = chain(e);
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Failure::timeout(message),
        _ => Failure::statement(message),
    }
}

impl Sqlite {
    /// Open `path`; create it only when `create` (a typo in `db_url` must not make a new file).
    pub(super) fn open(path: &Path, create: bool, timeout: Duration) -> Result<Sqlite, Failure> {
        if !create && !path.exists() {
            return Err(Failure::link(format!(
                "SQLite file {} does not exist (create it with `sipsockd db init`)",
                path.display()
            )));
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let fail = |e: rusqlite::Error| {
            let f = classify(&e);
            Failure {
                message: format!("{}: {}", path.display(), f.message),
                // Not a link failure, but at open it is reported as a connection failure.
                kind: if f.kind == FailKind::Timeout {
                    FailKind::Timeout
                } else {
                    FailKind::Link
                },
            }
        };
        let conn = Connection::open_with_flags(path, flags).map_err(fail)?;
        conn.busy_timeout(timeout).map_err(fail)?;
        // Without this, SQLite reads `SELECT "tag"` on a table without that column as the string
        // 'tag' for every row: a dropped column would silently become its own name.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DML, false)
            .map_err(fail)?;
        // A file that is not a database is reported now, as a connection failure.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(fail)?;
        let file = file_id(path).map_err(|e| Failure::link(format!("{}: {e}", path.display())))?;
        Ok(Sqlite {
            conn,
            path: path.to_owned(),
            file,
        })
    }
}

fn value(p: &Param) -> Value {
    match p {
        Param::Text(Some(s)) => Value::Text(s.clone()),
        Param::Text(None) => Value::Null,
        Param::Int(i) => Value::Integer(*i),
    }
}

fn cell(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}

impl Backend for Sqlite {
    fn stale(&self) -> bool {
        file_id(&self.path).map_or(true, |id| id != self.file)
    }

    fn columns(&mut self, table: &str) -> Result<Option<Vec<Column>>, Failure> {
        // Every SQLite table has at least one column, so no row means no table.
        let rows = self.query(
            "SELECT name, type FROM pragma_table_info(?1)",
            &[Param::Text(Some(table.to_string()))],
        )?;
        let columns: Vec<Column> = rows
            .into_iter()
            .map(|r| {
                let mut it = r.into_iter();
                let name = it.next().flatten().unwrap_or_default();
                let ty = it.next().flatten().unwrap_or_default();
                Column {
                    name,
                    // SQLite's own rule for integer affinity.
                    integer: ty.to_ascii_uppercase().contains("INT"),
                }
            })
            .collect();
        Ok((!columns.is_empty()).then_some(columns))
    }

    fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Cells>, Failure> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| classify(&e))?;
        let n = stmt.column_count();
        let mut rows = stmt
            .query(params_from_iter(params.iter().map(value)))
            .map_err(|e| classify(&e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| classify(&e))? {
            let mut cells = Vec::with_capacity(n);
            for i in 0..n {
                cells.push(cell(row.get_ref(i).map_err(|e| classify(&e))?));
            }
            out.push(cells);
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, Failure> {
        self.conn
            .execute(sql, params_from_iter(params.iter().map(value)))
            .map(|n| n as u64)
            .map_err(|e| classify(&e))
    }

    fn insert(
        &mut self,
        sql: &str,
        params: &[Param],
        id_column: bool,
    ) -> Result<Option<i64>, Failure> {
        self.execute(sql, params)?;
        // With an INTEGER PRIMARY KEY `id`, the rowid is the id.
        Ok(id_column.then(|| self.conn.last_insert_rowid()))
    }

    fn batch(&mut self, statements: &[String]) -> Result<(), Failure> {
        for s in statements {
            self.conn.execute_batch(s).map_err(|e| classify(&e))?;
        }
        Ok(())
    }
}
