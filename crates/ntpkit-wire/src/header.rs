//! The fixed 48-byte NTP header (RFC 5905 §7.3) and its field types.

use crate::{NtpShort, NtpTimestamp, ParseError};
use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 48;

/// Byte ranges of the header fields.
mod field {
    use core::ops::Range;
    pub const LI_VN_MODE: usize = 0;
    pub const STRATUM: usize = 1;
    pub const POLL: usize = 2;
    pub const PRECISION: usize = 3;
    pub const ROOT_DELAY: Range<usize> = 4..8;
    pub const ROOT_DISPERSION: Range<usize> = 8..12;
    pub const REFERENCE_ID: Range<usize> = 12..16;
    pub const REFERENCE_TS: Range<usize> = 16..24;
    pub const ORIGIN_TS: Range<usize> = 24..32;
    pub const RECEIVE_TS: Range<usize> = 32..40;
    pub const TRANSMIT_TS: Range<usize> = 40..48;
}

/// Leap indicator: warning of an impending leap second, or "clock unsynchronized".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum LeapIndicator {
    /// No leap second pending.
    #[default]
    NoWarning = 0,
    /// The last minute of the day has 61 seconds.
    InsertSecond = 1,
    /// The last minute of the day has 59 seconds.
    DeleteSecond = 2,
    /// The clock is not synchronized (alarm condition).
    Unsynchronized = 3,
}

impl LeapIndicator {
    /// Decodes the 2-bit field (only the low two bits of `bits` are used).
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => LeapIndicator::NoWarning,
            1 => LeapIndicator::InsertSecond,
            2 => LeapIndicator::DeleteSecond,
            _ => LeapIndicator::Unsynchronized,
        }
    }

    /// Short name as ntpdig prints it.
    pub const fn name(self) -> &'static str {
        match self {
            LeapIndicator::NoWarning => "no-leap",
            LeapIndicator::InsertSecond => "add-leap",
            LeapIndicator::DeleteSecond => "del-leap",
            LeapIndicator::Unsynchronized => "unsync",
        }
    }
}

/// Association mode (RFC 5905 Figure 10).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Mode {
    /// 0: reserved (NTPv1 clients send it).
    Reserved = 0,
    /// 1: symmetric active.
    SymmetricActive = 1,
    /// 2: symmetric passive.
    SymmetricPassive = 2,
    /// 3: client.
    Client = 3,
    /// 4: server.
    Server = 4,
    /// 5: broadcast.
    Broadcast = 5,
    /// 6: NTP control message (ntpq).
    Control = 6,
    /// 7: reserved for private use (ntpdc).
    Private = 7,
}

impl Mode {
    /// Decodes the 3-bit field (only the low three bits of `bits` are used).
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => Mode::Reserved,
            1 => Mode::SymmetricActive,
            2 => Mode::SymmetricPassive,
            3 => Mode::Client,
            4 => Mode::Server,
            5 => Mode::Broadcast,
            6 => Mode::Control,
            _ => Mode::Private,
        }
    }
}

/// The reference ID: an IPv4 address, the hash of an IPv6 address, an ASCII clock source name
/// (stratum 1), or a kiss code (stratum 0).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RefId(pub [u8; 4]);

impl RefId {
    /// `LOCL`: the local clock, as chrony's and ntpd's local references advertise.
    pub const LOCL: RefId = RefId(*b"LOCL");
    /// `INIT`: kiss code sent by an unsynchronized server.
    pub const INIT: RefId = RefId(*b"INIT");

