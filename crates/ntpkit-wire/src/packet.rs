//! A whole NTP packet: header, RFC 7822 extension fields, and an optional legacy MAC.
//!
//! Layout after the 48-byte header: zero or more extension fields (NTPv4 only), then optionally
//! a MAC (a 32-bit key ID and a digest). The two are told apart as RFC 7822 §7.5 prescribes: a
//! remainder of at most [`MAX_MAC_LEN`] bytes is a MAC, anything longer starts an extension
//! field. Hence an extension field that ends the packet without a MAC must be at least 28 bytes.

use crate::{EmitError, Header, ParseError, HEADER_LEN};

/// Smallest legal extension field (type + length + 12 bytes of value), RFC 7822 §3.
pub const MIN_EXTENSION_LEN: usize = 16;
/// Longest legacy MAC: key ID (4) + SHA-1 digest (20).
pub const MAX_MAC_LEN: usize = 24;

/// One extension field as it appears on the wire. `value` includes any zero padding, so parse
/// followed by emit reproduces the bytes exactly.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ExtensionField<'a> {
    /// Field type (e.g. 0x0104 NTS Unique Identifier). Unknown types are kept, not rejected.
    pub field_type: u16,
    /// Value bytes, padded.
    pub value: &'a [u8],
}

impl ExtensionField<'_> {
    /// Bytes this field occupies when emitted: 4 + value, padded to a multiple of 4, at least 16.
    pub fn encoded_len(&self) -> usize {
        (4 + self.value.len())
            .next_multiple_of(4)
            .max(MIN_EXTENSION_LEN)
    }
}

/// A legacy symmetric-key MAC trailer (RFC 5905 §7.3), or a crypto-NAK (key ID only).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mac<'a> {
    /// Key identifier.
    pub key_id: u32,
    /// Digest bytes (empty for a crypto-NAK, 16 for MD5/AES-CMAC, 20 for SHA-1).
    pub digest: &'a [u8],
}

impl Mac<'_> {
    /// Bytes on the wire.
    pub fn encoded_len(&self) -> usize {
        4 + self.digest.len()
    }

    /// True for the crypto-NAK (a 4-byte MAC with key ID 0 and no digest).
    pub fn is_crypto_nak(&self) -> bool {
        self.digest.is_empty()
    }
}

/// A parsed packet, borrowing its variable parts from the input. Parsing validates the whole
/// layout, so iterating over [`Packet::extensions`] cannot fail.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Packet<'a> {
    /// The fixed header.
    pub header: Header,
    extensions: &'a [u8],
    /// The MAC trailer, if any.
    pub mac: Option<Mac<'a>>,
}

impl<'a> Packet<'a> {
    /// Parses and validates a whole datagram. Never panics; every failure is a [`ParseError`].
    pub fn parse(bytes: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        let header = Header::parse(bytes)?;
        let rest = &bytes[HEADER_LEN..];
        let mut pos = 0;
        while rest.len() - pos > MAX_MAC_LEN {
            if header.version < 4 {
                return Err(ParseError::ExtensionInOldVersion(header.version));
            }
            let at = HEADER_LEN + pos;
            let len = u16::from_be_bytes([rest[pos + 2], rest[pos + 3]]) as usize;
            if len < MIN_EXTENSION_LEN || !len.is_multiple_of(4) {
                return Err(ParseError::BadExtensionLength { offset: at, len });
            }
            if len > rest.len() - pos {
                return Err(ParseError::ExtensionOverrun {
                    offset: at,
                    len,
                    available: rest.len() - pos,
                });
            }
            pos += len;
        }
        let (extensions, trailer) = rest.split_at(pos);
        let mac = match trailer.len() {
            0 => None,
            4 | 20 | 24 => Some(Mac {
                key_id: u32::from_be_bytes(trailer[..4].try_into().expect("4 bytes")),
                digest: &trailer[4..],
            }),
            n => return Err(ParseError::BadMacLength(n)),
        };
        Ok(Packet {
            header,
            extensions,
            mac,
        })
    }

