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
//!
//! That share is a model, and for the commonest queues a pessimistic one: when each direction
//! waits an exponential time and one mean is far above the other, a long total wait is almost
//! all the long queue's, and what is left after the correction is the short queue's own
//! spread, whatever the excess (in chrony's asymmetric-jitter model, 30 µs where the share
//! model says 90–300 µs). So once the slope is in use, the fit also measures the corrected
//! errors' spread: a regression of the squared corrected innovation, less the variance the
//! discipline gives its own prediction, on the squared excess (`v0 + v2·excess²`), judged
//! against the slope known before each sample. [`AsymmetryFit::corrected_variance`] gives it,
//! and replaces the share model once [`MIN_SAMPLES`] corrected samples are in and their
//! spread stands clearly ([`SIGNIFICANCE`] standard errors) below what the share model
//! credits them with. The excess is measured against the path's minimum as the filter knew it
//! at the time, so the spread measured includes how far that minimum's own error moved the
//! corrected offsets.

/// Samples the fit remembers (exponential forgetting).
pub const MEMORY: f64 = 64.0;
/// Samples needed before the fit says anything.
pub const MIN_SAMPLES: f64 = 16.0;
/// Standard errors by which the slope must differ from zero to be used.
pub const SIGNIFICANCE: f64 = 3.0;
/// The largest slope there can be: the whole excess in one direction moves the offset by half.
pub const MAX_SLOPE: f64 = 0.5;

/// A running regression of innovation on excess delay, and of the corrected errors' spread on
/// the excess delay's square.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AsymmetryFit {
    sxx: f64,
    sxy: f64,
    syy: f64,
    n: f64,
    spread: SpreadFit,
}

/// A running least-squares fit of `v0 + v2·x²` to squared errors against squared excess
/// delays `x²`, with the fit's forgetting.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct SpreadFit {
    n: f64,
    x2: f64,
    x4: f64,
    e2: f64,
    e4: f64,
    x2e2: f64,
}

impl SpreadFit {
    fn add(&mut self, x2: f64, e2: f64, keep: f64) {
        self.n = keep * self.n + 1.0;
        self.x2 = keep * self.x2 + x2;
        self.x4 = keep * self.x4 + x2 * x2;
        self.e2 = keep * self.e2 + e2;
        self.e4 = keep * self.e4 + e2 * e2;
        self.x2e2 = keep * self.x2e2 + x2 * e2;
    }

    /// The mean squared excess, the mean squared error and that mean's standard error.
    fn means(&self) -> (f64, f64, f64) {
        let (mean_x2, mean_e2) = (self.x2 / self.n, self.e2 / self.n);
        let var_e2 = (self.e4 / self.n - mean_e2 * mean_e2).max(0.0);
        (mean_x2, mean_e2, (var_e2 / self.n).sqrt())
    }

    /// `(v0, v2)` with `v0` ≥ 0 and `v2` within [0, `most`].
    fn coefficients(&self, most: f64) -> (f64, f64) {
        let (mean_x2, mean_e2, _) = self.means();
        let var_x2 = self.x4 / self.n - mean_x2 * mean_x2;
        let cov = self.x2e2 / self.n - mean_x2 * mean_e2;
        let v2 = if var_x2 > 0.0 {
            (cov / var_x2).clamp(0.0, most)
        } else {
            most
        };
        ((mean_e2 - v2 * mean_x2).max(0.0), v2)
    }
}

