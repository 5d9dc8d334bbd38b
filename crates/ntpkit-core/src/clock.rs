//! The clock model the algorithms reason about, and the commands they give it.
//!
//! The discipline corrects a clock with two commands only: a step of the phase, and a
//! frequency correction (the total, in ppm). Phase errors below the step threshold are slewed by
//! setting a frequency correction for a known time and then setting it back, so the core always
//! knows exactly how much correction the clock has received: the sim, the daemon's virtual clock
//! and the kernel (`ADJ_FREQUENCY`) all implement these two commands the same way.
//!
//! [`SoftClock`] is that model as a value: a clock derived from a free-running base timescale
//! (the OS clock in the daemon's `virtual` backend, true time in the simulator) plus its own
//! offset, intrinsic frequency error and commanded correction.

use crate::time::ClockTime;
use serde::Serialize;

/// A command from the core to the clock it disciplines.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub enum ClockCommand {
    /// Jump the clock by this many nanoseconds (positive = forward), now.
    Step {
        /// Signed step, nanoseconds.
        offset_ns: i64,
    },
    /// From now on run the clock `ppm` parts per million faster than its uncorrected rate. This
    /// is the total correction, not an increment; it includes any slew in progress.
    SetFrequency {
        /// Correction in ppm (positive = faster).
        ppm: f64,
    },
}

/// A software clock on top of a base timescale: `reading = base + offset`, where the offset
/// grows at the intrinsic frequency error plus the commanded correction.
///
/// All inputs are base-timescale nanoseconds (`i64`); readings keep sub-nanosecond phase in an
/// f64 remainder so that long runs do not accumulate rounding.
#[derive(Clone, Copy, Debug)]
pub struct SoftClock {
    /// Base time at which `offset_ns` was last rebased.
    base_ref: i64,
    /// Offset (reading − base) at `base_ref`, nanoseconds, integer part.
    offset_ns: i64,
    /// Sub-nanosecond part of the offset.
    offset_frac: f64,
    /// Intrinsic frequency error, ppm (positive = the clock runs fast).
    intrinsic_ppm: f64,
    /// Commanded correction, ppm.
    correction_ppm: f64,
}

impl SoftClock {
    /// A clock reading `base_now + initial_offset_ns`, running `intrinsic_ppm` fast.
    pub fn new(base_now: i64, initial_offset_ns: i64, intrinsic_ppm: f64) -> Self {
        SoftClock {
            base_ref: base_now,
            offset_ns: initial_offset_ns,
            offset_frac: 0.0,
            intrinsic_ppm,
            correction_ppm: 0.0,
        }
    }

    /// The offset (reading − base) at `base_now`, nanoseconds as f64 (for statistics).
    pub fn offset_at(&self, base_now: i64) -> f64 {
        let dt = (base_now - self.base_ref) as f64;
        self.offset_ns as f64 + self.offset_frac + dt * self.rate_ppm() * 1e-6
    }

    /// Reads the clock at `base_now`.
    pub fn read(&self, base_now: i64) -> ClockTime {
        let dt = (base_now - self.base_ref) as f64;
        let drift = self.offset_frac + dt * self.rate_ppm() * 1e-6;
        ClockTime(base_now + self.offset_ns + drift.floor() as i64)
    }

    /// Applies a command at `base_now`.
    pub fn apply(&mut self, base_now: i64, command: ClockCommand) {
        self.rebase(base_now);
        match command {
            ClockCommand::Step { offset_ns } => self.offset_ns += offset_ns,
            ClockCommand::SetFrequency { ppm } => self.correction_ppm = ppm,
        }
    }

    /// Changes the intrinsic frequency error at `base_now` (the simulator's wander; a virtual
    /// clock's configured error).
    pub fn set_intrinsic_ppm(&mut self, base_now: i64, ppm: f64) {
        self.rebase(base_now);
        self.intrinsic_ppm = ppm;
    }

    /// Adds `phase_ns` to the offset at `base_now` without a command (the simulator's
    /// integrated wander, a scheduled disturbance).
    pub fn disturb(&mut self, base_now: i64, phase_ns: f64) {
        self.rebase(base_now);
        self.offset_frac += phase_ns;
        self.normalize();
    }

    /// The intrinsic frequency error, ppm.
    pub fn intrinsic_ppm(&self) -> f64 {
        self.intrinsic_ppm
    }

    /// The commanded correction, ppm.
    pub fn correction_ppm(&self) -> f64 {
        self.correction_ppm
    }

    /// The remaining frequency error (intrinsic + correction), ppm.
    pub fn rate_ppm(&self) -> f64 {
        self.intrinsic_ppm + self.correction_ppm
    }

    fn rebase(&mut self, base_now: i64) {
        let dt = (base_now - self.base_ref) as f64;
        self.offset_frac += dt * self.rate_ppm() * 1e-6;
        self.base_ref = base_now;
        self.normalize();
    }

    fn normalize(&mut self) {
        let whole = self.offset_frac.floor();
        self.offset_ns += whole as i64;
        self.offset_frac -= whole;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn runs_fast_at_its_intrinsic_rate() {
        let c = SoftClock::new(0, 500_000_000, 50.0);
        assert_eq!(c.read(0), ClockTime(500_000_000));
        // 50 ppm over 1000 s = 50 ms.
        assert_eq!(c.read(1000 * S), ClockTime(1000 * S + 550_000_000));
    }

    #[test]
    fn correction_cancels_error_and_step_jumps() {
        let mut c = SoftClock::new(0, 0, 50.0);
        c.apply(10 * S, ClockCommand::SetFrequency { ppm: -50.0 });
        let at10 = c.read(10 * S).0 - 10 * S;
        assert_eq!(at10, 500_000);
        assert_eq!(c.read(1_000_000 * S).0 - 1_000_000 * S, 500_000);
        c.apply(
            20 * S,
            ClockCommand::Step {
                offset_ns: -500_000,
            },
        );
        assert_eq!(c.read(30 * S), ClockTime(30 * S));
    }

    #[test]
    fn no_rounding_drift_over_a_day_of_small_updates() {
        let mut c = SoftClock::new(0, 0, 0.001);
        for i in 0..86_400 {
            c.apply(i * S, ClockCommand::SetFrequency { ppm: 0.0 });
        }
        // 0.001 ppm for a day = 86.4 µs.
        let off = c.offset_at(86_400 * S);
        assert!((off - 86_400.0).abs() < 1e-3, "{off}");
    }
}