    /// A packet with only a header.
    pub fn new(header: Header) -> Packet<'static> {
        Packet {
            header,
            extensions: &[],
            mac: None,
        }
    }

    /// Iterates over the extension fields in wire order.
    pub fn extensions(&self) -> Extensions<'a> {
        Extensions {
            rest: self.extensions,
        }
    }

    /// Number of bytes [`Packet::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.extensions.len() + self.mac.map_or(0, |m| m.encoded_len())
    }

    /// Writes the packet into `out`, returning the number of bytes written.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, EmitError> {
        let needed = self.buffer_len();
        if out.len() < needed {
            return Err(EmitError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        let head: &mut [u8; HEADER_LEN] =
            (&mut out[..HEADER_LEN]).try_into().expect("checked length");
        self.header.emit(head);
        let mut pos = HEADER_LEN;
        out[pos..pos + self.extensions.len()].copy_from_slice(self.extensions);
        pos += self.extensions.len();
        if let Some(mac) = self.mac {
            out[pos..pos + 4].copy_from_slice(&mac.key_id.to_be_bytes());
            out[pos + 4..pos + 4 + mac.digest.len()].copy_from_slice(mac.digest);
            pos += mac.encoded_len();
        }
        Ok(pos)
    }
}

/// Iterator over validated extension fields (see [`Packet::extensions`]).
#[derive(Clone, Debug)]
pub struct Extensions<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Extensions<'a> {
    type Item = ExtensionField<'a>;

    fn next(&mut self) -> Option<ExtensionField<'a>> {
        if self.rest.len() < 4 {
            return None;
        }
        let field_type = u16::from_be_bytes([self.rest[0], self.rest[1]]);
        // Packet::parse validated 16 <= len <= rest.len(); the clamp only keeps this total.
        let len = u16::from_be_bytes([self.rest[2], self.rest[3]]) as usize;
        let (field, rest) = self.rest.split_at(len.clamp(4, self.rest.len()));
        self.rest = rest;
        Some(ExtensionField {
            field_type,
            value: &field[4..],
        })
    }
}

/// Appends extension fields and a MAC after a header, for building packets.
#[derive(Debug)]
pub struct PacketWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    version: u8,
    mac_len: Option<usize>,
}

impl<'b> PacketWriter<'b> {
    /// Starts a packet in `buf` with `header`.
    pub fn new(buf: &'b mut [u8], header: &Header) -> Result<Self, EmitError> {
        let head: &mut [u8; HEADER_LEN] = buf
            .get_mut(..HEADER_LEN)
            .ok_or(EmitError::BufferTooSmall {
                needed: HEADER_LEN,
                available: 0,
            })?
            .try_into()
            .expect("HEADER_LEN slice");
        header.emit(head);
        Ok(PacketWriter {
            buf,
            len: HEADER_LEN,
            version: header.version,
            mac_len: None,
        })
    }

    /// Appends one extension field, zero-padding its value to a multiple of 4 and to the
    /// 16-byte minimum.
    pub fn extension(&mut self, field_type: u16, value: &[u8]) -> Result<&mut Self, EmitError> {
        if self.version < 4 {
            return Err(EmitError::ExtensionInOldVersion(self.version));
        }
        if self.mac_len.is_some() {
            return Err(EmitError::ExtensionAfterMac);
        }
        let ef = ExtensionField { field_type, value };
        let total = ef.encoded_len();
        if total > u16::MAX as usize {
            return Err(EmitError::ExtensionTooLong(total));
        }
        let available = self.buf.len() - self.len;
        if total > available {
            return Err(EmitError::BufferTooSmall {
                needed: self.len + total,
                available: self.buf.len(),
            });
        }
        let out = &mut self.buf[self.len..self.len + total];
        out[..2].copy_from_slice(&field_type.to_be_bytes());
        out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        out[4..4 + value.len()].copy_from_slice(value);
        out[4 + value.len()..].fill(0);
        self.len += total;
        Ok(self)
    }

