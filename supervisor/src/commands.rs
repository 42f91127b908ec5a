//! The provisioning commands: `db init|add|rm|list` and `check`.

use crate::config::Config;
use crate::row::RawRow;
use std::io::Write;

/// Errors of the provisioning commands.
pub type CommandError = Box<dyn std::error::Error>;

/// What `db rm` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RmTarget {
    /// The row(s) with this socket text or identity.
    Socket(String),
    /// The row with this id.
    Id(i64),
}

/// `sipsockd db init`.
pub fn db_init(cfg: &Config, out: &mut dyn Write) -> Result<(), CommandError> {
    let _ = (cfg, out);
    todo!()
}
/// `sipsockd db add`.
pub fn db_add(cfg: &Config, row: &RawRow, out: &mut dyn Write) -> Result<(), CommandError> {
    let _ = (cfg, row, out);
    todo!()
}
/// `sipsockd db rm`.
pub fn db_rm(cfg: &Config, target: &RmTarget, out: &mut dyn Write) -> Result<(), CommandError> {
    let _ = (cfg, target, out);
    todo!()
}
/// `sipsockd db list`.
pub fn db_list(cfg: &Config, json: bool, out: &mut dyn Write) -> Result<(), CommandError> {
    let _ = (cfg, json, out);
    todo!()
}
/// `sipsockd check`: Ok(true) when the table is valid.
pub fn check(cfg: &Config, json: bool, out: &mut dyn Write) -> Result<bool, CommandError> {
    let _ = (cfg, json, out);
    todo!()
}
