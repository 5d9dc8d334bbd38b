//! What a server tells its clients about the clock it serves.

use crate::time::{ClockTime, NANOS_PER_SEC};
use ntpkit_wire::{LeapIndicator, NtpShort, RefId};

/// Frequency tolerance: how fast an undisciplined clock's error bound grows (RFC 5905 PHI,
/// 15 ppm), used to age the root dispersion between clock updates.
pub const PHI: f64 = 15e-6;

/// The served clock's state: the values a reply's header carries besides the timestamps.
///
/// The synchronization core produces it from the selected source (stratum + 1, the source's
/// reference ID, accumulated root delay and dispersion); `ntpkit serve` builds it from its
/// command line for the local clock.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct ServedState {
    /// Leap indicator; [`LeapIndicator::Unsynchronized`] when the clock is not synchronized.
    pub leap: LeapIndicator,
    /// Stratum (1–15 synchronized, 16 unsynchronized).
    pub stratum: u8,
    /// Precision of the served clock, log2 seconds.
    pub precision: i8,
    /// Poll exponent advertised in replies.
    pub poll: i8,
    /// Round-trip delay to the primary reference, nanoseconds.
    pub root_delay: i64,
    /// Error bound relative to the primary reference at `reference_time`, nanoseconds.
    pub root_dispersion: i64,
    /// Reference ID.
    pub reference_id: RefId,
    /// When the clock was last set or corrected.
    pub reference_time: ClockTime,
}

impl ServedState {
    /// The state of an unsynchronized server: leap 3, stratum 16, refid `INIT`.
    pub fn unsynchronized(precision: i8) -> Self {
        ServedState {
            leap: LeapIndicator::Unsynchronized,
            stratum: 16,
            precision,
            poll: 0,
            root_delay: 0,
            root_dispersion: 0,
            reference_id: RefId::INIT,
            reference_time: ClockTime(0),
        }
    }

    /// A server of its own local clock at `stratum` (as chrony's `local stratum N`).
    pub fn local(stratum: u8, reference_id: RefId, precision: i8, now: ClockTime) -> Self {
        ServedState {
            leap: LeapIndicator::NoWarning,
            stratum,
            precision,
            poll: 0,
            root_delay: 0,
            root_dispersion: 0,
            reference_id,
            reference_time: now,
        }
    }

    /// True if clients should accept this time (leap ≠ 3, stratum 1–15).
    pub fn is_synchronized(&self) -> bool {
        self.leap != LeapIndicator::Unsynchronized && (1..16).contains(&self.stratum)
    }

    /// Root dispersion to advertise at `now`: the value at the reference time, plus PHI times
    /// the time since, plus the clock's precision.
    pub fn root_dispersion_at(&self, now: ClockTime) -> NtpShort {
        let age = now.nanos_since(self.reference_time).max(0) as f64;
        let precision = crate::time::exp2(self.precision as i32) * NANOS_PER_SEC as f64;
        let total = self.root_dispersion as f64 + PHI * age + precision;
        NtpShort::from_nanos(total.min(i64::MAX as f64) as i64)
    }
}
