//! `/metrics`: the shared table and the processes' memory in the OpenMetrics text format
//! (encoded by `prometheus-client`), built from one snapshot at scrape time on the observers'
//! thread, never in the supervisor's loop.
//!
//! Every name starts with `sipsockd_`. Per socket (labels `socket`, `proto`, `tag`):
//! `socket_received_total`, `socket_replied_total`, `socket_relayed_total` (label `direction`:
//! request, response), `socket_dropped_total`, `socket_state` (label `state`: 1 for the current
//! one of active, error, absent), `socket_connections` (stream sockets). Per worker (labels
//! `kind`, `rank`): `worker_received_total`, `worker_replied_total`, `worker_dropped_total`,
//! `worker_restarts_total`, `worker_busy_seconds_total`, `worker_up`, `worker_connections`.
//! Reloads: `reloads_total`, `reload_failures_total`, `reload_duration_seconds` (histogram),
//! `last_reload_status`, `last_reload_timestamp_seconds`, `reload_generation`. Streams:
//! `stream_connections`, `stream_connections_refused_total`. Table: `slots_used`, `slots_total`.
//! Processes (labels `kind` supervisor/udp/stream, `rank`): `process_resident_memory_bytes`.
//! And `start_time_seconds`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use shm::{SlotState, Snapshot, WorkerKind, WorkerState, RELOAD_BUCKETS_US};

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The resident memory of one process of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMemory {
    /// `supervisor`, `udp` or `stream`.
    pub kind: &'static str,
    /// The rank in its pool (0 for the supervisor).
    pub rank: u32,
    /// Resident bytes.
    pub bytes: u64,
}

/// The resident memory of the supervisor and every live worker of `snap`, from `/proc`; a
/// process that is gone (or not readable) is left out.
pub fn process_memory(snap: &Snapshot) -> Vec<ProcessMemory> {
    let supervisor = std::iter::once(("supervisor", 0, snap.pid));
    let workers = snap
        .workers
        .iter()
        .filter(|w| w.pid != 0)
        .map(|w| (w.kind.as_str(), w.rank, w.pid));
    supervisor
        .chain(workers)
        .filter_map(|(kind, rank, pid)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            Some(ProcessMemory {
                kind,
                rank,
                bytes: resident_bytes(&status)?,
            })
        })
        .collect()
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line["VmRSS:".len()..]
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The `/metrics` body for `snap` and `memory`.
pub fn render(snap: Snapshot, memory: Vec<ProcessMemory>) -> String {
    let mut registry = Registry::with_prefix("sipsockd");
    registry.register_collector(Box::new(Scrape { snap, memory }));
    let mut out = String::new();
    // Writing into a String cannot fail, and every family below encodes.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        log::error!("metrics: encoding failed: {e}");
    }
    out
}

