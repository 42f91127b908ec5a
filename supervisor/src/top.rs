//! `sipsockd top`: a live view of the shared table in the terminal (ratatui over crossterm).
//!
//! It maps the table read-only ([`shm::Reader`]), so it works as any user who can read the file,
//! and never talks to the daemon. Every refresh (1 s by default) it takes a snapshot; rates are
//! the counters' growth since the previous one. Sockets show their rates (received, replied,
//! dropped per second), state, tag and open connections; workers their rates, busy share and
//! restarts; the header the last reload's result and duration.
//!
//! Keys: `s` next sort column, `r` reverse, `/` filter (typed text, Enter to keep, Esc to clear),
//! Up/Down/PageUp/PageDown scroll the sockets, `q` (or Ctrl-C) quits.
//!
//! The model ([`Model`]: rows from two snapshots, sort, filter) and the drawing are pure and
//! tested on a ratatui test backend; only [`run`] touches the terminal.

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::Frame;
use shm::{Reader, SlotState, Snapshot, WorkerState};
use std::cmp::Ordering;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Why `top` could not run.
#[derive(Debug, thiserror::Error)]
pub enum TopError {
    /// The table could not be opened.
    #[error("{0}")]
    Shm(#[from] shm::ShmError),
    /// The terminal could not be driven.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// The socket columns `s` cycles through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Slot index.
    Slot,
    /// Received per second.
    Rate,
    /// Messages received in all.
    Received,
    /// Socket text.
    Socket,
    /// State.
    State,
    /// Tag.
    Tag,
}

impl SortKey {
    const ORDER: [SortKey; 6] = [
        SortKey::Slot,
        SortKey::Rate,
        SortKey::Received,
        SortKey::Socket,
        SortKey::State,
        SortKey::Tag,
    ];

    fn next(self) -> SortKey {
        let i = Self::ORDER.iter().position(|k| *k == self).unwrap_or(0);
        Self::ORDER[(i + 1) % Self::ORDER.len()]
    }

    fn name(self) -> &'static str {
        match self {
            SortKey::Slot => "slot",
            SortKey::Rate => "rx/s",
            SortKey::Received => "received",
            SortKey::Socket => "socket",
            SortKey::State => "state",
            SortKey::Tag => "tag",
        }
    }
}

/// One socket line.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketRow {
    /// Slot index.
    pub slot: u32,
    /// The row's socket text.
    pub socket: String,
    /// State.
    pub state: SlotState,
    /// Tag.
    pub tag: String,
    /// Received, replied, dropped per second (`None` before a second snapshot).
    pub rates: Option<[f64; 3]>,
    /// Received in all.
    pub received: u64,
    /// Open connections (stream sockets).
    pub connections: i64,
}

/// One worker line.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// `udp` or `stream`.
    pub kind: &'static str,
    /// Rank.
    pub rank: u32,
    /// Pid (0: none).
    pub pid: u32,
    /// State.
    pub state: WorkerState,
    /// Received, replied, dropped per second.
    pub rates: Option<[f64; 3]>,
    /// Share of the last interval spent busy, 0-1.
    pub busy: Option<f64>,
    /// Restarts.
    pub restarts: u32,
}

/// What the screen shows: the last snapshot, rows with rates, and the view settings.
#[derive(Debug)]
pub struct Model {
    /// The table's path.
    pub path: PathBuf,
    /// The last snapshot.
    pub snap: Snapshot,
    /// Socket rows, sorted and filtered.
    pub sockets: Vec<SocketRow>,
    /// Worker rows.
    pub workers: Vec<WorkerRow>,
    /// Sort column.
    pub sort: SortKey,
    /// Reverse order.
    pub reverse: bool,
    /// Filter text (case-insensitive, on socket, state, tag).
    pub filter: String,
    /// Typing the filter.
    pub editing: bool,
    /// First socket row shown.
    pub scroll: usize,
    /// Refresh interval.
    pub interval: Duration,
    /// Every socket row of the last snapshot, before sort and filter.
    all: Vec<SocketRow>,
    prev: Option<(Snapshot, Instant)>,
}

