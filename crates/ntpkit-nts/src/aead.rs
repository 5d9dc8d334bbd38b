//! AEAD_AES_SIV_CMAC_256 (RFC 5297) with the nonce-based interface NTS uses (RFC 8915 §5.6).
//!
//! SIV takes a vector of associated-data strings; the nonce-based AEAD of RFC 5297 §3 passes
//! the associated data first and the nonce as the last component, which is what chrony and
//! NTPsec compute. The output is the 16-byte synthetic IV followed by the ciphertext.
//!
//! The cipher is the `aes-siv` crate's; a [`SivKey`] holds one key and seals and opens in place,
//! so the server does not allocate for the four AEAD operations of an authenticated reply.
//! The tests check it against RFC 5297's vectors.

use crate::AeadAlgorithm;
use aes_siv::siv::Aes128Siv;
use aes_siv::KeyInit;

/// Length of the authentication tag (the synthetic IV) that sealing prepends.
pub const TAG_LEN: usize = 16;

/// Why sealing or opening failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AeadError {
    /// The key does not have the length the algorithm needs.
    #[error("AEAD key is {got} bytes, the algorithm needs {expected}")]
    KeyLength {
        /// Length the algorithm needs.
        expected: usize,
        /// Length that was given.
        got: usize,
    },
    /// The nonce is empty; AES-SIV's nonce-based interface needs at least one byte.
    #[error("AEAD nonce is empty")]
    EmptyNonce,
    /// The ciphertext is shorter than the tag.
    #[error("AEAD ciphertext of {0} bytes is shorter than the {TAG_LEN}-byte tag")]
    TooShort(usize),
    /// The tag does not match: wrong key, or the data or nonce was modified.
    #[error("AEAD authentication failed")]
    Unauthentic,
    /// The cipher refused its input (more associated-data components than it supports).
    #[error("AEAD cipher refused its input")]
    Cipher,
}

/// An AEAD_AES_SIV_CMAC_256 key, checked once, for sealing and opening in place.
///
/// The nonce-based interface of RFC 5297 §3 passes the associated data, then the nonce, as
/// S2V's components.
#[derive(Clone)]
pub struct SivKey {
    key: [u8; 32],
}

impl std::fmt::Debug for SivKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("SivKey")
    }
}

impl SivKey {
    /// Call with a 32-byte key (`alg`'s key length) before sealing or opening under it.
    pub fn new(alg: AeadAlgorithm, key: &[u8]) -> Result<SivKey, AeadError> {
        match alg {
            AeadAlgorithm::AesSivCmac256 => {}
        }
        let key: &[u8; 32] = key.try_into().map_err(|_| AeadError::KeyLength {
            expected: alg.key_len(),
            got: key.len(),
        })?;
        Ok(SivKey::from_key(key))
    }

    /// Call with an AEAD_AES_SIV_CMAC_256 key whose length is known to be right.
    pub fn from_key(key: &[u8; 32]) -> SivKey {
        SivKey { key: *key }
    }

    fn cipher(&self) -> Aes128Siv {
        Aes128Siv::new(&self.key.into())
    }

    /// Call to seal in place: computes the tag of `plaintext` under `ad` and `nonce`, then
    /// encrypts `plaintext` where it lies. Send the tag, then the ciphertext.
    pub fn seal_in_place(
        &self,
        ad: &[u8],
        nonce: &[u8],
        plaintext: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        if nonce.is_empty() {
            return Err(AeadError::EmptyNonce);
        }
        let tag = self
            .cipher()
            .encrypt_in_place_detached([ad, nonce], plaintext)
            .map_err(|_| AeadError::Cipher)?;
        Ok(tag.into())
    }

    /// Call to open in place: decrypts `ciphertext` (without its tag) where it lies and checks
    /// `tag`; on failure the buffer holds the ciphertext again.
    pub fn open_in_place(
        &self,
        ad: &[u8],
        nonce: &[u8],
        tag: &[u8],
        ciphertext: &mut [u8],
    ) -> Result<(), AeadError> {
        if nonce.is_empty() {
            return Err(AeadError::EmptyNonce);
        }
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| AeadError::TooShort(tag.len()))?;
        self.cipher()
            .decrypt_in_place_detached([ad, nonce], ciphertext, &(*tag).into())
            .map_err(|_| AeadError::Unauthentic)
    }
}

