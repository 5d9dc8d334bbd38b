//! NTP time formats: the 64-bit timestamp (32.32 seconds since an era start) and the 32-bit
//! short format (16.16 seconds) used for root delay and root dispersion.
//!
//! Byte order and era wrap-around live only here. A 64-bit timestamp names an instant modulo
//! 2^32 s (about 136 years); [`NtpTimestamp::to_unix_nanos`] resolves the era from a pivot, so
//! arithmetic stays correct across the 2036 rollover.

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_UNIX_OFFSET_SECS: i64 = 2_208_988_800;

const NANOS_PER_SEC: i128 = 1_000_000_000;
const FRAC_PER_SEC: i128 = 1 << 32;

/// A 64-bit NTP timestamp: seconds (high 32 bits) and fraction (low 32 bits), era unknown.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NtpTimestamp(u64);

impl NtpTimestamp {
    /// The all-zero timestamp, which RFC 5905 uses to mean "unknown / not set".
    pub const ZERO: NtpTimestamp = NtpTimestamp(0);

    /// Wraps raw 32.32 bits, as they appear on the wire.
    pub const fn from_bits(bits: u64) -> Self {
        NtpTimestamp(bits)
    }

    /// The raw 32.32 bits.
    pub const fn to_bits(self) -> u64 {
        self.0
    }

    /// Decodes the 8 big-endian wire bytes.
    pub const fn from_be_bytes(bytes: [u8; 8]) -> Self {
        NtpTimestamp(u64::from_be_bytes(bytes))
    }

    /// Encodes to the 8 big-endian wire bytes.
    pub const fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// True for the zero timestamp.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Converts Unix time in nanoseconds, rounding to the nearest 2^-32 s. Instants after
    /// 2036-02-07 land in era 1 (they wrap), as on the wire.
    pub fn from_unix_nanos(unix_nanos: i64) -> Self {
        // 64-bit arithmetic throughout (a 128-bit division is a library call, and this runs
        // for every timestamp): sub-second nanoseconds times 2^32 stay below 2^62.
        const NS: i64 = NANOS_PER_SEC as i64;
        let secs = unix_nanos.div_euclid(NS) + NTP_UNIX_OFFSET_SECS;
        let sub = unix_nanos.rem_euclid(NS) as u64;
        let frac = (sub * (FRAC_PER_SEC as u64) + NS as u64 / 2) / NS as u64;
        // Rounding can carry into the seconds; the wrapping add keeps the era arithmetic.
        let bits = ((secs as u64) << 32).wrapping_add(frac);
        NtpTimestamp(bits)
    }

    /// Converts to Unix nanoseconds, choosing the era that puts the result within ±68 years
    /// of `pivot_unix_nanos` (typically the local clock's reading).
    pub fn to_unix_nanos(self, pivot_unix_nanos: i64) -> i64 {
        let pivot = NtpTimestamp::from_unix_nanos(pivot_unix_nanos);
        let delta = self.wrapping_sub(pivot);
        pivot_unix_nanos.saturating_add(delta.to_nanos())
    }

    /// Signed difference `self − earlier`, taken modulo 2^32 s: correct across an era rollover
    /// as long as the two instants are less than 68 years apart.
    pub const fn wrapping_sub(self, earlier: NtpTimestamp) -> NtpDelta {
        NtpDelta(self.0.wrapping_sub(earlier.0) as i64)
    }

    /// `self + delta`, wrapping at the era boundary.
    pub const fn wrapping_add(self, delta: NtpDelta) -> NtpTimestamp {
        NtpTimestamp(self.0.wrapping_add(delta.0 as u64))
    }

    /// Seconds field (within the era).
    pub const fn seconds(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Fraction field, in units of 2^-32 s.
    pub const fn fraction(self) -> u32 {
        self.0 as u32
    }
}

impl core::fmt::Debug for NtpTimestamp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "NtpTimestamp({:08x}.{:08x})",
            self.seconds(),
            self.fraction()
        )
    }
}

/// A signed time difference in 32.32 fixed point (units of 2^-32 s, range ±68 years).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct NtpDelta(pub i64);

impl NtpDelta {
    /// Zero difference.
    pub const ZERO: NtpDelta = NtpDelta(0);

    /// Rounds to nanoseconds.
    pub fn to_nanos(self) -> i64 {
        let v = self.0 as i128 * NANOS_PER_SEC;
        // Round half away from zero.
        let r = if v >= 0 {
            (v + FRAC_PER_SEC / 2) >> 32
        } else {
            -((-v + FRAC_PER_SEC / 2) >> 32)
        };
        r as i64
    }

    /// Converts from nanoseconds, saturating at ±68 years.
    pub fn from_nanos(nanos: i64) -> Self {
        let v = nanos as i128 * FRAC_PER_SEC;
        let r = if v >= 0 {
            (v + NANOS_PER_SEC / 2) / NANOS_PER_SEC
        } else {
            (v - NANOS_PER_SEC / 2) / NANOS_PER_SEC
        };
        NtpDelta(r.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }

    /// Seconds as f64 (for statistics; never for absolute time).
    pub fn to_seconds_f64(self) -> f64 {
        self.0 as f64 / FRAC_PER_SEC as f64
    }
}

/// NTP short format: unsigned 16.16 seconds, used for root delay and root dispersion.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtpShort(u32);

impl NtpShort {
    /// Zero.
    pub const ZERO: NtpShort = NtpShort(0);
    /// The largest representable value (65535.99998 s).
    pub const MAX: NtpShort = NtpShort(u32::MAX);

    /// Wraps raw 16.16 bits.
    pub const fn from_bits(bits: u32) -> Self {
        NtpShort(bits)
    }

