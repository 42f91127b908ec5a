//! The MI FIFO: OpenSIPS `mi_fifo` wire protocol, server and client.
//!
//! A client writes `:REPLY_NAME:` followed by a JSON-RPC 2.0 request into the server FIFO; the
//! reply, one JSON line, goes to the FIFO `reply_dir/REPLY_NAME` that the client created. The real
//! OpenSIPS clients (`opensips-mi`, `opensips-cli`) work unchanged.
//!
//! - [`proto`]: framing and validation of requests, encoding of replies (pure);
//! - [`server`]: the FIFO in the daemon's event loop ([`MiServer`]), never blocking;
//! - [`methods`]: the method table, the core methods, [`dispatch`] to the daemon's [`Handler`];
//! - [`client`]: `sipsockd mi`;
//! - [`bridge`]: the channel by which transports on other threads (HTTP, datagram) reach the loop.

pub mod bridge;
pub mod client;
pub mod methods;
pub mod proto;
pub mod server;

pub use methods::{dispatch, Handler};
pub use proto::{Params, Request, RpcError};
pub use server::{MiError, MiServer};
