//! The MI methods: one table that says which methods exist and which parameters they take, the
//! core methods OpenSIPS clients expect (`which`, `ps`, `version`, `uptime`, and the statistics
//! methods `get_statistics`, `list_statistics`, `reset_statistics` of [`crate::stats`]), dispatch
//! to the daemon's [`Handler`] for the methods that touch its state, and the shape of their
//! replies (built here from the daemon's state: [`reload_reply`], [`sockets_status`], [`ps`]).
//!
//! The table is what `which` reports, so `opensips-cli` (which calls `which` first and refuses
//! anything not listed) sees exactly the methods that can run. No I/O here.

use super::proto::{Params, Request, RpcError};
use crate::pool::{Phase, Pool, WorkerOutcome};
use crate::reload::{Failure, Sockets};
use crate::row::RowError;
use crate::stats::Statistics;
use serde_json::{json, Value};
use shm::Table;
use std::time::{Duration, SystemTime};

/// What the daemon provides to the MI methods that touch its state.
pub trait Handler {
    /// `sockets_reload` / `sockets_mgm:reload`.
    fn sockets_reload(&mut self) -> Result<Value, RpcError>;
    /// `sockets_list` / `sockets_mgm:list`.
    fn sockets_list(&mut self) -> Result<Value, RpcError>;
    /// `sockets_status`.
    fn sockets_status(&mut self) -> Result<Value, RpcError>;
    /// `ps`: `{"Processes": [{"ID", "PID", "Type"}]}`.
    fn ps(&mut self) -> Result<Value, RpcError>;
    /// The statistics of the shared table and their reset baselines.
    fn statistics(&mut self) -> &mut Statistics;
}

type Run = fn(&Request, SystemTime, &mut dyn Handler) -> Result<Value, RpcError>;

/// One MI method.
struct Method {
    name: &'static str,
    /// The parameter sets it accepts, as `which command=NAME` reports them.
    params: &'static [&'static [&'static str]],
    run: Run,
}

/// A method that takes no parameter.
const NONE: &[&[&str]] = &[&[]];

const METHODS: &[Method] = &[
    Method {
        name: "sockets_reload",
        params: NONE,
        run: |_, _, h| h.sockets_reload(),
    },
    Method {
        name: "sockets_mgm:reload",
        params: NONE,
        run: |_, _, h| h.sockets_reload(),
    },
    Method {
        name: "sockets_list",
        params: NONE,
        run: |_, _, h| h.sockets_list(),
    },
    Method {
        name: "sockets_mgm:list",
        params: NONE,
        run: |_, _, h| h.sockets_list(),
    },
    Method {
        name: "sockets_status",
        params: NONE,
        run: |_, _, h| h.sockets_status(),
    },
    Method {
        name: "which",
        params: &[&[], &["command"]],
        run: |req, _, _| which(&req.params),
    },
    Method {
        name: "ps",
        params: NONE,
        run: |_, _, h| h.ps(),
    },
    Method {
        name: "version",
        params: NONE,
        run: |_, _, _| Ok(version()),
    },
    Method {
        name: "uptime",
        params: NONE,
        run: |_, started, _| Ok(uptime(started, SystemTime::now())),
    },
    Method {
        name: "get_statistics",
        params: &[&["statistics"]],
        run: |req, started, h| h.statistics().get(&req.params, up(started)),
    },
    Method {
        name: "list_statistics",
        params: &[&[], &["statistics"]],
        run: |req, started, h| h.statistics().list(&req.params, up(started)),
    },
    Method {
        name: "reset_statistics",
        params: &[&["statistics"]],
        run: |req, started, h| h.statistics().reset(&req.params, up(started)),
    },
];

/// How long ago `started` was (zero for a clock set back).
fn up(started: SystemTime) -> Duration {
    SystemTime::now()
        .duration_since(started)
        .unwrap_or_default()
}

fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

/// The names of every method, in the order `which` lists them.
pub fn names() -> Vec<&'static str> {
    METHODS.iter().map(|m| m.name).collect()
}

