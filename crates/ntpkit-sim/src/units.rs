//! Durations as scenario files write them: `"100ms"`, `"1.5s"`, `"2h"`, or a bare number of
//! seconds. Stored as integer nanoseconds.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// Nanoseconds per second.
pub const NS: i64 = 1_000_000_000;

/// A signed span of time in integer nanoseconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Duration(pub i64);

impl Duration {
    /// Zero.
    pub const ZERO: Duration = Duration(0);

    /// From whole seconds.
    pub const fn secs(s: i64) -> Duration {
        Duration(s * NS)
    }

    /// Nanoseconds.
    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// Seconds as f64 (for statistics and display only).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NS as f64
    }

    /// Parses `"250us"`, `"-1.8s"`, `"1d"`, `"30"` (seconds).
    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| c.is_alphabetic() || c == 'µ')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num.trim().parse().map_err(|_| {
            format!("`{text}` is not a duration (write e.g. \"100ms\", \"1.5s\", \"2h\" or seconds as a number)")
        })?;
        let scale = match unit.trim() {
            "" | "s" | "sec" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            "m" | "min" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            u => {
                return Err(format!(
                    "`{text}`: unknown unit `{u}` (use ns, us, ms, s, min, h or d)"
                ))
            }
        };
        Self::from_f64_nanos(value * scale).ok_or_else(|| format!("`{text}` is out of range"))
    }

    fn from_f64_nanos(ns: f64) -> Option<Duration> {
        (ns.is_finite() && ns.abs() < 9.2e18).then(|| Duration(ns.round() as i64))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        let a = ns.unsigned_abs();
        if a == 0 {
            f.write_str("0s")
        } else if a.is_multiple_of(NS as u64) {
            write!(f, "{}s", ns / NS)
        } else if a.is_multiple_of(1_000_000) {
            write!(f, "{}ms", ns / 1_000_000)
        } else if a.is_multiple_of(1000) {
            write!(f, "{}us", ns / 1000)
        } else {
            write!(f, "{ns}ns")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"100ms\" or a number of seconds")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                v.checked_mul(NS)
                    .map(Duration)
                    .ok_or_else(|| E::custom("duration out of range"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                i64::try_from(v)
                    .map_err(|_| E::custom("duration out of range"))
                    .and_then(|v| self.visit_i64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Duration::from_f64_nanos(v * 1e9).ok_or_else(|| E::custom("duration out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_numbers() {
        assert_eq!(Duration::parse("100ms"), Ok(Duration(100_000_000)));
        assert_eq!(Duration::parse("-1.8s"), Ok(Duration(-1_800_000_000)));
        assert_eq!(Duration::parse("10us"), Ok(Duration(10_000)));
        assert_eq!(Duration::parse("10µs"), Ok(Duration(10_000)));
        assert_eq!(Duration::parse("1d"), Ok(Duration(86_400 * NS)));
        assert_eq!(Duration::parse("25"), Ok(Duration(25 * NS)));
        assert!(Duration::parse("5 parsecs").is_err());
        assert!(Duration::parse("fast").is_err());
    }

    #[test]
    fn displays_round_trip() {
        for s in ["0s", "25s", "-1800ms", "100us", "7ns"] {
            assert_eq!(Duration::parse(s).unwrap().to_string(), s);
        }
    }
}