/// Seals `plaintext` under `key`, binding `ad` and `nonce`; returns tag || ciphertext.
pub fn seal(
    alg: AeadAlgorithm,
    key: &[u8],
    ad: &[u8],
    nonce: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, AeadError> {
    let key = SivKey::new(alg, key)?;
    let mut out = Vec::with_capacity(TAG_LEN + plaintext.len());
    out.extend_from_slice(&[0; TAG_LEN]);
    out.extend_from_slice(plaintext);
    let tag = key.seal_in_place(ad, nonce, &mut out[TAG_LEN..])?;
    out[..TAG_LEN].copy_from_slice(&tag);
    Ok(out)
}

/// Opens what [`seal`] produced with the same key, associated data and nonce.
pub fn open(
    alg: AeadAlgorithm,
    key: &[u8],
    ad: &[u8],
    nonce: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, AeadError> {
    if nonce.is_empty() {
        return Err(AeadError::EmptyNonce);
    }
    if ciphertext.len() < TAG_LEN {
        return Err(AeadError::TooShort(ciphertext.len()));
    }
    let key = SivKey::new(alg, key)?;
    let (tag, sealed) = ciphertext.split_at(TAG_LEN);
    let mut plain = sealed.to_vec();
    key.open_in_place(ad, nonce, tag, &mut plain)?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_siv::siv::Aes128Siv;

    /// The reference implementation.
    fn cipher(_alg: AeadAlgorithm, key: &[u8]) -> Result<Aes128Siv, AeadError> {
        <Aes128Siv as aes_siv::KeyInit>::new_from_slice(key).map_err(|_| AeadError::Cipher)
    }

    #[test]
    fn agrees_with_the_reference_for_every_length() {
        let key: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let bytes: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for (ad_len, nonce_len) in [(0, 1), (1, 16), (15, 16), (16, 16), (17, 3), (48, 16)] {
            for pt_len in (0..70).chain([127, 128, 129, 255, 256, 257]) {
                let ad = &bytes[..ad_len];
                let nonce = &bytes[100..100 + nonce_len];
                let pt = &bytes[30..30 + pt_len];
                let want = cipher(ALG, &key).unwrap().encrypt([ad, nonce], pt).unwrap();
                let got = seal(ALG, &key, ad, nonce, pt).unwrap();
                assert_eq!(
                    got, want,
                    "ad {ad_len} nonce {nonce_len} plaintext {pt_len}"
                );
                assert_eq!(open(ALG, &key, ad, nonce, &got).unwrap(), pt);
                let mut bad = got.clone();
                bad[pt_len / 2 + TAG_LEN / 2] ^= 0x10;
                assert_eq!(
                    open(ALG, &key, ad, nonce, &bad),
                    Err(AeadError::Unauthentic)
                );
            }
        }
    }

    const ALG: AeadAlgorithm = AeadAlgorithm::AesSivCmac256;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5297 §A.1, deterministic authenticated encryption: one associated-data string.
    #[test]
    fn rfc5297_a1_deterministic() {
        let key = hex("fffefdfc fbfaf9f8 f7f6f5f4 f3f2f1f0 f0f1f2f3 f4f5f6f7 f8f9fafb fcfdfeff");
        let ad = hex("10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627");
        let pt = hex("11223344 55667788 99aabbcc ddee");
        let want = hex("85632d07 c6e8f37f 950acd32 0a2ecc93 40c02b96 90c4dc04 daef7f6a fe5c");
        let got = cipher(ALG, &key).unwrap().encrypt([&ad], &pt).unwrap();
        assert_eq!(got, want);
        let back = cipher(ALG, &key).unwrap().decrypt([&ad], &got).unwrap();
        assert_eq!(back, pt);
    }

    /// RFC 5297 §A.2, nonce-based: two associated-data strings, then the nonce as the last
    /// component. `seal` passes [ad, nonce] in the same order.
    #[test]
    fn rfc5297_a2_nonce_last() {
        let key = hex("7f7e7d7c 7b7a7978 77767574 73727170 40414243 44454647 48494a4b 4c4d4e4f");
        let ad1 = hex(
            "00112233 44556677 8899aabb ccddeeff deaddada deaddada ffeeddcc bbaa9988 77665544 \
             33221100",
        );
        let ad2 = hex("10203040 50607080 90a0");
        let nonce = hex("09f91102 9d74e35b d84156c5 635688c0");
        let pt = hex(
            "74686973 20697320 736f6d65 20706c61 696e7465 78742074 6f20656e 63727970 74207573 \
             696e6720 5349562d 414553",
        );
        let want = hex(
            "7bdb6e3b 432667eb 06f4d14b ff2fbd0f cb900f2f ddbe4043 26601965 c889bf17 dba77ceb \
             094fa663 b7a3f748 ba8af829 ea64ad54 4a272e9c 485b62a3 fd5c0d",
        );
        let got = cipher(ALG, &key)
            .unwrap()
            .encrypt([&ad1, &ad2, &nonce], &pt)
            .unwrap();
        assert_eq!(got, want);
        // With a single associated-data string, `seal` is exactly S2V(ad, nonce, plaintext).
        let sealed = seal(ALG, &key, &ad1, &nonce, &pt).unwrap();
        let direct = cipher(ALG, &key)
            .unwrap()
            .encrypt([&ad1, &nonce], &pt)
            .unwrap();
        assert_eq!(sealed, direct);
        assert_eq!(open(ALG, &key, &ad1, &nonce, &sealed).unwrap(), pt);
    }

    #[test]
    fn empty_plaintext_seals_to_a_bare_tag() {
        let key = [7u8; 32];
        let sealed = seal(ALG, &key, b"header", &[1; 16], &[]).unwrap();
        assert_eq!(sealed.len(), TAG_LEN);
        assert_eq!(open(ALG, &key, b"header", &[1; 16], &sealed).unwrap(), b"");
    }

    #[test]
    fn failures_are_typed() {
        let key = [7u8; 32];
        assert_eq!(
            seal(ALG, &key[..16], b"", &[1], b"x"),
            Err(AeadError::KeyLength {
                expected: 32,
                got: 16
            })
        );
        assert_eq!(seal(ALG, &key, b"", &[], b"x"), Err(AeadError::EmptyNonce));
        assert_eq!(
            open(ALG, &key, b"", &[1], &[0; 15]),
            Err(AeadError::TooShort(15))
        );
        let sealed = seal(ALG, &key, b"ad", &[1; 16], b"secret").unwrap();
        assert_eq!(
            open(ALG, &key, b"ae", &[1; 16], &sealed),
            Err(AeadError::Unauthentic)
        );
        assert_eq!(
            open(ALG, &key, b"ad", &[2; 16], &sealed),
            Err(AeadError::Unauthentic)
        );
        assert_eq!(
            open(ALG, &[8; 32], b"ad", &[1; 16], &sealed),
            Err(AeadError::Unauthentic)
        );
    }
}
