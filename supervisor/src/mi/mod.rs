//! The MI FIFO: OpenSIPS `mi_fifo` wire protocol, server and client.

pub mod client;
