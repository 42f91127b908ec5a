//! What the worker crate's integration tests share: a scratch directory, the wait bound and
//! [`skip`] for a missing peer.
#![allow(dead_code)]

mod skip;
#[allow(unused_imports)] // not every test crate has a peer to miss
pub use skip::skip;

use std::time::Duration;

/// Every wait of these tests: generous, since the machine is shared.
pub const WAIT: Duration = Duration::from_secs(10);

/// A scratch directory (`tempfile`), removed on drop.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("worker-test-")
        .tempdir()
        .expect("a scratch directory")
}
