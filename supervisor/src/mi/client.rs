//! `sipsockd mi`: a client of the MI FIFO.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Send one request and print the result; returns the exit code (0 ok, 1 JSON-RPC error, 2 no answer).
pub fn run(
    fifo: &Path,
    reply_dir: &Path,
    method: &str,
    params: &[String],
    timeout: Duration,
    out: &mut dyn Write,
) -> u8 {
    let _ = (fifo, reply_dir, method, params, timeout, out);
    todo!()
}
