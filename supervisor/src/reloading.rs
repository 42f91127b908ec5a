//! The reload as a state of the supervisor's loop, in the manner of Sozu's pending tasks: each
//! step sends what it has to send and returns; the answers are gathered as they arrive, with a
//! deadline; the loop keeps serving meanwhile.
//!
//! ```text
//!  Idle --ask--> Querying --rows--> Removing --all acked--> Applying --all acked--> Done (reply)
//!                 (db thread)    (phase 1 posted to      (binds, then the new fds and
//!                    |            every worker)           updates posted to EVERY worker
//!                    |                 |                  before any is waited for)
//!                    +-- no removal ---+------------------->
//! ```
//!
//! - **Querying**: the database thread (`db::thread`) reads and validates the table; a database
//!   error (500) or a refused table (400) ends the reload there, nothing touched.
//! - **Removing**: [`Sockets::stage`] took the removals out of the running set; `Remove` + `Commit`
//!   went to every live worker; acknowledgements are gathered ([`Pool::gather`]) until all came or
//!   [`ACK_TIMEOUT`] passed (the silent ones are killed and restart with the whole set). Then the
//!   removed sockets are closed, so their ports are free for this reload's binds.
//! - **Applying**: binds and in-place updates, then `Add`s (fds), `Update`s, `Describe`s and a
//!   `Commit` to every worker at once; gathered the same way; then [`Sockets::commit`].
//! - **Done**: the reply (`"OK"` only when everything asked runs, see
//!   [`methods::reload_reply`]) goes to every asker of this reload.
//!
//! Reloads asked while one is in progress wait, in order; when it ends, ONE new reload starts for
//! all of them (it began after each was asked, so it answers each truly) and each gets its reply
//! in the order they asked. An asker is whatever the loop needs to answer (an MI request from the
//! FIFO or another transport, SIGHUP, the initial load): this module never replies itself.

use crate::config::Tls as TlsConfig;
use crate::db::thread::{DbThread, Loaded};
use crate::mi::methods::{self, Reloaded};
use crate::mi::RpcError;
use crate::pool::{Pool, Waiting, WorkerOutcome, ACK_TIMEOUT};
use crate::reload::{Changes, Report, Sockets, Staged};
use crate::row::RowError;
use log::warn;
use serde_json::Value;
use shm::Table;
use std::time::{Duration, Instant};

/// What a reload step works on, lent by the loop for the step.
pub struct Ctx<'a> {
    /// The running set.
    pub sockets: &'a mut Sockets,
    /// The workers.
    pub pool: &'a mut Pool,
    /// The shared table.
    pub shm: &'a Table,
    /// Where TLS material is read from.
    pub tls: &'a TlsConfig,
    /// The database's thread.
    pub db: &'a mut DbThread,
}

/// A reload that ended: who asked it, and the reply.
#[derive(Debug)]
pub struct Finished<A> {
    /// Every asker, in the order they asked.
    pub askers: Vec<A>,
    /// The reply, the same for each.
    pub result: Result<Value, RpcError>,
    /// The table was applied (possibly with failures); false when nothing was changed (database
    /// error, refused table).
    pub applied: bool,
    /// From the start of its query to its reply.
    pub took: Duration,
}

impl<A> Finished<A> {
    /// The MI status of the reply: 200 for "OK", else the error's code.
    pub fn status(&self) -> u32 {
        match &self.result {
            Ok(_) => 200,
            Err(e) => u32::try_from(e.code).unwrap_or(500),
        }
    }
}

/// The step a reload is at.
#[derive(Debug)]
enum Step {
    /// Waiting for the database thread.
    Querying,
    /// Phase 1 posted; gathering its acknowledgements.
    Removing {
        staged: Staged,
        waiting: Waiting,
        deadline: Instant,
    },
    /// Phase 2 posted; gathering its acknowledgements.
    Applying {
        staged: Staged,
        generation: u64,
        waiting: Waiting,
        deadline: Instant,
    },
}

/// The reload in progress.
#[derive(Debug)]
struct Current<A> {
    askers: Vec<A>,
    began: Instant,
    step: Step,
    /// Bad rows left out (`invalid_rows = "skip"`).
    skipped: Vec<RowError>,
    /// Workers restarted during it, entries refused.
    workers: Vec<WorkerOutcome>,
}

