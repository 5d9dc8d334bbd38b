//! Synchronization: sources, filtering, selection, discipline — sans-IO.
//!
//! ```text
//!  reply ─▶ Source (poll state, validation) ─▶ ClockFilter (min-delay, weights)
//!                                                   │ estimates          │ weighted samples
//!                                                   ▼                    ▼
//!                                     select (intersection, cluster) ─▶ Discipline (Kalman bank)
//!                                                   │                    ▲ confined by the
//!                                                   │                    │ survivors' Bands
//!                                                   │ system peer        │ Step / SetFrequency / Slew
//!                                                   ▼                    ▼
//!                                            ServedState            clock commands
//! ```
//!
//! [`SyncSystem`] ties them together and is what drivers use; its doc lists the call contract.

pub mod asymmetry;
pub mod band;
mod bias;
pub mod bound;
pub mod discipline;
pub mod filter;
mod inline;
pub mod select;
pub mod source;
pub mod status;
pub mod system;

pub use bound::{BoundForecast, BoundStatus, BoundTerms, ErrorBound, BOUND_SIGMAS};
pub use discipline::{
    Discipline, DisciplineConfig, DisciplineEvent, DisciplineMode, DisciplineState, Prediction,
};
pub use filter::{ClockFilter, FilterEstimate, Sample};
pub use select::{Candidate, NoSelection, Selection, SourceSet};
pub use source::{Rejection, SampleLimits, ServerInfo, Source, SourceConfig, SourceCounters};
pub use status::{NtsStatus, SourceState, SourceStatus, SystemStatus, Tracking};
pub use system::{Event, SourceId, SyncSystem, SystemConfig, Transmit};

pub(crate) fn ser_display<T: core::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub(crate) fn ser_debug<T: core::fmt::Debug, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:?}"))
}

pub(crate) fn ser_refid<S: serde::Serializer>(
    v: &ntpkit_wire::RefId,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{:08X}", v.to_u32()))
}
