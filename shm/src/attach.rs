//! The worker side: a read-write view of the table through the fd the supervisor passed.
//!
//! A worker only adds to counters (its own record, the slots' datagram counters and, for a stream
//! worker, its own row of the connection matrix); it never writes a slot's contents or the header,
//! which belong to the supervisor.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use crate::layout;
use crate::region::{Access, Region};
use crate::{ShmError, SlotCounter, SlotCounts, WorkerKind, WorkerRecord};

/// A worker's view of the table.
pub struct Attached {
    region: Region,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("geometry", &self.region.geometry())
            .finish()
    }
}

impl Attached {
    /// Maps `file` (open read-write, received from the supervisor) and validates its header.
    /// The fd is closed once mapped: the mapping keeps the table alive.
    pub fn from_file(file: File) -> Result<Attached, ShmError> {
        let name = describe(&file);
        let region = Region::attach(&file, &name, Access::ReadWrite)?;
        Ok(Attached { region })
    }

    /// This worker's record (or another's), `None` beyond the pool's size.
    pub fn worker(&self, kind: WorkerKind, rank: u32) -> Option<&WorkerRecord> {
        self.region.worker(kind, rank)
    }

    /// The number of slots.
    pub fn max_sockets(&self) -> u32 {
        self.region.geometry().max_sockets
    }

    /// Adds `n` datagrams to a slot's `received` counter (ignored beyond `max_sockets`).
    pub fn add_slot_received(&self, index: u32, n: u64) {
        self.add_slot(index, SlotCounter::Received, n);
    }

    /// Adds `n` to one counter of a slot (ignored beyond `max_sockets`).
    pub fn add_slot(&self, index: u32, which: SlotCounter, n: u64) {
        if let Some(slot) = self.region.slot(index) {
            slot.counter(which).fetch_add(n, Relaxed);
        }
    }

    /// Adds a batch's counts to a slot: one atomic add per counter that moved.
    pub fn add_slot_counts(&self, index: u32, counts: &SlotCounts) {
        let Some(slot) = self.region.slot(index) else {
            return;
        };
        for (which, n) in SlotCounter::ALL.iter().zip(counts.values()) {
            if *n != 0 {
                slot.counter(*which).fetch_add(*n, Relaxed);
            }
        }
    }

    /// A relay record, to add to its counters (`None` beyond `max_relays`).
    pub fn relay(&self, index: u32) -> Option<&crate::RelayRecord> {
        self.region.relay(index)
    }

    /// Moves stream worker `rank`'s count of open connections on slot `index` by `delta` (its
    /// cell of the connection matrix; ignored beyond the stream pool or `max_sockets`). Only the
    /// worker of that rank may call it with its rank: each row has that one writer while the
    /// worker lives, and the supervisor zeroes it once the worker is dead
    /// ([`Table::reset_worker_connections`](crate::Table::reset_worker_connections)).
    pub fn add_slot_connections(&self, rank: u32, index: u32, delta: i64) {
        if let Some(cell) = self.region.conn_cell(rank, index) {
            layout::add_conn_cell(cell, delta);
        }
    }
}

