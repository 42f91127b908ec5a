//! The MI statistics (`get_statistics`, `list_statistics`, `reset_statistics`) in OpenSIPS's
//! shapes, computed from a snapshot of the shared table.
//!
//! A statistic is `group:name` with a value. The groups: `core` (uptime, pools), `shmem` (slot
//! usage of the table), `sockets_mgm` (reloads, totals and per-socket counters, named
//! `COUNTER-PROTO:ADDRESS`), `tcp` (open and refused stream connections). A request names
//! statistics (`received-udp:127.0.0.1:5060` or `sockets_mgm:received-udp:127.0.0.1:5060`, any
//! case), groups (`sockets_mgm:`) or `all`; the reply is one object `{"group:name": value}`, or
//! error 404 `Statistics Not Found` when nothing matched.
//!
//! `reset_statistics` never touches the table (workers own its counters, and Prometheus needs
//! them monotonic): it records a baseline per statistic, and `get_statistics` answers the value
//! minus its baseline. Only incremental statistics reset; a counter found below its baseline (its
//! slot was reused) has restarted, so the baseline is dropped.
//!
//! Pure but for [`Statistics::snapshot`], which maps the table read-only on first use.

use crate::mi::{Params, RpcError};
use serde_json::{Map, Value};
use shm::{Reader, SlotState, Snapshot, WorkerKind};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// The groups, in the order `all` lists them.
pub const GROUPS: [&str; 4] = ["core", "shmem", "sockets_mgm", "tcp"];

/// One statistic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Its group (one of [`GROUPS`]).
    pub group: &'static str,
    /// Its name within the group.
    pub name: String,
    /// Its value now (before any baseline).
    pub value: u64,
    /// True for a counter that only grows (and can be reset); false for a gauge.
    pub incremental: bool,
}

impl Stat {
    fn new(group: &'static str, name: impl Into<String>, value: u64, incremental: bool) -> Stat {
        Stat {
            group,
            name: name.into(),
            value,
            incremental,
        }
    }

    /// `group:name`, the key of replies.
    pub fn key(&self) -> String {
        format!("{}:{}", self.group, self.name)
    }
}

/// The per-socket counters, each `NAME-PROTO:ADDRESS` in `sockets_mgm`.
pub const SOCKET_COUNTERS: [&str; 4] = ["received", "replied", "relayed", "dropped"];

/// Every statistic of `snap`, `uptime` after the daemon started, in reply order.
pub fn collect(snap: &Snapshot, uptime: Duration) -> Vec<Stat> {
    let mut out = Vec::new();
    let workers = |kind: WorkerKind| snap.workers.iter().filter(move |w| w.kind == kind);
    out.push(Stat::new("core", "uptime", uptime.as_secs(), false));
    out.push(Stat::new(
        "core",
        "udp_workers",
        u64::from(snap.processes),
        false,
    ));
    out.push(Stat::new(
        "core",
        "stream_workers",
        u64::from(snap.stream_workers),
        false,
    ));
    out.push(Stat::new(
        "core",
        "worker_restarts",
        snap.workers.iter().map(|w| u64::from(w.restarts)).sum(),
        true,
    ));
    out.push(Stat::new("core", "generation", snap.generation, false));

    let used = snap.slots.len() as u64;
    let total = u64::from(snap.max_sockets);
    out.push(Stat::new("shmem", "total_slots", total, false));
    out.push(Stat::new("shmem", "used_slots", used, false));
    out.push(Stat::new(
        "shmem",
        "free_slots",
        total.saturating_sub(used),
        false,
    ));

    let r = &snap.reloads;
    out.push(Stat::new("sockets_mgm", "reloads", r.count, true));
    out.push(Stat::new(
        "sockets_mgm",
        "reload_failures",
        r.failures,
        true,
    ));
    out.push(Stat::new(
        "sockets_mgm",
        "last_reload_us",
        r.last_duration_us,
        false,
    ));
    out.push(Stat::new(
        "sockets_mgm",
        "last_reload_status",
        u64::from(r.last_status),
        false,
    ));
    let active = snap
        .slots
        .iter()
        .filter(|s| s.state == SlotState::Active)
        .count() as u64;
    out.push(Stat::new("sockets_mgm", "sockets", active, false));
    out.push(Stat::new(
        "sockets_mgm",
        "sockets_failed",
        used - active,
        false,
    ));
    // Totals from the worker records: they outlive sockets, so they only grow.
    let sum = |f: fn(&shm::WorkerSnapshot) -> u64| snap.workers.iter().map(f).sum::<u64>();
    let totals = [
        sum(|w| w.received),
        sum(|w| w.replied),
        sum(|w| w.relayed_requests + w.relayed_responses),
        sum(|w| w.dropped),
    ];
    for (name, value) in SOCKET_COUNTERS.iter().zip(totals) {
        out.push(Stat::new("sockets_mgm", *name, value, true));
    }
    for slot in &snap.slots {
        let id = socket_id(slot);
        let values = [
            slot.received,
            slot.replied,
            slot.relayed_requests + slot.relayed_responses,
            slot.dropped,
        ];
        for (name, value) in SOCKET_COUNTERS.iter().zip(values) {
            out.push(Stat::new(
                "sockets_mgm",
                format!("{name}-{id}"),
                value,
                true,
            ));
        }
    }

    out.push(Stat::new(
        "tcp",
        "connections",
        workers(WorkerKind::Stream).map(|w| w.connections).sum(),
        false,
    ));
    out.push(Stat::new("tcp", "refused", snap.connections_refused, true));
    debug_assert!(out.iter().all(|s| GROUPS.contains(&s.group)));
    out
}

