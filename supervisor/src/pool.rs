//! The worker pool: starting workers (fork + exec of this binary), handing them the current sockets,
//! posting reloads, keeping track of their acknowledgements, telling live stream workers from
//! stalled ones, and restarting the ones that die or hang.
//!
//! Each worker has its own control channel (a SOCK_SEQPACKET socketpair); fds travel with a
//! manifest (`worker::ipc`). Nothing here ever waits on a worker: a message is sent without
//! waiting, and when the worker's queue is full it waits in that worker's outbox (its fds
//! duplicated) until the event loop sees the channel writable ([`Pool::on_writable`]).
//! Acknowledgements are read when the channel is readable ([`Pool::on_readable`]); a reload in
//! progress collects them with [`Pool::gather`] and a deadline, and a worker that did not
//! acknowledge in time is killed and started again with the full state, so one stuck process can
//! neither hold up the loop nor keep a removed port open.
//!
//! Liveness of stream workers (the ones connections are handed to): a `Commit` of the generation
//! the worker already has is a probe that changes nothing and is answered like any commit. A
//! ready stream worker silent for [`PROBE_EVERY`] is probed; one whose probe (or any earlier
//! message) is unanswered for [`STALL_AFTER`] is *stalled* and is handed no connection
//! ([`Pool::hand_off`] skips it, as it skips a worker whose queue is full); stalled for
//! [`ACK_TIMEOUT`] it is killed and started again. A worker that does not acknowledge its start
//! within [`ACK_TIMEOUT`] is started again too.
//!
//! Restarts are rate-limited: a worker that dies soon after starting waits a growing delay (100 ms,
//! doubling, at most 30 s) before its next start; one that ran for a while restarts at once.

use crate::sys;
use log::{debug, error, info, warn};
use nix::sys::signal::Signal;
use shm::{Table, WorkerKind, WorkerState};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use worker::channel::Channel;
use worker::ipc::{
    FromWorker, SocketInfo, StreamSettings, ToWorker, MAX_FDS_PER_MESSAGE, MAX_MESSAGE_SIZE,
};

/// Most slots or socket entries one metadata message carries before the byte limit is checked.
const MAX_SLOTS_PER_MESSAGE: usize = 500;

/// How long a worker may take to acknowledge a commit (a reload's phase, its start).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// A ready stream worker not heard from for this long is sent a liveness probe.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// A stream worker whose messages are unanswered for this long is handed no connection.
pub const STALL_AFTER: Duration = Duration::from_millis(200);
/// Most messages waiting in one worker's outbox; past it the worker is restarted.
const MAX_OUTBOX: usize = 4096;
/// A worker that ran at least this long before dying is restarted without delay.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a (re)started worker is handed: the current set (built by `reload::Sockets::served`).
#[derive(Debug, Default)]
pub struct Served<'a> {
    /// UDP sockets with the supervisor's fd (each worker gets a copy).
    pub udp: Vec<(SocketInfo, BorrowedFd<'a>)>,
    /// Stream sockets: metadata only.
    pub stream: Vec<SocketInfo>,
}

/// Errors starting a worker.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The control socketpair could not be created.
    #[error("cannot create the control socket of {kind} worker {rank}: {source}")]
    Channel {
        /// Pool.
        kind: WorkerKind,
        /// Rank.
        rank: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// fork/exec failed.
    #[error("cannot start {kind} worker {rank}: {source}")]
    Spawn {
        /// Pool.
        kind: WorkerKind,
        /// Rank.
        rank: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Lifecycle of one worker as the supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started, given the state, not yet acknowledged.
    Starting,
    /// Acknowledged the full state: serving.
    Ready,
    /// Dead; restarted at the given instant.
    Dead {
        /// When to start it again.
        restart_at: Instant,
    },
}

/// How a worker took a reload, when not simply "acknowledged": restarted (with why), or an entry
/// it refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerOutcome {
    /// Pool.
    pub kind: WorkerKind,
    /// Rank.
    pub rank: u32,
    /// The process concerned, when known.
    pub pid: Option<u32>,
    /// The slot a `Refused` names; `None` for a restart.
    pub slot: Option<u32>,
    /// What happened, e.g. "no acknowledgement within 5 s; restarted", or the worker's reason for
    /// refusing the slot.
    pub what: String,
}

