//! The provisioning commands (`db init|add|rm|list`, `db relay add|rm|list`, `check`, the
//! provisioning of `run --demo`) and `options`, a one-shot SIP client to see a socket answer.
//!
//! Each provisioning command opens the database of `[sockets_mgm] db_url`, does one thing, prints
//! what it did to `out` and returns. They share the row rules of [`crate::row`] and
//! [`crate::relay`] with the daemon, so what `db add` and `db relay add` accept and what `check`
//! reports is exactly what a reload would do. None of them talks to a running daemon: a change
//! reaches it with `sockets_reload`.

use crate::config::{Config, InvalidRows};
use crate::db::{Database, DbError};
use crate::relay::{examine_relays, parse_relay_row, warnings, RawRelayRow, RelayDef};
use crate::row::{
    examine_table, format_flags, parse_row, parse_socket, RawRow, RowError, SocketDef,
    SystemResolver,
};
use serde::Serialize;
use shm::Proto;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

/// Errors of the provisioning commands.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// `db add` was given a row that a reload would refuse.
    #[error("refused, nothing added: {0}")]
    InvalidRow(RowError),
    /// `db relay add` was given a row that a reload would refuse (the column at fault, if any,
    /// its value and why).
    #[error("refused, nothing added: {0}")]
    InvalidRelay(String),
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
    /// `run --demo` cannot use its socket.
    #[error(
        "the demo socket {socket} cannot be used: {reason}; free the port or pick another \
         socket with `run --demo --demo-socket udp:127.0.0.1:PORT`"
    )]
    Demo {
        /// The demo socket.
        socket: String,
        /// Why not.
        reason: String,
    },
    /// `options` cannot send to its target.
    #[error("options {target}: {reason}")]
    Options {
        /// The socket given.
        target: String,
        /// Why not.
        reason: String,
    },
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
    let mut db = Database::create_config(cfg)?;
    let report = db.init()?;
    let what = |created: bool, version_row: bool| match (created, version_row) {
        (true, _) => "created",
        (false, true) => "already there; version row added",
        (false, false) => "already there; nothing to do",
    };
    for (table, created, version_row) in [
        (
            &cfg.sockets_mgm.table_name,
            report.created_table,
            report.created_version_row,
        ),
        (
            &cfg.relay.table_name,
            report.created_relay_table,
            report.created_relay_version_row,
        ),
    ] {
        writeln!(
            out,
            "table {table} in {}: {}",
            db.url(),
            what(created, version_row)
        )?;
    }
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
    let mut db = Database::connect_config(cfg)?;
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
    let mut db = Database::connect_config(cfg)?;
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
/// table view cuts values longer than 64 characters, with a marker).
pub fn db_list(cfg: &Config, json: bool, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut db = Database::connect_config(cfg)?;
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
    let header = ["ID", "SOCKET", "ADVERTISED", "TAG", "FLAGS", "TOS"];
    print_table(out, header, &lines)
}

/// A value as a table cell of `db list` / `db relay list`: `-` for NULL, else [`cell`].
fn shown(v: &Option<String>) -> String {
    v.as_deref().map_or_else(|| "-".into(), cell)
}

