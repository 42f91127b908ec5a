//! The binary layout of the shm file, and the code that reads and writes one slot's contents.
//!
//! This module owns the `#[repr(C)]` structures and the rules every attach checks; it never opens
//! or maps a file (that is `sys` and the three sides: `table`, `attach`, `reader`).
//!
//! ```text
//! offset                      size            what
//! 0                           256             Header
//! 256                         960 * S         S = max_sockets slots
//! 256 + 960*S                 128 * (U + T)   worker records: U = processes (udp), then T = stream workers
//! C = 256 + 960*S + 128*(U+T) 4 * R * T       connection matrix: one row per stream worker (rank order),
//!                                             R = S rounded up to a multiple of 16 cells (64 bytes)
//! total = C + 4*R*T                           the file length must be exactly this
//! ```
//!
//! Layout 3 (this one) gives each slot a block of counters ([`SlotCounter`]: received, local
//! replies, relayed requests and responses, drops, error replies by code), each worker record
//! relay, busy-time and refusal counters, and the header the supervisor's identity (its start in
//! clock ticks, so a reader can tell a live supervisor from a recycled pid), a heartbeat and the
//! reload statistics (count, failures, last result, a duration histogram).
//!
//! The connection matrix (layout 2): cell `C + 4 * (R * rank + index)` is an `AtomicU32` holding
//! the connections stream worker `rank` has open on slot `index` (an i32 in two's complement;
//! only that worker writes its row, the supervisor zeroes it once the worker is dead). A slot's
//! open connections are the sum of its column, so a worker killed with connections open leaves
//! nothing behind once its row is zeroed: a shared per-slot gauge could not be repaired, since
//! nobody knows the dead worker's share of it. Rows are padded to 64 bytes so two workers never
//! write the same cache line.
//!
//! Every field in shared memory is an atomic, so the supervisor, the workers and readers may touch
//! the same bytes at once without a data race; integers are in host byte order (the file never
//! leaves the host). The first 40 header bytes (magic, layout, sizes, counts, pid) keep their
//! place in every future layout, so any version can say whose file it is.

use std::mem::{align_of, offset_of, size_of};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::*};

use crate::{Proto, SlotData, SlotState, WorkerKind, WorkerState};

/// The first 8 bytes of the file: "SIPSKSHM" as written by a little-endian host (a file of the
/// other byte order fails this check instead of being misread).
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"SIPSKSHM");
/// Bumped on any change of the structures below. 2: per-worker connection matrix after the
/// worker records. 3: per-slot counter block, larger worker records, reload statistics and the
/// supervisor's identity in a 256-byte header.
pub const LAYOUT_VERSION: u32 = 3;

/// Sanity limits, so a foreign header cannot make us compute or map absurd sizes.
pub(crate) const MAX_SLOTS: u32 = 65_536;
/// Per pool.
pub(crate) const MAX_WORKERS: u32 = 4_096;

/// Byte capacities of the text fields (the socket one matches the schema's CHAR(128)).
pub(crate) const SOCKET_CAP: usize = 128;
pub(crate) const ADDRESS_CAP: usize = 64;
pub(crate) const ADVERTISED_CAP: usize = 160;
pub(crate) const TAG_CAP: usize = 128;
pub(crate) const FLAGS_CAP: usize = 32;
pub(crate) const ERROR_CAP: usize = 256;

/// The six text fields in storage order, with their capacities.
const TEXT_CAPS: [usize; 6] = [
    SOCKET_CAP,
    ADDRESS_CAP,
    ADVERTISED_CAP,
    TAG_CAP,
    FLAGS_CAP,
    ERROR_CAP,
];
/// Bytes before the text: state, proto, tos, one spare byte, six u16 lengths.
const META_LEN: usize = 16;
/// The seqlock-protected contents of a slot, in bytes.
pub(crate) const CONTENT_LEN: usize =
    META_LEN + SOCKET_CAP + ADDRESS_CAP + ADVERTISED_CAP + TAG_CAP + FLAGS_CAP + ERROR_CAP;
/// The same, in 64-bit words.
pub(crate) const CONTENT_WORDS: usize = CONTENT_LEN / 8;

/// The file header. Written once at creation (before the file becomes visible at its path),
/// except `generation` and `cursor`, which only the supervisor stores.
#[repr(C)]
pub(crate) struct Header {
    pub magic: AtomicU64,
    pub layout: AtomicU32,
    pub header_size: AtomicU32,
    pub slot_size: AtomicU32,
    pub worker_size: AtomicU32,
    pub max_sockets: AtomicU32,
    /// The number of UDP workers (`[sockets_mgm] processes`).
    pub processes: AtomicU32,
    pub stream_workers: AtomicU32,
    /// The supervisor's pid.
    pub pid: AtomicU32,
    /// Unix time, seconds, at creation.
    pub start_time: AtomicU64,
    /// The reload generation last applied.
    pub generation: AtomicU64,
    /// The slot allocated last (`max_sockets - 1` before the first allocation, so it is slot 0).
    pub cursor: AtomicU32,
    /// The number of relay records (`[relay] max_relays`).
    pub max_relays: AtomicU32,
    /// The supervisor's start in clock ticks since boot (field 22 of /proc/PID/stat): with the
    /// pid, it tells the supervisor apart from a later process that got the same pid.
    pub start_ticks: AtomicU64,
    /// Unix time in milliseconds of the supervisor loop's last turn (it stores it at least once
    /// a second): a reader sees a stalled loop.
    pub heartbeat_ms: AtomicU64,
    /// Reloads done (initial load, MI, SIGHUP, automatic), whatever their result.
    pub reloads: AtomicU64,
    /// Reloads whose result was not "OK".
    pub reload_failures: AtomicU64,
    /// Unix time in milliseconds at which the last reload ended (0: none yet).
    pub last_reload_ms: AtomicU64,
    /// Duration of the last reload, microseconds.
    pub last_reload_us: AtomicU64,
    /// Result of the last reload: 200 OK, else the MI error code (400, 500); 0 before the first.
    pub last_reload_status: AtomicU32,
    /// Rows of the last reload whose address is not on this host.
    pub last_reload_absent: AtomicU32,
    /// Sum of all reload durations, microseconds (the histogram's sum).
    pub reload_us_total: AtomicU64,
    /// Reload durations by bucket: [`RELOAD_BUCKETS_US`] upper bounds, then +Inf; not cumulative.
    pub reload_buckets: [AtomicU64; RELOAD_BUCKETS],
    /// New stream connections the supervisor refused (max_connections, no worker could take it).
    pub connections_refused: AtomicU64,
    _reserved: [AtomicU64; 3],
}

