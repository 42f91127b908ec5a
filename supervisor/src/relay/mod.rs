//! The relays table: which upstream (SIP core) each socket tag relays to, as the supervisor reads,
//! validates and hands it to the workers.
//!
//! This module owns the meaning of a relay row ([`parse_relay_row`], the destination URI in
//! [`destination`]), the validation of the sockets and relays tables as one ([`validate_tables`]:
//! one refusal, one `invalid_rows` rule for both), the warnings of `sipsockd check`
//! ([`warnings`]), the route table the workers get ([`routes::route_table`]) and the relay's
//! secret key file ([`secret::load_or_create_secret`]). All of it is pure but for host-name
//! resolution (through [`Resolver`]) and the secret file; it never touches a database, a socket
//! or a worker.

pub mod destination;
pub mod routes;
pub mod secret;

use crate::config::{Config, InvalidRows};
use crate::row::{
    cap_shown, check_length, check_tag, clean, examine_table, parse_socket, Identity, RawRow,
    Resolver, RowError, SocketDef,
};
use serde::Serialize;
use shm::Proto;
use std::collections::HashMap;
use std::net::SocketAddr;

pub use destination::{parse_destination, Upstream};
pub use routes::{route_table, Placed, RouteError};
pub use secret::{load_or_create_secret, SecretError, SECRET_LEN};

/// Longest `flags` value of a relay row accepted: the schema's CHAR(64).
pub const MAX_RELAY_FLAGS: usize = 64;

/// Highest `weight`.
pub const MAX_WEIGHT: u32 = 65535;

/// One relay row as read from the database: every value stripped of trailing blanks, an empty
/// string turned into `None` (integers as their decimal text).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RawRelayRow {
    /// `id` (the relays table always has one: the row's counters are kept by it).
    pub id: Option<i64>,
    /// `tag`: the socket tag this relay serves (NOT NULL).
    pub tag: Option<String>,
    /// `destination`: the SIP URI requests go to (NOT NULL).
    pub destination: Option<String>,
    /// `socket`: the socket to send from, in the sockets table's syntax (NULL: chosen per
    /// request).
    pub socket: Option<String>,
    /// `weight`, as text (NULL reads as 1).
    pub weight: Option<String>,
    /// `flags`: `insecure` or nothing.
    pub flags: Option<String>,
}

impl RawRelayRow {
    /// The row with [`clean`] applied to every value: what every backend returns and what
    /// `db relay add` stores.
    pub fn normalized(&self) -> RawRelayRow {
        RawRelayRow {
            id: self.id,
            tag: clean(self.tag.clone()),
            destination: clean(self.destination.clone()),
            socket: clean(self.socket.clone()),
            weight: clean(self.weight.clone()),
            flags: clean(self.flags.clone()),
        }
    }
}

/// The `socket` of a relay row: the text as stored and the socket it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutSocket {
    /// The text as stored.
    pub text: String,
    /// (proto, IP, port): the identity of a row of the sockets table.
    pub identity: Identity,
}

/// A valid relay row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayDef {
    /// The row's `id`.
    pub id: i64,
    /// The socket tag it serves.
    pub tag: String,
    /// Where requests go.
    pub upstream: Upstream,
    /// The socket to send from, when the row names one.
    pub socket: Option<OutSocket>,
    /// Weight in the rendezvous hashing, 1 to [`MAX_WEIGHT`].
    pub weight: u32,
    /// TLS without certificate verification (flag `insecure`, lab use only).
    pub insecure: bool,
}

impl RelayDef {
    /// `relays row 3 (tag "a" -> sip:192.0.2.1)`, naming the table as configured.
    pub fn describe(&self, table: &str) -> String {
        format!(
            "{table} row {} (tag {:?} -> {})",
            self.id, self.tag, self.upstream.uri
        )
    }

    /// What a duplicate is: the same tag sending to the same place the same way.
    fn key(&self) -> (&str, Proto, SocketAddr) {
        (&self.tag, self.upstream.transport, self.upstream.addr)
    }
}

