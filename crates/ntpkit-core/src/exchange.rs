//! One client/server exchange: is this reply an answer to our request, and what does it say
//! about our clock?
//!
//! Call contract: the driver sends a client request whose transmit timestamp is a random
//! 64-bit value it keeps (the request's identity; RFC 9109 advises not to reveal the local
//! clock), reads the local clock as `t1` just before sending and `t4` on arrival of a reply,
//! then calls [`validate_reply`] and, if it accepts the reply, [`measure`]. Both are pure.
//!
//! All arithmetic is done on 32.32 fixed-point differences of NTP timestamps
//! ([`NtpTimestamp::wrapping_sub`]): correct across the 2036 era rollover, exact to 2⁻³² s,
//! never through an f64 absolute time.

use ntpkit_wire::{Header, KissCode, LeapIndicator, Mode, NtpTimestamp};

/// Offset and round-trip delay of one exchange (RFC 5905 §8).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Measurement {
    /// θ = ((T2 − T1) + (T3 − T4)) / 2: how far the server's clock is ahead of ours, ns.
    pub offset_ns: i64,
    /// δ = (T4 − T1) − (T3 − T2): round-trip time on the network, ns. May be slightly negative
    /// on loopback when the two clocks' readings are not monotonic with each other.
    pub delay_ns: i64,
}

/// Why a reply is not accepted. [`ReplyError::NotOurs`] means the packet is not an answer to
/// our request (keep waiting); every other variant is the server's answer, and it is bad.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ReplyError {
    /// Origin timestamp ≠ our request's transmit timestamp: stale, duplicated or spoofed.
    NotOurs,
    /// Not a server-mode (4) packet.
    NotServerMode(Mode),
    /// Version outside 3–4 (we send NTPv4; servers answer with the request's version).
    UnsupportedVersion(u8),
    /// Stratum 0: a kiss-o'-death. `RATE` asks to poll less often; `DENY` and `RSTR` to stop.
    Kiss(KissCode),
    /// Leap indicator 3 or stratum 16 (or above): the server's clock is not synchronized.
    Unsynchronized {
        /// The leap indicator sent.
        leap: LeapIndicator,
        /// The stratum sent.
        stratum: u8,
    },
    /// Receive or transmit timestamp is zero: the server did not fill it in.
    ZeroTimestamp,
}

