//! The parser and responder as they were before the single-pass parser (worker/src/sip.rs and
//! worker/src/handler.rs at commit 0987175), kept verbatim (tests removed) so that
//! `tests/differential.rs` and the `sip_datagram` fuzz target can compare the new code with them.
//! Remove this directory with the differential test once the old code is no longer wanted.
#![allow(dead_code)]

pub mod handler;
pub mod sip;
