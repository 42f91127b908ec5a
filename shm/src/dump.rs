//! `sipsockd shm-dump`: prints a [`Snapshot`] as readable text or as the `--json` object.

use std::io::Write;
use std::path::Path;

use crate::{Reader, ShmError, Snapshot};

/// Prints the table at `path` (read-only attach), as text or as one JSON object and a newline,
/// and returns what it printed (the caller tells a stale table, `snapshot.stale`, by its exit
/// status).
pub fn dump(path: &Path, json: bool, out: &mut dyn Write) -> Result<Snapshot, ShmError> {
    let snapshot = Reader::open(path)?.snapshot();
    let written = if json {
        serde_json::to_writer(&mut *out, &snapshot)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        out.write_all(render_text(path, &snapshot).as_bytes())
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| ShmError::io(path, "write output", e))?;
    Ok(snapshot)
}

/// A Unix time in seconds as an RFC 3339 UTC date (the number itself if out of range).
fn date(unix_seconds: u64) -> String {
    i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| unix_seconds.to_string(), |t| t.to_string())
}

/// A Unix time in milliseconds as an RFC 3339 UTC date with milliseconds.
fn date_ms(unix_ms: u64) -> String {
    i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| unix_ms.to_string(), |t| format!("{t:.3}"))
}

/// The reload line of the text dump.
fn reload_line(s: &Snapshot) -> String {
    let r = &s.reloads;
    if r.count == 0 {
        return "reloads: none yet".into();
    }
    let result = match r.last_status {
        200 => "OK".to_string(),
        code => format!("error {code}"),
    };
    format!(
        "reloads: {} ({} not OK); last: {result} in {:.1} ms at {}{}",
        r.count,
        r.failures,
        r.last_duration_us as f64 / 1000.0,
        date_ms(r.last_at_ms),
        if r.last_absent > 0 {
            format!(", {} rows absent (address not on this host)", r.last_absent)
        } else {
            String::new()
        }
    )
}

/// The text form: the header, then a table of the non-free slots, then one of the workers.
pub(crate) fn render_text(path: &Path, s: &Snapshot) -> String {
    let mut text = String::new();
    if s.stale {
        text.push_str(&format!(
            "stale: supervisor PID {} is gone (this file is what a dead daemon left; nothing in it \
             is served)\n",
            s.pid
        ));
    }
    text.push_str(&format!(
        "{}: layout {}, supervisor pid {}, started {}\n\
         max_sockets {}, processes {}, stream_workers {}, generation {}, cursor {}\n\
         {}; stream connections refused {}\n\n",
        path.display(),
        s.layout,
        s.pid,
        date(s.start_time),
        s.max_sockets,
        s.processes,
        s.stream_workers,
        s.generation,
        s.cursor,
        reload_line(s),
        s.connections_refused,
    ));
    text.push_str(&format!(
        "slots: {} of {} in use\n",
        s.slots.len(),
        s.max_sockets
    ));
    if !s.slots.is_empty() {
        let mut rows = vec![cells(&[
            "INDEX",
            "STATE",
            "PROTO",
            "SOCKET",
            "ADDRESS",
            "ADVERTISED",
            "TAG",
            "FLAGS",
            "TOS",
            "RECEIVED",
            "REPLIED",
            "RELAYED",
            "REFUSED",
            "DROPPED",
            "CONNECTIONS",
            "ERROR",
        ])];
        for slot in &s.slots {
            rows.push(vec![
                slot.index.to_string(),
                slot.state.to_string(),
                slot.proto.map_or("-".into(), |p| p.to_string()),
                or_dash(&slot.socket),
                or_dash(&slot.address),
                or_dash(&slot.advertised),
                or_dash(&slot.tag),
                or_dash(&slot.flags),
                slot.tos.to_string(),
                slot.received.to_string(),
                slot.replied.to_string(),
                format!("{}/{}", slot.relayed_requests, slot.relayed_responses),
                (slot.sent_403 + slot.sent_482 + slot.sent_483 + slot.sent_430 + slot.sent_503)
                    .to_string(),
                slot.dropped.to_string(),
                slot.connections.to_string(),
                or_dash(&slot.error),
            ]);
        }
        text.push_str(&columns(&rows));
    }
    text.push_str(&format!("\nworkers: {}\n", s.workers.len()));
    if !s.workers.is_empty() {
        let mut rows = vec![cells(&[
            "KIND",
            "RANK",
            "PID",
            "STATE",
            "RESTARTS",
            "RECEIVED",
            "REPLIED",
            "DROPPED",
            "WAKEUPS",
            "CONNECTIONS",
            "RELAYED",
            "BUSY_S",
            "REFUSED",
        ])];
        for w in &s.workers {
            rows.push(vec![
                w.kind.to_string(),
                w.rank.to_string(),
                w.pid.to_string(),
                w.state.to_string(),
                w.restarts.to_string(),
                w.received.to_string(),
                w.replied.to_string(),
                w.dropped.to_string(),
                w.wakeups.to_string(),
                w.connections.to_string(),
                format!("{}/{}", w.relayed_requests, w.relayed_responses),
                format!("{:.3}", w.busy_ns as f64 / 1e9),
                w.refused.to_string(),
            ]);
        }
        text.push_str(&columns(&rows));
    }
    if s.max_relays > 0 {
        text.push_str(&format!(
            "\nrelays: {} of {} records in use\n",
            s.relays.len(),
            s.max_relays
        ));
        if !s.relays.is_empty() {
            let mut rows = vec![cells(&["INDEX", "ID", "REQUESTS", "RESPONSES", "FAILURES"])];
            for r in &s.relays {
                rows.push(vec![
                    r.index.to_string(),
                    r.id.to_string(),
                    r.requests.to_string(),
                    r.responses.to_string(),
                    r.failures.to_string(),
                ]);
            }
            text.push_str(&columns(&rows));
        }
    }
    text
}

