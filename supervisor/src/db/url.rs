//! `[sockets_mgm] db_url`: what it names (which database, where, as whom) and the only form of it
//! that may be shown.
//!
//! This module owns every reading of `db_url`: the configuration checks it with [`DbUrl::parse`],
//! the database code connects with what that gives, and every log line and error shows
//! [`redact`]'s form. It never connects and never logs.
//!
//! The user info is everything between `://` and the LAST `@`, so a password may hold `/ ? # @ :`
//! as typed (an `@` in a query parameter must then be written `%40`); user and password are
//! percent-decoded, so `%2F` is a `/`. The user ends at the first `:`. The rest (`host[:port]/db`
//! and a query) is parsed by the `url` crate. The credentials go to the drivers apart from the
//! URL, so no driver ever holds them in a URL it could echo.
//!
//! [`redact`] shows `scheme://user:***@host...` when the URL parses, and hides everything between
//! `://` and the last `@` when it does not; a `password=` query parameter is hidden in both cases.

use percent_encoding::percent_decode_str;
use std::path::PathBuf;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SQLite (embedded).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl Kind {
    /// The name to show in messages.
    pub fn server(self) -> &'static str {
        match self {
            Kind::Sqlite => "SQLite",
            Kind::Postgres => "PostgreSQL",
            Kind::Mysql => "MySQL/MariaDB",
        }
    }
}

/// Where a `db_url` points, in the form its driver takes.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `sqlite://rel` (relative to the working directory) or `sqlite:///abs`.
    Sqlite(PathBuf),
    /// A database server.
    Server {
        /// `postgresql://host[:port][/db][?query]` or `mysql://...`: no user info.
        url: String,
        /// The user, percent-decoded.
        user: Option<String>,
        /// The password, percent-decoded.
        password: Option<String>,
    },
}

// By hand, so that a `{:?}` of a target can never print the password.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Target::Server {
                url,
                user,
                password,
            } => f
                .debug_struct("Server")
                .field("url", url)
                .field("user", user)
                .field("password", &password.as_ref().map(|_| "***"))
                .finish(),
        }
    }
}

/// A `db_url` that names a database sipsockd can use. It prints (`{}` and `{:?}`) as
/// [`redact`]'s form.
#[derive(Clone)]
pub struct DbUrl {
    kind: Kind,
    target: Target,
    shown: String,
    /// The password in every form a message might carry it (as written, decoded), longest first.
    secrets: Vec<String>,
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbUrl")
            .field("kind", &self.kind)
            .field("target", &self.target)
            .field("shown", &self.shown)
            .finish_non_exhaustive()
    }
}

/// Why a `db_url` cannot be used. Its text never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct UrlError {
    /// The URL as [`redact`] shows it.
    pub shown: String,
    /// What is wrong.
    pub reason: String,
}

/// `text` split into scheme, user info (before the last `@`) and the rest.
struct Parts<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    rest: &'a str,
}

fn split(text: &str) -> Option<Parts<'_>> {
    let (scheme, after) = text.split_once("://")?;
    let (userinfo, rest) = match after.rfind('@') {
        Some(at) => (Some(&after[..at]), &after[at + 1..]),
        None => (None, after),
    };
    Some(Parts {
        scheme,
        userinfo,
        rest,
    })
}

/// `scheme://rest` as the `url` crate reads it, with a non-empty host.
fn parse_rest(scheme: &str, rest: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(&format!("{scheme}://{rest}")).map_err(|e| e.to_string())?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host after the user info".into());
    }
    Ok(parsed)
}

/// `rest` with the value of any `password=` query parameter replaced by `***`.
fn redact_query(rest: &str) -> String {
    let Some((head, query)) = rest.split_once('?') else {
        return rest.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{head}?{}", query.join("&"))
}

/// The values of `password=` query parameters, as written.
fn query_passwords(rest: &str) -> impl Iterator<Item = &str> {
    rest.split_once('?')
        .map_or("", |(_, q)| q)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.eq_ignore_ascii_case("password"))
        .map(|(_, v)| v)
}

/// `text` with its password hidden: the only form of a URL that may reach a log or an error.
///
/// `scheme://user:***@rest` when the part after the last `@` parses as a URL; otherwise everything
/// between `://` and the last `@` becomes `***` (the user too: where it ends is not known). A
/// `password=` query parameter is hidden either way. Text without `://` is shown as written.
pub fn redact(text: &str) -> String {
    let Some(p) = split(text) else {
        return text.to_string();
    };
    let rest = redact_query(p.rest);
    let scheme = p.scheme;
    match p.userinfo {
        None => format!("{scheme}://{rest}"),
        Some(userinfo) if parse_rest(scheme, p.rest).is_ok() => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{rest}"),
            None => format!("{scheme}://{userinfo}@{rest}"),
        },
        Some(_) => format!("{scheme}://***@{rest}"),
    }
}

