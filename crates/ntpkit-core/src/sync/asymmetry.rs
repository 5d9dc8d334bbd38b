//! How much of a source's offsets its queueing delay explains.
//!
//! A sample's offset error from the path is half the difference of the two directions' delays.
//! When queueing is symmetric, that error is as likely positive as negative whatever the delay
//! (the filter's `excess²/12` variance describes it). When one direction queues far more than
//! the other, the error grows with the excess delay in one direction: a sample `x` seconds above
//! the path's minimum is off by about `β·x`, with β up to ±½. Weighting low-delay samples more
//! only shrinks that bias; it does not remove it.
//!
//! [`AsymmetryFit`] measures β from the discipline's innovations (sample minus prediction, which
//! does not depend on the sample's own delay): a weighted regression through the origin of
//! innovation on excess delay, with a memory of [`MEMORY`] samples. Only a slope that stands
//! clear of its noise ([`SIGNIFICANCE`] standard errors) is used, so a symmetric path is left
//! alone. What remains is the part no NTP client can measure: an asymmetry of the minimum
//! delays themselves.
//!
//! Once β is known, a sample's error is also smaller than the symmetric `excess²/12`: the
//! share of the excess queued in one direction lies in [0, 1] with mean `½ + β`, and taken
//! as spread as a uniform share is (a beta distribution of the same concentration), its
//! variance is `(1 − 4β²)/12` of `excess²`. The slope's own uncertainty adds `se²·excess²`.
//! [`AsymmetryFit::unexplained`] gives the ratio of the two to the symmetric variance: the
//! filter's weights then follow how well the correction explains each sample (a path queueing
//! almost all one way has samples far better than their delay alone vouches for).

/// Samples the fit remembers (exponential forgetting).
pub const MEMORY: f64 = 64.0;
/// Samples needed before the fit says anything.
pub const MIN_SAMPLES: f64 = 16.0;
/// Standard errors by which the slope must differ from zero to be used.
pub const SIGNIFICANCE: f64 = 3.0;
/// The largest slope there can be: the whole excess in one direction moves the offset by half.
pub const MAX_SLOPE: f64 = 0.5;

/// A running regression of innovation on excess delay.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AsymmetryFit {
    sxx: f64,
    sxy: f64,
    syy: f64,
    n: f64,
}

impl AsymmetryFit {
    /// Adds one sample: its excess delay `x` over the path's minimum and the discipline's
    /// innovation `y` for it (seconds).
    pub fn add(&mut self, x: f64, y: f64) {
        if !x.is_finite() || !y.is_finite() {
            return;
        }
        let keep = 1.0 - 1.0 / MEMORY;
        self.sxx = keep * self.sxx + x * x;
        self.sxy = keep * self.sxy + x * y;
        self.syy = keep * self.syy + y * y;
        self.n = keep * self.n + 1.0;
    }

    /// The offset error per second of excess delay (β), or 0 while it is not clearly nonzero.
    pub fn slope(&self) -> f64 {
        self.significant().map_or(0.0, |(b, _)| b)
    }

    /// The variance of a sample's offset error once corrected by [`slope`](Self::slope), as a
    /// share of the symmetric `excess²/12`: `1 − 4β² + 12·se²` (module docs), at most 1; 1
    /// while no slope is used.
    pub fn unexplained(&self) -> f64 {
        self.significant()
            .map_or(1.0, |(b, se)| (1.0 - 4.0 * b * b + 12.0 * se * se).min(1.0))
    }

    /// The fitted slope (clamped to ±[`MAX_SLOPE`]) and its standard error, once enough
    /// samples are in and the slope stands clear of its noise.
    fn significant(&self) -> Option<(f64, f64)> {
        if self.n < MIN_SAMPLES || self.sxx <= 0.0 {
            return None;
        }
        let b = self.sxy / self.sxx;
        let residual = ((self.syy - b * self.sxy) / (self.n - 1.0)).max(0.0);
        let se = (residual / self.sxx).sqrt();
        (b.abs() > SIGNIFICANCE * se).then(|| (b.clamp(-MAX_SLOPE, MAX_SLOPE), se))
    }

    /// Forgets everything (e.g. after the path changed).
    pub fn clear(&mut self) {
        *self = AsymmetryFit::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{RngCore, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn exp(rng: &mut Xoshiro256PlusPlus, mean: f64) -> f64 {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        -mean * (1.0 - u).ln()
    }

    /// Innovations of samples over a path whose two directions queue with means `up` and `down`
    /// (prediction noise `sd` added); returns the fitted slope.
    fn fit(up: f64, down: f64, sd: f64, n: usize, seed: u64) -> f64 {
        fitted(up, down, sd, n, seed).slope()
    }

    fn fitted(up: f64, down: f64, sd: f64, n: usize, seed: u64) -> AsymmetryFit {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut f = AsymmetryFit::default();
        for _ in 0..n {
            let (a, b) = (exp(&mut rng, up), exp(&mut rng, down));
            let noise = sd * (exp(&mut rng, 1.0) - exp(&mut rng, 1.0));
            // Offset error: half of (client→server − server→client) delay.
            f.add(a + b, (a - b) / 2.0 + noise);
        }
        f
    }

    #[test]
    fn the_unexplained_share_covers_the_corrected_error() {
        // Fit on one run, then check on fresh samples that the corrected offsets' mean squared
        // error stays within the share of excess²/12 it is credited with (never overconfident),
        // and that the share is small when nearly all queueing is one way.
        for (up, down, most) in [(15e-6, 485e-6, 0.2), (100e-6, 300e-6, 0.8)] {
            let f = fitted(up, down, 0.0, 200, 7);
            let (b, share) = (f.slope(), f.unexplained());
            assert!(share < most, "{up} / {down}: share {share}");
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(8);
            let (mut err, mut sym) = (0.0, 0.0);
            for _ in 0..20_000 {
                let (a, c) = (exp(&mut rng, up), exp(&mut rng, down));
                let x = a + c;
                err += ((a - c) / 2.0 - b * x).powi(2);
                sym += x * x / 12.0;
            }
            assert!(err <= share * sym, "{up} / {down}: {err} > {share} × {sym}");
        }
        // A symmetric path: nothing is explained.
        assert_eq!(fitted(100e-6, 100e-6, 10e-6, 200, 9).unexplained(), 1.0);
    }

    #[test]
    fn symmetric_queueing_gives_no_slope() {
        let used = (1..=50)
            .filter(|&seed| fit(100e-6, 100e-6, 10e-6, 200, seed) != 0.0)
            .count();
        assert!(
            used <= 2,
            "a symmetric path was corrected in {used} of 50 runs"
        );
    }

    #[test]
    fn one_sided_queueing_is_measured() {
        // Almost all queueing server → client: errors of about −x/2.
        let b = fit(15e-6, 485e-6, 10e-6, 200, 1);
        assert!((-0.5..-0.4).contains(&b), "{b}");
        let b = fit(485e-6, 15e-6, 10e-6, 200, 2);
        assert!((0.4..=0.5).contains(&b), "{b}");
    }

    #[test]
    fn too_few_samples_say_nothing() {
        assert_eq!(fit(15e-6, 485e-6, 1e-6, 10, 3), 0.0);
        let mut f = AsymmetryFit::default();
        f.add(f64::NAN, 1.0);
        assert_eq!(f, AsymmetryFit::default());
    }
}
