//! The writer side: the supervisor creates the table, owns it for its whole life, and is the only
//! one that writes slots and the header.
//!
//! Single instance: the supervisor holds `flock(LOCK_EX)` on the file for the table's life. The
//! file appears at its path only once complete: it is built under a temporary name, locked,
//! filled, then hard-linked into place (which fails if someone else got there first). A file at
//! the path that is not locked belongs to a dead instance and is unlinked and replaced, so the old
//! inode stays with whatever dead mappings still use it.
//!
//! Workers get a second open file description of the same file ([`Table::file`]), so the lock is
//! held by the supervisor alone: when it dies, the lock goes with it even while orphaned workers
//! still map the table.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::layout::{self, Geometry, MAGIC, PID_OFFSET};
use crate::region::Region;
use crate::sys::Mapping;
use crate::{ShmError, SlotCounter, SlotData, SlotState, WorkerKind, WorkerRecord};

/// How often `create` starts over when the file changes under it (another instance racing).
const CREATE_ATTEMPTS: u32 = 8;

/// The next free slot after `cursor` (the slot allocated last), wrapping; `cursor` itself is tried
/// last. So a slot just freed is reused as late as possible (the seed's FIFO rotation), which keeps
/// a socket's old slot, and its counters in monitoring, from being taken over at once.
pub(crate) fn next_free(cursor: u32, max: u32, is_free: impl Fn(u32) -> bool) -> Option<u32> {
    let max64 = u64::from(max);
    (1..=max64)
        .map(|k| ((u64::from(cursor) + k) % max64.max(1)) as u32)
        .find(|&i| is_free(i))
}

/// The supervisor's table: the only writer of slots and of the header.
///
/// Holds `flock(LOCK_EX)` on the file for its whole life (single instance); dropping it unmaps and
/// unlocks but leaves the file (what a crash leaves, replaced at the next start); [`Table::remove`]
/// unlinks it on a clean shutdown. Writes are serialized inside, so it may be shared by threads.
pub struct Table {
    path: PathBuf,
    region: Region,
    /// The open file description that holds the flock (and was mapped).
    lock: Flock<File>,
    /// A second description of the same file, without the lock, for the workers.
    share: File,
    /// Serializes writers of slots and the cursor, so the seqlock has one writer at a time.
    writer: Mutex<()>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("geometry", &self.region.geometry())
            .finish_non_exhaustive()
    }
}

/// What `create` found at the path.
enum Existing {
    /// Nothing (or a stale file we just unlinked): create one.
    Absent,
    /// The path changed while we looked: look again.
    Changed,
}

impl Table {
    /// Creates the table at `path` (mode 0600) for `max_sockets` slots, `udp_workers` and
    /// `stream_workers` records and `max_relays` relay records, and holds it until dropped. A file held by a live instance is
    /// refused with [`ShmError::Busy`]; a stale one of a dead instance is replaced; a file that is
    /// not a sipsockd table is refused ([`ShmError::BadLayout`]) rather than deleted.
    pub fn create(
        path: &Path,
        max_sockets: u32,
        udp_workers: u32,
        stream_workers: u32,
        max_relays: u32,
    ) -> Result<Table, ShmError> {
        let geo = Geometry {
            max_sockets,
            processes: udp_workers,
            stream_workers,
            max_relays,
        };
        geo.check_limits()
            .map_err(|(what, value, max)| ShmError::TooLarge {
                path: path.to_path_buf(),
                what,
                value,
                max,
            })?;
        for _ in 0..CREATE_ATTEMPTS {
            match take_over(path)? {
                Existing::Changed => continue,
                Existing::Absent => {}
            }
            if let Some(table) = create_new(path, geo)? {
                return Ok(table);
            }
        }
        Err(ShmError::io(
            path,
            "create",
            std::io::Error::other(
                "the file kept changing while we created it (another sipsockd starting?)",
            ),
        ))
    }

    /// The path the table was created at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of slots.
    pub fn max_sockets(&self) -> u32 {
        self.region.geometry().max_sockets
    }