/// Per-second growth of `now` over `before` in `secs` (a counter that went down restarted: none).
fn rate(before: u64, now: u64, secs: f64) -> Option<f64> {
    (now >= before && secs > 0.0).then(|| (now - before) as f64 / secs)
}

fn rates3(before: [u64; 3], now: [u64; 3], secs: f64) -> Option<[f64; 3]> {
    Some([
        rate(before[0], now[0], secs)?,
        rate(before[1], now[1], secs)?,
        rate(before[2], now[2], secs)?,
    ])
}

impl Model {
    /// A model of its first snapshot (no rates yet).
    pub fn new(path: PathBuf, snap: Snapshot, at: Instant, interval: Duration) -> Model {
        let mut m = Model {
            path,
            snap: snap.clone(),
            sockets: Vec::new(),
            workers: Vec::new(),
            sort: SortKey::Slot,
            reverse: false,
            filter: String::new(),
            editing: false,
            scroll: 0,
            interval,
            all: Vec::new(),
            prev: None,
        };
        m.update(snap, at);
        m
    }

    /// Takes a new snapshot: rates against the previous one.
    pub fn update(&mut self, snap: Snapshot, at: Instant) {
        let prev = self.prev.take();
        let secs = prev
            .as_ref()
            .map_or(0.0, |(_, t)| at.saturating_duration_since(*t).as_secs_f64());
        let old = prev.as_ref().map(|(s, _)| s);
        self.all = snap
            .slots
            .iter()
            .map(|s| {
                let before = old.and_then(|o| {
                    o.slots
                        .iter()
                        .find(|p| p.index == s.index && p.socket == s.socket)
                });
                SocketRow {
                    slot: s.index,
                    socket: s.socket.clone(),
                    state: s.state,
                    tag: s.tag.clone(),
                    rates: before.and_then(|b| {
                        rates3(
                            [b.received, b.replied, b.dropped],
                            [s.received, s.replied, s.dropped],
                            secs,
                        )
                    }),
                    received: s.received,
                    connections: s.connections,
                }
            })
            .collect();
        self.workers = snap
            .workers
            .iter()
            .map(|w| {
                let before = old.and_then(|o| {
                    o.workers
                        .iter()
                        .find(|p| p.kind == w.kind && p.rank == w.rank && p.pid == w.pid)
                });
                WorkerRow {
                    kind: w.kind.as_str(),
                    rank: w.rank,
                    pid: w.pid,
                    state: w.state,
                    rates: before.and_then(|b| {
                        rates3(
                            [b.received, b.replied, b.dropped],
                            [w.received, w.replied, w.dropped],
                            secs,
                        )
                    }),
                    busy: before
                        .and_then(|b| rate(b.busy_ns, w.busy_ns, secs))
                        .map(|ns| (ns / 1e9).min(1.0)),
                    restarts: w.restarts,
                }
            })
            .collect();
        self.snap = snap.clone();
        self.prev = Some((snap, at));
        self.refilter();
    }

    /// Applies a key; false when it means quit.
    pub fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> bool {
        if code == KeyCode::Char('c') && modifiers.contains(KeyModifiers::CONTROL) {
            return false;
        }
        if self.editing {
            match code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
        } else {
            match code {
                KeyCode::Char('q') => return false,
                KeyCode::Char('s') => self.sort = self.sort.next(),
                KeyCode::Char('r') => self.reverse = !self.reverse,
                KeyCode::Char('/') => self.editing = true,
                KeyCode::Esc => self.filter.clear(),
                KeyCode::Down => self.scroll = self.scroll.saturating_add(1),
                KeyCode::Up => self.scroll = self.scroll.saturating_sub(1),
                KeyCode::PageDown => self.scroll = self.scroll.saturating_add(10),
                KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(10),
                _ => {}
            }
        }
        self.refilter();
        true
    }

    /// The rows shown: filtered, sorted, scroll kept in range.
    fn refilter(&mut self) {
        let filter = self.filter.to_lowercase();
        self.sockets = self
            .all
            .iter()
            .filter(|r| {
                filter.is_empty()
                    || [r.socket.as_str(), r.state.as_str(), r.tag.as_str()]
                        .iter()
                        .any(|f| f.to_lowercase().contains(&filter))
            })
            .cloned()
            .collect();
        sort(&mut self.sockets, self.sort, self.reverse);
        self.scroll = self.scroll.min(self.sockets.len().saturating_sub(1));
    }
}

