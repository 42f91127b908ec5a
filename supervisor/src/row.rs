//! Socket rows: the raw text read from the table, its parsed form, and the table validation.
//!
//! Pure: no I/O except host-name resolution, which goes through a [`Resolver`] so tests can
//! substitute their own. This module never touches a database or a socket; it decides what a row
//! means and whether a table may be applied, and says why not in words an operator can act on.
//!
//! Every text field of a [`SocketDef`] is at most [`MAX_TEXT`] bytes (the schema's CHAR(128)), so
//! fixed-size records (the shm slots) can hold them.

use serde::Serialize;
use shm::Proto;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use crate::config::InvalidRows;

/// One row as read from the database: every value already stripped of trailing blanks, and an empty
/// string turned into `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RawRow {
    /// The row's `id`, when the table has an `id` column.
    pub id: Option<i64>,
    /// `socket` (NOT NULL in the schema; `None` here is a bad row).
    pub socket: Option<String>,
    /// `advertised`.
    pub advertised: Option<String>,
    /// `tag`.
    pub tag: Option<String>,
    /// `flags`.
    pub flags: Option<String>,
    /// `tos`, as text (an integer column is read as its decimal text).
    pub tos: Option<String>,
}

/// Socket options a row can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Flags {
    /// Bind even if the address is not (yet) on the host (IP_FREEBIND / IPV6_FREEBIND).
    pub anycast: bool,
    /// Allow fragmentation: path-MTU discovery off.
    pub frag: bool,
    /// SO_REUSEPORT.
    pub reuse_port: bool,
}

/// The running identity of a socket: two rows with the same identity are the same socket.
pub type Identity = (Proto, SocketAddr);

/// An advertised address: host as written (IP or name) and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Advertised {
    /// Host as written; IPv6 without brackets.
    pub host: String,
    /// Port (defaults to the socket's).
    pub port: u16,
}

/// A valid row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketDef {
    /// The row's `id`, if the table has one.
    pub id: Option<i64>,
    /// The `socket` text exactly as stored (after stripping trailing blanks).
    pub text: String,
    /// Transport.
    pub proto: Proto,
    /// Resolved IP.
    pub ip: IpAddr,
    /// Port (explicit or the proto's default).
    pub port: u16,
    /// Advertised address, if any.
    pub advertised: Option<Advertised>,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Flags.
    pub flags: Flags,
    /// TOS byte; 0 means none.
    pub tos: u8,
}

impl SocketDef {
    /// The running identity (proto, IP, port).
    pub fn identity(&self) -> Identity {
        (self.proto, SocketAddr::new(self.ip, self.port))
    }
}

/// Why a row was refused.
///
/// Serialized as the MI `data` entries want it: keys that do not apply are left out. An error
/// about a row of the sockets table has no `table` key (the shape `sockets_reload` always gave);
/// one about a row of the relays table has `"table": "<[relay] table_name>"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// The table of the row when it is not the sockets table (the relays table's name; see
    /// [`RowError::table`]). Boxed so that a `RowError`, the error of every row parser, stays
    /// small.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<Box<String>>,
    /// The row's `id`, if the table has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// The row's socket text, if any ([capped](cap_shown) at [`MAX_SHOWN`] bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// The column at fault (`socket`, `advertised`, `tag`, `flags`, `tos`), or `None` for a
    /// table-level error (duplicate identity, too many rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The offending value ([capped](cap_shown) at [`MAX_SHOWN`] bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// What is wrong, in words.
    pub reason: String,
}

/// Longest `socket`, `advertised`, `tag` or `flags` value accepted: the schema's CHAR(128).
pub const MAX_TEXT: usize = 128;

/// Most bytes of a row's text a [`RowError`] repeats: a table of many huge bad values would
/// otherwise make a reply (and a log line) of megabytes. The reason still gives the real length.
pub const MAX_SHOWN: usize = 256;

/// `text` when it fits in [`MAX_SHOWN`] bytes; else its first bytes up to [`MAX_SHOWN`], cut on a
/// character boundary, then `… (N bytes)` with its whole length.
pub fn cap_shown(text: &str) -> String {
    if text.len() <= MAX_SHOWN {
        return text.to_owned();
    }
    let cut = (0..=MAX_SHOWN)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}… ({} bytes)", &text[..cut], text.len())
}
/// Longest `tos` value accepted: the schema's CHAR(32).
pub const MAX_TOS_TEXT: usize = 32;

/// The one message for a transport sipsockd does not serve (the seed: SIP listeners only).
fn unsupported_protocol(proto: &str) -> String {
    format!("unsupported protocol {proto} for dynamic sockets (SIP only: udp, tcp, tls, ws, wss)")
}

/// The database rule for a value: trailing blanks stripped (PostgreSQL pads CHAR columns), and an
/// empty string is NULL.
pub fn clean(value: Option<String>) -> Option<String> {
    let mut v = value?;
    v.truncate(v.trim_end().len());
    (!v.is_empty()).then_some(v)
}

impl RawRow {
    /// The row with [`clean`] applied to every value: what every backend returns and what
    /// `db add` stores.
    pub fn normalized(&self) -> RawRow {
        RawRow {
            id: self.id,
            socket: clean(self.socket.clone()),
            advertised: clean(self.advertised.clone()),
            tag: clean(self.tag.clone()),
            flags: clean(self.flags.clone()),
            tos: clean(self.tos.clone()),
        }
    }
}