/// Upper bounds, in microseconds, of the reload duration histogram (a last bucket is +Inf).
pub const RELOAD_BUCKETS_US: [u64; 11] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000,
];
/// Buckets of the reload histogram: one per bound, and +Inf.
pub const RELOAD_BUCKETS: usize = RELOAD_BUCKETS_US.len() + 1;

/// The per-slot counters, in their order in the slot's counter block. Workers add to them; the
/// supervisor zeroes them when the slot changes owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum SlotCounter {
    /// Messages received on the socket (datagrams, or SIP messages on its connections).
    Received = 0,
    /// Replies sipsockd answered itself (200 to OPTIONS, the configured reply).
    Replied = 1,
    /// Requests received on the socket and forwarded.
    RelayedRequests = 2,
    /// Responses received on the socket and forwarded.
    RelayedResponses = 3,
    /// Messages received on the socket that went nowhere (malformed, ACK, keep-alives, a response
    /// with no valid Via of ours, a send that failed).
    Dropped = 4,
    /// 403 Forbidden sent (forged Route, initial request to a non-upstream).
    Sent403 = 5,
    /// 482 Loop Detected sent.
    Sent482 = 6,
    /// 483 Too Many Hops sent.
    Sent483 = 7,
    /// 430 Flow Failed sent.
    Sent430 = 8,
    /// 503 sent because no outgoing socket fits the destination.
    Sent503 = 9,
}

impl SlotCounter {
    /// Every counter, in block order.
    pub const ALL: [SlotCounter; 10] = [
        SlotCounter::Received,
        SlotCounter::Replied,
        SlotCounter::RelayedRequests,
        SlotCounter::RelayedResponses,
        SlotCounter::Dropped,
        SlotCounter::Sent403,
        SlotCounter::Sent482,
        SlotCounter::Sent483,
        SlotCounter::Sent430,
        SlotCounter::Sent503,
    ];

    /// The name in `shm-dump --json`, `sockets_status` and statistics.
    pub fn name(self) -> &'static str {
        match self {
            SlotCounter::Received => "received",
            SlotCounter::Replied => "replied",
            SlotCounter::RelayedRequests => "relayed_requests",
            SlotCounter::RelayedResponses => "relayed_responses",
            SlotCounter::Dropped => "dropped",
            SlotCounter::Sent403 => "sent_403",
            SlotCounter::Sent482 => "sent_482",
            SlotCounter::Sent483 => "sent_483",
            SlotCounter::Sent430 => "sent_430",
            SlotCounter::Sent503 => "sent_503",
        }
    }
}

/// Words in a slot's counter block (the ones [`SlotCounter`] does not name are reserved).
pub(crate) const SLOT_COUNTERS: usize = 15;

/// One socket slot.
#[repr(C)]
pub(crate) struct Slot {
    /// Seqlock sequence: odd while the supervisor writes `words`.
    pub seq: AtomicU64,
    /// The counters, indexed by [`SlotCounter`] (workers add; not under the seqlock).
    pub counters: [AtomicU64; SLOT_COUNTERS],
    /// The contents (see `encode`), read and written word by word under `seq`.
    pub words: [AtomicU64; CONTENT_WORDS],
    /// Pads the slot to 15 cache lines.
    _pad: [AtomicU64; 6],
}

/// One worker's record; every field is an atomic so the supervisor and the worker may both write
/// without a lock.
#[repr(C)]
pub struct WorkerRecord {
    pub(crate) kind: AtomicU32,
    pub(crate) rank: AtomicU32,
    pub(crate) pid: AtomicU32,
    pub(crate) state: AtomicU32,
    pub(crate) restarts: AtomicU32,
    _spare: AtomicU32,
    pub(crate) received: AtomicU64,
    pub(crate) replied: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) wakeups: AtomicU64,
    /// Open connections of a stream worker (a gauge it moves; the supervisor reads it to hand a
    /// new connection to the least loaded worker, and zeroes it when the worker dies).
    pub(crate) connections: AtomicU64,
    /// Requests this worker forwarded.
    pub(crate) relayed_requests: AtomicU64,
    /// Responses this worker forwarded.
    pub(crate) relayed_responses: AtomicU64,
    /// Nanoseconds spent handling traffic (from a wakeup to going back to wait).
    pub(crate) busy_ns: AtomicU64,
    /// Connections this stream worker refused (its open-file limit, its share of
    /// max_connections) or messages it could not take.
    pub(crate) refused: AtomicU64,
    /// Messages that reached this worker through its inbox (responses for its connections,
    /// requests to send over its outbound connections).
    pub(crate) inbox_received: AtomicU64,
    /// Messages other workers could not put in this worker's inbox (full) or it could not
    /// deliver (connection gone).
    pub(crate) inbox_dropped: AtomicU64,
    _reserved: [AtomicU64; 2],
}