/// A socket in statistic names: `proto:address` (`udp:127.0.0.1:5060`), the row's text when the
/// slot has no address.
pub fn socket_id(slot: &shm::SlotSnapshot) -> String {
    match (slot.proto, slot.address.is_empty()) {
        (Some(p), false) => format!("{p}:{}", slot.address),
        _ => slot.socket.clone(),
    }
}

/// What a request names: every statistic, a group, or one statistic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    All,
    Group(String),
    One(String),
}

impl Selector {
    fn parse(text: &str) -> Selector {
        if text == "all" {
            Selector::All
        } else if let Some(group) = text.strip_suffix(':').filter(|g| !g.is_empty()) {
            Selector::Group(group.to_string())
        } else {
            Selector::One(text.to_string())
        }
    }

    /// True when `stat` is named by this selector (names and groups in any case, as OpenSIPS).
    fn matches(&self, stat: &Stat) -> bool {
        match self {
            Selector::All => true,
            Selector::Group(g) => stat.group.eq_ignore_ascii_case(g),
            Selector::One(n) => {
                stat.name.eq_ignore_ascii_case(n)
                    || n.split_once(':').is_some_and(|(g, rest)| {
                        stat.group.eq_ignore_ascii_case(g) && stat.name.eq_ignore_ascii_case(rest)
                    })
            }
        }
    }
}