/// Columns aligned, two blanks apart, the header first.
fn print_table<const N: usize>(
    out: &mut dyn Write,
    header: [&str; N],
    lines: &[[String; N]],
) -> Result<(), CommandError> {
    let header = header.map(String::from);
    let mut widths = [0usize; N];
    for line in std::iter::once(&header).chain(lines) {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for line in std::iter::once(&header).chain(lines) {
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
    relays: Vec<CheckRelay>,
    warnings: Vec<String>,
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

/// One relay row of `check --json`: `parsed` or `error`.
#[derive(Serialize)]
struct CheckRelay {
    id: Option<i64>,
    tag: Option<String>,
    destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parsed: Option<ParsedRelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<CheckError>,
}

#[derive(Serialize)]
struct ParsedRelay {
    transport: Proto,
    host: String,
    address: String,
    socket: Option<String>,
    weight: u32,
    insecure: bool,
}

#[derive(Serialize)]
struct CheckError {
    column: Option<String>,
    value: Option<String>,
    reason: String,
}

impl From<&RowError> for CheckError {
    fn from(e: &RowError) -> CheckError {
        CheckError {
            column: e.column.clone(),
            value: e.value.clone(),
            reason: e.reason.clone(),
        }
    }
}

/// `sipsockd check`: read both tables once and print what a reload would apply: every row of
/// each, parsed, or its error, then the warnings about relays that no request, or only some, can
/// use (see [`warnings`]). Ok(true) when both tables are valid (no bad row at all, whatever
/// `invalid_rows`; warnings do not count).
pub fn check(cfg: &Config, json: bool, out: &mut dyn Write) -> Result<bool, CommandError> {
    let s = &cfg.sockets_mgm;
    let relay_table = &cfg.relay.table_name;
    let mut db = Database::connect_config(cfg)?;
    let (rows, relay_rows) = db.load_tables()?;
    let outcomes = examine_table(&rows, s.max_sockets, &SystemResolver);
    let relay_outcomes = examine_relays(&relay_rows, &outcomes, cfg, &SystemResolver);
    let bad = outcomes.iter().filter(|o| o.is_err()).count();
    let bad_relays = relay_outcomes.iter().filter(|o| o.is_err()).count();
    let table_errors = outcomes
        .iter()
        .any(|o| o.as_ref().is_err_and(RowError::is_table_error))
        || relay_outcomes
            .iter()
            .any(|o| o.as_ref().is_err_and(RowError::is_table_error));
    let valid = bad + bad_relays == 0;
    let defs: Vec<SocketDef> = outcomes.iter().filter_map(|o| o.clone().ok()).collect();
    let relay_defs: Vec<RelayDef> = relay_outcomes
        .iter()
        .filter_map(|o| o.clone().ok())
        .collect();
    let warned = warnings(&defs, &relay_defs, relay_table);
    if json {
        let report = CheckReport {
            valid,
            rows: rows
                .iter()
                .zip(&outcomes)
                .map(|(raw, outcome)| CheckRow {
                    id: raw.id,
                    socket: raw.socket.clone(),
                    parsed: outcome.as_ref().ok().map(|d| Parsed {
                        proto: d.proto,
                        ip: d.ip.to_string(),
                        port: d.port,
                        advertised: d.advertised.as_ref().map(ToString::to_string),
                        tag: d.tag.clone(),
                        flags: format_flags(&d.flags),
                        tos: d.tos,
                    }),
                    error: outcome.as_ref().err().map(CheckError::from),
                })
                .collect(),
            relays: relay_rows
                .iter()
                .zip(&relay_outcomes)
                .map(|(raw, outcome)| CheckRelay {
                    id: raw.id,
                    tag: raw.tag.clone(),
                    destination: raw.destination.clone(),
                    parsed: outcome.as_ref().ok().map(|d| ParsedRelay {
                        transport: d.upstream.transport,
                        host: d.upstream.host.clone(),
                        address: d.upstream.addr.to_string(),
                        socket: d.socket.as_ref().map(|o| o.text.clone()),
                        weight: d.weight,
                        insecure: d.insecure,
                    }),
                    error: outcome.as_ref().err().map(CheckError::from),
                })
                .collect(),
            warnings: warned,
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
            Err(e) => writeln!(out, "{name} {socket}: ERROR: {}", at_fault(e, "socket"))?,
        }
    }
    for (raw, outcome) in relay_rows.iter().zip(&relay_outcomes) {
        let name = match raw.id {
            Some(id) => format!("{relay_table} row {id}"),
            None => format!("{relay_table} row"),
        };
        let tag = raw.tag.as_deref().unwrap_or("NULL");
        let destination = raw.destination.as_deref().unwrap_or("NULL");
        let what = format!("{name} tag {tag:?} -> {destination}");
        match outcome {
            Ok(d) => writeln!(out, "{what}: ok: {}", relay_summary(d))?,
            Err(e) => writeln!(out, "{what}: ERROR: {}", at_fault(e, "destination"))?,
        }
    }
    for w in &warned {
        writeln!(out, "warning: {w}")?;
    }
    let all = rows.len() + relay_rows.len();
    let all_bad = bad + bad_relays;
    let verdict = if valid {
        "valid: a reload would apply every row".to_string()
    } else if table_errors || s.invalid_rows == InvalidRows::Reject {
        format!(
            "NOT valid: a reload would refuse the table and change nothing (invalid_rows = {})",
            s.invalid_rows.as_str()
        )
    } else {
        format!(
            "NOT valid: a reload would apply the {} valid rows and skip {all_bad} (invalid_rows = \
             skip)",
            all - all_bad
        )
    };
    match db.relay_table_exists() {
        Some(false) => writeln!(
            out,
            "table {relay_table} does not exist in {}: no relays (`sipsockd db init` creates it)",
            db.url()
        )?,
        _ => writeln!(
            out,
            "table {relay_table} in {}: {} rows, {bad_relays} bad",
            db.url(),
            relay_rows.len()
        )?,
    }
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

/// `tos "300": 300 is out of range`: the column and value at fault before the reason, but for the
/// column the line already shows (`shown`).
fn at_fault(e: &RowError, shown: &str) -> String {
    match (&e.column, &e.value) {
        (Some(c), Some(v)) if c != shown => format!("{c} {v:?}: {}", e.reason),
        (Some(c), None) => format!("{c}: {}", e.reason),
        _ => e.reason.clone(),
    }
}

/// `udp 192.0.2.1:5060, from socket udp:127.0.0.1:5070, weight 2, insecure`.
fn relay_summary(d: &RelayDef) -> String {
    let mut s = format!("{} {}", d.upstream.transport, d.upstream.addr);
    if let Some(o) = &d.socket {
        s.push_str(&format!(", from socket {}", o.text));
    }
    s.push_str(&format!(", weight {}", d.weight));
    if d.insecure {
        s.push_str(", insecure (certificate not verified)");
    }
    s
}

/// `sipsockd db relay add`: validate the row as a reload would (against the sockets table and the
/// relays already there: its socket must be a valid socket row, a duplicate or a full table is
/// refused), insert it, and warn about what a check would warn about it.
pub fn relay_add(cfg: &Config, row: &RawRelayRow, out: &mut dyn Write) -> Result<(), CommandError> {
    let table = &cfg.relay.table_name;
    let row = RawRelayRow {
        id: None,
        ..row.normalized()
    };
    let refused = |e: RowError| CommandError::InvalidRelay(at_fault(&e, ""));
    // Parsed on its own first, so a bad value is said before the database is asked.
    let probe = RawRelayRow {
        id: Some(0),
        ..row.clone()
    };
    parse_relay_row(&probe, table, &SystemResolver).map_err(refused)?;
    let mut db = Database::connect_config(cfg)?;
    // As for `db add`, the check and the insert are not one transaction.
    let (sockets, mut relays) = db.load_tables()?;
    if db.relay_table_exists() == Some(false) {
        return Err(DbError::TableMissing {
            table: table.clone(),
            url: db.url().to_string(),
        }
        .into());
    }
    // The new row last, with an id no row has: duplicates and max_relays land on it.
    let probe_id = relays.iter().filter_map(|r| r.id).max().unwrap_or(0) + 1;
    relays.push(RawRelayRow {
        id: Some(probe_id),
        ..row.clone()
    });
    let outcomes = examine_table(&sockets, u32::MAX, &SystemResolver);
    let mut relay_outcomes = examine_relays(&relays, &outcomes, cfg, &SystemResolver);
    let def = relay_outcomes
        .pop()
        .expect("the new row was examined")
        .map_err(refused)?;
    let id = db.insert_relay(&row)?;
    let added = RelayDef { id, ..def };
    writeln!(
        out,
        "added {}: {}",
        added.describe(table),
        relay_summary(&added)
    )?;
    let defs: Vec<SocketDef> = outcomes.into_iter().filter_map(Result::ok).collect();
    for w in warnings(&defs, std::slice::from_ref(&added), table) {
        writeln!(out, "warning: {w}")?;
    }
    if added.insecure {
        writeln!(
            out,
            "warning: {}: the destination's TLS certificate is not verified (lab use only)",
            added.describe(table)
        )?;
    }
    Ok(())
}

/// `sipsockd db relay rm --id N`.
pub fn relay_rm(cfg: &Config, id: i64, out: &mut dyn Write) -> Result<(), CommandError> {
    let table = &cfg.relay.table_name;
    let mut db = Database::connect_config(cfg)?;
    let row = db
        .load_relays()?
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.id == Some(id));
    if db.delete_relay(id)? == 0 {
        return Err(CommandError::NotFound(format!(
            "no row with id {id} in {table}"
        )));
    }
    match row {
        Some(r) => writeln!(
            out,
            "removed {table} row {id} (tag {:?} -> {})",
            r.tag.unwrap_or_default(),
            r.destination.unwrap_or_default()
        )?,
        None => writeln!(out, "removed {table} row {id}")?,
    }
    Ok(())
}

/// One row of `db relay list --json`: as stored, `weight` a number when it is one.
#[derive(Serialize)]
struct ListedRelay {
    id: Option<i64>,
    tag: Option<String>,
    destination: Option<String>,
    socket: Option<String>,
    weight: serde_json::Value,
    flags: Option<String>,
}

/// `sipsockd db relay list`: the relay rows as stored (`--json`: an array of
/// `{"id", "tag", "destination", "socket", "weight", "flags"}`, null for NULL, every value whole;
/// the table view cuts long values as `db list` does).
pub fn relay_list(cfg: &Config, json: bool, out: &mut dyn Write) -> Result<(), CommandError> {
    let table = &cfg.relay.table_name;
    let mut db = Database::connect_config(cfg)?;
    let Some(rows) = db.load_relays()? else {
        return Err(DbError::TableMissing {
            table: table.clone(),
            url: db.url().to_string(),
        }
        .into());
    };
    if json {
        let listed: Vec<ListedRelay> = rows
            .into_iter()
            .map(|r| ListedRelay {
                id: r.id,
                tag: r.tag,
                destination: r.destination,
                socket: r.socket,
                weight: match r.weight {
                    Some(w) => w
                        .parse::<i64>()
                        .map_or(serde_json::Value::String(w), Into::into),
                    None => serde_json::Value::Null,
                },
                flags: r.flags,
            })
            .collect();
        serde_json::to_writer_pretty(&mut *out, &listed)?;
        writeln!(out)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(out, "no rows in table {table} ({})", db.url())?;
        return Ok(());
    }
    let lines: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.id.map_or_else(|| "-".into(), |i| i.to_string()),
                shown(&r.tag),
                shown(&r.destination),
                shown(&r.socket),
                shown(&r.weight),
                shown(&r.flags),
            ]
        })
        .collect();
    let header = ["ID", "TAG", "DESTINATION", "SOCKET", "WEIGHT", "FLAGS"];
    print_table(out, header, &lines)
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

/// The socket `run --demo` provisions when the table is empty.
pub const DEMO_SOCKET: &str = "udp:127.0.0.1:5060";

/// What `run --demo` does before the daemon starts: create the table when missing (a fresh
/// machine gets `./sipsockd.db` with the default configuration); when it has no row, check that
/// `socket` (a UDP socket) can be bound and add it; either way say what runs and how to send it
/// an OPTIONS (`program`: how to call sipsockd, see [`invocation`]). A table that already has
/// rows is left as it is.
pub fn demo(
    cfg: &Config,
    socket: &str,
    program: &str,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let demo_error = |reason: String| CommandError::Demo {
        socket: socket.to_string(),
        reason,
    };
    let mut db = Database::create_config(cfg)?;
    db.init()?;
    let rows = db.load_rows()?;
    drop(db);
    let table = &cfg.sockets_mgm.table_name;
    let url = cfg.sockets_mgm.db_url_redacted();
    if !rows.is_empty() {
        writeln!(
            out,
            "demo: table {table} in {url} already has {} row(s); running them as they are, \
             nothing added (`sipsockd db list` shows them)",
            rows.len()
        )?;
        return Ok(());
    }
    let row = RawRow {
        socket: Some(socket.to_string()),
        ..RawRow::default()
    };
    let def = parse_row(&row, &SystemResolver)
        .map_err(|mut errors| demo_error(errors.remove(0).to_string()))?;
    if def.proto != Proto::Udp {
        return Err(demo_error("the demo serves UDP: write udp:IP:PORT".into()));
    }
    // Said now, clearly, rather than as a bind error in the daemon's log: another SIP server
    // often holds 5060.
    UdpSocket::bind((def.ip, def.port)).map_err(|e| demo_error(e.to_string()))?;
    db_add(cfg, &row, out)?;
    let target = identity_text(&def).replace(' ', ":");
    let sipp_target = SocketAddr::new(def.ip, def.port);
    writeln!(
        out,
        "demo: {target} answers OPTIONS with 200 OK once the log below says \"ready\". From \
         another terminal:\n  \
         {program} options {target}\n  \
         sipp -sf tests/sipp/options.xml -m 1 {sipp_target}     (if SIPp is installed)\n\
         demo: add a socket and apply it: {program} db add udp:127.0.0.1:5070 && {program} mi \
         sockets_reload\n\
         demo: see what runs: {program} shm-dump; Ctrl-C stops the daemon."
    )?;
    Ok(())
}

/// How to call this very binary from the working directory, with `--config` when one was given:
/// what the hints of `run --demo` print.
pub fn invocation(config: Option<&Path>) -> String {
    let program = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let cwd = std::env::current_dir().ok()?;
            exe.strip_prefix(&cwd).ok().map(|p| p.display().to_string())
        })
        .unwrap_or_else(|| "sipsockd".into());
    match config {
        Some(c) => format!("{program} --config {}", c.display()),
        None => program,
    }
}