    fn write_guard(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next free slot after the one allocated last (wrapping), writes `data` there,
    /// zeroes its datagram counter and moves the cursor to it. `None` when every slot is taken.
    /// Its connection column is left to the workers: each uncounts a removed socket's connections
    /// when told, and FIFO rotation makes a slot's reuse come as late as possible.
    pub fn occupy(&self, data: &SlotData) -> Option<u32> {
        debug_assert!(data.state != SlotState::Free, "occupy with a free state");
        let _guard = self.write_guard();
        let header = self.region.header();
        let cursor = header.cursor.load(Relaxed);
        let index = next_free(cursor, self.max_sockets(), |i| {
            self.region
                .slot(i)
                .is_some_and(|s| s.state_code_unsynced() == 0)
        })?;
        let slot = self.region.slot(index)?;
        slot.reset_counters();
        slot.write(&layout::encode(data));
        header.cursor.store(index, Release);
        Some(index)
    }

    /// Rewrites a slot in place (counters kept): a changed advertised, tag, flags, tos or state.
    /// An index beyond `max_sockets` is ignored (logged).
    pub fn write_slot(&self, index: u32, data: &SlotData) {
        let _guard = self.write_guard();
        match self.region.slot(index) {
            Some(slot) => slot.write(&layout::encode(data)),
            None => log::warn!("shm: write to slot {index} beyond max_sockets ignored"),
        }
    }

    /// Frees a slot: state free, texts cleared, datagram counter zeroed (its connection column is
    /// the workers', see `occupy`). The cursor does not move.
    pub fn free_slot(&self, index: u32) {
        let _guard = self.write_guard();
        match self.region.slot(index) {
            Some(slot) => {
                slot.write(&layout::encode(&SlotData::default()));
                slot.reset_counters();
            }
            None => log::warn!("shm: free of slot {index} beyond max_sockets ignored"),
        }
    }

    /// Reads a slot back (a free one reads as state `Free`); `None` beyond `max_sockets`.
    pub fn slot(&self, index: u32) -> Option<SlotData> {
        self.region
            .slot(index)
            .map(|s| layout::decode(&s.read().bytes))
    }

    /// Datagrams received on a slot since it was occupied (0 beyond `max_sockets`).
    pub fn slot_received(&self, index: u32) -> u64 {
        self.slot_counter(index, SlotCounter::Received)
    }

    /// One counter of a slot since it was occupied (0 beyond `max_sockets`).
    pub fn slot_counter(&self, index: u32, which: SlotCounter) -> u64 {
        self.region
            .slot(index)
            .map_or(0, |s| s.counter(which).load(Relaxed))
    }

    /// Every named counter of a slot, in [`SlotCounter::ALL`] order (zeros beyond `max_sockets`).
    pub fn slot_counters(&self, index: u32) -> [u64; SlotCounter::ALL.len()] {
        self.region
            .slot(index)
            .map_or([0; SlotCounter::ALL.len()], |s| s.counter_values())
    }

    /// Takes a free relay record for relay row `id` (counters zeroed); `None` when all are taken.
    /// Records are taken lowest first; a relay keeps its record for its life.
    pub fn occupy_relay(&self, id: i64) -> Option<u32> {
        let _guard = self.write_guard();
        let (index, record) = self
            .region
            .relays()
            .iter()
            .enumerate()
            .find(|(_, r)| !r.in_use())?;
        record.take(id);
        u32::try_from(index).ok()
    }

    /// Frees a relay record (ignored beyond `max_relays`).
    pub fn free_relay(&self, index: u32) {
        let _guard = self.write_guard();
        if let Some(r) = self.region.relay(index) {
            r.free();
        }
    }

    /// A relay record's counters (`None` beyond `max_relays`).
    pub fn relay(&self, index: u32) -> Option<&crate::RelayRecord> {
        self.region.relay(index)
    }

    /// The number of relay records.
    pub fn max_relays(&self) -> u32 {
        self.region.geometry().max_relays
    }

    /// Records a finished reload: its result (200 for "OK", else the MI error code), how long it
    /// took, and how many rows were absent (address not on this host).
    pub fn record_reload(&self, status: u32, took: std::time::Duration, absent: u32) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        layout::record_reload(self.region.header(), status, us, unix_ms(), absent);
    }

    /// Stores the loop's heartbeat (now): readers tell a live, turning loop from a stalled one.
    pub fn heartbeat(&self) {
        self.region.header().heartbeat_ms.store(unix_ms(), Relaxed);
    }

    /// Counts stream connections the supervisor refused.
    pub fn add_connections_refused(&self, n: u64) {
        self.region
            .header()
            .connections_refused
            .fetch_add(n, Relaxed);
    }