impl WorkerOutcome {
    /// True when the worker was restarted (not a refused entry).
    pub fn restarted(&self) -> bool {
        self.slot.is_none()
    }
}

/// An entry a worker refused (`FromWorker::Refused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Pool.
    pub kind: WorkerKind,
    /// Rank.
    pub rank: u32,
    /// Its pid.
    pub pid: Option<u32>,
    /// The generation of the refused entry.
    pub generation: u64,
    /// The refused slot.
    pub slot: u32,
    /// The worker's reason.
    pub reason: String,
}

/// A message waiting for room in a worker's queue, with its own copies of the fds it carries.
#[derive(Debug)]
struct Parcel {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// One worker process.
#[derive(Debug)]
pub struct Worker {
    kind: WorkerKind,
    rank: u32,
    child: Option<Child>,
    channel: Option<Channel>,
    phase: Phase,
    started_at: Instant,
    backoff: Duration,
    /// Generation a Starting worker must acknowledge to be Ready.
    needs: u64,
    /// How many times this rank was started (to tell one process's channel from the next).
    spawns: u64,
    acked: u64,
    /// Messages the worker's queue had no room for, in order.
    outbox: VecDeque<Parcel>,
    /// Commits posted to this process, and acknowledgements received (one per commit).
    commits: u64,
    acks: u64,
    /// The liveness probe in flight: when it was posted and the commit count it is.
    probe: Option<(Instant, u64)>,
    /// The last message from the worker.
    heard: Instant,
    /// Logged as stalled (logged once per stall).
    stall_noted: bool,
    /// The pid of the last process of this rank.
    last_pid: Option<u32>,
    /// Why the last process of this rank ended, for reload reports.
    ended: Option<String>,
    /// The supervisor killed it (its reason stands; the exit status adds nothing).
    killed: bool,
}

impl Worker {
    /// Pool.
    pub fn kind(&self) -> WorkerKind {
        self.kind
    }
    /// Rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }
    /// Pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    /// Phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }
    /// How many times this rank was started.
    pub fn spawns(&self) -> u64 {
        self.spawns
    }
    /// The control channel, while the worker runs.
    pub fn channel_fd(&self) -> Option<BorrowedFd<'_>> {
        self.channel.as_ref().map(|c| c.as_fd())
    }
    /// True while messages wait in the outbox: the loop should watch the channel for room.
    pub fn wants_writable(&self) -> bool {
        self.channel.is_some() && !self.outbox.is_empty()
    }
    /// True when a message posted to this worker is unanswered for [`STALL_AFTER`].
    pub fn stalled(&self, now: Instant) -> bool {
        self.probe
            .is_some_and(|(at, _)| now.saturating_duration_since(at) >= STALL_AFTER)
    }
    /// True when connections may be handed to it now.
    fn takes_connections(&self, now: Instant) -> bool {
        self.kind == WorkerKind::Stream
            && self.channel.is_some()
            && self.phase == Phase::Ready
            && self.outbox.is_empty()
            && !self.stalled(now)
    }
}

/// The workers a reload posted a phase to and whose acknowledgement it waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waiting {
    generation: u64,
    /// (index, spawns) of each worker still to acknowledge.
    workers: Vec<(usize, u64)>,
}

