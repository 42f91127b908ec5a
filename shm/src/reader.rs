//! The read-only side: `shm-dump` and anyone with read access to the file.
//!
//! A reader opens the file `O_RDONLY`, maps it read-only and only ever loads from it, so it works
//! as another user with read permission and cannot disturb the daemon: it takes no lock, and a
//! slot being rewritten is simply read again (seqlock).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use crate::layout::{self, SlotCounter, LAYOUT_VERSION, RELOAD_BUCKETS};
use crate::region::{Access, Region};
use crate::{Proto, ShmError, SlotState, WorkerKind, WorkerState};

/// The error text of a slot a reader could not read consistently (its writer stopped mid-update).
pub(crate) const INCONSISTENT: &str =
    "inconsistent read (the writer stopped in the middle of an update)";

/// A read-only view of a table.
pub struct Reader {
    path: PathBuf,
    region: Region,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The whole table at one moment (each slot consistent in itself), as `shm-dump --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The layout version.
    pub layout: u32,
    /// The supervisor's pid.
    pub pid: u32,
    /// The number of slots.
    pub max_sockets: u32,
    /// The number of UDP workers.
    pub processes: u32,
    /// The number of stream workers.
    pub stream_workers: u32,
    /// The reload generation last applied.
    pub generation: u64,
    /// The slot allocated last.
    pub cursor: u32,
    /// When the table was created (Unix seconds).
    pub start_time: u64,
    /// True when the supervisor named by `pid` is gone (no such process, or another process
    /// that got the same pid later): the file is what a dead daemon left, nothing in it runs.
    pub stale: bool,
    /// Unix time (ms) of the supervisor loop's last turn.
    pub heartbeat_ms: u64,
    /// Reload statistics.
    pub reloads: ReloadStats,
    /// Stream connections the supervisor refused.
    pub connections_refused: u64,
    /// Every slot that is not free, by index.
    pub slots: Vec<SlotSnapshot>,
    /// Every worker record: UDP ranks first, then stream ones.
    pub workers: Vec<WorkerSnapshot>,
    /// The number of relay records.
    pub max_relays: u32,
    /// Every relay record in use, by index.
    pub relays: Vec<RelaySnapshot>,
}

/// One relay record in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaySnapshot {
    /// The record index.
    pub index: u32,
    /// The relay row id.
    pub id: i64,
    /// Requests forwarded to the destination.
    pub requests: u64,
    /// Responses from the destination forwarded back.
    pub responses: u64,
    /// Failed sends toward the destination.
    pub failures: u64,
}

/// The reload statistics of the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStats {
    /// Reloads done, whatever their result.
    pub count: u64,
    /// Reloads whose result was not "OK".
    pub failures: u64,
    /// The last reload's result: 200 (OK) or the MI error code; 0 before the first.
    pub last_status: u32,
    /// How long the last reload took, microseconds.
    pub last_duration_us: u64,
    /// When the last reload ended, Unix ms (0: none yet).
    pub last_at_ms: u64,
    /// Rows of the last reload whose address is not on this host.
    pub last_absent: u32,
    /// Sum of all reload durations, microseconds.
    pub total_us: u64,
    /// Reloads per duration bucket (not cumulative): the bounds of `RELOAD_BUCKETS_US`, then
    /// +Inf.
    pub buckets: Vec<u64>,
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// One slot in a [`Snapshot`]; empty texts, tos 0 and no connections are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSnapshot {
    /// The slot index, from 0.
    pub index: u32,
    /// Active or error.
    pub state: SlotState,
    /// The row's socket text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub socket: String,
    /// The transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Proto>,
    /// The bound address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// The advertised `host:port`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub advertised: String,
    /// The tag.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// The flags, comma-joined.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub flags: String,
    /// The TOS byte.
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub tos: u8,
    /// Why the bind failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Messages received on the socket.
    pub received: u64,
    /// Replies sipsockd answered itself.
    pub replied: u64,
    /// Requests received on the socket and forwarded.
    pub relayed_requests: u64,
    /// Responses received on the socket and forwarded.
    pub relayed_responses: u64,
    /// Messages received on the socket that went nowhere.
    pub dropped: u64,
    /// 403 sent.
    pub sent_403: u64,
    /// 482 sent.
    pub sent_482: u64,
    /// 483 sent.
    pub sent_483: u64,
    /// 430 sent.
    pub sent_430: u64,
    /// 503 sent (no outgoing socket fits).
    pub sent_503: u64,
    /// Open connections (stream sockets): the sum over the stream workers' rows, never negative.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub connections: i64,
}

/// One worker in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    /// The rank in its pool.
    pub rank: u32,
    /// The pool.
    pub kind: WorkerKind,
    /// The pid (0: none).
    pub pid: u32,
    /// Its state.
    pub state: WorkerState,
    /// Restarts so far.
    pub restarts: u32,
    /// Datagrams received.
    pub received: u64,
    /// Replies sent.
    pub replied: u64,
    /// Datagrams dropped.
    pub dropped: u64,
    /// Wake-ups of its wait.
    pub wakeups: u64,
    /// Open connections (stream workers; always 0 for UDP ones).
    #[serde(default)]
    pub connections: u64,
    /// Requests forwarded.
    pub relayed_requests: u64,
    /// Responses forwarded.
    pub relayed_responses: u64,
    /// Nanoseconds spent handling traffic.
    pub busy_ns: u64,
    /// Connections or messages refused.
    pub refused: u64,
    /// Messages taken from its inbox.
    pub inbox_received: u64,
    /// Messages lost on the way through its inbox.
    pub inbox_dropped: u64,
}

impl Reader {
    /// Opens the table at `path` read-only and validates its header.
    pub fn open(path: &Path) -> Result<Reader, ShmError> {
        let file: File = OpenOptions::new()
            .read(true)
            // Never block on a FIFO planted at the path (it is then refused as not a file).
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| ShmError::io(path, "open", e))?;
        let region = Region::attach(&file, path, Access::ReadOnly)?;
        debug_assert!(!region.writable());
        Ok(Reader {
            path: path.to_path_buf(),
            region,
        })
    }

    /// Reads the table now. Each slot is consistent in itself (seqlock); the header, slots and
    /// workers are read one after the other, not as one atomic picture.
    pub fn snapshot(&self) -> Snapshot {
        let header = self.region.header();
        let geo = self.region.geometry();
        let mut slots = Vec::new();
        for (index, slot) in self.region.slots().iter().enumerate() {
            let read = slot.read();
            let mut data = layout::decode(&read.bytes);
            if data.state == SlotState::Free {
                continue;
            }
            if !read.consistent {
                // Only when the supervisor died in the middle of a write: show, don't hide.
                data.state = SlotState::Error;
                data.error = INCONSISTENT.into();
            }
            let [received, replied, relayed_requests, relayed_responses, dropped, sent_403, sent_482, sent_483, sent_430, sent_503] =
                slot.counter_values();
            debug_assert_eq!(SlotCounter::ALL[9], SlotCounter::Sent503);
            slots.push(SlotSnapshot {
                index: index as u32,
                state: data.state,
                socket: data.socket,
                proto: data.proto,
                address: data.address,
                advertised: data.advertised,
                tag: data.tag,
                flags: data.flags,
                tos: data.tos,
                error: data.error,
                received,
                replied,
                relayed_requests,
                relayed_responses,
                dropped,
                sent_403,
                sent_482,
                sent_483,
                sent_430,
                sent_503,
                // The sum of at most 4096 i32 cells: always within an i64.
                connections: i64::try_from(self.region.slot_connections(index as u32))
                    .unwrap_or(i64::MAX),
            });
        }
        let workers = self
            .region
            .workers()
            .iter()
            .enumerate()
            .map(|(i, w)| {
                // Position decides kind and rank; the stored copies are informative only.
                let (kind, rank) = if i < geo.processes as usize {
                    (WorkerKind::Udp, i as u32)
                } else {
                    (WorkerKind::Stream, (i - geo.processes as usize) as u32)
                };
                WorkerSnapshot {
                    rank,
                    kind,
                    pid: w.pid(),
                    state: w.state(),
                    restarts: w.restarts(),
                    received: w.received(),
                    replied: w.replied(),
                    dropped: w.dropped(),
                    wakeups: w.wakeups(),
                    connections: w.connections(),
                    relayed_requests: w.relayed_requests(),
                    relayed_responses: w.relayed_responses(),
                    busy_ns: w.busy_ns(),
                    refused: w.refused(),
                    inbox_received: w.inbox_received(),
                    inbox_dropped: w.inbox_dropped(),
                }
            })
            .collect();
        let relays = self
            .region
            .relays()
            .iter()
            .enumerate()
            .filter(|(_, r)| r.in_use())
            .map(|(index, r)| RelaySnapshot {
                index: index as u32,
                id: r.id(),
                requests: r.requests(),
                responses: r.responses(),
                failures: r.failures(),
            })
            .collect();
        let pid = header.pid.load(Relaxed);
        let reloads = ReloadStats {
            count: header.reloads.load(Relaxed),
            failures: header.reload_failures.load(Relaxed),
            last_status: header.last_reload_status.load(Relaxed),
            last_duration_us: header.last_reload_us.load(Relaxed),
            last_at_ms: header.last_reload_ms.load(Relaxed),
            last_absent: header.last_reload_absent.load(Relaxed),
            total_us: header.reload_us_total.load(Relaxed),
            buckets: header
                .reload_buckets
                .iter()
                .map(|b| b.load(Relaxed))
                .collect(),
        };
        debug_assert_eq!(reloads.buckets.len(), RELOAD_BUCKETS);
        Snapshot {
            layout: LAYOUT_VERSION,
            pid,
            max_sockets: geo.max_sockets,
            processes: geo.processes,
            stream_workers: geo.stream_workers,
            generation: header.generation.load(Relaxed),
            cursor: header.cursor.load(Relaxed),
            start_time: header.start_time.load(Relaxed),
            stale: !crate::proc::supervisor_alive(pid, header.start_ticks.load(Relaxed)),
            heartbeat_ms: header.heartbeat_ms.load(Relaxed),
            reloads,
            connections_refused: header.connections_refused.load(Relaxed),
            slots,
            workers,
            max_relays: geo.max_relays,
            relays,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use crate::{SlotData, Table};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn garbage_and_truncated_files_are_errors_not_panics() {
        let dir = TestDir::new("reader-bad");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short", b"SIPSK".to_vec()),
            ("garbage", vec![0xa5; 10_000]),
            ("zeros", vec![0; 128]),
        ];
        for (name, bytes) in cases {
            let path = dir.path(name);
            std::fs::write(&path, bytes).unwrap();
            let err = Reader::open(&path).unwrap_err();
            assert!(matches!(err, ShmError::BadLayout { .. }), "{name}: {err}");
        }

        // A real table, truncated (and, separately, with a byte too many).
        let path = dir.path("t.shm");
        let table = Table::create(&path, 10, 2, 2, 0).unwrap();
        let good = std::fs::read(&path).unwrap();
        // 10 slots: one 64-byte matrix row per stream worker.
        let layout1_len = 256 + 960 * 10 + 128 * 4;
        assert_eq!(good.len(), layout1_len + 64 * 2);
        for (name, len) in [
            ("cut-header", 100),
            ("cut-slots", 256 + 960 * 3),
            ("cut-records", layout1_len - 64),
            // Where a layout-1 file ended: the whole matrix is missing.
            ("no-matrix", layout1_len),
            ("cut-matrix", layout1_len + 64),
            ("cut-one", good.len() - 1),
        ] {
            let p = dir.path(name);
            std::fs::write(&p, &good[..len]).unwrap();
            let err = Reader::open(&p).unwrap_err();
            assert!(matches!(err, ShmError::BadLayout { .. }), "{name}: {err}");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(dir.path("long"), &longer).unwrap();
        let err = Reader::open(&dir.path("long")).unwrap_err().to_string();
        assert!(err.contains("file is"), "{err}");
        // Another layout version is named as such.
        let mut other = good.clone();
        other[8] = 99;
        std::fs::write(dir.path("v99"), &other).unwrap();
        let err = Reader::open(&dir.path("v99")).unwrap_err().to_string();
        assert!(err.contains("layout version 99"), "{err}");
        // A layout-1 file (header and length as version 1 wrote them) is named as such.
        let mut v1 = good[..layout1_len].to_vec();
        v1[8..12].copy_from_slice(&1u32.to_ne_bytes());
        std::fs::write(dir.path("v1"), &v1).unwrap();
        let err = Reader::open(&dir.path("v1")).unwrap_err().to_string();
        assert!(
            err.contains("layout version 1, this build reads 3"),
            "{err}"
        );
        // A huge max_sockets in the header is refused before anything is sized from it.
        let mut huge = good.clone();
        huge[24..28].copy_from_slice(&u32::MAX.to_ne_bytes());
        std::fs::write(dir.path("huge"), &huge).unwrap();
        assert!(Reader::open(&dir.path("huge")).is_err());
        // Missing file, directory.
        assert!(matches!(
            Reader::open(&dir.path("none")),
            Err(ShmError::Io { .. })
        ));
        assert!(Reader::open(dir.root()).is_err());
        drop(table);
    }

    #[test]
    fn reads_a_file_without_write_permission() {
        let dir = TestDir::new("reader-ro");
        let path = dir.path("t.shm");
        let table = Table::create(&path, 2, 1, 0, 0).unwrap();
        table.occupy(&SlotData {
            state: SlotState::Active,
            socket: "udp:127.0.0.1:5060".into(),
            ..Default::default()
        });
        let copy = dir.path("copy.shm");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o444)).unwrap();
        let before = std::fs::read(&copy).unwrap();
        let snap = Reader::open(&copy).unwrap().snapshot();
        assert_eq!(snap.slots.len(), 1);
        assert_eq!(
            std::fs::read(&copy).unwrap(),
            before,
            "a reader never writes"
        );
    }

    /// The child half of `reads_as_another_user`: does nothing unless that test started it.
    #[test]
    fn child_reads_as_another_user() {
        let Some(path) = std::env::var_os("SHM_TEST_READ_AS_OTHER") else {
            return;
        };
        let path = PathBuf::from(path);
        assert!(!nix::unistd::Uid::effective().is_root());
        assert!(
            OpenOptions::new().write(true).open(&path).is_err(),
            "the child must really lack write access"
        );
        let mut out = Vec::new();
        crate::dump(&path, true, &mut out).unwrap();
        let snap: Snapshot = serde_json::from_slice(&out).unwrap();
        assert_eq!(snap.slots.len(), 1);
        assert_eq!(snap.slots[0].socket, "udp:127.0.0.1:5060");
        assert_eq!(snap.slots[0].received, 9);
    }

    /// `shm-dump` works as another user with read access only (needs root to switch users).
    #[test]
    fn reads_as_another_user() {
        use std::os::unix::process::CommandExt;
        if !nix::unistd::Uid::effective().is_root() {
            crate::testdir::skip(
                "shm reader::tests::reads_as_another_user",
                "needs root to run a child as nobody",
            );
            return;
        }
        let dir = TestDir::new("reader-other-user");
        let path = dir.path("t.shm");
        let table = Table::create(&path, 2, 1, 0, 0).unwrap();
        let i = table
            .occupy(&SlotData {
                state: SlotState::Active,
                socket: "udp:127.0.0.1:5060".into(),
                ..Default::default()
            })
            .unwrap();
        let attached = crate::Attached::from_file(table.file().try_clone().unwrap()).unwrap();
        attached.add_slot_received(i, 9);
        // Read access for others, as an operator would grant it (the daemon creates it 0600).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "reader::tests::child_reads_as_another_user",
                "--test-threads=1",
            ])
            .env("SHM_TEST_READ_AS_OTHER", &path)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The reader left the table as it was.
        assert_eq!(table.slot_received(i), 9);
        assert_eq!(table.slot(i).unwrap().socket, "udp:127.0.0.1:5060");
    }

    #[test]
    fn json_shape_key_for_key() {
        let dir = TestDir::new("reader-json");
        let path = dir.path("t.shm");
        let table = Table::create(&path, 4, 2, 0, 0).unwrap();
        table.set_generation(3);
        table.occupy(&SlotData {
            state: SlotState::Active,
            socket: "udp:127.0.0.1:5070".into(),
            proto: Some(Proto::Udp),
            address: "127.0.0.1:5070".into(),
            advertised: "sip.example.com:5060".into(),
            tag: "edge".into(),
            flags: "anycast,frag".into(),
            tos: 16,
            error: String::new(),
        });
        table.occupy(&SlotData {
            state: SlotState::Error,
            socket: "udp:192.0.2.1:5060".into(),
            proto: Some(Proto::Udp),
            error: "Cannot assign requested address".into(),
            ..Default::default()
        });
        let free_again = table
            .occupy(&SlotData {
                state: SlotState::Active,
                ..Default::default()
            })
            .unwrap();
        table.free_slot(free_again);
        let w = table.worker(WorkerKind::Udp, 0).unwrap();
        w.set_pid(100);
        w.set_state(WorkerState::Ready);

        let mut out = Vec::new();
        crate::dump(&path, true, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        // serde_json's Value sorts keys: the exact key sets are checked by the `json!` equalities
        // below, the order here on the text (header keys, the first slot's, the first worker's).
        let order = [
            "layout",
            "pid",
            "max_sockets",
            "processes",
            "stream_workers",
            "generation",
            "cursor",
            "start_time",
            "stale",
            "heartbeat_ms",
            "reloads",
            "count",
            "failures",
            "last_status",
            "last_duration_us",
            "last_at_ms",
            "last_absent",
            "total_us",
            "buckets",
            "connections_refused",
            "slots",
            "index",
            "state",
            "socket",
            "proto",
            "address",
            "advertised",
            "tag",
            "flags",
            "tos",
            "received",
            "replied",
            "relayed_requests",
            "relayed_responses",
            "dropped",
            "sent_403",
            "sent_482",
            "sent_483",
            "sent_430",
            "sent_503",
            "workers",
            "rank",
            "kind",
            "pid",
            "state",
            "restarts",
            "received",
            "replied",
            "dropped",
            "wakeups",
            "connections",
            "relayed_requests",
            "relayed_responses",
            "busy_ns",
            "refused",
            "inbox_received",
            "inbox_dropped",
        ];
        let mut at = 0;
        for k in order {
            match text[at..].find(&format!("\"{k}\":")) {
                Some(i) => at += i + 1,
                None => panic!("key {k} missing or out of order in {text}"),
            }
        }
        let top: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(top.len(), 16, "{text}");
        assert_eq!(
            (v["max_relays"].clone(), v["relays"].clone()),
            (0.into(), serde_json::json!([]))
        );
        assert_eq!(v["stale"], false, "this process made it: alive");
        assert_eq!(v["layout"], LAYOUT_VERSION);
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(
            (
                v["max_sockets"].clone(),
                v["processes"].clone(),
                v["generation"].clone()
            ),
            (4.into(), 2.into(), 3.into())
        );
        assert_eq!(v["cursor"], 2);
        let slots = v["slots"].as_array().unwrap();
        assert_eq!(slots.len(), 2, "the free slot is not listed");
        assert_eq!(
            slots[0],
            serde_json::json!({
                "index": 0, "state": "active", "socket": "udp:127.0.0.1:5070", "proto": "udp",
                "address": "127.0.0.1:5070", "advertised": "sip.example.com:5060", "tag": "edge",
                "flags": "anycast,frag", "tos": 16, "received": 0, "replied": 0,
                "relayed_requests": 0, "relayed_responses": 0, "dropped": 0, "sent_403": 0,
                "sent_482": 0, "sent_483": 0, "sent_430": 0, "sent_503": 0
            })
        );
        assert_eq!(
            slots[1],
            serde_json::json!({
                "index": 1, "state": "error", "socket": "udp:192.0.2.1:5060", "proto": "udp",
                "error": "Cannot assign requested address", "received": 0, "replied": 0,
                "relayed_requests": 0, "relayed_responses": 0, "dropped": 0, "sent_403": 0,
                "sent_482": 0, "sent_483": 0, "sent_430": 0, "sent_503": 0
            })
        );
        let workers = v["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 2);
        assert_eq!(
            workers[0],
            serde_json::json!({
                "rank": 0, "kind": "udp", "pid": 100, "state": "ready", "restarts": 0,
                "received": 0, "replied": 0, "dropped": 0, "wakeups": 0, "connections": 0,
                "relayed_requests": 0, "relayed_responses": 0, "busy_ns": 0, "refused": 0,
                "inbox_received": 0, "inbox_dropped": 0
            })
        );
        assert_eq!(workers[1]["state"], "stopped");
        // The typed form reads back what it wrote.
        let snap: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(Reader::open(&path).unwrap().snapshot(), snap);
    }

    #[test]
    fn seqlock_reader_never_sees_a_torn_slot() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};

        // Every field is derived from one number, so a mix of two writes shows as a mismatch.
        fn data(n: u64) -> SlotData {
            SlotData {
                state: if n.is_multiple_of(2) {
                    SlotState::Active
                } else {
                    SlotState::Error
                },
                socket: format!("udp:10.0.{}.{}:{}", n % 250, (n / 250) % 250, n),
                proto: Some(Proto::Udp),
                address: format!("{n}"),
                advertised: format!("{n}").repeat(1 + (n % 7) as usize),
                tag: format!("tag{n}"),
                flags: if n.is_multiple_of(3) {
                    "frag".into()
                } else {
                    "anycast,reuse_port".into()
                },
                tos: (n % 256) as u8,
                error: format!("e{n}").repeat(1 + (n % 11) as usize),
            }
        }
        fn number(d: &SlotData) -> u64 {
            d.socket.rsplit(':').next().unwrap().parse().unwrap()
        }

        let dir = TestDir::new("seqlock");
        let path = dir.path("t.shm");
        let table = Table::create(&path, 1, 0, 0, 0).unwrap();
        let index = table.occupy(&data(0)).unwrap();
        let reader = Reader::open(&path).unwrap();
        let stop = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(30);

        // Stops the writer however the reader's loop ends (a failed assertion included).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }

        let (consistent, gave_up, distinct, writes) = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut n = 1u64;
                while !stop.load(Ordering::Relaxed) && n < 50_000_000 && Instant::now() < deadline {
                    table.write_slot(index, &data(n));
                    n += 1;
                }
                n
            });
            let _stop = StopOnDrop(&stop);
            let mut seen = std::collections::HashSet::new();
            let (mut consistent, mut gave_up) = (0u64, 0u64);
            // Enough reads, and enough different values seen, for overlap with writes to be sure.
            while (consistent < 5_000 || seen.len() < 50) && Instant::now() < deadline {
                let snap = reader.snapshot();
                assert_eq!(snap.slots.len(), 1);
                let s = &snap.slots[0];
                if s.error == INCONSISTENT {
                    // The writer was descheduled mid-write for the whole patience: flagged, not
                    // torn (possible on a loaded machine, not what this test checks).
                    gave_up += 1;
                    continue;
                }
                let got = SlotData {
                    state: s.state,
                    socket: s.socket.clone(),
                    proto: s.proto,
                    address: s.address.clone(),
                    advertised: s.advertised.clone(),
                    tag: s.tag.clone(),
                    flags: s.flags.clone(),
                    tos: s.tos,
                    error: s.error.clone(),
                };
                let n = number(&got);
                assert_eq!(got, data(n), "torn read after {consistent} good ones");
                seen.insert(n);
                consistent += 1;
            }
            drop(_stop);
            (consistent, gave_up, seen.len(), writer.join().unwrap())
        });
        assert!(writes > 1);
        assert!(
            distinct >= 2,
            "the reader saw {distinct} distinct values in {consistent} reads ({gave_up} flagged): no overlap tested"
        );
    }
}