    /// Stream connections the supervisor refused so far.
    pub fn connections_refused(&self) -> u64 {
        self.region.header().connections_refused.load(Relaxed)
    }

    /// Open connections of a stream socket: the sum of its column in the connection matrix, a
    /// negative sum read as 0 (0 for a datagram socket or a bad index).
    pub fn slot_connections(&self, index: u32) -> u64 {
        self.region.slot_connections(index)
    }

    /// Forgets the connections of a dead worker: zeroes its record's gauge and, for a stream
    /// worker, its row of the connection matrix (the kernel closed those connections with the
    /// process). Call it only once the process is reaped and before a new one of that rank starts:
    /// the row's one writer is then gone, so the stores race with nobody. Ignored beyond the pool.
    pub fn reset_worker_connections(&self, kind: WorkerKind, rank: u32) {
        if let Some(record) = self.region.worker(kind, rank) {
            record.reset_connections();
        }
        if kind == WorkerKind::Stream {
            for cell in self.region.conn_row(rank).unwrap_or(&[]) {
                cell.store(0, Relaxed);
            }
        }
    }

    /// Records the reload generation just applied.
    pub fn set_generation(&self, generation: u64) {
        self.region.header().generation.store(generation, Release);
    }

    /// The reload generation last recorded.
    pub fn generation(&self) -> u64 {
        self.region.header().generation.load(Acquire)
    }

    /// The record of a worker (`None` when the rank is beyond its pool's size).
    pub fn worker(&self, kind: WorkerKind, rank: u32) -> Option<&WorkerRecord> {
        self.region.worker(kind, rank)
    }

    /// The file to pass to workers (SCM_RIGHTS); it is open read-write, close-on-exec, and does
    /// not carry the single-instance lock.
    pub fn file(&self) -> &File {
        &self.share
    }

    /// Unlinks the file (clean shutdown), unless the path no longer names our file.
    pub fn remove(self) -> Result<(), ShmError> {
        if same_file(&self.path, &self.lock) {
            match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(ShmError::io(&self.path, "unlink", e)),
            }
        }
        Ok(())
    }
}

/// Looks at the file already at `path`: refuses it if it is held or foreign, unlinks it if stale.
fn take_over(path: &Path) -> Result<Existing, ShmError> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        // Never follow a planted symlink, never block on a FIFO planted at the path.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => return Err(ShmError::io(path, "open existing", e)),
    };
    let meta = file.metadata().map_err(|e| ShmError::io(path, "stat", e))?;
    if !meta.is_file() {
        return Err(ShmError::bad(
            path,
            "exists and is not a regular file; refusing to replace it",
        ));
    }
    let mut magic = [0u8; 8];
    if file.read_exact_at(&mut magic, 0).is_err() || u64::from_le_bytes(magic) != MAGIC {
        return Err(ShmError::bad(
            path,
            "exists and is not a sipsockd shm file; refusing to replace it (remove it by hand)",
        ));
    }
    let old_pid = read_pid(&file);
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => {
            if !same_file(path, &locked) {
                return Ok(Existing::Changed);
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(ShmError::io(path, "unlink stale file", e)),
            }
            log::info!(
                "shm: replaced the stale file {} of pid {old_pid}",
                path.display()
            );
            Ok(Existing::Absent)
        }
        Err((file, Errno::EWOULDBLOCK)) => {
            if same_file(path, &file) {
                Err(ShmError::Busy {
                    path: path.to_path_buf(),
                    pid: old_pid,
                })
            } else {
                // Another instance just replaced a stale file: look at the new one.
                Ok(Existing::Changed)
            }
        }
        Err((_, e)) => Err(ShmError::io(path, "flock", e.into())),
    }
}

