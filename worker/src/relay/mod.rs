//! The stateless relay (RFC 3261 §16.11, with RFC 3581, 3327 and 5626 where they apply): what a
//! worker does with a message that arrives on a socket whose tag has relay destinations.
//!
//! This module owns the contract between the supervisor and the workers for relaying
//! ([`table`]: the route table the supervisor builds at each reload) and the decision for one
//! message. It does no I/O.

pub mod table;

pub use table::{Destination, PathMode, RelaySettings, RouteSocket, RouteTable, TagRoutes};