    /// The reference ID a server advertises when synchronized to `addr` (RFC 5905 §7.3): the
    /// IPv4 address itself, or the first four octets of the MD5 hash of the IPv6 address.
    pub fn from_ip(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(v4) => RefId(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => RefId(v4.octets()),
                None => Self::from_ipv6_hash(v6),
            },
        }
    }

    /// First four octets of the MD5 digest of the IPv6 address.
    pub fn from_ipv6_hash(addr: Ipv6Addr) -> Self {
        use md5::Digest;
        let digest = md5::Md5::digest(addr.octets());
        RefId([digest[0], digest[1], digest[2], digest[3]])
    }

    /// Up to four ASCII characters, padded with zeros (`"GPS"`, `"LOCL"`). None if `s` is longer
    /// than four bytes or not printable ASCII.
    pub fn from_ascii(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.is_empty() || b.len() > 4 || !b.iter().all(|c| c.is_ascii_graphic()) {
            return None;
        }
        let mut out = [0u8; 4];
        out[..b.len()].copy_from_slice(b);
        Some(RefId(out))
    }

    /// The value read as an IPv4 address (how a stratum ≥ 2 server's refid is usually shown).
    pub const fn as_ipv4(self) -> Ipv4Addr {
        Ipv4Addr::new(self.0[0], self.0[1], self.0[2], self.0[3])
    }

    /// The value as ASCII, if it is 1–4 printable characters followed by zero padding.
    pub fn as_ascii(&self) -> Option<&str> {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(4);
        if end == 0 || self.0[end..].iter().any(|&c| c != 0) {
            return None;
        }
        let s = &self.0[..end];
        if s.iter().all(|c| c.is_ascii_graphic()) {
            core::str::from_utf8(s).ok()
        } else {
            None
        }
    }

    /// The value as a 32-bit number (as `chronyc` prints it, `7F000001`).
    pub const fn to_u32(self) -> u32 {
        u32::from_be_bytes(self.0)
    }

    /// Renders as a human would expect for a server at `stratum`: ASCII for stratum 0–1 when
    /// printable, and `LOCL` (an undisciplined local clock, as ntpd and ntpkit serve it at any
    /// stratum); else a dotted IPv4 address.
    pub fn display_for_stratum(self, stratum: u8) -> String {
        match (stratum, self.as_ascii()) {
            (0 | 1, Some(s)) => s.to_string(),
            _ if self == RefId::LOCL => "LOCL".to_string(),
            _ => self.as_ipv4().to_string(),
        }
    }
}

impl fmt::Debug for RefId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_ascii() {
            Some(s) => write!(f, "RefId({s:?})"),
            None => write!(f, "RefId({:08X})", self.to_u32()),
        }
    }
}

/// A kiss-o'-death code (RFC 5905 §7.4), carried in the reference ID of a stratum-0 packet.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum KissCode {
    /// `DENY`: access denied; stop sending to this server.
    Deny,
    /// `RSTR`: access restricted; stop sending to this server.
    Restrict,
    /// `RATE`: rate exceeded; reduce the poll rate.
    Rate,
    /// `NTSN`: NTS negative acknowledgement (RFC 8915).
    NtsNak,
    /// Any other code, e.g. `INIT`, `STEP`, `AUTH`; informational.
    Other(RefId),
}

impl KissCode {
    /// Reads the kiss code of a stratum-0 reference ID.
    pub fn from_refid(refid: RefId) -> Self {
        match &refid.0 {
            b"DENY" => KissCode::Deny,
            b"RSTR" => KissCode::Restrict,
            b"RATE" => KissCode::Rate,
            b"NTSN" => KissCode::NtsNak,
            _ => KissCode::Other(refid),
        }
    }

    /// The reference ID carrying this code.
    pub const fn refid(self) -> RefId {
        match self {
            KissCode::Deny => RefId(*b"DENY"),
            KissCode::Restrict => RefId(*b"RSTR"),
            KissCode::Rate => RefId(*b"RATE"),
            KissCode::NtsNak => RefId(*b"NTSN"),
            KissCode::Other(r) => r,
        }
    }
}

impl fmt::Display for KissCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.refid();
        match r.as_ascii() {
            Some(s) => f.write_str(s),
            None => write!(f, "{:08X}", r.to_u32()),
        }
    }
}