/// Runs a request: checks the method and its parameters, then calls it.
///
/// `started` is when the daemon started (for `uptime`).
pub fn dispatch(
    req: &Request,
    started: SystemTime,
    handler: &mut dyn Handler,
) -> Result<Value, RpcError> {
    let method = find(&req.method).ok_or_else(|| RpcError::method_not_found(&req.method))?;
    if method.params == NONE && !req.params.is_empty() {
        return Err(RpcError::invalid_params(format!(
            "{} takes no parameters",
            method.name
        )));
    }
    (method.run)(req, started, handler)
}

/// `which`: every method, or the parameter sets of one.
fn which(params: &Params) -> Result<Value, RpcError> {
    let command = match params {
        p if p.is_empty() => return Ok(json!(names())),
        Params::Named(map) => {
            if let Some(unknown) = map.keys().find(|k| *k != "command") {
                return Err(RpcError::invalid_params(format!(
                    "unknown parameter {unknown:?} (which takes: command)"
                )));
            }
            &map["command"]
        }
        Params::Positional(values) if values.len() == 1 => &values[0],
        _ => {
            return Err(RpcError::invalid_params(
                "which takes at most one parameter: command",
            ))
        }
    };
    let Some(name) = command.as_str() else {
        return Err(RpcError::invalid_params("command must be a string"));
    };
    match find(name) {
        Some(m) => Ok(json!(m.params)),
        None => Err(RpcError::invalid_params(format!(
            "unknown command {name:?}"
        ))),
    }
}

/// `version`, as OpenSIPS gives it: the server header's product.
fn version() -> Value {
    json!({ "Server": format!("sipsockd {}", env!("CARGO_PKG_VERSION")) })
}

/// `uptime`, as OpenSIPS gives it: `ctime(3)` dates without the newline, whole seconds.
fn uptime(started: SystemTime, now: SystemTime) -> Value {
    let up = now.duration_since(started).unwrap_or_default().as_secs();
    json!({
        "Now": ctime(now),
        "Up since": ctime(started),
        "Up time": format!("{up} [sec]"),
    })
}

/// A time as `ctime(3)` writes it in the local time zone, without the trailing newline:
/// `Thu Mar  4 10:35:05 2024` (the day space-padded to two columns).
fn ctime(t: SystemTime) -> String {
    let tz = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts
            .to_zoned_datetime(tz)
            .strftime("%a %b %e %H:%M:%S %Y")
            .to_string(),
        // Only for a clock outside jiff's range (years beyond ±9999).
        Err(_) => "?".into(),
    }
}

// ---- the replies of the methods that touch the daemon's state ----------------------------------

