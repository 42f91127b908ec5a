//! The MySQL / MariaDB driver (`mysql`, without TLS: the database is expected on a trusted network
//! or the local host).

use super::{chain, Backend, Cells, Column, Param};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Params, Row, Value};
use std::time::Duration;

pub(super) struct Mysql {
    conn: Conn,
}

impl Mysql {
    pub(super) fn connect(url: &str, timeout: Duration) -> Result<Mysql, String> {
        let opts = Opts::from_url(url).map_err(|e| chain(&e))?;
        let opts = OptsBuilder::from_opts(opts).tcp_connect_timeout(Some(timeout));
        let conn = Conn::new(opts).map_err(|e| chain(&e))?;
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
    fn columns(&mut self, table: &str) -> Result<Option<Vec<Column>>, String> {
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

    fn query(&mut self, sql: &str, p: &[Param]) -> Result<Vec<Cells>, String> {
        let rows: Vec<Row> = if p.is_empty() {
            self.conn.query(sql)
        } else {
            self.conn.exec(sql, params(p))
        }
        .map_err(|e| chain(&e))?;
        rows.into_iter().map(cells).collect()
    }

    fn execute(&mut self, sql: &str, p: &[Param]) -> Result<u64, String> {
        if p.is_empty() {
            self.conn.query_drop(sql)
        } else {
            self.conn.exec_drop(sql, params(p))
        }
        .map_err(|e| chain(&e))?;
        Ok(self.conn.affected_rows())
    }

    fn insert(&mut self, sql: &str, p: &[Param], id_column: bool) -> Result<Option<i64>, String> {
        self.execute(sql, p)?;
        Ok(id_column.then(|| self.conn.last_insert_id() as i64))
    }

    fn batch(&mut self, statements: &[String]) -> Result<(), String> {
        for s in statements {
            self.conn.query_drop(s).map_err(|e| chain(&e))?;
        }
        Ok(())
    }
}
