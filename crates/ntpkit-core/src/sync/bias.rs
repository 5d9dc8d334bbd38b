//! Detects innovations that keep one sign: the model is wrong, not the samples.
//!
//! A Kalman filter that has become too sure of its frequency (early samples that were better
//! than they looked, or a frequency that changed more than the wander model allows) sees each
//! new sample as noise: every innovation is within a few standard deviations, so neither the
//! outlier rule nor the likelihoods notice, but they all lean the same way and the clock
//! drifts off by many sample deviations over hours. A two-sided CUSUM of the normalized
//! innovations catches that lean: under a right model they are independent with zero mean and
//! unit variance, and the sum of their excess over [`SLACK`] stays small.

use crate::time::MonoTime;

/// Lean (in standard deviations per sample) the detector ignores: half a deviation, the
/// usual choice for detecting a shift of one.
const SLACK: f64 = 0.5;
/// Cumulative excess that raises the alarm: with [`SLACK`] = 0.5, a right model raises it
/// about once in a thousand samples, a lean of one deviation within fifteen or so. Each alarm
/// widens the frequency's uncertainty by what the lean implies (ppm, for a run of a few noisy
/// samples at 64 s), so a false one costs the clock its frequency for a while: at 5, once in
/// several hundred samples, it fired about once a day at 64 s polls in clknetsim's noisier
/// models once samples were weighed against the minimum of 256 delays (docs/benchmarks.md).
const ALARM: f64 = 6.0;
/// Normalized innovations are clipped to this many deviations, so that one outlier cannot
/// raise the alarm alone (the outlier rule deals with single ones).
const CLIP: f64 = 3.0;

/// One side of the CUSUM: how far the sum has run, since when (meaningful once it has
/// samples), and the sum of the innovations over that run (`f32`: this sits in every node).
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    excess: f32,
    innovations: f32,
    samples: u16,
    since: MonoTime,
}

impl Run {
    /// Adds `u` (normalized, signed towards this side) for innovation `y`; the run restarts
    /// when the sum falls back to zero.
    fn add(&mut self, now: MonoTime, u: f64, y: f64) {
        let excess = f64::from(self.excess) + u - SLACK;
        if excess <= 0.0 {
            *self = Run::default();
            return;
        }
        if self.samples == 0 {
            self.since = now;
        }
        self.excess = excess as f32;
        self.innovations += y as f32;
        self.samples = self.samples.saturating_add(1);
    }
}

/// A persistent lean found by [`BiasDetector::add`].
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Lean {
    /// Mean innovation over the run, seconds.
    pub mean: f64,
    /// How long the run lasted, seconds (from its first sample to the one that raised the
    /// alarm).
    pub span: f64,
}

/// Two-sided CUSUM of normalized innovations.
#[derive(Clone, Copy, Debug, Default)]
pub struct BiasDetector {
    high: Run,
    low: Run,
}

impl BiasDetector {
    /// Adds the innovation `y` (seconds) of a sample taken at `now`, whose expected standard
    /// deviation was `sd`. Returns the lean once the sum of either side passes the alarm, and
    /// starts over.
    pub fn add(&mut self, now: MonoTime, y: f64, sd: f64) -> Option<Lean> {
        if sd.is_nan() || sd <= 0.0 || !y.is_finite() {
            return None;
        }
        let u = (y / sd).clamp(-CLIP, CLIP);
        self.high.add(now, u, y);
        self.low.add(now, -u, y);
        let run = [self.high, self.low]
            .into_iter()
            .find(|r| f64::from(r.excess) > ALARM)?;
        *self = BiasDetector::default();
        Some(Lean {
            mean: f64::from(run.innovations) / f64::from(run.samples.max(1)),
            span: now.secs_since(run.since),
        })
    }

    /// Forgets every run (after the clock was stepped, or the model was reset).
    pub fn clear(&mut self) {
        *self = BiasDetector::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn gaussian(rng: &mut Xoshiro256PlusPlus) -> f64 {
        let u = |r: &mut Xoshiro256PlusPlus| (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let (a, b) = (u(rng).max(1e-300), u(rng));
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    }

    #[test]
    fn unbiased_innovations_rarely_raise_the_alarm() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut d = BiasDetector::default();
        let alarms = (0..10_000)
            .filter(|&i| {
                let now = MonoTime(i * 1_000_000_000);
                d.add(now, 1e-3 * gaussian(&mut rng), 1e-3).is_some()
            })
            .count();
        // Two one-sided CUSUMs with k = 0.5, h = 6: a false alarm about every thousand
        // samples (h = 5 raised one every few hundred).
        assert!(alarms < 15, "{alarms} alarms in 10,000 unbiased samples");
    }

    #[test]
    fn a_lean_of_one_deviation_is_found_within_twenty_samples_with_its_mean() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let mut d = BiasDetector::default();
        let found = (1..=30).find_map(|i| {
            let now = MonoTime(i * 1024 * 1_000_000_000);
            d.add(now, 1e-3 * (1.0 + gaussian(&mut rng)), 1e-3)
                .map(|lean| (i, lean))
        });
        let (i, lean) = found.expect("a one-sigma lean is detected");
        assert!(i <= 20, "found after {i} samples");
        assert!(lean.mean > 0.5e-3 && lean.mean < 2.5e-3, "{lean:?}");
        assert!(lean.span >= 1024.0, "{lean:?}");
    }

    #[test]
    fn one_outlier_alone_does_not_raise_the_alarm() {
        let mut d = BiasDetector::default();
        assert_eq!(d.add(MonoTime(0), 1.0, 1e-3), None);
        assert_eq!(d.add(MonoTime(1), -1e-4, 1e-3), None);
    }
}
