//! sipsockd's supervisor: everything that runs in the main process.
//!
//! It owns the configuration, the database connection, every bind, the worker pool, the shared slot
//! table (as its only writer) and the MI FIFO. Pure parts (row parsing, table validation, the reload
//! diff, slot allocation) are plain functions tested without processes; system calls sit in `sys`.
#![deny(missing_docs)]

pub mod commands;
pub mod config;
pub mod daemon;
pub mod db;
pub mod logging;
pub mod mi;
pub mod observe;
pub mod pool;
pub mod relay;
pub mod reload;
pub mod reloading;
pub mod row;
pub mod stats;
pub mod sys;
pub mod top;

/// How a unit test that cannot run its peer fails under CI or is recorded as skipped.
#[cfg(test)]
#[path = "../../worker/tests/common/skip.rs"]
mod skip;
