//! The clock model the algorithms reason about, and the commands they give it.
//!
//! The discipline corrects a clock with three commands: a step of the phase, a frequency
//! correction (the total, in ppm), and a slew: a frequency correction for a known time, after
//! which the clock goes on at a second one by itself, as adjtime(2) ends a slew. The clock layer
//! ends a slew on time without waiting for the core (a software clock does it exactly, the
//! daemon's `system` backend with its own timer), so the core needs no deadline for it and
//! always knows exactly how much correction the clock has received: the sim, the daemon's
//! virtual clock and the kernel (`ADJ_FREQUENCY`) all implement these commands the same way.
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
    /// Like `SetFrequency { ppm }` now, then `SetFrequency { ppm: then_ppm }` when
    /// `duration_ns` nanoseconds have passed, unless another frequency command comes first: a
    /// phase error slewed away at a known rate for a known time.
    Slew {
        /// Correction during the slew, ppm.
        ppm: f64,
        /// Length of the slew, nanoseconds (> 0).
        duration_ns: i64,
        /// Correction after it, ppm.
        then_ppm: f64,
    },
}

/// Clock commands waiting to be applied, merged as they arrive: steps add up, and a frequency
/// command (`SetFrequency` or `Slew`, each the total correction from now on) replaces the one
/// before it. Applied at one instant, the merged commands do what the sequence would, and the
/// queue is a fixed 48 bytes: every node of a simulation holds two.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CommandQueue {
    step_ns: Option<i64>,
    frequency: Option<ClockCommand>,
}

impl CommandQueue {
    pub(crate) fn push(&mut self, command: ClockCommand) {
        match command {
            ClockCommand::Step { offset_ns } => {
                self.step_ns = Some(self.step_ns.unwrap_or(0).saturating_add(offset_ns));
            }
            frequency => self.frequency = Some(frequency),
        }
    }

