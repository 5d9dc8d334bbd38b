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
//! does not depend on the sample's own delay): a least-squares line of innovation on excess
//! delay over the recent samples, with a memory of [`MEMORY`] samples. The line has an
//! intercept: the short direction's own mean wait, and where the discipline has settled
//! between corrected and uncorrected samples, are a level the discipline absorbs; forced
//! through the origin, the line would tilt to explain that level (by about the level over the
//! mean excess, 0.015 on chrony's asymmetric-jitter path) and the tilt would spread the
//! corrected offsets in proportion to their excess. Only a slope that stands clear of its
//! noise is used ([`SIGNIFICANCE`] standard errors, as Student's t has it for the samples
//! held), so a symmetric path is left alone. That
//! standard error must hold where queueing errors are largest: on a symmetric path they grow
//! with the excess, and one sample far out in it pulls the line to itself, so the error taken
//! is the larger of the usual one and the heteroscedasticity-consistent one with each residual
//! as it would be with its sample left out. What remains is the part no NTP client can
//! measure: an asymmetry of the minimum delays themselves.
//!
//! Once β is known, a sample's error is also smaller than the symmetric `excess²/12`: the
//! share of the excess queued in one direction lies in [0, 1] with mean `½ + β₀`, and taken
//! as spread as a uniform share is (a beta distribution of the same concentration), its
//! variance is `(1 − 4β₀²)/12` of `excess²`. A share has no level, so β₀ is the slope of the
//! line through the origin (a little nearer 0 than β, and the model more cautious for it).
//! The slope's own uncertainty adds `se²·excess²`.
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
//! against the line known before each sample, so that the spread holds the slope's own error
//! too. [`AsymmetryFit::corrected_variance`] gives it, and replaces the share model once
//! [`MIN_SPREAD_SAMPLES`] corrected samples are in and their spread stands clearly ([`SIGNIFICANCE`]
//! standard errors) below all the share model credits the same samples with, the minimum
//! delay's uncertainty included. The excess is measured against the path's minimum as the
//! filter knew it at the time, so the spread measured includes how far that minimum's own
//! error moved the corrected offsets.

/// Samples the fit remembers (exponential forgetting).
pub const MEMORY: f64 = 64.0;
/// Samples needed before the fit says anything: its slope is judged from this many on,
/// against Student's t for so few samples (`critical_t`), so that a path queueing almost all
/// one way is corrected within about a dozen samples (at a 1024 s poll, hours sooner than
/// after 16) while a symmetric one shows a chance slope no more often than before.
pub const MIN_SAMPLES: f64 = 8.0;
/// Corrected samples needed before their measured spread may replace the share model: the
/// squared errors are heavy-tailed, and with fewer the spread's own standard error, which the
/// gate relies on, is too often far below the truth.
pub const MIN_SPREAD_SAMPLES: f64 = 12.0;
/// Standard errors by which the slope must differ from zero to be used (as chance allows with
/// a known standard error: with an estimated one, Student's t at the same tail).
pub const SIGNIFICANCE: f64 = 3.0;
/// The largest slope there can be: the whole excess in one direction moves the offset by half.
pub const MAX_SLOPE: f64 = 0.5;

/// The weight a sample keeps from one sample to the next (exponential forgetting over
/// [`MEMORY`] samples).
const KEEP: f64 = 1.0 - 1.0 / MEMORY;
/// Samples held for the regression: beyond this many, a sample's weight under the fit's
/// forgetting is below 2 %.
const HISTORY: usize = 4 * MEMORY as usize;

/// A regression of innovation on excess delay over the recent samples (exponential
/// forgetting), and of the corrected errors' spread on the excess delay's square.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AsymmetryFit {
    /// The recent samples' excess delay and innovation `(x, y)`, newest at `next − 1` (a ring
    /// of the last `held`).
    samples: [(f32, f32); HISTORY],
    held: usize,
    next: usize,
    /// The line through them, refitted on each sample.
    line: Option<Line>,
    spread: SpreadFit,
}

impl Default for AsymmetryFit {
    fn default() -> Self {
        AsymmetryFit {
            samples: [(0.0, 0.0); HISTORY],
            held: 0,
            next: 0,
            line: None,
            spread: SpreadFit::default(),
        }
    }
}

