//! The NTS extension fields of NTP packets (RFC 8915 §5.3–§5.7) and the client's side of a
//! protected exchange.
//!
//! A request carries a Unique Identifier, one cookie, any number of cookie placeholders and, last,
//! the NTS Authenticator and Encrypted Extension Fields field, whose AEAD covers every byte of the
//! packet before it as associated data. A reply echoes the Unique Identifier and ends with an
//! authenticator under the server-to-client key whose encrypted part holds fresh cookies.
//!
//! The AEAD covers the header, so a caller must set every header field, the transmit timestamp
//! included, before sealing, and must not rewrite it afterwards.

use crate::aead::{self, AeadError, TAG_LEN};
use crate::NtsKeys;
use ntpkit_wire::{KissCode, Packet, ParseError, HEADER_LEN, MIN_EXTENSION_LEN};
use rand_core::RngCore;

/// Extension field type of the Unique Identifier.
pub const UNIQUE_ID: u16 = 0x0104;
/// Extension field type of an NTS Cookie.
pub const COOKIE: u16 = 0x0204;
/// Extension field type of an NTS Cookie Placeholder.
pub const COOKIE_PLACEHOLDER: u16 = 0x0304;
/// Extension field type of the NTS Authenticator and Encrypted Extension Fields.
pub const AUTHENTICATOR: u16 = 0x0404;

/// Length of the unique identifiers this crate sends.
pub const UNIQUE_ID_LEN: usize = 32;
/// Length of the nonces this crate puts in authenticators.
pub const NONCE_LEN: usize = 16;
/// Least room that nonce and additional padding take together in an authenticator (N_REQ for
/// AEAD_AES_SIV_CMAC_256, RFC 8915 §5.6).
const NONCE_ROOM: usize = 16;

/// Bytes an extension field with a value of `value_len` bytes occupies on the wire.
pub fn ef_len(value_len: usize) -> usize {
    (4 + value_len).next_multiple_of(4).max(MIN_EXTENSION_LEN)
}

/// Appends one extension field, padding its value with zeros to the wire's rules. Call only with
/// values that fit in a field (at most 65,531 bytes).
pub(crate) fn push_ef(out: &mut Vec<u8>, field_type: u16, value: &[u8]) {
    let len = ef_len(value.len());
    out.extend_from_slice(&field_type.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + len - 4 - value.len(), 0);
}

/// Length of the authenticator field for a nonce and a plaintext of the given lengths.
pub fn authenticator_len(nonce_len: usize, plaintext_len: usize) -> usize {
    let nonce_area = nonce_len.next_multiple_of(4).max(NONCE_ROOM);
    ef_len(4 + nonce_area + (TAG_LEN + plaintext_len).next_multiple_of(4))
}

/// Seals `plaintext` under `key` with everything already in `out` as associated data and appends
/// the authenticator field. Call last, once the packet before it is complete. The field is
/// written in place: the plaintext is copied where its ciphertext goes and encrypted there.
pub(crate) fn push_authenticator(
    out: &mut Vec<u8>,
    keys_aead: crate::AeadAlgorithm,
    key: &[u8],
    nonce: &[u8],
    plaintext: &[u8],
) -> Result<(), AeadError> {
    let siv = aead::SivKey::new(keys_aead, key)?;
    let start = out.len();
    let nonce_padded = nonce.len().next_multiple_of(4);
    // Additional padding, so that nonce plus padding fill at least N_REQ bytes.
    let nonce_area = nonce_padded.max(NONCE_ROOM);
    let sealed_len = TAG_LEN + plaintext.len();
    let body_len = 4 + nonce_padded + sealed_len.next_multiple_of(4) + nonce_area - nonce_padded;
    let field_len = ef_len(body_len);
    out.extend_from_slice(&AUTHENTICATOR.to_be_bytes());
    out.extend_from_slice(&(field_len as u16).to_be_bytes());
    out.extend_from_slice(&(nonce.len() as u16).to_be_bytes());
    out.extend_from_slice(&(sealed_len as u16).to_be_bytes());
    out.extend_from_slice(nonce);
    out.resize(start + 8 + nonce_padded, 0);
    let tag_at = out.len() - start;
    out.resize(out.len() + TAG_LEN, 0);
    out.extend_from_slice(plaintext);
    let (ad, field) = out.split_at_mut(start);
    match siv.seal_in_place(ad, nonce, &mut field[tag_at + TAG_LEN..]) {
        Ok(tag) => field[tag_at..tag_at + TAG_LEN].copy_from_slice(&tag),
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    }
    out.resize(start + field_len, 0);
    Ok(())
}