impl fmt::Display for Advertised {
    /// `host:port`, an IPv6 host in brackets: the form used in Contact headers and `sockets_list`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl SocketDef {
    /// The row that prints this definition: `parse_row(&def.to_raw(), r) == Ok(def)` for a
    /// resolver that answers as the one that produced `def`. The advertised port is left out when
    /// it is the socket's (it defaults to it), so the text never grows past what was parsed.
    pub fn to_raw(&self) -> RawRow {
        let advertised = self.advertised.as_ref().map(|a| {
            if a.port != self.port {
                a.to_string()
            } else if a.host.contains(':') {
                format!("[{}]", a.host)
            } else {
                a.host.clone()
            }
        });
        let flags = format_flags(&self.flags);
        RawRow {
            id: self.id,
            socket: Some(self.text.clone()),
            advertised,
            tag: self.tag.clone(),
            flags: (!flags.is_empty()).then_some(flags),
            tos: (self.tos != 0).then(|| self.tos.to_string()),
        }
    }

    /// `host:port` to put in a Contact header: the advertised address when the row has one, else
    /// the bound IP and port (IPv6 in brackets).
    pub fn advertised_or_bound(&self) -> String {
        match &self.advertised {
            Some(a) => a.to_string(),
            None => SocketAddr::new(self.ip, self.port).to_string(),
        }
    }
}

/// The flags comma-joined in the order `anycast,frag,reuse_port` (as OpenSIPS prints them); `""`
/// when none is set.
pub fn format_flags(flags: &Flags) -> String {
    let mut names = Vec::new();
    if flags.anycast {
        names.push("anycast");
    }
    if flags.frag {
        names.push("frag");
    }
    if flags.reuse_port {
        names.push("reuse_port");
    }
    names.join(",")
}

impl RowError {
    /// The table of the row, when it is not the sockets table.
    pub fn table(&self) -> Option<&str> {
        self.table.as_deref().map(String::as_str)
    }

    /// True for an error about the table rather than one value (duplicate identity, more rows
    /// than `max_sockets`): such an error refuses the table whatever `invalid_rows` says.
    pub fn is_table_error(&self) -> bool {
        self.column.is_none()
    }
}

impl fmt::Display for RowError {
    /// `row 3: tos "300": 300 is out of range (0-255)`, naming the socket when the column at fault
    /// is another one; a relays row is `relays row 3: weight "0": ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(table) = &self.table {
            write!(f, "{table} ")?;
        }
        match self.id {
            Some(id) => write!(f, "row {id}")?,
            None => f.write_str("row")?,
        }
        match (&self.column, &self.socket) {
            (Some(c), _) if c == "socket" => {}
            (_, Some(s)) => write!(f, " (socket {s:?})")?,
            (_, None) if self.id.is_none() => f.write_str(" without socket")?,
            _ => {}
        }
        match (&self.column, &self.value) {
            (Some(c), Some(v)) => write!(f, ": {c} {v:?}: {}", self.reason),
            (Some(c), None) => write!(f, ": {c}: {}", self.reason),
            (None, _) => write!(f, ": {}", self.reason),
        }
    }
}

impl std::error::Error for RowError {}

/// Turns a host name into addresses. [`SystemResolver`] is the real one; tests may use their own.
pub trait Resolver {
    /// Every address `host` stands for, the preferred first; an error text when none.
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String>;
}

/// The host's resolver: an IP literal as is, then a network interface name (its addresses, IPv4
/// first), then DNS / `/etc/hosts` (IPv4 first, as OpenSIPS resolves by default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some(addrs) = interface_addresses(host) {
            if addrs.is_empty() {
                return Err(format!(
                    "network interface {host} has no IPv4 or global IPv6 address"
                ));
            }
            return Ok(addrs);
        }
        let found = (host, 0u16)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve host {host}: {e}"))?;
        let mut ips: Vec<IpAddr> = Vec::new();
        for a in found {
            if !ips.contains(&a.ip()) {
                ips.push(a.ip());
            }
        }
        // Stable: keeps the resolver's order within each family.
        ips.sort_by_key(IpAddr::is_ipv6);
        Ok(ips)
    }
}

/// The usable addresses of the interface called `name` (IPv4 first, then IPv6 without link-local
/// ones, which cannot be bound without a scope), or `None` when no interface has that name.
fn interface_addresses(name: &str) -> Option<Vec<IpAddr>> {
    let interfaces = nix::ifaddrs::getifaddrs().ok()?;
    let mut seen = false;
    let mut ips = Vec::new();
    for ifa in interfaces.filter(|i| i.interface_name == name) {
        seen = true;
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            ips.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let ip = v6.ip();
            if (ip.segments()[0] & 0xffc0) != 0xfe80 {
                ips.push(IpAddr::V6(ip));
            }
        }
    }
    ips.sort_by_key(IpAddr::is_ipv6);
    ips.dedup();
    seen.then_some(ips)
}

/// A host as written before the port: a bracketed IPv6 literal, or anything else (an IPv4 literal,
/// a host name, an interface name).
pub(crate) enum Host<'a> {
    V6(&'a str, Ipv6Addr),
    Name(&'a str),
}

/// Split `host[:port]` (IPv6 in brackets). An unbracketed IPv6 address is refused: its last group
/// could not be told from a port.
pub(crate) fn split_host_port(s: &str) -> Result<(Host<'_>, Option<&str>), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after the IPv6 address".to_string())?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("{inside:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            a => Some(
                a.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {a:?} after ']' (expected :port)"))?,
            ),
        };
        return Ok((Host::V6(inside, ip), port));
    }
    match s.split_once(':') {
        None => Ok((Host::Name(s), None)),
        Some((h, p)) if !p.contains(':') => Ok((Host::Name(h), Some(p))),
        Some(_) => {
            Err("an IPv6 address must be written in brackets, e.g. [2001:db8::1]:5060".to_string())
        }
    }
}

/// A port: decimal digits, 1 to 65535.
pub(crate) fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() {
        return Err("empty port after ':'".into());
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {p:?} is not a number"));
    }
    match p.parse::<u32>() {
        Ok(0) => Err("port 0 cannot be listened on (1-65535)".into()),
        Ok(n) if n <= 65535 => Ok(n as u16),
        _ => Err(format!("port {p} is out of range (1-65535)")),
    }
}