/// A fitted line through the samples' weighted means, and its slope's standard error.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Line {
    /// The samples' total weight.
    n: f64,
    mean_x: f64,
    mean_y: f64,
    slope: f64,
    se: f64,
    /// The slope of the line through the origin instead: the share model's mean share.
    through_origin: f64,
}

/// A running least-squares fit of `v0 + v2·x²` to squared errors against squared excess
/// delays `x²`, with the fit's forgetting, and the mean variance the share model credited the
/// same samples with.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct SpreadFit {
    n: f64,
    x2: f64,
    x4: f64,
    e2: f64,
    e4: f64,
    x2e2: f64,
    credit: f64,
}

impl SpreadFit {
    /// Adds one sample, the older ones weighed by [`KEEP`].
    fn add(&mut self, x2: f64, e2: f64, credit: f64) {
        self.n = KEEP * self.n + 1.0;
        self.credit = KEEP * self.credit + credit;
        self.x2 = KEEP * self.x2 + x2;
        self.x4 = KEEP * self.x4 + x2 * x2;
        self.e2 = KEEP * self.e2 + e2;
        self.e4 = KEEP * self.e4 + e2 * e2;
        self.x2e2 = KEEP * self.x2e2 + x2 * e2;
    }

    /// The mean squared error and that mean's standard error.
    fn mean_error(&self) -> (f64, f64) {
        let mean_e2 = self.e2 / self.n;
        let var_e2 = (self.e4 / self.n - mean_e2 * mean_e2).max(0.0);
        (mean_e2, (var_e2 / self.n).sqrt())
    }

    /// `(v0, v2)` with `v0` ≥ 0 and `v2` within [0, `most`].
    fn coefficients(&self, most: f64) -> (f64, f64) {
        let (mean_x2, mean_e2) = (self.x2 / self.n, self.e2 / self.n);
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
    /// discipline's innovation `y` for it (seconds), the variance of the prediction that
    /// innovation is taken against (s²), and the variance the share model credits the sample
    /// with (`credit`, s²: its share of the excess and the minimum delay's uncertainty), which
    /// the measured spread must beat to be used.
    pub fn add(&mut self, x: f64, y: f64, prediction_variance: f64, credit: f64) {
        if ![x, y, prediction_variance, credit]
            .iter()
            .all(|v| v.is_finite())
        {
            return;
        }
        // What the correction in use left of this sample's error: the spread is judged out of
        // sample, against the line known before it.
        if let Some((b, _)) = self.significant() {
            let e = y - self.intercept(b) - b * x;
            self.spread.add(x * x, e * e - prediction_variance, credit);
        }
        self.samples[self.next] = (x as f32, y as f32);
        self.next = (self.next + 1) % HISTORY;
        self.held = (self.held + 1).min(HISTORY);
        self.line = self.fit();
    }

    /// The held samples with their weights, newest first.
    fn weighted(&self) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
        (0..self.held).scan(1.0, |w, age| {
            let (x, y) = self.samples[(self.next + HISTORY - 1 - age) % HISTORY];
            let this = *w;
            *w *= KEEP;
            Some((x as f64, y as f64, this))
        })
    }

    /// The weighted least-squares line through the held samples and its slope's standard
    /// error: the larger of the usual one and the heteroscedasticity-consistent one, with
    /// each residual taken as it would be with its sample left out (`e / (1 − h)` for
    /// leverage `h`). Queueing errors grow with the excess delay, and one sample far out in
    /// it pulls the line to itself: the usual error would then call a chance slope real.
    fn fit(&self) -> Option<Line> {
        let (mut n, mut sx, mut sy) = (0.0, 0.0, 0.0);
        for (x, y, w) in self.weighted() {
            n += w;
            sx += w * x;
            sy += w * y;
        }
        if n <= 2.0 {
            return None;
        }
        let (mx, my) = (sx / n, sy / n);
        let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
        let (mut raw_xx, mut raw_xy) = (0.0, 0.0);
        for (x, y, w) in self.weighted() {
            raw_xx += w * x * x;
            raw_xy += w * x * y;
            let (u, v) = (x - mx, y - my);
            sxx += w * u * u;
            sxy += w * u * v;
            syy += w * v * v;
        }
        if sxx <= 0.0 {
            return None;
        }
        let slope = sxy / sxx;
        let mut robust = 0.0;
        for (x, y, w) in self.weighted() {
            let u = x - mx;
            let left_out = 1.0 - w * (1.0 / n + u * u / sxx);
            if left_out <= f64::EPSILON {
                return None;
            }
            let e = (y - my - slope * u) / left_out;
            robust += w * u * u * e * e;
        }
        let usual = ((syy - slope * sxy) / (n - 2.0)).max(0.0) / sxx;
        let robust = robust / (sxx * sxx);
        Some(Line {
            n,
            mean_x: mx,
            mean_y: my,
            slope,
            se: usual.max(robust).sqrt(),
            through_origin: raw_xy / raw_xx,
        })
    }