/// The nonce and ciphertext of an authenticator field's value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Authenticator<'a> {
    /// The AEAD nonce.
    pub nonce: &'a [u8],
    /// Tag and ciphertext, as the AEAD produced them.
    pub ciphertext: &'a [u8],
}

/// Why an extension field's value is not a well-formed authenticator.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AuthenticatorError {
    /// Fewer than the 4 bytes that hold the two lengths.
    #[error("authenticator field too short for its length fields")]
    Truncated,
    /// A zero-length nonce.
    #[error("authenticator nonce is empty")]
    EmptyNonce,
    /// The nonce and ciphertext lengths overrun the field.
    #[error("authenticator nonce of {nonce} and ciphertext of {ciphertext} bytes overrun a {available}-byte field")]
    Overrun {
        /// Declared nonce length.
        nonce: usize,
        /// Declared ciphertext length.
        ciphertext: usize,
        /// Bytes in the field after the length fields.
        available: usize,
    },
    /// Nonce and additional padding take less than the 16 bytes RFC 8915 requires.
    #[error("authenticator nonce with padding is shorter than 16 bytes")]
    NonceTooShort,
    /// A padding byte is not zero.
    #[error("authenticator padding is not zero")]
    NonZeroPadding,
}

impl<'a> Authenticator<'a> {
    /// Call on the value of a 0x0404 field to find its nonce and ciphertext.
    pub fn parse(value: &'a [u8]) -> Result<Authenticator<'a>, AuthenticatorError> {
        let (lens, rest) = value
            .split_at_checked(4)
            .ok_or(AuthenticatorError::Truncated)?;
        let nonce_len = u16::from_be_bytes([lens[0], lens[1]]) as usize;
        let ct_len = u16::from_be_bytes([lens[2], lens[3]]) as usize;
        if nonce_len == 0 {
            return Err(AuthenticatorError::EmptyNonce);
        }
        let nonce_padded = nonce_len.next_multiple_of(4);
        let ct_padded = ct_len.next_multiple_of(4);
        if nonce_padded + ct_padded > rest.len() {
            return Err(AuthenticatorError::Overrun {
                nonce: nonce_len,
                ciphertext: ct_len,
                available: rest.len(),
            });
        }
        if rest.len() - ct_padded < NONCE_ROOM {
            return Err(AuthenticatorError::NonceTooShort);
        }
        // Padding lies outside the AEAD; requiring zeros means no bit of the field can change
        // unnoticed.
        let padding = rest[nonce_len..nonce_padded]
            .iter()
            .chain(&rest[nonce_padded + ct_len..]);
        if padding.into_iter().any(|&b| b != 0) {
            return Err(AuthenticatorError::NonZeroPadding);
        }
        Ok(Authenticator {
            nonce: &rest[..nonce_len],
            ciphertext: &rest[nonce_padded..nonce_padded + ct_len],
        })
    }
}

/// The NTS parts of a packet, located but not yet authenticated.
#[derive(Clone, Debug, Default)]
pub(crate) struct NtsFields<'a> {
    /// Values of the Unique Identifier fields.
    pub unique_ids: Vec<&'a [u8]>,
    /// Values of the cookie fields (padding included).
    pub cookies: Vec<&'a [u8]>,
    /// Wire lengths of the placeholder fields.
    pub placeholders: Vec<usize>,
    /// The authenticator's value and the offset at which its field starts.
    pub authenticator: Option<(&'a [u8], usize)>,
    /// Whether any field follows the authenticator.
    pub after_authenticator: bool,
}

impl<'a> NtsFields<'a> {
    pub(crate) fn collect(packet: &Packet<'a>) -> NtsFields<'a> {
        let mut f = NtsFields::default();
        let mut offset = HEADER_LEN;
        for ef in packet.extensions() {
            let wire_len = 4 + ef.value.len();
            if f.authenticator.is_some() {
                f.after_authenticator = true;
            }
            match ef.field_type {
                UNIQUE_ID => f.unique_ids.push(ef.value),
                COOKIE => f.cookies.push(ef.value),
                COOKIE_PLACEHOLDER => f.placeholders.push(wire_len),
                AUTHENTICATOR if f.authenticator.is_none() => {
                    f.authenticator = Some((ef.value, offset))
                }
                _ => {}
            }
            offset += wire_len;
        }
        f
    }

    pub(crate) fn is_nts(&self) -> bool {
        !self.unique_ids.is_empty() || !self.cookies.is_empty() || self.authenticator.is_some()
    }
}

/// Splits decrypted extension fields into (type, value) pairs; `None` if they are malformed.
pub(crate) fn inner_fields(mut plain: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while !plain.is_empty() {
        let head = plain.get(..4)?;
        let field_type = u16::from_be_bytes([head[0], head[1]]);
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        if len < 4 || len % 4 != 0 || len > plain.len() {
            return None;
        }
        out.push((field_type, &plain[4..len]));
        plain = &plain[len..];
    }
    Some(out)
}

/// Why a request could not be built.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum BuildError {
    /// The cookie is empty or too long for an extension field.
    #[error("cookie of {0} bytes cannot be sent")]
    BadCookie(usize),
    /// The header is not an NTPv4 header (extension fields need version 4).
    #[error("request header is not a version-4 NTP header")]
    BadHeader,
    /// Sealing failed (a key of the wrong length).
    #[error("sealing the request failed: {0}")]
    Aead(#[from] AeadError),
}

/// An NTS request in flight: what its reply must match. Keep it until the reply arrives.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PendingRequest {
    unique_id: [u8; UNIQUE_ID_LEN],
    keys: NtsKeys,
    answered: bool,
}

/// What an acceptable reply to an NTS request says.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ReplyVerdict {
    /// The reply authenticated; its header may be used, and these cookies kept.
    Authentic {
        /// Fresh cookies from the encrypted part, in order (field padding included).
        cookies: Vec<Vec<u8>>,
    },
    /// An NTS NAK for this request: the server could not open the cookie. Discard every cookie
    /// and run NTS-KE again. It is not authenticated; only the echoed unique id ties it to the
    /// request, so its header carries no time.
    Nak,
}

