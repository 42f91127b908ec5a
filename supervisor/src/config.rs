//! The configuration file (`--config FILE`, TOML).
//!
//! Sections and keys mirror the OpenSIPS modparams of `sockets_mgm` and `mi_fifo`, with the seed's
//! defaults. Loading refuses unknown sections and keys, wrong types and out-of-range values with an
//! error naming the key and the value. This module owns parsing and validation only; it never opens
//! the database or a socket.
//!
//! The file is walked key by key (rather than handed to serde in one go) so that every refusal can
//! name `section.key` and the offending value, which serde's messages do not reliably do.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
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
}

/// `[tcp]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tcp {
    /// Stream worker processes (fixed pool).
    pub workers: u32,
    /// Largest SIP header section accepted on a stream, in bytes.
    pub max_message_size: u32,
    /// How long connections of a removed socket may go on.
    pub drain_timeout: Duration,
    /// A connection with no complete message for this long is closed.
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

/// Certificate settings of one TLS context: `[tls]` itself, or a `[tls.tag.<TAG>]` override.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
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

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// The default certificate settings.
    pub default: TlsCert,
    /// Per-tag certificate settings (`[tls.tag.<TAG>]`): a socket with that tag presents these.
    pub tags: std::collections::BTreeMap<String, TlsCert>,
    /// A handshake not finished within this is dropped.
    pub handshake_timeout: Duration,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            default: TlsCert::default(),
            tags: Default::default(),
            handshake_timeout: Duration::from_secs(10),
        }
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
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// User to run as after start-up (when started as root).
    pub user: Option<String>,
    /// Group to run as after start-up.
    pub group: Option<String>,
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

/// `[sockets_mgm]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketsMgm {
    /// Database URL: `sqlite://rel/path`, `sqlite:///abs/path`, `mysql://...`, `postgres://...`.
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
    /// Longest a database connect or query may take before the reload fails.
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

impl SocketsMgm {
    /// `db_url` with the password replaced by `***`: the only form that may reach a log or an error.
    pub fn db_url_redacted(&self) -> String {
        redact_url(&self.db_url)
    }
}

/// `url` with the password of its user-info part (`scheme://user:PASSWORD@host`) replaced by `***`.
///
/// A URL without a password is returned unchanged; a password given as a query parameter
/// (`?password=...`) is hidden too, since libpq-style URLs allow it.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first '/', '?' or '#'; the user info at the last '@' before that.
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***{host}"),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// `text` with [`redact_url`] applied to every URL-looking word in it.
fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The password of `url`'s user info, if any (used to scrub it from driver messages).
pub(crate) fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let userinfo = &authority[..authority.rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| password.to_string())
}

/// `[mi_fifo]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
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
#[serde(deny_unknown_fields, default)]
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
#[serde(deny_unknown_fields, default)]
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

/// The configuration file looked for when `--config` is not given.
pub const DEFAULT_FILE: &str = "sipsockd.toml";

/// Most UDP worker processes; far above any sane pool, low enough that a typo cannot fork-bomb.
pub const MAX_PROCESSES: u32 = 1024;