/// A host name or interface name: letters, digits, '.', '-', '_'; not a malformed IPv4 address.
pub(crate) fn check_name(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("missing host".into());
    }
    if h.len() > 253 {
        return Err("host name longer than 253 characters".into());
    }
    if let Some(c) = h
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!("invalid character {c:?} in host {h:?}"));
    }
    if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // All digits and dots but not an IPv4 address (e.g. 300.1.1.1): a typo, not a name.
        return Err(format!("{h:?} is not a valid IPv4 address"));
    }
    Ok(())
}

pub(crate) fn check_length(value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!("too long: {} bytes (at most {max})", value.len()));
    }
    Ok(())
}

/// The `socket` column: `proto:host[:port]` -> (proto, the one IP, port).
pub fn parse_socket(text: &str, resolver: &dyn Resolver) -> Result<(Proto, IpAddr, u16), String> {
    check_length(text, MAX_TEXT)?;
    if text.chars().any(char::is_whitespace) {
        return Err("contains blanks".into());
    }
    let (proto_text, rest) = text
        .split_once(':')
        .ok_or_else(|| "expected proto:host[:port], e.g. udp:192.0.2.10:5060".to_string())?;
    if proto_text.is_empty()
        || !proto_text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || proto_text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(
            "missing protocol: expected proto:host[:port], e.g. udp:192.0.2.10:5060".into(),
        );
    }
    let proto: Proto = proto_text
        .parse()
        .map_err(|()| unsupported_protocol(proto_text))?;
    let (host, port) = split_host_port(rest)?;
    let port = match port {
        Some(p) => parse_port(p)?,
        None => proto.default_port(),
    };
    let ip = match host {
        Host::V6(_, ip) => IpAddr::V6(ip),
        Host::Name(h) => match h.parse::<Ipv4Addr>() {
            Ok(ip) => IpAddr::V4(ip),
            Err(_) => {
                check_name(h)?;
                resolve_one(
                    &format!("socket {text}"),
                    h,
                    resolver,
                    "one listener per row",
                )?
            }
        },
    };
    Ok((proto, ip, port))
}

/// The seed's one-listener rule, also used for relay destinations: a name standing for several
/// addresses gets the first, with a warning naming `what` and saying why one (`rule`), rather than
/// several.
pub(crate) fn resolve_one(
    what: &str,
    host: &str,
    resolver: &dyn Resolver,
    rule: &str,
) -> Result<IpAddr, String> {
    let ips = resolver.resolve(host)?;
    match ips.as_slice() {
        [] => Err(format!("host {host} resolves to no address")),
        [ip] => Ok(*ip),
        [first, ..] => {
            let all: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            log::warn!(
                "{what}: {host} resolves to {} addresses ({}); using the first, {first} \
                 ({rule}: write the IP to choose)",
                ips.len(),
                all.join(", ")
            );
            Ok(*first)
        }
    }
}

/// The `advertised` column: `host[:port]` (IPv6 in brackets), the port defaulting to the socket's.
/// The host is kept as written: it goes into SIP headers, not to a resolver.
pub fn parse_advertised(text: &str, socket_port: u16) -> Result<Advertised, String> {
    check_length(text, MAX_TEXT)?;
    if text.chars().any(char::is_whitespace) {
        return Err("contains blanks".into());
    }
    let (host, port) = split_host_port(text)?;
    let host = match host {
        Host::V6(written, _) => written.to_string(),
        Host::Name(h) => {
            if h.parse::<Ipv4Addr>().is_err() {
                check_name(h)?;
            }
            h.to_string()
        }
    };
    let port = match port {
        Some(p) => parse_port(p)?,
        None => socket_port,
    };
    Ok(Advertised { host, port })
}

/// The `flags` column: `anycast`, `frag`, `reuse_port` (any case), separated by commas, `|` or
/// blanks, in any mix.
pub fn parse_flags(text: &str) -> Result<Flags, String> {
    check_length(text, MAX_TEXT)?;
    let mut flags = Flags::default();
    for word in text
        .split(|c: char| c == ',' || c == '|' || c.is_whitespace())
        .filter(|w| !w.is_empty())
    {
        match word.to_ascii_lowercase().as_str() {
            "anycast" => flags.anycast = true,
            "frag" => flags.frag = true,
            "reuse_port" => flags.reuse_port = true,
            _ => {
                return Err(format!(
                    "unknown flag {word:?} (known: anycast, frag, reuse_port)"
                ))
            }
        }
    }
    Ok(flags)
}

/// The TOS names OpenSIPS accepts, with their values.
pub const TOS_NAMES: &[(&str, u8)] = &[
    ("IPTOS_LOWDELAY", 0x10),
    ("IPTOS_THROUGHPUT", 0x08),
    ("IPTOS_RELIABILITY", 0x04),
    ("IPTOS_MINCOST", 0x02),
    ("IPTOS_LOWCOST", 0x02),
];

/// The `tos` column: a name from [`TOS_NAMES`] (any case) or 0-255, decimal or `0x` hex; 0 = none.
pub fn parse_tos(text: &str) -> Result<u8, String> {
    check_length(text, MAX_TOS_TEXT)?;
    if let Some((_, v)) = TOS_NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(text)) {
        return Ok(*v);
    }
    let help = "expected 0-255 (decimal or 0x hex) or one of IPTOS_LOWDELAY, IPTOS_THROUGHPUT, \
                IPTOS_RELIABILITY, IPTOS_MINCOST, IPTOS_LOWCOST";
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!("{text:?} is not a TOS: {help}"));
    }
    match u32::from_str_radix(digits, radix) {
        Ok(v) if v <= 255 => Ok(v as u8),
        _ => Err(format!("{text} is out of range (0-255)")),
    }
}

/// The `tag` column: free text without control characters.
pub(crate) fn check_tag(text: &str) -> Result<(), String> {
    check_length(text, MAX_TEXT)?;
    if text.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}