impl Waiting {
    /// True when every worker acknowledged (or is accounted for).
    pub fn is_done(&self) -> bool {
        self.workers.is_empty()
    }
    /// How many are still waited for.
    pub fn len(&self) -> usize {
        self.workers.len()
    }
    /// True when none is waited for.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

/// The fixed pool of workers.
#[derive(Debug)]
pub struct Pool {
    workers: Vec<Worker>,
    reply_code: u16,
    reply_reason: String,
    stream: StreamSettings,
    /// Entries refused by workers since the last [`Pool::take_refusals`].
    refusals: Vec<Refusal>,
}

impl Pool {
    /// A pool of `udp` UDP workers and `stream` stream workers, none started yet.
    pub fn new(
        udp: u32,
        stream: u32,
        reply_code: u16,
        reply_reason: String,
        settings: StreamSettings,
    ) -> Pool {
        let now = Instant::now();
        let kinds = (0..udp)
            .map(|r| (WorkerKind::Udp, r))
            .chain((0..stream).map(|r| (WorkerKind::Stream, r)));
        let workers = kinds
            .map(|(kind, rank)| Worker {
                kind,
                rank,
                child: None,
                channel: None,
                phase: Phase::Dead { restart_at: now },
                started_at: now,
                backoff: Duration::ZERO,
                needs: 0,
                spawns: 0,
                acked: 0,
                outbox: VecDeque::new(),
                commits: 0,
                acks: 0,
                probe: None,
                heard: now,
                stall_noted: false,
                last_pid: None,
                ended: None,
                killed: false,
            })
            .collect();
        Pool {
            workers,
            reply_code,
            reply_reason,
            stream: settings,
            refusals: Vec::new(),
        }
    }

