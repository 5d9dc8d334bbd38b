//! The client's cookie jar: the association's keys and up to eight unused cookies.
//!
//! Each request spends one cookie (a cookie is never sent twice, so requests cannot be linked)
//! and carries enough placeholders that the reply's cookies fill the jar again.

use crate::ef::{build_request, BuildError, PendingRequest, ReplyError, ReplyVerdict};
use crate::NtsKeys;
use ntpkit_wire::HEADER_LEN;
use rand_core::RngCore;
use std::collections::VecDeque;

/// Most cookies the jar keeps.
pub const JAR_CAPACITY: usize = 8;

/// Why the jar could not make a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum JarError {
    /// No keys or no cookie left: run NTS-KE first.
    #[error("no NTS cookie left; a key exchange is needed")]
    NeedsKeyExchange,
    /// The request could not be built.
    #[error("building the NTS request failed: {0}")]
    Build(#[from] BuildError),
}

/// One server association's keys and cookies, on the client.
#[derive(Clone, Default)]
pub struct CookieJar {
    keys: Option<NtsKeys>,
    cookies: VecDeque<Vec<u8>>,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("keys", &self.keys)
            .field("cookies", &self.cookies.len())
            .finish()
    }
}

impl CookieJar {
    /// Call once per association: an empty jar that needs a key exchange.
    pub fn new() -> CookieJar {
        CookieJar::default()
    }

    /// Call after a successful NTS-KE with its keys and cookies; replaces everything held.
    pub fn install(&mut self, keys: NtsKeys, cookies: impl IntoIterator<Item = Vec<u8>>) {
        self.keys = Some(keys);
        self.cookies.clear();
        for c in cookies {
            self.add(c);
        }
    }

    /// Call before polling: true when no request can be made without NTS-KE.
    pub fn needs_key_exchange(&self) -> bool {
        self.keys.is_none() || self.cookies.is_empty()
    }

    /// Number of cookies held.
    pub fn len(&self) -> usize {
        self.cookies.len()
    }

    /// True when no cookie is held.
    pub fn is_empty(&self) -> bool {
        self.cookies.is_empty()
    }

    /// The association's keys, if any.
    pub fn keys(&self) -> Option<&NtsKeys> {
        self.keys.as_ref()
    }

    /// Call to keep a cookie; the oldest is dropped when the jar is full. Empty cookies are
    /// ignored.
    pub fn add(&mut self, cookie: Vec<u8>) {
        if cookie.is_empty() {
            return;
        }
        self.cookies.push_back(cookie);
        while self.cookies.len() > JAR_CAPACITY {
            self.cookies.pop_front();
        }
    }

    /// Call on an NTS NAK or when the association is abandoned: forgets keys and cookies.
    pub fn clear(&mut self) {
        self.keys = None;
        self.cookies.clear();
    }

    /// Placeholders the next request carries: as many as the jar will miss once that request
    /// has taken its cookie, less the one cookie every reply brings anyway.
    pub fn placeholders_wanted(&self) -> usize {
        JAR_CAPACITY.saturating_sub(self.cookies.len())
    }

    /// Call to send a request: spends the oldest cookie and writes the request after `header`
    /// into `out`.
    pub fn build_request(
        &mut self,
        header: &[u8; HEADER_LEN],
        rng: &mut impl RngCore,
        out: &mut Vec<u8>,
    ) -> Result<PendingRequest, JarError> {
        let keys = self.keys.as_ref().ok_or(JarError::NeedsKeyExchange)?;
        let placeholders = self.placeholders_wanted();
        let cookie = self.cookies.pop_front().ok_or(JarError::NeedsKeyExchange)?;
        match build_request(header, keys, &cookie, placeholders, rng, out) {
            Ok(pending) => Ok(pending),
            Err(e) => {
                // Not sent, so still unlinkable: keep it.
                self.cookies.push_front(cookie);
                Err(e.into())
            }
        }
    }

    /// Call on each datagram that arrives for `pending`: keeps the new cookies of an authentic
    /// reply, empties the jar on an NTS NAK.
    pub fn accept_reply(
        &mut self,
        pending: &mut PendingRequest,
        reply: &[u8],
    ) -> Result<ReplyVerdict, ReplyError> {
        let verdict = pending.verify_reply(reply)?;
        match &verdict {
            ReplyVerdict::Authentic { cookies } => {
                for c in cookies {
                    self.add(c.clone());
                }
            }
            ReplyVerdict::Nak => self.clear(),
        }
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::make_cookie;
    use crate::keys::CookieKeyring;
    use crate::server::{process_request, ServerOutcome};
    use crate::AeadAlgorithm;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    const NOW: u64 = 1_780_000_000;

    fn keys() -> NtsKeys {
        NtsKeys {
            aead: AeadAlgorithm::AesSivCmac256,
            c2s: vec![3; 32],
            s2c: vec![4; 32],
        }
    }

    fn header(byte0: u8) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = byte0;
        h
    }