/// How `options` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionsOutcome {
    /// A 2xx reply came.
    Success,
    /// Another reply came.
    OtherReply,
    /// No reply within the time allowed.
    NoReply,
}

/// `sipsockd options SOCKET`: send one OPTIONS to a UDP socket (`udp:host[:port]`), resending it
/// every 500 ms (SIP's T1) until a reply with its Call-ID comes or `timeout` passes, and print the
/// reply.
pub fn options(
    target: &str,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<OptionsOutcome, CommandError> {
    let fail = |reason: String| CommandError::Options {
        target: target.to_string(),
        reason,
    };
    let (proto, ip, port) = parse_socket(target, &SystemResolver).map_err(fail)?;
    if proto != Proto::Udp {
        return Err(fail("only udp sockets: udp:host[:port]".into()));
    }
    let to = SocketAddr::new(ip, port);
    let any = match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let sock = UdpSocket::bind((any, 0)).map_err(|e| fail(e.to_string()))?;
    sock.connect(to).map_err(|e| fail(e.to_string()))?;
    let local = sock.local_addr().map_err(|e| fail(e.to_string()))?;
    let nonce = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos()
    );
    let call_id = format!("{nonce}@sipsockd-options");
    let request = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{nonce};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:sipsockd@{local}>;tag={nonce}\r\nTo: <sip:{to}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65535];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        // A refused send (ICMP port unreachable from an earlier one) is retried like a loss.
        let _ = sock.send(request.as_bytes());
        let wait_until = Instant::now() + left.min(Duration::from_millis(500));
        while let Some(wait) = wait_until.checked_duration_since(Instant::now()) {
            if wait.is_zero() || sock.set_read_timeout(Some(wait)).is_err() {
                break;
            }
            let Ok(n) = sock.recv(&mut buf) else {
                // Timed out, or refused (nothing listens yet): send again when the wait is over.
                std::thread::sleep(wait_until.saturating_duration_since(Instant::now()));
                break;
            };
            let reply = String::from_utf8_lossy(&buf[..n]);
            let ours = reply.lines().any(|line| {
                line.split_once(':').is_some_and(|(name, value)| {
                    let name = name.trim();
                    (name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i"))
                        && value.trim() == call_id
                })
            });
            if !ours {
                continue;
            }
            write!(out, "{reply}")?;
            let status = reply.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok());
            return Ok(match status {
                Some(200..=299) => OptionsOutcome::Success,
                _ => OptionsOutcome::OtherReply,
            });
        }
    }
    Ok(OptionsOutcome::NoReply)
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