    /// The workers, in rank order.
    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// Start worker `index` and post it the current state (`served` at `generation`): it is
    /// Ready once it acknowledged that.
    pub fn start(
        &mut self,
        index: usize,
        shm: &Table,
        served: &Served<'_>,
        generation: u64,
    ) -> Result<(), PoolError> {
        let (reply_code, reply_reason, stream) =
            (self.reply_code, self.reply_reason.clone(), self.stream);
        let w = &mut self.workers[index];
        let (kind, rank) = (w.kind, w.rank);
        let (ours, theirs) =
            Channel::pair().map_err(|source| PoolError::Channel { kind, rank, source })?;
        // The worker's end must survive exec: clear CLOEXEC for this one spawn only. The supervisor
        // spawns from one thread, so no other child can inherit it; our copy is closed right after.
        sys::set_cloexec(theirs.as_fd(), false).map_err(|e| PoolError::Channel {
            kind,
            rank,
            source: e.into(),
        })?;
        let child = Command::new("/proc/self/exe")
            .arg0("sipsockd")
            .args([
                "worker",
                "--kind",
                kind.as_str(),
                "--rank",
                &rank.to_string(),
            ])
            .args(["--control-fd", &sys::raw_fd(theirs.as_fd()).to_string()])
            .args(["--parent", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| PoolError::Spawn { kind, rank, source })?;
        drop(theirs);
        let pid = child.id();
        info!("{kind} worker {rank} started (pid {pid})");
        let now = Instant::now();
        w.child = Some(child);
        w.channel = Some(ours);
        w.phase = Phase::Starting;
        w.started_at = now;
        w.needs = generation;
        w.acked = 0;
        w.spawns += 1;
        w.outbox.clear();
        w.commits = 0;
        w.acks = 0;
        w.probe = None;
        w.heard = now;
        w.stall_noted = false;
        w.last_pid = Some(pid);
        w.ended = None;
        w.killed = false;
        if let Some(rec) = shm.worker(kind, rank) {
            rec.set_pid(pid);
            rec.set_state(WorkerState::Starting);
        }
        let setup = ToWorker::Setup {
            reply_code,
            reply_reason,
            stream,
        };
        let sent = post(w, setup.encode(), &[shm.file().as_fd()])
            .and_then(|_| match kind {
                WorkerKind::Udp => post_adds(w, generation, &served.udp),
                WorkerKind::Stream => post_infos(w, generation, &served.stream, Infos::Describe),
            })
            .and_then(|_| post_commit(w, generation));
        if let Err(e) = sent {
            warn!("{kind} worker {rank}: cannot hand over the current sockets: {e}; restarting it");
            kill(w, format!("could not be handed the current sockets: {e}"));
        }
        Ok(())
    }

    /// Start every worker that is dead and due ([`Pool::next_restart`] says when the next one is).
    pub fn start_due(&mut self, shm: &Table, served: &Served<'_>, generation: u64) {
        let now = Instant::now();
        for i in 0..self.workers.len() {
            let Phase::Dead { restart_at } = self.workers[i].phase else {
                continue;
            };
            if restart_at > now || self.workers[i].child.is_some() {
                // Not due, or killed and not reaped yet (its exit is what schedules it).
                continue;
            }
            if let Err(e) = self.start(i, shm, served, generation) {
                error!("{e}");
                let w = &mut self.workers[i];
                w.backoff = next_backoff(w.backoff);
                w.phase = Phase::Dead {
                    restart_at: now + w.backoff,
                };
            }
        }
    }

    /// When the next dead worker is due to start again, if any is dead.
    pub fn next_restart(&self) -> Option<Instant> {
        self.workers
            .iter()
            .filter(|w| w.child.is_none())
            .filter_map(|w| match w.phase {
                Phase::Dead { restart_at } => Some(restart_at),
                _ => None,
            })
            .min()
    }

    /// Reap exited workers (after SIGCHLD) and schedule their restart.
    pub fn reap(&mut self, shm: &Table) {
        for w in &mut self.workers {
            let Some(child) = w.child.as_mut() else {
                continue;
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    let how = match (status.code(), status.signal()) {
                        (Some(c), _) => format!("exited with status {c}"),
                        (None, Some(s)) => format!("was killed by signal {s}"),
                        _ => "ended".to_string(),
                    };
                    let ran = w.started_at.elapsed();
                    w.backoff = if ran >= STABLE_AFTER {
                        Duration::ZERO
                    } else {
                        next_backoff(w.backoff)
                    };
                    let restart_at = Instant::now() + w.backoff;
                    warn!(
                        "{} worker {} (pid {}) {how} after {:.1} s; restarting it in {} ms",
                        w.kind,
                        w.rank,
                        child.id(),
                        ran.as_secs_f64(),
                        w.backoff.as_millis()
                    );
                    // A worker we killed keeps the reason we had; any other says how it ended.
                    if !w.killed {
                        w.ended = Some(how);
                    }
                    w.child = None;
                    w.channel = None;
                    w.outbox.clear();
                    w.probe = None;
                    w.phase = Phase::Dead { restart_at };
                    if let Some(rec) = shm.worker(w.kind, w.rank) {
                        rec.set_state(WorkerState::Dead);
                        rec.set_pid(0);
                        rec.add_restart();
                    }
                    // Its connections died with it; the next process of this rank starts at 0.
                    shm.reset_worker_connections(w.kind, w.rank);
                }
                Ok(None) => {}
                Err(e) => warn!("{} worker {}: wait failed: {e}", w.kind, w.rank),
            }
        }
    }

