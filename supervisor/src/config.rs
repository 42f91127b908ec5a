//! The configuration file (`--config FILE`, TOML).
//!
//! Sections and keys mirror the OpenSIPS modparams of `sockets_mgm` and `mi_fifo`, with the seed's
//! defaults. This module owns reading and checking the file only; it never opens the database or a
//! socket.
//!
//! Each key is defined once: a field of a section struct below, with its doc, its type and its
//! default (the struct's `Default`). Loading has two phases, like ripgrep's low and high
//! arguments:
//! 1. serde reads the file into [`RawConfig`] (`deny_unknown_fields`, missing keys take their
//!    default); `serde_path_to_error` gives the key path of a refused value, and the TOML parser
//!    its place in the file, so the error names the key and the value as written;
//! 2. [`RawConfig::check`] turns it into the [`Config`] the program uses, refusing out-of-range
//!    values and keys that contradict each other, again naming the key and the value.
//!
//! Sections whose file form is their program form (`[sockets_mgm]`, `[mi_fifo]`, ...) are read
//! straight into the checked struct; only `[tls]` is reshaped (its certificate keys and its
//! `[tls.tag.<TAG>]` sections become [`Tls::default`] and [`Tls::tags`]). A `db_url` is only ever
//! shown redacted ([`crate::db::url::redact`]).

use crate::db::url::{redact, redact_in_text, DbUrl};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration, checked: what [`load`] and [`parse`] return.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `[sockets_mgm]`: where the sockets table is and how many processes serve it.
    pub sockets_mgm: SocketsMgm,
    /// `[mi_fifo]`: the management FIFO.
    pub mi_fifo: MiFifo,
    /// `[shm]`: the shared-memory slot table.
    pub shm: Shm,
    /// `[sip]`: what the SIP handler answers.
    pub sip: Sip,
    /// `[tcp]`: the stream workers and connection limits (TCP, TLS, WS, WSS).
    pub tcp: Tcp,
    /// `[tls]`: certificates for `tls` and `wss` sockets.
    pub tls: Tls,
    /// `[general]`: process-wide settings.
    pub general: General,
    /// `[mi_http]`: MI over HTTP (off unless `listen` is set).
    pub mi_http: MiHttp,
    /// `[mi_datagram]`: MI over UDP or a unix datagram socket (off unless `socket` is set).
    pub mi_datagram: MiDatagram,
    /// `[metrics]`: the Prometheus endpoint (off unless `listen` is set).
    pub metrics: Metrics,
    /// `[relay]`: the relays table and how requests are relayed to the SIP core.
    pub relay: Relay,
}

/// The file as serde reads it, before [`RawConfig::check`]: the sections, each defaulting to its
/// defaults when absent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of sections")]
pub struct RawConfig {
    /// `[sockets_mgm]`.
    pub sockets_mgm: SocketsMgm,
    /// `[mi_fifo]`.
    pub mi_fifo: MiFifo,
    /// `[shm]`.
    pub shm: Shm,
    /// `[sip]`.
    pub sip: Sip,
    /// `[tcp]`.
    pub tcp: Tcp,
    /// `[tls]` and its `[tls.tag.<TAG>]` sections.
    pub tls: RawTls,
    /// `[general]`.
    pub general: General,
    /// `[mi_http]`.
    pub mi_http: MiHttp,
    /// `[mi_datagram]`.
    pub mi_datagram: MiDatagram,
    /// `[metrics]`.
    pub metrics: Metrics,
    /// `[relay]`.
    pub relay: Relay,
}

/// `[tcp]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [tcp] section")]
pub struct Tcp {
    /// Stream worker processes (fixed pool).
    pub workers: u32,
    /// Largest SIP header section accepted on a stream, in bytes.
    pub max_message_size: u32,
    /// How long connections of a removed socket may go on (seconds in the file).
    #[serde(deserialize_with = "seconds")]
    pub drain_timeout: Duration,
    /// A connection with no complete message for this long is closed (seconds in the file).
    #[serde(deserialize_with = "seconds")]
    pub connection_lifetime: Duration,
    /// Most open connections in all; past it new ones are refused.
    pub max_connections: u32,
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            workers: 4,
            max_message_size: 65535,
            drain_timeout: Duration::from_secs(30),
            connection_lifetime: Duration::from_secs(120),
            max_connections: 4096,
        }
    }
}

/// Certificate settings of one TLS context: `[tls]` itself, or a `[tls.tag.<TAG>]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [tls.tag.<TAG>] section")]
pub struct TlsCert {
    /// PEM certificate chain.
    pub certificate: Option<PathBuf>,
    /// PEM private key.
    pub private_key: Option<PathBuf>,
    /// PEM CA certificates to verify clients with.
    pub ca_list: Option<PathBuf>,
    /// Ask clients for a certificate and refuse those without a valid one.
    pub require_client_cert: bool,
}

/// `[tls]` as written: the default certificate keys beside the section's own keys and the
/// `[tls.tag.<TAG>]` sections (serde cannot flatten a [`TlsCert`] into a struct that refuses
/// unknown keys, so its four keys are spelt out here).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [tls] section")]
pub struct RawTls {
    /// PEM certificate chain of the sockets without a tag section.
    pub certificate: Option<PathBuf>,
    /// PEM private key that goes with `certificate`.
    pub private_key: Option<PathBuf>,
    /// PEM CA certificates to verify clients with.
    pub ca_list: Option<PathBuf>,
    /// Ask clients for a certificate and refuse those without a valid one.
    pub require_client_cert: bool,
    /// A handshake (TLS, and the WebSocket upgrade) not finished within this is dropped (seconds
    /// in the file).
    #[serde(deserialize_with = "seconds")]
    pub handshake_timeout: Duration,
    /// `[tls.tag.<TAG>]`: a socket with that tag presents these instead.
    pub tag: BTreeMap<String, TlsCert>,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            certificate: None,
            private_key: None,
            ca_list: None,
            require_client_cert: false,
            handshake_timeout: Duration::from_secs(10),
            tag: BTreeMap::new(),
        }
    }
}

/// `[tls]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The default certificate settings.
    pub default: TlsCert,
    /// Per-tag certificate settings (`[tls.tag.<TAG>]`): a socket with that tag presents these.
    pub tags: BTreeMap<String, TlsCert>,
    /// A handshake not finished within this is dropped.
    pub handshake_timeout: Duration,
}