fn cells(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        // One line per slot, whatever the row's text holds.
        s.replace(['\n', '\r', '\t'], " ")
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use crate::{Proto, Reader, SlotData, SlotState, Table, WorkerKind, WorkerState};

    #[test]
    fn text_dump_lists_header_slots_and_workers() {
        let dir = TestDir::new("dump");
        let path = dir.path("t.shm");
        let table = Table::create(&path, 3, 2, 1, 0).unwrap();
        table.set_generation(5);
        let i = table
            .occupy(&SlotData {
                state: SlotState::Active,
                socket: "udp:127.0.0.1:5070".into(),
                proto: Some(Proto::Udp),
                address: "127.0.0.1:5070".into(),
                tag: "line\nbreak".into(),
                ..Default::default()
            })
            .unwrap();
        table.occupy(&SlotData {
            state: SlotState::Error,
            socket: "udp:192.0.2.1:5060".into(),
            proto: Some(Proto::Udp),
            error: "Cannot assign requested address (os error 99)".into(),
            ..Default::default()
        });
        let w = table.worker(WorkerKind::Udp, 1).unwrap();
        w.set_pid(31337);
        w.set_state(WorkerState::Ready);
        w.add_received(12);
        let attached = crate::Attached::from_file(table.file().try_clone().unwrap()).unwrap();
        attached.add_slot_received(i, 12);
        // Two stream workers' shares would add up; here one worker holds all 7.
        attached.add_slot_connections(0, i, 7);

        attached.add_slot(i, crate::SlotCounter::Replied, 10);
        attached.add_slot(i, crate::SlotCounter::RelayedRequests, 4);
        attached.add_slot(i, crate::SlotCounter::RelayedResponses, 3);
        attached.add_slot(i, crate::SlotCounter::Sent483, 1);
        attached.add_slot(i, crate::SlotCounter::Sent403, 1);
        attached.add_slot(i, crate::SlotCounter::Dropped, 2);
        table.record_reload(200, std::time::Duration::from_micros(1500), 0);
        table.record_reload(500, std::time::Duration::from_micros(2500), 2);
        table.add_connections_refused(4);

        let mut out = Vec::new();
        let snap = dump(&path, false, &mut out).unwrap();
        assert!(!snap.stale);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains(&format!("supervisor pid {}", std::process::id())),
            "{text}"
        );
        // The start as a date, not a Unix number.
        let year = lines[0].rsplit("started ").next().unwrap();
        assert!(year.starts_with("20") && year.ends_with('Z'), "{text}");
        assert!(
            lines[1]
                .contains("max_sockets 3, processes 2, stream_workers 1, generation 5, cursor 1"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("reloads: 2 (1 not OK); last: error 500 in 2.5 ms at 20"),
            "{text}"
        );
        assert!(
            lines[2].ends_with(
                ", 2 rows absent (address not on this host); stream connections refused 4"
            ),
            "{text}"
        );
        assert_eq!(lines[4], "slots: 2 of 3 in use");
        assert!(
            lines[5].starts_with("INDEX  STATE   PROTO  SOCKET"),
            "{text}"
        );
        assert!(
            lines[5].contains("RECEIVED  REPLIED  RELAYED  REFUSED  DROPPED  CONNECTIONS  ERROR"),
            "{text}"
        );
        let slot0: Vec<&str> = lines[6].split_whitespace().collect();
        assert_eq!(slot0[..4], ["0", "active", "udp", "udp:127.0.0.1:5070"]);
        assert!(lines[6].contains("line break"), "{text}");
        assert!(
            lines[6].contains(" 12        10       4/3      2        2        7"),
            "{text}"
        );
        assert!(
            lines[7].starts_with("1      error   udp    udp:192.0.2.1:5060"),
            "{text}"
        );
        assert!(
            lines[7].ends_with("Cannot assign requested address (os error 99)"),
            "{text}"
        );
        assert_eq!(lines[9], "workers: 3");
        assert_eq!(
            lines[10].split_whitespace().take(3).collect::<Vec<_>>(),
            ["KIND", "RANK", "PID"],
            "{text}"
        );
        let w1: Vec<&str> = lines[12].split_whitespace().collect();
        assert_eq!(
            w1,
            ["udp", "1", "31337", "ready", "0", "12", "0", "0", "0", "0", "0/0", "0.000", "0"]
        );
        let s0: Vec<&str> = lines[13].split_whitespace().collect();
        assert_eq!(s0[..4], ["stream", "0", "0", "stopped"]);
        assert_eq!(lines.len(), 14, "{text}");
    }

    /// Regression (issue 12): after the supervisor was SIGKILLed, the dump showed slots "active"
    /// and workers "ready" with nothing saying the daemon was gone.
    #[test]
    fn a_table_whose_supervisor_is_gone_is_stale() {
        let dir = TestDir::new("dump-stale");
        let path = dir.path("t.shm");
        let table = Table::create(&path, 2, 1, 0, 0).unwrap();
        table.occupy(&SlotData {
            state: SlotState::Active,
            socket: "udp:127.0.0.1:5070".into(),
            ..Default::default()
        });
        // What a SIGKILLed supervisor leaves: the file, its header naming a process that is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let copy = dir.path("copy.shm");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[36..40].copy_from_slice(&dead.to_ne_bytes());
        std::fs::write(&copy, &bytes).unwrap();
        let mut out = Vec::new();
        let snap = dump(&copy, false, &mut out).unwrap();
        assert!(snap.stale);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(&format!("stale: supervisor PID {dead} is gone")),
            "{text}"
        );
        let mut out = Vec::new();
        dump(&copy, true, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stale"], true);
        // Our own pid with another start time: a recycled pid is stale too.
        bytes[36..40].copy_from_slice(&std::process::id().to_ne_bytes());
        bytes[64..72].copy_from_slice(&1u64.to_ne_bytes());
        std::fs::write(&copy, &bytes).unwrap();
        assert!(dump(&copy, true, &mut Vec::new()).unwrap().stale);
        // The live one is not.
        assert!(!dump(&path, true, &mut Vec::new()).unwrap().stale);
    }

    #[test]
    fn relay_records_are_taken_counted_and_freed() {
        let dir = TestDir::new("dump-relays");
        let path = dir.path("t.shm");
        let table = Table::create(&path, 1, 1, 0, 2).unwrap();
        let a = table.occupy_relay(7).unwrap();
        let b = table.occupy_relay(-1).unwrap();
        assert_eq!((a, b), (0, 1));
        assert_eq!(table.occupy_relay(9), None, "both records taken");
        let attached = crate::Attached::from_file(table.file().try_clone().unwrap()).unwrap();
        let r = attached.relay(a).unwrap();
        r.add_requests(5);
        r.add_responses(4);
        r.add_failures(1);
        assert!(attached.relay(2).is_none());
        let mut out = Vec::new();
        let snap = dump(&path, false, &mut out).unwrap();
        assert_eq!(snap.relays.len(), 2);
        assert_eq!(
            (
                snap.relays[0].id,
                snap.relays[0].requests,
                snap.relays[0].responses
            ),
            (7, 5, 4)
        );
        assert_eq!(snap.relays[1].id, -1);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("relays: 2 of 2 records in use\nINDEX  ID  REQUESTS  RESPONSES  FAILURES\n0      7   5         4          1\n"), "{text}");
        // A freed record is reused with its counters zeroed.
        table.free_relay(a);
        assert_eq!(Reader::open(&path).unwrap().snapshot().relays.len(), 1);
        assert_eq!(table.occupy_relay(8), Some(a));
        assert_eq!(table.relay(a).unwrap().requests(), 0);
        assert_eq!(table.relay(a).unwrap().id(), 8);
    }

    #[test]
    fn dump_of_a_missing_file_is_an_error_naming_it() {
        let dir = TestDir::new("dump-missing");
        let path = dir.path("nope.shm");
        let err = dump(&path, true, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("nope.shm"), "{err}");
    }
}