/// The `flags` column of a relay row: `insecure` (any case), separated by commas, `|` or blanks.
/// Returns whether `insecure` is set.
pub fn parse_relay_flags(text: &str) -> Result<bool, String> {
    check_length(text, MAX_RELAY_FLAGS)?;
    let mut insecure = false;
    for word in text
        .split(|c: char| c == ',' || c == '|' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        if word.eq_ignore_ascii_case("insecure") {
            insecure = true;
        } else {
            return Err(format!("unknown flag {word:?} (known: insecure)"));
        }
    }
    Ok(insecure)
}

/// The `weight` column: an integer from 1 to [`MAX_WEIGHT`] (NULL is 1).
pub fn parse_weight(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a whole number (1-{MAX_WEIGHT})"));
    }
    match digits.parse::<u64>() {
        Ok(w) if (1..=u64::from(MAX_WEIGHT)).contains(&w) => Ok(w as u32),
        _ => Err(format!("{text} is out of range (1-{MAX_WEIGHT})")),
    }
}

/// Parse one relay row of table `table` on its own (the `socket` is parsed but not yet looked up
/// in the sockets table: [`examine_relays`] does that). On failure, the first bad column in the
/// order id, tag, destination, socket, weight, flags.
pub fn parse_relay_row(
    raw: &RawRelayRow,
    table: &str,
    resolver: &dyn Resolver,
) -> Result<RelayDef, RowError> {
    let raw = raw.normalized();
    let error = |column: &str, value: Option<&String>, reason: String| RowError {
        table: Some(Box::new(table.to_string())),
        id: raw.id,
        socket: None,
        column: Some(column.to_string()),
        value: value.map(|v| cap_shown(v)),
        reason,
    };
    let Some(id) = raw.id else {
        return Err(error(
            "id",
            None,
            "empty: every relay row needs an id (its counters are kept by it)".into(),
        ));
    };
    let Some(tag) = &raw.tag else {
        return Err(error(
            "tag",
            None,
            "empty: every relay row names the tag of the sockets it serves".into(),
        ));
    };
    check_tag(tag).map_err(|r| error("tag", Some(tag), r))?;
    let Some(text) = &raw.destination else {
        return Err(error(
            "destination",
            None,
            "empty: every relay row needs a destination".into(),
        ));
    };
    let upstream =
        parse_destination(text, resolver).map_err(|r| error("destination", Some(text), r))?;
    let socket = match &raw.socket {
        Some(s) => {
            let (proto, ip, port) =
                parse_socket(s, resolver).map_err(|r| error("socket", Some(s), r))?;
            if proto != upstream.transport {
                return Err(error(
                    "socket",
                    Some(s),
                    format!(
                        "a {proto} socket cannot send to a {} destination ({})",
                        upstream.transport, upstream.uri
                    ),
                ));
            }
            Some(OutSocket {
                text: s.clone(),
                identity: (proto, SocketAddr::new(ip, port)),
            })
        }
        None => None,
    };
    let weight = match &raw.weight {
        Some(w) => parse_weight(w).map_err(|r| error("weight", Some(w), r))?,
        None => 1,
    };
    let insecure = match &raw.flags {
        Some(f) => parse_relay_flags(f).map_err(|r| error("flags", Some(f), r))?,
        None => false,
    };
    if insecure && upstream.transport != Proto::Tls {
        return Err(error(
            "flags",
            raw.flags.as_ref(),
            format!(
                "insecure applies to TLS destinations only ({} is {})",
                upstream.uri, upstream.transport
            ),
        ));
    }
    Ok(RelayDef {
        id,
        tag: tag.clone(),
        upstream,
        socket,
        weight,
        insecure,
    })
}

/// The sockets table as the relays are checked against it: the valid rows by identity, and the
/// bad ones (by identity when their socket text parses, else by text), to say why a relay's
/// `socket` is missing.
struct SocketsSeen<'a> {
    valid: HashMap<Identity, &'a SocketDef>,
    bad: Vec<(Option<Identity>, &'a RowError)>,
}

