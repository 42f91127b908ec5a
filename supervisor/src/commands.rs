//! The provisioning commands (`db init|add|rm|list`, `check`, the provisioning of `run --demo`)
//! and `options`, a one-shot SIP client to see a socket answer.
//!
//! Each provisioning command opens the database of `[sockets_mgm] db_url`, does one thing, prints
//! what it did to `out` and returns. They share the row rules of [`crate::row`] with the daemon,
//! so what `db add` accepts and what `check` reports is exactly what a reload would do. None of
//! them talks to a running daemon: a change reaches it with `sockets_reload`.

use crate::config::{Config, InvalidRows};
use crate::db::{Database, DbError};
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
/// table view cuts values longer than 64 characters, with a marker).
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
    let mut db = Database::create(&cfg.sockets_mgm)?;
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