    #[test]
    fn empty_jar_needs_key_exchange() {
        let mut jar = CookieJar::new();
        assert!(jar.needs_key_exchange());
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        assert_eq!(
            jar.build_request(&header(0x23), &mut rng, &mut Vec::new())
                .unwrap_err(),
            JarError::NeedsKeyExchange
        );
        jar.install(keys(), [vec![1; 100]]);
        assert!(!jar.needs_key_exchange());
        assert!(format!("{jar:?}").contains("cookies: 1"));
    }

    #[test]
    fn capacity_and_failed_builds_keep_cookies() {
        let mut jar = CookieJar::new();
        jar.install(keys(), (0..10u8).map(|i| vec![i; 100]));
        assert_eq!(jar.len(), JAR_CAPACITY);
        assert_eq!(jar.placeholders_wanted(), 0);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        // An NTPv3 header cannot carry extension fields; the cookie stays in the jar.
        assert!(matches!(
            jar.build_request(&header(0x1B), &mut rng, &mut Vec::new()),
            Err(JarError::Build(BuildError::BadHeader))
        ));
        assert_eq!(jar.len(), JAR_CAPACITY);
    }

    #[test]
    fn jar_refills_to_capacity() {
        let server = CookieKeyring::with_default_rotation(&[9; 32]).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let first = make_cookie(&server, &keys(), NOW, &mut rng).unwrap();
        let mut jar = CookieJar::new();
        jar.install(keys(), [first]);
        for round in 0..12 {
            let before = jar.len();
            let wanted = jar.placeholders_wanted();
            assert_eq!(wanted, JAR_CAPACITY - before, "round {round}");
            let mut request = Vec::new();
            let mut pending = jar
                .build_request(&header(0x23), &mut rng, &mut request)
                .unwrap();
            assert_eq!(jar.len(), before - 1);
            let mut reply = header(0x24).to_vec();
            let outcome = process_request(&request, &server, NOW, &mut rng, &mut reply);
            assert_eq!(
                outcome,
                ServerOutcome::Reply {
                    len: reply.len(),
                    cookies: wanted + 1
                },
                "round {round}"
            );
            assert!(jar.accept_reply(&mut pending, &reply).is_ok());
            assert_eq!(jar.len(), JAR_CAPACITY, "round {round}");
        }
    }

    #[test]
    fn nak_empties_the_jar() {
        let other = CookieKeyring::with_default_rotation(&[8; 32]).unwrap();
        let server = CookieKeyring::with_default_rotation(&[9; 32]).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let foreign = make_cookie(&other, &keys(), NOW, &mut rng).unwrap();
        let mut jar = CookieJar::new();
        jar.install(keys(), [foreign.clone(), foreign]);
        let mut request = Vec::new();
        let mut pending = jar
            .build_request(&header(0x23), &mut rng, &mut request)
            .unwrap();
        let mut reply = header(0x24).to_vec();
        assert!(matches!(
            process_request(&request, &server, NOW, &mut rng, &mut reply),
            ServerOutcome::Nak { .. }
        ));
        assert_eq!(
            jar.accept_reply(&mut pending, &reply),
            Ok(ReplyVerdict::Nak)
        );
        assert!(jar.needs_key_exchange());
        assert!(jar.keys().is_none());
    }

    #[test]
    fn rejected_replies_add_nothing() {
        let server = CookieKeyring::with_default_rotation(&[9; 32]).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
        let c = make_cookie(&server, &keys(), NOW, &mut rng).unwrap();
        let mut jar = CookieJar::new();
        jar.install(keys(), [c.clone(), c]);
        let mut request = Vec::new();
        let mut pending = jar
            .build_request(&header(0x23), &mut rng, &mut request)
            .unwrap();
        let mut reply = header(0x24).to_vec();
        process_request(&request, &server, NOW, &mut rng, &mut reply);
        let last = reply.len() - 1;
        reply[last] ^= 1;
        assert!(jar.accept_reply(&mut pending, &reply).is_err());
        assert_eq!(jar.len(), 1);
    }
}