impl From<RawTls> for Tls {
    fn from(raw: RawTls) -> Tls {
        Tls {
            default: TlsCert {
                certificate: raw.certificate,
                private_key: raw.private_key,
                ca_list: raw.ca_list,
                require_client_cert: raw.require_client_cert,
            },
            tags: raw.tag,
            handshake_timeout: raw.handshake_timeout,
        }
    }
}

impl Default for Tls {
    fn default() -> Self {
        RawTls::default().into()
    }
}

impl Tls {
    /// The certificate settings a socket with `tag` uses.
    pub fn for_tag(&self, tag: Option<&str>) -> &TlsCert {
        tag.and_then(|t| self.tags.get(t)).unwrap_or(&self.default)
    }
}

/// `[general]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [general] section")]
pub struct General {
    /// User to run as after start-up (when started as root).
    pub user: Option<String>,
    /// Group to run as after start-up.
    pub group: Option<String>,
    /// How log lines are written (`--log-format` overrides it).
    pub log_format: LogFormat,
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per record (the default).
    #[default]
    Text,
    /// One JSON object per line (`ts`, `level`, `target`, `pid`, `msg`), for Loki or ELK.
    Json,
}

impl LogFormat {
    /// The name used in the configuration file and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("unknown log format {s:?} (text or json)")),
        }
    }
}

/// `[mi_http]`: MI over HTTP, wire-compatible with OpenSIPS `mi_http` (JSON-RPC 2.0 POSTed to
/// `/ROOT`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [mi_http] section")]
pub struct MiHttp {
    /// `IP:PORT` to listen on; none (the default) turns MI over HTTP off.
    pub listen: Option<SocketAddr>,
    /// The path requests go to (`/mi`), without slashes.
    pub root: String,
    /// Source networks allowed, as CIDRs (an address alone is one host); others get 403.
    pub allow: Vec<Cidr>,
    /// A file of `user:hash` lines (argon2 PHC strings or bcrypt hashes): when set, every
    /// request needs HTTP basic authentication by one of them (401 otherwise).
    pub auth_file: Option<PathBuf>,
}

impl Default for MiHttp {
    fn default() -> Self {
        MiHttp {
            listen: None,
            root: "mi".into(),
            allow: Cidr::loopback(),
            auth_file: None,
        }
    }
}

/// `[mi_datagram]`: MI over datagrams, wire-compatible with OpenSIPS `mi_datagram`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [mi_datagram] section")]
pub struct MiDatagram {
    /// `udp:IP:PORT` or the path of a unix datagram socket; none (the default) turns it off.
    #[serde(deserialize_with = "datagram_socket")]
    pub socket: Option<DatagramSocket>,
    /// Octal mode of the unix socket file, as a string (`"0660"`): who may send commands.
    pub unix_socket_mode: String,
}

impl Default for MiDatagram {
    fn default() -> Self {
        MiDatagram {
            socket: None,
            unix_socket_mode: "0660".into(),
        }
    }
}

impl MiDatagram {
    /// `unix_socket_mode` as permission bits (a loaded configuration always has a valid one).
    pub fn mode(&self) -> u32 {
        parse_octal_mode(&self.unix_socket_mode).unwrap_or(0o660)
    }
}

/// Where `[mi_datagram]` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatagramSocket {
    /// `udp:IP:PORT`.
    Udp(SocketAddr),
    /// A unix datagram socket at this path.
    Unix(PathBuf),
}

/// Longest unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_UNIX_PATH: usize = 107;

impl std::str::FromStr for DatagramSocket {
    type Err = String;
    fn from_str(s: &str) -> Result<DatagramSocket, String> {
        if let Some(addr) = s.strip_prefix("udp:") {
            return addr.parse().map(DatagramSocket::Udp).map_err(|_| {
                "not udp:IP:PORT (an IPv6 address in brackets: udp:[::1]:8080)".to_string()
            });
        }
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > MAX_UNIX_PATH {
            return Err(format!(
                "a unix socket path is at most {MAX_UNIX_PATH} bytes"
            ));
        }
        Ok(DatagramSocket::Unix(PathBuf::from(s)))
    }
}

fn datagram_socket<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DatagramSocket>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(de::Error::custom)
}

/// `[metrics]`: Prometheus `/metrics` in the OpenMetrics text format, read from the shared table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [metrics] section")]
pub struct Metrics {
    /// `IP:PORT` to listen on; none (the default) turns it off.
    pub listen: Option<SocketAddr>,
}

/// A source network: an address and a prefix length (`127.0.0.0/8`, `::1/128`; an address alone
/// is the host). Host bits below the prefix are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `127.0.0.0/8` and `::1/128`: the default of `[mi_http] allow`.
    pub fn loopback() -> Vec<Cidr> {
        vec![
            Cidr {
                addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
                prefix: 8,
            },
            Cidr {
                addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        ]
    }

    /// True when `ip` is in this network; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, from a
    /// dual-stack listener) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IP address (a CIDR is IP/PREFIX)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("prefix {p:?} is not 0 to {max}")),
            },
        };
        Ok(Cidr { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// What to do with a table that has bad rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InvalidRows {
    /// Refuse the whole table (the default): a typo never tears down a live socket.
    #[default]
    Reject,
    /// Apply the valid rows and report the bad ones.
    Skip,
}

impl InvalidRows {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidRows::Reject => "reject",
            InvalidRows::Skip => "skip",
        }
    }
}

/// `[sockets_mgm]`. Its `{:?}` shows `db_url` redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [sockets_mgm] section")]
pub struct SocketsMgm {
    /// Database URL: `sqlite://rel/path`, `sqlite:///abs/path`, `mysql://...`, `postgres://...`
    /// (read by [`DbUrl::parse`]).
    pub db_url: String,
    /// Table holding the sockets.
    pub table_name: String,
    /// Column with the socket definition.
    pub socket_column: String,
    /// Column with the advertised address.
    pub advertised_column: String,
    /// Column with the tag.
    pub tag_column: String,
    /// Column with the flags.
    pub flags_column: String,
    /// Column with the TOS.
    pub tos_column: String,
    /// Number of UDP worker processes (fixed pool).
    pub processes: u32,
    /// Slots in the shared table: the most sockets that can run at once.
    pub max_sockets: u32,
    /// Bad rows: reject the table (default) or skip them.
    pub invalid_rows: InvalidRows,
    /// Longest a database connect or query may take before the reload fails (seconds in the
    /// file).
    #[serde(deserialize_with = "seconds")]
    pub db_timeout: Duration,
}