/// What a reload came to, for its reply.
pub enum Reloaded<'a> {
    /// The database could not be read: nothing changed (500).
    Database(&'a dyn std::fmt::Display),
    /// The table was refused, one error per row at fault: nothing changed (400).
    Refused(&'a [RowError]),
    /// Applied, but for the rows left out (`invalid_rows = "skip"`), those whose bind failed,
    /// those that kept values an in-place update could not set, and what workers did not take.
    Applied {
        /// Bad rows left out.
        skipped: &'a [RowError],
        /// Rows that could not be bound.
        failures: &'a [Failure],
        /// Rows updated in place that kept some values (a socket option could not be set).
        kept: &'a [Failure],
        /// Workers restarted during the reload, and entries workers refused.
        workers: &'a [WorkerOutcome],
    },
}

/// The reply of `sockets_reload`: `"OK"` only when everything asked runs; else the error with one
/// `data` entry per row at fault and per worker that did not take the reload as asked (restarted:
/// its rank and why; refused: its rank, the slot and the worker's reason).
pub fn reload_reply(reloaded: Reloaded<'_>) -> Result<Value, RpcError> {
    let (skipped, failures, kept, workers) = match reloaded {
        Reloaded::Database(e) => {
            return Err(RpcError::new(500, format!("Could not reload sockets: {e}")));
        }
        Reloaded::Refused(errors) => {
            return Err(RpcError {
                code: 400,
                message: format!("Table refused: {} bad rows", errors.len()),
                data: Some(json!(errors)),
            });
        }
        Reloaded::Applied {
            skipped,
            failures,
            kept,
            workers,
        } => (skipped, failures, kept, workers),
    };
    let row = |f: &Failure| {
        let mut o = serde_json::Map::new();
        if let Some(id) = f.id {
            o.insert("id".into(), json!(id));
        }
        o.insert("socket".into(), json!(f.socket));
        o.insert("reason".into(), json!(f.reason));
        Value::Object(o)
    };
    let mut data: Vec<Value> = skipped.iter().map(|e| json!(e)).collect();
    data.extend(failures.iter().map(row));
    data.extend(kept.iter().map(row));
    data.extend(workers.iter().map(|w| {
        let mut o = serde_json::Map::new();
        o.insert(
            "worker".into(),
            json!(format!("{} worker {}", w.kind, w.rank)),
        );
        o.insert("kind".into(), json!(w.kind.as_str()));
        o.insert("rank".into(), json!(w.rank));
        if let Some(pid) = w.pid {
            o.insert("pid".into(), json!(pid));
        }
        if let Some(slot) = w.slot {
            o.insert("slot".into(), json!(slot));
        }
        o.insert("reason".into(), json!(w.what));
        Value::Object(o)
    }));
    let restarted = workers.iter().filter(|w| w.restarted()).count();
    let refused = workers.len() - restarted;
    let mut parts = Vec::new();
    if !failures.is_empty() {
        parts.push(format!("{} sockets could not be bound", failures.len()));
    }
    if !kept.is_empty() {
        parts.push(format!(
            "{} socket options could not be updated in place",
            kept.len()
        ));
    }
    if restarted > 0 {
        let names: Vec<String> = workers
            .iter()
            .filter(|w| w.restarted())
            .map(|w| format!("{} worker {}", w.kind, w.rank))
            .collect();
        parts.push(format!(
            "{restarted} workers restarted ({})",
            names.join(", ")
        ));
    }
    if refused > 0 {
        parts.push(format!("{refused} sockets refused by workers"));
    }
    let (code, message) = match (parts.is_empty(), skipped.len()) {
        (true, 0) => return Ok(json!("OK")),
        (true, skipped) => (400, format!("{skipped} bad rows skipped, the rest applied")),
        (false, 0) => (500, parts.join(", ")),
        (false, skipped) => (
            500,
            format!("{}, {skipped} bad rows skipped", parts.join(", ")),
        ),
    };
    Err(RpcError {
        code,
        message,
        data: Some(Value::Array(data)),
    })
}

/// The reply of `sockets_status`: each socket with its state and counters, each worker, and the
/// connections refused so far.
pub fn sockets_status(
    sockets: &Sockets,
    pool: &Pool,
    shm: &Table,
    refused_connections: u64,
) -> Value {
    let rows: Vec<Value> = sockets
        .iter()
        .map(|r| {
            let mut o = serde_json::Map::new();
            o.insert("slot".into(), json!(r.slot));
            o.insert("socket".into(), json!(r.def.text));
            o.insert("proto".into(), json!(r.def.proto.as_str()));
            o.insert("address".into(), json!(r.def.identity().1.to_string()));
            o.insert(
                "state".into(),
                json!(if r.error.is_some() { "error" } else { "active" }),
            );
            if let Some(e) = &r.error {
                o.insert("error".into(), json!(e));
            }
            o.insert("received".into(), json!(shm.slot_received(r.slot)));
            if !r.def.proto.is_datagram() {
                o.insert("connections".into(), json!(shm.slot_connections(r.slot)));
            }
            Value::Object(o)
        })
        .collect();
    let now = std::time::Instant::now();
    let workers: Vec<Value> = pool
        .workers()
        .iter()
        .map(|w| {
            let rec = shm.worker(w.kind(), w.rank());
            json!({
                "rank": w.rank(),
                "kind": w.kind().as_str(),
                "pid": w.pid().unwrap_or(0),
                "state": match w.phase() {
                    Phase::Starting => "starting",
                    Phase::Ready if w.stalled(now) => "stalled",
                    Phase::Ready => "ready",
                    Phase::Dead { .. } => "dead",
                },
                "restarts": rec.map_or(0, |r| r.restarts()),
                "received": rec.map_or(0, |r| r.received()),
                "replied": rec.map_or(0, |r| r.replied()),
                "dropped": rec.map_or(0, |r| r.dropped()),
                "connections": rec.map_or(0, |r| r.connections()),
                "refused": rec.map_or(0, |r| r.refused()),
            })
        })
        .collect();
    json!({
        "generation": sockets.generation(),
        "sockets": rows,
        "workers": workers,
        "refused_connections": refused_connections,
    })
}

/// The reply of `ps`: the supervisor, then every worker.
pub fn ps(pool: &Pool) -> Value {
    let mut procs = vec![json!({"ID": 0, "PID": std::process::id(), "Type": "supervisor"})];
    for (i, w) in pool.workers().iter().enumerate() {
        procs.push(json!({
            "ID": i + 1,
            "PID": w.pid().unwrap_or(0),
            "Type": format!("{} worker {}", w.kind(), w.rank()),
        }));
    }
    json!({ "Processes": procs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A handler that records what ran; its statistics have no table (error 500).
    struct Calls(Vec<&'static str>, Statistics);

    impl Default for Calls {
        fn default() -> Self {
            Calls(
                Vec::new(),
                Statistics::new("/nonexistent/sipsockd-shm".into()),
            )
        }
    }

    impl Handler for Calls {
        fn sockets_reload(&mut self) -> Result<Value, RpcError> {
            self.0.push("reload");
            Ok(json!("OK"))
        }
        fn sockets_list(&mut self) -> Result<Value, RpcError> {
            self.0.push("list");
            Ok(json!([]))
        }
        fn sockets_status(&mut self) -> Result<Value, RpcError> {
            self.0.push("status");
            Err(RpcError::new(500, "boom"))
        }
        fn ps(&mut self) -> Result<Value, RpcError> {
            self.0.push("ps");
            Ok(json!({"Processes": []}))
        }
        fn statistics(&mut self) -> &mut Statistics {
            self.0.push("statistics");
            &mut self.1
        }
    }

    fn request(method: &str, params: Params) -> Request {
        Request {
            method: method.into(),
            params,
            id: Some(json!(1)),
            reply_name: Some("r".into()),
        }
    }

    fn named(v: Value) -> Params {
        Params::Named(v.as_object().cloned().unwrap())
    }

    fn run(method: &str, params: Params, h: &mut Calls) -> Result<Value, RpcError> {
        dispatch(&request(method, params), SystemTime::now(), h)
    }

    #[test]
    fn socket_methods_and_their_aliases_reach_the_handler() {
        let mut h = Calls::default();
        assert_eq!(run("sockets_reload", Params::None, &mut h), Ok(json!("OK")));
        assert_eq!(
            run("sockets_mgm:reload", named(json!({})), &mut h),
            Ok(json!("OK"))
        );
        assert_eq!(
            run("sockets_list", Params::Positional(vec![]), &mut h),
            Ok(json!([]))
        );
        assert_eq!(run("sockets_mgm:list", Params::None, &mut h), Ok(json!([])));
        assert_eq!(
            run("sockets_status", Params::None, &mut h)
                .unwrap_err()
                .code,
            500
        );
        assert_eq!(
            run("ps", Params::None, &mut h),
            Ok(json!({"Processes": []}))
        );
        assert_eq!(h.0, ["reload", "reload", "list", "list", "status", "ps"]);
    }

    #[test]
    fn unknown_method_and_unexpected_params() {
        let mut h = Calls::default();
        let e = run("nope", Params::None, &mut h).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (-32601, "Method not found"));
        let e = run("sockets_reload", named(json!({"force": "1"})), &mut h).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (-32602, "Invalid params"));
        let e = run("version", Params::Positional(vec![json!(1)]), &mut h).unwrap_err();
        assert_eq!(e.code, -32602);
        assert!(h.0.is_empty(), "nothing ran: {:?}", h.0);
    }

    #[test]
    fn which_lists_every_method_and_their_parameter_sets() {
        let mut h = Calls::default();
        let all = run("which", Params::None, &mut h).unwrap();
        let all: Vec<String> = serde_json::from_value(all).unwrap();
        for m in [
            "sockets_reload",
            "sockets_mgm:reload",
            "sockets_list",
            "sockets_mgm:list",
            "sockets_status",
            "which",
            "ps",
            "version",
            "uptime",
            "get_statistics",
            "list_statistics",
            "reset_statistics",
        ] {
            assert!(all.iter().any(|n| n == m), "{m} missing from {all:?}");
        }
        // Every listed method dispatches (none is a dead entry); one that needs a parameter
        // says so.
        for m in &all {
            let e = run(m, Params::None, &mut h).err();
            if find(m).unwrap().params.contains(&&[][..]) {
                assert!(!matches!(&e, Some(e) if e.code < 0), "{m}: {e:?}");
            } else {
                assert_eq!(e.map(|e| e.code), Some(RpcError::INVALID_PARAMS), "{m}");
            }
        }
        assert_eq!(
            run("which", named(json!({"command": "sockets_list"})), &mut h),
            Ok(json!([[]]))
        );
        assert_eq!(
            run("which", Params::Positional(vec![json!("which")]), &mut h),
            Ok(json!([[], ["command"]]))
        );
        for bad in [
            named(json!({"cmd": "ps"})),
            named(json!({"command": 3})),
            named(json!({"command": "nope"})),
            Params::Positional(vec![json!("a"), json!("b")]),
        ] {
            assert_eq!(
                run("which", bad.clone(), &mut h).unwrap_err().code,
                -32602,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn version_and_uptime_shapes() {
        let mut h = Calls::default();
        assert_eq!(
            run("version", Params::None, &mut h),
            Ok(json!({"Server": format!("sipsockd {}", env!("CARGO_PKG_VERSION"))}))
        );
        let started = SystemTime::now() - Duration::from_secs(42);
        let v = uptime(started, started + Duration::from_secs(42));
        assert_eq!(v["Up time"], json!("42 [sec]"));
        for key in ["Now", "Up since"] {
            let s = v[key].as_str().unwrap();
            // "Thu Mar  4 10:35:05 2024": 24 characters, fixed columns.
            assert_eq!(s.len(), 24, "{s:?}");
            assert_eq!(&s[3..4], " ");
            assert_eq!((&s[13..14], &s[16..17]), (":", ":"));
        }
        // A clock set back never gives a negative uptime.
        assert_eq!(
            uptime(started, started - Duration::from_secs(5))["Up time"],
            json!("0 [sec]")
        );
    }

    #[test]
    fn a_reload_reply_is_ok_only_when_everything_asked_runs() {
        let none = Reloaded::Applied {
            skipped: &[],
            failures: &[],
            kept: &[],
            workers: &[],
        };
        assert_eq!(reload_reply(none), Ok(json!("OK")));
        let restarted = WorkerOutcome {
            kind: shm::WorkerKind::Udp,
            rank: 1,
            pid: Some(42),
            slot: None,
            what: "no acknowledgement within 5 s; restarted".into(),
        };
        let refused = WorkerOutcome {
            kind: shm::WorkerKind::Stream,
            rank: 0,
            pid: Some(43),
            slot: Some(7),
            what: "a tls socket without TLS material".into(),
        };
        let kept = Failure {
            id: Some(3),
            socket: "udp:127.0.0.1:5060".into(),
            reason: "could not update in place: cannot set IP_TOS: EPERM".into(),
        };
        let e = reload_reply(Reloaded::Applied {
            skipped: &[],
            failures: &[],
            kept: std::slice::from_ref(&kept),
            workers: &[restarted, refused],
        })
        .unwrap_err();
        assert_eq!(e.code, 500);
        assert_eq!(
            e.message,
            "1 socket options could not be updated in place, 1 workers restarted (udp worker 1), \
             1 sockets refused by workers"
        );
        assert_eq!(
            e.data.unwrap(),
            json!([
                {"id": 3, "socket": "udp:127.0.0.1:5060",
                 "reason": "could not update in place: cannot set IP_TOS: EPERM"},
                {"worker": "udp worker 1", "kind": "udp", "rank": 1, "pid": 42,
                 "reason": "no acknowledgement within 5 s; restarted"},
                {"worker": "stream worker 0", "kind": "stream", "rank": 0, "pid": 43, "slot": 7,
                 "reason": "a tls socket without TLS material"},
            ])
        );
    }

    #[test]
    fn ctime_pads_the_day_like_ctime() {
        // 2024-03-04T10:35:05Z; the zone may shift the hour but not the format.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_548_505);
        let s = ctime(t);
        assert_eq!(s.len(), 24, "{s:?}");
        assert!(s.ends_with(" 2024"), "{s:?}");
        assert!(
            s.contains("Mar  4") || s.contains("Mar  3") || s.contains("Mar  5"),
            "{s:?}"
        );
    }
}