    /// The raw 16.16 bits.
    pub const fn to_bits(self) -> u32 {
        self.0
    }

    /// Converts nanoseconds, rounding up (delay and dispersion are error bounds) and saturating.
    pub fn from_nanos(nanos: i64) -> Self {
        if nanos <= 0 {
            return NtpShort(0);
        }
        let v = (nanos as u128 * 65536).div_ceil(NANOS_PER_SEC as u128);
        NtpShort(v.min(u32::MAX as u128) as u32)
    }

    /// Converts seconds (negative values and NaN give zero), rounding up and saturating.
    pub fn from_seconds_f64(secs: f64) -> Self {
        if secs.is_nan() || secs <= 0.0 {
            return NtpShort(0);
        }
        let v = (secs * 65536.0).ceil();
        if v >= u32::MAX as f64 {
            NtpShort(u32::MAX)
        } else {
            NtpShort(v as u32)
        }
    }

    /// Nanoseconds.
    pub fn to_nanos(self) -> i64 {
        ((self.0 as i128 * NANOS_PER_SEC) >> 16) as i64
    }

    /// Seconds as f64.
    pub fn to_seconds_f64(self) -> f64 {
        self.0 as f64 / 65536.0
    }
}

impl core::fmt::Debug for NtpShort {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "NtpShort({:.6}s)", self.to_seconds_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NS: i64 = 1_000_000_000;

    #[test]
    fn unix_epoch_is_ntp_2208988800() {
        let t = NtpTimestamp::from_unix_nanos(0);
        assert_eq!(t.seconds(), 2_208_988_800);
        assert_eq!(t.fraction(), 0);
        assert_eq!(t.to_unix_nanos(0), 0);
    }

    #[test]
    fn half_second_fraction() {
        let t = NtpTimestamp::from_unix_nanos(NS / 2);
        assert_eq!(t.fraction(), 0x8000_0000);
    }

    #[test]
    fn era_rollover_2036() {
        // 2036-02-07T06:28:16Z is the first instant of NTP era 1.
        let rollover_unix = (1u64 << 32) as i64 - NTP_UNIX_OFFSET_SECS;
        assert_eq!(rollover_unix, 2_085_978_496);
        let before = NtpTimestamp::from_unix_nanos(rollover_unix * NS - NS / 2);
        let after = NtpTimestamp::from_unix_nanos(rollover_unix * NS + NS / 2);
        assert_eq!(before.seconds(), u32::MAX);
        assert_eq!(after.seconds(), 0);
        // The difference is one second although the raw values wrapped.
        assert_eq!(after.wrapping_sub(before).to_nanos(), NS);
        assert_eq!(before.wrapping_sub(after).to_nanos(), -NS);
        // Era resolution from a pivot on either side.
        let pivot = rollover_unix * NS;
        assert_eq!(after.to_unix_nanos(pivot), rollover_unix * NS + NS / 2);
        assert_eq!(before.to_unix_nanos(pivot), rollover_unix * NS - NS / 2);
        // A pivot years away still resolves the right era.
        let pivot_2030 = 1_893_456_000 * NS;
        assert_eq!(after.to_unix_nanos(pivot_2030), rollover_unix * NS + NS / 2);
    }

    #[test]
    fn short_format() {
        assert_eq!(NtpShort::from_seconds_f64(1.5).to_bits(), 0x0001_8000);
        assert_eq!(NtpShort::from_nanos(NS).to_bits(), 0x0001_0000);
        assert_eq!(NtpShort::from_nanos(1).to_bits(), 1, "rounds up");
        assert_eq!(NtpShort::from_seconds_f64(-1.0), NtpShort::ZERO);
        assert_eq!(NtpShort::from_seconds_f64(1e9), NtpShort::MAX);
        assert_eq!(NtpShort::from_bits(0x0002_4000).to_nanos(), 2_250_000_000);
    }

    proptest! {
        #[test]
        fn from_unix_nanos_matches_exact_128_bit_arithmetic(n in any::<i64>()) {
            let ntp = n as i128 + NTP_UNIX_OFFSET_SECS as i128 * NANOS_PER_SEC;
            let frac = (ntp.rem_euclid(NANOS_PER_SEC) * FRAC_PER_SEC + NANOS_PER_SEC / 2)
                / NANOS_PER_SEC;
            let want = ((ntp.div_euclid(NANOS_PER_SEC) as u64) << 32).wrapping_add(frac as u64);
            prop_assert_eq!(NtpTimestamp::from_unix_nanos(n).0, want);
        }

        #[test]
        fn unix_nanos_round_trip(unix in -2_208_988_800i64 * NS..4_000_000_000i64 * NS) {
            let t = NtpTimestamp::from_unix_nanos(unix);
            prop_assert_eq!(t.to_unix_nanos(unix), unix);
            // Pivot up to 60 years away still resolves the era.
            let pivot = unix.saturating_add(60 * 365 * 86_400 * NS);
            prop_assert_eq!(t.to_unix_nanos(pivot), unix);
        }

        #[test]
        fn delta_round_trip(n in -(1i64 << 60)..(1i64 << 60)) {
            prop_assert_eq!(NtpDelta::from_nanos(n).to_nanos(), n);
        }

        #[test]
        fn wrapping_sub_matches_unix(a in 0i64..4_000_000_000i64 * NS, d in -(1i64 << 60)..(1i64 << 60)) {
            let b = a.saturating_add(d);
            let ta = NtpTimestamp::from_unix_nanos(a);
            let tb = NtpTimestamp::from_unix_nanos(b);
            let got = tb.wrapping_sub(ta).to_nanos();
            prop_assert!((got - (b - a)).abs() <= 1, "got {} want {}", got, b - a);
        }
    }
}
