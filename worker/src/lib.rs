//! sipsockd's worker processes.
//!
//! A worker is started by the supervisor (fork + exec of the same binary, hidden `worker`
//! subcommand), receives socket fds over its own Unix-domain control socket (SCM_RIGHTS), and
//! serves SIP on them. It never binds, never reads the database and never writes a slot of the
//! shared table: it only bumps its own counters there.
#![deny(missing_docs)]

pub mod ipc;

/// What the supervisor passes on the `worker` command line.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The worker's pool.
    pub kind: shm::WorkerKind,
    /// Rank in the pool.
    pub rank: u32,
    /// The inherited control socket.
    pub control_fd: i32,
    /// The supervisor's pid (the worker exits when its parent is gone).
    pub parent: i32,
}

/// The worker's main: returns the process exit code.
pub fn run(args: WorkerArgs) -> Result<u8, Box<dyn std::error::Error>> {
    let _ = args;
    todo!("worker helper: implement")
}