/// The decoded fixed header. Every field is kept as sent; validation of values (stratum range,
/// leap 3, zero timestamps) is protocol logic and lives in the core.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// Leap indicator.
    pub leap: LeapIndicator,
    /// Protocol version, 1–4.
    pub version: u8,
    /// Association mode.
    pub mode: Mode,
    /// Stratum: 0 kiss-o'-death / unspecified, 1 primary, 2–15 secondary, 16 unsynchronized.
    pub stratum: u8,
    /// Poll exponent (log2 seconds), signed.
    pub poll: i8,
    /// Precision exponent (log2 seconds), signed.
    pub precision: i8,
    /// Round-trip delay to the primary reference.
    pub root_delay: NtpShort,
    /// Dispersion (error bound) relative to the primary reference.
    pub root_dispersion: NtpShort,
    /// Reference ID.
    pub reference_id: RefId,
    /// Time the system clock was last set or corrected.
    pub reference_ts: NtpTimestamp,
    /// T1: the request's transmit timestamp, echoed by the server.
    pub origin_ts: NtpTimestamp,
    /// T2: time the request arrived at the server.
    pub receive_ts: NtpTimestamp,
    /// T3 (or T1 in a request): time the packet departed.
    pub transmit_ts: NtpTimestamp,
}

impl Default for Header {
    fn default() -> Self {
        Header {
            leap: LeapIndicator::NoWarning,
            version: 4,
            mode: Mode::Client,
            stratum: 0,
            poll: 0,
            precision: 0,
            root_delay: NtpShort::ZERO,
            root_dispersion: NtpShort::ZERO,
            reference_id: RefId::default(),
            reference_ts: NtpTimestamp::ZERO,
            origin_ts: NtpTimestamp::ZERO,
            receive_ts: NtpTimestamp::ZERO,
            transmit_ts: NtpTimestamp::ZERO,
        }
    }
}

impl Header {
    /// Parses the first 48 bytes of `bytes`; the rest is ignored. Fails on short input or a
    /// version outside 1–4.
    pub fn parse(bytes: &[u8]) -> Result<Header, ParseError> {
        let b: &[u8; HEADER_LEN] = match bytes.get(..HEADER_LEN) {
            Some(h) => h.try_into().expect("slice of HEADER_LEN"),
            None => return Err(ParseError::TooShort { len: bytes.len() }),
        };
        let first = b[field::LI_VN_MODE];
        let version = (first >> 3) & 7;
        if !(1..=4).contains(&version) {
            return Err(ParseError::UnsupportedVersion(version));
        }
        let ts = |r: core::ops::Range<usize>| {
            NtpTimestamp::from_be_bytes(b[r].try_into().expect("8-byte field"))
        };
        let u32_at =
            |r: core::ops::Range<usize>| u32::from_be_bytes(b[r].try_into().expect("4-byte field"));
        Ok(Header {
            leap: LeapIndicator::from_bits(first >> 6),
            version,
            mode: Mode::from_bits(first),
            stratum: b[field::STRATUM],
            poll: b[field::POLL] as i8,
            precision: b[field::PRECISION] as i8,
            root_delay: NtpShort::from_bits(u32_at(field::ROOT_DELAY)),
            root_dispersion: NtpShort::from_bits(u32_at(field::ROOT_DISPERSION)),
            reference_id: RefId(b[field::REFERENCE_ID].try_into().expect("4-byte field")),
            reference_ts: ts(field::REFERENCE_TS),
            origin_ts: ts(field::ORIGIN_TS),
            receive_ts: ts(field::RECEIVE_TS),
            transmit_ts: ts(field::TRANSMIT_TS),
        })
    }

    /// Writes the 48 header bytes.
    pub fn emit(&self, out: &mut [u8; HEADER_LEN]) {
        out[field::LI_VN_MODE] =
            ((self.leap as u8) << 6) | ((self.version & 7) << 3) | (self.mode as u8);
        out[field::STRATUM] = self.stratum;
        out[field::POLL] = self.poll as u8;
        out[field::PRECISION] = self.precision as u8;
        out[field::ROOT_DELAY].copy_from_slice(&self.root_delay.to_bits().to_be_bytes());
        out[field::ROOT_DISPERSION].copy_from_slice(&self.root_dispersion.to_bits().to_be_bytes());
        out[field::REFERENCE_ID].copy_from_slice(&self.reference_id.0);
        out[field::REFERENCE_TS].copy_from_slice(&self.reference_ts.to_be_bytes());
        out[field::ORIGIN_TS].copy_from_slice(&self.origin_ts.to_be_bytes());
        out[field::RECEIVE_TS].copy_from_slice(&self.receive_ts.to_be_bytes());
        out[field::TRANSMIT_TS].copy_from_slice(&self.transmit_ts.to_be_bytes());
    }