impl core::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ReplyError::NotOurs => f.write_str("origin timestamp does not match our request"),
            ReplyError::NotServerMode(m) => write!(f, "not a server reply (mode {})", *m as u8),
            ReplyError::UnsupportedVersion(v) => write!(f, "unsupported NTP version {v}"),
            ReplyError::Kiss(code) => write!(f, "kiss-o'-death {code}"),
            ReplyError::Unsynchronized { leap, stratum } => write!(
                f,
                "server clock unsynchronized (leap {}, stratum {stratum})",
                *leap as u8
            ),
            ReplyError::ZeroTimestamp => f.write_str("zero receive or transmit timestamp"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Checks that `reply` answers the request we sent with transmit timestamp `request_transmit`
/// and carries usable time. `allow_unsynced` accepts leap 3 / stratum 16 (to look at a server
/// that is still starting up).
pub fn validate_reply(
    request_transmit: NtpTimestamp,
    reply: &Header,
    allow_unsynced: bool,
) -> Result<(), ReplyError> {
    if reply.origin_ts != request_transmit || request_transmit.is_zero() {
        return Err(ReplyError::NotOurs);
    }
    if reply.mode != Mode::Server {
        return Err(ReplyError::NotServerMode(reply.mode));
    }
    if !(3..=4).contains(&reply.version) {
        return Err(ReplyError::UnsupportedVersion(reply.version));
    }
    if let Some(code) = reply.kiss_code() {
        return Err(ReplyError::Kiss(code));
    }
    if !allow_unsynced && (reply.leap == LeapIndicator::Unsynchronized || reply.stratum >= 16) {
        return Err(ReplyError::Unsynchronized {
            leap: reply.leap,
            stratum: reply.stratum,
        });
    }
    if reply.transmit_ts.is_zero() || reply.receive_ts.is_zero() {
        return Err(ReplyError::ZeroTimestamp);
    }
    Ok(())
}

/// Offset and delay from the four timestamps: `t1` our clock just before sending, T2 and T3
/// from `reply`, `t4` our clock at arrival.
pub fn measure(t1: NtpTimestamp, reply: &Header, t4: NtpTimestamp) -> Measurement {
    let t2 = reply.receive_ts;
    let t3 = reply.transmit_ts;
    // Differences of instants less than 68 years apart, in 2^-32 s; i128 so that the sums
    // cannot overflow whatever the server sent.
    let a = t2.wrapping_sub(t1).0 as i128;
    let b = t3.wrapping_sub(t4).0 as i128;
    let rtt = t4.wrapping_sub(t1).0 as i128;
    let server = t3.wrapping_sub(t2).0 as i128;
    Measurement {
        offset_ns: frac_to_nanos((a + b) / 2),
        delay_ns: frac_to_nanos(rtt - server),
    }
}

/// 2⁻³² s units to nanoseconds, rounded half away from zero, saturating.
fn frac_to_nanos(frac: i128) -> i64 {
    let v = frac * 1_000_000_000;
    let half = 1i128 << 31;
    let r = if v >= 0 {
        (v + half) >> 32
    } else {
        -((-v + half) >> 32)
    };
    r.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntpkit_wire::{NtpDelta, RefId};

    const T1: i64 = 1_790_000_000_123_456_789;

    fn ts(unix_ns: i64) -> NtpTimestamp {
        NtpTimestamp::from_unix_nanos(unix_ns)
    }

    fn reply(origin: NtpTimestamp, t2: NtpTimestamp, t3: NtpTimestamp) -> Header {
        Header {
            mode: Mode::Server,
            stratum: 2,
            reference_id: RefId([192, 0, 2, 1]),
            origin_ts: origin,
            receive_ts: t2,
            transmit_ts: t3,
            ..Header::default()
        }
    }

    #[test]
    fn offset_and_delay() {
        // Server 5 ms ahead, 10 ms each way, 1 ms in the server.
        let t1 = ts(T1);
        let t2 = ts(T1 + 10_000_000 + 5_000_000);
        let t3 = ts(T1 + 11_000_000 + 5_000_000);
        let t4 = ts(T1 + 21_000_000);
        let m = measure(t1, &reply(t1, t2, t3), t4);
        assert!((m.offset_ns - 5_000_000).abs() <= 1, "{m:?}");
        assert!((m.delay_ns - 20_000_000).abs() <= 1, "{m:?}");
    }

    #[test]
    fn negative_offset_and_asymmetry() {
        // Server 2.5 s behind; 3 ms out, 1 ms back: offset error = half the asymmetry.
        let t1 = ts(T1);
        let t2 = ts(T1 + 3_000_000 - 2_500_000_000);
        let t3 = t2;
        let t4 = ts(T1 + 4_000_000);
        let m = measure(t1, &reply(t1, t2, t3), t4);
        assert!(
            (m.offset_ns - (-2_500_000_000 + 1_000_000)).abs() <= 1,
            "{m:?}"
        );
        assert!((m.delay_ns - 4_000_000).abs() <= 1, "{m:?}");
    }

    #[test]
    fn across_the_2036_era_rollover() {
        // T1 just before 2036-02-07 06:28:16 UTC, T2..T4 just after, in era 1.
        let rollover = (1i64 << 32) - 2_208_988_800;
        let t1_ns = rollover * 1_000_000_000 - 1_000_000;
        let t1 = ts(t1_ns);
        let t2 = ts(t1_ns + 2_000_000);
        let t4 = ts(t1_ns + 4_000_000);
        assert!(t2.seconds() < t1.seconds(), "wrapped");
        let m = measure(t1, &reply(t1, t2, t2), t4);
        assert!(
            m.offset_ns.abs() <= 1 && (m.delay_ns - 4_000_000).abs() <= 1,
            "{m:?}"
        );
    }

    #[test]
    fn sub_nanosecond_exact() {
        let t1 = NtpTimestamp::from_bits(0xE000_0000_0000_0000);
        let r = reply(
            t1,
            t1.wrapping_add(NtpDelta(3)),
            t1.wrapping_add(NtpDelta(3)),
        );
        let m = measure(t1, &r, t1);
        assert_eq!(m.offset_ns, 1); // 3·2^-32 s ≈ 0.7 ns
    }

    #[test]
    fn validation() {
        let t1 = NtpTimestamp::from_bits(0x1234_5678_9abc_def0);
        let good = reply(t1, ts(T1), ts(T1 + 1));
        assert_eq!(validate_reply(t1, &good, false), Ok(()));

        let other = NtpTimestamp::from_bits(1);
        assert_eq!(
            validate_reply(other, &good, false),
            Err(ReplyError::NotOurs)
        );
        assert_eq!(
            validate_reply(
                NtpTimestamp::ZERO,
                &reply(NtpTimestamp::ZERO, ts(T1), ts(T1)),
                false
            ),
            Err(ReplyError::NotOurs)
        );

        let mut r = good;
        r.mode = Mode::SymmetricPassive;
        assert_eq!(
            validate_reply(t1, &r, false),
            Err(ReplyError::NotServerMode(Mode::SymmetricPassive))
        );

        let mut r = good;
        r.version = 2;
        assert_eq!(
            validate_reply(t1, &r, false),
            Err(ReplyError::UnsupportedVersion(2))
        );

        let mut r = good;
        r.stratum = 0;
        r.reference_id = RefId(*b"RATE");
        assert_eq!(
            validate_reply(t1, &r, true),
            Err(ReplyError::Kiss(KissCode::Rate))
        );
        assert_eq!(
            ReplyError::Kiss(KissCode::Rate).to_string(),
            "kiss-o'-death RATE"
        );

        let mut r = good;
        r.leap = LeapIndicator::Unsynchronized;
        assert!(matches!(
            validate_reply(t1, &r, false),
            Err(ReplyError::Unsynchronized { .. })
        ));
        assert_eq!(validate_reply(t1, &r, true), Ok(()));
        let mut r = good;
        r.stratum = 16;
        assert!(validate_reply(t1, &r, false).is_err());
        assert_eq!(validate_reply(t1, &r, true), Ok(()));

        let mut r = good;
        r.transmit_ts = NtpTimestamp::ZERO;
        assert_eq!(
            validate_reply(t1, &r, false),
            Err(ReplyError::ZeroTimestamp)
        );
    }
}