    /// Appends the MAC trailer. The digest must be 0, 16 or 20 bytes.
    pub fn mac(&mut self, key_id: u32, digest: &[u8]) -> Result<&mut Self, EmitError> {
        if ![0, 16, 20].contains(&digest.len()) {
            return Err(EmitError::BadMacLength(4 + digest.len()));
        }
        let total = 4 + digest.len();
        if self.buf.len() - self.len < total {
            return Err(EmitError::BufferTooSmall {
                needed: self.len + total,
                available: self.buf.len(),
            });
        }
        self.buf[self.len..self.len + 4].copy_from_slice(&key_id.to_be_bytes());
        self.buf[self.len + 4..self.len + total].copy_from_slice(digest);
        self.len += total;
        self.mac_len = Some(total);
        Ok(self)
    }

    /// Finishes; returns the packet length. Fails if a reader would split the bytes differently
    /// (RFC 7822 §7.5): a remainder of at most 24 bytes reads as a MAC, so the last extension
    /// field must be longer than 24 bytes, or followed by a MAC that makes the tail unambiguous.
    pub fn finish(self) -> Result<usize, EmitError> {
        let written = &self.buf[..self.len];
        let parsed = Packet::parse(written).map_err(|_| EmitError::AmbiguousLayout)?;
        if parsed.mac.map(|m| m.encoded_len()) != self.mac_len {
            return Err(EmitError::AmbiguousLayout);
        }
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LeapIndicator, Mode, NtpShort, NtpTimestamp, RefId};
    use proptest::prelude::*;

    fn client_header() -> Header {
        Header {
            transmit_ts: NtpTimestamp::from_bits(0x1234_5678_9abc_def0),
            ..Header::default()
        }
    }