impl Default for SocketsMgm {
    fn default() -> Self {
        SocketsMgm {
            db_url: "sqlite://sipsockd.db".into(),
            table_name: "sockets".into(),
            socket_column: "socket".into(),
            advertised_column: "advertised".into(),
            tag_column: "tag".into(),
            flags_column: "flags".into(),
            tos_column: "tos".into(),
            processes: 8,
            max_sockets: 100,
            invalid_rows: InvalidRows::Reject,
            db_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for SocketsMgm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field, db_url as it may be shown.
        let SocketsMgm {
            db_url: _,
            table_name,
            socket_column,
            advertised_column,
            tag_column,
            flags_column,
            tos_column,
            processes,
            max_sockets,
            invalid_rows,
            db_timeout,
        } = self;
        f.debug_struct("SocketsMgm")
            .field("db_url", &self.db_url_redacted())
            .field("table_name", table_name)
            .field("socket_column", socket_column)
            .field("advertised_column", advertised_column)
            .field("tag_column", tag_column)
            .field("flags_column", flags_column)
            .field("tos_column", tos_column)
            .field("processes", processes)
            .field("max_sockets", max_sockets)
            .field("invalid_rows", invalid_rows)
            .field("db_timeout", db_timeout)
            .finish()
    }
}

impl SocketsMgm {
    /// `db_url` with the password hidden: the only form that may reach a log or an error.
    pub fn db_url_redacted(&self) -> String {
        redact(&self.db_url)
    }
}

/// `[mi_fifo]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [mi_fifo] section")]
pub struct MiFifo {
    /// Path of the server FIFO.
    pub fifo_name: PathBuf,
    /// Octal mode of the server FIFO, as a string (`"0660"`).
    pub fifo_mode: String,
    /// Directory where clients' reply FIFOs live.
    pub reply_dir: PathBuf,
}

impl Default for MiFifo {
    fn default() -> Self {
        MiFifo {
            fifo_name: "/tmp/opensips_fifo".into(),
            fifo_mode: "0660".into(),
            reply_dir: "/tmp/".into(),
        }
    }
}

impl MiFifo {
    /// `fifo_mode` as permission bits (`"0660"` -> `0o660`). A loaded configuration always has a
    /// valid mode; a hand-built one with a bad mode gets the default 0660.
    pub fn mode(&self) -> u32 {
        parse_octal_mode(&self.fifo_mode).unwrap_or(0o660)
    }
}

/// `[shm]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [shm] section")]
pub struct Shm {
    /// Path of the shared-memory file.
    pub path: PathBuf,
}

impl Default for Shm {
    fn default() -> Self {
        Shm {
            path: "/dev/shm/sipsockd".into(),
        }
    }
}

/// `[sip]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [sip] section")]
pub struct Sip {
    /// Status code of the stateless reply to requests other than OPTIONS and ACK.
    pub reply_code: u16,
    /// Reason phrase of that reply.
    pub reply_reason: String,
}

impl Default for Sip {
    fn default() -> Self {
        Sip {
            reply_code: 503,
            reply_reason: "Service Unavailable".into(),
        }
    }
}

/// `[relay]`: the relays table (which upstream each socket tag relays to) and the relay's
/// behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [relay] section")]
pub struct Relay {
    /// Table holding the relays, in the database of `[sockets_mgm] db_url`.
    pub table_name: String,
    /// The relay's 32-byte HMAC key (Record-Route, Path and Via parameters): created with mode
    /// 0600 at the first start when missing (a relative path is taken from the working
    /// directory); nodes sharing a database share this file.
    pub secret_file: PathBuf,
    /// Fill `rport` and add `received` on the sender's Via even when it did not ask (RFC 3581):
    /// an edge faces NATs.
    pub force_rport: bool,
    /// When a REGISTER from a stream client gets a Path header: `always`, or `supported` (only
    /// with `Supported: path`).
    pub path: worker::relay::PathMode,
    /// Records of relay counters in the shared table: the most relay rows that can run at once.
    pub max_relays: u32,
    /// Longest a TCP or TLS connection to a destination may take to open (seconds in the file).
    #[serde(deserialize_with = "seconds")]
    pub connect_timeout: Duration,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            table_name: "relays".into(),
            secret_file: "sipsockd.key".into(),
            force_rport: true,
            path: worker::relay::PathMode::Always,
            max_relays: 1000,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Relay {
    /// What the workers apply, as the route table carries it.
    pub fn settings(&self) -> worker::relay::RelaySettings {
        worker::relay::RelaySettings {
            force_rport: self.force_rport,
            path: self.path,
        }
    }
}

/// The configuration file looked for when `--config` is not given.
pub const DEFAULT_FILE: &str = "sipsockd.toml";

/// Most UDP worker processes; far above any sane pool, low enough that a typo cannot fork-bomb.
pub const MAX_PROCESSES: u32 = 1024;

/// Longest table or column name accepted (PostgreSQL truncates identifiers past 63 bytes).
const MAX_IDENTIFIER: usize = 63;

/// Longest duration a key in seconds takes: a day.
const MAX_SECONDS: f64 = 86_400.0;

/// A duration key: a number of seconds (integer or fractional), more than 0 and at most a day.
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Seconds;
    impl Visitor<'_> for Seconds {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number of seconds")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
    }
    let secs = d.deserialize_any(Seconds)?;
    if !(secs > 0.0 && secs <= MAX_SECONDS) {
        return Err(de::Error::custom(format!(
            "must be more than 0 and at most {MAX_SECONDS} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Why a configuration was refused. Every message names the file, the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{file}: not valid TOML: {message}")]
    Syntax {
        /// The file (or `<built-in>`).
        file: String,
        /// The TOML parser's message (it shows the line; a URL's password hidden).
        message: String,
    },
    /// A section the program does not know.
    #[error("{file}: unknown section [{section}] (known: {known})")]
    UnknownSection {
        /// The file.
        file: String,
        /// The section name.
        section: String,
        /// The known sections.
        known: String,
    },
    /// A key the section does not have.
    #[error("{file}: unknown key {key} (known in [{section}]: {known})")]
    UnknownKey {
        /// The file.
        file: String,
        /// `section.key`.
        key: String,
        /// The section.
        section: String,
        /// The section's keys.
        known: String,
    },
    /// A key outside any section.
    #[error("{file}: {key} is outside any section: keys belong in a section such as [sockets_mgm] (known: {known})")]
    OutsideSection {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// The known sections.
        known: String,
    },
    /// A value of the wrong type, or not acceptable.
    #[error("{file}: {key} = {value}: {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// `section.key`.
        key: String,
        /// The value as written (a URL's password hidden).
        value: String,
        /// Why it is refused.
        reason: String,
    },
}

/// Load the configuration: `path` when given, else `./sipsockd.toml` when present, else defaults.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    let file = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(DEFAULT_FILE);
            if !p.exists() {
                return RawConfig::default().check("<built-in defaults>");
            }
            p
        }
    };
    let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file.display().to_string())
}

