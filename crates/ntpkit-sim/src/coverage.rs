//! Coverage of the clock error bound: how often a disciplined node's true error lies within the
//! bound the core reports ([`ntpkit_core::sync::ErrorBound`]), the worst miss, and how wide the
//! bound is — next to the bound AWS ClockBound derives from the same node's tracking.
//!
//! Only the simulator can measure this: it knows every node's true time. Counting starts at the
//! first sample at which the node reports itself synchronized; samples without a bound after
//! that (unknown: disagreement, the holdover ran out) are counted apart, never as covered.

use serde::Serialize;

/// Histogram bins per decade of bound width: a bin spans 6 %, and quantiles are interpolated
/// within it.
const BINS_PER_DECADE: usize = 40;
/// Smallest width binned (1 ns); smaller ones fall in the first bin.
const MIN_DECADE: i32 = -9;
/// Decades binned: 1 ns to 1000 s; larger widths fall in the last bin.
const DECADES: usize = 12;
const BINS: usize = BINS_PER_DECADE * DECADES;

/// Widths on a logarithmic scale, for quantiles without keeping every sample.
#[derive(Clone, Debug)]
pub struct LogHistogram {
    counts: Box<[u32; BINS]>,
    total: u64,
}

impl Default for LogHistogram {
    fn default() -> Self {
        LogHistogram {
            counts: Box::new([0; BINS]),
            total: 0,
        }
    }
}

impl LogHistogram {
    /// Counts one width (seconds).
    pub fn add(&mut self, x: f64) {
        let pos = (x.max(1e-300).log10() - MIN_DECADE as f64) * BINS_PER_DECADE as f64;
        let bin = (pos.max(0.0) as usize).min(BINS - 1);
        self.counts[bin] = self.counts[bin].saturating_add(1);
        self.total += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &LogHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
    }

    /// The `q`-quantile (0–1), interpolated within its bin on the logarithmic scale (the
    /// samples of a bin taken as spread evenly across it); None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.total as f64).max(0.5);
        let mut seen = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            let c = f64::from(c);
            if c > 0.0 && seen + c >= rank {
                let within = (rank - seen - 0.5).clamp(0.0, c - 1.0) / c + 0.5 / c;
                let decade = MIN_DECADE as f64 + (i as f64 + within) / BINS_PER_DECADE as f64;
                return Some(10f64.powf(decade));
            }
            seen += c;
        }
        None
    }
}

/// The worst miss: the true error furthest outside the bound.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Violation {
    /// How far outside: |true error| − bound, seconds.
    pub excess_s: f64,
    /// When (simulated seconds).
    pub at_s: f64,
    /// The true error then (clock − true time), seconds.
    pub error_s: f64,
    /// The bound then, seconds.
    pub bound_s: f64,
}

/// A node's running coverage counts (boxed in the node's counters from its first synchronized
/// sample on: most of it is the two histograms).
#[derive(Clone, Debug, Default)]
pub struct BoundCounters {
    /// First sample at which the node reported itself synchronized, ns.
    pub since: i64,
    /// Samples from then on.
    pub samples: u64,
    /// Of those, samples with no bound (status unknown).
    pub unknown: u64,
    /// Samples with a bound that covered the true error.
    pub covered: u64,
    /// Samples with a bound that did not.
    pub violations: u64,
    /// The worst of them.
    pub worst: Option<Violation>,
    /// Our bound's widths.
    pub ours: LogHistogram,
    /// ClockBound's formula's widths, at the same samples.
    pub clockbound: LogHistogram,
}

impl BoundCounters {
    /// Counting from `t` (ns).
    pub fn new(t: i64) -> Self {
        BoundCounters {
            since: t,
            ..Default::default()
        }
    }

    /// One sample at `t` (ns): the true error (s), our bound and ClockBound's (None: unknown).
    pub fn add(&mut self, t: i64, error: f64, bound: Option<f64>, clockbound: Option<f64>) {
        self.samples += 1;
        let Some(b) = bound else {
            self.unknown += 1;
            return;
        };
        self.ours.add(b);
        if let Some(c) = clockbound {
            self.clockbound.add(c);
        }
        if error.abs() <= b {
            self.covered += 1;
            return;
        }
        self.violations += 1;
        let excess = error.abs() - b;
        if self.worst.is_none_or(|w| excess > w.excess_s) {
            self.worst = Some(Violation {
                excess_s: excess,
                at_s: t as f64 * 1e-9,
                error_s: error,
                bound_s: b,
            });
        }
    }

