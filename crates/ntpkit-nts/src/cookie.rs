//! Stateless server cookies (RFC 8915 §6): the association's keys, sealed under a cookie key.
//!
//! Layout: key id (u32 BE, low 32 bits of the period) || nonce (16 bytes) || AES-SIV of
//! (AEAD id u16 BE || c2s || s2c), with the key id as associated data. 102 bytes for
//! AEAD_AES_SIV_CMAC_256. A cookie comes back inside an extension field whose value is padded
//! to a multiple of 4 bytes, so opening also accepts the cookie followed by that zero padding.

use crate::aead::TAG_LEN;
use crate::keys::CookieKeyring;
use crate::{AeadAlgorithm, NtsKeys};
use rand_core::RngCore;

/// Length of the cookie nonce.
pub const COOKIE_NONCE_LEN: usize = 16;
const KEY_ID_LEN: usize = 4;
/// Longest sealed contents of a cookie: an AEAD id and two keys of at most 32 bytes.
const MAX_PLAINTEXT: usize = 2 + 2 * 32;

/// Why a cookie was not made or did not open.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum CookieError {
    /// The keys do not have the length their algorithm needs.
    #[error("association key of {got} bytes, {expected} expected")]
    KeyLength {
        /// Length the algorithm needs.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// The cookie's length fits no algorithm this server implements.
    #[error("cookie of {0} bytes has no known layout")]
    BadLength(usize),
    /// The key id names a period other than the previous, current or next one.
    #[error("cookie key {0} is not the previous, current or next period's")]
    UnknownKey(u32),
    /// The cookie did not authenticate: another server's, or modified.
    #[error("cookie does not authenticate")]
    Unauthentic,
    /// The opened plaintext does not hold an algorithm and two keys.
    #[error("cookie contents are malformed")]
    BadContents,
}

/// Length of a cookie holding keys of `alg`.
pub const fn cookie_len(alg: AeadAlgorithm) -> usize {
    KEY_ID_LEN + COOKIE_NONCE_LEN + TAG_LEN + 2 + 2 * alg.key_len()
}