/// Parse and check the TOML text of a configuration; `file` only names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| refusal(text, file, e))?;
    raw.check(file)
}

/// The error for what serde refused: a syntax error, an unknown section or key, or a value of
/// the wrong type or range, with the key path and the value as written in `text`.
fn refusal(text: &str, file: &str, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let path: Vec<String> = e.path().iter().map(ToString::to_string).collect();
    let e = e.into_inner();
    let file = file.to_string();
    if path.is_empty() {
        // Not a value of a key: the text itself is not TOML. The parser quotes the line, which
        // may be the db_url.
        return ConfigError::Syntax {
            file,
            message: redact_in_text(e.to_string().trim_end()),
        };
    }
    let key = path.join(".");
    let message = redact_in_text(e.message());
    // serde's words: "unknown field `x`, expected one of `a`, `b`, `c`" (or "expected `a` or
    // `b`", or "expected `a`"); the list is given as "a, b, c".
    if let Some((_, known)) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split_once(", expected "))
    {
        let known = known
            .trim_start_matches("one of ")
            .replace("` or `", "`, `")
            .replace('`', "");
        let section = path[..path.len() - 1].join(".");
        if !section.is_empty() {
            return ConfigError::UnknownKey {
                file,
                key,
                section,
                known,
            };
        }
        let is_section = text
            .parse::<toml::Table>()
            .is_ok_and(|t| t.get(&key).is_some_and(toml::Value::is_table));
        return if is_section {
            ConfigError::UnknownSection {
                file,
                section: key,
                known,
            }
        } else {
            ConfigError::OutsideSection { file, key, known }
        };
    }
    let value = e
        .span()
        .and_then(|span| text.get(span))
        .map_or_else(|| "(?)".into(), redact_in_text);
    ConfigError::Invalid {
        file,
        key,
        value,
        reason: message,
    }
}

impl RawConfig {
    /// The second phase: the configuration the program uses, or the first value that is out of
    /// range or contradicts another; `file` names the source in errors.
    pub fn check(self, file: &str) -> Result<Config, ConfigError> {
        let config = Config {
            sockets_mgm: self.sockets_mgm,
            mi_fifo: self.mi_fifo,
            shm: self.shm,
            sip: self.sip,
            tcp: self.tcp,
            tls: self.tls.into(),
            general: self.general,
            mi_http: self.mi_http,
            mi_datagram: self.mi_datagram,
            metrics: self.metrics,
            relay: self.relay,
        };
        config.validate(file)?;
        Ok(config)
    }
}

