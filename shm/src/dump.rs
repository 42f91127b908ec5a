//! `sipsockd shm-dump`: prints a [`Snapshot`] as readable text or as the `--json` object.

use std::io::Write;
use std::path::Path;

use crate::{Reader, ShmError, Snapshot};

/// Prints the table at `path` (read-only attach), as text or as one JSON object and a newline.
pub fn dump(path: &Path, json: bool, out: &mut dyn Write) -> Result<(), ShmError> {
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
        .map_err(|e| ShmError::io(path, "write output", e))
}

/// The text form: the header, then a table of the non-free slots, then one of the workers.
pub(crate) fn render_text(path: &Path, s: &Snapshot) -> String {
    let mut text = format!(
        "{}: layout {}, supervisor pid {}, started {} (unix time)\n\
         max_sockets {}, processes {}, stream_workers {}, generation {}, cursor {}\n\n",
        path.display(),
        s.layout,
        s.pid,
        s.start_time,
        s.max_sockets,
        s.processes,
        s.stream_workers,
        s.generation,
        s.cursor,
    );
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
            ]);
        }
        text.push_str(&columns(&rows));
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
    use crate::{Proto, SlotData, SlotState, Table, WorkerKind, WorkerState};

    #[test]
    fn text_dump_lists_header_slots_and_workers() {
        let dir = TestDir::new("dump");
        let path = dir.path("t.shm");
        let table = Table::create(&path, 3, 2, 1).unwrap();
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

        let mut out = Vec::new();
        dump(&path, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains(&format!("supervisor pid {}", std::process::id())),
            "{text}"
        );
        assert!(
            lines[1]
                .contains("max_sockets 3, processes 2, stream_workers 1, generation 5, cursor 1"),
            "{text}"
        );
        assert_eq!(lines[3], "slots: 2 of 3 in use");
        assert!(
            lines[4].starts_with("INDEX  STATE   PROTO  SOCKET"),
            "{text}"
        );
        let slot0: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(slot0[..4], ["0", "active", "udp", "udp:127.0.0.1:5070"]);
        assert!(lines[5].contains("line break"), "{text}");
        assert!(lines[5].contains(" 12 "), "{text}");
        assert!(lines[4].contains("RECEIVED  CONNECTIONS  ERROR"), "{text}");
        assert!(lines[5].contains(" 12        7 "), "{text}");
        assert!(
            lines[6].starts_with("1      error   udp    udp:192.0.2.1:5060"),
            "{text}"
        );
        assert!(
            lines[6].ends_with("Cannot assign requested address (os error 99)"),
            "{text}"
        );
        assert_eq!(lines[8], "workers: 3");
        assert_eq!(
            lines[9].split_whitespace().take(3).collect::<Vec<_>>(),
            ["KIND", "RANK", "PID"],
            "{text}"
        );
        let w1: Vec<&str> = lines[11].split_whitespace().collect();
        assert_eq!(
            w1,
            ["udp", "1", "31337", "ready", "0", "12", "0", "0", "0", "0"]
        );
        let s0: Vec<&str> = lines[12].split_whitespace().collect();
        assert_eq!(s0[..4], ["stream", "0", "0", "stopped"]);
        assert_eq!(lines.len(), 13, "{text}");
    }

    #[test]
    fn dump_of_a_missing_file_is_an_error_naming_it() {
        let dir = TestDir::new("dump-missing");
        let path = dir.path("nope.shm");
        let err = dump(&path, true, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("nope.shm"), "{err}");
    }
}
