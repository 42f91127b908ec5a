//! The SQLite driver (rusqlite, bundled): the embedded default, a file relative to the working
//! directory (`sqlite://rel`) or absolute (`sqlite:///abs`).

use super::{chain, Backend, Cells, Column, Param};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params_from_iter, Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// How long a statement waits for another process' write lock (a `db add` while the daemon reads).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Sqlite {
    conn: Connection,
}

impl Sqlite {
    /// Open `path`; create it only when `create` (a typo in `db_url` must not make a new file).
    pub(super) fn open(path: &Path, create: bool) -> Result<Sqlite, String> {
        if !create && !path.exists() {
            return Err(format!(
                "SQLite file {} does not exist (create it with `sipsockd db init`)",
                path.display()
            ));
        }
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let fail = |e: rusqlite::Error| format!("{}: {e}", path.display());
        let conn = Connection::open_with_flags(path, flags).map_err(fail)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        // A file that is not a database is reported now, as a connection failure.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(fail)?;
        Ok(Sqlite { conn })
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
    fn columns(&mut self, table: &str) -> Result<Option<Vec<Column>>, String> {
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

    fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Cells>, String> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| chain(&e))?;
        let n = stmt.column_count();
        let mut rows = stmt
            .query(params_from_iter(params.iter().map(value)))
            .map_err(|e| chain(&e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| chain(&e))? {
            let mut cells = Vec::with_capacity(n);
            for i in 0..n {
                cells.push(cell(row.get_ref(i).map_err(|e| chain(&e))?));
            }
            out.push(cells);
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, String> {
        self.conn
            .execute(sql, params_from_iter(params.iter().map(value)))
            .map(|n| n as u64)
            .map_err(|e| chain(&e))
    }

    fn insert(
        &mut self,
        sql: &str,
        params: &[Param],
        id_column: bool,
    ) -> Result<Option<i64>, String> {
        self.execute(sql, params)?;
        // With an INTEGER PRIMARY KEY `id`, the rowid is the id.
        Ok(id_column.then(|| self.conn.last_insert_rowid()))
    }

    fn batch(&mut self, statements: &[String]) -> Result<(), String> {
        for s in statements {
            self.conn.execute_batch(s).map_err(|e| chain(&e))?;
        }
        Ok(())
    }
}