    /// The kiss code, if this is a kiss-o'-death packet (stratum 0).
    pub fn kiss_code(&self) -> Option<KissCode> {
        (self.stratum == 0).then(|| KissCode::from_refid(self.reference_id))
    }
}

/// Overwrites the transmit timestamp of an already emitted packet. Drivers call this at the last
/// moment before sending, so that T3 is as late as possible.
pub fn stamp_transmit(packet: &mut [u8], ts: NtpTimestamp) {
    if let Some(slot) = packet.get_mut(field::TRANSMIT_TS) {
        slot.copy_from_slice(&ts.to_be_bytes());
    }
}

/// Reads the transmit timestamp of a packet of at least 48 bytes without a full parse.
pub fn peek_transmit(packet: &[u8]) -> Option<NtpTimestamp> {
    let b = packet.get(field::TRANSMIT_TS)?;
    Some(NtpTimestamp::from_be_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refid_ipv4_and_ascii() {
        let r = RefId::from_ip("127.0.0.1".parse().unwrap());
        assert_eq!(r.to_u32(), 0x7F00_0001);
        assert_eq!(r.display_for_stratum(2), "127.0.0.1");
        assert_eq!(RefId::from_ascii("GPS").unwrap().0, *b"GPS\0");
        assert_eq!(RefId::from_ascii("GPS").unwrap().as_ascii(), Some("GPS"));
        assert!(RefId::from_ascii("TOOLONG").is_none());
        assert_eq!(RefId(*b"G\0PS").as_ascii(), None);
        assert_eq!(RefId::LOCL.display_for_stratum(1), "LOCL");
        assert_eq!(RefId::LOCL.display_for_stratum(10), "LOCL");
    }

    #[test]
    fn refid_ipv6_hash_is_md5_prefix() {
        // MD5(::1 as 16 octets) = cf404dc806178c245b5b4fe2531e6d8c (Python hashlib)
        let r = RefId::from_ip("::1".parse().unwrap());
        assert_eq!(r.0, [0xcf, 0x40, 0x4d, 0xc8]);
        // An IPv4-mapped address uses the IPv4 address.
        let m = RefId::from_ip("::ffff:10.1.2.3".parse().unwrap());
        assert_eq!(m.0, [10, 1, 2, 3]);
    }

    #[test]
    fn kiss_codes() {
        let h = Header {
            stratum: 0,
            reference_id: RefId(*b"RATE"),
            ..Header::default()
        };
        assert_eq!(h.kiss_code(), Some(KissCode::Rate));
        assert_eq!(KissCode::from_refid(RefId(*b"DENY")), KissCode::Deny);
        assert_eq!(KissCode::from_refid(RefId(*b"RSTR")), KissCode::Restrict);
        assert_eq!(KissCode::from_refid(RefId::INIT).to_string(), "INIT");
        let h1 = Header {
            stratum: 1,
            reference_id: RefId(*b"RATE"),
            ..Header::default()
        };
        assert_eq!(h1.kiss_code(), None);
    }

    #[test]
    fn version_checked() {
        let mut b = [0u8; 48];
        b[0] = 0b00_000_011; // version 0
        assert_eq!(Header::parse(&b), Err(ParseError::UnsupportedVersion(0)));
        b[0] = 0b00_101_011; // version 5
        assert_eq!(Header::parse(&b), Err(ParseError::UnsupportedVersion(5)));
        b[0] = 0b11_001_000; // LI 3, version 1, mode 0
        let h = Header::parse(&b).unwrap();
        assert_eq!(
            (h.leap, h.version, h.mode),
            (LeapIndicator::Unsynchronized, 1, Mode::Reserved)
        );
    }
}