/// One relay row's counters (the relays table): allocated by the supervisor when a relay row
/// appears, freed when it goes; workers add to its counters.
#[repr(C)]
pub struct RelayRecord {
    /// The row id (an i64 stored as its u64 image); meaningful while `state` is 1.
    pub(crate) id: AtomicU64,
    /// 0: free, 1: in use.
    pub(crate) state: AtomicU32,
    _spare: AtomicU32,
    /// Requests forwarded to this relay's destination.
    pub(crate) requests: AtomicU64,
    /// Responses from this relay's destination forwarded back.
    pub(crate) responses: AtomicU64,
    /// Sends toward the destination that failed (refused by the kernel, no connection).
    pub(crate) failures: AtomicU64,
    _reserved: [AtomicU64; 3],
}

pub(crate) const HEADER_SIZE: usize = 256;
pub(crate) const RELAY_SIZE: usize = 64;
pub(crate) const SLOT_SIZE: usize = 960;
pub(crate) const WORKER_SIZE: usize = 128;
/// One cell of the connection matrix (an `AtomicU32`).
pub(crate) const CONN_CELL_SIZE: usize = 4;
/// A matrix row is padded to a multiple of this many cells (64 bytes: one cache line).
pub(crate) const CONN_ROW_ALIGN: usize = 16;

// The layout is a contract with other processes (and other builds): pin it.
const _: () = {
    assert!(size_of::<Header>() == HEADER_SIZE);
    assert!(size_of::<Slot>() == SLOT_SIZE);
    assert!(size_of::<WorkerRecord>() == WORKER_SIZE);
    assert!(size_of::<RelayRecord>() == RELAY_SIZE);
    assert!(offset_of!(Header, max_relays) == 60);
    assert!(CONTENT_LEN.is_multiple_of(8) && CONTENT_LEN == 784);
    assert!(
        align_of::<Header>() == 8 && align_of::<Slot>() == 8 && align_of::<WorkerRecord>() == 8
    );
    assert!(
        HEADER_SIZE.is_multiple_of(64)
            && SLOT_SIZE.is_multiple_of(64)
            && WORKER_SIZE.is_multiple_of(64)
    );
    // The matrix starts on a cache line (everything before it is whole lines) and rows are whole
    // lines too.
    assert!(size_of::<AtomicU32>() == CONN_CELL_SIZE && CONN_CELL_SIZE * CONN_ROW_ALIGN == 64);
    // The stable prefix every layout version keeps.
    assert!(offset_of!(Header, magic) == 0);
    assert!(offset_of!(Header, layout) == 8);
    assert!(offset_of!(Header, header_size) == 12);
    assert!(offset_of!(Header, slot_size) == 16);
    assert!(offset_of!(Header, worker_size) == 20);
    assert!(offset_of!(Header, max_sockets) == 24);
    assert!(offset_of!(Header, processes) == 28);
    assert!(offset_of!(Header, stream_workers) == 32);
    assert!(offset_of!(Header, pid) == 36);
    assert!(offset_of!(Header, start_time) == 40);
    assert!(offset_of!(Header, generation) == 48);
    assert!(offset_of!(Header, cursor) == 56);
    assert!(offset_of!(Header, start_ticks) == 64);
    assert!(offset_of!(Header, reload_buckets) == 128);
    assert!(offset_of!(Slot, seq) == 0);
    assert!(offset_of!(Slot, counters) == 8);
    assert!(offset_of!(Slot, words) == 128);
    assert!(SlotCounter::ALL.len() <= SLOT_COUNTERS);
    assert!(offset_of!(WorkerRecord, kind) == 0);
    assert!(offset_of!(WorkerRecord, rank) == 4);
    assert!(offset_of!(WorkerRecord, pid) == 8);
    assert!(offset_of!(WorkerRecord, state) == 12);
    assert!(offset_of!(WorkerRecord, restarts) == 16);
    assert!(offset_of!(WorkerRecord, received) == 24);
    assert!(offset_of!(WorkerRecord, replied) == 32);
    assert!(offset_of!(WorkerRecord, dropped) == 40);
    assert!(offset_of!(WorkerRecord, wakeups) == 48);
    assert!(offset_of!(WorkerRecord, connections) == 56);
    assert!(offset_of!(WorkerRecord, relayed_requests) == 64);
};

/// Where the header's pid sits, for reading it from a file we could not lock.
pub(crate) const PID_OFFSET: u64 = 36;

/// The counts a file was created with, from which every offset follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub max_sockets: u32,
    pub processes: u32,
    pub stream_workers: u32,
    pub max_relays: u32,
}

impl Geometry {
    pub fn slots_offset(&self) -> usize {
        HEADER_SIZE
    }

    pub fn workers_offset(&self) -> usize {
        HEADER_SIZE + SLOT_SIZE * self.max_sockets as usize
    }

    pub fn worker_count(&self) -> usize {
        self.processes as usize + self.stream_workers as usize
    }

    /// Where the connection matrix starts (right after the worker records).
    pub fn conns_offset(&self) -> usize {
        self.workers_offset() + WORKER_SIZE * self.worker_count()
    }

    /// Cells per matrix row: `max_sockets` rounded up to whole cache lines.
    pub fn conn_row_cells(&self) -> usize {
        (self.max_sockets as usize).div_ceil(CONN_ROW_ALIGN) * CONN_ROW_ALIGN
    }

    /// Cells of the whole matrix (one row per stream worker).
    pub fn conn_cells(&self) -> usize {
        self.conn_row_cells() * self.stream_workers as usize
    }

    /// Where the relay records start (right after the connection matrix, whose rows are whole
    /// cache lines).
    pub fn relays_offset(&self) -> usize {
        self.conns_offset() + CONN_CELL_SIZE * self.conn_cells()
    }

    /// The exact file length; the limits keep it below 2 GiB, so no overflow on a 32-bit host.
    pub fn total_len(&self) -> usize {
        self.relays_offset() + RELAY_SIZE * self.max_relays as usize
    }

