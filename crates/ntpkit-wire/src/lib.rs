//! `ntpkit-wire`: the NTP packet codec.
//!
//! What it does: decodes and encodes NTPv1–v4 packets (RFC 5905): the 48-byte header with its
//! leap indicator, version, mode, stratum, poll, precision, root delay and dispersion in the
//! 16.16 short format, reference ID (including kiss-o'-death codes) and the four 64-bit
//! timestamps; RFC 7822 extension fields (kept, unknown types tolerated, length and padding
//! rules enforced); and a trailing legacy MAC. Timestamps carry their own era arithmetic and
//! convert to and from Unix time at nanosecond precision, correct across the 2036 rollover.
//!
//! What it does not do: decide anything. Whether a stratum is acceptable, whether a reply
//! matches a request, what to answer — that is protocol logic in `ntpkit-core`.
//!
//! The promise: [`Packet::parse`] and [`Header::parse`] never panic on any input; every failure
//! is a [`ParseError`]. Parse followed by [`Packet::emit`] reproduces the input bytes.
//!
//! ```
//! use ntpkit_wire::{Header, Mode, NtpTimestamp, Packet};
//! let request = Header { mode: Mode::Client, transmit_ts: NtpTimestamp::from_bits(42), ..Header::default() };
//! let mut buf = [0u8; 48];
//! let n = Packet::new(request).emit(&mut buf).unwrap();
//! let parsed = Packet::parse(&buf[..n]).unwrap();
//! assert_eq!(parsed.header.transmit_ts, NtpTimestamp::from_bits(42));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod header;
mod packet;
mod timestamp;

pub use header::{
    peek_transmit, stamp_transmit, Header, KissCode, LeapIndicator, Mode, RefId, HEADER_LEN,
};
pub use packet::{
    ExtensionField, Extensions, Mac, Packet, PacketWriter, MAX_MAC_LEN, MIN_EXTENSION_LEN,
};
pub use timestamp::{NtpDelta, NtpShort, NtpTimestamp, NTP_UNIX_OFFSET_SECS};

/// Why a datagram is not a well-formed NTP packet. The sender is at fault in every case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ParseError {
    /// Fewer than 48 bytes.
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// Version field outside 1–4.
    UnsupportedVersion(u8),
    /// An extension field's length is below 16 or not a multiple of 4.
    BadExtensionLength {
        /// Byte offset of the field in the packet.
        offset: usize,
        /// The length it claims.
        len: usize,
    },
    /// An extension field's length runs past the end of the datagram.
    ExtensionOverrun {
        /// Byte offset of the field in the packet.
        offset: usize,
        /// The length it claims.
        len: usize,
        /// Bytes left in the datagram.
        available: usize,
    },
    /// What follows the extension fields is not a MAC of 4, 20 or 24 bytes.
    BadMacLength(usize),
    /// Data longer than a MAC after the header of an NTPv1–v3 packet, which has no extension fields.
    ExtensionInOldVersion(u8),
}

impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ParseError::TooShort { len } => write!(f, "packet too short: {len} bytes, need 48"),
            ParseError::UnsupportedVersion(v) => write!(f, "unsupported NTP version {v}"),
            ParseError::BadExtensionLength { offset, len } => {
                write!(
                    f,
                    "extension field at byte {offset} has invalid length {len}"
                )
            }
            ParseError::ExtensionOverrun {
                offset,
                len,
                available,
            } => write!(
                f,
                "extension field at byte {offset} claims {len} bytes, only {available} left"
            ),
            ParseError::BadMacLength(n) => write!(f, "trailer of {n} bytes is not a valid MAC"),
            ParseError::ExtensionInOldVersion(v) => {
                write!(
                    f,
                    "NTPv{v} packet carries data beyond the header that is not a MAC"
                )
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// Why a packet could not be written. The caller is at fault in every case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum EmitError {
    /// The output buffer is too small.
    BufferTooSmall {
        /// Bytes required.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// An extension field would exceed 65535 bytes.
    ExtensionTooLong(usize),
    /// Extension fields need NTPv4.
    ExtensionInOldVersion(u8),
    /// An extension field was added after the MAC.
    ExtensionAfterMac,
    /// MAC digest length other than 0, 16 or 20 bytes.
    BadMacLength(usize),
    /// A reader would split the tail differently: a remainder of at most 24 bytes reads as a
    /// MAC (RFC 7822 §7.5), so a short last extension field needs a longer one or a MAC.
    AmbiguousLayout,
}

impl core::fmt::Display for EmitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for EmitError {}