/// Parse one row. The row is [normalized](RawRow::normalized) first. On failure the vector holds
/// one error: the first bad column in the order socket, advertised, tag, flags, tos (one error per
/// bad row, as the table report shows them).
pub fn parse_row(raw: &RawRow, resolver: &dyn Resolver) -> Result<SocketDef, Vec<RowError>> {
    parse_one(raw, resolver).map_err(|e| vec![e])
}

fn parse_one(raw: &RawRow, resolver: &dyn Resolver) -> Result<SocketDef, RowError> {
    let raw = raw.normalized();
    let error = |column: &str, value: Option<&String>, reason: String| RowError {
        table: None,
        id: raw.id,
        socket: raw.socket.as_deref().map(cap_shown),
        column: Some(column.to_string()),
        value: value.map(|v| cap_shown(v)),
        reason,
    };
    let Some(text) = &raw.socket else {
        return Err(error(
            "socket",
            None,
            "empty: every row needs a socket".into(),
        ));
    };
    let (proto, ip, port) =
        parse_socket(text, resolver).map_err(|r| error("socket", Some(text), r))?;
    let advertised = match &raw.advertised {
        Some(a) => Some(parse_advertised(a, port).map_err(|r| error("advertised", Some(a), r))?),
        None => None,
    };
    if let Some(t) = &raw.tag {
        check_tag(t).map_err(|r| error("tag", Some(t), r))?;
    }
    let flags = match &raw.flags {
        Some(f) => parse_flags(f).map_err(|r| error("flags", Some(f), r))?,
        None => Flags::default(),
    };
    let tos = match &raw.tos {
        Some(t) => parse_tos(t).map_err(|r| error("tos", Some(t), r))?,
        None => 0,
    };
    Ok(SocketDef {
        id: raw.id,
        text: text.clone(),
        proto,
        ip,
        port,
        advertised,
        tag: raw.tag.clone(),
        flags,
        tos,
    })
}

/// How each row of a table fares, in table order: its definition, or why it is refused. Table
/// errors (a duplicate identity, rows past `max_sockets`) land on the rows that cause them and
/// have no column.
pub fn examine_table(
    rows: &[RawRow],
    max_sockets: u32,
    resolver: &dyn Resolver,
) -> Vec<Result<SocketDef, RowError>> {
    let mut outcomes: Vec<Result<SocketDef, RowError>> =
        rows.iter().map(|r| parse_one(r, resolver)).collect();
    let mut first_of: HashMap<Identity, usize> = HashMap::new();
    for i in 0..outcomes.len() {
        let Ok(def) = &outcomes[i] else { continue };
        let identity = def.identity();
        if let Some(&j) = first_of.get(&identity) {
            let Ok(first) = &outcomes[j] else {
                unreachable!("only valid rows are recorded")
            };
            let reason = format!(
                "same socket ({} {}) as {}",
                identity.0,
                identity.1,
                describe(first)
            );
            outcomes[i] = Err(table_error(def, reason));
        } else {
            first_of.insert(identity, i);
        }
    }
    let valid = outcomes.iter().filter(|o| o.is_ok()).count();
    if valid > max_sockets as usize {
        let mut seen = 0usize;
        for o in outcomes.iter_mut() {
            if let Ok(def) = o {
                seen += 1;
                if seen > max_sockets as usize {
                    let reason = format!(
                        "past max_sockets: the table has {valid} valid rows and max_sockets is \
                         {max_sockets} (the table is refused as a whole)"
                    );
                    *o = Err(table_error(def, reason));
                }
            }
        }
    }
    outcomes
}

fn describe(def: &SocketDef) -> String {
    match def.id {
        Some(id) => format!("row {id} ({:?})", def.text),
        None => format!("row {:?}", def.text),
    }
}

fn table_error(def: &SocketDef, reason: String) -> RowError {
    // A valid row's text is at most MAX_TEXT bytes; capped all the same, should that change.
    RowError {
        table: None,
        id: def.id,
        socket: Some(cap_shown(&def.text)),
        column: None,
        value: Some(cap_shown(&def.text)),
        reason,
    }
}

/// A validated table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The valid rows, in table order. When `refused` they must not be applied; they are kept for
    /// reports.
    pub defs: Vec<SocketDef>,
    /// One error per bad row, in table order.
    pub errors: Vec<RowError>,
    /// True when the table must not be applied: a bad row in `reject` mode, or a table error
    /// (duplicate identity, more valid rows than `max_sockets`) in either mode.
    pub refused: bool,
}

