//! The worker pool: starting workers (fork + exec of this binary), handing them the current sockets,
//! broadcasting reloads, collecting acknowledgements, and restarting the ones that die.
//!
//! Each worker has its own control channel (a SOCK_SEQPACKET socketpair); fds travel with a
//! manifest (`worker::ipc`). Sends use a timeout: a worker that does not take its messages (stopped,
//! hung) or does not acknowledge a commit in time is killed and started again with the full state,
//! so one stuck process can neither block a reload nor keep a removed port open.
//!
//! Restarts are rate-limited: a worker that dies soon after starting waits a growing delay (100 ms,
//! doubling, at most 30 s) before its next start; one that ran for a while restarts at once.

use crate::sys;
use log::{debug, error, info, warn};
use nix::sys::signal::Signal;
use shm::{Table, WorkerKind, WorkerState};
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

/// How long a worker may take to accept a message or acknowledge a commit.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
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

/// How a worker took a broadcast, when not simply "acknowledged".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerOutcome {
    /// Pool.
    pub kind: WorkerKind,
    /// Rank.
    pub rank: u32,
    /// What happened, e.g. "no acknowledgement within 5 s: restarted".
    pub what: String,
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
}

/// The fixed pool of workers.
#[derive(Debug)]
pub struct Pool {
    workers: Vec<Worker>,
    reply_code: u16,
    reply_reason: String,
    stream: StreamSettings,
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
            })
            .collect();
        Pool {
            workers,
            reply_code,
            reply_reason,
            stream: settings,
        }
    }

    /// The workers, in rank order.
    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// Start worker `index` and hand it the current state (`served` at `generation`).
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
        sys::set_send_timeout(ours.as_fd(), ACK_TIMEOUT).map_err(|e| PoolError::Channel {
            kind,
            rank,
            source: e.into(),
        })?;
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
        w.child = Some(child);
        w.channel = Some(ours);
        w.phase = Phase::Starting;
        w.started_at = Instant::now();
        w.needs = generation;
        w.acked = 0;
        w.spawns += 1;
        if let Some(rec) = shm.worker(kind, rank) {
            rec.set_pid(pid);
            rec.set_state(WorkerState::Starting);
        }
        let setup = ToWorker::Setup {
            reply_code,
            reply_reason,
            stream,
        };
        let sent = send(w, &setup.encode(), &[shm.file().as_fd()])
            .and_then(|_| match kind {
                WorkerKind::Udp => send_adds(w, generation, &served.udp),
                WorkerKind::Stream => send_infos(w, generation, &served.stream, Infos::Describe),
            })
            .and_then(|_| send(w, &ToWorker::Commit { generation }.encode(), &[]));
        if let Err(e) = sent {
            warn!("{kind} worker {rank}: cannot hand over the current sockets: {e}; restarting it");
            kill(w);
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
            if restart_at > now {
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
                    w.child = None;
                    w.channel = None;
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
                    handle_message(w, &buf, shm);
                }
                Ok(None) => {
                    debug!("{} worker {}: control channel closed", w.kind, w.rank);
                    kill(w);
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("{} worker {}: control channel: {e}", w.kind, w.rank);
                    kill(w);
                    return;
                }
            }
        }
    }

    /// Phase 1 of a reload: UDP workers drop `udp` slots, stream workers drain the connections of
    /// `stream` slots; waits for every acknowledgement.
    pub fn broadcast_remove(
        &mut self,
        generation: u64,
        udp: &[u32],
        stream: &[u32],
        shm: &Table,
    ) -> Vec<WorkerOutcome> {
        let mut out = Vec::new();
        for w in self.live_mut() {
            let slots = if w.kind == WorkerKind::Udp {
                udp
            } else {
                stream
            };
            let sent = slots
                .chunks(MAX_SLOTS_PER_MESSAGE)
                .try_for_each(|c| {
                    send(
                        w,
                        &ToWorker::Remove {
                            generation,
                            slots: c.to_vec(),
                        }
                        .encode(),
                        &[],
                    )
                })
                .and_then(|_| send(w, &ToWorker::Commit { generation }.encode(), &[]));
            if let Err(e) = sent {
                out.push(give_up(
                    w,
                    format!("could not be sent the removal: {e}; restarted"),
                ));
            }
        }
        out.extend(self.wait_acks(generation, shm));
        out
    }

    /// Phase 2 of a reload: UDP workers get the new sockets (with their fds) and the in-place
    /// updates; stream workers get the metadata of new and updated stream sockets; then a commit.
    /// Waits for every acknowledgement.
    pub fn broadcast_apply(
        &mut self,
        generation: u64,
        udp_adds: &[(SocketInfo, BorrowedFd<'_>)],
        udp_updates: &[SocketInfo],
        stream: &[SocketInfo],
        shm: &Table,
    ) -> Vec<WorkerOutcome> {
        let mut out = Vec::new();
        for w in self.live_mut() {
            let sent = match w.kind {
                WorkerKind::Udp => send_adds(w, generation, udp_adds)
                    .and_then(|_| send_infos(w, generation, udp_updates, Infos::Update)),
                WorkerKind::Stream => send_infos(w, generation, stream, Infos::Describe),
            }
            .and_then(|_| send(w, &ToWorker::Commit { generation }.encode(), &[]));
            if let Err(e) = sent {
                out.push(give_up(
                    w,
                    format!("could not be sent the new sockets: {e}; restarted"),
                ));
            }
        }
        out.extend(self.wait_acks(generation, shm));
        out
    }

    /// Hand an accepted connection of stream socket `slot` to the least-loaded stream worker that
    /// takes it without waiting (a stalled worker is skipped, never waited for). The worker's
    /// connection gauge in shm is raised here, at the hand-off, so the next choice (and the
    /// max_connections check) sees it at once; the worker lowers it when the connection ends (or
    /// when it refuses it), and a dead worker's gauge is reset when it is reaped. Returns the
    /// rank, or the connection back when no worker took it.
    pub fn hand_off(
        &mut self,
        slot: u32,
        peer: SocketAddr,
        conn: OwnedFd,
        shm: &Table,
    ) -> Result<u32, OwnedFd> {
        let load = |rank: u32| {
            shm.worker(WorkerKind::Stream, rank)
                .map_or(0, |r| r.connections())
        };
        let mut candidates: Vec<(u64, usize)> = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                w.kind == WorkerKind::Stream && w.channel.is_some() && w.phase == Phase::Ready
            })
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

    /// Ask every worker to exit; returns once all have exited or `deadline` passed (the rest are
    /// killed).
    pub fn shutdown(&mut self, deadline: Instant) {
        for w in &mut self.workers {
            if w.channel.is_some() {
                let _ = send(w, &ToWorker::Shutdown.encode(), &[]);
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
        }
    }

    fn live_mut(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.workers.iter_mut().filter(|w| w.channel.is_some())
    }

    /// Wait until every live worker acknowledged `generation`, or ACK_TIMEOUT passed.
    fn wait_acks(&mut self, generation: u64, shm: &Table) -> Vec<WorkerOutcome> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        let mut buf = Vec::new();
        loop {
            let pending: Vec<usize> = (0..self.workers.len())
                .filter(|&i| {
                    self.workers[i].channel.is_some() && self.workers[i].acked < generation
                })
                .collect();
            if pending.is_empty() {
                return Vec::new();
            }
            let now = Instant::now();
            if now >= deadline {
                return pending
                    .into_iter()
                    .map(|i| {
                        give_up(
                            &mut self.workers[i],
                            format!(
                                "no acknowledgement within {} s; restarted",
                                ACK_TIMEOUT.as_secs()
                            ),
                        )
                    })
                    .collect();
            }
            let ready = {
                let fds: Vec<BorrowedFd<'_>> = pending
                    .iter()
                    .filter_map(|&i| self.workers[i].channel_fd())
                    .collect();
                sys::poll_readable(&fds, deadline - now)
            };
            let mut out = Vec::new();
            for (k, readable) in ready.into_iter().enumerate() {
                if !readable {
                    continue;
                }
                let w = &mut self.workers[pending[k]];
                match w.channel.as_ref().map(|c| c.try_recv(&mut buf)) {
                    Some(Ok(Some(_fds))) => handle_message(w, &buf, shm),
                    Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Some(Ok(None)) | Some(Err(_)) => {
                        out.push(give_up(w, "died during the reload; restarted".into()))
                    }
                    None => {}
                }
            }
            if !out.is_empty() {
                return out
                    .into_iter()
                    .chain(self.wait_acks(generation, shm))
                    .collect();
            }
        }
    }
}