    /// The step first, then the frequency command.
    pub(crate) fn pop(&mut self) -> Option<ClockCommand> {
        match self.step_ns.take() {
            Some(offset_ns) => Some(ClockCommand::Step { offset_ns }),
            None => self.frequency.take(),
        }
    }
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
    /// Base time at which a slew in progress ends (`i64::MAX`: none)…
    slew_end: i64,
    /// …and the correction from then on, ppm.
    after_slew_ppm: f64,
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
            slew_end: i64::MAX,
            after_slew_ppm: 0.0,
        }
    }

    /// Phase gained from `base_ref` to `base_now` (≥ `base_ref`), nanoseconds: at the current
    /// rate, and after a slew's end at the rate that follows it.
    fn drift(&self, base_now: i64) -> f64 {
        let dt = (base_now - self.base_ref) as f64;
        if base_now <= self.slew_end {
            return dt * self.rate_ppm() * 1e-6;
        }
        let during = (self.slew_end - self.base_ref) as f64;
        during * self.rate_ppm() * 1e-6
            + (dt - during) * (self.intrinsic_ppm + self.after_slew_ppm) * 1e-6
    }

    /// The offset (reading − base) at `base_now`, nanoseconds as f64 (for statistics).
    pub fn offset_at(&self, base_now: i64) -> f64 {
        self.offset_ns as f64 + self.offset_frac + self.drift(base_now)
    }

    /// Reads the clock at `base_now`.
    pub fn read(&self, base_now: i64) -> ClockTime {
        let drift = self.offset_frac + self.drift(base_now);
        ClockTime(base_now + self.offset_ns + floor_i64(drift))
    }

    /// Applies a command at `base_now`.
    pub fn apply(&mut self, base_now: i64, command: ClockCommand) {
        self.rebase(base_now);
        match command {
            ClockCommand::Step { offset_ns } => self.offset_ns += offset_ns,
            ClockCommand::SetFrequency { ppm } => {
                self.correction_ppm = ppm;
                self.slew_end = i64::MAX;
            }
            ClockCommand::Slew {
                ppm,
                duration_ns,
                then_ppm,
            } => {
                self.correction_ppm = ppm;
                self.slew_end = base_now.saturating_add(duration_ns.max(0));
                self.after_slew_ppm = then_ppm;
            }
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

    /// At `base_now`, adds `phase_ns` to the offset and makes the intrinsic frequency error
    /// `intrinsic_ppm`: one step of the simulator's integrated wander, `disturb` and
    /// `set_intrinsic_ppm` at once.
    pub fn wander(&mut self, base_now: i64, phase_ns: f64, intrinsic_ppm: f64) {
        self.rebase(base_now);
        self.offset_frac += phase_ns;
        self.normalize();
        self.intrinsic_ppm = intrinsic_ppm;
    }

    /// The intrinsic frequency error, ppm.
    pub fn intrinsic_ppm(&self) -> f64 {
        self.intrinsic_ppm
    }

    /// The commanded correction at `base_now` (not before the last command), ppm.
    pub fn correction_ppm_at(&self, base_now: i64) -> f64 {
        if base_now < self.slew_end {
            self.correction_ppm
        } else {
            self.after_slew_ppm
        }
    }

    /// The remaining frequency error (intrinsic + correction) at `base_now`, ppm.
    pub fn rate_ppm_at(&self, base_now: i64) -> f64 {
        self.intrinsic_ppm + self.correction_ppm_at(base_now)
    }

    /// The rate since the last rebase, ppm.
    fn rate_ppm(&self) -> f64 {
        self.intrinsic_ppm + self.correction_ppm
    }

    fn rebase(&mut self, base_now: i64) {
        self.offset_frac += self.drift(base_now);
        if base_now >= self.slew_end {
            self.correction_ppm = self.after_slew_ppm;
            self.slew_end = i64::MAX;
        }
        self.base_ref = base_now;
        self.normalize();
    }

    fn normalize(&mut self) {
        let whole = floor_i64(self.offset_frac);
        self.offset_ns += whole;
        self.offset_frac -= whole as f64;
    }
}

/// `x.floor() as i64` for |x| < 2^53 (drifts of nanoseconds), without a libm call: baseline
/// x86-64 has no rounding instruction, and the clock is read several times per exchange.
fn floor_i64(x: f64) -> i64 {
    let t = x as i64; // toward zero
    t - i64::from((t as f64) > x)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn floor_matches_the_library_floor() {
        for x in [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            2.999,
            -2.999,
            1e15 + 0.5,
            -1e15 - 0.5,
        ] {
            assert_eq!(floor_i64(x), x.floor() as i64, "{x}");
        }
    }

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
    fn queued_commands_merge_into_what_they_do_together() {
        let mut q = CommandQueue::default();
        assert_eq!(q.pop(), None);
        q.push(ClockCommand::SetFrequency { ppm: 5.0 });
        q.push(ClockCommand::Step { offset_ns: 300 });
        q.push(ClockCommand::Step { offset_ns: -100 });
        let slew = ClockCommand::Slew {
            ppm: 40.0,
            duration_ns: S,
            then_ppm: 4.0,
        };
        q.push(slew);
        assert_eq!(q.pop(), Some(ClockCommand::Step { offset_ns: 200 }));
        assert_eq!(q.pop(), Some(slew));
        assert_eq!(q.pop(), None);
        // Applied at one instant, the merged commands and the sequence agree.
        let (mut a, mut b) = (SoftClock::new(0, 0, 10.0), SoftClock::new(0, 0, 10.0));
        for c in [
            ClockCommand::SetFrequency { ppm: 5.0 },
            ClockCommand::Step { offset_ns: 300 },
            ClockCommand::Step { offset_ns: -100 },
            slew,
        ] {
            a.apply(S, c);
        }
        b.apply(S, ClockCommand::Step { offset_ns: 200 });
        b.apply(S, slew);
        assert_eq!(a.read(100 * S), b.read(100 * S));
    }

    #[test]
    fn a_slew_ends_by_itself() {
        // 500 ppm for 10 s (5 ms), then −20 ppm.
        let slew = ClockCommand::Slew {
            ppm: 500.0,
            duration_ns: 10 * S,
            then_ppm: -20.0,
        };
        let mut c = SoftClock::new(0, 0, 20.0);
        c.apply(0, slew);
        assert_eq!(c.read(5 * S), ClockTime(5 * S + 2_600_000));
        assert_eq!(c.read(10 * S), ClockTime(10 * S + 5_200_000));
        assert_eq!(c.read(1000 * S), ClockTime(1000 * S + 5_200_000));
        assert_eq!(c.rate_ppm_at(9 * S), 520.0);
        assert_eq!(c.rate_ppm_at(10 * S), 0.0);
        // Read across the end or rebased across it: the same clock.
        let mut d = c;
        d.set_intrinsic_ppm(30 * S, 20.0);
        assert_eq!(d.read(1000 * S), c.read(1000 * S));
        assert_eq!(d.correction_ppm_at(30 * S), -20.0);
        // A frequency command cancels a slew in progress.
        let mut e = SoftClock::new(0, 0, 0.0);
        e.apply(0, slew);
        e.apply(S, ClockCommand::SetFrequency { ppm: 0.0 });
        assert_eq!(e.read(100 * S), ClockTime(100 * S + 500_000));
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