    #[test]
    fn header_only_round_trip() {
        let mut buf = [0u8; 48];
        let h = Header {
            leap: LeapIndicator::InsertSecond,
            version: 3,
            mode: Mode::Server,
            stratum: 2,
            poll: -3,
            precision: -25,
            root_delay: NtpShort::from_bits(0x0000_0123),
            root_dispersion: NtpShort::from_bits(0x0001_0000),
            reference_id: RefId([127, 0, 0, 1]),
            reference_ts: NtpTimestamp::from_bits(1),
            origin_ts: NtpTimestamp::from_bits(2),
            receive_ts: NtpTimestamp::from_bits(3),
            transmit_ts: NtpTimestamp::from_bits(u64::MAX),
        };
        assert_eq!(Packet::new(h).emit(&mut buf), Ok(48));
        assert_eq!(buf[0], 0b01_011_100);
        let p = Packet::parse(&buf).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.extensions().count(), 0);
        assert_eq!(p.mac, None);
    }

    #[test]
    fn extensions_and_mac() {
        let mut buf = [0u8; 256];
        let mut w = PacketWriter::new(&mut buf, &client_header()).unwrap();
        w.extension(0x0104, &[0xAA; 32]).unwrap();
        w.extension(0xFFFF, &[1, 2, 3]).unwrap(); // unknown type, padded to 16
        w.mac(7, &[0x55; 20]).unwrap();
        let n = w.finish().unwrap();
        assert_eq!(n, 48 + 36 + 16 + 24);
        let p = Packet::parse(&buf[..n]).unwrap();
        let efs: Vec<_> = p.extensions().collect();
        assert_eq!(efs.len(), 2);
        assert_eq!(efs[0].field_type, 0x0104);
        assert_eq!(efs[0].value, &[0xAA; 32]);
        assert_eq!(efs[1].field_type, 0xFFFF);
        assert_eq!(efs[1].value, &[1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(p.mac.unwrap().key_id, 7);
        let mut again = [0u8; 256];
        assert_eq!(p.emit(&mut again), Ok(n));
        assert_eq!(&again[..n], &buf[..n]);
    }

    #[test]
    fn crypto_nak_and_md5_mac() {
        let mut buf = [0u8; 72];
        Packet::new(client_header()).emit(&mut buf).unwrap();
        let p = Packet::parse(&buf[..52]).unwrap();
        assert!(p.mac.unwrap().is_crypto_nak());
        assert_eq!(
            Packet::parse(&buf[..68]).unwrap().mac.unwrap().digest.len(),
            16
        );
        assert_eq!(Packet::parse(&buf[..50]), Err(ParseError::BadMacLength(2)));
    }

    #[test]
    fn malformed_extensions_rejected() {
        let mut buf = [0u8; 48 + 32];
        Packet::new(client_header()).emit(&mut buf).unwrap();
        // length 12 < 16
        buf[48..52].copy_from_slice(&[0x01, 0x04, 0x00, 0x0C]);
        assert!(matches!(
            Packet::parse(&buf),
            Err(ParseError::BadExtensionLength { len: 12, .. })
        ));
        // length not a multiple of 4
        buf[50..52].copy_from_slice(&[0x00, 0x1E]);
        assert!(matches!(
            Packet::parse(&buf),
            Err(ParseError::BadExtensionLength { len: 30, .. })
        ));
        // overruns the datagram
        buf[50..52].copy_from_slice(&[0x00, 0x40]);
        assert!(matches!(
            Packet::parse(&buf),
            Err(ParseError::ExtensionOverrun { len: 64, .. })
        ));
        // exactly fits
        buf[50..52].copy_from_slice(&[0x00, 0x20]);
        assert_eq!(Packet::parse(&buf).unwrap().extensions().count(), 1);
        // not allowed in NTPv3
        buf[0] = 0b00_011_011;
        assert_eq!(
            Packet::parse(&buf),
            Err(ParseError::ExtensionInOldVersion(3))
        );
    }

    #[test]
    fn writer_refuses_ambiguous_last_field() {
        let mut buf = [0u8; 128];
        let mut w = PacketWriter::new(&mut buf, &client_header()).unwrap();
        w.extension(0x0104, &[0; 12]).unwrap();
        assert_eq!(w.finish(), Err(EmitError::AmbiguousLayout));
        let mut buf = [0u8; 40];
        assert!(matches!(
            Packet::new(client_header()).emit(&mut buf),
            Err(EmitError::BufferTooSmall { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn parse_emit_parse(bytes in proptest::collection::vec(any::<u8>(), 48..400)) {
            if let Ok(p) = Packet::parse(&bytes) {
                let mut out = vec![0u8; p.buffer_len()];
                let n = p.emit(&mut out).unwrap();
                prop_assert_eq!(n, bytes.len());
                prop_assert_eq!(&out[..], &bytes[..]);
                let q = Packet::parse(&out).unwrap();
                prop_assert_eq!(p, q);
                let ef_len: usize = q.extensions().map(|e| e.encoded_len()).sum();
                prop_assert_eq!(48 + ef_len + q.mac.map_or(0, |m| m.encoded_len()), n);
            }
        }

        #[test]
        fn built_packets_parse(
            fields in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..5),
            mac in proptest::option::of(proptest::sample::select(vec![0usize, 16, 20])),
        ) {
            let mut buf = vec![0u8; 1024];
            let mut w = PacketWriter::new(&mut buf, &client_header()).unwrap();
            for (t, v) in &fields {
                w.extension(*t, v).unwrap();
            }
            if let Some(m) = mac {
                w.mac(9, &vec![0xEE; m]).unwrap();
            }
            match w.finish() {
                Ok(n) => {
                    let p = Packet::parse(&buf[..n]).unwrap();
                    let got: Vec<_> = p.extensions().map(|e| e.field_type).collect();
                    let want: Vec<_> = fields.iter().map(|f| f.0).collect();
                    prop_assert_eq!(got, want);
                    for (e, (_, v)) in p.extensions().zip(&fields) {
                        prop_assert_eq!(&e.value[..v.len()], &v[..]);
                    }
                    prop_assert_eq!(p.mac.map(|m| m.digest.len()), mac);
                }
                Err(EmitError::AmbiguousLayout) => {}
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }
    }
}