    /// The offset error per second of excess delay (β), or 0 while it is not clearly nonzero.
    pub fn slope(&self) -> f64 {
        self.significant().map_or(0.0, |(b, _)| b)
    }

    /// The variance of a sample's offset error once corrected by [`slope`](Self::slope), as a
    /// share of the symmetric `excess²/12`: `1 − 4β² + 12·se²` (module docs), at most 1; 1
    /// while no slope is used. Here β is the mean share's: the slope of the line through the
    /// origin (the share model has no level).
    pub fn unexplained(&self) -> f64 {
        self.significant().map_or(1.0, |(_, se)| {
            let b = self.mean_share_slope();
            (1.0 - 4.0 * b * b + 12.0 * se * se).min(1.0)
        })
    }

    /// How far the mean share of the excess queued one way lies from ½, as a slope: the line
    /// through the origin's, within ±[`MAX_SLOPE`].
    fn mean_share_slope(&self) -> f64 {
        self.line
            .map_or(0.0, |l| l.through_origin.clamp(-MAX_SLOPE, MAX_SLOPE))
    }

    /// The variance (s²) of the corrected error of a sample `x` seconds above the path's
    /// minimum, as measured (module docs): `v0 + v2·x²`, which holds the slope's own error
    /// (each sample was judged against the line known before it). None while no slope is
    /// used, before [`MIN_SPREAD_SAMPLES`] corrected samples, or while the measured spread does not
    /// stand [`SIGNIFICANCE`] standard errors below what the share model credited the same
    /// samples with: [`unexplained`](Self::unexplained) applies then. (Where both directions
    /// queue alike, a slope that cleared its noise by chance leaves the share model right and
    /// the measurement only noisier.)
    pub fn corrected_variance(&self, x: f64) -> Option<f64> {
        self.significant()?;
        if self.spread.n < MIN_SPREAD_SAMPLES {
            return None;
        }
        let (mean_e2, se_e2) = self.spread.mean_error();
        if mean_e2 + SIGNIFICANCE * se_e2 >= self.spread.credit / self.spread.n {
            return None;
        }
        // The share of the excess queued one way lies in [0, 1] with mean ½ + β, so its
        // variance is at most (½ + β)(½ − β) (Bhatia–Davis): v2 never exceeds that.
        let b = self.mean_share_slope();
        let (v0, v2) = self.spread.coefficients(MAX_SLOPE * MAX_SLOPE - b * b);
        Some(v0 + v2 * x * x)
    }

    /// The fitted slope (clamped to ±[`MAX_SLOPE`]) and its standard error, once enough
    /// samples are in and the slope stands clear of its noise.
    fn significant(&self) -> Option<(f64, f64)> {
        let l = self.line.filter(|l| l.n >= MIN_SAMPLES)?;
        (l.slope.abs() > critical_t(l.n - 2.0) * l.se)
            .then(|| (l.slope.clamp(-MAX_SLOPE, MAX_SLOPE), l.se))
    }

    /// The innovation the fit expects at no excess delay, for slope `b`.
    fn intercept(&self, b: f64) -> f64 {
        self.line.map_or(0.0, |l| l.mean_y - b * l.mean_x)
    }

    /// Forgets everything (e.g. after the path changed).
    pub fn clear(&mut self) {
        *self = AsymmetryFit::default();
    }
}

