//! The clock error bound: at any instant, a half-width `B` such that true time lies in
//! `[clock − B, clock + B]`, and whether that promise holds at all.
//!
//! `B` is the sum of named terms, each a different way the clock can be wrong:
//!
//! | term | what it covers |
//! |---|---|
//! | [`offset_uncertainty`](BoundTerms::offset_uncertainty) | the discipline's offset estimate is only known to within its standard deviation √P₀₀: [`BOUND_SIGMAS`] × √P₀₀ at the last update |
//! | [`unslewed_offset`](BoundTerms::unslewed_offset) | the estimated offset θ̂ the discipline has not slewed away yet: the clock is knowingly off by it |
//! | [`estimate_disagreement`](BoundTerms::estimate_disagreement) | how far the selected source's filtered offset or latest sample lay outside θ̂ ± the offset uncertainty at the last update: the discipline holds back samples it takes for outliers, and until it accepts them the measurement is the better witness |
//! | [`path_asymmetry`](BoundTerms::path_asymmetry) | half the root delay through the selected source (our path delay to it plus its own root delay): NTP cannot tell a symmetric path from one whose delay is all on one side, so half the delay is the honest floor |
//! | [`root_dispersion`](BoundTerms::root_dispersion) | the selected source's own root dispersion: how far its time may be from true time, as it vouches |
//! | [`clock_error_growth`](BoundTerms::clock_error_growth) | since the last update, the oscillator may drift away from the estimated frequency by up to the configured maximum clock error rate (chrony's `maxclockerror`) |
//! | [`prediction_error_growth`](BoundTerms::prediction_error_growth) | an update found the clock away from where the discipline predicted it by the innovation y after an interval Δ: since the last update, the largest such unpredicted drift rate u / Δ of the latest eight updates is allowed for, each older one counting 0.7× less per update, where u is the part of \|y\| the model's expected noise does not explain ([`DisciplineState::unexplained_innovation`](super::discipline::DisciplineState::unexplained_innovation)); an early frequency estimate is more confident than it should be, and one quiet update after unsettled ones does not mean it has settled |
//! | [`frequency_uncertainty_growth`](BoundTerms::frequency_uncertainty_growth) | since the last update, the estimated frequency's own uncertainty ([`BOUND_SIGMAS`] × √P₁₁) times the elapsed time |
//!
//! The first term is statistical, the others are worst-case limits; [`BOUND_SIGMAS`] is chosen
//! for a coverage of 99.9999 %. The status says whether there is a bound at all: following
//! sources ([`BoundStatus::Synchronized`]), running on the last update with the bound growing
//! ([`BoundStatus::Holdover`]), or [`BoundStatus::Unknown`] (not synchronized yet, the sources
//! disagree, the offset is refused, or the holdover ran out) — and then there is no number.

use serde::{Deserialize, Serialize};

/// Standard deviations of the offset and frequency estimates the bound covers. The
/// discipline's estimate is Gaussian given its model; a two-sided 99.9999 % interval is 4.89 σ,
/// rounded up to 5 σ (a Gaussian leaves 5.7 × 10⁻⁷ outside). The worst-case terms of the bound
/// (half the delay, the dispersion, the maximum clock error rate) add margin the statistical
/// term does not count on.
pub const BOUND_SIGMAS: f64 = 5.0;

/// Default maximum rate (s/s) at which the clock's error may grow beyond what the frequency
/// estimate predicts: 1 ppm, chrony's `maxclockerror` default. An ordinary crystal's frequency
/// moves by well under 1 ppm in an hour at room temperature; the discipline's estimate tracks
/// slower changes, so 1 ppm covers the change between updates and through a holdover.
pub const DEFAULT_MAX_CLOCK_ERROR: f64 = 1e-6;

/// Whether the clock's time is vouched for, and how.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundStatus {
    /// Following a selected source: the bound holds and is refreshed at every update.
    Synchronized,
    /// No source selectable: the bound holds, growing with the time since the last update,
    /// until the holdover limit.
    Holdover,
    /// No bound: not synchronized yet, the sources disagree, the offset is beyond the panic
    /// threshold, no sources (a local reference), or the holdover ran out.
    Unknown,
}

impl BoundStatus {
    /// The word `ntpkit now` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            BoundStatus::Synchronized => "synchronized",
            BoundStatus::Holdover => "holdover",
            BoundStatus::Unknown => "unknown",
        }
    }
}