/// Call when replying to an NTS request (or at the end of NTS-KE) to make a fresh cookie.
pub fn make_cookie(
    ring: &CookieKeyring,
    keys: &NtsKeys,
    unix_secs: u64,
    rng: &mut impl RngCore,
) -> Result<Vec<u8>, CookieError> {
    let klen = keys.aead.key_len();
    for k in [&keys.c2s, &keys.s2c] {
        if k.len() != klen {
            return Err(CookieError::KeyLength {
                expected: klen,
                got: k.len(),
            });
        }
    }
    let key = ring.current(unix_secs);
    let key_id = key.key_id().to_be_bytes();
    let mut nonce = [0u8; COOKIE_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    // Room for the zero padding a cookie field adds, so that it costs no reallocation.
    let mut cookie = Vec::with_capacity(cookie_len(keys.aead).next_multiple_of(4));
    cookie.extend_from_slice(&key_id);
    cookie.extend_from_slice(&nonce);
    cookie.extend_from_slice(&[0; TAG_LEN]);
    cookie.extend_from_slice(&keys.aead.id().to_be_bytes());
    cookie.extend_from_slice(&keys.c2s);
    cookie.extend_from_slice(&keys.s2c);
    // The nonce is not empty, so sealing cannot fail; mapping the error keeps the function free
    // of panics all the same.
    let sealed_at = KEY_ID_LEN + COOKIE_NONCE_LEN;
    let tag = key
        .siv()
        .seal_in_place(&key_id, &nonce, &mut cookie[sealed_at + TAG_LEN..])
        .map_err(|_| CookieError::Unauthentic)?;
    cookie[sealed_at..sealed_at + TAG_LEN].copy_from_slice(&tag);
    Ok(cookie)
}

/// Call on the cookie of an NTS request to recover the association's keys.
pub fn open_cookie(
    ring: &CookieKeyring,
    cookie: &[u8],
    unix_secs: u64,
) -> Result<NtsKeys, CookieError> {
    let len = AeadAlgorithm::ALL
        .into_iter()
        .map(cookie_len)
        .find(|&n| {
            cookie.len() == n
                || (cookie.len() == n.next_multiple_of(4) && cookie[n..].iter().all(|&b| b == 0))
        })
        .ok_or(CookieError::BadLength(cookie.len()))?;
    let cookie = &cookie[..len];
    let (key_id, rest) = cookie.split_at(KEY_ID_LEN);
    let (nonce, sealed) = rest.split_at(COOKIE_NONCE_LEN);
    let id = u32::from_be_bytes([key_id[0], key_id[1], key_id[2], key_id[3]]);
    let key = ring
        .key_for_id(id, unix_secs)
        .ok_or(CookieError::UnknownKey(id))?;
    let (tag, ciphertext) = sealed.split_at(TAG_LEN);
    let mut buf = [0u8; MAX_PLAINTEXT];
    let plain = buf
        .get_mut(..ciphertext.len())
        .ok_or(CookieError::BadLength(cookie.len()))?;
    plain.copy_from_slice(ciphertext);
    key.siv()
        .open_in_place(key_id, nonce, tag, plain)
        .map_err(|_| CookieError::Unauthentic)?;
    let (alg_id, keys) = plain.split_at_checked(2).ok_or(CookieError::BadContents)?;
    let aead = AeadAlgorithm::from_id(u16::from_be_bytes([alg_id[0], alg_id[1]]))
        .ok_or(CookieError::BadContents)?;
    if keys.len() != 2 * aead.key_len() {
        return Err(CookieError::BadContents);
    }
    let (c2s, s2c) = keys.split_at(aead.key_len());
    Ok(NtsKeys {
        aead,
        c2s: c2s.to_vec(),
        s2c: s2c.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_780_000_000;

    fn keys() -> NtsKeys {
        NtsKeys {
            aead: AeadAlgorithm::AesSivCmac256,
            c2s: (0..32).collect(),
            s2c: (100..132).collect(),
        }
    }

    fn ring(master: u8) -> CookieKeyring {
        CookieKeyring::with_default_rotation(&[master; 32]).unwrap()
    }

    #[test]
    fn round_trip_and_shared_master() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let c = make_cookie(&ring(1), &keys(), NOW, &mut rng).unwrap();
        assert_eq!(c.len(), cookie_len(AeadAlgorithm::AesSivCmac256));
        assert_eq!(c.len(), 102);
        // A second server with the same master opens it; so does the padded form.
        assert_eq!(open_cookie(&ring(1), &c, NOW).unwrap(), keys());
        let mut padded = c.clone();
        padded.extend_from_slice(&[0, 0]);
        assert_eq!(open_cookie(&ring(1), &padded, NOW).unwrap(), keys());
        padded[103] = 1;
        assert_eq!(
            open_cookie(&ring(1), &padded, NOW),
            Err(CookieError::BadLength(104))
        );
        assert_eq!(
            open_cookie(&ring(2), &c, NOW),
            Err(CookieError::Unauthentic)
        );
        // Fresh nonces: two cookies for the same keys differ.
        assert_ne!(c, make_cookie(&ring(1), &keys(), NOW, &mut rng).unwrap());
    }

    #[test]
    fn rotation_window() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let c = make_cookie(&ring(1), &keys(), NOW, &mut rng).unwrap();
        for (at, ok) in [
            (NOW - 2 * DAY, false),
            (NOW - DAY, true),
            (NOW, true),
            (NOW + DAY, true),
            (NOW + 2 * DAY, false),
        ] {
            let got = open_cookie(&ring(1), &c, at);
            assert_eq!(got.is_ok(), ok, "at {at}: {got:?}");
            if !ok {
                assert!(matches!(got, Err(CookieError::UnknownKey(_))));
            }
        }
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let c = make_cookie(&ring(1), &keys(), NOW, &mut rng).unwrap();
        for bit in 0..c.len() * 8 {
            let mut bad = c.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(open_cookie(&ring(1), &bad, NOW).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn wrong_key_lengths_are_refused() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
        let mut k = keys();
        k.s2c.pop();
        assert_eq!(
            make_cookie(&ring(1), &k, NOW, &mut rng),
            Err(CookieError::KeyLength {
                expected: 32,
                got: 31
            })
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_cookies_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = open_cookie(&ring(1), &bytes, NOW);
        }
    }
}