/// Builds a complete, locked table under a temporary name and links it at `path`.
/// `Ok(None)`: someone else linked a file there first.
fn create_new(path: &Path, geo: Geometry) -> Result<Option<Table>, ShmError> {
    let tmp = TempName::new(path)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp.0)
        .map_err(|e| ShmError::io(&tmp.0, "create", e))?;
    // The umask may have taken bits off 0600; the mode is part of the contract.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ShmError::io(&tmp.0, "chmod", e))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| ShmError::io(&tmp.0, "flock", e.into()))?;
    let len = geo.total_len();
    lock.set_len(len as u64)
        .map_err(|e| ShmError::io(&tmp.0, "set length", e))?;
    let map = Mapping::map_rw(&lock, len).map_err(|e| ShmError::io(&tmp.0, "mmap", e))?;
    let region = Region::new(map, geo)
        .ok_or_else(|| ShmError::bad(&tmp.0, "mapping shorter than the layout"))?;
    for rank in 0..geo.processes {
        if let Some(w) = region.worker(WorkerKind::Udp, rank) {
            layout::init_worker(w, WorkerKind::Udp, rank);
        }
    }
    for rank in 0..geo.stream_workers {
        if let Some(w) = region.worker(WorkerKind::Stream, rank) {
            layout::init_worker(w, WorkerKind::Stream, rank);
        }
    }
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let pid = std::process::id();
    let ticks = crate::proc::start_ticks(pid).unwrap_or(0);
    layout::init_header(region.header(), geo, pid, started, ticks);

    let share = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp.0)
        .map_err(|e| ShmError::io(&tmp.0, "reopen", e))?;
    if !same_inode(&share, &lock) {
        return Err(ShmError::io(
            &tmp.0,
            "reopen",
            std::io::Error::other("the temporary file was replaced under us"),
        ));
    }
    match std::fs::hard_link(&tmp.0, path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(None),
        Err(e) => return Err(ShmError::io(path, "link into place", e)),
    }
    drop(tmp);
    Ok(Some(Table {
        path: path.to_path_buf(),
        region,
        lock,
        share,
        writer: Mutex::new(()),
    }))
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The pid in a header, read with a plain read (the file may be locked by someone else).
fn read_pid(file: &File) -> u32 {
    let mut pid = [0u8; 4];
    match file.read_exact_at(&mut pid, PID_OFFSET) {
        Ok(()) => u32::from_ne_bytes(pid),
        Err(_) => 0,
    }
}