/// How many of its estimated standard errors a slope fitted with `dof` degrees of freedom
/// must lie from zero to be as unlikely by chance as one [`SIGNIFICANCE`] true standard errors
/// out: Student's t at that tail, by its Cornish–Fisher expansion (4.73 at 6 degrees of
/// freedom against the exact 4.90, within 1 % from 10 on, 3.13 at 60). With few samples the
/// standard error is itself uncertain, and a fixed multiple of it would let chance slopes
/// through.
fn critical_t(dof: f64) -> f64 {
    let z = SIGNIFICANCE;
    let (z3, z5) = (z.powi(3), z.powi(5));
    z + (z3 + z) / (4.0 * dof) + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * dof * dof)
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
    /// draw of scale `sd`, whose variance, 2·sd², is told to the fit. The minimum delay is
    /// known exactly here, so the share model credits a sample with its share of the excess
    /// alone.
    fn fitted(up: f64, down: f64, sd: f64, n: usize, seed: u64) -> AsymmetryFit {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut f = AsymmetryFit::default();
        for _ in 0..n {
            add_path_sample(&mut f, &mut rng, up, down, sd);
        }
        f
    }

    /// Adds one sample of that path to `f`: queueing waits drawn with means `up` and `down`,
    /// the innovation's prediction error a Laplace draw of scale `sd` (variance 2·sd², told to
    /// the fit).
    fn add_path_sample(
        f: &mut AsymmetryFit,
        rng: &mut Xoshiro256PlusPlus,
        up: f64,
        down: f64,
        sd: f64,
    ) {
        let (a, b) = (exp(rng, up), exp(rng, down));
        let noise = sd * (exp(rng, 1.0) - exp(rng, 1.0));
        add(f, a + b, (a - b) / 2.0 + noise, 2.0 * sd * sd);
    }

    /// Adds a sample of excess `x` and innovation `y` (offset error: half of client→server
    /// minus server→client delay, plus the prediction's error) with the share model's credit.
    fn add(f: &mut AsymmetryFit, x: f64, y: f64, prediction_variance: f64) {
        let credit = f.unexplained() * x * x / 12.0;
        f.add(x, y, prediction_variance, credit);
    }

    /// Over fresh samples of the path, with `f`'s slope, those whose excess is at least
    /// `from`: the corrected errors' mean square about the fit's level (which the discipline
    /// takes up) and the mean variance `f` credits them with, as measured or else by the share
    /// model.
    fn credited(f: &AsymmetryFit, up: f64, down: f64, from: f64, seed: u64) -> (f64, f64) {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let level = f.intercept(f.slope());
        let (mut err, mut said, mut n) = (0.0, 0.0, 0.0);
        for _ in 0..40_000 {
            let (a, c) = (exp(&mut rng, up), exp(&mut rng, down));
            let x = a + c;
            if x < from {
                continue;
            }
            err += ((a - c) / 2.0 - f.slope() * x - level).powi(2);
            said += f
                .corrected_variance(x)
                .unwrap_or(f.unexplained() * x * x / 12.0);
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
        // Queues of comparable means: whether measured or by the share model, what a sample
        // is credited with stays within a factor of two of its actual error.
        for seed in 1..=5 {
            let f = fitted(100e-6, 300e-6, 10e-6, 400, seed);
            assert_ne!(f.slope(), 0.0, "seed {seed}");
            let (err, said) = credited(&f, 100e-6, 300e-6, 0.0, 100 + seed);
            assert!(
                (0.5..2.0).contains(&(said / err)),
                "seed {seed}: credited {:.1} µs, actual {:.1} µs",
                said.sqrt() * 1e6,
                err.sqrt() * 1e6
            );
        }
    }

    #[test]
    fn the_spread_waits_for_a_slope_and_enough_samples() {
        // A symmetric path uses no slope, so nothing is measured.
        assert_eq!(
            fitted(100e-6, 100e-6, 10e-6, 400, 9).corrected_variance(1e-3),
            None
        );
        // One-sided: the slope is used once MIN_SAMPLES are in, within a dozen samples; the
        // spread only MIN_SPREAD_SAMPLES corrected samples after that, within a few dozen.
        for seed in 1..=10 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut f = AsymmetryFit::default();
            let (mut sloped, mut spread) = (None, None);
            for i in 1..=60 {
                add_path_sample(&mut f, &mut rng, 15e-6, 485e-6, 10e-6);
                if f.slope() != 0.0 {
                    sloped.get_or_insert(i);
                }
                if f.corrected_variance(1e-3).is_some() {
                    spread.get_or_insert(i);
                }
            }
            let (sloped, spread) = (sloped.unwrap(), spread.unwrap());
            assert!(
                (MIN_SAMPLES as usize..=12).contains(&sloped),
                "seed {seed}: slope used from sample {sloped}"
            );
            assert!(
                spread >= sloped + MIN_SPREAD_SAMPLES as usize && spread <= 40,
                "seed {seed}: slope from sample {sloped}, spread from {spread}"
            );
        }
    }

    #[test]
    fn the_critical_t_follows_students_t() {
        // Student's t at the one-sided tail of 3 normal standard deviations (0.135 %).
        for (dof, exact) in [(6.0, 4.904), (10.0, 3.957), (14.0, 3.636), (60.0, 3.130)] {
            let t = critical_t(dof);
            assert!((t / exact - 1.0).abs() < 0.04, "{dof}: {t} against {exact}");
        }
        assert!((critical_t(1e6) - SIGNIFICANCE).abs() < 1e-3);
    }

    #[test]
    fn early_chance_slopes_are_rare() {
        // The slope is judged from MIN_SAMPLES on: over the first 32 samples of a symmetric
        // path, few runs ever use one.
        let mut ever = 0;
        for seed in 1..=100 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut f = AsymmetryFit::default();
            let mut used = false;
            for _ in 0..32 {
                add_path_sample(&mut f, &mut rng, 1e-3, 1e-3, 10e-6);
                used |= f.slope() != 0.0;
            }
            ever += used as u32;
        }
        // 5 of 100 here; a fixed 3 standard errors from 8 samples on let 21 through.
        assert!(
            ever <= 10,
            "{ever} of 100 symmetric runs used a slope early"
        );
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
        assert_eq!(fit(15e-6, 485e-6, 1e-6, MIN_SAMPLES as usize - 1, 3), 0.0);
        let mut f = AsymmetryFit::default();
        f.add(f64::NAN, 1.0, 0.0, 0.0);
        f.add(1e-3, 1.0, f64::INFINITY, 0.0);
        assert_eq!(f, AsymmetryFit::default());
    }

    #[test]
    fn the_line_takes_up_the_short_queues_level() {
        // Queueing 30 µs one way and 970 µs the other (chrony's asymmetric-jitter model): a
        // long wait is almost all the long queue's, so the offset error is −x/2 plus the short
        // queue's wait, whose mean is a level. A line through the origin would tilt to explain
        // it (to about −0.485); the fitted line keeps the slope at −½ and the level apart.
        for seed in 1..=5 {
            let f = fitted(30e-6, 970e-6, 10e-6, 300, seed);
            let line = f.line.expect("a line");
            assert!(
                (-0.51..-0.49).contains(&line.slope),
                "seed {seed}: slope {}",
                line.slope
            );
            let level = f.intercept(f.slope());
            assert!(
                (10e-6..50e-6).contains(&level),
                "seed {seed}: level {:.1} µs",
                level * 1e6
            );
        }
    }

    #[test]
    fn one_far_sample_makes_no_slope() {
        // A symmetric path, then one exchange that waited 50 ms all one way: it tilts the line
        // by itself, and with the usual standard error the tilt would pass for a slope. Its
        // residual with it left out shows how little the other samples back it.
        let mut calls = 0;
        for seed in 1..=20 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut f = AsymmetryFit::default();
            for i in 0..24 {
                let (a, c) = if i == 12 {
                    (0.0, 50e-3)
                } else {
                    (exp(&mut rng, 1e-3), exp(&mut rng, 1e-3))
                };
                add(&mut f, a + c, (a - c) / 2.0, 0.0);
            }
            let line = f.line.expect("a line");
            assert!(line.slope < -0.2, "seed {seed}: {}", line.slope);
            assert_eq!(f.slope(), 0.0, "seed {seed}: {line:?}");
            let usual = {
                let mut r = 0.0;
                for (x, y, w) in f.weighted() {
                    let e = y - line.mean_y - line.slope * (x - line.mean_x);
                    r += w * e * e;
                }
                let sxx: f64 = f
                    .weighted()
                    .map(|(x, _, w)| w * (x - line.mean_x).powi(2))
                    .sum();
                (r / (line.n - 2.0) / sxx).sqrt()
            };
            if line.slope.abs() > SIGNIFICANCE * usual {
                calls += 1;
            }
        }
        assert!(
            calls >= 15,
            "the usual error called {calls} of 20 tilts a slope"
        );
    }
}