impl<'a> SocketsSeen<'a> {
    fn new(outcomes: &'a [Result<SocketDef, RowError>], resolver: &dyn Resolver) -> Self {
        let mut seen = SocketsSeen {
            valid: HashMap::new(),
            bad: Vec::new(),
        };
        for o in outcomes {
            match o {
                Ok(def) => {
                    seen.valid.entry(def.identity()).or_insert(def);
                }
                Err(e) => {
                    let identity = e
                        .socket
                        .as_deref()
                        .and_then(|s| parse_socket(s, resolver).ok())
                        .map(|(p, ip, port)| (p, SocketAddr::new(ip, port)));
                    seen.bad.push((identity, e));
                }
            }
        }
        seen
    }

    /// Why `out` is not a socket a relay can send from, or `None` when it is.
    fn missing(&self, out: &OutSocket, sockets_table: &str) -> Option<String> {
        if self.valid.contains_key(&out.identity) {
            return None;
        }
        let (proto, addr) = out.identity;
        let bad = self.bad.iter().find(|(identity, e)| {
            *identity == Some(out.identity) || e.socket.as_deref() == Some(out.text.as_str())
        });
        Some(match bad {
            Some((_, e)) => {
                let row =
                    e.id.map_or_else(|| "a row".into(), |id| format!("row {id}"));
                format!(
                    "socket {proto} {addr} is {row} of table {sockets_table}, which is bad ({})",
                    e.reason
                )
            }
            None => format!("socket {proto} {addr} is not in table {sockets_table}"),
        })
    }
}

/// How each relay row fares, in table order: its definition, or why it is refused. A relay's
/// `socket` must be a valid row of the sockets table (`socket_outcomes`, as [`examine_table`]
/// gives them); two rows with the same tag, transport and address, and valid rows past
/// `max_relays`, are table errors (no column) on the rows that cause them.
pub fn examine_relays(
    rows: &[RawRelayRow],
    socket_outcomes: &[Result<SocketDef, RowError>],
    cfg: &Config,
    resolver: &dyn Resolver,
) -> Vec<Result<RelayDef, RowError>> {
    let table = cfg.relay.table_name.as_str();
    let seen = SocketsSeen::new(socket_outcomes, resolver);
    let mut outcomes: Vec<Result<RelayDef, RowError>> = rows
        .iter()
        .map(|raw| {
            let def = parse_relay_row(raw, table, resolver)?;
            if let Some(out) = &def.socket {
                if let Some(reason) = seen.missing(out, &cfg.sockets_mgm.table_name) {
                    return Err(RowError {
                        table: Some(Box::new(table.to_string())),
                        id: Some(def.id),
                        socket: None,
                        column: Some("socket".into()),
                        value: Some(cap_shown(&out.text)),
                        reason,
                    });
                }
            }
            Ok(def)
        })
        .collect();
    let mut first_of: HashMap<(String, Proto, SocketAddr), usize> = HashMap::new();
    for i in 0..outcomes.len() {
        let Ok(def) = &outcomes[i] else { continue };
        let (tag, transport, addr) = def.key();
        let key = (tag.to_string(), transport, addr);
        if let Some(&j) = first_of.get(&key) {
            let Ok(first) = &outcomes[j] else {
                unreachable!("only valid rows are recorded")
            };
            let reason = format!(
                "same destination ({transport} {addr}) for tag {tag:?} as {}",
                first.describe(table)
            );
            outcomes[i] = Err(relay_table_error(def, table, reason));
        } else {
            first_of.insert(key, i);
        }
    }
    let max = cfg.relay.max_relays as usize;
    let valid = outcomes.iter().filter(|o| o.is_ok()).count();
    if valid > max {
        let mut seen = 0usize;
        for o in outcomes.iter_mut() {
            if let Ok(def) = o {
                seen += 1;
                if seen > max {
                    let reason = format!(
                        "past max_relays: table {table} has {valid} valid rows and [relay] \
                         max_relays is {max} (the tables are refused as a whole)"
                    );
                    *o = Err(relay_table_error(def, table, reason));
                }
            }
        }
    }
    outcomes
}

