//! `ntpkit-sim`: a deterministic discrete-event simulator that runs the real `ntpkit-core`
//! against simulated clocks and networks.
//!
//! What it does: reads a scenario (TOML; `docs/scenarios.md`), builds one [`ntpkit_core::SyncSystem`]
//! per disciplined node and one [`ntpkit_core::Responder`] per node, and drives them exactly as
//! the daemon does — same call contract, same packets through `ntpkit-wire` — over integer
//! virtual time, simulated oscillators (offset, frequency error, random-walk wander, scheduled
//! steps) and simulated links (delay, jitter, asymmetry, loss, outages, server processing time),
//! with NTS on the sources that ask for it through `ntpkit-nts`'s cookie and AEAD code ([`nts`]).
//! It reports per-node statistics of the true error (clock − true time), which a real network
//! never shows, as a table, JSON, a CSV time series or a plot; `--runs K` repeats with K seeds.
//! It also measures how often each node's reported error bound covers that true error
//! ([`coverage`]).
//!
//! What it does not do: read the OS clock, use OS randomness, sleep, or contain any protocol
//! logic of its own. The same seed gives byte-identical output: every random number comes from
//! a Xoshiro256++ stream per node and per link direction (NTS has streams of its own), seeded
//! through SplitMix64.
//!
//! ```text
//!  scenario.toml ─▶ Scenario ─▶ Sim (event heap: timers, packets, samples)
//!                                 │  per node: SimClock ⇄ SyncSystem (core), Responder (core)
//!                                 ▼
//!                               Outcome ─▶ Report ─▶ table · JSON · CSV · plot
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod clock;
pub mod coverage;
pub mod nts;
pub mod plot;
pub mod queue;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod units;

pub use report::{Report, RunsReport};
pub use scenario::{Scenario, ScenarioError};
pub use sim::{simulate_sharded, simulate_sharded_with_progress, Outcome, Sim, Trace};

/// Runs `scenario` once with `seed` for `duration` ns and returns the outcome.
pub fn simulate(scenario: &Scenario, seed: u64, duration: i64, trace: Trace<'_>) -> Outcome {
    Sim::new(scenario, seed, duration, trace).run()
}

/// Runs `scenario` with its own seed and duration and returns the report.
pub fn run_report(scenario: &Scenario) -> Report {
    let out = simulate(scenario, scenario.seed, scenario.duration, Trace::default());
    Report::new(scenario, scenario.seed, scenario.duration, &out)
}