/// Whether `path` (not followed) names the same inode as `file`.
fn same_file(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn same_inode(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `.NAME.PID.tmp` beside the table; unlinked when dropped (after the link, or on failure).
struct TempName(PathBuf);

impl TempName {
    fn new(path: &Path) -> Result<TempName, ShmError> {
        let name = path
            .file_name()
            .ok_or_else(|| ShmError::io(path, "create", ErrorKind::InvalidInput.into()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        // A leftover of a crashed process with our pid: nobody else can be using it.
        let _ = std::fs::remove_file(&tmp);
        Ok(TempName(tmp))
    }
}

impl Drop for TempName {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != ErrorKind::NotFound {
                log::warn!("shm: could not remove {}: {e}", self.0.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;
    use crate::{Proto, Reader, WorkerState};

    fn occupied(slots: &[bool]) -> impl Fn(u32) -> bool + '_ {
        |i| !slots[i as usize]
    }

    #[test]
    fn next_free_starts_after_the_cursor_and_wraps() {
        let used = [false; 4];
        // Fresh table: cursor at max-1, so the first slot is 0.
        assert_eq!(next_free(3, 4, occupied(&used)), Some(0));
        assert_eq!(next_free(0, 4, occupied(&used)), Some(1));
        assert_eq!(next_free(2, 4, occupied(&used)), Some(3));
        // Wrapping past the end, skipping taken slots.
        let used = [false, true, true, true];
        assert_eq!(next_free(2, 4, occupied(&used)), Some(0));
        // The cursor's own slot comes last.
        let used = [true, true, false, true];
        assert_eq!(next_free(2, 4, occupied(&used)), Some(2));
        assert_eq!(next_free(0, 4, occupied(&[true; 4])), None);
        assert_eq!(next_free(0, 0, |_| true), None);
        // A damaged cursor beyond max still yields an in-range slot.
        assert_eq!(
            next_free(u32::MAX, 3, |_| true),
            Some(((u64::from(u32::MAX) + 1) % 3) as u32)
        );
    }

    #[test]
    fn rotation_scenario_add_a_b_remove_a_add_c() {
        let mut used = [false; 4];
        let mut cursor = 3;
        let mut add = |used: &mut [bool; 4]| {
            let i = next_free(cursor, 4, |i| !used[i as usize]).unwrap();
            used[i as usize] = true;
            cursor = i;
            i
        };
        let a = add(&mut used);
        let b = add(&mut used);
        assert_eq!((a, b), (0, 1));
        used[a as usize] = false;
        let c = add(&mut used);
        assert_eq!(c, 2, "C takes the slot after B, not A's");
        let d = add(&mut used);
        assert_eq!(d, 3);
        let e = add(&mut used);
        assert_eq!(
            e, 0,
            "wraps to A's old slot only when nothing later is free"
        );
        assert_eq!(next_free(cursor, 4, |i| !used[i as usize]), None);
    }

    proptest::proptest! {
        #[test]
        fn next_free_is_the_first_free_after_cursor(
            used in proptest::collection::vec(proptest::bool::ANY, 1..40),
            cursor in 0u32..40,
        ) {
            let max = used.len() as u32;
            let cursor = cursor % max;
            match next_free(cursor, max, |i| !used[i as usize]) {
                None => proptest::prop_assert!(used.iter().all(|&u| u)),
                Some(i) => {
                    proptest::prop_assert!(!used[i as usize]);
                    // Every slot strictly between the cursor and i (cyclically) is taken.
                    let mut j = (cursor + 1) % max;
                    while j != i {
                        proptest::prop_assert!(used[j as usize]);
                        j = (j + 1) % max;
                    }
                }
            }
        }
    }

    fn row(socket: &str) -> SlotData {
        SlotData {
            state: SlotState::Active,
            socket: socket.into(),
            proto: Some(Proto::Udp),
            address: socket.trim_start_matches("udp:").into(),
            ..Default::default()
        }
    }

    #[test]
    fn table_rotation_and_overflow() {
        let dir = TestDir::new("rotation");
        let path = dir.path("t.shm");
        let t = Table::create(&path, 3, 1, 0, 0).unwrap();
        let a = t.occupy(&row("udp:127.0.0.1:5001")).unwrap();
        let b = t.occupy(&row("udp:127.0.0.1:5002")).unwrap();
        assert_eq!((a, b), (0, 1));
        t.free_slot(a);
        let c = t.occupy(&row("udp:127.0.0.1:5003")).unwrap();
        assert_eq!(c, 2);
        let d = t.occupy(&row("udp:127.0.0.1:5004")).unwrap();
        assert_eq!(d, 0, "wraps");
        assert_eq!(t.occupy(&row("udp:127.0.0.1:5005")), None, "full");
        assert_eq!(t.slot(c).unwrap().socket, "udp:127.0.0.1:5003");
        assert_eq!(t.slot(3), None);
        let snap = Reader::open(&path).unwrap().snapshot();
        assert_eq!(snap.cursor, 0);
        assert_eq!(
            snap.slots.iter().map(|s| s.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        t.remove().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn free_resets_and_update_keeps_counters() {
        let dir = TestDir::new("counters");
        let path = dir.path("t.shm");
        let t = Table::create(&path, 2, 1, 0, 0).unwrap();
        let i = t.occupy(&row("udp:127.0.0.1:5001")).unwrap();
        t.region
            .slot(i)
            .unwrap()
            .counter(SlotCounter::Received)
            .fetch_add(5, Relaxed);
        let mut d = row("udp:127.0.0.1:5001");
        d.tag = "new".into();
        t.write_slot(i, &d);
        assert_eq!(t.slot_received(i), 5, "in-place update keeps the counter");
        assert_eq!(t.slot(i).unwrap(), d);
        t.free_slot(i);
        assert_eq!(t.slot_received(i), 0);
        assert_eq!(t.slot(i).unwrap(), SlotData::default());
        // Out-of-range indices are ignored, not a panic.
        t.write_slot(99, &d);
        t.free_slot(99);
        assert_eq!(t.slot_received(99), 0);
    }

    #[test]
    fn header_and_workers_after_create() {
        let dir = TestDir::new("header");
        let path = dir.path("t.shm");
        let t = Table::create(&path, 100, 3, 1, 0).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Layout 3: header, slots, records, then one 112-cell matrix row for the stream worker.
        assert_eq!(meta.len() as usize, 256 + 960 * 100 + 128 * 4 + 4 * 112);
        assert_eq!(t.max_sockets(), 100);
        t.set_generation(7);
        assert_eq!(t.generation(), 7);
        let w = t.worker(WorkerKind::Udp, 2).unwrap();
        assert_eq!(
            (w.kind(), w.rank(), w.state()),
            (Some(WorkerKind::Udp), 2, WorkerState::Stopped)
        );
        assert!(t.worker(WorkerKind::Udp, 3).is_none());
        let s = t.worker(WorkerKind::Stream, 0).unwrap();
        assert_eq!((s.kind(), s.rank()), (Some(WorkerKind::Stream), 0));
        assert!(t.worker(WorkerKind::Stream, 1).is_none());
        let snap = Reader::open(&path).unwrap().snapshot();
        assert_eq!(snap.pid, std::process::id());
        assert_eq!(
            (snap.max_sockets, snap.processes, snap.stream_workers),
            (100, 3, 1)
        );
        assert_eq!((snap.generation, snap.cursor), (7, 99));
        assert!(snap.start_time > 0);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("t.shm")]);
    }

    #[test]
    fn a_second_instance_is_refused_with_our_pid() {
        let dir = TestDir::new("busy");
        let path = dir.path("t.shm");
        let first = Table::create(&path, 4, 1, 0, 0).unwrap();
        match Table::create(&path, 4, 1, 0, 0) {
            Err(ShmError::Busy { pid, path: p }) => {
                assert_eq!(pid, std::process::id());
                assert_eq!(p, path);
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        let msg = Table::create(&path, 4, 1, 0, 0).unwrap_err().to_string();
        assert_eq!(
            msg,
            format!(
                "{} is held by a running sipsockd (pid {})",
                path.display(),
                std::process::id()
            )
        );
        // The refused attempt left the live table alone.
        assert!(Reader::open(&path).is_ok());
        first.remove().unwrap();
    }

    #[test]
    fn the_workers_copy_does_not_hold_the_lock() {
        let dir = TestDir::new("share");
        let path = dir.path("t.shm");
        let first = Table::create(&path, 4, 1, 0, 0).unwrap();
        let worker_copy = first.file().try_clone().unwrap();
        drop(first);
        // The supervisor is gone; its worker still has the file: a new instance may start.
        let second = Table::create(&path, 4, 1, 0, 0).unwrap();
        drop(worker_copy);
        second.remove().unwrap();
    }

    #[test]
    fn a_stale_file_is_replaced() {
        let dir = TestDir::new("stale");
        let path = dir.path("t.shm");
        let first = Table::create(&path, 4, 1, 0, 0).unwrap();
        let i = first.occupy(&row("udp:127.0.0.1:5001")).unwrap();
        let old_ino = std::fs::metadata(&path).unwrap().ino();
        // A reader of the old table keeps its own (old) view.
        let old_reader = Reader::open(&path).unwrap();
        drop(first); // no remove: what a crash leaves
        assert!(path.exists());
        let second = Table::create(&path, 8, 2, 0, 0).unwrap();
        assert_ne!(
            std::fs::metadata(&path).unwrap().ino(),
            old_ino,
            "a new file, not reused"
        );
        assert_eq!(second.slot(i).unwrap().state, SlotState::Free);
        let snap = Reader::open(&path).unwrap().snapshot();
        assert_eq!((snap.max_sockets, snap.processes), (8, 2));
        assert!(snap.slots.is_empty());
        assert_eq!(old_reader.snapshot().slots.len(), 1);
        second.remove().unwrap();
    }

    #[test]
    fn a_foreign_file_is_not_replaced() {
        let dir = TestDir::new("foreign");
        let path = dir.path("t.shm");
        std::fs::write(&path, b"precious data, not ours").unwrap();
        let err = Table::create(&path, 4, 1, 0, 0).unwrap_err();
        assert!(matches!(err, ShmError::BadLayout { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious data, not ours");
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path("elsewhere"), &path).unwrap();
        assert!(
            Table::create(&path, 4, 1, 0, 0).is_err(),
            "a symlink is not followed"
        );
        assert!(!dir.path("elsewhere").exists());
    }

    #[test]
    fn limits_and_missing_directory() {
        let dir = TestDir::new("limits");
        let err = Table::create(&dir.path("t.shm"), 1 << 20, 1, 0, 0).unwrap_err();
        assert!(
            matches!(
                err,
                ShmError::TooLarge {
                    what: "max_sockets",
                    ..
                }
            ),
            "{err}"
        );
        let err = Table::create(&dir.path("no/such/dir/t.shm"), 4, 1, 0, 0).unwrap_err();
        assert!(matches!(err, ShmError::Io { .. }), "{err}");
        // Zero slots is a usable (if useless) table.
        let t = Table::create(&dir.path("zero.shm"), 0, 0, 0, 0).unwrap();
        assert_eq!(t.occupy(&row("udp:127.0.0.1:1")), None);
    }
}
