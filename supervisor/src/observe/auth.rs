//! HTTP basic authentication for MI over HTTP: the users file (`[mi_http] auth_file`, lines of
//! `user:hash` with argon2 PHC strings or bcrypt hashes) and the password checks.
//!
//! A check costs tens of milliseconds by design, so it never runs on the HTTP thread: a
//! [`Verifier`] thread takes them one by one from a bounded queue, and credentials that passed
//! once are remembered (as a keyed hash, never in clear) so a client that sends them with every
//! request pays once.

use super::ObserveError;
use base64::Engine;
use crossbeam_channel::{Sender, TrySendError};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::path::Path;

/// Checks queued for the verifier thread at most; past it a request gets 503.
const QUEUE: usize = 64;
/// Credentials remembered as verified at most (then the memory starts over).
const REMEMBERED: usize = 256;

/// The users of the auth file and their password hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users(HashMap<String, String>);

/// The kind of a password hash, from its prefix.
fn hash_kind(hash: &str) -> Option<&'static str> {
    if hash.starts_with("$argon2") {
        Some("argon2")
    } else if ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|p| hash.starts_with(p))
    {
        Some("bcrypt")
    } else {
        None
    }
}

impl Users {
    /// Reads the users file; an unreadable file or a bad line is an error naming it.
    pub fn load(path: &Path) -> Result<Users, ObserveError> {
        let text = std::fs::read_to_string(path).map_err(|e| ObserveError::AuthFile {
            path: path.to_path_buf(),
            line: 0,
            reason: e.to_string(),
        })?;
        Users::parse(&text).map_err(|(line, reason)| ObserveError::AuthFile {
            path: path.to_path_buf(),
            line,
            reason,
        })
    }

    /// Parses the text of a users file; the line (from 1) and reason of the first bad line.
    pub fn parse(text: &str) -> Result<Users, (usize, String)> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| (n + 1, reason);
            let Some((user, hash)) = line.split_once(':') else {
                return Err(bad("not user:hash".into()));
            };
            if user.is_empty() {
                return Err(bad("empty user name".into()));
            }
            let valid = match hash_kind(hash) {
                Some("argon2") => argon2::PasswordHash::new(hash)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Some(_) => bcrypt_shape(hash),
                None => Err("not an argon2 ($argon2id$...) or bcrypt ($2b$...) hash".into()),
            };
            valid.map_err(|e| bad(format!("user {user:?}: {e}")))?;
            if users.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(bad(format!("user {user:?} is listed twice")));
            }
        }
        if users.is_empty() {
            return Err((0, "no user in it".into()));
        }
        Ok(Users(users))
    }

    /// The hash of `user`.
    pub fn hash(&self, user: &str) -> Option<&str> {
        self.0.get(user).map(String::as_str)
    }
}

/// A bcrypt hash is `$2b$CC$` then 53 characters of bcrypt's base64.
fn bcrypt_shape(hash: &str) -> Result<(), String> {
    let cost = hash.get(4..6).and_then(|c| c.parse::<u32>().ok());
    let ok = hash.len() == 60
        && hash.as_bytes().get(6) == Some(&b'$')
        && cost.is_some_and(|c| (4..=31).contains(&c))
        && hash[7..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    if ok {
        Ok(())
    } else {
        Err("not a bcrypt hash ($2b$COST$ and 53 characters)".into())
    }
}

/// `password` against `hash` (argon2 or bcrypt); slow by design.
pub fn verify(hash: &str, password: &str) -> bool {
    use argon2::PasswordVerifier;
    match hash_kind(hash) {
        Some("argon2") => argon2::PasswordHash::new(hash).is_ok_and(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        }),
        Some(_) => bcrypt::verify(password, hash).unwrap_or(false),
        None => false,
    }
}

/// The user and password of an `Authorization: Basic ...` header.
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// One password check for the verifier thread.
#[derive(Debug)]
struct Job {
    ticket: u64,
    key: u64,
    hash: String,
    password: String,
}

/// The result of a check: the ticket the caller gave, and whether the password is right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// What the caller gave to [`Auth::check`].
    pub ticket: u64,
    /// The password matched.
    pub ok: bool,
    key: u64,
}

/// What [`Auth::check`] says at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Right credentials (verified before).
    Allowed,
    /// No or unknown credentials: 401.
    Denied,
    /// Being verified: the [`Verdict`] comes later.
    Pending,
    /// The verifier is overloaded: 503.
    Busy,
}

/// The users, the credentials verified so far, and the way to the verifier thread.
#[derive(Debug)]
pub struct Auth {
    users: Users,
    keys: RandomState,
    verified: HashSet<u64>,
    jobs: Sender<Job>,
}