fn relay_table_error(def: &RelayDef, table: &str, reason: String) -> RowError {
    RowError {
        table: Some(Box::new(table.to_string())),
        id: Some(def.id),
        socket: None,
        column: None,
        value: Some(cap_shown(&def.upstream.uri)),
        reason,
    }
}

/// Both tables, validated as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// The valid socket rows, in table order.
    pub sockets: Vec<SocketDef>,
    /// The valid relay rows, in table order.
    pub relays: Vec<RelayDef>,
    /// One error per bad row: the sockets table's, then the relays table's, each in table order.
    /// Its length is the `N` of `Table refused: N bad rows`.
    pub errors: Vec<RowError>,
    /// True when nothing may be applied: a bad row of either table in `reject` mode, or a table
    /// error (duplicate, past `max_sockets` or `max_relays`) in either mode.
    pub refused: bool,
}

/// Validate the sockets and relays tables as one: what a reload applies. With `invalid_rows =
/// "skip"` the bad rows of both are left out (a relay whose socket row is bad is then bad too);
/// with `reject` any bad row refuses both. `cfg` gives `max_sockets`, `invalid_rows`,
/// `max_relays` and the table names (in errors).
pub fn validate_tables(
    socket_rows: &[RawRow],
    relay_rows: &[RawRelayRow],
    cfg: &Config,
    resolver: &dyn Resolver,
) -> Tables {
    let socket_outcomes = examine_table(socket_rows, cfg.sockets_mgm.max_sockets, resolver);
    let relay_outcomes = examine_relays(relay_rows, &socket_outcomes, cfg, resolver);
    let mut tables = Tables {
        sockets: Vec::new(),
        relays: Vec::new(),
        errors: Vec::new(),
        refused: false,
    };
    let fault = |e: RowError, tables: &mut Tables| {
        tables.refused |= e.is_table_error() || cfg.sockets_mgm.invalid_rows == InvalidRows::Reject;
        tables.errors.push(e);
    };
    for o in socket_outcomes {
        match o {
            Ok(def) => tables.sockets.push(def),
            Err(e) => fault(e, &mut tables),
        }
    }
    for o in relay_outcomes {
        match o {
            Ok(def) => tables.relays.push(def),
            Err(e) => fault(e, &mut tables),
        }
    }
    tables
}

/// What `sipsockd check` warns about in valid tables (nothing here makes them invalid):
/// - a relay whose tag no socket has (no request can reach it);
/// - a relay without `socket` whose destination's transport has, for some socket of its tag, no
///   socket on that socket's IP (the arrival socket itself does not fit): requests arriving
///   there would get 503.
pub fn warnings(sockets: &[SocketDef], relays: &[RelayDef], table: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut orphans: Vec<(&str, Vec<i64>)> = Vec::new();
    for r in relays {
        if sockets
            .iter()
            .any(|s| s.tag.as_deref() == Some(r.tag.as_str()))
        {
            continue;
        }
        match orphans.iter_mut().find(|(t, _)| *t == r.tag) {
            Some((_, ids)) => ids.push(r.id),
            None => orphans.push((&r.tag, vec![r.id])),
        }
    }
    for (tag, ids) in orphans {
        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
        out.push(format!(
            "{table} row(s) {}: no socket has tag {tag:?}: no request reaches these relays",
            ids.join(", ")
        ));
    }
    for r in relays.iter().filter(|r| r.socket.is_none()) {
        let transport = r.upstream.transport;
        let stranded: Vec<String> = sockets
            .iter()
            .filter(|s| s.tag.as_deref() == Some(r.tag.as_str()) && s.proto != transport)
            .filter(|s| !sockets.iter().any(|o| o.proto == transport && o.ip == s.ip))
            .map(|s| s.text.clone())
            .collect();
        if !stranded.is_empty() {
            out.push(format!(
                "{}: no {transport} socket on the IP of {} and no socket set in the row: \
                 requests arriving there would get 503",
                r.describe(table),
                stranded.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