/// The loop's reload state: the one in progress, and the askers waiting for the next.
#[derive(Debug)]
pub struct Reloading<A> {
    current: Option<Current<A>>,
    waiting: Vec<A>,
}

impl<A> Default for Reloading<A> {
    fn default() -> Self {
        Reloading {
            current: None,
            waiting: Vec::new(),
        }
    }
}

impl<A> Reloading<A> {
    /// Ask for a reload; it starts at the next [`Reloading::turn`] (or after the one in progress).
    pub fn ask(&mut self, asker: A) {
        self.waiting.push(asker);
    }

    /// How many askers wait for the next reload.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// True while a reload is in progress or asked for.
    pub fn is_busy(&self) -> bool {
        self.current.is_some() || !self.waiting.is_empty()
    }

    /// The step of the reload in progress, for logs and status.
    pub fn step(&self) -> Option<&'static str> {
        self.current.as_ref().map(|c| match c.step {
            Step::Querying => "querying",
            Step::Removing { .. } => "removing",
            Step::Applying { .. } => "applying",
        })
    }

    /// When the step in progress gives up waiting on workers, if it waits on any.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.current.as_ref()?.step {
            Step::Removing { deadline, .. } | Step::Applying { deadline, .. } => Some(*deadline),
            Step::Querying => None,
        }
    }

    /// Move the reload on as far as it goes without waiting: start the next one, take the
    /// database's answer, gather acknowledgements, post the next phase. Returns the reload that
    /// ended, if one did. Call it on every turn of the loop (and after the database thread woke
    /// it); it is cheap when nothing happened (O(workers)).
    pub fn turn(&mut self, ctx: &mut Ctx<'_>, now: Instant) -> Option<Finished<A>> {
        let refusals = ctx.pool.take_refusals();
        if self.current.is_none() {
            // Logged when they came; outside a reload they belong to a worker's start.
            drop(refusals);
            if self.waiting.is_empty() {
                return None;
            }
            let askers = std::mem::take(&mut self.waiting);
            let current = Current {
                askers,
                began: now,
                step: Step::Querying,
                skipped: Vec::new(),
                workers: Vec::new(),
            };
            if let Err(e) = ctx.db.load() {
                let result = methods::reload_reply(Reloaded::Database(&format!(
                    "cannot reach the database thread: {e}"
                )));
                return Some(finish(current, result, false, now));
            }
            self.current = Some(current);
            return None;
        }
        let mut current = self.current.take()?;
        if let Step::Applying { generation, .. } = &current.step {
            let generation = *generation;
            current.workers.extend(
                refusals
                    .into_iter()
                    .filter(|r| r.generation == generation)
                    .map(|r| WorkerOutcome {
                        kind: r.kind,
                        rank: r.rank,
                        pid: r.pid,
                        slot: Some(r.slot),
                        what: r.reason,
                    }),
            );
        }
        let step = std::mem::replace(&mut current.step, Step::Querying);
        match step {
            Step::Querying => match ctx.db.take() {
                None => {
                    current.step = Step::Querying;
                    self.current = Some(current);
                    None
                }
                Some(loaded) => self.rows(current, loaded, ctx, now),
            },
            Step::Removing {
                mut staged,
                mut waiting,
                deadline,
            } => {
                current
                    .workers
                    .extend(ctx.pool.gather(&mut waiting, deadline, now));
                if !waiting.is_done() {
                    current.step = Step::Removing {
                        staged,
                        waiting,
                        deadline,
                    };
                    self.current = Some(current);
                    return None;
                }
                ctx.sockets.release(&mut staged, ctx.shm);
                self.apply(current, staged, ctx, now)
            }
            Step::Applying {
                staged,
                generation,
                mut waiting,
                deadline,
            } => {
                current
                    .workers
                    .extend(ctx.pool.gather(&mut waiting, deadline, now));
                if !waiting.is_done() {
                    current.step = Step::Applying {
                        staged,
                        generation,
                        waiting,
                        deadline,
                    };
                    self.current = Some(current);
                    return None;
                }
                // Refusals that came with the last acknowledgements.
                current.workers.extend(
                    ctx.pool
                        .take_refusals()
                        .into_iter()
                        .filter(|r| r.generation == generation)
                        .map(|r| WorkerOutcome {
                            kind: r.kind,
                            rank: r.rank,
                            pid: r.pid,
                            slot: Some(r.slot),
                            what: r.reason,
                        }),
                );
                let report = ctx.sockets.commit(staged, ctx.shm);
                Some(self.applied(current, report, now))
            }
        }
    }

    /// The database answered.
    fn rows(
        &mut self,
        mut current: Current<A>,
        loaded: Loaded,
        ctx: &mut Ctx<'_>,
        now: Instant,
    ) -> Option<Finished<A>> {
        let v = match loaded {
            Ok(v) => v,
            Err(e) => {
                let result = methods::reload_reply(Reloaded::Database(&e));
                return Some(finish(current, result, false, now));
            }
        };
        if v.refused {
            let result = methods::reload_reply(Reloaded::Refused(&v.errors));
            return Some(finish(current, result, false, now));
        }
        current.skipped = v.errors;
        let staged = ctx.sockets.stage(v.defs, ctx.tls);
        if staged.changes_nothing() {
            let report = ctx.sockets.commit(staged, ctx.shm);
            return Some(self.applied(current, report, now));
        }
        if let Some(removal) = staged.removal().cloned() {
            let (waiting, restarted) =
                ctx.pool
                    .post_remove(removal.generation, &removal.udp, &removal.stream);
            current.workers.extend(restarted);
            current.step = Step::Removing {
                staged,
                waiting,
                deadline: now + ACK_TIMEOUT,
            };
            self.current = Some(current);
            // Workers may all be gone: gather at once rather than on the next turn.
            return self.turn(ctx, now);
        }
        self.apply(current, staged, ctx, now)
    }

    /// Phase 2: binds, then every worker is posted the new sockets before any is waited for.
    fn apply(
        &mut self,
        mut current: Current<A>,
        mut staged: Staged,
        ctx: &mut Ctx<'_>,
        now: Instant,
    ) -> Option<Finished<A>> {
        let changes: Changes = ctx.sockets.bind(&mut staged, ctx.tls, ctx.shm);
        let adds = ctx.sockets.udp_fds(&changes);
        let (waiting, restarted) = ctx.pool.post_apply(
            changes.generation,
            &adds,
            &changes.udp_updates,
            &changes.stream,
        );
        current.workers.extend(restarted);
        current.step = Step::Applying {
            staged,
            generation: changes.generation,
            waiting,
            deadline: now + ACK_TIMEOUT,
        };
        self.current = Some(current);
        self.turn(ctx, now)
    }

    fn applied(&mut self, current: Current<A>, mut report: Report, now: Instant) -> Finished<A> {
        report.workers = current.workers.clone();
        for w in &report.workers {
            warn!(
                "reload generation {}: {} worker {}: {}",
                report.generation, w.kind, w.rank, w.what
            );
        }
        let result = methods::reload_reply(Reloaded::Applied {
            skipped: &current.skipped,
            failures: &report.failures,
            kept: &report.kept,
            workers: &report.workers,
        });
        finish(current, result, true, now)
    }
}