    /// Handle what worker `index` sent (its channel is readable). A closed channel kills the worker
    /// (reap then restarts it).
    pub fn on_readable(&mut self, index: usize, shm: &Table) {
        let Some(w) = self.workers.get_mut(index) else {
            return;
        };
        let mut buf = Vec::new();
        loop {
            let Some(ch) = w.channel.as_ref() else { return };
            match ch.try_recv(&mut buf) {
                Ok(Some(fds)) => {
                    drop(fds); // workers never send fds; close any that came
                    if let Some(r) = handle_message(w, &buf, shm) {
                        self.refusals.push(r);
                    }
                }
                Ok(None) => {
                    debug!("{} worker {}: control channel closed", w.kind, w.rank);
                    // It is ending by itself: reap() says how.
                    kill(w, "closed its control channel".into());
                    w.killed = false;
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("{} worker {}: control channel: {e}", w.kind, w.rank);
                    kill(w, format!("its control channel failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Worker `index`'s queue has room again: send what waits in its outbox, in order.
    pub fn on_writable(&mut self, index: usize) {
        if let Some(w) = self.workers.get_mut(index) {
            if let Err(e) = flush(w) {
                give_up(w, format!("its control channel failed: {e}"));
            }
        }
    }

    /// The entries workers refused since the last call (each also logged when it came).
    pub fn take_refusals(&mut self) -> Vec<Refusal> {
        std::mem::take(&mut self.refusals)
    }

    /// Phase 1 of a reload: UDP workers drop `udp` slots, stream workers drain the connections of
    /// `stream` slots, then a commit. Posted to every live worker without waiting; returns whom to
    /// wait for ([`Pool::gather`]) and the workers that could not even be posted to (restarted).
    pub fn post_remove(
        &mut self,
        generation: u64,
        udp: &[u32],
        stream: &[u32],
    ) -> (Waiting, Vec<WorkerOutcome>) {
        self.post_all(generation, "the removal", |w| {
            let slots = if w.kind == WorkerKind::Udp {
                udp
            } else {
                stream
            };
            for c in slots.chunks(MAX_SLOTS_PER_MESSAGE) {
                let msg = ToWorker::Remove {
                    generation,
                    slots: c.to_vec(),
                };
                post(w, msg.encode(), &[])?;
            }
            Ok(())
        })
    }

    /// Phase 2 of a reload: UDP workers get the new sockets (with their fds) and the in-place
    /// updates; stream workers get the metadata of new and updated stream sockets; then a commit.
    /// Posted to EVERY live worker before any acknowledgement is waited for.
    pub fn post_apply(
        &mut self,
        generation: u64,
        udp_adds: &[(SocketInfo, BorrowedFd<'_>)],
        udp_updates: &[SocketInfo],
        stream: &[SocketInfo],
    ) -> (Waiting, Vec<WorkerOutcome>) {
        self.post_all(generation, "the new sockets", |w| match w.kind {
            WorkerKind::Udp => post_adds(w, generation, udp_adds)
                .and_then(|_| post_infos(w, generation, udp_updates, Infos::Update)),
            WorkerKind::Stream => post_infos(w, generation, stream, Infos::Describe),
        })
    }

    fn post_all(
        &mut self,
        generation: u64,
        what: &str,
        mut body: impl FnMut(&mut Worker) -> std::io::Result<()>,
    ) -> (Waiting, Vec<WorkerOutcome>) {
        let mut waiting = Waiting {
            generation,
            workers: Vec::new(),
        };
        let mut out = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            if w.channel.is_none() {
                continue;
            }
            match body(w).and_then(|_| post_commit(w, generation)) {
                Ok(()) => waiting.workers.push((i, w.spawns)),
                Err(e) => out.push(give_up(w, format!("could not be sent {what}: {e}"))),
            }
        }
        (waiting, out)
    }

    /// Collect the acknowledgements of a posted phase: forgets every worker that acknowledged,
    /// reports every one that ended meanwhile, and at `deadline` kills the ones still silent (they
    /// restart with the full state). Never waits.
    pub fn gather(
        &mut self,
        waiting: &mut Waiting,
        deadline: Instant,
        now: Instant,
    ) -> Vec<WorkerOutcome> {
        let generation = waiting.generation;
        let mut out = Vec::new();
        waiting.workers.retain(|&(i, spawns)| {
            let w = &mut self.workers[i];
            if w.spawns != spawns || w.channel.is_none() {
                let why = w.ended.clone().unwrap_or_else(|| "ended".into());
                warn!(
                    "{} worker {} {why} during the reload; it restarts with the whole set",
                    w.kind, w.rank
                );
                out.push(WorkerOutcome {
                    kind: w.kind,
                    rank: w.rank,
                    pid: w.last_pid,
                    slot: None,
                    what: format!("{why} during the reload; restarted"),
                });
                return false;
            }
            if w.acked >= generation {
                return false;
            }
            if now >= deadline {
                out.push(give_up(
                    w,
                    format!("no acknowledgement within {} s", ACK_TIMEOUT.as_secs()),
                ));
                return false;
            }
            true
        });
        out
    }

    /// Housekeeping on every turn of the loop: probe ready stream workers not heard from for
    /// [`PROBE_EVERY`], note the ones stalled for [`STALL_AFTER`], and restart the ones stalled
    /// (or not acknowledging their start) for [`ACK_TIMEOUT`].
    pub fn tick(&mut self, now: Instant) {
        for w in &mut self.workers {
            if w.channel.is_none() {
                continue;
            }
            let silent_for = |at: Instant| now.saturating_duration_since(at);
            if w.phase == Phase::Starting && silent_for(w.started_at) >= ACK_TIMEOUT {
                give_up(
                    w,
                    format!(
                        "did not acknowledge its start within {} s",
                        ACK_TIMEOUT.as_secs()
                    ),
                );
                continue;
            }
            if w.kind != WorkerKind::Stream || w.phase != Phase::Ready {
                continue;
            }
            match w.probe {
                Some((at, _)) if silent_for(at) >= ACK_TIMEOUT => {
                    give_up(
                        w,
                        format!("stalled: no answer for {} s", ACK_TIMEOUT.as_secs()),
                    );
                }
                Some((at, _)) if silent_for(at) >= STALL_AFTER && !w.stall_noted => {
                    w.stall_noted = true;
                    warn!(
                        "stream worker {} (pid {}) stalled: no answer for {} ms; it is handed no \
                         connection until it answers (restarted after {} s)",
                        w.rank,
                        w.last_pid.unwrap_or(0),
                        silent_for(at).as_millis(),
                        ACK_TIMEOUT.as_secs()
                    );
                }
                Some(_) => {}
                None if silent_for(w.heard) >= PROBE_EVERY => {
                    let generation = w.acked;
                    match post_commit(w, generation) {
                        Ok(()) => w.probe = Some((now, w.commits)),
                        Err(e) => {
                            give_up(w, format!("could not be probed: {e}"));
                        }
                    }
                }
                None => {}
            }
        }
    }

    /// Hand an accepted connection of stream socket `slot` to the least-loaded stream worker that
    /// is live (not stalled, nothing waiting in its outbox) and takes it without waiting. The
    /// worker's connection gauge in shm is raised here, at the hand-off, so the next choice (and
    /// the max_connections check) sees it at once; the worker lowers it when the connection ends
    /// (or when it refuses it), and a dead worker's gauge is reset when it is reaped. Returns the
    /// rank, or the connection back when no worker took it.
    pub fn hand_off(
        &mut self,
        slot: u32,
        peer: SocketAddr,
        conn: OwnedFd,
        shm: &Table,
    ) -> Result<u32, OwnedFd> {
        let now = Instant::now();
        let load = |rank: u32| {
            shm.worker(WorkerKind::Stream, rank)
                .map_or(0, |r| r.connections())
        };
        let mut candidates: Vec<(u64, usize)> = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.takes_connections(now))
            .map(|(i, w)| (load(w.rank), i))
            .collect();
        candidates.sort_unstable();
        let msg = ToWorker::Conn { slot, peer }.encode();
        for (_, i) in candidates {
            let w = &self.workers[i];
            let Some(ch) = w.channel.as_ref() else {
                continue;
            };
            let record = shm.worker(WorkerKind::Stream, w.rank);
            // Counted before the send: the worker may take it and close it before we get back.
            if let Some(r) = record {
                r.add_connections(1);
            }
            match ch.try_send(&msg, &[conn.as_fd()]) {
                Ok(()) => return Ok(w.rank),
                Err(e) => {
                    if let Some(r) = record {
                        r.add_connections(-1);
                    }
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        debug!(
                            "stream worker {} is not taking connections now; trying another",
                            w.rank
                        );
                    } else {
                        warn!(
                            "stream worker {}: cannot hand a connection over: {e}",
                            w.rank
                        );
                    }
                }
            }
        }
        Err(conn)
    }

    /// True when some stream worker could take a connection now (see [`Pool::hand_off`]).
    pub fn can_hand_off(&self) -> bool {
        let now = Instant::now();
        self.workers.iter().any(|w| w.takes_connections(now))
    }

    /// Ask every worker to exit; returns once all have exited or `deadline` passed (the rest are
    /// killed). Never waits on a worker's queue: one that has no room is killed at the deadline.
    pub fn shutdown(&mut self, deadline: Instant) {
        for w in &mut self.workers {
            if let Some(ch) = &w.channel {
                if w.outbox.is_empty() {
                    let _ = ch.try_send(&ToWorker::Shutdown.encode(), &[]);
                }
            }
        }
        for w in &mut self.workers {
            let Some(child) = w.child.as_mut() else {
                continue;
            };
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            w.child = None;
            w.channel = None;
            w.outbox.clear();
        }
    }
}

/// Handle one message of a worker; returns the entry it refused, if that is what it said.
fn handle_message(w: &mut Worker, buf: &[u8], shm: &Table) -> Option<Refusal> {
    let was = w.phase;
    let now = Instant::now();
    w.heard = now;
    let mut refusal = None;
    match FromWorker::decode(buf) {
        Ok(FromWorker::Ack { generation, .. }) => {
            w.acks += 1;
            w.acked = w.acked.max(generation);
            if w.phase == Phase::Starting && w.acked >= w.needs {
                w.phase = Phase::Ready;
            }
            if w.probe.is_some_and(|(_, n)| w.acks >= n) {
                w.probe = None;
                if std::mem::take(&mut w.stall_noted) {
                    info!("{} worker {} answers again", w.kind, w.rank);
                }
            }
        }
        Ok(FromWorker::Hello { pid, .. }) => {
            debug!("{} worker {} says hello (pid {pid})", w.kind, w.rank)
        }
        Ok(FromWorker::Refused {
            generation,
            slot,
            reason,
        }) => {
            warn!(
                "{} worker {} refused slot {slot} of generation {generation}: {reason}",
                w.kind, w.rank
            );
            refusal = Some(Refusal {
                kind: w.kind,
                rank: w.rank,
                pid: w.last_pid,
                generation,
                slot,
                reason,
            });
        }
        Err(e) => warn!("{} worker {}: {e}", w.kind, w.rank),
    }
    if was == Phase::Starting && w.phase == Phase::Ready {
        info!(
            "{} worker {} ready (generation {})",
            w.kind, w.rank, w.acked
        );
        if let Some(rec) = shm.worker(w.kind, w.rank) {
            rec.set_state(WorkerState::Ready);
        }
    }
    refusal
}

/// Send a message to a worker without waiting: at once when its queue has room and nothing waits
/// before it, else into its outbox (with copies of the fds, which the caller keeps).
fn post(w: &mut Worker, bytes: Vec<u8>, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let Some(ch) = &w.channel else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "worker not running",
        ));
    };
    if w.outbox.is_empty() {
        match ch.try_send(&bytes, fds) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    if w.outbox.len() >= MAX_OUTBOX {
        return Err(std::io::Error::other(format!(
            "{MAX_OUTBOX} control messages already wait for it"
        )));
    }
    let fds = fds
        .iter()
        .map(|fd| fd.try_clone_to_owned())
        .collect::<std::io::Result<Vec<OwnedFd>>>()?;
    w.outbox.push_back(Parcel { bytes, fds });
    Ok(())
}

/// Send what waits in the outbox until the queue is full again.
fn flush(w: &mut Worker) -> std::io::Result<()> {
    while let Some(p) = w.outbox.front() {
        let Some(ch) = &w.channel else {
            w.outbox.clear();
            return Ok(());
        };
        let fds: Vec<BorrowedFd<'_>> = p.fds.iter().map(|f| f.as_fd()).collect();
        match ch.try_send(&p.bytes, &fds) {
            Ok(()) => {
                w.outbox.pop_front();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Post a commit (every commit is acknowledged once, in order).
fn post_commit(w: &mut Worker, generation: u64) -> std::io::Result<()> {
    post(w, ToWorker::Commit { generation }.encode(), &[])?;
    w.commits += 1;
    Ok(())
}

/// Post `Add` messages in batches the kernel accepts (at most MAX_FDS_PER_MESSAGE fds each).
fn post_adds(
    w: &mut Worker,
    generation: u64,
    adds: &[(SocketInfo, BorrowedFd<'_>)],
) -> std::io::Result<()> {
    for batch in adds.chunks(MAX_FDS_PER_MESSAGE) {
        let sockets: Vec<SocketInfo> = batch.iter().map(|(i, _)| i.clone()).collect();
        let fds: Vec<BorrowedFd<'_>> = batch.iter().map(|(_, fd)| *fd).collect();
        let msg = ToWorker::Add {
            generation,
            sockets,
        };
        post(w, msg.encode(), &fds)?;
    }
    Ok(())
}

/// Which metadata message [`post_infos`] sends.
#[derive(Clone, Copy)]
enum Infos {
    Update,
    Describe,
}

/// Post socket metadata in messages that fit MAX_MESSAGE_SIZE (TLS material makes entries big:
/// a batch that does not fit is halved until it does).
fn post_infos(
    w: &mut Worker,
    generation: u64,
    infos: &[SocketInfo],
    which: Infos,
) -> std::io::Result<()> {
    let encode = |batch: &[SocketInfo]| {
        let sockets = batch.to_vec();
        match which {
            Infos::Update => ToWorker::Update {
                generation,
                sockets,
            },
            Infos::Describe => ToWorker::Describe {
                generation,
                sockets,
            },
        }
        .encode()
    };
    let mut rest = infos;
    while !rest.is_empty() {
        let mut n = rest.len().min(MAX_SLOTS_PER_MESSAGE);
        let mut bytes = encode(&rest[..n]);
        while bytes.len() > MAX_MESSAGE_SIZE && n > 1 {
            n /= 2;
            bytes = encode(&rest[..n]);
        }
        post(w, bytes, &[])?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Kill the worker's process (reap() sees the exit and schedules the restart); `why` is what a
/// reload report says of it.
fn kill(w: &mut Worker, why: String) {
    if let Some(pid) = w.pid() {
        sys::kill(pid, Signal::SIGKILL);
    }
    w.ended = Some(why);
    w.killed = true;
    // The channel goes now so nothing more is sent to it.
    w.channel = None;
    w.outbox.clear();
    w.probe = None;
    if !matches!(w.phase, Phase::Dead { .. }) {
        w.phase = Phase::Dead {
            restart_at: Instant::now(),
        };
    }
}

/// Kill a worker that did not do what it should (`cause`); it restarts with the whole set.
fn give_up(w: &mut Worker, cause: String) -> WorkerOutcome {
    warn!(
        "{} worker {} (pid {}): {cause}; restarted",
        w.kind,
        w.rank,
        w.last_pid.unwrap_or(0)
    );
    let outcome = WorkerOutcome {
        kind: w.kind,
        rank: w.rank,
        pid: w.last_pid,
        slot: None,
        what: format!("{cause}; restarted"),
    };
    kill(w, cause);
    outcome
}

fn next_backoff(b: Duration) -> Duration {
    if b.is_zero() {
        FIRST_BACKOFF
    } else {
        (b * 2).min(MAX_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..12 {
            b = next_backoff(b);
            seen.push(b);
        }
        assert_eq!(seen[0], FIRST_BACKOFF);
        assert_eq!(seen[1], FIRST_BACKOFF * 2);
        assert_eq!(*seen.last().unwrap(), MAX_BACKOFF);
        assert!(seen.windows(2).all(|p| p[0] <= p[1]));
    }
}