impl AsymmetryFit {
    /// Adds one sample: its excess delay `x` over the path's minimum (seconds), the
    /// discipline's innovation `y` for it (seconds) and the variance of the prediction that
    /// innovation is taken against (s²).
    pub fn add(&mut self, x: f64, y: f64, prediction_variance: f64) {
        if !x.is_finite() || !y.is_finite() || !prediction_variance.is_finite() {
            return;
        }
        let keep = 1.0 - 1.0 / MEMORY;
        // What the correction in use left of this sample's error: the spread is judged out of
        // sample, against the slope known before it.
        if let Some((b, _)) = self.significant() {
            let e = y - b * x;
            self.spread.add(x * x, e * e - prediction_variance, keep);
        }
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

    /// The variance (s²) of the corrected error of a sample `x` seconds above the path's
    /// minimum, as measured (module docs): `v0 + v2·x²` plus the slope's own uncertainty
    /// `se²·x²`. None while no slope is used, before [`MIN_SAMPLES`] corrected samples, or
    /// while the measured spread does not stand [`SIGNIFICANCE`] standard errors below what
    /// the share model credits the same samples with: [`unexplained`](Self::unexplained)
    /// applies then. (Where both directions queue alike, a slope that cleared its noise by
    /// chance leaves the share model right and the measurement only noisier.)
    pub fn corrected_variance(&self, x: f64) -> Option<f64> {
        let (b, se) = self.significant()?;
        if self.spread.n < MIN_SAMPLES {
            return None;
        }
        let (mean_x2, mean_e2, se_e2) = self.spread.means();
        if mean_e2 + SIGNIFICANCE * se_e2 >= self.unexplained() * mean_x2 / 12.0 {
            return None;
        }
        // The share of the excess queued one way lies in [0, 1] with mean ½ + β, so its
        // variance is at most (½ + β)(½ − β) (Bhatia–Davis): v2 never exceeds that.
        let (v0, v2) = self.spread.coefficients(MAX_SLOPE * MAX_SLOPE - b * b);
        Some(v0 + (v2 + se * se) * x * x)
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

    /// The fit after `n` samples of that path, each innovation's prediction error a Laplace
    /// draw of scale `sd`, whose variance, 2·sd², is told to the fit.
    fn fitted(up: f64, down: f64, sd: f64, n: usize, seed: u64) -> AsymmetryFit {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut f = AsymmetryFit::default();
        for _ in 0..n {
            let (a, b) = (exp(&mut rng, up), exp(&mut rng, down));
            let noise = sd * (exp(&mut rng, 1.0) - exp(&mut rng, 1.0));
            // Offset error: half of (client→server − server→client) delay.
            f.add(a + b, (a - b) / 2.0 + noise, 2.0 * sd * sd);
        }
        f
    }

    /// Over fresh samples of the path, with `f`'s slope, those whose excess is at least
    /// `from`: the corrected errors' mean square and the mean variance `f` credits them with.
    fn credited(f: &AsymmetryFit, up: f64, down: f64, from: f64, seed: u64) -> (f64, f64) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let (mut err, mut said, mut n) = (0.0, 0.0, 0.0);
        for _ in 0..40_000 {
            let (a, c) = (exp(&mut rng, up), exp(&mut rng, down));
            let x = a + c;
            if x < from {
                continue;
            }
            err += ((a - c) / 2.0 - f.slope() * x).powi(2);
            said += f.corrected_variance(x).expect("measured");
            n += 1.0;
        }
        (err / n, said / n)
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
    fn the_corrected_errors_spread_is_measured_not_assumed() {
        // Nearly all queueing one way (chrony's asymmetric-jitter model at a tenth of its
        // scale): the corrected error is the short queue's own spread at any excess, far below
        // what the share model credits a long wait with; the measurement says so, on all
        // samples and on the long waits alone, within the noise of 64 remembered samples.
        let (up, down) = (15e-6, 485e-6);
        for seed in 1..=5 {
            let f = fitted(up, down, 10e-6, 400, seed);
            for from in [0.0, 1e-3] {
                let (err, said) = credited(&f, up, down, from, 100 + seed);
                assert!(
                    (0.5..2.0).contains(&(said / err)),
                    "seed {seed}, excess ≥ {from}: credited {:.1} µs, actual {:.1} µs",
                    said.sqrt() * 1e6,
                    err.sqrt() * 1e6
                );
            }
            let x = 2e-3;
            let share = f.unexplained() * x * x / 12.0;
            let measured = f.corrected_variance(x).unwrap();
            assert!(
                measured < share / 4.0,
                "seed {seed}: {:.1} µs measured, {:.1} µs by the share model",
                measured.sqrt() * 1e6,
                share.sqrt() * 1e6
            );
        }
        // Queues of comparable means: the share model describes them about as well, so the
        // measurement does not replace it.
        for seed in 1..=5 {
            let f = fitted(100e-6, 300e-6, 10e-6, 400, seed);
            assert_ne!(f.slope(), 0.0, "seed {seed}");
            assert_eq!(f.corrected_variance(1e-3), None, "seed {seed}: {f:?}");
        }
    }

    #[test]
    fn the_spread_waits_for_a_slope_and_enough_samples() {
        // A symmetric path uses no slope, so nothing is measured.
        assert_eq!(
            fitted(100e-6, 100e-6, 10e-6, 400, 9).corrected_variance(1e-3),
            None
        );
        // One-sided: the slope becomes significant after a few dozen samples, the spread
        // MIN_SAMPLES later.
        let f = fitted(15e-6, 485e-6, 10e-6, 20, 3);
        assert_eq!(f.corrected_variance(1e-3), None, "{f:?}");
        assert!(fitted(15e-6, 485e-6, 10e-6, 100, 3)
            .corrected_variance(1e-3)
            .is_some());
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
        f.add(f64::NAN, 1.0, 0.0);
        assert_eq!(f, AsymmetryFit::default());
    }
}