fn finish<A>(
    current: Current<A>,
    result: Result<Value, RpcError>,
    applied: bool,
    now: Instant,
) -> Finished<A> {
    Finished {
        askers: current.askers,
        result,
        applied,
        took: now.saturating_duration_since(current.began),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SocketsMgm;
    use crate::db::Database;
    use crate::row::RawRow;
    use mio::{Events, Poll, Token, Waker};
    use serde_json::json;
    use std::sync::Arc;
    use worker::ipc::StreamSettings;

    /// The real pieces of a reload, without workers: a SQLite table, a shm table, the database
    /// thread, an empty pool.
    struct Bench {
        dir: std::path::PathBuf,
        shm: Option<Table>,
        sockets: Sockets,
        pool: Pool,
        db: DbThread,
        tls: TlsConfig,
        poll: Poll,
    }

    impl Bench {
        fn new(name: &str) -> Bench {
            let dir = std::env::temp_dir()
                .join(format!("sipsockd-reloading-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let cfg = SocketsMgm {
                db_url: format!("sqlite://{}", dir.join("s.db").display()),
                ..SocketsMgm::default()
            };
            let mut db = Database::create(&cfg).unwrap();
            db.init().unwrap();
            for port in free_ports(2) {
                db.insert(&RawRow {
                    socket: Some(format!("udp:127.0.0.1:{port}")),
                    ..Default::default()
                })
                .unwrap();
            }
            let shm_path = std::path::PathBuf::from(format!(
                "/dev/shm/sipsockd-reloading-{name}-{}",
                std::process::id()
            ));
            let shm = Table::create(&shm_path, 16, 0, 0, 0).unwrap();
            let poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), Token(3)).unwrap());
            Bench {
                dir,
                shm: Some(shm),
                sockets: Sockets::default(),
                pool: Pool::new(0, 0, 200, "OK".into(), StreamSettings::default()),
                db: DbThread::spawn(Some(db), cfg, waker).unwrap(),
                tls: TlsConfig::default(),
                poll,
            }
        }

        /// Turn until a reload ends (waiting on the database thread's wake-ups, bounded).
        fn run(&mut self, r: &mut Reloading<u32>) -> Finished<u32> {
            let mut events = Events::with_capacity(4);
            for _ in 0..200 {
                let mut ctx = Ctx {
                    sockets: &mut self.sockets,
                    pool: &mut self.pool,
                    shm: self.shm.as_ref().unwrap(),
                    tls: &self.tls,
                    db: &mut self.db,
                };
                if let Some(f) = r.turn(&mut ctx, Instant::now()) {
                    return f;
                }
                self.poll
                    .poll(&mut events, Some(Duration::from_millis(100)))
                    .unwrap();
            }
            panic!("no reload ended");
        }
    }

    impl Drop for Bench {
        fn drop(&mut self) {
            if let Some(shm) = self.shm.take() {
                let _ = shm.remove();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn free_ports(n: usize) -> Vec<u16> {
        let held: Vec<std::net::UdpSocket> = (0..n)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        held.iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect()
    }

    #[test]
    fn reloads_asked_during_one_wait_and_are_answered_in_order_by_one_more() {
        let mut b = Bench::new("queue");
        let mut r: Reloading<u32> = Reloading::default();
        assert!(!r.is_busy());
        r.ask(1);
        assert!(r.is_busy());
        // The first turn starts it (the query is on the database thread).
        let mut ctx = Ctx {
            sockets: &mut b.sockets,
            pool: &mut b.pool,
            shm: b.shm.as_ref().unwrap(),
            tls: &b.tls,
            db: &mut b.db,
        };
        assert!(r.turn(&mut ctx, Instant::now()).is_none());
        assert_eq!(r.step(), Some("querying"));
        r.ask(2);
        r.ask(3);
        let first = b.run(&mut r);
        assert_eq!(first.askers, vec![1]);
        assert_eq!(first.result, Ok(json!("OK")));
        assert!(first.applied);
        assert_eq!(first.status(), 200);
        assert_eq!(b.sockets.len(), 2);
        assert!(r.is_busy(), "two wait");
        let second = b.run(&mut r);
        assert_eq!(second.askers, vec![2, 3], "one reload for both, in order");
        assert_eq!(second.result, Ok(json!("OK")));
        assert!(!r.is_busy());
        assert_eq!(r.step(), None);
    }

    #[test]
    fn a_database_error_ends_the_reload_with_500_and_touches_nothing() {
        let mut b = Bench::new("dberror");
        let mut r: Reloading<u32> = Reloading::default();
        r.ask(1);
        assert!(b.run(&mut r).applied);
        let before = b.sockets.len();
        rusqlite::Connection::open(b.dir.join("s.db"))
            .unwrap()
            .execute_batch("ALTER TABLE sockets RENAME TO gone")
            .unwrap();
        r.ask(2);
        let f = b.run(&mut r);
        assert!(!f.applied);
        assert_eq!(f.status(), 500);
        assert!(f
            .result
            .unwrap_err()
            .message
            .starts_with("Could not reload sockets: table sockets"),);
        assert_eq!(b.sockets.len(), before);
    }
}
