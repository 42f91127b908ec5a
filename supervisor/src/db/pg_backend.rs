//! The PostgreSQL driver (`postgres`, without TLS: the database is expected on a trusted network
//! or the local host).

use super::{chain, Backend, Cells, Column, Param};
use postgres::types::{ToSql, Type};
use postgres::{Client, Config, NoTls, Row};
use std::time::Duration;

pub(super) struct Postgres {
    client: Client,
}

impl Postgres {
    pub(super) fn connect(url: &str, timeout: Duration) -> Result<Postgres, String> {
        let mut config: Config = url.parse().map_err(|e: postgres::Error| chain(&e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let mut client = config.connect(NoTls).map_err(|e| chain(&e))?;
        // `CREATE TABLE IF NOT EXISTS` notices would otherwise reach the log as noise.
        client
            .batch_execute("SET client_min_messages TO WARNING")
            .map_err(|e| chain(&e))?;
        Ok(Postgres { client })
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
    let fail = |e: postgres::Error| format!("column {}: {e}", column.name());
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

impl Postgres {
    fn run_query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>, String> {
        let stmt = self.client.prepare(sql).map_err(|e| chain(&e))?;
        let bound = params
            .iter()
            .zip(stmt.params())
            .map(|(p, ty)| bind(p, ty))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
        self.client.query(&stmt, &refs).map_err(|e| chain(&e))
    }
}

impl Backend for Postgres {
    fn columns(&mut self, table: &str) -> Result<Option<Vec<Column>>, String> {
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

    fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Cells>, String> {
        self.run_query(sql, params)?
            .iter()
            .map(|row| (0..row.len()).map(|i| cell(row, i)).collect())
            .collect()
    }

    fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, String> {
        let stmt = self.client.prepare(sql).map_err(|e| chain(&e))?;
        let bound = params
            .iter()
            .zip(stmt.params())
            .map(|(p, ty)| bind(p, ty))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
        self.client.execute(&stmt, &refs).map_err(|e| chain(&e))
    }

    fn insert(
        &mut self,
        sql: &str,
        params: &[Param],
        id_column: bool,
    ) -> Result<Option<i64>, String> {
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

    fn batch(&mut self, statements: &[String]) -> Result<(), String> {
        for s in statements {
            self.client.batch_execute(s).map_err(|e| chain(&e))?;
        }
        Ok(())
    }
}