    /// Checks the counts against the limits; `Err` names the one that is too large.
    pub fn check_limits(&self) -> Result<(), (&'static str, u32, u32)> {
        if self.max_sockets > MAX_SLOTS {
            return Err(("max_sockets", self.max_sockets, MAX_SLOTS));
        }
        if self.processes > MAX_WORKERS {
            return Err(("processes", self.processes, MAX_WORKERS));
        }
        if self.stream_workers > MAX_WORKERS {
            return Err(("stream_workers", self.stream_workers, MAX_WORKERS));
        }
        if self.max_relays > MAX_SLOTS {
            return Err(("max_relays", self.max_relays, MAX_SLOTS));
        }
        Ok(())
    }

    /// The position of a worker's record among all records (udp first, then stream).
    pub fn worker_index(&self, kind: WorkerKind, rank: u32) -> Option<usize> {
        match kind {
            WorkerKind::Udp if rank < self.processes => Some(rank as usize),
            WorkerKind::Stream if rank < self.stream_workers => {
                Some(self.processes as usize + rank as usize)
            }
            _ => None,
        }
    }
}

/// Checks a mapped header against this build and the file length, and returns its geometry.
/// `Err` is the text of a `BadLayout`, naming what does not match.
pub(crate) fn validate(header: &Header, file_len: usize) -> Result<Geometry, String> {
    let magic = header.magic.load(Relaxed);
    if magic != MAGIC {
        return Err(format!(
            "magic is {:?}, expected \"SIPSKSHM\" (not a sipsockd shm file)",
            String::from_utf8_lossy(&magic.to_le_bytes())
        ));
    }
    let layout = header.layout.load(Relaxed);
    if layout != LAYOUT_VERSION {
        return Err(format!(
            "layout version {layout}, this build reads {LAYOUT_VERSION}"
        ));
    }
    for (what, found, expected) in [
        ("header size", header.header_size.load(Relaxed), HEADER_SIZE),
        ("slot size", header.slot_size.load(Relaxed), SLOT_SIZE),
        (
            "worker record size",
            header.worker_size.load(Relaxed),
            WORKER_SIZE,
        ),
    ] {
        if found as usize != expected {
            return Err(format!("{what} {found}, expected {expected}"));
        }
    }
    let geo = Geometry {
        max_sockets: header.max_sockets.load(Relaxed),
        processes: header.processes.load(Relaxed),
        stream_workers: header.stream_workers.load(Relaxed),
        max_relays: header.max_relays.load(Relaxed),
    };
    geo.check_limits()
        .map_err(|(what, value, max)| format!("{what} {value} is above the limit {max}"))?;
    if geo.total_len() != file_len {
        return Err(format!(
            "file is {file_len} bytes, but max_sockets {}, {} workers, the connection matrix of \
             {} stream workers and {} relay records need {}",
            geo.max_sockets,
            geo.worker_count(),
            geo.stream_workers,
            geo.max_relays,
            geo.total_len()
        ));
    }
    Ok(geo)
}

/// Fills a header at creation (the file is not yet visible to anyone else).
pub(crate) fn init_header(
    header: &Header,
    geo: Geometry,
    pid: u32,
    start_time: u64,
    start_ticks: u64,
) {
    header.layout.store(LAYOUT_VERSION, Relaxed);
    header.header_size.store(HEADER_SIZE as u32, Relaxed);
    header.slot_size.store(SLOT_SIZE as u32, Relaxed);
    header.worker_size.store(WORKER_SIZE as u32, Relaxed);
    header.max_sockets.store(geo.max_sockets, Relaxed);
    header.processes.store(geo.processes, Relaxed);
    header.stream_workers.store(geo.stream_workers, Relaxed);
    header.max_relays.store(geo.max_relays, Relaxed);
    header.pid.store(pid, Relaxed);
    header.start_time.store(start_time, Relaxed);
    header.start_ticks.store(start_ticks, Relaxed);
    header.generation.store(0, Relaxed);
    header
        .cursor
        .store(geo.max_sockets.saturating_sub(1), Relaxed);
    // The magic last: a header with a magic is a complete one.
    header.magic.store(MAGIC, Release);
}

/// Fills a worker record's identity at creation.
pub(crate) fn init_worker(record: &WorkerRecord, kind: WorkerKind, rank: u32) {
    record.kind.store(kind as u32, Relaxed);
    record.rank.store(rank, Relaxed);
    record.set_state(WorkerState::Stopped);
}

// ---- slot contents ------------------------------------------------------------------------------

pub(crate) fn slot_state_code(state: SlotState) -> u8 {
    match state {
        SlotState::Free => 0,
        SlotState::Active => 1,
        SlotState::Error => 2,
        SlotState::Absent => 3,
    }
}

/// Unknown codes (a damaged file) read as `Error`, so they show up rather than hide.
pub(crate) fn slot_state_from_code(code: u8) -> SlotState {
    match code {
        0 => SlotState::Free,
        1 => SlotState::Active,
        3 => SlotState::Absent,
        _ => SlotState::Error,
    }
}

