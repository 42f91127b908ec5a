//! The database's own thread: it owns the connection, runs the one query of a reload and
//! validates the rows (row parsing, host resolution), so the event loop never waits on the
//! database or on DNS.
//!
//! The loop sends a [`Job`] over a crossbeam channel; the thread answers with the validated table
//! (or the [`DbError`]) over another and wakes the loop with a mio [`Waker`]. One job runs at a
//! time (the loop sends the next only after taking the answer). A connection that failed is
//! dropped and opened again at the next job, as before. The thread never touches the loop's
//! state; dropping the [`DbThread`] ends it after its current job (the process may exit first: a
//! query held by a lock is not waited for).

use super::{Database, DbError};
use crate::config::SocketsMgm;
use crate::row::{validate_table, SystemResolver, Validated};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::Waker;
use std::sync::Arc;
use std::thread::JoinHandle;

/// What the loop asks of the database thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Read the sockets table and validate it.
    Load,
}

/// What a [`Job::Load`] gave: the validated table, or why the table could not be read.
pub type Loaded = Result<Validated, DbError>;

/// The loop's handle on the database thread.
#[derive(Debug)]
pub struct DbThread {
    jobs: Sender<Job>,
    answers: Receiver<Loaded>,
    waker: Arc<Waker>,
    cfg: SocketsMgm,
    handle: Option<JoinHandle<()>>,
}

impl DbThread {
    /// Start the thread with `db` (already connected at start-up, or `None` to connect at the
    /// first job); each answer wakes the loop through `waker`.
    pub fn spawn(
        db: Option<Database>,
        cfg: SocketsMgm,
        waker: Arc<Waker>,
    ) -> std::io::Result<DbThread> {
        let (jobs, answers, handle) = start(db, cfg.clone(), waker.clone())?;
        Ok(DbThread {
            jobs,
            answers,
            waker,
            cfg,
            handle: Some(handle),
        })
    }

    /// Ask for a load; its answer comes through [`DbThread::take`] after a wake-up. A thread that
    /// ended (it cannot, short of a bug) is started again, connecting afresh.
    pub fn load(&mut self) -> std::io::Result<()> {
        if self.jobs.send(Job::Load).is_ok() {
            return Ok(());
        }
        log::error!("the database thread had ended; starting it again");
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let (jobs, answers, handle) = start(None, self.cfg.clone(), self.waker.clone())?;
        (self.jobs, self.answers, self.handle) = (jobs, answers, Some(handle));
        self.jobs
            .send(Job::Load)
            .map_err(|_| std::io::Error::other("the database thread ended at once"))
    }

    /// The answer to the last job, if it is there (never waits). `Some(Err)` with a
    /// [`DbError::Query`] when the thread ended without answering.
    pub fn take(&self) -> Option<Loaded> {
        match self.answers.try_recv() {
            Ok(a) => Some(a),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(DbError::Query {
                what: "reading the table".into(),
                url: self.cfg.db_url_redacted(),
                reason: "the database thread ended".into(),
            })),
        }
    }
}

fn start(
    db: Option<Database>,
    cfg: SocketsMgm,
    waker: Arc<Waker>,
) -> std::io::Result<(Sender<Job>, Receiver<Loaded>, JoinHandle<()>)> {
    // One job at a time: the loop sends the next only after taking the answer.
    let (jobs, job_rx) = crossbeam_channel::bounded::<Job>(4);
    let (answer_tx, answers) = crossbeam_channel::bounded::<Loaded>(4);
    let handle = std::thread::Builder::new()
        .name("sipsockd-db".into())
        .spawn(move || serve(db, cfg, job_rx, answer_tx, waker))?;
    Ok((jobs, answers, handle))
}

fn serve(
    mut db: Option<Database>,
    cfg: SocketsMgm,
    jobs: Receiver<Job>,
    answers: Sender<Loaded>,
    waker: Arc<Waker>,
) {
    while let Ok(Job::Load) = jobs.recv() {
        let loaded = load(&mut db, &cfg);
        if answers.send(loaded).is_err() {
            return;
        }
        if let Err(e) = waker.wake() {
            log::warn!("database thread: cannot wake the loop: {e}");
        }
    }
}

/// One load: connect when there is no connection, read, validate. A failed read drops the
/// connection (it may be what failed): the next load connects again.
fn load(db: &mut Option<Database>, cfg: &SocketsMgm) -> Loaded {
    if db.is_none() {
        *db = Some(Database::connect(cfg)?);
    }
    let Some(conn) = db.as_mut() else {
        unreachable!("connected above")
    };
    match conn.load_rows() {
        Ok(rows) => Ok(validate_table(
            &rows,
            cfg.max_sockets,
            cfg.invalid_rows,
            &SystemResolver,
        )),
        Err(e) => {
            *db = None;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    /// Ask for a load and wait (bounded) for its answer, which must come with a wake-up.
    fn load_and_wait(t: &mut DbThread, poll: &mut Poll) -> Loaded {
        t.load().unwrap();
        let mut events = Events::with_capacity(4);
        for _ in 0..100 {
            poll.poll(&mut events, Some(Duration::from_secs(1)))
                .unwrap();
            if let Some(a) = t.take() {
                assert!(events.iter().any(|e| e.token() == Token(3)), "no wake-up");
                return a;
            }
        }
        panic!("no answer from the database thread");
    }

    #[test]
    fn a_load_is_answered_from_the_thread_and_a_failed_one_reconnects_next_time() {
        let dir = std::env::temp_dir().join(format!("sipsockd-dbthread-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.db");
        let cfg = SocketsMgm {
            db_url: format!("sqlite://{}", path.display()),
            ..SocketsMgm::default()
        };
        let mut db = Database::create(&cfg).unwrap();
        db.init().unwrap();
        db.insert(&crate::row::RawRow {
            socket: Some("udp:127.0.0.1:5999".into()),
            ..Default::default()
        })
        .unwrap();
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(3)).unwrap());
        let mut t = DbThread::spawn(Some(db), cfg, waker).unwrap();
        let v = load_and_wait(&mut t, &mut poll).unwrap();
        assert!(!v.refused);
        assert_eq!(v.defs.len(), 1);
        assert_eq!(v.defs[0].port, 5999);

        let sql = |q: &str| {
            rusqlite::Connection::open(&path)
                .unwrap()
                .execute_batch(q)
                .unwrap()
        };
        sql("ALTER TABLE sockets RENAME TO elsewhere");
        let e = load_and_wait(&mut t, &mut poll).unwrap_err();
        assert!(matches!(e, DbError::TableMissing { .. }), "{e}");
        sql("ALTER TABLE elsewhere RENAME TO sockets");
        let v = load_and_wait(&mut t, &mut poll).unwrap();
        assert_eq!(v.defs.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