/// `text` with [`redact`] applied to every URL in it (a TOML parser's message quotes the line,
/// which may be the `db_url` line). A URL right after a quote runs to the closing quote or the end
/// of the line (a password may hold spaces); any other ends at a blank or a quote.
pub fn redact_in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
            .map_or(0, |i| i + 1);
        let quote = rest[..start]
            .chars()
            .next_back()
            .filter(|c| matches!(c, '"' | '\''));
        let end = match quote {
            Some(q) => rest[at..].find([q, '\n']),
            None => rest[at..].find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`')),
        }
        .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Percent-decode one part of the user info, which must be UTF-8 once decoded.
fn decode(part: &str, what: &str) -> Result<String, String> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("the {what} is not UTF-8 once percent-decoded"))
}

impl DbUrl {
    /// Read a `db_url`: `sqlite://rel/path`, `sqlite:///abs/path`,
    /// `mysql://[user[:password]@]host[:port]/db[?...]`, `postgres://...` or `postgresql://...`.
    pub fn parse(text: &str) -> Result<DbUrl, UrlError> {
        let shown = redact(text);
        let bad = |reason: &str| UrlError {
            shown: shown.clone(),
            reason: reason.to_string(),
        };
        let Some(p) = split(text) else {
            return Err(bad(
                "expected sqlite://PATH, mysql://USER:PASSWORD@HOST[:PORT]/DB or postgres://...",
            ));
        };
        let (kind, driver_scheme) = match p.scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                // Whatever looks like user info is refused rather than opened as a file name
                // that would then be printed whole.
                if p.userinfo.is_some() {
                    return Err(bad(
                        "a sqlite URL takes no user or password (and its path no @): \
                         sqlite://relative/path or sqlite:///absolute/path",
                    ));
                }
                let path = p.rest;
                if path.is_empty() || path == "/" {
                    return Err(bad(
                        "a sqlite URL needs a file: sqlite://relative/path or sqlite:///absolute/path",
                    ));
                }
                return Ok(DbUrl {
                    kind: Kind::Sqlite,
                    target: Target::Sqlite(PathBuf::from(path)),
                    shown,
                    secrets: Vec::new(),
                });
            }
            "postgres" | "postgresql" => (Kind::Postgres, "postgresql"),
            "mysql" => (Kind::Mysql, "mysql"),
            _ => {
                return Err(bad(
                    "unsupported database (sqlite, mysql, postgres or postgresql)",
                ))
            }
        };
        parse_rest(driver_scheme, p.rest)
            .map_err(|e| bad(&format!("cannot read the host part: {e}")))?;
        let (user, password) = match p.userinfo.map(|u| u.split_once(':').unwrap_or((u, ""))) {
            None => (None, None),
            Some((user, password)) => (
                Some(decode(user, "user").map_err(|e| bad(&e))?).filter(|u| !u.is_empty()),
                Some(decode(password, "password").map_err(|e| bad(&e))?).filter(|p| !p.is_empty()),
            ),
        };
        let mut secrets: Vec<String> = Vec::new();
        let written = p.userinfo.and_then(|u| u.split_once(':')).map(|(_, pw)| pw);
        for s in written.into_iter().chain(query_passwords(p.rest)) {
            secrets.push(s.to_string());
            secrets.push(percent_decode_str(s).decode_utf8_lossy().into_owned());
        }
        secrets.extend(password.clone());
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Ok(DbUrl {
            kind,
            target: Target::Server {
                url: format!("{driver_scheme}://{}", p.rest),
                user,
                password,
            },
            shown,
            secrets,
        })
    }

    /// Which database this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The URL with its password hidden: the form to print.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Where to connect, for the drivers.
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// `message` (a driver's words) with the password, in any form it was given, replaced by
    /// `***`: drivers may echo their connection parameters.
    pub fn scrub(&self, message: String) -> String {
        self.secrets
            .iter()
            .fold(message, |m, secret| m.replace(secret.as_str(), "***"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (user, password) as written in a URL, and as the server must get them.
    const AWKWARD: &[(&str, &str, &str, &str)] = &[
        ("alice", "se/cret", "alice", "se/cret"),
        ("alice", "se?cret", "alice", "se?cret"),
        ("alice", "se#cret", "alice", "se#cret"),
        ("alice", "12#cret", "alice", "12#cret"),
        ("alice", "se@cr@et", "alice", "se@cr@et"),
        ("alice", "se:cr:et", "alice", "se:cr:et"),
        ("alice", "p%2Fa%3Fs%23s%40w%3Ard", "alice", "p/a?s#s@w:rd"),
        ("al%40ice", "x/y", "al@ice", "x/y"),
        ("al/ice", "x?y", "al/ice", "x?y"),
        ("al%3Aice", "50%off", "al:ice", "50%off"),
    ];

    #[test]
    fn awkward_credentials_are_read_and_never_shown() {
        for scheme in ["postgres", "postgresql", "mysql"] {
            for &(user, password, want_user, want_password) in AWKWARD {
                let text = format!("{scheme}://{user}:{password}@127.0.0.1:1/db?x=1");
                let url = DbUrl::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                let Target::Server {
                    url: driver,
                    user: u,
                    password: p,
                } = url.target()
                else {
                    panic!("{text}: not a server");
                };
                assert_eq!(u.as_deref(), Some(want_user), "{text}");
                assert_eq!(p.as_deref(), Some(want_password), "{text}");
                assert!(driver.ends_with("://127.0.0.1:1/db?x=1"), "{driver}");
                assert_eq!(
                    url.shown(),
                    format!("{scheme}://{user}:***@127.0.0.1:1/db?x=1")
                );
                for form in [password, want_password] {
                    assert!(!url.shown().contains(form), "{text}: {}", url.shown());
                    assert!(!format!("{url:?}").contains(form), "{url:?}");
                    let said = url.scrub(format!("auth failed for {want_user}: '{form}'"));
                    assert!(!said.contains(form), "{said}");
                }
            }
        }
    }

    #[test]
    fn what_does_not_parse_hides_all_the_user_info() {
        for (text, want) in [
            ("postgres://u:p@", "postgres://***@"),
            (
                "postgres://u:se/cret@h:99999/db",
                "postgres://***@h:99999/db",
            ),
            ("mysql://u:p@h:port/db", "mysql://***@h:port/db"),
            ("oracle://a:b@c@[::1/x", "oracle://***@[::1/x"),
        ] {
            assert_eq!(redact(text), want, "{text}");
            if let Err(e) = DbUrl::parse(text) {
                assert_eq!(e.shown, want);
            }
        }
    }

    #[test]
    fn redaction() {
        for (url, want) in [
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
            ("postgres://h/db?PassWord=x", "postgres://h/db?PassWord=***"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            (
                "oracle://opensips:s3cret@h/db",
                "oracle://opensips:***@h/db",
            ),
            ("sqlite://sipsockd.db", "sqlite://sipsockd.db"),
            ("sqlite://u:p@x.db", "sqlite://u:***@x.db"),
            ("sqlite://u:p/q@/x.db", "sqlite://***@/x.db"),
            ("garbage", "garbage"),
        ] {
            assert_eq!(redact(url), want, "{url}");
        }
        assert_eq!(
            redact_in_text("a 'x://u:p@h' y://v:q@k/d\" z"),
            "a 'x://u:***@h' y://v:***@k/d\" z"
        );
        assert_eq!(
            redact_in_text("db_url = \"mysql://u:my pass@h/d\n  |   ^"),
            "db_url = \"mysql://u:***@h/d\n  |   ^"
        );
    }

    #[test]
    fn kinds_targets_and_refusals() {
        let target = |t: &str| DbUrl::parse(t).unwrap().target().clone();
        assert_eq!(
            target("sqlite://sipsockd.db"),
            Target::Sqlite("sipsockd.db".into())
        );
        assert_eq!(
            target("SQLite:///var/lib/s.db"),
            Target::Sqlite("/var/lib/s.db".into())
        );
        assert_eq!(
            target("PostgreSQL://u@h/d"),
            Target::Server {
                url: "postgresql://h/d".into(),
                user: Some("u".into()),
                password: None
            }
        );
        assert_eq!(
            target("MYSQL://h:3306/d"),
            Target::Server {
                url: "mysql://h:3306/d".into(),
                user: None,
                password: None
            }
        );
        assert_eq!(DbUrl::parse("mysql://h/d").unwrap().kind(), Kind::Mysql);
        for (text, reason) in [
            ("oracle://u:secret@h/d", "unsupported"),
            ("sqlite://", "needs a file"),
            ("sqlite:///", "needs a file"),
            ("sqlite://u:secret@s.db", "no user or password"),
            ("sqlite:///data/u:secret@x/s.db", "no user or password"),
            ("just-a-file.db", "expected sqlite://"),
            ("postgres://u:secret@", "host"),
            ("mysql://u:secret@h:x/d", "host part"),
            ("mysql://u:%FF%FE@h/d", "not UTF-8"),
        ] {
            let e = DbUrl::parse(text).unwrap_err();
            assert!(e.reason.contains(reason), "{text}: {e}");
            assert!(!e.shown.contains("secret") && !e.reason.contains("secret"));
        }
    }

    #[test]
    fn query_passwords_are_scrubbed_too() {
        let url = DbUrl::parse("postgres://u@h/d?password=to%2Fp&x=1").unwrap();
        assert_eq!(url.shown(), "postgres://u@h/d?password=***&x=1");
        assert_eq!(url.scrub("to%2Fp to/p".into()), "*** ***");
    }
}