/// Longest table or column name accepted (PostgreSQL truncates identifiers past 63 bytes).
const MAX_IDENTIFIER: usize = 63;

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
        /// The TOML parser's message (it shows the line).
        message: String,
    },
    /// A section the program does not know.
    #[error("{file}: unknown section [{section}] (known: sockets_mgm, mi_fifo, shm, sip, tcp, tls, general)")]
    UnknownSection {
        /// The file.
        file: String,
        /// The section name.
        section: String,
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
    /// A value of the wrong TOML type.
    #[error("{file}: {key} = {value}: expected {expected}")]
    Type {
        /// The file.
        file: String,
        /// `section.key`.
        key: String,
        /// The value as written (a URL's password hidden).
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A value of the right type but not acceptable.
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
                let config = Config::default();
                config.validate("<built-in defaults>")?;
                return Ok(config);
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

/// Parse and validate the TOML text of a configuration; `file` only names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            file: file.to_string(),
            // The parser quotes the offending line, which may be the db_url with its password.
            message: redact_urls_in(e.to_string().trim_end()),
        })?;
    let mut config = Config::default();
    let f = |s: &str| s.to_string();
    for (section, value) in &table {
        let Some(keys) = value.as_table() else {
            if SECTIONS.contains(&section.as_str()) {
                return Err(ConfigError::Type {
                    file: f(file),
                    key: section.clone(),
                    value: value.to_string(),
                    expected: "a section ([name] followed by keys)",
                });
            }
            return Err(ConfigError::UnknownKey {
                file: f(file),
                key: section.clone(),
                section: "top level".into(),
                known: "none: keys belong in a section such as [sockets_mgm]".into(),
            });
        };
        for (key, v) in keys {
            let field = Field {
                file,
                section,
                key,
                value: v,
            };
            match section.as_str() {
                "sockets_mgm" => {
                    let s = &mut config.sockets_mgm;
                    match key.as_str() {
                        "db_url" => {
                            // Never echo a password, even in a type error.
                            s.db_url = field.string_redacted()?;
                        }
                        "table_name" => s.table_name = field.string()?,
                        "socket_column" => s.socket_column = field.string()?,
                        "advertised_column" => s.advertised_column = field.string()?,
                        "tag_column" => s.tag_column = field.string()?,
                        "flags_column" => s.flags_column = field.string()?,
                        "tos_column" => s.tos_column = field.string()?,
                        "processes" => s.processes = field.u32()?,
                        "max_sockets" => s.max_sockets = field.u32()?,
                        "invalid_rows" => {
                            s.invalid_rows = match field.string()?.as_str() {
                                "reject" => InvalidRows::Reject,
                                "skip" => InvalidRows::Skip,
                                _ => return Err(field.invalid("must be \"reject\" or \"skip\"")),
                            }
                        }
                        "db_timeout" => s.db_timeout = field.seconds()?,
                        _ => return Err(field.unknown(SOCKETS_MGM_KEYS)),
                    }
                }
                "mi_fifo" => {
                    let m = &mut config.mi_fifo;
                    match key.as_str() {
                        "fifo_name" => m.fifo_name = field.string()?.into(),
                        "fifo_mode" => m.fifo_mode = field.string()?,
                        "reply_dir" => m.reply_dir = field.string()?.into(),
                        _ => return Err(field.unknown(MI_FIFO_KEYS)),
                    }
                }
                "shm" => match key.as_str() {
                    "path" => config.shm.path = field.string()?.into(),
                    _ => return Err(field.unknown(SHM_KEYS)),
                },
                "sip" => match key.as_str() {
                    "reply_code" => {
                        let code = field.integer()?;
                        config.sip.reply_code = u16::try_from(code)
                            .ok()
                            .filter(|c| (100..=699).contains(c))
                            .ok_or_else(|| {
                                field.invalid("must be a SIP status code, 100 to 699")
                            })?;
                    }
                    "reply_reason" => config.sip.reply_reason = field.string()?,
                    _ => return Err(field.unknown(SIP_KEYS)),
                },
                "tcp" => {
                    let t = &mut config.tcp;
                    match key.as_str() {
                        "workers" => t.workers = field.u32()?,
                        "max_message_size" => t.max_message_size = field.u32()?,
                        "drain_timeout" => t.drain_timeout = field.seconds()?,
                        "connection_lifetime" => t.connection_lifetime = field.seconds()?,
                        "max_connections" => t.max_connections = field.u32()?,
                        _ => return Err(field.unknown(TCP_KEYS)),
                    }
                }
                "tls" => match key.as_str() {
                    "handshake_timeout" => config.tls.handshake_timeout = field.seconds()?,
                    "tag" => {
                        let Some(tags) = v.as_table() else {
                            return Err(field.wrong_type("a table of [tls.tag.<TAG>] sections"));
                        };
                        for (tag, keys) in tags {
                            let section = format!("tls.tag.{tag}");
                            let Some(keys) = keys.as_table() else {
                                return Err(Field {
                                    file,
                                    section: &section,
                                    key: "",
                                    value: keys,
                                }
                                .wrong_type("a section ([tls.tag.<TAG>] followed by keys)"));
                            };
                            let mut cert = TlsCert::default();
                            for (key, v) in keys {
                                tls_cert_key(
                                    &mut cert,
                                    &Field {
                                        file,
                                        section: &section,
                                        key,
                                        value: v,
                                    },
                                )?;
                            }
                            config.tls.tags.insert(tag.clone(), cert);
                        }
                    }
                    _ => tls_cert_key(&mut config.tls.default, &field)?,
                },
                "general" => match key.as_str() {
                    "user" => config.general.user = Some(field.string()?),
                    "group" => config.general.group = Some(field.string()?),
                    _ => return Err(field.unknown(GENERAL_KEYS)),
                },
                _ => {
                    return Err(ConfigError::UnknownSection {
                        file: f(file),
                        section: section.clone(),
                    })
                }
            }
        }
        if !SECTIONS.contains(&section.as_str()) {
            // An empty unknown section has no key to trip on above.
            return Err(ConfigError::UnknownSection {
                file: f(file),
                section: section.clone(),
            });
        }
    }
    config.validate(file)?;
    Ok(config)
}