impl Auth {
    /// Starts the verifier thread; each verdict goes to `done` (on that thread).
    pub fn start(users: Users, done: impl Fn(Verdict) + Send + 'static) -> std::io::Result<Auth> {
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("mi-http-auth".into())
            .spawn(move || {
                for job in rx {
                    let ok = verify(&job.hash, &job.password);
                    done(Verdict {
                        ticket: job.ticket,
                        ok,
                        key: job.key,
                    });
                }
            })?;
        Ok(Auth {
            users,
            keys: RandomState::new(),
            verified: HashSet::new(),
            jobs,
        })
    }

    /// Checks the `Authorization` header of a request; a `Pending` check ends in a
    /// [`Verdict`] carrying `ticket`.
    pub fn check(&mut self, header: Option<&str>, ticket: u64) -> Check {
        let Some((user, password)) = header.and_then(basic_credentials) else {
            return Check::Denied;
        };
        let Some(hash) = self.users.hash(&user) else {
            return Check::Denied;
        };
        let key = self.keys.hash_one((&user, &password));
        if self.verified.contains(&key) {
            return Check::Allowed;
        }
        let job = Job {
            ticket,
            key,
            hash: hash.to_string(),
            password,
        };
        match self.jobs.try_send(job) {
            Ok(()) => Check::Pending,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Check::Busy,
        }
    }

    /// Takes a verdict in (remembering right credentials); true when they were right.
    pub fn settle(&mut self, verdict: Verdict) -> bool {
        if verdict.ok {
            if self.verified.len() >= REMEMBERED {
                self.verified.clear();
            }
            self.verified.insert(verdict.key);
        }
        verdict.ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn argon2_hash(password: &str) -> String {
        use argon2::PasswordHasher;
        let salt = argon2::password_hash::SaltString::from_b64("c2lwc29ja2RzYWx0").unwrap();
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn argon2_and_bcrypt_hashes_verify() {
        let a = argon2_hash("s3cret");
        assert!(verify(&a, "s3cret"));
        assert!(!verify(&a, "s3cret "));
        let b = bcrypt::hash("pw", 4).unwrap();
        assert!(verify(&b, "pw"));
        assert!(!verify(&b, "PW"));
        assert!(!verify("plain", "plain"));
        assert!(!verify("$argon2id$garbage", "x"));
    }

    #[test]
    fn users_file_lines_and_refusals() {
        let a = argon2_hash("x");
        let b = bcrypt::hash("y", 4).unwrap();
        let users = Users::parse(&format!("# ops\n\nalice:{a}\n  bob:{b}  \n")).unwrap();
        assert_eq!(users.hash("alice"), Some(a.as_str()));
        assert_eq!(users.hash("bob"), Some(b.as_str()));
        assert_eq!(users.hash("carol"), None);
        for (text, line, needle) in [
            ("alice".to_string(), 1, "not user:hash"),
            (format!(":{a}"), 1, "empty user"),
            ("alice:plaintext".into(), 1, "not an argon2"),
            ("\nalice:$argon2id$v=19$bad".into(), 2, "alice"),
            ("alice:$2b$04$short".into(), 1, "not a bcrypt hash"),
            (format!("alice:{a}\nalice:{b}"), 2, "listed twice"),
            ("# nobody\n".into(), 0, "no user"),
        ] {
            let (n, reason) = Users::parse(&text).unwrap_err();
            assert_eq!(n, line, "{text:?}: {reason}");
            assert!(reason.contains(needle), "{text:?}: {reason}");
        }
    }

    #[test]
    fn basic_headers() {
        // "alice:pa:ss" (a password may hold ':').
        assert_eq!(
            basic_credentials("Basic YWxpY2U6cGE6c3M="),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(
            basic_credentials("basic  YWxpY2U6cGE6c3M= "),
            Some(("alice".into(), "pa:ss".into()))
        );
        for bad in ["Bearer x", "Basic !!!", "Basic YWxpY2U=", "Basic", ""] {
            assert_eq!(basic_credentials(bad), None, "{bad}");
        }
    }

    #[test]
    fn checks_go_through_the_verifier_and_are_remembered() {
        let users = Users::parse(&format!("alice:{}", argon2_hash("pw"))).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut auth = Auth::start(users, move |v| tx.send(v).unwrap()).unwrap();
        let header = |u: &str, p: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        };
        assert_eq!(auth.check(None, 1), Check::Denied);
        assert_eq!(auth.check(Some(&header("bob", "pw")), 1), Check::Denied);
        assert_eq!(auth.check(Some(&header("alice", "no")), 2), Check::Pending);
        let v = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!((v.ticket, v.ok), (2, false));
        assert!(!auth.settle(v));
        assert_eq!(auth.check(Some(&header("alice", "pw")), 3), Check::Pending);
        let v = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!((v.ticket, v.ok), (3, true));
        assert!(auth.settle(v));
        assert_eq!(auth.check(Some(&header("alice", "pw")), 4), Check::Allowed);
        assert_eq!(auth.check(Some(&header("alice", "no")), 5), Check::Pending);
    }
}