/// The longest prefix of `s` that fits `cap` bytes and ends on a character boundary.
pub(crate) fn truncate_utf8(s: &str, cap: usize) -> &str {
    if s.len() <= cap {
        return s;
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The contents of a slot as bytes: byte 0 state, 1 proto code (0 none), 2 tos, 3 spare,
/// 4..16 the six text lengths (u16, host order), then the six texts at fixed places.
pub(crate) fn encode(data: &SlotData) -> [u8; CONTENT_LEN] {
    let mut buf = [0u8; CONTENT_LEN];
    buf[0] = slot_state_code(data.state);
    buf[1] = data.proto.map_or(0, Proto::code);
    buf[2] = data.tos;
    let texts = [
        &data.socket,
        &data.address,
        &data.advertised,
        &data.tag,
        &data.flags,
        &data.error,
    ];
    let mut at = META_LEN;
    for (i, (text, cap)) in texts.iter().zip(TEXT_CAPS).enumerate() {
        let t = truncate_utf8(text, cap).as_bytes();
        // Lengths are at most 256, well within u16.
        buf[4 + 2 * i..6 + 2 * i].copy_from_slice(&(t.len() as u16).to_ne_bytes());
        buf[at..at + t.len()].copy_from_slice(t);
        at += cap;
    }
    buf
}

/// The inverse of `encode`; never fails: a damaged length is clamped, bad UTF-8 replaced.
pub(crate) fn decode(buf: &[u8; CONTENT_LEN]) -> SlotData {
    let mut texts: [String; 6] = Default::default();
    let mut at = META_LEN;
    for (i, cap) in TEXT_CAPS.into_iter().enumerate() {
        let len = u16::from_ne_bytes([buf[4 + 2 * i], buf[5 + 2 * i]]) as usize;
        texts[i] = String::from_utf8_lossy(&buf[at..at + len.min(cap)]).into_owned();
        at += cap;
    }
    let [socket, address, advertised, tag, flags, error] = texts;
    SlotData {
        state: slot_state_from_code(buf[0]),
        socket,
        proto: Proto::from_code(buf[1]),
        address,
        advertised,
        tag,
        flags,
        tos: buf[2],
        error,
    }
}

// ---- seqlock ------------------------------------------------------------------------------------

/// How long a reader keeps retrying a slot that is being written. An update is ~100 stores, so
/// this only runs out when the writer stopped in the middle of one (killed, SIGSTOPped, or starved
/// of CPU for that long).
const READ_PATIENCE: std::time::Duration = std::time::Duration::from_millis(200);

/// A read of a slot's contents; `consistent` is false only when every attempt overlapped a write.
pub(crate) struct SeqRead {
    pub bytes: [u8; CONTENT_LEN],
    pub consistent: bool,
}

impl Slot {
    /// The state byte, read without the seqlock: only for the single writer, who cannot race itself.
    pub fn state_code_unsynced(&self) -> u8 {
        self.words[0].load(Relaxed).to_ne_bytes()[0]
    }

    /// Writes new contents. Callers must be the one writer of this slot (the `Table` serializes).
    pub fn write(&self, bytes: &[u8; CONTENT_LEN]) {
        let seq = self.seq.load(Relaxed);
        // Odd: readers that see it, or see words of this write, retry.
        self.seq.store(seq | 1, Relaxed);
        fence(Release);
        for (word, chunk) in self.words.iter().zip(bytes.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            word.store(u64::from_ne_bytes(w), Relaxed);
        }
        self.seq.store((seq | 1).wrapping_add(1), Release);
    }

    /// Reads the contents consistently. Only Relaxed loads and fences, because readers map the
    /// file read-only and Relaxed loads of word size are the ones Rust allows on read-only memory.
    pub fn read(&self) -> SeqRead {
        let mut bytes = [0u8; CONTENT_LEN];
        let mut deadline = None;
        for attempt in 0u64.. {
            let before = self.seq.load(Relaxed);
            fence(Acquire);
            if before & 1 == 0 {
                for (word, chunk) in self.words.iter().zip(bytes.chunks_exact_mut(8)) {
                    chunk.copy_from_slice(&word.load(Relaxed).to_ne_bytes());
                }
                fence(Acquire);
                if self.seq.load(Relaxed) == before {
                    return SeqRead {
                        bytes,
                        consistent: true,
                    };
                }
            }
            if attempt % 64 == 63 {
                // The clock is only read once contended, so an uncontended read costs no syscall.
                let now = std::time::Instant::now();
                if *deadline.get_or_insert(now + READ_PATIENCE) <= now {
                    break;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        for (word, chunk) in self.words.iter().zip(bytes.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&word.load(Relaxed).to_ne_bytes());
        }
        SeqRead {
            bytes,
            consistent: false,
        }
    }

    /// Zeroes the slot's counters (the slot changes owner). Its connections are the sum of its
    /// column in the matrix, whose cells belong to the workers: they go back to 0 as each worker
    /// drops the old socket's connections (uncounted at `Remove`), never by a store from here,
    /// which would race with a worker's decrement and leave the column negative.
    pub fn reset_counters(&self) {
        for c in &self.counters {
            c.store(0, Relaxed);
        }
    }

    /// One counter.
    pub fn counter(&self, which: SlotCounter) -> &AtomicU64 {
        // `which` is below SlotCounter::ALL.len() <= SLOT_COUNTERS (pinned at compile time).
        &self.counters[which as usize]
    }

    /// Every named counter's value, in [`SlotCounter::ALL`] order.
    pub fn counter_values(&self) -> [u64; SlotCounter::ALL.len()] {
        SlotCounter::ALL.map(|c| self.counter(c).load(Relaxed))
    }
}

// ---- reload statistics -------------------------------------------------------------------------

/// The histogram bucket of a reload that took `us` microseconds.
pub(crate) fn reload_bucket(us: u64) -> usize {
    RELOAD_BUCKETS_US
        .iter()
        .position(|bound| us <= *bound)
        .unwrap_or(RELOAD_BUCKETS_US.len())
}

/// Records one finished reload in the header (only the supervisor calls it).
pub(crate) fn record_reload(header: &Header, status: u32, us: u64, at_ms: u64, absent: u32) {
    header.reloads.fetch_add(1, Relaxed);
    if status != 200 {
        header.reload_failures.fetch_add(1, Relaxed);
    }
    header.reload_us_total.fetch_add(us, Relaxed);
    if let Some(b) = header.reload_buckets.get(reload_bucket(us)) {
        b.fetch_add(1, Relaxed);
    }
    header.last_reload_us.store(us, Relaxed);
    header.last_reload_status.store(status, Relaxed);
    header.last_reload_absent.store(absent, Relaxed);
    header.last_reload_ms.store(at_ms, Release);
}

// ---- connection matrix --------------------------------------------------------------------------

/// Moves one matrix cell by `delta`. A cell is an i32 in two's complement, so adding the low 32
/// bits of `delta` (wrapping) adds `delta`; a worker's share of one slot never nears 2^31.
pub(crate) fn add_conn_cell(cell: &AtomicU32, delta: i64) {
    cell.fetch_add(delta as u32, Relaxed);
}

/// A slot's open connections: the sum of its column. Each cell is read alone (Relaxed), so the sum
/// may mix moments, as any gauge read does; a negative sum (a worker's bug, a damaged file) reads
/// as 0 rather than as 2^64 - 1. At most 4096 cells of at most 2^31: no overflow in an i64.
pub(crate) fn sum_conn_cells<'a>(cells: impl Iterator<Item = &'a AtomicU32>) -> u64 {
    let sum: i64 = cells.map(|c| i64::from(c.load(Relaxed) as i32)).sum();
    u64::try_from(sum).unwrap_or(0)
}

// ---- worker records -----------------------------------------------------------------------------

fn worker_state_code(s: WorkerState) -> u32 {
    match s {
        WorkerState::Stopped => 0,
        WorkerState::Starting => 1,
        WorkerState::Ready => 2,
        WorkerState::Dead => 3,
    }
}

impl WorkerRecord {
    /// Records the worker's pid (0: none).
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Relaxed);
    }

    /// The worker's pid (0: none).
    pub fn pid(&self) -> u32 {
        self.pid.load(Relaxed)
    }

    /// Records the worker's state.
    pub fn set_state(&self, s: WorkerState) {
        self.state.store(worker_state_code(s), Relaxed);
    }

    /// The worker's state; an unknown code (a damaged file) reads as `Dead`.
    pub fn state(&self) -> WorkerState {
        match self.state.load(Relaxed) {
            0 => WorkerState::Stopped,
            1 => WorkerState::Starting,
            2 => WorkerState::Ready,
            _ => WorkerState::Dead,
        }
    }

    /// Counts one more restart.
    pub fn add_restart(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Relaxed)
    }

    /// Adds messages received (datagrams; SIP messages on a stream worker's connections).
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Relaxed);
    }

    /// Adds replies sent.
    pub fn add_replied(&self, n: u64) {
        self.replied.fetch_add(n, Relaxed);
    }

    /// Adds datagrams dropped (malformed, or not answered by design); on a stream worker, also
    /// connections closed for a protocol error or refused.
    pub fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Relaxed);
    }

    /// Adds wake-ups (returns from the worker's wait), to measure wake-ups per datagram.
    pub fn add_wakeups(&self, n: u64) {
        self.wakeups.fetch_add(n, Relaxed);
    }

    /// Moves the open-connection gauge by `delta` (a stream worker: +1 per connection it takes,
    /// -1 per connection it closes).
    pub fn add_connections(&self, delta: i64) {
        // Two's complement: adding the u64 image of a negative delta subtracts.
        self.connections.fetch_add(delta as u64, Relaxed);
    }

    /// Zeroes the open-connection gauge (a new worker process starts with none).
    pub fn reset_connections(&self) {
        self.connections.store(0, Relaxed);
    }

    /// Open connections; a gauge that went below zero (a bug, or a damaged file) reads as 0.
    pub fn connections(&self) -> u64 {
        let n = self.connections.load(Relaxed);
        if n > i64::MAX as u64 {
            0
        } else {
            n
        }
    }

    /// Datagrams received.
    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }

    /// Replies sent.
    pub fn replied(&self) -> u64 {
        self.replied.load(Relaxed)
    }

    /// Datagrams dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Wake-ups.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Relaxed)
    }

    /// Adds requests forwarded.
    pub fn add_relayed_requests(&self, n: u64) {
        self.relayed_requests.fetch_add(n, Relaxed);
    }

    /// Adds responses forwarded.
    pub fn add_relayed_responses(&self, n: u64) {
        self.relayed_responses.fetch_add(n, Relaxed);
    }

    /// Adds time spent handling traffic.
    pub fn add_busy_ns(&self, n: u64) {
        self.busy_ns.fetch_add(n, Relaxed);
    }

    /// Adds refused connections or messages.
    pub fn add_refused(&self, n: u64) {
        self.refused.fetch_add(n, Relaxed);
    }

    /// Adds messages taken from the inbox.
    pub fn add_inbox_received(&self, n: u64) {
        self.inbox_received.fetch_add(n, Relaxed);
    }

    /// Adds messages lost on the way through the inbox.
    pub fn add_inbox_dropped(&self, n: u64) {
        self.inbox_dropped.fetch_add(n, Relaxed);
    }

    /// Requests forwarded.
    pub fn relayed_requests(&self) -> u64 {
        self.relayed_requests.load(Relaxed)
    }

    /// Responses forwarded.
    pub fn relayed_responses(&self) -> u64 {
        self.relayed_responses.load(Relaxed)
    }

    /// Nanoseconds spent handling traffic.
    pub fn busy_ns(&self) -> u64 {
        self.busy_ns.load(Relaxed)
    }

    /// Refused connections or messages.
    pub fn refused(&self) -> u64 {
        self.refused.load(Relaxed)
    }

    /// Messages taken from the inbox.
    pub fn inbox_received(&self) -> u64 {
        self.inbox_received.load(Relaxed)
    }

    /// Messages lost on the way through the inbox.
    pub fn inbox_dropped(&self) -> u64 {
        self.inbox_dropped.load(Relaxed)
    }

    /// The pool this record belongs to, as written at creation (`None` if damaged).
    pub(crate) fn kind(&self) -> Option<WorkerKind> {
        match self.kind.load(Relaxed) {
            1 => Some(WorkerKind::Udp),
            2 => Some(WorkerKind::Stream),
            _ => None,
        }
    }

    /// The rank in its pool, as written at creation.
    pub(crate) fn rank(&self) -> u32 {
        self.rank.load(Relaxed)
    }
}

