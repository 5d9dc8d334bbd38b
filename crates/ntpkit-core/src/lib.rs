//! `ntpkit-core`: the sans-IO heart of ntpkit.
//!
//! What it does: every decision of the protocol and the clock algorithms — the server's reply
//! logic ([`Responder`]), and (see the modules) the per-source poll state machine, the clock
//! filter, source selection and the clock discipline. Time and randomness come in as arguments
//! ([`MonoTime`], [`ClockTime`], an `RngCore`); decisions come out as values (reply bytes,
//! datagrams to send, deadlines, clock commands, events).
//!
//! What it does not do: touch a socket, a timer, the OS clock or an OS random source. Two drivers
//! run it: the daemon's event loop (`ntpkit-daemon`) over real sockets, and the simulator
//! (`ntpkit-sim`) over virtual time. Neither needs a special case in here.
//!
//! ```text
//!  datagrams, now ──▶ Responder · sources · filter · selection · discipline ──▶ replies,
//!                                                                               transmits,
//!                                                                               deadlines,
//!                                                                               clock commands
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod exchange;
pub mod policy;
pub mod responder;
pub mod served;
pub mod sync;
pub mod time;

pub use clock::{ClockCommand, SoftClock};
pub use exchange::{measure, validate_reply, Measurement, ReplyError};
pub use policy::{AccessList, Admission, Policy, RateLimit, RateLimiter, Rule};
pub use responder::{IgnoreReason, Responder, ResponderStats, Response};
pub use served::{DispersionFloor, ServedState, PHI};
pub use sync::{SourceConfig, SourceId, SyncSystem, SystemConfig};
pub use time::{ClockTime, MonoTime, NANOS_PER_SEC};
