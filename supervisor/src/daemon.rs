//! `sipsockd run`: the supervisor's event loop.

use crate::config::Config;

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let _ = config;
    todo!()
}