// ---- relay records ------------------------------------------------------------------------------

impl RelayRecord {
    /// Whether the record is in use.
    pub(crate) fn in_use(&self) -> bool {
        self.state.load(Acquire) == 1
    }

    /// Takes the record for relay row `id`, counters zeroed (the supervisor only).
    pub(crate) fn take(&self, id: i64) {
        self.requests.store(0, Relaxed);
        self.responses.store(0, Relaxed);
        self.failures.store(0, Relaxed);
        self.id.store(id as u64, Relaxed);
        self.state.store(1, Release);
    }

    /// Frees the record (the supervisor only).
    pub(crate) fn free(&self) {
        self.state.store(0, Release);
    }

    /// The relay row id.
    pub fn id(&self) -> i64 {
        self.id.load(Relaxed) as i64
    }

    /// Adds requests forwarded to the destination.
    pub fn add_requests(&self, n: u64) {
        self.requests.fetch_add(n, Relaxed);
    }

    /// Adds responses from the destination forwarded back.
    pub fn add_responses(&self, n: u64) {
        self.responses.fetch_add(n, Relaxed);
    }

    /// Adds failed sends toward the destination.
    pub fn add_failures(&self, n: u64) {
        self.failures.fetch_add(n, Relaxed);
    }

    /// Requests forwarded.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Responses forwarded back.
    pub fn responses(&self) -> u64 {
        self.responses.load(Relaxed)
    }