impl core::fmt::Display for BoundStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bound's terms, seconds; their sum is the half-width.
#[derive(Clone, Copy, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct BoundTerms {
    /// [`BOUND_SIGMAS`] × the offset estimate's standard deviation at the last update.
    pub offset_uncertainty: f64,
    /// |θ̂|: the estimated offset not yet slewed away, now.
    pub unslewed_offset: f64,
    /// How far the selected source's filtered offset or latest sample lay beyond the offset
    /// uncertainty from θ̂ at the last update (0 when within it).
    pub estimate_disagreement: f64,
    /// Half the root delay through the selected source.
    pub path_asymmetry: f64,
    /// The selected source's root dispersion.
    pub root_dispersion: f64,
    /// Maximum clock error rate × seconds since the last update.
    pub clock_error_growth: f64,
    /// [`BOUND_SIGMAS`] × the frequency estimate's standard deviation × seconds since the last
    /// update.
    pub frequency_uncertainty_growth: f64,
    /// The largest drift rate the latest updates found unpredicted (|innovation| / interval,
    /// older updates discounted) × seconds
    /// since the last update.
    pub prediction_error_growth: f64,
    /// Seconds since the last update (the growth terms' elapsed time).
    pub since_update: f64,
}

impl BoundTerms {
    /// The half-width: the sum of the terms.
    pub fn total(&self) -> f64 {
        self.offset_uncertainty
            + self.unslewed_offset
            + self.estimate_disagreement
            + self.path_asymmetry
            + self.root_dispersion
            + self.clock_error_growth
            + self.frequency_uncertainty_growth
            + self.prediction_error_growth
    }
}

/// What the bound is computed from: the state the system recorded at its last update (or
/// selection of a new source), and the offset estimate now.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct BoundInputs {
    /// Standard deviation of the offset estimate at the last update, seconds.
    pub offset_sd: f64,
    /// Standard deviation of the frequency estimate at the last update, s/s.
    pub frequency_sd: f64,
    /// Estimated offset (true − clock) now, seconds.
    pub offset_now: f64,
    /// |selected source's filtered offset or latest sample − θ̂| at the last update, the
    /// larger, seconds.
    pub measurement_gap: f64,
    /// Root delay through the selected source (our path delay plus its root delay), seconds.
    pub root_delay: f64,
    /// The selected source's root dispersion, seconds.
    pub root_dispersion: f64,
    /// Seconds since the last update.
    pub since_update: f64,
    /// The largest |innovation| / interval of the latest updates (older ones discounted),
    /// s/s.
    pub unpredicted_drift: f64,
}

/// The clock error bound at one instant.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct ErrorBound {
    /// Whether there is a bound.
    pub status: BoundStatus,
    /// Its terms; None when the status is [`BoundStatus::Unknown`].
    pub terms: Option<BoundTerms>,
}

impl ErrorBound {
    /// No bound.
    pub const UNKNOWN: ErrorBound = ErrorBound {
        status: BoundStatus::Unknown,
        terms: None,
    };

    /// The bound from `inputs` with status `status` (Unknown gives no terms), growing at
    /// `max_clock_error` (s/s) since the last update.
    pub fn compute(status: BoundStatus, inputs: &BoundInputs, max_clock_error: f64) -> Self {
        if status == BoundStatus::Unknown {
            return ErrorBound::UNKNOWN;
        }
        let since = inputs.since_update.max(0.0);
        let offset_uncertainty = BOUND_SIGMAS * inputs.offset_sd.max(0.0);
        let terms = BoundTerms {
            offset_uncertainty,
            unslewed_offset: inputs.offset_now.abs(),
            estimate_disagreement: (inputs.measurement_gap.abs() - offset_uncertainty).max(0.0),
            path_asymmetry: inputs.root_delay.max(0.0) / 2.0,
            root_dispersion: inputs.root_dispersion.max(0.0),
            clock_error_growth: max_clock_error * since,
            frequency_uncertainty_growth: BOUND_SIGMAS * inputs.frequency_sd.max(0.0) * since,
            prediction_error_growth: inputs.unpredicted_drift.abs() * since,
            since_update: since,
        };
        ErrorBound {
            status,
            terms: Some(terms),
        }
    }

    /// The half-width `B` (seconds), or None without a bound.
    pub fn bound(&self) -> Option<f64> {
        self.terms.map(|t| t.total())
    }

    /// True if true time is within the bound of a clock that is `error` seconds (clock − true)
    /// off; false without a bound.
    pub fn covers(&self, error: f64) -> bool {
        self.bound().is_some_and(|b| error.abs() <= b)
    }
}

