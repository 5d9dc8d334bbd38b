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
        if self.n < MIN_SAMPLES || self.sxx <= 0.0 {
            return 0.0;
        }
        let b = self.sxy / self.sxx;
        let residual = ((self.syy - b * self.sxy) / (self.n - 1.0)).max(0.0);
        let se = (residual / self.sxx).sqrt();
        if b.abs() > SIGNIFICANCE * se {
            b.clamp(-MAX_SLOPE, MAX_SLOPE)
        } else {
            0.0
        }
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
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut f = AsymmetryFit::default();
        for _ in 0..n {
            let (a, b) = (exp(&mut rng, up), exp(&mut rng, down));
            let noise = sd * (exp(&mut rng, 1.0) - exp(&mut rng, 1.0));
            // Offset error: half of (client→server − server→client) delay.
            f.add(a + b, (a - b) / 2.0 + noise);
        }
        f.slope()
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