fn sort(rows: &mut [SocketRow], key: SortKey, reverse: bool) {
    let rx = |r: &SocketRow| r.rates.map_or(-1.0, |r| r[0]);
    rows.sort_by(|a, b| {
        let o = match key {
            SortKey::Slot => a.slot.cmp(&b.slot),
            // Busiest first unless reversed.
            SortKey::Rate => rx(b).partial_cmp(&rx(a)).unwrap_or(Ordering::Equal),
            SortKey::Received => b.received.cmp(&a.received),
            SortKey::Socket => a.socket.cmp(&b.socket),
            SortKey::State => a.state.as_str().cmp(b.state.as_str()),
            SortKey::Tag => a.tag.cmp(&b.tag),
        };
        o.then(a.slot.cmp(&b.slot))
    });
    if reverse {
        rows.reverse();
    }
}

fn per_second(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 10_000.0 => format!("{:.1}k", v / 1000.0),
        Some(v) => format!("{v:.0}"),
    }
}

fn ago(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

/// Draws the model.
pub fn draw(frame: &mut Frame, m: &Model) {
    let [head, sockets, workers, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Fill(2),
        Constraint::Length((m.workers.len() as u16).saturating_add(3).min(14)),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_head(frame, head, m);
    draw_sockets(frame, sockets, m);
    draw_workers(frame, workers, m);
    let filter = if m.editing {
        format!("/{}_", m.filter)
    } else if m.filter.is_empty() {
        "/ filter".into()
    } else {
        format!("/ filter: {} (Esc clears)", m.filter)
    };
    let help = format!(
        " q quit   s sort: {}{}   r reverse   {filter}   ↑↓ scroll",
        m.sort.name(),
        if m.reverse { " (reversed)" } else { "" }
    );
    frame.render_widget(Paragraph::new(help).reversed(), foot);
}

fn draw_head(frame: &mut Frame, area: Rect, m: &Model) {
    let s = &m.snap;
    let up = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(s.start_time);
    let first = if s.stale {
        Line::from(format!(
            "STALE: supervisor pid {} is gone; this is what it left in {}",
            s.pid,
            m.path.display()
        ))
        .style(Style::new().fg(Color::Red).add_modifier(Modifier::BOLD))
    } else {
        Line::from(format!(
            "sipsockd {} · supervisor pid {} · up {}h{:02}m{:02}s · generation {} · every {:?}",
            m.path.display(),
            s.pid,
            up / 3600,
            up / 60 % 60,
            up % 60,
            s.generation,
            m.interval
        ))
        .bold()
    };
    let r = &s.reloads;
    let last = match r.last_status {
        0 => "none yet".to_string(),
        200 => format!(
            "OK in {:.1} ms, {}",
            r.last_duration_us as f64 / 1e3,
            ago(r.last_at_ms)
        ),
        code => format!(
            "FAILED ({code}) after {:.1} ms, {}",
            r.last_duration_us as f64 / 1e3,
            ago(r.last_at_ms)
        ),
    };
    let open: u64 = s.workers.iter().map(|w| w.connections).sum();
    let second = Line::from(format!(
        "last reload: {last} · reloads {} ({} failed) · slots {}/{} · connections {open} open, {} refused",
        r.count,
        r.failures,
        s.slots.len(),
        s.max_sockets,
        s.connections_refused
    ));
    let second = if r.last_status != 0 && r.last_status != 200 {
        second.style(Style::new().fg(Color::Yellow))
    } else {
        second
    };
    frame.render_widget(Paragraph::new(vec![first, second]), area);
}

fn draw_sockets(frame: &mut Frame, area: Rect, m: &Model) {
    let header = Row::new([
        "slot",
        "socket",
        "state",
        "tag",
        "rx/s",
        "replied/s",
        "dropped/s",
        "received",
        "conns",
    ])
    .bold();
    let rows = m.sockets.iter().skip(m.scroll).map(|r| {
        let [rx, tx, drop] = r.rates.map_or([None; 3], |v| v.map(Some));
        let style = match r.state {
            SlotState::Active => Style::new(),
            SlotState::Error => Style::new().fg(Color::Red),
            _ => Style::new().fg(Color::Yellow),
        };
        Row::new([
            r.slot.to_string(),
            r.socket.clone(),
            r.state.as_str().to_string(),
            r.tag.clone(),
            per_second(rx),
            per_second(tx),
            per_second(drop),
            r.received.to_string(),
            if r.connections > 0 {
                r.connections.to_string()
            } else {
                String::new()
            },
        ])
        .style(style)
    });
    let title = format!(
        " sockets: {} shown of {} ",
        m.sockets.len(),
        m.snap.slots.len()
    );
    let table = Table::new(
        rows,
        [
            Constraint::Length(5),
            Constraint::Fill(3),
            Constraint::Length(7),
            Constraint::Fill(1),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(6),
        ],
    )
    .header(header)
    .block(Block::bordered().title(title));
    frame.render_widget(table, area);
}

fn draw_workers(frame: &mut Frame, area: Rect, m: &Model) {
    let header = Row::new([
        "worker",
        "pid",
        "state",
        "rx/s",
        "replied/s",
        "dropped/s",
        "busy",
        "restarts",
    ])
    .bold();
    let rows = m.workers.iter().map(|w| {
        let [rx, tx, drop] = w.rates.map_or([None; 3], |v| v.map(Some));
        Row::new([
            format!("{} {}", w.kind, w.rank),
            w.pid.to_string(),
            w.state.as_str().to_string(),
            per_second(rx),
            per_second(tx),
            per_second(drop),
            w.busy.map_or("-".into(), |b| format!("{:.0}%", b * 100.0)),
            w.restarts.to_string(),
        ])
        .style(if w.state == WorkerState::Ready {
            Style::new()
        } else {
            Style::new().fg(Color::Yellow)
        })
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(6),
            Constraint::Length(9),
        ],
    )
    .header(header)
    .block(Block::bordered().title(" workers "));
    frame.render_widget(table, area);
}

/// The inode of the file at `path` (a restarted daemon replaces the file).
fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Runs the view on the terminal until `q`.
pub fn run(path: &Path, interval: Duration) -> Result<(), TopError> {
    let mut reader = Reader::open(path)?;
    let mut ino = inode(path);
    let mut model = Model::new(
        path.to_path_buf(),
        reader.snapshot(),
        Instant::now(),
        interval,
    );
    let mut terminal = ratatui::try_init()?;
    let result = (|| -> Result<(), TopError> {
        let mut next = Instant::now() + interval;
        loop {
            terminal.draw(|f| draw(f, &model))?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    if k.kind != KeyEventKind::Release && !model.key(k.code, k.modifiers) {
                        return Ok(());
                    }
                }
                continue;
            }
            next = Instant::now() + interval;
            // A restarted daemon made a new file: follow it.
            let now_ino = inode(path);
            if now_ino.is_some() && now_ino != ino {
                if let Ok(r) = Reader::open(path) {
                    reader = r;
                    ino = now_ino;
                }
            }
            model.update(reader.snapshot(), Instant::now());
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use shm::{Proto, SlotData, Table};

    struct Fixture {
        dir: PathBuf,
        table: Option<Table>,
        path: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sipsockd-top-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("t.shm");
            let table = Table::create(&path, 8, 1, 1, 0).unwrap();
            for (socket, tag) in [
                ("udp:127.0.0.1:5060", "alpha"),
                ("udp:127.0.0.1:5061", "beta"),
            ] {
                table
                    .occupy(&SlotData {
                        state: SlotState::Active,
                        socket: socket.into(),
                        proto: Some(Proto::Udp),
                        address: socket[4..].into(),
                        tag: tag.into(),
                        ..Default::default()
                    })
                    .unwrap();
            }
            Fixture {
                dir,
                table: Some(table),
                path,
            }
        }

        fn snap(&self) -> Snapshot {
            Reader::open(&self.path).unwrap().snapshot()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            if let Some(t) = self.table.take() {
                let _ = t.remove();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn screen(m: &Model) -> String {
        let mut t = Terminal::new(TestBackend::new(140, 30)).unwrap();
        t.draw(|f| draw(f, m)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    /// A snapshot with some traffic counted on slot 1 (as a worker would, through the record).
    fn with_traffic(mut s: Snapshot, slot: u32, received: u64) -> Snapshot {
        for sl in &mut s.slots {
            if sl.index == slot {
                sl.received += received;
                sl.replied += received;
            }
        }
        s.workers[0].received += received;
        s.workers[0].busy_ns += 250_000_000;
        s
    }

    #[test]
    fn rates_come_from_two_snapshots() {
        let f = Fixture::new();
        let t0 = Instant::now();
        let mut m = Model::new(f.path.clone(), f.snap(), t0, Duration::from_secs(1));
        assert!(m.sockets.iter().all(|r| r.rates.is_none()));
        m.update(with_traffic(f.snap(), 1, 500), t0 + Duration::from_secs(2));
        let r1 = m.sockets.iter().find(|r| r.slot == 1).unwrap();
        assert_eq!(r1.rates, Some([250.0, 250.0, 0.0]));
        let r0 = m.sockets.iter().find(|r| r.slot == 0).unwrap();
        assert_eq!(r0.rates, Some([0.0, 0.0, 0.0]));
        assert_eq!(m.workers[0].rates, Some([250.0, 0.0, 0.0]));
        assert_eq!(m.workers[0].busy, Some(0.125));
        let text = screen(&m);
        assert!(text.contains("udp:127.0.0.1:5061"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.contains("5061") && l.contains(" 250 ")),
            "{text}"
        );
        assert!(text.contains("last reload: none yet"), "{text}");
        // A counter that went down (slot reused) has no rate.
        m.update(f.snap(), t0 + Duration::from_secs(3));
        assert_eq!(m.sockets.iter().find(|r| r.slot == 1).unwrap().rates, None);
    }

    #[test]
    fn keys_sort_filter_and_quit() {
        let f = Fixture::new();
        let t0 = Instant::now();
        let mut m = Model::new(f.path.clone(), f.snap(), t0, Duration::from_secs(1));
        m.update(with_traffic(f.snap(), 1, 100), t0 + Duration::from_secs(1));
        let none = KeyModifiers::NONE;
        assert_eq!(m.sockets[0].slot, 0);
        assert!(m.key(KeyCode::Char('s'), none));
        assert_eq!(m.sort, SortKey::Rate);
        assert_eq!(m.sockets[0].slot, 1, "busiest first");
        assert_eq!(m.sockets[0].rates, Some([100.0, 100.0, 0.0]), "rates kept");
        assert!(m.key(KeyCode::Char('r'), none));
        assert_eq!(m.sockets[0].slot, 0);
        for c in "/ALPHA".chars() {
            assert!(m.key(KeyCode::Char(c), none));
        }
        assert!(m.editing);
        assert!(m.key(KeyCode::Enter, none));
        assert_eq!(m.sockets.len(), 1);
        assert_eq!(m.sockets[0].tag, "alpha");
        let text = screen(&m);
        assert!(
            text.contains("1 shown of 2") && !text.contains("5061"),
            "{text}"
        );
        assert!(m.key(KeyCode::Esc, none));
        assert_eq!(m.sockets.len(), 2);
        assert!(!m.key(KeyCode::Char('q'), none));
        assert!(!m.key(KeyCode::Char('c'), KeyModifiers::CONTROL));
    }

    #[test]
    fn a_failed_reload_and_a_stale_table_show() {
        let f = Fixture::new();
        if let Some(t) = &f.table {
            t.record_reload(500, Duration::from_millis(12), 0);
        }
        let mut s = f.snap();
        let m = Model::new(
            f.path.clone(),
            s.clone(),
            Instant::now(),
            Duration::from_secs(1),
        );
        let text = screen(&m);
        assert!(text.contains("FAILED (500) after 12.0 ms"), "{text}");
        s.stale = true;
        let m = Model::new(f.path.clone(), s, Instant::now(), Duration::from_secs(1));
        assert!(screen(&m).contains("STALE: supervisor pid"));
    }
}