/// The bound as a linear forecast, for readers that extrapolate it by themselves (a
/// shared-memory page): `bound + growth_rate × t` covers the bound the system would report
/// at every instant `t` seconds from now up to `valid_for`, if no update arrives meanwhile.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct BoundForecast {
    /// Synchronized or holdover.
    pub status: BoundStatus,
    /// The bound now, seconds.
    pub bound: f64,
    /// How fast the bound may grow, s/s.
    pub growth_rate: f64,
    /// Seconds until the bound runs out without an update (the end of the holdover), at most
    /// the horizon asked for.
    pub valid_for: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> BoundInputs {
        BoundInputs {
            offset_sd: 1e-6,
            frequency_sd: 1e-9,
            offset_now: -3e-6,
            measurement_gap: 2e-6,
            root_delay: 200e-6,
            root_dispersion: 50e-6,
            since_update: 16.0,
            unpredicted_drift: 0.0,
        }
    }

    fn terms(i: &BoundInputs) -> BoundTerms {
        ErrorBound::compute(BoundStatus::Synchronized, i, 1e-6)
            .terms
            .unwrap()
    }

    #[test]
    fn each_term_is_computed_from_its_input() {
        let t = terms(&inputs());
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(t.offset_uncertainty, 5e-6), "5 σ of the offset");
        assert!(close(t.unslewed_offset, 3e-6), "|θ̂|, whatever its sign");
        assert!(close(t.path_asymmetry, 100e-6), "half the root delay");
        assert!(close(t.root_dispersion, 50e-6));
        assert_eq!(t.estimate_disagreement, 0.0, "a 2 µs gap is within 5 µs");
        assert!((t.clock_error_growth - 16e-6).abs() < 1e-15, "1 ppm × 16 s");
        assert!(
            (t.frequency_uncertainty_growth - 80e-9).abs() < 1e-18,
            "5 × 1 ppb × 16 s"
        );
        assert_eq!(t.since_update, 16.0);
        let sum = 5e-6 + 3e-6 + 100e-6 + 50e-6 + 16e-6 + 80e-9;
        assert!((t.total() - sum).abs() < 1e-15);
    }

    #[test]
    fn each_term_moves_the_bound_by_itself() {
        let base = terms(&inputs()).total();
        let change = |f: fn(&mut BoundInputs)| {
            let mut i = inputs();
            f(&mut i);
            terms(&i).total() - base
        };
        assert!((change(|i| i.offset_sd = 2e-6) - 5e-6).abs() < 1e-15);
        assert!((change(|i| i.offset_now = 4e-6) - 1e-6).abs() < 1e-15);
        assert!((change(|i| i.root_delay = 400e-6) - 100e-6).abs() < 1e-15);
        assert!((change(|i| i.root_dispersion = 60e-6) - 10e-6).abs() < 1e-15);
        // A measurement 8 µs from θ̂ is 3 µs beyond its 5 µs uncertainty.
        assert!((change(|i| i.measurement_gap = 8e-6) - 3e-6).abs() < 1e-15);
        // 10 more seconds: 10 µs of clock error and 50 ns of frequency uncertainty.
        assert!((change(|i| i.since_update = 26.0) - 10.05e-6).abs() < 1e-15);
        // The last update found 2 µs of drift unpredicted over 16 s: 2 µs more after 16 s.
        assert!((change(|i| i.unpredicted_drift = 0.125e-6) - 2e-6).abs() < 1e-15);
    }

    #[test]
    fn growth_follows_the_configured_maximum_clock_error() {
        let i = inputs();
        let t = ErrorBound::compute(BoundStatus::Holdover, &i, 15e-6)
            .terms
            .unwrap();
        assert!((t.clock_error_growth - 240e-6).abs() < 1e-15);
        let zero = BoundInputs {
            since_update: -1.0,
            ..i
        };
        let t = terms(&zero);
        assert_eq!(t.clock_error_growth, 0.0, "no growth before the update");
        assert_eq!(t.frequency_uncertainty_growth, 0.0);
    }

    #[test]
    fn unknown_has_no_number() {
        let b = ErrorBound::compute(BoundStatus::Unknown, &inputs(), 1e-6);
        assert_eq!(b, ErrorBound::UNKNOWN);
        assert_eq!(b.bound(), None);
        assert!(!b.covers(0.0), "no bound covers nothing");
        let b = ErrorBound::compute(BoundStatus::Holdover, &inputs(), 1e-6);
        assert!(b.covers(b.bound().unwrap()));
        assert!(!b.covers(-b.bound().unwrap() * 1.01));
    }
}
