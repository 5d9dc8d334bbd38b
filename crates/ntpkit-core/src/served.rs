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
    /// The server's own error bound, where it has one: the root dispersion served is never
    /// less than it allows for (see [`DispersionFloor`]).
    pub dispersion_floor: Option<DispersionFloor>,
}

/// A floor under the root dispersion served, from the server's own error bound: half the root
/// delay plus the root dispersion (the root distance a client adds to its own error) must
/// cover what the server's clock may be off by, or the clients' bounds inherit a promise the
/// server cannot keep. NTP's dispersion grows at [`PHI`] from the last update; a discipline
/// whose frequency estimate is still unsettled (a server following an upstream that slews at
/// start-up) can move away from true time faster, and its bound grows with it.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct DispersionFloor {
    /// When the floor was computed (served clock).
    pub at: ClockTime,
    /// The server's bound then, less half the root delay, seconds.
    pub dispersion: f64,
    /// How fast the bound may grow without an update, seconds per second.
    pub growth: f64,
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
            dispersion_floor: None,
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
            dispersion_floor: None,
        }
    }

    /// True if clients should accept this time (leap ≠ 3, stratum 1–15).
    pub fn is_synchronized(&self) -> bool {
        self.leap != LeapIndicator::Unsynchronized && (1..16).contains(&self.stratum)
    }

    /// Root dispersion to advertise at `now`: the value at the reference time, plus PHI times
    /// the time since, plus the clock's precision; at least the server's own bound allows for
    /// (the [`dispersion_floor`](Self::dispersion_floor)).
    pub fn root_dispersion_at(&self, now: ClockTime) -> NtpShort {
        let age = now.nanos_since(self.reference_time).max(0) as f64;
        let precision = crate::time::exp2(self.precision as i32) * NANOS_PER_SEC as f64;
        let mut total = self.root_dispersion as f64 + PHI * age;
        if let Some(floor) = self.dispersion_floor {
            let age = now.nanos_since(floor.at).max(0) as f64;
            total = total.max((floor.dispersion + floor.growth * age * 1e-9) * 1e9);
        }
        NtpShort::from_nanos((total + precision).min(i64::MAX as f64) as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_dispersion_served_is_never_under_the_servers_own_bound() {
        let t0 = ClockTime(1_790_000_000 * NANOS_PER_SEC);
        let mut s = ServedState::local(2, RefId::LOCL, -30, t0);
        s.root_dispersion = 1_000_000; // 1 ms, aged at PHI
        let at = |secs: i64| t0.add_nanos(secs * NANOS_PER_SEC);
        let served = |s: &ServedState, secs| s.root_dispersion_at(at(secs)).to_seconds_f64();
        let near = |got: f64, want: f64| {
            assert!(
                (got - want).abs() < 2e-5,
                "{got} s, not {want} s (NtpShort is 15 µs coarse)"
            )
        };
        near(served(&s, 100), 2.5e-3);
        // A bound of 2 ms growing at 100 ppm: above NTP's dispersion from the start, and
        // pulling away from it.
        s.dispersion_floor = Some(DispersionFloor {
            at: t0,
            dispersion: 2e-3,
            growth: 100e-6,
        });
        near(served(&s, 0), 2e-3);
        near(served(&s, 100), 12e-3);
        // A floor below NTP's dispersion changes nothing.
        s.dispersion_floor = Some(DispersionFloor {
            at: t0,
            dispersion: 0.5e-3,
            growth: 1e-6,
        });
        near(served(&s, 100), 2.5e-3);
    }
}