const SECTIONS: &[&str] = &[
    "sockets_mgm",
    "mi_fifo",
    "shm",
    "sip",
    "tcp",
    "tls",
    "general",
];
const TCP_KEYS: &[&str] = &[
    "workers",
    "max_message_size",
    "drain_timeout",
    "connection_lifetime",
    "max_connections",
];
const TLS_KEYS: &[&str] = &[
    "certificate",
    "private_key",
    "ca_list",
    "require_client_cert",
    "handshake_timeout",
    "tag",
];
const TLS_TAG_KEYS: &[&str] = &[
    "certificate",
    "private_key",
    "ca_list",
    "require_client_cert",
];
const GENERAL_KEYS: &[&str] = &["user", "group"];

/// One key of `[tls]` or `[tls.tag.<TAG>]` that sets certificate material.
fn tls_cert_key(cert: &mut TlsCert, field: &Field<'_>) -> Result<(), ConfigError> {
    match field.key {
        "certificate" => cert.certificate = Some(field.string()?.into()),
        "private_key" => cert.private_key = Some(field.string()?.into()),
        "ca_list" => cert.ca_list = Some(field.string()?.into()),
        "require_client_cert" => cert.require_client_cert = field.boolean()?,
        _ => {
            return Err(field.unknown(if field.section == "tls" {
                TLS_KEYS
            } else {
                TLS_TAG_KEYS
            }))
        }
    }
    Ok(())
}
const SOCKETS_MGM_KEYS: &[&str] = &[
    "db_url",
    "table_name",
    "socket_column",
    "advertised_column",
    "tag_column",
    "flags_column",
    "tos_column",
    "processes",
    "max_sockets",
    "invalid_rows",
    "db_timeout",
];
const MI_FIFO_KEYS: &[&str] = &["fifo_name", "fifo_mode", "reply_dir"];
const SHM_KEYS: &[&str] = &["path"];
const SIP_KEYS: &[&str] = &["reply_code", "reply_reason"];

/// One `key = value` of the file, with what is needed to name it in an error.
struct Field<'a> {
    file: &'a str,
    section: &'a str,
    key: &'a str,
    value: &'a toml::Value,
}

