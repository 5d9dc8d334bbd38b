//! `ntpkit-daemon`: the drivers that connect `ntpkit-core` to real sockets and the OS clock.
//!
//! What it does: `ntpkit serve` ([`serve`]: UDP workers in [`udp`], TCP in [`tcp`] with the
//! framing of [`framing`]), `ntpkit query` ([`query`]), the daemon ([`daemon`]), their
//! Prometheus endpoint ([`metrics`]) and the load generator of `ntpkit bench`
//! ([`bench`](mod@bench)).
//! Every protocol decision — what to answer, whether a reply is valid, offset and delay — is
//! the core's; this crate moves bytes and reads clocks (through `ntpkit-os`, the only crate
//! with `unsafe`). The load generator decides nothing about time: it only counts which replies
//! answer its requests, and how fast.
//!
//! It also tells a service manager (systemd) when a server is ready, what it is doing and that
//! it is alive ([`notify`]).
//!
//! What it does not do: adjust any clock.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod confine;
pub mod daemon;
pub mod framing;
pub mod metrics;
pub mod notify;
pub mod nts_ke;
pub mod nts_serve;
pub mod query;
pub mod serve;
pub mod served_clock;
pub mod tcp;
pub mod udp;
