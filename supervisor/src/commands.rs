//! The provisioning commands: `db init|add|rm|list` and `check`.
//!
//! Each opens the database of `[sockets_mgm] db_url`, does one thing, prints what it did to `out`
//! and returns. They share the row rules of [`crate::row`] with the daemon, so what `db add`
//! accepts and what `check` reports is exactly what a reload would do. None of them talks to a
//! running daemon: a change reaches it with `sockets_reload`.

use crate::config::{Config, InvalidRows};
use crate::db::{Database, DbError};
use crate::row::{
    examine_table, format_flags, parse_row, parse_socket, RawRow, RowError, SocketDef,
    SystemResolver,
};
use serde::Serialize;
use shm::Proto;
use std::io::Write;

/// Errors of the provisioning commands.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// `db add` was given a row that a reload would refuse.
    #[error("refused, nothing added: {0}")]
    InvalidRow(RowError),
    /// `db add` was given a socket that the table already has.
    #[error("refused, nothing added: {socket} is the same socket ({identity}) as {existing}")]
    Duplicate {
        /// The socket text given.
        socket: String,
        /// `proto ip:port`.
        identity: String,
        /// The row already there.
        existing: String,
    },
    /// `db add` on a table that already has `max_sockets` valid rows.
    #[error(
        "refused, nothing added: the table already has {valid} valid rows and max_sockets is \
         {max}; a reload would refuse one more"
    )]
    Full {
        /// Valid rows in the table.
        valid: usize,
        /// `[sockets_mgm] max_sockets`.
        max: u32,
    },
    /// `db rm` found nothing to remove.
    #[error("nothing removed: {0}")]
    NotFound(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// Encoding JSON failed.
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What `db rm` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RmTarget {
    /// The row(s) with this socket text or identity.
    Socket(String),
    /// The row with this id.
    Id(i64),
}

/// `sipsockd db init`: create the table and the version row (idempotent; creates a SQLite file).
pub fn db_init(cfg: &Config, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut db = Database::create(&cfg.sockets_mgm)?;
    let report = db.init()?;
    let table = &cfg.sockets_mgm.table_name;
    let what = match (report.created_table, report.created_version_row) {
        (true, _) => "created",
        (false, true) => "already there; version row added",
        (false, false) => "already there; nothing to do",
    };
    writeln!(out, "table {table} in {}: {what}", db.url())?;
    Ok(())
}

/// `sipsockd db add`: validate the row as a reload would, refuse a duplicate identity or a full
/// table, then insert it.
pub fn db_add(cfg: &Config, row: &RawRow, out: &mut dyn Write) -> Result<(), CommandError> {
    let row = RawRow {
        id: None,
        ..row.normalized()
    };
    let def = parse_row(&row, &SystemResolver)
        .map_err(|mut errors| CommandError::InvalidRow(errors.remove(0)))?;
    let mut db = Database::connect(&cfg.sockets_mgm)?;
    // The check and the insert are not one transaction: two concurrent `db add` of one socket
    // could both pass, and the next reload would then report the duplicate.
    let existing = db.load_rows()?;
    let outcomes = examine_table(&existing, u32::MAX, &SystemResolver);
    let valid: Vec<&SocketDef> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    if let Some(other) = valid.iter().find(|d| d.identity() == def.identity()) {
        return Err(CommandError::Duplicate {
            socket: def.text.clone(),
            identity: identity_text(&def),
            existing: describe(other),
        });
    }
    let max = cfg.sockets_mgm.max_sockets;
    if valid.len() >= max as usize {
        return Err(CommandError::Full {
            valid: valid.len(),
            max,
        });
    }
    let id = db.insert(&row)?;
    let added = SocketDef { id, ..def };
    writeln!(out, "added {}: {}", describe(&added), summary(&added))?;
    Ok(())
}

/// `sipsockd db rm`: remove by id, or every row whose socket text or identity is the one given.
pub fn db_rm(cfg: &Config, target: &RmTarget, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut db = Database::connect(&cfg.sockets_mgm)?;
    let table = &cfg.sockets_mgm.table_name;
    match target {
        RmTarget::Id(id) => {
            if !db.table_info()?.has_id {
                return Err(CommandError::NotFound(format!(
                    "table {table} has no id column; remove the row by its socket"
                )));
            }
            let socket = db
                .load_rows()?
                .into_iter()
                .find(|r| r.id == Some(*id))
                .and_then(|r| r.socket);
            if db.delete_by_id(*id)? == 0 {
                return Err(CommandError::NotFound(format!(
                    "no row with id {id} in {table}"
                )));
            }
            match socket {
                Some(s) => writeln!(out, "removed row {id} ({s:?})")?,
                None => writeln!(out, "removed row {id}")?,
            }
        }
        RmTarget::Socket(text) => {
            let text = text.trim_end();
            // A socket that parses also matches rows written differently for the same socket
            // (`UDP:localhost:5070` for `udp:127.0.0.1:5070`).
            let identity = parse_socket(text, &SystemResolver).ok();
            let matches: Vec<RawRow> = db
                .load_rows()?
                .into_iter()
                .filter(|r| {
                    r.socket.as_deref() == Some(text)
                        || identity.is_some_and(|(p, ip, port)| {
                            parse_row(r, &SystemResolver)
                                .is_ok_and(|d| (d.proto, d.ip, d.port) == (p, ip, port))
                        })
                })
                .collect();
            if matches.is_empty() {
                return Err(CommandError::NotFound(format!(
                    "no row in {table} has socket {text:?} or the same socket"
                )));
            }
            for r in &matches {
                let socket = r.socket.clone().unwrap_or_default();
                let removed = match r.id {
                    Some(id) => db.delete_by_id(id)?,
                    None => db.delete_by_socket(&socket)?,
                };
                if removed == 0 {
                    // Removed meanwhile, or an earlier text match took it.
                    continue;
                }
                match r.id {
                    Some(id) => writeln!(out, "removed row {id} ({socket:?})")?,
                    None => writeln!(out, "removed {removed} row(s) with socket {socket:?}")?,
                }
            }
        }
    }
    Ok(())
}

/// `sipsockd db list`: the rows as stored (`--json`: an array of
/// `{"id", "socket", "advertised", "tag", "flags", "tos"}`, null for NULL, every value whole; the
/// table view cuts values longer than [`MAX_CELL`] characters, with a marker).
pub fn db_list(cfg: &Config, json: bool, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut db = Database::connect(&cfg.sockets_mgm)?;
    let rows = db.load_rows()?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(
            out,
            "no rows in table {} ({})",
            cfg.sockets_mgm.table_name,
            db.url()
        )?;
        return Ok(());
    }
    let shown = |v: &Option<String>| v.as_deref().map_or_else(|| "-".into(), cell);
    let lines: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.id.map_or_else(|| "-".into(), |i| i.to_string()),
                shown(&r.socket),
                shown(&r.advertised),
                shown(&r.tag),
                shown(&r.flags),
                shown(&r.tos),
            ]
        })
        .collect();
    let header = ["ID", "SOCKET", "ADVERTISED", "TAG", "FLAGS", "TOS"].map(String::from);
    let mut widths = [0usize; 6];
    for line in std::iter::once(&header).chain(&lines) {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for line in std::iter::once(&header).chain(&lines) {
        // Padded by hand: a format width is limited to u16::MAX and panics past it.
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

/// Longest value the table view of `db list` shows whole, in characters.
const MAX_CELL: usize = 64;

/// A value as one table cell: on one line (control characters escaped), cut past [`MAX_CELL`]
/// characters with a marker saying how many were left out (`--json` shows it whole).
fn cell(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    let total = escaped.chars().count();
    if total <= MAX_CELL {
        return escaped;
    }
    let kept = MAX_CELL - 16;
    let head: String = escaped.chars().take(kept).collect();
    format!("{head}...(+{} chars)", total - kept)
}

/// `check --json`: the whole report.
#[derive(Serialize)]
struct CheckReport {
    valid: bool,
    rows: Vec<CheckRow>,
}

/// One row of `check --json`: `parsed` or `error`.
#[derive(Serialize)]
struct CheckRow {
    id: Option<i64>,
    socket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parsed: Option<Parsed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<CheckError>,
}

#[derive(Serialize)]
struct Parsed {
    proto: Proto,
    ip: String,
    port: u16,
    advertised: Option<String>,
    tag: Option<String>,
    flags: String,
    tos: u8,
}

#[derive(Serialize)]
struct CheckError {
    column: Option<String>,
    value: Option<String>,
    reason: String,
}

/// `sipsockd check`: read the table once and print what a reload would apply: every row, parsed,
/// or its error. Ok(true) when the table is valid (no bad row at all, whatever `invalid_rows`).
pub fn check(cfg: &Config, json: bool, out: &mut dyn Write) -> Result<bool, CommandError> {
    let s = &cfg.sockets_mgm;
    let mut db = Database::connect(s)?;
    let rows = db.load_rows()?;
    let outcomes = examine_table(&rows, s.max_sockets, &SystemResolver);
    let bad = outcomes.iter().filter(|o| o.is_err()).count();
    let table_errors = outcomes
        .iter()
        .any(|o| o.as_ref().is_err_and(RowError::is_table_error));
    let valid = bad == 0;
    if json {
        let report = CheckReport {
            valid,
            rows: rows
                .iter()
                .zip(&outcomes)
                .map(|(raw, outcome)| match outcome {
                    Ok(d) => CheckRow {
                        id: raw.id,
                        socket: raw.socket.clone(),
                        parsed: Some(Parsed {
                            proto: d.proto,
                            ip: d.ip.to_string(),
                            port: d.port,
                            advertised: d.advertised.as_ref().map(ToString::to_string),
                            tag: d.tag.clone(),
                            flags: format_flags(&d.flags),
                            tos: d.tos,
                        }),
                        error: None,
                    },
                    Err(e) => CheckRow {
                        id: raw.id,
                        socket: raw.socket.clone(),
                        parsed: None,
                        error: Some(CheckError {
                            column: e.column.clone(),
                            value: e.value.clone(),
                            reason: e.reason.clone(),
                        }),
                    },
                })
                .collect(),
        };
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
        return Ok(valid);
    }
    for (i, (raw, outcome)) in rows.iter().zip(&outcomes).enumerate() {
        let name = match raw.id {
            Some(id) => format!("row {id}"),
            None => format!("row #{}", i + 1),
        };
        let socket = raw.socket.as_deref().unwrap_or("NULL");
        match outcome {
            Ok(d) => writeln!(out, "{name} {socket}: ok: {}", summary(d))?,
            Err(e) => {
                let at = match (&e.column, &e.value) {
                    (Some(c), Some(v)) if c != "socket" => format!("{c} {v:?}: "),
                    (Some(c), None) => format!("{c}: "),
                    _ => String::new(),
                };
                writeln!(out, "{name} {socket}: ERROR: {at}{}", e.reason)?
            }
        }
    }
    let verdict = if valid {
        "valid: a reload would apply every row".to_string()
    } else if table_errors || s.invalid_rows == InvalidRows::Reject {
        format!(
            "NOT valid: a reload would refuse the table and change nothing (invalid_rows = {})",
            s.invalid_rows.as_str()
        )
    } else {
        format!(
            "NOT valid: a reload would apply the {} valid rows and skip {bad} (invalid_rows = skip)",
            rows.len() - bad
        )
    };
    writeln!(
        out,
        "table {} in {}: {} rows, {} bad; {verdict}",
        s.table_name,
        db.url(),
        rows.len(),
        bad
    )?;
    Ok(valid)
}

/// `udp 127.0.0.1:5070`.
fn identity_text(d: &SocketDef) -> String {
    let (proto, addr) = d.identity();
    format!("{proto} {addr}")
}

/// `row 3 ("udp:127.0.0.1:5070")`, or the text alone without an id.
fn describe(d: &SocketDef) -> String {
    match d.id {
        Some(id) => format!("row {id} ({:?})", d.text),
        None => format!("row {:?}", d.text),
    }
}

/// `udp 127.0.0.1:5070, advertised 1.2.3.4:5070, tag demo, flags frag, tos 16`.
fn summary(d: &SocketDef) -> String {
    let mut s = identity_text(d);
    if let Some(a) = &d.advertised {
        s.push_str(&format!(", advertised {a}"));
    }
    if let Some(t) = &d.tag {
        s.push_str(&format!(", tag {t:?}"));
    }
    let flags = format_flags(&d.flags);
    if !flags.is_empty() {
        s.push_str(&format!(", flags {flags}"));
    }
    if d.tos != 0 {
        s.push_str(&format!(", tos {}", d.tos));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_one_line_and_cut_with_a_marker() {
        assert_eq!(cell("udp:127.0.0.1:5060"), "udp:127.0.0.1:5060");
        assert_eq!(cell("a\nb\tc"), "a\\nb\\tc");
        let exact = "x".repeat(MAX_CELL);
        assert_eq!(cell(&exact), exact);
        let long = cell(&"é".repeat(70_000));
        assert_eq!(
            long.chars().count(),
            MAX_CELL - 16 + "...(+69952 chars)".len()
        );
        assert!(long.ends_with("...(+69952 chars)"), "{long}");
    }
}
