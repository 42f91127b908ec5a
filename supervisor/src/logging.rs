//! Log lines on stderr, for every process of sipsockd (the CLI, the supervisor, its workers):
//! text or JSON (`--log-format`, `[general] log_format`), filtered by `RUST_LOG` (default `info`).
//!
//! Under systemd, when stderr is the journal stream that `JOURNAL_STREAM` names, a line starts
//! with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace) and has
//! no timestamp: journald stores each line at its level and stamps it itself.
//!
//! Workers are started by the supervisor with no configuration: [`init`] leaves the format in
//! the environment (`SIPSOCKD_LOG_FORMAT`) for them, and [`inherited_format`] reads it back.

use crate::config::LogFormat;
use log::Level;
use serde_json::json;
use std::io::Write;
use std::os::fd::AsRawFd;

/// The variable by which workers inherit the log format.
const FORMAT_VAR: &str = "SIPSOCKD_LOG_FORMAT";

/// The format a process started by the supervisor inherited (text when none).
pub fn inherited_format() -> LogFormat {
    std::env::var(FORMAT_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// Sets up the logger of this process. Call it once, first thing, while the process has only
/// one thread: it also sets `SIPSOCKD_LOG_FORMAT` for the processes it starts.
pub fn init(format: LogFormat) {
    std::env::set_var(FORMAT_VAR, format.as_str());
    let journal = journal_stream(std::env::var("JOURNAL_STREAM").ok().as_deref());
    let pid = std::process::id();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            let line = render(&Line {
                format,
                journal,
                now: jiff::Timestamp::now(),
                level: record.level(),
                target: record.target(),
                pid,
                message: &record.args().to_string(),
            });
            writeln!(buf, "{line}")
        })
        .init();
}

/// True when `JOURNAL_STREAM` (`DEVICE:INODE`) names this process's stderr: it writes to the
/// journal (a variable inherited by a process whose stderr was redirected does not count).
pub fn journal_stream(var: Option<&str>) -> bool {
    let Some((dev, ino)) = var.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr().as_raw_fd())
        .is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// One record to write.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    /// Text or JSON.
    pub format: LogFormat,
    /// Written to the journal: a priority prefix, no timestamp.
    pub journal: bool,
    /// When.
    pub now: jiff::Timestamp,
    /// Its level.
    pub level: Level,
    /// Its module.
    pub target: &'a str,
    /// The writing process.
    pub pid: u32,
    /// The message.
    pub message: &'a str,
}

/// The syslog priority of a level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The line of a record (without its newline).
pub fn render(l: &Line) -> String {
    let ts = || l.now.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    match (l.format, l.journal) {
        (LogFormat::Text, false) => {
            format!("[{} {:<5} {}] {}", ts(), l.level, l.target, l.message)
        }
        (LogFormat::Text, true) => format!("<{}>{}: {}", priority(l.level), l.target, l.message),
        (LogFormat::Json, journal) => {
            let mut o = json!({
                "level": l.level.as_str().to_ascii_lowercase(),
                "target": l.target,
                "pid": l.pid,
                "msg": l.message,
            });
            if journal {
                return format!("<{}>{o}", priority(l.level));
            }
            o["ts"] = ts().into();
            o.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(format: LogFormat, journal: bool, level: Level) -> String {
        render(&Line {
            format,
            journal,
            now: "2024-03-04T10:35:05.123456Z".parse().unwrap(),
            level,
            target: "supervisor::daemon",
            pid: 42,
            message: "reload: \"OK\"\nnext",
        })
    }

    #[test]
    fn text_and_json_lines() {
        assert_eq!(
            line(LogFormat::Text, false, Level::Warn),
            "[2024-03-04T10:35:05.123Z WARN  supervisor::daemon] reload: \"OK\"\nnext"
        );
        let v: serde_json::Value =
            serde_json::from_str(&line(LogFormat::Json, false, Level::Info)).unwrap();
        assert_eq!(
            v,
            json!({"ts": "2024-03-04T10:35:05.123Z", "level": "info",
                   "target": "supervisor::daemon", "pid": 42, "msg": "reload: \"OK\"\nnext"})
        );
    }

    #[test]
    fn journal_lines_carry_the_priority_and_no_time() {
        for (level, p) in [
            (Level::Error, "<3>"),
            (Level::Warn, "<4>"),
            (Level::Info, "<6>"),
            (Level::Debug, "<7>"),
            (Level::Trace, "<7>"),
        ] {
            let t = line(LogFormat::Text, true, level);
            assert!(t.starts_with(&format!("{p}supervisor::daemon: ")), "{t}");
            let j = line(LogFormat::Json, true, level);
            let rest = j.strip_prefix(p).unwrap();
            let v: serde_json::Value = serde_json::from_str(rest).unwrap();
            assert!(v.get("ts").is_none(), "{j}");
            assert!(!t.contains("2024") && !j.contains("2024"));
        }
    }

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(!journal_stream(None));
        assert!(!journal_stream(Some("garbage")));
        assert!(!journal_stream(Some("1:x")));
        let st = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()).unwrap();
        let ours = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(journal_stream(Some(&ours)));
        let other = format!("{}:{}", st.st_dev, st.st_ino + 1);
        assert!(!journal_stream(Some(&other)));
    }
}