/// Why a reply to an NTS request was rejected. Its header must not be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ReplyError {
    /// Not a well-formed NTP packet.
    #[error("reply is not a well-formed NTP packet: {0}")]
    Malformed(ParseError),
    /// A legacy MAC follows the extension fields: unauthenticated bytes.
    #[error("reply carries a MAC trailer after its extension fields")]
    TrailingMac,
    /// No Unique Identifier, or more than one.
    #[error("reply carries {0} unique identifiers instead of one")]
    UniqueIdCount(usize),
    /// The unique identifier is not the request's.
    #[error("reply's unique identifier is not the request's")]
    UniqueIdMismatch,
    /// No authenticator and not an NTS NAK: an unprotected reply to a protected request.
    #[error("reply to an NTS request is not authenticated")]
    Unauthenticated,
    /// The authenticator field is malformed.
    #[error("reply's authenticator is malformed: {0}")]
    BadAuthenticator(AuthenticatorError),
    /// Extension fields follow the authenticator, outside its protection.
    #[error("extension fields follow the reply's authenticator")]
    FieldsAfterAuthenticator,
    /// The authenticator does not verify under the server-to-client key.
    #[error("reply's authenticator does not verify")]
    Unauthentic,
    /// The decrypted extension fields are malformed.
    #[error("reply's encrypted extension fields are malformed")]
    MalformedEncrypted,
    /// This request already had its authentic reply: this one is a replay or a duplicate.
    #[error("request already answered")]
    AlreadyAnswered,
}

/// Call to send an NTS request: appends the extension fields (unique id from `rng`, `cookie`,
/// `placeholders` cookie placeholders, authenticator under `keys.c2s`) after the 48-byte
/// `header`, which `out` receives first.
pub fn build_request(
    header: &[u8; HEADER_LEN],
    keys: &NtsKeys,
    cookie: &[u8],
    placeholders: usize,
    rng: &mut impl RngCore,
    out: &mut Vec<u8>,
) -> Result<PendingRequest, BuildError> {
    if cookie.is_empty() || cookie.len() > usize::from(u16::MAX) - 8 {
        return Err(BuildError::BadCookie(cookie.len()));
    }
    if header[0] >> 3 & 0b111 != 4 {
        return Err(BuildError::BadHeader);
    }
    let mut unique_id = [0u8; UNIQUE_ID_LEN];
    rng.fill_bytes(&mut unique_id);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let start = out.len();
    out.extend_from_slice(header);
    push_ef(out, UNIQUE_ID, &unique_id);
    push_ef(out, COOKIE, cookie);
    let zeros = vec![0u8; cookie.len()];
    for _ in 0..placeholders {
        push_ef(out, COOKIE_PLACEHOLDER, &zeros);
    }
    // The associated data is the packet only, not whatever the caller's buffer held before it.
    let mut packet = out.split_off(start);
    let sealed = push_authenticator(&mut packet, keys.aead, &keys.c2s, &nonce, &[]);
    out.extend_from_slice(&packet);
    if let Err(e) = sealed {
        out.truncate(start);
        return Err(e.into());
    }
    Ok(PendingRequest {
        unique_id,
        keys: keys.clone(),
        answered: false,
    })
}

