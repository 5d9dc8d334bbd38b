//! A simulated oscillator: the core's [`SoftClock`] on top of true time, plus frequency wander
//! integrated lazily.
//!
//! Wander is a random walk of the intrinsic frequency: each simulated second adds a normal step
//! of standard deviation σ (s/s). Drawing a step every second for every node would cost an
//! event per node per second, so the walk is advanced only when the clock is read, commanded or
//! sampled, over the whole interval Δ since the last advance, in its continuous-time (Wiener)
//! form: the frequency change Δν and the phase it adds, φ = ∫ (ν(s) − ν₀) ds, are jointly
//! Gaussian with Var Δν = σ²Δ, Var φ = σ²Δ³/3, Cov = σ²Δ²/2. We draw Δν, then
//! φ = Δν·Δ/2 + N(0, σ²Δ³/12). For Δ = 1 s steps this matches the per-second discrete walk in
//! the variance of ν exactly and in that of the phase to within the discretization (Δ³/3 vs
//! Σk² over whole seconds), and it does not depend on how often the clock is looked at.

use crate::rng::{normal, Rng};
use ntpkit_core::{ClockCommand, ClockTime, SoftClock};

/// 1/√12.
const FRAC_1_SQRT_12: f64 = 0.288_675_134_594_812_9;

/// Origin of the simulated clocks' readings: true time 0 is this Unix time (2026-01-01).
pub const EPOCH_NS: i64 = 1_767_225_600 * 1_000_000_000;

/// A node's clock. All times are true time in ns since the start of the run.
#[derive(Clone, Debug)]
pub struct SimClock {
    soft: SoftClock,
    /// Wander σ, s/s per √s.
    wander: f64,
    /// True time up to which the wander has been integrated.
    last: i64,
}

impl SimClock {
    /// A clock `offset_ns` off true time at t = 0, running `ppm` fast.
    pub fn new(offset_ns: i64, ppm: f64, wander: f64) -> Self {
        SimClock {
            soft: SoftClock::new(EPOCH_NS, offset_ns, ppm),
            wander,
            last: 0,
        }
    }

    /// Integrates the wander up to `t` (never backwards).
    fn advance(&mut self, t: i64, rng: &mut Rng) {
        if self.wander == 0.0 || t <= self.last {
            return;
        }
        let dt = (t - self.last) as f64 * 1e-9;
        let sigma_sqrt_dt = self.wander * dt.sqrt();
        let (z1, z2) = (normal(rng), normal(rng));
        let dnu = sigma_sqrt_dt * z1;
        // σ·√(Δ³/12) = σ·√Δ·Δ/√12.
        let phase = dnu * dt / 2.0 + sigma_sqrt_dt * dt * FRAC_1_SQRT_12 * z2;
        let ppm = self.soft.intrinsic_ppm() + dnu * 1e6;
        self.soft.wander(EPOCH_NS + t, phase * 1e9, ppm);
        self.last = t;
    }

    /// Reads the clock at true time `t`.
    pub fn read(&mut self, t: i64, rng: &mut Rng) -> ClockTime {
        self.advance(t, rng);
        self.soft.read(EPOCH_NS + t)
    }

    /// Applies a command from the core at `t`.
    pub fn apply(&mut self, t: i64, cmd: ClockCommand, rng: &mut Rng) {
        self.advance(t, rng);
        self.soft.apply(EPOCH_NS + t, cmd);
    }

    /// Steps the clock by `offset_ns` at `t` without the core knowing (a disturbance).
    pub fn disturb(&mut self, t: i64, offset_ns: i64, rng: &mut Rng) {
        self.advance(t, rng);
        self.soft.disturb(EPOCH_NS + t, offset_ns as f64);
    }

    /// True error (clock − true time) at `t`, ns, and the remaining frequency error, ppm.
    pub fn error(&mut self, t: i64, rng: &mut Rng) -> (f64, f64) {
        self.advance(t, rng);
        (
            self.soft.offset_at(EPOCH_NS + t),
            self.soft.rate_ppm_at(EPOCH_NS + t),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{stream, StreamKind};

    #[test]
    fn perfect_clock_reads_true_time() {
        let mut r = stream(1, StreamKind::Clock, 0);
        let mut c = SimClock::new(0, 0.0, 0.0);
        assert_eq!(
            c.read(5_000_000_000, &mut r),
            ClockTime(EPOCH_NS + 5_000_000_000)
        );
    }

    #[test]
    fn wander_has_the_right_spread() {
        // After 10,000 s of σ = 1e-9 per √s, the frequency has moved by sd 1e-7 (0.1 ppm) and
        // the phase by sd σ·T^1.5/√3 ≈ 0.577 ms; check over many clocks, read every 100 s.
        let n = 400;
        let (mut sf, mut sp) = (0.0, 0.0);
        for i in 0..n {
            let mut r = stream(3, StreamKind::Clock, i);
            let mut c = SimClock::new(0, 0.0, 1e-9);
            for k in 1..=100 {
                c.read(k * 100 * 1_000_000_000, &mut r);
            }
            let (phase, f) = c.error(10_000 * 1_000_000_000, &mut r);
            sf += f * f;
            sp += (phase * 1e-9).powi(2);
        }
        let sd_f = (sf / n as f64).sqrt();
        let sd_p = (sp / n as f64).sqrt();
        assert!((sd_f - 0.1).abs() < 0.015, "frequency sd {sd_f} ppm");
        assert!((sd_p - 5.77e-4).abs() < 0.9e-4, "phase sd {sd_p} s");
    }
}