/// The `statistics` parameter: a list of names (`{"statistics": [...]}` or `[[...]]`, as the
/// OpenSIPS clients send it); a lone string or positional strings are taken as a list too.
/// `None` when there is no parameter at all.
fn names(params: &Params) -> Result<Option<Vec<String>>, RpcError> {
    let list = match params {
        p if p.is_empty() => return Ok(None),
        Params::Named(map) => {
            if let Some(unknown) = map.keys().find(|k| *k != "statistics") {
                return Err(RpcError::invalid_params(format!(
                    "unknown parameter {unknown:?} (takes: statistics)"
                )));
            }
            map["statistics"].clone()
        }
        Params::Positional(values) => match values.as_slice() {
            [list @ Value::Array(_)] => list.clone(),
            strings => Value::Array(strings.to_vec()),
        },
        Params::None => unreachable!("empty above"),
    };
    let items = match list {
        Value::Array(items) => items,
        one @ Value::String(_) => vec![one],
        _ => {
            return Err(RpcError::invalid_params(
                "statistics must be a list of names",
            ))
        }
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) if !s.is_empty() => Ok(s),
            _ => Err(RpcError::invalid_params(
                "statistics must be a list of non-empty names",
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The statistics `names` select, each once, in collection order; 404 when none.
fn select<'a>(stats: &'a [Stat], names: &[String]) -> Result<Vec<&'a Stat>, RpcError> {
    let selectors: Vec<Selector> = names.iter().map(|n| Selector::parse(n)).collect();
    let chosen: Vec<&Stat> = stats
        .iter()
        .filter(|s| selectors.iter().any(|sel| sel.matches(s)))
        .collect();
    if chosen.is_empty() {
        return Err(RpcError::new(404, "Statistics Not Found"));
    }
    Ok(chosen)
}

/// `reset_statistics` baselines: `get` = value - baseline.
#[derive(Debug, Default)]
pub struct Baselines(HashMap<String, u64>);

impl Baselines {
    /// The value `stat` shows: less its baseline; a counter below its baseline restarted (its
    /// slot was reused), so its baseline is dropped.
    pub fn shown(&mut self, stat: &Stat) -> u64 {
        let key = stat.key();
        match self.0.get(&key) {
            Some(&base) if stat.value >= base => stat.value - base,
            Some(_) => {
                self.0.remove(&key);
                stat.value
            }
            None => stat.value,
        }
    }

    /// Resets `stat` to show 0 from now on (gauges are not reset).
    pub fn reset(&mut self, stat: &Stat) {
        if stat.incremental {
            self.0.insert(stat.key(), stat.value);
        }
    }
}

/// The names of a method that needs them.
fn required(params: &Params, method: &str) -> Result<Vec<String>, RpcError> {
    names(params)?.ok_or_else(|| {
        RpcError::invalid_params(format!(
            "{method} takes: statistics (a list of names, GROUP: or all)"
        ))
    })
}

/// `get_statistics`: `{"group:name": value}` for what `params` names.
pub fn get(stats: &[Stat], params: &Params, baselines: &mut Baselines) -> Result<Value, RpcError> {
    let names = required(params, "get_statistics")?;
    let mut out = Map::new();
    for stat in select(stats, &names)? {
        out.insert(stat.key(), Value::from(baselines.shown(stat)));
    }
    Ok(Value::Object(out))
}

/// `list_statistics`: `{"group:name": "incremental" | "non-incremental"}`, every statistic or
/// what `params` names.
pub fn list(stats: &[Stat], params: &Params) -> Result<Value, RpcError> {
    let chosen = match names(params)? {
        None => stats.iter().collect(),
        Some(names) => select(stats, &names)?,
    };
    let out: Map<String, Value> = chosen
        .into_iter()
        .map(|s| {
            let kind = if s.incremental {
                "incremental"
            } else {
                "non-incremental"
            };
            (s.key(), Value::from(kind))
        })
        .collect();
    Ok(Value::Object(out))
}

/// `reset_statistics`: `"OK"` once every named incremental statistic shows 0.
pub fn reset(
    stats: &[Stat],
    params: &Params,
    baselines: &mut Baselines,
) -> Result<Value, RpcError> {
    let names = required(params, "reset_statistics")?;
    for stat in select(stats, &names)? {
        baselines.reset(stat);
    }
    Ok(Value::from("OK"))
}

/// The supervisor's side: the table, mapped read-only on first use, and the baselines.
#[derive(Debug)]
pub struct Statistics {
    path: PathBuf,
    reader: Option<Reader>,
    baselines: Baselines,
}

impl Statistics {
    /// Statistics of the table at `path` (opened when first asked).
    pub fn new(path: PathBuf) -> Statistics {
        Statistics {
            path,
            reader: None,
            baselines: Baselines::default(),
        }
    }

    /// Every statistic now; error 500 when the table cannot be read.
    pub fn collect(&mut self, uptime: Duration) -> Result<Vec<Stat>, RpcError> {
        if self.reader.is_none() {
            let reader = Reader::open(&self.path)
                .map_err(|e| RpcError::new(500, format!("cannot read the shared table: {e}")))?;
            self.reader = Some(reader);
        }
        let snap = self.reader.as_ref().map(Reader::snapshot);
        Ok(snap.map_or_else(Vec::new, |s| collect(&s, uptime)))
    }

    /// `get_statistics`.
    pub fn get(&mut self, params: &Params, uptime: Duration) -> Result<Value, RpcError> {
        required(params, "get_statistics")?;
        let stats = self.collect(uptime)?;
        get(&stats, params, &mut self.baselines)
    }

    /// `list_statistics`.
    pub fn list(&mut self, params: &Params, uptime: Duration) -> Result<Value, RpcError> {
        names(params)?;
        list(&self.collect(uptime)?, params)
    }

    /// `reset_statistics`.
    pub fn reset(&mut self, params: &Params, uptime: Duration) -> Result<Value, RpcError> {
        required(params, "reset_statistics")?;
        let stats = self.collect(uptime)?;
        reset(&stats, params, &mut self.baselines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shm::{Proto, ReloadStats, SlotSnapshot, WorkerSnapshot, WorkerState};

    fn slot(index: u32, proto: Proto, address: &str, received: u64) -> SlotSnapshot {
        SlotSnapshot {
            index,
            state: SlotState::Active,
            socket: format!("{proto}:{address}"),
            proto: Some(proto),
            address: address.into(),
            advertised: String::new(),
            tag: String::new(),
            flags: String::new(),
            tos: 0,
            error: String::new(),
            received,
            replied: received / 2,
            relayed_requests: 1,
            relayed_responses: 2,
            dropped: 3,
            sent_403: 0,
            sent_482: 0,
            sent_483: 0,
            sent_430: 0,
            sent_503: 0,
            connections: 0,
        }
    }

    fn worker(kind: WorkerKind, rank: u32, received: u64, connections: u64) -> WorkerSnapshot {
        WorkerSnapshot {
            rank,
            kind,
            pid: 100 + rank,
            state: WorkerState::Ready,
            restarts: 1,
            received,
            replied: received,
            dropped: 0,
            wakeups: 0,
            connections,
            relayed_requests: 0,
            relayed_responses: 0,
            busy_ns: 0,
            refused: 0,
            inbox_received: 0,
            inbox_dropped: 0,
        }
    }

    fn snapshot() -> Snapshot {
        let mut error = slot(1, Proto::Tcp, "127.0.0.1:5061", 0);
        error.state = SlotState::Error;
        Snapshot {
            layout: shm::LAYOUT_VERSION,
            pid: 1,
            max_sockets: 10,
            processes: 2,
            stream_workers: 1,
            generation: 7,
            cursor: 1,
            start_time: 0,
            stale: false,
            heartbeat_ms: 0,
            reloads: ReloadStats {
                count: 5,
                failures: 2,
                last_status: 200,
                last_duration_us: 1234,
                last_at_ms: 0,
                last_absent: 0,
                total_us: 0,
                buckets: vec![0; shm::RELOAD_BUCKETS],
            },
            connections_refused: 4,
            slots: vec![slot(0, Proto::Udp, "127.0.0.1:5060", 10), error],
            workers: vec![
                worker(WorkerKind::Udp, 0, 6, 0),
                worker(WorkerKind::Udp, 1, 4, 0),
                worker(WorkerKind::Stream, 0, 0, 3),
            ],
            max_relays: 0,
            relays: vec![],
        }
    }

    fn named(names: &[&str]) -> Params {
        Params::Named(json!({ "statistics": names }).as_object().cloned().unwrap())
    }

    fn stats() -> Vec<Stat> {
        collect(&snapshot(), Duration::from_secs(42))
    }

    #[test]
    fn all_groups_and_one_statistic_in_opensips_shapes() {
        let s = stats();
        let mut b = Baselines::default();
        let all = get(&s, &named(&["all"]), &mut b).unwrap();
        let all = all.as_object().unwrap();
        assert_eq!(all.len(), s.len());
        assert_eq!(all["core:uptime"], json!(42));
        assert_eq!(all["shmem:used_slots"], json!(2));
        assert_eq!(all["shmem:free_slots"], json!(8));
        assert_eq!(all["sockets_mgm:reloads"], json!(5));
        assert_eq!(all["sockets_mgm:reload_failures"], json!(2));
        assert_eq!(all["sockets_mgm:last_reload_us"], json!(1234));
        assert_eq!(all["sockets_mgm:sockets"], json!(1));
        assert_eq!(all["sockets_mgm:sockets_failed"], json!(1));
        assert_eq!(all["sockets_mgm:received"], json!(10));
        assert_eq!(all["sockets_mgm:received-udp:127.0.0.1:5060"], json!(10));
        assert_eq!(all["sockets_mgm:replied-udp:127.0.0.1:5060"], json!(5));
        assert_eq!(all["sockets_mgm:relayed-udp:127.0.0.1:5060"], json!(3));
        assert_eq!(all["sockets_mgm:dropped-tcp:127.0.0.1:5061"], json!(3));
        assert_eq!(all["tcp:connections"], json!(3));
        assert_eq!(all["tcp:refused"], json!(4));
        assert_eq!(all["core:worker_restarts"], json!(3));

        // A group, a bare name, a qualified name in another case: each once.
        let v = get(
            &s,
            &named(&[
                "tcp:",
                "received-udp:127.0.0.1:5060",
                "SOCKETS_MGM:Reloads",
                "tcp:",
            ]),
            &mut b,
        )
        .unwrap();
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "sockets_mgm:received-udp:127.0.0.1:5060",
                "sockets_mgm:reloads",
                "tcp:connections",
                "tcp:refused"
            ]
        );
    }

    #[test]
    fn the_parameter_forms_the_clients_send() {
        let s = stats();
        let mut b = Baselines::default();
        let want = json!({"tcp:refused": 4});
        for p in [
            named(&["tcp:refused"]),
            Params::Named(
                json!({"statistics": "refused"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            ),
            Params::Positional(vec![json!(["tcp:refused"])]),
            Params::Positional(vec![json!("refused")]),
        ] {
            assert_eq!(get(&s, &p, &mut b), Ok(want.clone()), "{p:?}");
        }
        for bad in [
            Params::None,
            Params::Named(json!({"stats": ["all"]}).as_object().cloned().unwrap()),
            Params::Named(json!({"statistics": 3}).as_object().cloned().unwrap()),
            Params::Positional(vec![json!([1])]),
            named(&[""]),
        ] {
            assert_eq!(get(&s, &bad, &mut b).unwrap_err().code, -32602, "{bad:?}");
        }
        let e = get(&s, &named(&["nope", "nogroup:"]), &mut b).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (404, "Statistics Not Found"));
    }

    #[test]
    fn list_says_which_statistics_are_incremental() {
        let s = stats();
        let all = list(&s, &Params::None).unwrap();
        assert_eq!(all.as_object().unwrap().len(), s.len());
        assert_eq!(all["sockets_mgm:reloads"], json!("incremental"));
        assert_eq!(all["core:uptime"], json!("non-incremental"));
        assert_eq!(
            list(&s, &named(&["shmem:"])),
            Ok(json!({
                "shmem:total_slots": "non-incremental",
                "shmem:used_slots": "non-incremental",
                "shmem:free_slots": "non-incremental",
            }))
        );
        assert_eq!(list(&s, &named(&["x"])).unwrap_err().code, 404);
    }

    #[test]
    fn reset_keeps_a_baseline_and_the_table_untouched() {
        let mut snap = snapshot();
        let mut b = Baselines::default();
        let s = collect(&snap, Duration::ZERO);
        assert_eq!(
            reset(&s, &named(&["sockets_mgm:", "uptime"]), &mut b),
            Ok(json!("OK"))
        );
        let after = get(&s, &named(&["all"]), &mut b).unwrap();
        assert_eq!(after["sockets_mgm:reloads"], json!(0));
        assert_eq!(after["sockets_mgm:received-udp:127.0.0.1:5060"], json!(0));
        // Gauges do not reset.
        assert_eq!(after["sockets_mgm:last_reload_us"], json!(1234));
        assert_eq!(after["sockets_mgm:sockets"], json!(1));
        // Counting goes on from the baseline.
        snap.reloads.count += 3;
        snap.slots[0].received += 7;
        let s = collect(&snap, Duration::ZERO);
        let v = get(
            &s,
            &named(&["reloads", "received-udp:127.0.0.1:5060"]),
            &mut b,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"sockets_mgm:reloads": 3, "sockets_mgm:received-udp:127.0.0.1:5060": 7})
        );
        // The slot was reused: its counter restarted below the baseline.
        snap.slots[0].received = 2;
        let s = collect(&snap, Duration::ZERO);
        let v = get(&s, &named(&["received-udp:127.0.0.1:5060"]), &mut b).unwrap();
        assert_eq!(v, json!({"sockets_mgm:received-udp:127.0.0.1:5060": 2}));
        assert_eq!(reset(&s, &named(&["nope"]), &mut b).unwrap_err().code, 404);
        assert_eq!(reset(&s, &Params::None, &mut b).unwrap_err().code, -32602);
    }

    #[test]
    fn statistics_read_a_real_table_and_say_when_there_is_none() {
        let dir = std::env::temp_dir().join(format!("sipsockd-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.shm");
        let mut st = Statistics::new(path.clone());
        let e = st.get(&named(&["all"]), Duration::ZERO).unwrap_err();
        assert_eq!(e.code, 500);
        assert!(e.message.contains("cannot read the shared table"), "{e}");
        let table = shm::Table::create(&path, 4, 2, 1, 0).unwrap();
        table.record_reload(200, Duration::from_millis(3), 0);
        let v = st.get(&named(&["sockets_mgm:reloads", "shmem:"]), Duration::ZERO);
        assert_eq!(
            v,
            Ok(json!({
                "shmem:total_slots": 4,
                "shmem:used_slots": 0,
                "shmem:free_slots": 4,
                "sockets_mgm:reloads": 1,
            }))
        );
        table.remove().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