/// A name for errors: the path the fd was opened at when /proc tells it, else the fd number.
fn describe(file: &File) -> PathBuf {
    let fd = file.as_raw_fd();
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap_or_else(|_| PathBuf::from(format!("fd {fd}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use crate::{Proto, Reader, SlotData, SlotState, Table, WorkerState};

    #[test]
    fn attached_counters_show_in_the_reader_snapshot() {
        let dir = TestDir::new("attach");
        let path = dir.path("t.shm");
        let table = Table::create(&path, 4, 2, 1, 0).unwrap();
        let data = SlotData {
            state: SlotState::Active,
            socket: "udp:127.0.0.1:5060".into(),
            proto: Some(Proto::Udp),
            address: "127.0.0.1:5060".into(),
            ..Default::default()
        };
        let index = table.occupy(&data).unwrap();
        let rec = table.worker(WorkerKind::Udp, 1).unwrap();
        rec.set_pid(4242);
        rec.set_state(WorkerState::Ready);
        rec.add_restart();

        // What a worker does with the fd it received.
        let attached = Attached::from_file(table.file().try_clone().unwrap()).unwrap();
        assert_eq!(attached.max_sockets(), 4);
        attached.add_slot_received(index, 3);
        attached.add_slot_received(index, 2);
        attached.add_slot_connections(0, index, 2);
        attached.add_slot_connections(0, index, -1);
        attached.add_slot_received(99, 1); // ignored
        attached.add_slot_connections(0, 99, 1); // ignored: beyond max_sockets
        attached.add_slot_connections(1, index, 1); // ignored: one stream worker only
        let me = attached.worker(WorkerKind::Udp, 1).unwrap();
        assert_eq!(
            (me.pid(), me.state(), me.restarts()),
            (4242, WorkerState::Ready, 1)
        );
        me.add_received(5);
        me.add_replied(4);
        me.add_dropped(1);
        me.add_wakeups(6);
        assert!(attached.worker(WorkerKind::Udp, 2).is_none());
        let stream = attached.worker(WorkerKind::Stream, 0).unwrap();
        stream.add_connections(3);
        stream.add_connections(-1);
        assert_eq!(stream.connections(), 2);
        // The supervisor sees the same gauge through its own mapping.
        assert_eq!(
            table.worker(WorkerKind::Stream, 0).unwrap().connections(),
            2
        );
        assert!(attached.worker(WorkerKind::Stream, 1).is_none());

        assert_eq!(table.slot_received(index), 5);
        let snap = Reader::open(&path).unwrap().snapshot();
        let slot = &snap.slots[0];
        assert_eq!((slot.index, slot.received, slot.connections), (index, 5, 1));
        let w = &snap.workers[1];
        assert_eq!(
            (w.rank, w.kind, w.pid, w.state),
            (1, WorkerKind::Udp, 4242, WorkerState::Ready)
        );
        assert_eq!(
            (w.restarts, w.received, w.replied, w.dropped, w.wakeups),
            (1, 5, 4, 1, 6)
        );
        assert_eq!(w.connections, 0);
        let s = &snap.workers[2];
        assert_eq!((s.kind, s.rank, s.connections), (WorkerKind::Stream, 0, 2));
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["workers"][2]["connections"], 2);
        assert_eq!(json["slots"][0]["connections"], 1);
        // A gauge driven below zero (a bug) reads as 0, not as 2^64 - 1.
        stream.add_connections(-5);
        assert_eq!(stream.connections(), 0);
        stream.reset_connections();
        stream.add_connections(1);
        assert_eq!(stream.connections(), 1);
    }

    #[test]
    fn slot_connections_are_the_sum_over_the_stream_workers_rows() {
        let dir = TestDir::new("attach-matrix");
        let path = dir.path("t.shm");
        let table = Table::create(&path, 20, 1, 3, 0).unwrap();
        let stream = |port: u16| SlotData {
            state: SlotState::Active,
            socket: format!("tcp:127.0.0.1:{port}"),
            proto: Some(Proto::Tcp),
            ..Default::default()
        };
        // Indexes 0..=17: 16 and 17 lie in each row's second cache line.
        let slots: Vec<u32> = (0..18)
            .map(|i| table.occupy(&stream(5000 + i)).unwrap())
            .collect();
        let (a, b) = (slots[3], slots[17]);
        // Three worker processes, each with its own mapping and its own row.
        let workers: Vec<Attached> = (0..3)
            .map(|_| Attached::from_file(table.file().try_clone().unwrap()).unwrap())
            .collect();
        workers[0].add_slot_connections(0, a, 2);
        workers[1].add_slot_connections(1, a, 3);
        workers[2].add_slot_connections(2, a, 1);
        workers[2].add_slot_connections(2, b, 4);
        workers[1].add_slot_connections(1, a, -1);
        assert_eq!(table.slot_connections(a), 5);
        assert_eq!(table.slot_connections(b), 4);
        assert_eq!(table.slot_connections(slots[4]), 0, "the neighbour column");
        assert_eq!(table.slot_connections(99), 0);
        let snap = Reader::open(&path).unwrap().snapshot();
        let conns = |i: u32| {
            snap.slots
                .iter()
                .find(|s| s.index == i)
                .unwrap()
                .connections
        };
        assert_eq!((conns(a), conns(b), conns(slots[4])), (5, 4, 0));

        // Freeing and re-occupying the slot leaves the workers' cells alone: their decrements,
        // still to come, must land on what they counted.
        table.free_slot(a);
        assert_eq!(table.slot_connections(a), 5);
        workers[0].add_slot_connections(0, a, -2);
        workers[1].add_slot_connections(1, a, -2);
        workers[2].add_slot_connections(2, a, -1);
        assert_eq!(table.slot_connections(a), 0);
        workers[0].add_slot_connections(0, a, 2);
        workers[1].add_slot_connections(1, a, 3);

        // Worker 1 dies: the supervisor zeroes its row and its record's gauge, nothing else.
        for (rank, w) in workers.iter().enumerate() {
            w.worker(WorkerKind::Stream, rank as u32)
                .unwrap()
                .add_connections(2);
        }
        workers[1].add_slot_connections(1, b, 6);
        assert_eq!(table.slot_connections(b), 10);
        table.reset_worker_connections(WorkerKind::Stream, 1);
        assert_eq!(table.slot_connections(a), 2);
        assert_eq!(table.slot_connections(b), 4);
        let conns_of = |rank| {
            table
                .worker(WorkerKind::Stream, rank)
                .unwrap()
                .connections()
        };
        assert_eq!((conns_of(0), conns_of(1), conns_of(2)), (2, 0, 2));
        // Its successor counts from 0 in the same row.
        workers[1].add_slot_connections(1, a, 1);
        assert_eq!(table.slot_connections(a), 3);
        let json = serde_json::to_value(Reader::open(&path).unwrap().snapshot()).unwrap();
        let slot_b = json["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["index"] == b)
            .unwrap();
        assert_eq!(slot_b["connections"], 4);
        assert_eq!(json["workers"][2]["connections"], 0);
        assert_eq!(json["workers"][1]["connections"], 2);
        // A row below zero (a worker's bug) cannot make a column read as a huge number.
        workers[0].add_slot_connections(0, b, -9);
        assert_eq!(table.slot_connections(b), 0);
        // Out of range: ignored, no panic.
        table.reset_worker_connections(WorkerKind::Stream, 3);
        table.reset_worker_connections(WorkerKind::Udp, 0);
        table.reset_worker_connections(WorkerKind::Udp, 7);
        assert_eq!(table.slot_connections(a), 3);
    }

    #[test]
    fn a_foreign_fd_is_refused() {
        let dir = TestDir::new("attach-bad");
        let path = dir.path("junk");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let err = Attached::from_file(file).unwrap_err();
        assert!(matches!(err, ShmError::BadLayout { .. }), "{err}");
        assert!(err.to_string().contains("junk"), "{err}");
    }
}
