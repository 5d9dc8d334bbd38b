//! The two timescales the core is driven with.
//!
//! * [`MonoTime`]: a monotonic timescale for deadlines and intervals. The daemon derives it from
//!   the OS monotonic clock; the simulator from its virtual true time. It never steps.
//! * [`ClockTime`]: a reading of the clock being disciplined (or served), in Unix nanoseconds.
//!   It is what goes into NTP timestamps, and it steps when the core commands a step.
//!
//! Both are integers: f64 would lose nanoseconds over a day.

use ntpkit_wire::NtpTimestamp;
use serde::Serialize;

/// Nanoseconds per second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// An instant on the monotonic timescale, in nanoseconds from an arbitrary origin.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize)]
pub struct MonoTime(pub i64);

impl MonoTime {
    /// `self + nanos`, saturating.
    pub const fn add_nanos(self, nanos: i64) -> MonoTime {
        MonoTime(self.0.saturating_add(nanos))
    }

    /// `self + secs` (fractional seconds allowed).
    pub fn add_secs_f64(self, secs: f64) -> MonoTime {
        self.add_nanos((secs * NANOS_PER_SEC as f64) as i64)
    }

    /// Nanoseconds from `earlier` to `self` (negative if `earlier` is later).
    pub const fn nanos_since(self, earlier: MonoTime) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Seconds from `earlier` to `self`.
    pub fn secs_since(self, earlier: MonoTime) -> f64 {
        self.nanos_since(earlier) as f64 / NANOS_PER_SEC as f64
    }
}

/// A reading of the local clock: nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize)]
pub struct ClockTime(pub i64);

impl ClockTime {
    /// Converts to a 64-bit NTP timestamp (era wraps as on the wire).
    pub fn to_ntp(self) -> NtpTimestamp {
        NtpTimestamp::from_unix_nanos(self.0)
    }

    /// Resolves an NTP timestamp to the era nearest `self`.
    pub fn resolve(self, ts: NtpTimestamp) -> ClockTime {
        ClockTime(ts.to_unix_nanos(self.0))
    }

    /// `self + nanos`, saturating.
    pub const fn add_nanos(self, nanos: i64) -> ClockTime {
        ClockTime(self.0.saturating_add(nanos))
    }

    /// Nanoseconds from `earlier` to `self`.
    pub const fn nanos_since(self, earlier: ClockTime) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// 2^`exp` (a log2 interval or precision as seconds), exactly, without a library call: poll
/// intervals and precisions are converted on every exchange.
pub fn exp2(exp: i32) -> f64 {
    match exp {
        -1022..=1023 => f64::from_bits(((exp + 1023) as u64) << 52),
        _ => 2f64.powi(exp),
    }
}

#[cfg(test)]
mod exp2_tests {
    #[test]
    fn exp2_is_exact() {
        for e in -1100..1100 {
            assert_eq!(super::exp2(e), 2f64.powi(e), "{e}");
        }
    }
}