/// Validate a whole table (see [`examine_table`]) and decide whether it may be applied.
pub fn validate_table(
    rows: &[RawRow],
    max_sockets: u32,
    mode: InvalidRows,
    resolver: &dyn Resolver,
) -> Validated {
    let mut v = Validated {
        defs: Vec::new(),
        errors: Vec::new(),
        refused: false,
    };
    for outcome in examine_table(rows, max_sockets, resolver) {
        match outcome {
            Ok(def) => v.defs.push(def),
            Err(e) => {
                v.refused |= e.is_table_error() || mode == InvalidRows::Reject;
                v.errors.push(e);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A fixed name table: deterministic resolution for names that are not on this host.
    struct Names(Vec<(&'static str, Vec<IpAddr>)>);

    impl Resolver for Names {
        fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
            self.0
                .iter()
                .find(|(n, _)| *n == host)
                .map(|(_, ips)| ips.clone())
                .ok_or_else(|| format!("unknown host {host}"))
        }
    }

    fn names() -> Names {
        Names(vec![
            ("sip.example", vec!["192.0.2.7".parse().unwrap()]),
            (
                "multi.example",
                vec!["192.0.2.8".parse().unwrap(), "192.0.2.9".parse().unwrap()],
            ),
            ("v6.example", vec!["2001:db8::7".parse().unwrap()]),
            ("void.example", vec![]),
        ])
    }

    fn raw(socket: &str) -> RawRow {
        RawRow {
            socket: Some(socket.to_string()),
            ..RawRow::default()
        }
    }

    fn ok(row: &RawRow) -> SocketDef {
        parse_row(row, &names()).unwrap_or_else(|e| panic!("{row:?}: {e:?}"))
    }

    fn refused(row: &RawRow) -> RowError {
        let mut errors = parse_row(row, &names()).expect_err(&format!("{row:?} was accepted"));
        assert_eq!(errors.len(), 1, "one error per bad row");
        errors.remove(0)
    }

    #[test]
    fn accepted_sockets() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases: &[(&str, Proto, &str, u16)] = &[
            ("udp:127.0.0.1:5070", Proto::Udp, "127.0.0.1", 5070),
            ("UDP:127.0.0.1:5070", Proto::Udp, "127.0.0.1", 5070),
            ("Tcp:10.0.0.1", Proto::Tcp, "10.0.0.1", 5060),
            ("udp:10.0.0.1", Proto::Udp, "10.0.0.1", 5060),
            ("tls:10.0.0.1", Proto::Tls, "10.0.0.1", 5061),
            ("ws:10.0.0.1", Proto::Ws, "10.0.0.1", 80),
            ("WSS:10.0.0.1", Proto::Wss, "10.0.0.1", 443),
            ("udp:[::1]:5080", Proto::Udp, "::1", 5080),
            ("udp:[2001:DB8::1]", Proto::Udp, "2001:db8::1", 5060),
            ("tls:[::]:65535", Proto::Tls, "::", 65535),
            ("udp:sip.example:1", Proto::Udp, "192.0.2.7", 1),
            ("udp:multi.example:5060", Proto::Udp, "192.0.2.8", 5060),
            ("udp:v6.example", Proto::Udp, "2001:db8::7", 5060),
            ("udp:0.0.0.0:5060", Proto::Udp, "0.0.0.0", 5060),
            ("udp:127.0.0.1:05060", Proto::Udp, "127.0.0.1", 5060),
        ];
        for (text, proto, ip, port) in cases {
            let d = ok(&raw(text));
            assert_eq!((d.proto, d.ip, d.port), (*proto, v4(ip), *port), "{text}");
            assert_eq!(d.text, *text, "the text is kept as stored");
            assert_eq!(d.flags, Flags::default());
            assert_eq!((d.tos, &d.advertised, &d.tag), (0, &None, &None));
        }
    }

    #[test]
    fn refused_sockets() {
        let unsupported = |p: &str| unsupported_protocol(p);
        let long = format!("udp:{}", "a".repeat(10 * 1024));
        let cases: Vec<(Option<&str>, String)> = vec![
            (None, "empty".into()),
            (Some(""), "empty".into()),
            (Some("   "), "empty".into()),
            (Some("udp:::1:5060"), "must be written in brackets".into()),
            (
                Some("udp:2001:db8::1"),
                "must be written in brackets".into(),
            ),
            (Some("udp:127.0.0.1:0"), "port 0".into()),
            (
                Some("udp:127.0.0.1:70000"),
                "port 70000 is out of range (1-65535)".into(),
            ),
            (Some("udp:127.0.0.1:65536"), "out of range".into()),
            (
                Some("udp:127.0.0.1:99999999999999999999"),
                "out of range".into(),
            ),
            (Some("udp:127.0.0.1:"), "empty port".into()),
            (Some("udp:127.0.0.1:+5"), "not a number".into()),
            (Some("udp:127.0.0.1:50a"), "not a number".into()),
            (Some("udp:[::1"), "missing ']'".into()),
            (Some("udp:[::1]x"), "after ']'".into()),
            (Some("udp:[1.2.3.4]:5060"), "not an IPv6 address".into()),
            (Some("udp:[zz::1]:5060"), "not an IPv6 address".into()),
            (Some("udp:"), "missing host".into()),
            (Some("udp::5060"), "missing host".into()),
            (Some("udp:300.1.1.1"), "not a valid IPv4 address".into()),
            (Some("udp:host/x"), "invalid character".into()),
            (Some("udp:127.0.0.1 :5060"), "blanks".into()),
            (
                Some("udp:nowhere.example"),
                "unknown host nowhere.example".into(),
            ),
            (Some("udp:void.example"), "resolves to no address".into()),
            (Some("127.0.0.1"), "expected proto:host".into()),
            (Some("127.0.0.1:5060"), "missing protocol".into()),
            (Some(":127.0.0.1"), "missing protocol".into()),
            (Some("bin:127.0.0.1:5070"), unsupported("bin")),
            (Some("hep_udp:127.0.0.1:9060"), unsupported("hep_udp")),
            (Some("hep_tcp:127.0.0.1"), unsupported("hep_tcp")),
            (Some("hep_tls:127.0.0.1"), unsupported("hep_tls")),
            (Some("sctp:127.0.0.1"), unsupported("sctp")),
            (Some("SCTP:127.0.0.1"), unsupported("SCTP")),
            (Some("http:127.0.0.1"), unsupported("http")),
            (Some(&long), "too long: 10244 bytes (at most 128)".into()),
        ];
        for (socket, want) in cases {
            let row = RawRow {
                id: Some(7),
                socket: socket.map(str::to_string),
                ..RawRow::default()
            };
            let e = refused(&row);
            assert_eq!(e.column.as_deref(), Some("socket"), "{socket:?}");
            assert_eq!(e.id, Some(7));
            assert!(
                e.reason.contains(&want),
                "{socket:?}: {:?} lacks {want:?}",
                e.reason
            );
        }
        // The 10 KiB text is repeated capped; the reason keeps the real length.
        let e = refused(&RawRow {
            id: Some(7),
            ..raw(&long)
        });
        let shown = format!("{}… (10244 bytes)", &long[..MAX_SHOWN]);
        assert_eq!(e.value.as_deref(), Some(shown.as_str()));
        assert_eq!(e.socket.as_deref(), Some(shown.as_str()));
        assert_eq!(e.reason, "too long: 10244 bytes (at most 128)");
        // The exact text the issue asks for.
        assert_eq!(
            refused(&raw("bin:127.0.0.1")).reason,
            "unsupported protocol bin for dynamic sockets (SIP only: udp, tcp, tls, ws, wss)"
        );
    }

    #[test]
    fn shown_texts_are_capped_on_a_char_boundary() {
        let fits = "a".repeat(MAX_SHOWN);
        assert_eq!(cap_shown(&fits), fits);
        assert_eq!(cap_shown(""), "");
        let over = "a".repeat(MAX_SHOWN + 1);
        assert_eq!(
            cap_shown(&over),
            format!("{}… ({} bytes)", &over[..MAX_SHOWN], MAX_SHOWN + 1)
        );
        // 3-byte characters: 256 is inside the 86th, so the cut is before it.
        let euros = "€".repeat(100);
        let capped = cap_shown(&euros);
        assert_eq!(capped, format!("{}… (300 bytes)", "€".repeat(85)));
        // A 10 KiB tag: only the tag is capped (the socket is short), the reason is exact.
        let tag = "t".repeat(10 * 1024);
        let e = refused(&RawRow {
            tag: Some(tag.clone()),
            ..raw("udp:127.0.0.1:5070")
        });
        assert_eq!(e.column.as_deref(), Some("tag"));
        assert_eq!(e.socket.as_deref(), Some("udp:127.0.0.1:5070"));
        assert_eq!(
            e.value,
            Some(format!("{}… (10240 bytes)", &tag[..MAX_SHOWN]))
        );
        assert_eq!(e.reason, "too long: 10240 bytes (at most 128)");
        // The log line (Display) stays short too.
        assert!(e.to_string().len() < 1024, "{e}");
    }

    #[test]
    fn trailing_blanks_are_stripped_and_empty_is_null() {
        let row = RawRow {
            id: Some(1),
            socket: Some("udp:127.0.0.1:5070   ".into()),
            advertised: Some("1.2.3.4  ".into()),
            tag: Some("".into()),
            flags: Some("   ".into()),
            tos: Some("16 \t".into()),
        };
        let d = ok(&row);
        assert_eq!(d.text, "udp:127.0.0.1:5070");
        assert_eq!(d.advertised.unwrap().host, "1.2.3.4");
        assert_eq!((d.tag, d.flags, d.tos), (None, Flags::default(), 16));
    }

    #[test]
    fn advertised_forms() {
        let cases: &[(&str, &str, &str, u16)] = &[
            ("udp:127.0.0.1:5070", "1.2.3.4", "1.2.3.4", 5070),
            ("udp:127.0.0.1:5070", "1.2.3.4:5080", "1.2.3.4", 5080),
            ("udp:127.0.0.1", "pbx.example.com", "pbx.example.com", 5060),
            (
                "tls:127.0.0.1",
                "pbx.example.com:5071",
                "pbx.example.com",
                5071,
            ),
            ("udp:127.0.0.1:5070", "[2001:db8::5]", "2001:db8::5", 5070),
            (
                "udp:127.0.0.1:5070",
                "[2001:db8::5]:6000",
                "2001:db8::5",
                6000,
            ),
        ];
        for (socket, adv, host, port) in cases {
            let d = ok(&RawRow {
                advertised: Some(adv.to_string()),
                ..raw(socket)
            });
            let a = d.advertised.clone().unwrap();
            assert_eq!((a.host.as_str(), a.port), (*host, *port), "{adv}");
        }
        let refusals: &[(&str, &str)] = &[
            ("2001:db8::5", "brackets"),
            ("1.2.3.4:0", "port 0"),
            ("1.2.3.4:70000", "out of range"),
            ("1.2.3.4:", "empty port"),
            ("[2001:db8::5", "missing ']'"),
            ("a b", "blanks"),
            ("999.1.1.1", "not a valid IPv4"),
            ("bad!host", "invalid character"),
            (":5060", "missing host"),
        ];
        for (adv, want) in refusals {
            let e = refused(&RawRow {
                advertised: Some(adv.to_string()),
                ..raw("udp:127.0.0.1:5070")
            });
            assert_eq!(e.column.as_deref(), Some("advertised"), "{adv}");
            assert_eq!(e.value.as_deref(), Some(*adv));
            assert!(e.reason.contains(want), "{adv}: {:?}", e.reason);
        }
    }

    #[test]
    fn flags_forms() {
        let f = |a, fr, r| Flags {
            anycast: a,
            frag: fr,
            reuse_port: r,
        };
        let cases = [
            ("anycast", f(true, false, false)),
            ("frag", f(false, true, false)),
            ("reuse_port", f(false, false, true)),
            ("anycast,frag,reuse_port", f(true, true, true)),
            ("reuse_port|frag", f(false, true, true)),
            ("frag reuse_port", f(false, true, true)),
            (" anycast ,  frag|reuse_port ", f(true, true, true)),
            ("ANYCAST|Frag", f(true, true, false)),
            ("frag,,frag", f(false, true, false)),
            (",|", f(false, false, false)),
        ];
        for (text, want) in cases {
            let d = ok(&RawRow {
                flags: Some(text.into()),
                ..raw("udp:127.0.0.1")
            });
            assert_eq!(d.flags, want, "{text:?}");
        }
        for bad in ["reuseport", "anycast,bogus", "frag;anycast"] {
            let e = refused(&RawRow {
                flags: Some(bad.into()),
                ..raw("udp:127.0.0.1")
            });
            assert_eq!(e.column.as_deref(), Some("flags"));
            assert!(e.reason.contains("unknown flag"), "{bad}: {}", e.reason);
        }
        assert_eq!(
            format_flags(&f(true, true, true)),
            "anycast,frag,reuse_port"
        );
        assert_eq!(format_flags(&f(false, true, true)), "frag,reuse_port");
        assert_eq!(format_flags(&f(true, false, false)), "anycast");
        assert_eq!(format_flags(&Flags::default()), "");
    }

    #[test]
    fn tos_forms() {
        let cases = [
            ("IPTOS_LOWDELAY", 16),
            ("iptos_lowdelay", 16),
            ("IPTOS_THROUGHPUT", 8),
            ("IPTOS_RELIABILITY", 4),
            ("IPTOS_MINCOST", 2),
            ("IPTOS_LOWCOST", 2),
            ("0", 0),
            ("16", 16),
            ("255", 255),
            ("0x10", 16),
            ("0XfF", 255),
            ("0x0", 0),
            ("007", 7),
        ];
        for (text, want) in cases {
            let d = ok(&RawRow {
                tos: Some(text.into()),
                ..raw("udp:127.0.0.1")
            });
            assert_eq!(d.tos, want, "{text:?}");
        }
        for (bad, want) in [
            ("300", "300 is out of range (0-255)"),
            ("256", "out of range"),
            ("0x100", "out of range"),
            ("-1", "not a TOS"),
            ("0x", "not a TOS"),
            ("LOWDELAY", "not a TOS"),
            ("1.5", "not a TOS"),
            ("99999999999999999999999", "out of range"),
            (&"9".repeat(40), "too long"),
        ] {
            let e = refused(&RawRow {
                tos: Some(bad.into()),
                ..raw("udp:127.0.0.1")
            });
            assert_eq!(e.column.as_deref(), Some("tos"));
            assert!(e.reason.contains(want), "{bad}: {}", e.reason);
        }
    }

    #[test]
    fn tag_forms() {
        let d = ok(&RawRow {
            tag: Some("demo tag ü".into()),
            ..raw("udp:127.0.0.1")
        });
        assert_eq!(d.tag.as_deref(), Some("demo tag ü"));
        for bad in ["a\nb", &"t".repeat(129)] {
            let e = refused(&RawRow {
                tag: Some(bad.into()),
                ..raw("udp:127.0.0.1")
            });
            assert_eq!(e.column.as_deref(), Some("tag"));
        }
    }

    #[test]
    fn the_first_bad_column_is_reported() {
        let e = refused(&RawRow {
            id: Some(3),
            socket: Some("udp:127.0.0.1".into()),
            advertised: None,
            tag: None,
            flags: Some("bogus".into()),
            tos: Some("300".into()),
        });
        assert_eq!(e.column.as_deref(), Some("flags"));
        assert_eq!(
            e.to_string(),
            "row 3 (socket \"udp:127.0.0.1\"): flags \"bogus\": unknown flag \"bogus\" (known: \
             anycast, frag, reuse_port)"
        );
    }

    #[test]
    fn system_resolver_localhost_is_the_same_socket_as_its_ip() {
        let a = parse_row(&raw("UDP:localhost:5070"), &SystemResolver).unwrap();
        let b = parse_row(&raw("udp:127.0.0.1:5070"), &SystemResolver).unwrap();
        assert_eq!(a.identity(), b.identity());
        let v = validate_table(
            &[raw("udp:127.0.0.1:5070"), raw("UDP:localhost:5070")],
            100,
            InvalidRows::Reject,
            &SystemResolver,
        );
        assert!(v.refused);
        assert_eq!(v.errors.len(), 1);
        assert!(v.errors[0].reason.contains("same socket"), "{:?}", v.errors);
    }

    #[test]
    fn system_resolver_takes_interface_names_and_literals() {
        // The loopback interface exists on every Linux host; its IPv4 address comes first.
        assert_eq!(
            SystemResolver.resolve("lo").unwrap()[0],
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            SystemResolver.resolve("::1").unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        let d = parse_row(&raw("udp:lo:5099"), &SystemResolver).unwrap();
        assert_eq!(d.ip, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn advertised_or_bound_and_display() {
        let mut d = ok(&raw("udp:[::1]:5070"));
        assert_eq!(d.advertised_or_bound(), "[::1]:5070");
        d = ok(&raw("udp:127.0.0.1:5070"));
        assert_eq!(d.advertised_or_bound(), "127.0.0.1:5070");
        d = ok(&RawRow {
            advertised: Some("1.2.3.4".into()),
            ..raw("udp:127.0.0.1:5070")
        });
        assert_eq!(d.advertised_or_bound(), "1.2.3.4:5070");
        d = ok(&RawRow {
            advertised: Some("[2001:db8::1]:9".into()),
            ..raw("udp:127.0.0.1:5070")
        });
        assert_eq!(d.advertised_or_bound(), "[2001:db8::1]:9");
    }

    fn rows(sockets: &[&str]) -> Vec<RawRow> {
        sockets
            .iter()
            .enumerate()
            .map(|(i, s)| RawRow {
                id: Some(i as i64 + 1),
                ..raw(s)
            })
            .collect()
    }

    #[test]
    fn validation_is_all_or_nothing_by_default() {
        let table = rows(&["udp:127.0.0.1:5070", "udp:127.0.0.1:0", "bin:127.0.0.1"]);
        let v = validate_table(&table, 100, InvalidRows::Reject, &names());
        assert!(v.refused);
        assert_eq!(v.defs.len(), 1);
        assert_eq!(
            v.errors.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![Some(2), Some(3)]
        );

        let v = validate_table(&table, 100, InvalidRows::Skip, &names());
        assert!(!v.refused, "skip mode applies the valid rows");
        assert_eq!(v.defs.len(), 1);
        assert_eq!(v.errors.len(), 2);

        let v = validate_table(
            &rows(&["udp:127.0.0.1:5070"]),
            100,
            InvalidRows::Reject,
            &names(),
        );
        assert!(!v.refused && v.errors.is_empty());
        let v = validate_table(&[], 100, InvalidRows::Reject, &names());
        assert!(!v.refused && v.defs.is_empty());
    }

    #[test]
    fn duplicates_refuse_the_table_in_both_modes() {
        let table = rows(&[
            "udp:192.0.2.7:5060",
            "tcp:192.0.2.7:5060",
            "UDP:sip.example",
        ]);
        for mode in [InvalidRows::Reject, InvalidRows::Skip] {
            let v = validate_table(&table, 100, mode, &names());
            assert!(v.refused, "{mode:?}");
            assert_eq!(v.errors.len(), 1);
            let e = &v.errors[0];
            assert_eq!((e.id, e.column.as_deref()), (Some(3), None));
            assert!(e.is_table_error());
            assert!(
                e.reason
                    .contains("same socket (udp 192.0.2.7:5060) as row 1 (\"udp:192.0.2.7:5060\")"),
                "{}",
                e.reason
            );
        }
    }

    #[test]
    fn max_sockets_counts_valid_rows_and_refuses_the_whole_table() {
        let table = rows(&["udp:127.0.0.1:1", "udp:127.0.0.1:0", "udp:127.0.0.1:2"]);
        // Two valid rows fit in two slots (the bad one does not count) in skip mode.
        let v = validate_table(&table, 2, InvalidRows::Skip, &names());
        assert!(!v.refused);
        let v = validate_table(&table, 1, InvalidRows::Skip, &names());
        assert!(v.refused, "more valid rows than max_sockets");
        assert_eq!(v.errors.len(), 2);
        let over = v.errors.iter().find(|e| e.is_table_error()).unwrap();
        assert_eq!(over.id, Some(3));
        assert!(over.reason.contains("max_sockets is 1"), "{}", over.reason);
        // A table that exactly fills max_sockets is fine.
        let v = validate_table(
            &rows(&["udp:127.0.0.1:1"]),
            1,
            InvalidRows::Reject,
            &names(),
        );
        assert!(!v.refused);
    }

    #[test]
    fn examine_keeps_table_order() {
        let out = examine_table(&rows(&["udp:127.0.0.1:0", "udp:127.0.0.1:1"]), 10, &names());
        assert!(out[0].is_err() && out[1].is_ok());
    }

    #[test]
    fn to_raw_prints_every_field() {
        let d = ok(&RawRow {
            id: Some(9),
            socket: Some("UDP:sip.example:5070".into()),
            advertised: Some("[2001:db8::1]".into()),
            tag: Some("edge".into()),
            flags: Some("reuse_port | anycast".into()),
            tos: Some("IPTOS_LOWDELAY".into()),
        });
        assert_eq!(
            d.to_raw(),
            RawRow {
                id: Some(9),
                socket: Some("UDP:sip.example:5070".into()),
                advertised: Some("[2001:db8::1]".into()),
                tag: Some("edge".into()),
                flags: Some("anycast,reuse_port".into()),
                tos: Some("16".into()),
            }
        );
    }

    fn host_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
            any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
            prop::sample::select(vec!["sip.example", "multi.example", "v6.example"])
                .prop_map(str::to_string),
        ]
    }

    fn adv_host_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
            any::<[u16; 8]>().prop_map(|s| format!("[{}]", Ipv6Addr::from(s))),
            "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,8}){0,3}",
        ]
    }

    fn tos_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..=255).prop_map(|t| t.to_string()),
            (0u8..=255).prop_map(|t| format!("0x{t:x}")),
            prop::sample::select(
                TOS_NAMES
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .collect::<Vec<_>>()
            ),
        ]
    }

    prop_compose! {
        fn raw_row()(
            id in proptest::option::of(1i64..1_000_000),
            proto in prop::sample::select(vec!["udp", "UDP", "tcp", "Tls", "ws", "WSS"]),
            host in host_strategy(),
            port in proptest::option::of(1u16..=65535),
            adv in proptest::option::of((adv_host_strategy(), proptest::option::of(1u16..=65535))),
            tag in proptest::option::of("[A-Za-z0-9_. -]{0,40}"),
            flags in proptest::collection::vec(
                (prop::sample::select(vec!["anycast", "frag", "reuse_port", "FRAG"]),
                 prop::sample::select(vec![",", "|", " ", " , ", "| "])), 0..4),
            tos in proptest::option::of(tos_strategy()),
        ) -> RawRow {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let advertised = adv.map(|(h, p)| match p {
                Some(p) => format!("{h}:{p}"),
                None => h,
            });
            let flags = (!flags.is_empty()).then(|| {
                flags.iter().map(|(f, sep)| format!("{f}{sep}")).collect::<String>()
            });
            RawRow {
                id,
                socket: Some(format!("{proto}:{host}{port}")),
                advertised,
                tag,
                flags,
                tos,
            }
        }
    }

    proptest! {
        #[test]
        fn printing_a_parsed_row_and_parsing_it_again_gives_the_same_row(row in raw_row()) {
            let def = parse_row(&row, &names()).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let printed = def.to_raw();
            let again = parse_row(&printed, &names())
                .map_err(|e| TestCaseError::fail(format!("{printed:?}: {e:?}")))?;
            prop_assert_eq!(&again, &def);
            prop_assert_eq!(again.to_raw(), printed);
        }

        #[test]
        fn no_text_makes_the_parser_panic(
            socket in proptest::option::of(".{0,200}"),
            advertised in proptest::option::of(".{0,60}"),
            flags in proptest::option::of(".{0,60}"),
            tos in proptest::option::of(".{0,40}"),
        ) {
            let row = RawRow { id: None, socket, advertised, tag: None, flags, tos };
            if let Err(errors) = parse_row(&row, &names()) {
                prop_assert_eq!(errors.len(), 1);
                prop_assert!(!errors[0].reason.is_empty());
            }
        }
    }
}
