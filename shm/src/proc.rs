//! What `/proc` says about a process: its start time, to tell a live supervisor from a later
//! process that got the same pid. Plain file reads, no `unsafe`.

/// The start of process `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`), `None`
/// when there is no such process, it is a zombie (dead, not yet reaped by its parent), or /proc
/// is not readable.
pub(crate) fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    if matches!(parse_state(&stat), Some('Z' | 'X' | 'x')) {
        return None;
    }
    parse_start_ticks(&stat)
}

/// Field 3 of a `/proc/PID/stat` line: the state letter (`R`, `S`, `Z` for a zombie...).
pub(crate) fn parse_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_ascii_whitespace()
        .next()?
        .chars()
        .next()
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted from the last `)`.
pub(crate) fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the `)`: field 3 (state) is the first; field 22 is the 20th.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Whether the supervisor a header names still runs: the pid exists and, when the header knows
/// the start time (`ticks` not 0), it is the same process. A pid of 0 is never alive.
pub(crate) fn supervisor_alive(pid: u32, ticks: u64) -> bool {
    if pid == 0 {
        return false;
    }
    match start_ticks(pid) {
        None => false,
        Some(now) => ticks == 0 || now == ticks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_field_22_even_with_odd_command_names() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 \
                    1000 10 18446744073709551615";
        assert_eq!(parse_start_ticks(line), Some(98765));
        assert_eq!(parse_state(line), Some('S'));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(parse_start_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_is_not() {
        let me = std::process::id();
        let ticks = start_ticks(me).expect("our own /proc/self/stat");
        assert!(supervisor_alive(me, ticks));
        assert!(supervisor_alive(me, 0));
        assert!(!supervisor_alive(me, ticks + 1));
        assert!(!supervisor_alive(0, 0));
        // Above pid_max (at most 2^22 on Linux): no such process.
        assert!(!supervisor_alive(u32::MAX, 0));
    }

    #[test]
    fn a_zombie_is_not_alive() {
        // A child that exited and is not reaped yet: its /proc entry is there, state Z.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let t0 = std::time::Instant::now();
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_state(&s))
            != Some('Z')
        {
            assert!(t0.elapsed() < std::time::Duration::from_secs(30));
            std::thread::yield_now();
        }
        assert!(!supervisor_alive(pid, 0));
        child.wait().unwrap();
    }
}