    /// Adds another run's counts of the same node.
    pub fn merge(&mut self, other: &BoundCounters) {
        self.since = self.since.min(other.since);
        self.samples += other.samples;
        self.unknown += other.unknown;
        self.covered += other.covered;
        self.violations += other.violations;
        if let Some(w) = other.worst {
            if self.worst.is_none_or(|v| w.excess_s > v.excess_s) {
                self.worst = Some(w);
            }
        }
        self.ours.merge(&other.ours);
        self.clockbound.merge(&other.clockbound);
    }
}

/// A disciplined node's coverage, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct BoundReport {
    /// First sample at which the node reported itself synchronized (simulated seconds; the
    /// earliest over runs).
    pub synchronized_at_s: f64,
    /// Samples from then on.
    pub samples: u64,
    /// Of those, samples without a bound (status unknown).
    pub unknown_samples: u64,
    /// Samples whose bound did not cover the true error.
    pub violations: u64,
    /// Fraction of the samples with a bound that covered the true error (1 without any).
    pub coverage: f64,
    /// The worst violation, if any.
    pub worst_violation: Option<Violation>,
    /// Median of the bound (half-width), seconds.
    pub median_bound_s: Option<f64>,
    /// 99th percentile of the bound, seconds.
    pub p99_bound_s: Option<f64>,
    /// Median of ClockBound's formula (|offset| + root dispersion + root delay / 2) over the
    /// same samples, seconds.
    pub median_clockbound_s: Option<f64>,
    /// The counts, kept to pool runs.
    #[serde(skip)]
    pub counts: BoundCounters,
}

impl BoundReport {
    /// From a node's counts.
    pub fn new(c: &BoundCounters) -> Self {
        let bounded = c.covered + c.violations;
        BoundReport {
            synchronized_at_s: c.since as f64 * 1e-9,
            samples: c.samples,
            unknown_samples: c.unknown,
            violations: c.violations,
            coverage: if bounded == 0 {
                1.0
            } else {
                c.covered as f64 / bounded as f64
            },
            worst_violation: c.worst,
            median_bound_s: c.ours.quantile(0.5),
            p99_bound_s: c.ours.quantile(0.99),
            median_clockbound_s: c.clockbound.quantile(0.5),
            counts: c.clone(),
        }
    }

    /// The reports of one node over several runs, pooled: every sample of every run counts once.
    pub fn pool<'a>(runs: impl IntoIterator<Item = &'a BoundReport>) -> Option<BoundReport> {
        let mut all: Option<BoundCounters> = None;
        for r in runs {
            match &mut all {
                None => all = Some(r.counts.clone()),
                Some(a) => a.merge(&r.counts),
            }
        }
        all.map(|c| BoundReport::new(&c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bin_resolution() {
        let mut h = LogHistogram::default();
        for i in 1..=1000 {
            h.add(i as f64 * 1e-6);
        }
        let median = h.quantile(0.5).unwrap();
        assert!((median / 500e-6 - 1.0).abs() < 0.02, "{median}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((p99 / 990e-6 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(LogHistogram::default().quantile(0.5), None);
        // Out of range: clamped into the end bins, not lost.
        h.add(0.0);
        h.add(1e9);
        assert_eq!(h.total, 1002);
    }

    #[test]
    fn counts_coverage_unknowns_and_the_worst_violation() {
        let mut c = BoundCounters::new(5_000_000_000);
        c.add(6_000_000_000, 1e-6, Some(2e-6), Some(3e-6));
        c.add(7_000_000_000, -3e-6, Some(2e-6), Some(3e-6));
        c.add(8_000_000_000, 5e-6, Some(2e-6), Some(3e-6));
        c.add(9_000_000_000, 9.0, None, None);
        let r = BoundReport::new(&c);
        assert_eq!((r.samples, r.unknown_samples, r.violations), (4, 1, 2));
        assert!((r.coverage - 1.0 / 3.0).abs() < 1e-12);
        let w = r.worst_violation.unwrap();
        assert_eq!((w.at_s, w.error_s, w.bound_s), (8.0, 5e-6, 2e-6));
        assert!((w.excess_s - 3e-6).abs() < 1e-15);
        assert_eq!(r.synchronized_at_s, 5.0);
        let pooled = BoundReport::pool([&r, &r]).unwrap();
        assert_eq!((pooled.samples, pooled.violations), (8, 4));
        assert_eq!(pooled.worst_violation, r.worst_violation);
    }
}