impl Field<'_> {
    fn name(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }

    fn shown(&self) -> String {
        self.value.to_string()
    }

    fn wrong_type(&self, expected: &'static str) -> ConfigError {
        ConfigError::Type {
            file: self.file.to_string(),
            key: self.name(),
            value: self.shown(),
            expected,
        }
    }

    fn invalid(&self, reason: &str) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            key: self.name(),
            value: self.shown(),
            reason: reason.to_string(),
        }
    }

    fn unknown(&self, known: &[&str]) -> ConfigError {
        ConfigError::UnknownKey {
            file: self.file.to_string(),
            key: self.name(),
            section: self.section.to_string(),
            known: known.join(", "),
        }
    }

    fn string(&self) -> Result<String, ConfigError> {
        self.value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.wrong_type("a string"))
    }

    /// Like [`Field::string`], for a URL whose password must not be echoed even in a type error.
    fn string_redacted(&self) -> Result<String, ConfigError> {
        match self.value.as_str() {
            Some(s) => Ok(s.to_string()),
            None => Err(ConfigError::Type {
                file: self.file.to_string(),
                key: self.name(),
                value: format!("<{}>", self.value.type_str()),
                expected: "a string",
            }),
        }
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        self.value
            .as_bool()
            .ok_or_else(|| self.wrong_type("true or false"))
    }

    /// A positive duration in seconds, integer or fractional.
    fn seconds(&self) -> Result<Duration, ConfigError> {
        let secs = match self.value {
            toml::Value::Integer(n) => *n as f64,
            toml::Value::Float(x) => *x,
            _ => return Err(self.wrong_type("a number of seconds")),
        };
        if !(secs > 0.0 && secs <= 86_400.0) {
            return Err(self.invalid("must be more than 0 and at most 86400 seconds"));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    fn integer(&self) -> Result<i64, ConfigError> {
        self.value
            .as_integer()
            .ok_or_else(|| self.wrong_type("an integer"))
    }

    fn u32(&self) -> Result<u32, ConfigError> {
        let n = self.integer()?;
        u32::try_from(n).map_err(|_| self.invalid("must be a positive integer"))
    }
}

impl Config {
    /// Check the values' ranges and forms (the types are already right); `file` names the source
    /// in errors. Called by [`load`]; public so a hand-built configuration can be checked too.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, value: String, reason: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            value,
            reason,
        };
        let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
        let s = &self.sockets_mgm;
        check_db_url(&s.db_url).map_err(|reason| {
            invalid(
                "sockets_mgm.db_url",
                quoted(&s.db_url_redacted()),
                reason.into(),
            )
        })?;
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

/// The backends `db_url` may name; the database module does the full parse.
fn check_db_url(url: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("expected sqlite://PATH, mysql://USER:PASS@HOST[:PORT]/DB or postgres://...");
    };
    match scheme.to_ascii_lowercase().as_str() {
        "sqlite" if rest.is_empty() || rest == "/" => {
            Err("a sqlite URL needs a file: sqlite://relative/path or sqlite:///absolute/path")
        }
        "sqlite" | "mysql" | "postgres" | "postgresql" => Ok(()),
        _ => Err("unsupported database (sqlite, mysql, postgres or postgresql)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, "t.toml").unwrap_err().to_string()
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
            ("[tcp]\ndrain_timeout = -1", "tcp.drain_timeout"),
            (
                "[tcp]\nconnection_lifetime = \"long\"",
                "tcp.connection_lifetime",
            ),
            ("[tcp]\nbogus = 1", "tcp.bogus"),
            ("[tls]\ncertificate = \"/c.pem\"", "tls.certificate"),
            (
                "[tls]\nrequire_client_cert = true",
                "tls.require_client_cert",
            ),
            (
                "[tls.tag.x]\nhandshake_timeout = 3",
                "tls.tag.x.handshake_timeout",
            ),
            ("[general]\nuser = \"\"", "general.user"),
            ("[sockets_mgm]\ndb_timeout = 0", "sockets_mgm.db_timeout"),
        ] {
            let e = err(text);
            assert!(e.contains(key), "{text:?}: {e}");
        }
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
            ("processes = 8\n", &["unknown key processes", "top level"]),
            (
                "sockets_mgm = 3\n",
                &["sockets_mgm = 3", "expected a section"],
            ),
            (
                "[sockets_mgm]\nprocesses = \"8\"\n",
                &["sockets_mgm.processes = \"8\"", "an integer"],
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
                &["sockets_mgm.max_sockets = 1.5", "integer"],
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
                &["sockets_mgm.invalid_rows = \"ignore\""],
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
            ("[mi_fifo]\nowner = \"x\"\n", &["mi_fifo.owner"]),
            ("[shm]\npath = \"\"\n", &["shm.path"]),
            ("[shm]\nsize = 1\n", &["shm.size"]),
            (
                "[sip]\nreply_code = 99\n",
                &["sip.reply_code = 99", "100 to 699"],
            ),
            ("[sip]\nreply_code = 700\n", &["sip.reply_code = 700"]),
            ("[sip]\nreply_code = 70000\n", &["sip.reply_code = 70000"]),
            (
                "[sip]\nreply_reason = \"A\\r\\nX-Evil: 1\"\n",
                &["sip.reply_reason", "control"],
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
        assert_eq!(
            redact_urls_in("a 'x://u:p@h' y://v:q@k/d\" z"),
            "a 'x://u:***@h' y://v:***@k/d\" z"
        );
    }

    #[test]
    fn redaction() {
        let cases = [
            (
                "mysql://opensips:opensipsrw@localhost/opensips",
                "mysql://opensips:***@localhost/opensips",
            ),
            (
                "mysql://opensips@localhost/opensips",
                "mysql://opensips@localhost/opensips",
            ),
            (
                "postgres://u:p@h:5432/db?sslmode=disable",
                "postgres://u:***@h:5432/db?sslmode=disable",
            ),
            (
                "postgres://u@h/db?password=x&a=b",
                "postgres://u@h/db?password=***&a=b",
            ),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("sqlite://sipsockd.db", "sqlite://sipsockd.db"),
            ("sqlite:///var/lib/s.db", "sqlite:///var/lib/s.db"),
            ("garbage", "garbage"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
        let s = SocketsMgm {
            db_url: "mysql://opensips:opensipsrw@localhost/opensips".into(),
            ..SocketsMgm::default()
        };
        assert_eq!(
            s.db_url_redacted(),
            "mysql://opensips:***@localhost/opensips"
        );
        assert_eq!(url_password(&s.db_url).as_deref(), Some("opensipsrw"));
        assert_eq!(url_password("mysql://u@h/d"), None);
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