impl Config {
    /// Check the values' ranges and forms (the types are already right) and the keys that depend
    /// on each other; `file` names the source in errors. Run by [`RawConfig::check`]; public so
    /// a hand-built configuration can be checked too.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, reason: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            value,
            reason,
        };
        // On one line whatever it holds: control characters escaped.
        let quoted = |s: &str| format!("{s:?}");
        let s = &self.sockets_mgm;
        DbUrl::parse(&s.db_url)
            .map_err(|e| invalid("sockets_mgm.db_url", quoted(&e.shown), e.reason))?;
        let names = [
            ("table_name", &s.table_name),
            ("socket_column", &s.socket_column),
            ("advertised_column", &s.advertised_column),
            ("tag_column", &s.tag_column),
            ("flags_column", &s.flags_column),
            ("tos_column", &s.tos_column),
        ];
        for (key, name) in names {
            if !is_identifier(name) {
                return Err(invalid(
                    &format!("sockets_mgm.{key}"),
                    quoted(name),
                    format!(
                        "not a plain SQL identifier (a letter or '_', then letters, digits or '_'; \
                         at most {MAX_IDENTIFIER} characters)"
                    ),
                ));
            }
        }
        // Two keys naming one column would read one value twice and silently lose the other.
        for (i, (key, name)) in names.iter().enumerate().skip(1) {
            if let Some((other, _)) = names[1..i]
                .iter()
                .find(|(_, n)| n.eq_ignore_ascii_case(name))
            {
                return Err(invalid(
                    &format!("sockets_mgm.{key}"),
                    quoted(name),
                    format!("same column as sockets_mgm.{other}"),
                ));
            }
        }
        if s.processes == 0 || s.processes > MAX_PROCESSES {
            return Err(invalid(
                "sockets_mgm.processes",
                s.processes.to_string(),
                format!("must be between 1 and {MAX_PROCESSES}"),
            ));
        }
        if s.max_sockets == 0 || s.max_sockets > 65535 {
            return Err(invalid(
                "sockets_mgm.max_sockets",
                s.max_sockets.to_string(),
                "must be between 1 and 65535".into(),
            ));
        }
        let m = &self.mi_fifo;
        if m.fifo_name.as_os_str().is_empty() {
            return Err(invalid(
                "mi_fifo.fifo_name",
                "\"\"".into(),
                "must not be empty".into(),
            ));
        }
        if parse_octal_mode(&m.fifo_mode).is_none() {
            return Err(invalid(
                "mi_fifo.fifo_mode",
                quoted(&m.fifo_mode),
                "must be an octal permission mode such as \"0660\" (digits 0-7, at most 0777)"
                    .into(),
            ));
        }
        if m.reply_dir.as_os_str().is_empty() {
            return Err(invalid(
                "mi_fifo.reply_dir",
                "\"\"".into(),
                "must not be empty".into(),
            ));
        }
        if self.shm.path.as_os_str().is_empty() {
            return Err(invalid(
                "shm.path",
                "\"\"".into(),
                "must not be empty".into(),
            ));
        }
        let t = &self.tcp;
        if t.workers == 0 || t.workers > MAX_PROCESSES {
            return Err(invalid(
                "tcp.workers",
                t.workers.to_string(),
                format!("must be between 1 and {MAX_PROCESSES}"),
            ));
        }
        if !(256..=1_048_576).contains(&t.max_message_size) {
            return Err(invalid(
                "tcp.max_message_size",
                t.max_message_size.to_string(),
                "must be between 256 and 1048576 bytes".into(),
            ));
        }
        if t.max_connections == 0 {
            return Err(invalid(
                "tcp.max_connections",
                "0".into(),
                "must be at least 1".into(),
            ));
        }
        for (name, cert) in std::iter::once(("tls".to_string(), &self.tls.default)).chain(
            self.tls
                .tags
                .iter()
                .map(|(t, c)| (format!("tls.tag.{t}"), c)),
        ) {
            if cert.certificate.is_some() != cert.private_key.is_some() {
                return Err(invalid(
                    &format!("{name}.certificate"),
                    cert.certificate
                        .as_ref()
                        .map_or("(none)".into(), |p| quoted(&p.display().to_string())),
                    "certificate and private_key go together".into(),
                ));
            }
            if cert.require_client_cert && cert.ca_list.is_none() {
                return Err(invalid(
                    &format!("{name}.require_client_cert"),
                    "true".into(),
                    "needs ca_list to verify client certificates with".into(),
                ));
            }
        }
        for (key, v) in [
            ("general.user", &self.general.user),
            ("general.group", &self.general.group),
        ] {
            if v.as_deref() == Some("") {
                return Err(invalid(key, "\"\"".into(), "must not be empty".into()));
            }
        }
        self.validate_observers(file)?;
        self.validate_relay(file)?;
        let sip = &self.sip;
        if !(100..=699).contains(&sip.reply_code) {
            return Err(invalid(
                "sip.reply_code",
                sip.reply_code.to_string(),
                "must be a SIP status code, 100 to 699".into(),
            ));
        }
        // The reason goes verbatim into a status line: a control character would forge headers.
        if sip.reply_reason.is_empty() || sip.reply_reason.chars().any(char::is_control) {
            return Err(invalid(
                "sip.reply_reason",
                quoted(&sip.reply_reason),
                "must be a non-empty phrase without control characters".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The checks of `[mi_http]`, `[mi_datagram]` and `[metrics]`.
    fn validate_observers(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, reason: &str| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            value,
            reason: reason.to_string(),
        };
        let h = &self.mi_http;
        let path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if h.root.is_empty() || !h.root.chars().all(path_char) {
            return Err(invalid(
                "mi_http.root",
                format!("{:?}", h.root),
                "must be one path segment: letters, digits, '_', '-' or '.' (no '/')",
            ));
        }
        if h.allow.is_empty() {
            return Err(invalid(
                "mi_http.allow",
                "[]".into(),
                "would refuse every client (leave it out to allow loopback only)",
            ));
        }
        if h.auth_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid(
                "mi_http.auth_file",
                "\"\"".into(),
                "must not be empty",
            ));
        }
        if let (Some(a), Some(b)) = (h.listen, self.metrics.listen) {
            if a == b {
                return Err(invalid(
                    "metrics.listen",
                    format!("\"{b}\""),
                    "same address as mi_http.listen",
                ));
            }
        }
        if parse_octal_mode(&self.mi_datagram.unix_socket_mode).is_none() {
            return Err(invalid(
                "mi_datagram.unix_socket_mode",
                format!("{:?}", self.mi_datagram.unix_socket_mode),
                "must be an octal permission mode such as \"0660\" (digits 0-7, at most 0777)",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The checks of `[relay]`.
    fn validate_relay(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, reason: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            value,
            reason,
        };
        let r = &self.relay;
        let table = &r.table_name;
        if !is_identifier(table) {
            return Err(invalid(
                "relay.table_name",
                format!("{table:?}"),
                format!(
                    "not a plain SQL identifier (a letter or '_', then letters, digits or '_'; at \
                     most {MAX_IDENTIFIER} characters)"
                ),
            ));
        }
        for (other, what) in [
            (
                self.sockets_mgm.table_name.as_str(),
                "sockets_mgm.table_name",
            ),
            ("version", "the version table"),
        ] {
            if table.eq_ignore_ascii_case(other) {
                return Err(invalid(
                    "relay.table_name",
                    format!("{table:?}"),
                    format!("same table as {what}"),
                ));
            }
        }
        if r.secret_file.as_os_str().is_empty() {
            return Err(invalid(
                "relay.secret_file",
                "\"\"".into(),
                "must not be empty".into(),
            ));
        }
        if r.max_relays == 0 || r.max_relays > 65535 {
            return Err(invalid(
                "relay.max_relays",
                r.max_relays.to_string(),
                "must be between 1 and 65535".into(),
            ));
        }
        Ok(())
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes: safe to splice into SQL on every backend.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= MAX_IDENTIFIER
}

/// `"0660"`, `"660"` or `"0o660"` -> `0o660`; `None` unless 1-4 octal digits at most 0777.
fn parse_octal_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn the_relay_section() {
        let c = parse(
            r#"
[relay]
table_name = "upstreams"
secret_file = "/var/lib/sipsockd/relay.key"
force_rport = false
path = "supported"
max_relays = 7
connect_timeout = 0.5
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.relay.table_name, "upstreams");
        assert_eq!(
            c.relay.secret_file,
            PathBuf::from("/var/lib/sipsockd/relay.key")
        );
        assert_eq!(c.relay.max_relays, 7);
        assert_eq!(c.relay.connect_timeout, Duration::from_millis(500));
        assert_eq!(
            c.relay.settings(),
            worker::relay::RelaySettings {
                force_rport: false,
                path: worker::relay::PathMode::Supported,
            }
        );
        assert_eq!(
            Relay::default().settings(),
            worker::relay::RelaySettings::default()
        );
        let cases: &[(&str, &[&str])] = &[
            (
                "[relay]\ntable_name = \"1x\"\n",
                &["relay.table_name = \"1x\"", "plain SQL identifier"],
            ),
            (
                "[relay]\ntable_name = \"Sockets\"\n",
                &["relay.table_name", "same table as sockets_mgm.table_name"],
            ),
            (
                "[sockets_mgm]\ntable_name = \"a\"\n[relay]\ntable_name = \"A\"\n",
                &["same table as sockets_mgm.table_name"],
            ),
            (
                "[relay]\ntable_name = \"version\"\n",
                &["same table as the version table"],
            ),
            (
                "[relay]\nsecret_file = \"\"\n",
                &["relay.secret_file", "must not be empty"],
            ),
            (
                "[relay]\nmax_relays = 0\n",
                &["relay.max_relays = 0", "between 1 and 65535"],
            ),
            (
                "[relay]\nmax_relays = 65536\n",
                &["relay.max_relays = 65536"],
            ),
            (
                "[relay]\npath = \"never\"\n",
                &["relay.path = \"never\"", "always", "supported"],
            ),
            (
                "[relay]\nconnect_timeout = 0\n",
                &["relay.connect_timeout = 0", "more than 0"],
            ),
            (
                "[relay]\nforce_rport = \"yes\"\n",
                &["relay.force_rport", "invalid type"],
            ),
            (
                "[relay]\nsecret = \"x\"\n",
                &["relay.secret", "unknown key"],
            ),
        ];
        for (text, wants) in cases {
            let e = err(text);
            for want in *wants {
                assert!(e.contains(want), "{text:?}: {e:?} lacks {want:?}");
            }
        }
    }

    #[test]
    fn stream_tls_and_general_sections() {
        let c = parse(
            r#"
[sockets_mgm]
db_timeout = 2.5
[tcp]
workers = 2
max_message_size = 4096
drain_timeout = 3
connection_lifetime = 1.5
max_connections = 10
[tls]
certificate = "/c.pem"
private_key = "/k.pem"
handshake_timeout = 4
[tls.tag.tenant-a]
certificate = "/a.pem"
private_key = "/ak.pem"
[general]
user = "nobody"
group = "nogroup"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.sockets_mgm.db_timeout, Duration::from_millis(2500));
        assert_eq!(c.tcp.workers, 2);
        assert_eq!(c.tcp.connection_lifetime, Duration::from_millis(1500));
        assert_eq!(c.tls.handshake_timeout, Duration::from_secs(4));
        assert_eq!(
            c.tls.for_tag(Some("tenant-a")).certificate.as_deref(),
            Some(Path::new("/a.pem"))
        );
        assert_eq!(
            c.tls.for_tag(Some("other")).certificate.as_deref(),
            Some(Path::new("/c.pem"))
        );
        assert_eq!(
            c.tls.for_tag(None).private_key.as_deref(),
            Some(Path::new("/k.pem"))
        );
        assert_eq!(c.general.user.as_deref(), Some("nobody"));
        let d = Config::default();
        assert_eq!(
            (d.tcp.workers, d.tcp.max_message_size, d.tcp.max_connections),
            (4, 65535, 4096)
        );
        assert_eq!(
            (d.tcp.drain_timeout, d.tcp.connection_lifetime),
            (Duration::from_secs(30), Duration::from_secs(120))
        );
        assert_eq!(d.sockets_mgm.db_timeout, Duration::from_secs(5));
    }

    #[test]
    fn stream_tls_and_general_refusals_name_the_key() {
        for (text, key) in [
            ("[tcp]\nworkers = 0", "tcp.workers"),
            (
                "[tcp]\ndrain_timeout = -1",
                "tcp.drain_timeout = -1: must be more than 0 and at most 86400 seconds",
            ),
            (
                "[tcp]\nconnection_lifetime = \"long\"",
                "tcp.connection_lifetime = \"long\": invalid type: string \"long\", expected a number of seconds",
            ),
            ("[tls]\nhandshake_timeout = 1e9", "tls.handshake_timeout = 1e9"),
            ("[tcp]\nbogus = 1", "tcp.bogus"),
            ("[tls]\ncertificate = \"/c.pem\"", "tls.certificate"),
            (
                "[tls]\nrequire_client_cert = true",
                "tls.require_client_cert",
            ),
            ("[general]\nuser = \"\"", "general.user"),
            ("[sockets_mgm]\ndb_timeout = 0", "sockets_mgm.db_timeout = 0"),
            (
                "[tls.tag.x]\nhandshake_timeout = 3",
                "unknown key tls.tag.x.handshake_timeout (known in [tls.tag.x]: certificate, \
                 private_key, ca_list, require_client_cert)",
            ),
            ("[tls]\ntag = 3", "tls.tag = 3: invalid type: integer `3`, expected a map"),
            (
                "[tls.tag]\nx = 3",
                "tls.tag.x = 3: invalid type: integer `3`, expected a [tls.tag.<TAG>] section",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(key), "{text:?}: {e}");
        }
    }

    #[test]
    fn observer_sections() {
        let c = parse(
            r#"
[general]
log_format = "json"
[mi_http]
listen = "127.0.0.1:8888"
root = "opensips_mi"
allow = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
auth_file = "/etc/sipsockd/users"
[mi_datagram]
socket = "udp:[::1]:8080"
unix_socket_mode = "0600"
[metrics]
listen = "[::1]:9090"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.general.log_format, LogFormat::Json);
        assert_eq!(c.mi_http.listen, Some("127.0.0.1:8888".parse().unwrap()));
        assert_eq!(c.mi_http.root, "opensips_mi");
        assert_eq!(c.mi_http.allow.len(), 3);
        assert_eq!(
            c.mi_datagram.socket,
            Some(DatagramSocket::Udp("[::1]:8080".parse().unwrap()))
        );
        assert_eq!(c.mi_datagram.mode(), 0o600);
        assert_eq!(c.metrics.listen, Some("[::1]:9090".parse().unwrap()));
        let c = parse(
            "[mi_datagram]\nsocket = \"/run/sipsockd/mi.sock\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            c.mi_datagram.socket,
            Some(DatagramSocket::Unix("/run/sipsockd/mi.sock".into()))
        );
        // Off unless configured; loopback only by default.
        let d = Config::default();
        assert_eq!((d.mi_http.listen, d.metrics.listen), (None, None));
        assert_eq!(d.mi_datagram.socket, None);
        assert_eq!(d.mi_http.root, "mi");
        assert_eq!(d.general.log_format, LogFormat::Text);
        let allow = &d.mi_http.allow;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for yes in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.2"] {
            assert!(allow.iter().any(|c| c.contains(ip(yes))), "{yes}");
        }
        for no in ["10.0.0.1", "128.0.0.1", "::2", "::ffff:10.0.0.1"] {
            assert!(!allow.iter().any(|c| c.contains(ip(no))), "{no}");
        }
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.2.3/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let host: Cidr = "2001:db8::1".parse().unwrap();
        assert!(host.contains("2001:db8::1".parse().unwrap()));
        assert!(!host.contains("2001:db8::2".parse().unwrap()));
        let net: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(net.contains("2001:db8:ffff::1".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "host/8",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn observer_refusals_name_the_key() {
        for (text, needle) in [
            (
                "[mi_http]\nlisten = \"localhost:8888\"",
                "mi_http.listen = \"localhost:8888\"",
            ),
            (
                "[mi_http]\nroot = \"a/b\"",
                "mi_http.root = \"a/b\": must be one path segment",
            ),
            ("[mi_http]\nroot = \"\"", "mi_http.root"),
            (
                "[mi_http]\nallow = []",
                "mi_http.allow = []: would refuse every client",
            ),
            ("[mi_http]\nallow = [\"10.0.0.0/40\"]", "mi_http.allow"),
            ("[mi_http]\nallow = \"10.0.0.0/8\"", "mi_http.allow"),
            ("[mi_http]\nauth_file = \"\"", "mi_http.auth_file"),
            (
                "[mi_http]\nport = 1",
                "unknown key mi_http.port (known in [mi_http]: listen, root, allow, auth_file)",
            ),
            (
                "[mi_datagram]\nsocket = \"udp:host:1\"",
                "mi_datagram.socket = \"udp:host:1\": not udp:IP:PORT",
            ),
            (
                "[mi_datagram]\nsocket = \"\"",
                "mi_datagram.socket = \"\": must not be empty",
            ),
            (
                "[mi_datagram]\nunix_socket_mode = \"999\"",
                "mi_datagram.unix_socket_mode",
            ),
            ("[metrics]\nlisten = 9090", "metrics.listen = 9090"),
            (
                "[mi_http]\nlisten = \"127.0.0.1:1\"\n[metrics]\nlisten = \"127.0.0.1:1\"",
                "metrics.listen = \"127.0.0.1:1\": same address as mi_http.listen",
            ),
            (
                "[general]\nlog_format = \"xml\"",
                "general.log_format = \"xml\"",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let long = format!("[mi_datagram]\nsocket = \"/{}\"", "a".repeat(MAX_UNIX_PATH));
        assert!(err(&long).contains("at most 107 bytes"));
    }

    #[test]
    fn empty_file_gives_the_seed_defaults() {
        let c = parse("", "t.toml").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.sockets_mgm.db_url, "sqlite://sipsockd.db");
        assert_eq!(c.sockets_mgm.processes, 8);
        assert_eq!(c.sockets_mgm.max_sockets, 100);
        assert_eq!(c.mi_fifo.mode(), 0o660);
        assert_eq!(c.sip.reply_code, 503);
    }

    #[test]
    fn the_issue_example_loads() {
        let text = r#"
[sockets_mgm]
db_url = "postgresql://u@db/x"
table_name = "sockets_def"
socket_column = "socket"
advertised_column = "adv"
tag_column = "tag"
flags_column = "flags"
tos_column = "tos"
processes = 2
max_sockets = 65535
invalid_rows = "skip"
[mi_fifo]
fifo_name = "/run/f"
fifo_mode = "0600"
reply_dir = "/run/"
[shm]
path = "/dev/shm/x"
[sip]
reply_code = 480
reply_reason = "Temporarily Unavailable"
"#;
        let c = parse(text, "t.toml").unwrap();
        assert_eq!(c.sockets_mgm.table_name, "sockets_def");
        assert_eq!(c.sockets_mgm.advertised_column, "adv");
        assert_eq!(c.sockets_mgm.processes, 2);
        assert_eq!(c.sockets_mgm.max_sockets, 65535);
        assert_eq!(c.sockets_mgm.invalid_rows, InvalidRows::Skip);
        assert_eq!(c.mi_fifo.mode(), 0o600);
        assert_eq!(c.shm.path, PathBuf::from("/dev/shm/x"));
        assert_eq!(c.sip.reply_code, 480);
    }

    #[test]
    fn refusals_name_the_key_and_the_value() {
        let cases: &[(&str, &[&str])] = &[
            ("[nope]\n", &["unknown section [nope]"]),
            ("[nope]\nx = 1\n", &["unknown section [nope]"]),
            (
                "[sockets_mgm]\nprocesse = 8\n",
                &["sockets_mgm.processe", "unknown key"],
            ),
            (
                "processes = 8\n",
                &["processes is outside any section", "[sockets_mgm]"],
            ),
            (
                "sockets_mgm = 3\n",
                &["sockets_mgm = 3", "expected a [sockets_mgm] section"],
            ),
            (
                "[sockets_mgm]\nprocesses = \"8\"\n",
                &["sockets_mgm.processes = \"8\"", "invalid type: string"],
            ),
            (
                "[sockets_mgm]\nprocesses = 0\n",
                &["sockets_mgm.processes = 0", "between 1"],
            ),
            (
                "[sockets_mgm]\nprocesses = -3\n",
                &["sockets_mgm.processes = -3"],
            ),
            (
                "[sockets_mgm]\nprocesses = 100000\n",
                &["sockets_mgm.processes = 100000"],
            ),
            (
                "[sockets_mgm]\nmax_sockets = 0\n",
                &["sockets_mgm.max_sockets = 0", "1 and 65535"],
            ),
            (
                "[sockets_mgm]\nmax_sockets = 65536\n",
                &["sockets_mgm.max_sockets = 65536"],
            ),
            (
                "[sockets_mgm]\nmax_sockets = 1.5\n",
                &["sockets_mgm.max_sockets = 1.5", "expected u32"],
            ),
            (
                "[sockets_mgm]\ntable_name = \"socks; DROP\"\n",
                &["sockets_mgm.table_name = \"socks; DROP\"", "identifier"],
            ),
            (
                "[sockets_mgm]\ntable_name = \"\"\n",
                &["sockets_mgm.table_name = \"\"", "identifier"],
            ),
            (
                "[sockets_mgm]\ntos_column = \"1tos\"\n",
                &["sockets_mgm.tos_column = \"1tos\""],
            ),
            (
                "[sockets_mgm]\nflags_column = \"fl-ags\"\n",
                &["sockets_mgm.flags_column = \"fl-ags\""],
            ),
            (
                "[sockets_mgm]\ntag_column = \"socket\"\n",
                &[
                    "sockets_mgm.tag_column = \"socket\"",
                    "same column as sockets_mgm.socket_column",
                ],
            ),
            (
                "[sockets_mgm]\ninvalid_rows = \"ignore\"\n",
                &[
                    "sockets_mgm.invalid_rows = \"ignore\"",
                    "expected `reject` or `skip`",
                ],
            ),
            (
                "[sockets_mgm]\ndb_url = \"oracle://x\"\n",
                &["sockets_mgm.db_url = \"oracle://x\"", "unsupported"],
            ),
            (
                "[sockets_mgm]\ndb_url = \"sqlite://\"\n",
                &["sockets_mgm.db_url = \"sqlite://\""],
            ),
            (
                "[sockets_mgm]\ndb_url = \"just-a-file.db\"\n",
                &["sockets_mgm.db_url"],
            ),
            (
                "[sockets_mgm]\ndb_url = 5\n",
                &["sockets_mgm.db_url", "a string"],
            ),
            (
                "[mi_fifo]\nfifo_mode = \"0968\"\n",
                &["mi_fifo.fifo_mode = \"0968\"", "octal"],
            ),
            (
                "[mi_fifo]\nfifo_mode = \"01777\"\n",
                &["mi_fifo.fifo_mode = \"01777\""],
            ),
            (
                "[mi_fifo]\nfifo_mode = 660\n",
                &["mi_fifo.fifo_mode = 660", "a string"],
            ),
            ("[mi_fifo]\nfifo_name = \"\"\n", &["mi_fifo.fifo_name"]),
            (
                "[mi_fifo]\nowner = \"x\"\n",
                &["unknown key mi_fifo.owner (known in [mi_fifo]: fifo_name, fifo_mode"],
            ),
            ("[shm]\npath = \"\"\n", &["shm.path"]),
            (
                "[shm]\nsize = 1\n",
                &["unknown key shm.size (known in [shm]: path)"],
            ),
            (
                "[sip]\ncode = 1\n",
                &["unknown key sip.code (known in [sip]: reply_code, reply_reason)"],
            ),
            (
                "[sip]\nreply_code = 99\n",
                &["sip.reply_code = 99", "100 to 699"],
            ),
            ("[sip]\nreply_code = 700\n", &["sip.reply_code = 700"]),
            ("[sip]\nreply_code = 70000\n", &["sip.reply_code = 70000"]),
            (
                "[sip]\nreply_reason = \"A\\r\\nX-Evil: 1\"\n",
                &["sip.reply_reason = \"A\\r\\nX-Evil: 1\"", "control"],
            ),
            ("[sockets_mgm\n", &["t.toml", "not valid TOML"]),
        ];
        for (text, needles) in cases {
            let e = err(text);
            assert!(e.starts_with("t.toml: "), "{text:?} -> {e}");
            for n in *needles {
                assert!(e.contains(n), "{text:?} -> {e:?} lacks {n:?}");
            }
        }
    }

    #[test]
    fn passwords_never_appear_in_errors() {
        let e = err("[sockets_mgm]\ndb_url = \"oracle://opensips:s3cret@h/db\"\n");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("oracle://opensips:***@h/db"), "{e}");
        let e = err("[sockets_mgm]\ndb_url = \"mysql://opensips:s3cret@h/db\"\nprocesses = 0\n");
        assert!(!e.contains("s3cret"), "{e}");
        // A syntax error quotes the line.
        let e = err("[sockets_mgm]\ndb_url = \"mysql://opensips:s3cret@h/db\n");
        assert!(
            !e.contains("s3cret") && e.contains("opensips:***@h/db"),
            "{e}"
        );
        // Wherever a URL lands: a type error on another key, a password with spaces and `#`.
        for text in [
            "[sockets_mgm]\nprocesses = \"mysql://u:s3cret@h/db\"\n",
            "[sockets_mgm]\ndb_url = [\"mysql://u:s3 c#ret@h/db\"]\n",
            "[sockets_mgm]\ndb_url = \"mysql://u:s3 c#ret@h/db\"\nprocesses = 0\n",
            "[sockets_mgm]\ndb_url = \"postgres://u:s3/cret@h:99999/db\"\n",
            "[sockets_mgm]\ndb_url = \"mysql://u:s3 c#ret@h/db\n",
        ] {
            let e = err(text);
            assert!(!e.contains("s3") && !e.contains("c#ret"), "{e}");
        }
    }

    #[test]
    fn the_shown_db_url_hides_the_password() {
        let s = SocketsMgm {
            db_url: "mysql://opensips:opensipsrw@localhost/opensips".into(),
            ..SocketsMgm::default()
        };
        assert_eq!(
            s.db_url_redacted(),
            "mysql://opensips:***@localhost/opensips"
        );
        let debug = format!("{s:?}");
        assert!(
            debug.contains("opensips:***@") && !debug.contains("opensipsrw"),
            "{debug}"
        );
    }

    #[test]
    fn octal_modes() {
        for (s, want) in [
            ("0660", Some(0o660)),
            ("660", Some(0o660)),
            ("0o600", Some(0o600)),
            ("0", Some(0)),
            ("0777", Some(0o777)),
            ("", None),
            ("0x1ff", None),
            ("8", None),
            ("1777", None),
            ("00000660", None),
        ] {
            assert_eq!(parse_octal_mode(s), want, "{s:?}");
        }
    }

    #[test]
    fn identifiers() {
        for ok in ["sockets", "_x", "Sockets_2", &"a".repeat(63)] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "a.b", "\"a\"", "é", &"a".repeat(64)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn load_reads_the_given_file_and_says_which_when_missing() {
        let dir = std::env::temp_dir().join(format!("sipsockd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[sockets_mgm]\nprocesses = 3\n").unwrap();
        assert_eq!(load(Some(&file)).unwrap().sockets_mgm.processes, 3);
        let missing = dir.join("missing.toml");
        let e = load(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
