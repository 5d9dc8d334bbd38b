//! ntpkit's NTP-over-TCP framing (ntpkit's own, not a standard): every NTP packet is preceded
//! by its length as a 2-byte big-endian integer. A connection carries any number of requests;
//! the server answers them in order, skipping (as over UDP) the ones it does not answer.
//!
//! ```text
//!  +--------+--------+------------------ … ------+--------+--------+---- …
//!  |  length (BE16)  |  NTP packet (length bytes) |  length (BE16)  |  next packet
//!  +--------+--------+------------------ … ------+--------+--------+---- …
//! ```
//!
//! A length of zero or above the decoder's maximum is a framing error: the peer is not
//! speaking this protocol, and the connection is closed.

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 2;

/// Default largest accepted packet: a 48-byte header plus room for extension fields (NTS
/// requests are a few hundred bytes).
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024;

/// Why a byte stream is not a sequence of frames. The peer is at fault in every case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame announced zero bytes.
    Empty,
    /// A frame announced more bytes than the maximum.
    TooLong {
        /// Bytes announced.
        len: usize,
        /// The maximum accepted.
        max: usize,
    },
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::Empty => f.write_str("zero-length frame"),
            FrameError::TooLong { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Splits a byte stream into frames; stateless, so the caller owns the buffer.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    max_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder accepting packets of 1 to `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        FrameDecoder {
            max_len: max_len.min(u16::MAX as usize),
        }
    }

    /// The first complete frame at the start of `buf`: its payload and the bytes it occupies
    /// (prefix included, to consume). `Ok(None)` while the frame is incomplete. Call in a loop
    /// after each read, advancing by the consumed length, until it returns `Ok(None)`.
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Result<Option<(&'a [u8], usize)>, FrameError> {
        let Some(prefix) = buf.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        let len = u16::from_be_bytes([prefix[0], prefix[1]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_len {
            return Err(FrameError::TooLong {
                len,
                max: self.max_len,
            });
        }
        Ok(buf
            .get(PREFIX_LEN..PREFIX_LEN + len)
            .map(|payload| (payload, PREFIX_LEN + len)))
    }
}

/// Appends `packet` as one frame to `out`; returns the offset of the packet within `out` (to
/// stamp its transmit timestamp later). Packets longer than 65535 bytes cannot be framed.
pub fn encode(packet: &[u8], out: &mut Vec<u8>) -> Result<usize, FrameError> {
    let len = u16::try_from(packet.len()).map_err(|_| FrameError::TooLong {
        len: packet.len(),
        max: u16::MAX as usize,
    })?;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    out.extend_from_slice(&len.to_be_bytes());
    let at = out.len();
    out.extend_from_slice(packet);
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(stream: &[u8], dec: FrameDecoder) -> (Vec<Vec<u8>>, usize, Option<FrameError>) {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            match dec.decode(&stream[pos..]) {
                Ok(Some((p, used))) => {
                    out.push(p.to_vec());
                    pos += used;
                }
                Ok(None) => return (out, pos, None),
                Err(e) => return (out, pos, Some(e)),
            }
        }
    }

    #[test]
    fn round_trip_several_frames_in_one_read() {
        let mut stream = Vec::new();
        let a = encode(&[1u8; 48], &mut stream).unwrap();
        let b = encode(&[2u8; 68], &mut stream).unwrap();
        assert_eq!((a, b), (2, 52));
        let (got, used, err) = frames(&stream, FrameDecoder::default());
        assert_eq!(got, vec![vec![1u8; 48], vec![2u8; 68]]);
        assert_eq!((used, err), (stream.len(), None));
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut stream = Vec::new();
        encode(&[9u8; 48], &mut stream).unwrap();
        let dec = FrameDecoder::default();
        for cut in 0..stream.len() {
            assert_eq!(dec.decode(&stream[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(dec.decode(&stream), Ok(Some((&stream[2..], 50))));
        // A complete frame followed by one byte of the next prefix.
        stream.push(0);
        let (got, used, err) = frames(&stream, dec);
        assert_eq!((got.len(), used, err), (1, 50, None));
    }

    #[test]
    fn byte_by_byte_delivery() {
        let mut stream = Vec::new();
        for i in 0..5u8 {
            encode(&[i; 48], &mut stream).unwrap();
        }
        let dec = FrameDecoder::default();
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for &byte in &stream {
            buf.push(byte);
            while let Some((p, used)) = dec.decode(&buf).unwrap() {
                got.push(p[0]);
                buf.drain(..used);
            }
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(buf.is_empty());
    }

    #[test]
    fn zero_length_is_an_error() {
        assert_eq!(
            FrameDecoder::default().decode(&[0, 0, 1, 2]),
            Err(FrameError::Empty)
        );
        assert_eq!(encode(&[], &mut Vec::new()), Err(FrameError::Empty));
    }

    #[test]
    fn oversize_is_an_error_before_the_payload_arrives() {
        let dec = FrameDecoder::new(1024);
        assert_eq!(
            dec.decode(&1025u16.to_be_bytes()),
            Err(FrameError::TooLong {
                len: 1025,
                max: 1024
            })
        );
        let mut stream = Vec::new();
        encode(&[0u8; 1024], &mut stream).unwrap();
        assert!(matches!(dec.decode(&stream), Ok(Some((_, 1026)))));
        assert!(encode(&vec![0u8; 70_000], &mut Vec::new()).is_err());
    }
}