impl PendingRequest {
    /// The unique identifier the request carries.
    pub fn unique_id(&self) -> &[u8; UNIQUE_ID_LEN] {
        &self.unique_id
    }

    /// Call on each datagram that arrives for this request. Accepts only an authentic reply
    /// (once) or an NTS NAK echoing this request's unique identifier.
    pub fn verify_reply(&mut self, reply: &[u8]) -> Result<ReplyVerdict, ReplyError> {
        let verdict = verify_reply_to(&self.unique_id, &self.keys, reply)?;
        if let ReplyVerdict::Authentic { .. } = verdict {
            if self.answered {
                return Err(ReplyError::AlreadyAnswered);
            }
            self.answered = true;
        }
        Ok(verdict)
    }
}

/// Call on a reply to a request whose unique identifier and keys the caller keeps itself (a
/// load generator that sends the same requests again): the checks of
/// [`PendingRequest::verify_reply`], without its one-answer-per-request state.
pub fn verify_reply_to(
    unique_id: &[u8],
    keys: &NtsKeys,
    reply: &[u8],
) -> Result<ReplyVerdict, ReplyError> {
    let packet = Packet::parse(reply).map_err(ReplyError::Malformed)?;
    if packet.mac.is_some() {
        return Err(ReplyError::TrailingMac);
    }
    let fields = NtsFields::collect(&packet);
    match fields.unique_ids.as_slice() {
        [id] => {
            // The value includes the field's padding; ours is 32 bytes, a multiple of 4.
            if *id != unique_id {
                return Err(ReplyError::UniqueIdMismatch);
            }
        }
        ids => return Err(ReplyError::UniqueIdCount(ids.len())),
    }
    let Some((auth, offset)) = fields.authenticator else {
        if packet.header.kiss_code() == Some(KissCode::NtsNak) {
            return Ok(ReplyVerdict::Nak);
        }
        return Err(ReplyError::Unauthenticated);
    };
    if fields.after_authenticator {
        return Err(ReplyError::FieldsAfterAuthenticator);
    }
    let auth = Authenticator::parse(auth).map_err(ReplyError::BadAuthenticator)?;
    let plain = aead::open(
        keys.aead,
        &keys.s2c,
        &reply[..offset],
        auth.nonce,
        auth.ciphertext,
    )
    .map_err(|_| ReplyError::Unauthentic)?;
    let inner = inner_fields(&plain).ok_or(ReplyError::MalformedEncrypted)?;
    let cookies = inner
        .into_iter()
        .filter(|(t, v)| *t == COOKIE && !v.is_empty())
        .map(|(_, v)| v.to_vec())
        .collect();
    Ok(ReplyVerdict::Authentic { cookies })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AeadAlgorithm;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn keys() -> NtsKeys {
        NtsKeys {
            aead: AeadAlgorithm::AesSivCmac256,
            c2s: vec![1; 32],
            s2c: vec![2; 32],
        }
    }

    fn header() -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = 0b00_100_011;
        h[40..48].copy_from_slice(&[9; 8]);
        h
    }

    #[test]
    fn request_layout() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut out = vec![0xEE; 3];
        let cookie = [7u8; 104];
        let pending = build_request(&header(), &keys(), &cookie, 2, &mut rng, &mut out).unwrap();
        let req = &out[3..];
        let p = Packet::parse(req).unwrap();
        let efs: Vec<_> = p.extensions().collect();
        assert_eq!(
            efs.iter().map(|e| e.field_type).collect::<Vec<_>>(),
            [
                UNIQUE_ID,
                COOKIE,
                COOKIE_PLACEHOLDER,
                COOKIE_PLACEHOLDER,
                AUTHENTICATOR
            ]
        );
        assert_eq!(efs[0].value, pending.unique_id());
        assert_eq!(efs[1].value, cookie);
        assert!(efs[2].value.iter().all(|&b| b == 0) && efs[2].value.len() == 104);
        let auth = Authenticator::parse(efs[4].value).unwrap();
        assert_eq!(auth.nonce.len(), NONCE_LEN);
        let ad_len = req.len() - ef_len(efs[4].value.len());
        assert_eq!(
            efs[4].value.len() + 4,
            authenticator_len(NONCE_LEN, 0),
            "length formula"
        );
        let plain = aead::open(
            AeadAlgorithm::AesSivCmac256,
            &[1; 32],
            &req[..ad_len],
            auth.nonce,
            auth.ciphertext,
        )
        .unwrap();
        assert!(plain.is_empty());
    }

    #[test]
    fn authenticator_parsing() {
        // nonce 1 byte (padded to 4), 12 bytes additional padding, ciphertext 16.
        let mut v = vec![0, 1, 0, 16];
        v.extend_from_slice(&[5, 0, 0, 0]);
        v.extend_from_slice(&[6; 16]);
        v.extend_from_slice(&[0; 12]);
        let a = Authenticator::parse(&v).unwrap();
        assert_eq!(a.nonce, [5]);
        assert_eq!(a.ciphertext, [6; 16]);
        v[5] = 1;
        assert_eq!(
            Authenticator::parse(&v),
            Err(AuthenticatorError::NonZeroPadding)
        );
        v[5] = 0;
        let last = v.len() - 1;
        v[last] = 1;
        assert_eq!(
            Authenticator::parse(&v),
            Err(AuthenticatorError::NonZeroPadding)
        );
        v.truncate(v.len() - 4);
        assert_eq!(
            Authenticator::parse(&v),
            Err(AuthenticatorError::NonceTooShort)
        );
        assert_eq!(
            Authenticator::parse(&[0, 0, 0, 0]),
            Err(AuthenticatorError::EmptyNonce)
        );
        assert_eq!(
            Authenticator::parse(&[0, 1]),
            Err(AuthenticatorError::Truncated)
        );
        assert!(matches!(
            Authenticator::parse(&[0, 4, 0, 16, 1, 2, 3, 4]),
            Err(AuthenticatorError::Overrun { .. })
        ));
    }

    #[test]
    fn bad_inputs_to_build() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut out = Vec::new();
        assert_eq!(
            build_request(&header(), &keys(), &[], 0, &mut rng, &mut out),
            Err(BuildError::BadCookie(0))
        );
        let mut h = header();
        h[0] = 0b00_011_011;
        assert_eq!(
            build_request(&h, &keys(), &[1; 100], 0, &mut rng, &mut out),
            Err(BuildError::BadHeader)
        );
        let mut k = keys();
        k.c2s.truncate(5);
        assert!(matches!(
            build_request(&header(), &k, &[1; 100], 0, &mut rng, &mut out),
            Err(BuildError::Aead(AeadError::KeyLength { .. }))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn plain_reply_to_nts_request_is_refused() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let mut out = Vec::new();
        let mut pending =
            build_request(&header(), &keys(), &[3; 104], 0, &mut rng, &mut out).unwrap();
        let mut plain = header();
        plain[0] = 0b00_100_100;
        assert_eq!(
            pending.verify_reply(&plain),
            Err(ReplyError::UniqueIdCount(0))
        );
        // Unique id echoed but no authenticator, and not a NAK.
        let mut echoed = plain.to_vec();
        push_ef(&mut echoed, UNIQUE_ID, pending.unique_id());
        assert_eq!(
            pending.verify_reply(&echoed),
            Err(ReplyError::Unauthenticated)
        );
        // The same as a kiss-o'-death NTSN is a NAK.
        echoed[1] = 0;
        echoed[12..16].copy_from_slice(b"NTSN");
        assert_eq!(pending.verify_reply(&echoed), Ok(ReplyVerdict::Nak));
        // Another code is not.
        echoed[12..16].copy_from_slice(b"RATE");
        assert_eq!(
            pending.verify_reply(&echoed),
            Err(ReplyError::Unauthenticated)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_replies_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
            let mut out = Vec::new();
            let mut pending = build_request(&header(), &keys(), &[3; 104], 0, &mut rng, &mut out).unwrap();
            let _ = pending.verify_reply(&bytes);
            let _ = Authenticator::parse(&bytes);
            let _ = inner_fields(&bytes);
        }
    }
}