type Labels = Vec<(&'static str, String)>;

/// One scrape: the snapshot, encoded family by family.
#[derive(Debug)]
struct Scrape {
    snap: Snapshot,
    memory: Vec<ProcessMemory>,
}

/// A value a series can take.
enum Value {
    Int(u64),
    Float(f64),
}

impl Value {
    fn encode(
        &self,
        metric_type: MetricType,
        m: &mut MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let no_exemplar: Option<&prometheus_client::metrics::exemplar::Exemplar<Labels, f64>> =
            None;
        match (self, metric_type) {
            (Value::Int(v), MetricType::Counter) => m.encode_counter(v, no_exemplar),
            (Value::Float(v), MetricType::Counter) => m.encode_counter(v, no_exemplar),
            (Value::Int(v), _) => m.encode_gauge(v),
            (Value::Float(v), _) => m.encode_gauge(v),
        }
    }
}

/// Writes one family of `metric_type` (a counter's name without `_total`: the encoder adds it).
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric_type: MetricType,
    series: impl IntoIterator<Item = (Labels, Value)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, metric_type)?;
    for (labels, value) in series {
        value.encode(metric_type, &mut m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn one(value: Value) -> [(Labels, Value); 1] {
    [(Vec::new(), value)]
}

impl Scrape {
    fn socket_labels(slot: &shm::SlotSnapshot) -> Labels {
        vec![
            ("socket", slot.socket.clone()),
            ("proto", slot.proto.map_or("", |p| p.as_str()).to_string()),
            ("tag", slot.tag.clone()),
        ]
    }

    fn sockets(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let slots = &self.snap.slots;
        let counter = |f: fn(&shm::SlotSnapshot) -> u64| {
            slots
                .iter()
                .map(move |s| (Self::socket_labels(s), Value::Int(f(s))))
        };
        family(
            enc,
            "socket_received",
            "Messages received on the socket (datagrams, or SIP messages on its connections).",
            None,
            MetricType::Counter,
            counter(|s| s.received),
        )?;
        family(
            enc,
            "socket_replied",
            "Replies sipsockd sent itself for messages received on the socket.",
            None,
            MetricType::Counter,
            counter(|s| s.replied),
        )?;
        let relayed = slots.iter().flat_map(|s| {
            [
                ("request", s.relayed_requests),
                ("response", s.relayed_responses),
            ]
            .map(|(direction, v)| {
                let mut labels = Self::socket_labels(s);
                labels.push(("direction", direction.to_string()));
                (labels, Value::Int(v))
            })
        });
        family(
            enc,
            "socket_relayed",
            "Messages received on the socket and forwarded.",
            None,
            MetricType::Counter,
            relayed,
        )?;
        family(
            enc,
            "socket_dropped",
            "Messages received on the socket that went nowhere (malformed, ACK, failed sends).",
            None,
            MetricType::Counter,
            counter(|s| s.dropped),
        )?;
        let states = slots.iter().flat_map(|s| {
            [SlotState::Active, SlotState::Error, SlotState::Absent].map(|state| {
                let mut labels = Self::socket_labels(s);
                labels.push(("state", state.as_str().to_string()));
                (labels, Value::Int(u64::from(s.state == state)))
            })
        });
        family(
            enc,
            "socket_state",
            "1 for the socket's state: active (bound, served), error (bind failed), absent \
             (address not on this host).",
            None,
            MetricType::Gauge,
            states,
        )?;
        let streams = slots
            .iter()
            .filter(|s| s.proto.is_some_and(|p| !p.is_datagram()))
            .map(|s| {
                (
                    Self::socket_labels(s),
                    Value::Int(u64::try_from(s.connections).unwrap_or(0)),
                )
            });
        family(
            enc,
            "socket_connections",
            "Open connections on a stream socket.",
            None,
            MetricType::Gauge,
            streams,
        )
    }

    fn workers(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let workers = &self.snap.workers;
        let labels = |w: &shm::WorkerSnapshot| -> Labels {
            vec![
                ("kind", w.kind.as_str().to_string()),
                ("rank", w.rank.to_string()),
            ]
        };
        let counter = |f: fn(&shm::WorkerSnapshot) -> u64| {
            workers.iter().map(move |w| (labels(w), Value::Int(f(w))))
        };
        family(
            enc,
            "worker_received",
            "Messages the worker received.",
            None,
            MetricType::Counter,
            counter(|w| w.received),
        )?;
        family(
            enc,
            "worker_replied",
            "Replies the worker sent.",
            None,
            MetricType::Counter,
            counter(|w| w.replied),
        )?;
        family(
            enc,
            "worker_dropped",
            "Messages the worker dropped.",
            None,
            MetricType::Counter,
            counter(|w| w.dropped),
        )?;
        family(
            enc,
            "worker_restarts",
            "Times the worker was restarted.",
            None,
            MetricType::Counter,
            counter(|w| u64::from(w.restarts)),
        )?;
        family(
            enc,
            "worker_busy",
            "Time the worker spent handling traffic.",
            Some(&Unit::Seconds),
            MetricType::Counter,
            workers
                .iter()
                .map(|w| (labels(w), Value::Float(w.busy_ns as f64 / 1e9))),
        )?;
        family(
            enc,
            "worker_up",
            "1 when the worker is ready (running and handed every socket).",
            None,
            MetricType::Gauge,
            workers.iter().map(|w| {
                (
                    labels(w),
                    Value::Int(u64::from(w.state == WorkerState::Ready)),
                )
            }),
        )?;
        family(
            enc,
            "worker_connections",
            "Open connections of a stream worker.",
            None,
            MetricType::Gauge,
            workers
                .iter()
                .filter(|w| w.kind == WorkerKind::Stream)
                .map(|w| (labels(w), Value::Int(w.connections))),
        )
    }

    fn reloads(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.snap.reloads;
        family(
            enc,
            "reloads",
            "Reloads done (sockets_reload, SIGHUP, the initial load), whatever their result.",
            None,
            MetricType::Counter,
            one(Value::Int(r.count)),
        )?;
        family(
            enc,
            "reload_failures",
            "Reloads whose result was not OK.",
            None,
            MetricType::Counter,
            one(Value::Int(r.failures)),
        )?;
        // The table keeps one count per bucket, then +Inf; the encoder makes them cumulative.
        let bounds = RELOAD_BUCKETS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(r.buckets.iter().copied()).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let mut m = enc.encode_descriptor(
            "reload_duration",
            "How long reloads took.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<Labels>(r.total_us as f64 / 1e6, count, &buckets, None)?;
        family(
            enc,
            "last_reload_status",
            "The last reload's result: 200 for OK, else its MI error code (0: none yet).",
            None,
            MetricType::Gauge,
            one(Value::Int(u64::from(r.last_status))),
        )?;
        if r.last_at_ms > 0 {
            family(
                enc,
                "last_reload_timestamp",
                "When the last reload ended (Unix time).",
                Some(&Unit::Seconds),
                MetricType::Gauge,
                one(Value::Float(r.last_at_ms as f64 / 1e3)),
            )?;
        }
        family(
            enc,
            "reload_generation",
            "The reload generation last applied.",
            None,
            MetricType::Gauge,
            one(Value::Int(self.snap.generation)),
        )
    }

    fn rest(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snap;
        let open = s
            .workers
            .iter()
            .filter(|w| w.kind == WorkerKind::Stream)
            .map(|w| w.connections)
            .sum();
        family(
            enc,
            "stream_connections",
            "Open stream connections (TCP, TLS, WS, WSS).",
            None,
            MetricType::Gauge,
            one(Value::Int(open)),
        )?;
        family(
            enc,
            "stream_connections_refused",
            "Stream connections refused (max_connections reached, or no worker could take one).",
            None,
            MetricType::Counter,
            one(Value::Int(s.connections_refused)),
        )?;
        family(
            enc,
            "slots_used",
            "Slots of the shared table in use.",
            None,
            MetricType::Gauge,
            one(Value::Int(s.slots.len() as u64)),
        )?;
        family(
            enc,
            "slots_total",
            "Slots of the shared table (max_sockets).",
            None,
            MetricType::Gauge,
            one(Value::Int(u64::from(s.max_sockets))),
        )?;
        family(
            enc,
            "process_resident_memory",
            "Resident memory of each process of the daemon.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
            self.memory.iter().map(|p| {
                (
                    vec![("kind", p.kind.to_string()), ("rank", p.rank.to_string())],
                    Value::Int(p.bytes),
                )
            }),
        )?;
        family(
            enc,
            "start_time",
            "When the daemon started (Unix time).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            one(Value::Int(s.start_time)),
        )
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.sockets(&mut enc)?;
        self.workers(&mut enc)?;
        self.reloads(&mut enc)?;
        self.rest(&mut enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_from_proc_status() {
        assert_eq!(
            resident_bytes("Name:\tx\nVmRSS:\t    2048 kB\nVmSwap:\t0 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        assert_eq!(resident_bytes("VmRSS: lots\n"), None);
        // This very process has some.
        let me = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(resident_bytes(&me).unwrap() > 0);
    }

    #[test]
    fn a_table_renders_as_openmetrics_text() {
        let dir = std::env::temp_dir().join(format!("sipsockd-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.shm");
        let table = shm::Table::create(&path, 4, 2, 1, 0).unwrap();
        let slot = table
            .occupy(&shm::SlotData {
                state: SlotState::Active,
                socket: "udp:127.0.0.1:5060".into(),
                proto: Some(shm::Proto::Udp),
                address: "127.0.0.1:5060".into(),
                tag: "a \"quoted\"\ntag".into(),
                ..Default::default()
            })
            .unwrap();
        table.record_reload(200, std::time::Duration::from_millis(3), 0);
        table.record_reload(500, std::time::Duration::from_secs(9), 0);
        table.add_connections_refused(2);
        let snap = shm::Reader::open(&path).unwrap().snapshot();
        let memory = process_memory(&snap);
        assert_eq!(memory[0].kind, "supervisor", "this process made the table");
        let text = render(snap, memory);
        table.remove().unwrap();
        let _ = std::fs::remove_dir_all(&dir);

        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in [
            "# TYPE sipsockd_socket_received counter",
            "sipsockd_socket_received_total{socket=\"udp:127.0.0.1:5060\",proto=\"udp\",tag=\"a \\\"quoted\\\"\\ntag\"} 0",
            "sipsockd_socket_state{socket=\"udp:127.0.0.1:5060\",proto=\"udp\",tag=\"a \\\"quoted\\\"\\ntag\",state=\"active\"} 1",
            "sipsockd_worker_received_total{kind=\"udp\",rank=\"1\"} 0",
            "sipsockd_worker_connections{kind=\"stream\",rank=\"0\"} 0",
            "sipsockd_reloads_total 2",
            "sipsockd_reload_failures_total 1",
            "# TYPE sipsockd_reload_duration_seconds histogram",
            "sipsockd_reload_duration_seconds_count 2",
            "sipsockd_reload_duration_seconds_bucket{le=\"0.005\"} 1",
            "sipsockd_reload_duration_seconds_bucket{le=\"5.0\"} 1",
            "sipsockd_reload_duration_seconds_bucket{le=\"+Inf\"} 2",
            "sipsockd_last_reload_status 500",
            "sipsockd_stream_connections_refused_total 2",
            "sipsockd_slots_used 1",
            "sipsockd_slots_total 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\nmissing from:\n{text}");
        }
        assert!(
            text.lines().any(|l| l.starts_with(
                "sipsockd_process_resident_memory_bytes{kind=\"supervisor\",rank=\"0\"} "
            )),
            "{text}"
        );
        assert_eq!(slot, 0);
    }
}