    /// Failed sends.
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }
}

impl std::fmt::Debug for WorkerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerRecord")
            .field("kind", &self.kind())
            .field("rank", &self.rank())
            .field("pid", &self.pid())
            .field("state", &self.state())
            .field("restarts", &self.restarts())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SlotData {
        SlotData {
            state: SlotState::Active,
            socket: "udp:127.0.0.1:5070".into(),
            proto: Some(Proto::Udp),
            address: "127.0.0.1:5070".into(),
            advertised: "sip.example.com:5060".into(),
            tag: "edge".into(),
            flags: "frag,reuse_port".into(),
            tos: 0x10,
            error: String::new(),
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let d = sample();
        assert_eq!(decode(&encode(&d)), d);
        let e = SlotData {
            state: SlotState::Error,
            proto: None,
            error: "bind: Cannot assign requested address (os error 99)".into(),
            ..Default::default()
        };
        assert_eq!(decode(&encode(&e)), e);
    }

    #[test]
    fn text_is_truncated_on_a_char_boundary() {
        // 'é' is two bytes; 127 ASCII bytes then 'é' crosses the 128-byte capacity.
        let socket = format!("{}é", "a".repeat(127));
        let d = SlotData { socket, ..sample() };
        let back = decode(&encode(&d));
        assert_eq!(back.socket, "a".repeat(127));
        let long_error = "ü".repeat(200); // 400 bytes
        let d = SlotData {
            error: long_error,
            ..sample()
        };
        let back = decode(&encode(&d));
        assert_eq!(back.error, "ü".repeat(128));
        assert_eq!(truncate_utf8("abc", 2), "ab");
        assert_eq!(truncate_utf8("é", 1), "");
    }

    #[test]
    fn decode_never_panics_on_damage() {
        let mut buf = [0xffu8; CONTENT_LEN];
        let d = decode(&buf);
        assert_eq!(d.state, SlotState::Error);
        assert_eq!(d.proto, None);
        assert_eq!(d.socket.chars().count(), SOCKET_CAP); // all replacement characters
        buf[0] = 1;
        buf[1] = 1;
        assert_eq!(decode(&buf).proto, Some(Proto::Udp));
    }

    #[test]
    fn geometry_offsets() {
        let g = Geometry {
            max_sockets: 100,
            processes: 8,
            stream_workers: 2,
            max_relays: 0,
        };
        assert_eq!(g.slots_offset(), 256);
        assert_eq!(g.workers_offset(), 256 + 960 * 100);
        assert_eq!(g.conns_offset(), 256 + 960 * 100 + 128 * 10);
        // 100 slots round up to 112 cells (7 cache lines) per stream worker.
        assert_eq!(g.conn_row_cells(), 112);
        assert_eq!(g.total_len(), 256 + 960 * 100 + 128 * 10 + 4 * 112 * 2);
        assert_eq!(
            g.conns_offset() % 64,
            0,
            "the matrix starts on a cache line"
        );
        assert_eq!(g.worker_index(WorkerKind::Udp, 7), Some(7));
        assert_eq!(g.worker_index(WorkerKind::Udp, 8), None);
        assert_eq!(g.worker_index(WorkerKind::Stream, 1), Some(9));
        assert_eq!(g.worker_index(WorkerKind::Stream, 2), None);
        assert!(Geometry {
            max_sockets: MAX_SLOTS + 1,
            ..g
        }
        .check_limits()
        .is_err());
        // The largest table stays far from overflowing a usize.
        let max = Geometry {
            max_sockets: MAX_SLOTS,
            processes: MAX_WORKERS,
            stream_workers: MAX_WORKERS,
            max_relays: MAX_SLOTS,
        };
        assert!(max.check_limits().is_ok());
        assert!(max.total_len() < 2 << 30);
    }

    #[test]
    fn layout_3_sizes() {
        assert_eq!(LAYOUT_VERSION, 3);
        let size = |max_sockets, processes, stream_workers| {
            Geometry {
                max_sockets,
                processes,
                stream_workers,
                max_relays: 0,
            }
            .total_len()
        };
        // No stream worker: no matrix.
        assert_eq!(size(4, 2, 0), 256 + 960 * 4 + 128 * 2);
        // Rows are whole cache lines: 1..=16 slots take one line per stream worker, 17 take two.
        assert_eq!(size(1, 0, 1), 256 + 960 + 128 + 64);
        assert_eq!(size(16, 0, 3), 256 + 960 * 16 + 128 * 3 + 64 * 3);
        assert_eq!(size(17, 1, 2), 256 + 960 * 17 + 128 * 3 + 128 * 2);
        // Zero slots: rows of zero cells.
        assert_eq!(size(0, 1, 4), 256 + 128 * 5);
        // Relay records come last, 64 bytes each.
        let g = Geometry {
            max_sockets: 17,
            processes: 1,
            stream_workers: 2,
            max_relays: 3,
        };
        assert_eq!(g.relays_offset(), size(17, 1, 2));
        assert_eq!(g.total_len(), size(17, 1, 2) + 64 * 3);
        assert_eq!(g.relays_offset() % 64, 0);
    }

    #[test]
    fn reload_histogram_buckets() {
        assert_eq!(reload_bucket(0), 0);
        assert_eq!(reload_bucket(1_000), 0);
        assert_eq!(reload_bucket(1_001), 1);
        assert_eq!(reload_bucket(60_000), 6);
        assert_eq!(reload_bucket(5_000_000), RELOAD_BUCKETS_US.len() - 1);
        assert_eq!(reload_bucket(u64::MAX), RELOAD_BUCKETS - 1);
    }

    #[test]
    fn matrix_cells_are_signed_and_columns_clamp_at_zero() {
        let cells: Vec<AtomicU32> = (0..3).map(|_| AtomicU32::new(0)).collect();
        add_conn_cell(&cells[0], 3);
        add_conn_cell(&cells[1], 2);
        add_conn_cell(&cells[1], -1);
        assert_eq!(sum_conn_cells(cells.iter()), 4);
        // A row driven below zero (a bug) subtracts from the others...
        add_conn_cell(&cells[2], -2);
        assert_eq!(cells[2].load(Relaxed) as i32, -2);
        assert_eq!(sum_conn_cells(cells.iter()), 2);
        // ...and a column that sums below zero reads as 0, not as 2^64 - 2.
        add_conn_cell(&cells[2], -10);
        assert_eq!(sum_conn_cells(cells.iter()), 0);
        assert_eq!(sum_conn_cells(std::iter::empty()), 0);
    }

    #[test]
    fn slot_write_then_read_in_process() {
        // Heap memory is as good as a mapping for the seqlock logic itself.
        let slot: Slot = Slot {
            seq: AtomicU64::new(0),
            counters: Default::default(),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
            _pad: Default::default(),
        };
        let d = sample();
        slot.write(&encode(&d));
        assert_eq!(slot.seq.load(Relaxed), 2);
        let r = slot.read();
        assert!(r.consistent);
        assert_eq!(decode(&r.bytes), d);
        assert_eq!(slot.state_code_unsynced(), 1);
        // A writer that died mid-write leaves an odd sequence: the reader gives up, flagged.
        slot.seq.store(3, Relaxed);
        assert!(!slot.read().consistent);
    }

    #[test]
    fn validate_names_the_mismatch() {
        let h: Header = Header {
            magic: AtomicU64::new(0),
            layout: AtomicU32::new(0),
            header_size: AtomicU32::new(0),
            slot_size: AtomicU32::new(0),
            worker_size: AtomicU32::new(0),
            max_sockets: AtomicU32::new(0),
            processes: AtomicU32::new(0),
            stream_workers: AtomicU32::new(0),
            pid: AtomicU32::new(0),
            start_time: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            cursor: AtomicU32::new(0),
            max_relays: AtomicU32::new(0),
            start_ticks: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_reload_ms: AtomicU64::new(0),
            last_reload_us: AtomicU64::new(0),
            last_reload_status: AtomicU32::new(0),
            last_reload_absent: AtomicU32::new(0),
            reload_us_total: AtomicU64::new(0),
            reload_buckets: Default::default(),
            connections_refused: AtomicU64::new(0),
            _reserved: Default::default(),
        };
        assert!(validate(&h, 256).unwrap_err().contains("magic"));
        let geo = Geometry {
            max_sockets: 2,
            processes: 1,
            stream_workers: 0,
            max_relays: 0,
        };
        init_header(&h, geo, 42, 0, 0);
        assert_eq!(validate(&h, geo.total_len()), Ok(geo));
        assert_eq!(h.cursor.load(Relaxed), 1);
        assert!(validate(&h, geo.total_len() - 1)
            .unwrap_err()
            .contains("file is"));
        // With stream workers, a file that stops where layout 1 ended (no matrix) is refused.
        let streams = Geometry {
            stream_workers: 2,
            ..geo
        };
        init_header(&h, streams, 42, 0, 0);
        assert_eq!(validate(&h, streams.total_len()), Ok(streams));
        let err = validate(&h, streams.conns_offset()).unwrap_err();
        assert!(
            err.contains("connection matrix of 2 stream workers"),
            "{err}"
        );
        assert!(validate(&h, streams.total_len() - 4).is_err());
        assert!(validate(&h, streams.total_len() + 64).is_err());
        h.layout.store(1, Relaxed);
        assert!(validate(&h, streams.total_len())
            .unwrap_err()
            .contains("layout version 1, this build reads 3"));
        init_header(&h, geo, 42, 0, 0);
        h.layout.store(7, Relaxed);
        assert!(validate(&h, geo.total_len())
            .unwrap_err()
            .contains("layout version 7"));
        h.layout.store(LAYOUT_VERSION, Relaxed);
        h.slot_size.store(800, Relaxed);
        assert!(validate(&h, geo.total_len())
            .unwrap_err()
            .contains("slot size 800"));
        h.slot_size.store(SLOT_SIZE as u32, Relaxed);
        h.max_sockets.store(u32::MAX, Relaxed);
        assert!(validate(&h, geo.total_len())
            .unwrap_err()
            .contains("max_sockets"));
    }
}