fn handle_message(w: &mut Worker, buf: &[u8], shm: &Table) {
    let was = w.phase;
    match FromWorker::decode(buf) {
        Ok(FromWorker::Ack { generation, .. }) => {
            w.acked = w.acked.max(generation);
            if w.phase == Phase::Starting && w.acked >= w.needs {
                w.phase = Phase::Ready;
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
            )
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
}

fn send(w: &Worker, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    match &w.channel {
        Some(ch) => ch.send(bytes, fds),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "worker not running",
        )),
    }
}

/// Send `Add` messages in batches the kernel accepts (at most MAX_FDS_PER_MESSAGE fds each).
fn send_adds(
    w: &Worker,
    generation: u64,
    adds: &[(SocketInfo, BorrowedFd<'_>)],
) -> std::io::Result<()> {
    for batch in adds.chunks(MAX_FDS_PER_MESSAGE) {
        let sockets: Vec<SocketInfo> = batch.iter().map(|(i, _)| i.clone()).collect();
        let fds: Vec<BorrowedFd<'_>> = batch.iter().map(|(_, fd)| *fd).collect();
        send(
            w,
            &ToWorker::Add {
                generation,
                sockets,
            }
            .encode(),
            &fds,
        )?;
    }
    Ok(())
}

/// Which metadata message [`send_infos`] sends.
#[derive(Clone, Copy)]
enum Infos {
    Update,
    Describe,
}

/// Send socket metadata in messages that fit MAX_MESSAGE_SIZE (TLS material makes entries big:
/// a batch that does not fit is halved until it does).
fn send_infos(
    w: &Worker,
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
        send(w, &bytes, &[])?;
        rest = &rest[n..];
    }
    Ok(())
}

fn kill(w: &mut Worker) {
    if let Some(pid) = w.pid() {
        sys::kill(pid, Signal::SIGKILL);
    }
    // The channel goes now so nothing more is sent to it; reap() sees the exit and restarts it.
    w.channel = None;
}

fn give_up(w: &mut Worker, what: String) -> WorkerOutcome {
    warn!("{} worker {}: {what}", w.kind, w.rank);
    kill(w);
    WorkerOutcome {
        kind: w.kind,
        rank: w.rank,
        what,
    }
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
