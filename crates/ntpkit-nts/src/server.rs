//! The server's side of an NTS-protected exchange (RFC 8915 §5.7): open the cookie, check the
//! request's authenticator, and append the reply's extension fields to a header the caller built.
//!
//! The reply is never larger than the request: the server sends one fresh cookie plus one per
//! placeholder that is at least as long as a cookie field, and fewer if the request was short.

use crate::cookie::{cookie_len, make_cookie, open_cookie, CookieError};
use crate::ef::{
    authenticator_len, ef_len, push_authenticator, push_ef, Authenticator, AuthenticatorError,
    NtsFields, COOKIE, NONCE_LEN, UNIQUE_ID, UNIQUE_ID_LEN,
};
use crate::keys::CookieKeyring;
use crate::{aead, NtsKeys};
use ntpkit_wire::{Packet, ParseError, HEADER_LEN};
use rand_core::RngCore;

/// Most cookies one reply carries.
pub const MAX_REPLY_COOKIES: usize = 8;

/// What to do with a request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ServerOutcome {
    /// The request has no NTS fields: answer it as plain NTP. The buffer is unchanged.
    NotNts,
    /// Send the buffer: the caller's header, the echoed unique identifier and the authenticator
    /// with `cookies` fresh cookies. `len` is the buffer's length.
    Reply {
        /// Length of the reply in the buffer.
        len: usize,
        /// Cookies sealed into the reply.
        cookies: usize,
    },
    /// Send the buffer: an NTS NAK (kiss-o'-death NTSN with the unique identifier echoed),
    /// because the cookie did not open.
    Nak {
        /// Length of the NAK in the buffer.
        len: usize,
        /// Why the cookie did not open.
        reason: CookieError,
    },
    /// Send nothing. The buffer is unchanged.
    Drop(DropReason),
}

/// Why a request gets no answer at all.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DropReason {
    /// Not a well-formed NTP packet.
    #[error("request is not a well-formed NTP packet: {0}")]
    Malformed(ParseError),
    /// A legacy MAC follows the extension fields.
    #[error("NTS request carries a MAC trailer")]
    TrailingMac,
    /// No Unique Identifier, or more than one.
    #[error("NTS request carries {0} unique identifiers instead of one")]
    UniqueIdCount(usize),
    /// The Unique Identifier is shorter than 32 bytes.
    #[error("NTS request's unique identifier is {0} bytes, at least {UNIQUE_ID_LEN} are needed")]
    ShortUniqueId(usize),
    /// No cookie, or more than one.
    #[error("NTS request carries {0} cookies instead of one")]
    CookieCount(usize),
    /// No authenticator field.
    #[error("NTS request has no authenticator")]
    NoAuthenticator,
    /// Extension fields follow the authenticator.
    #[error("extension fields follow the request's authenticator")]
    FieldsAfterAuthenticator,
    /// The authenticator field is malformed.
    #[error("request's authenticator is malformed: {0}")]
    BadAuthenticator(AuthenticatorError),
    /// The authenticator does not verify under the cookie's client-to-server key.
    #[error("request's authenticator does not verify")]
    Unauthentic,
    /// The caller's buffer did not hold exactly a 48-byte reply header.
    #[error("reply buffer holds {0} bytes instead of a 48-byte header")]
    ReplyHeader(usize),
    /// Making a cookie or sealing the reply failed.
    #[error("sealing the reply failed")]
    Sealing,
}

/// Call on every request that reaches the server, after the plain responder wrote its reply
/// header into `out` (exactly 48 bytes, every field final): appends the NTS reply fields, turns
/// the header into an NTS NAK, or says to drop the request.
pub fn process_request(
    request: &[u8],
    ring: &CookieKeyring,
    unix_secs: u64,
    rng: &mut impl RngCore,
    out: &mut Vec<u8>,
) -> ServerOutcome {
    let packet = match Packet::parse(request) {
        Ok(p) => p,
        Err(e) => return ServerOutcome::Drop(DropReason::Malformed(e)),
    };
    let fields = NtsFields::collect(&packet);
    if !fields.is_nts() {
        return ServerOutcome::NotNts;
    }
    match check_request(request, &packet, &fields, ring, unix_secs, out.len()) {
        Err(Failure::Drop(reason)) => ServerOutcome::Drop(reason),
        Err(Failure::Nak(reason, unique_id)) => {
            turn_into_nak(out);
            push_ef(out, UNIQUE_ID, unique_id);
            ServerOutcome::Nak {
                len: out.len(),
                reason,
            }
        }
        Ok((keys, unique_id)) => {
            match build_reply(
                request.len(),
                &fields,
                &keys,
                unique_id,
                ring,
                unix_secs,
                rng,
                out,
            ) {
                Ok(cookies) => ServerOutcome::Reply {
                    len: out.len(),
                    cookies,
                },
                Err(reason) => {
                    out.truncate(HEADER_LEN);
                    ServerOutcome::Drop(reason)
                }
            }
        }
    }
}

enum Failure<'a> {
    Drop(DropReason),
    Nak(CookieError, &'a [u8]),
}

impl From<DropReason> for Failure<'_> {
    fn from(r: DropReason) -> Self {
        Failure::Drop(r)
    }
}

/// Checks the request's structure, opens its cookie and verifies its authenticator.
fn check_request<'a>(
    request: &[u8],
    packet: &Packet<'a>,
    fields: &NtsFields<'a>,
    ring: &CookieKeyring,
    unix_secs: u64,
    out_len: usize,
) -> Result<(NtsKeys, &'a [u8]), Failure<'a>> {
    if out_len != HEADER_LEN {
        return Err(DropReason::ReplyHeader(out_len).into());
    }
    if packet.mac.is_some() {
        return Err(DropReason::TrailingMac.into());
    }
    let unique_id = match fields.unique_ids.as_slice() {
        [id] if id.len() >= UNIQUE_ID_LEN => *id,
        [id] => return Err(DropReason::ShortUniqueId(id.len()).into()),
        ids => return Err(DropReason::UniqueIdCount(ids.len()).into()),
    };
    let cookie = match fields.cookies.as_slice() {
        [c] => *c,
        cs => return Err(DropReason::CookieCount(cs.len()).into()),
    };
    let (auth, offset) = fields.authenticator.ok_or(DropReason::NoAuthenticator)?;
    if fields.after_authenticator {
        return Err(DropReason::FieldsAfterAuthenticator.into());
    }
    let auth = Authenticator::parse(auth).map_err(DropReason::BadAuthenticator)?;
    let keys =
        open_cookie(ring, cookie, unix_secs).map_err(|reason| Failure::Nak(reason, unique_id))?;
    // The request's encrypted fields carry nothing this server acts on; only their
    // authenticity matters.
    aead::open(
        keys.aead,
        &keys.c2s,
        &request[..offset],
        auth.nonce,
        auth.ciphertext,
    )
    .map_err(|_| DropReason::Unauthentic)?;
    Ok((keys, unique_id))
}

/// Appends the echoed unique identifier and the authenticator with fresh cookies.
#[allow(clippy::too_many_arguments)]
fn build_reply(
    request_len: usize,
    fields: &NtsFields<'_>,
    keys: &NtsKeys,
    unique_id: &[u8],
    ring: &CookieKeyring,
    unix_secs: u64,
    rng: &mut impl RngCore,
    out: &mut Vec<u8>,
) -> Result<usize, DropReason> {
    let cookie_field = ef_len(cookie_len(keys.aead));
    let asked = fields
        .placeholders
        .iter()
        .filter(|&&len| len >= cookie_field)
        .count();
    let mut cookies = (1 + asked).min(MAX_REPLY_COOKIES);
    let fixed = HEADER_LEN + ef_len(unique_id.len());
    while cookies > 0 && fixed + authenticator_len(NONCE_LEN, cookies * cookie_field) > request_len
    {
        cookies -= 1;
    }
    let mut plain = Vec::with_capacity(cookies * cookie_field);
    for _ in 0..cookies {
        let cookie = make_cookie(ring, keys, unix_secs, rng).map_err(|_| DropReason::Sealing)?;
        push_ef(&mut plain, COOKIE, &cookie);
    }
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    push_ef(out, UNIQUE_ID, unique_id);
    push_authenticator(out, keys.aead, &keys.s2c, &nonce, &plain)
        .map_err(|_| DropReason::Sealing)?;
    Ok(cookies)
}

/// Rewrites a reply header as a kiss-o'-death with code NTSN: leap "unsynchronized", stratum 0.
fn turn_into_nak(header: &mut [u8]) {
    header[0] = (header[0] & 0b0011_1111) | 0b1100_0000;
    header[1] = 0;
    header[12..16].copy_from_slice(b"NTSN");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ef::{build_request, PendingRequest, ReplyError, ReplyVerdict};
    use crate::AeadAlgorithm;
    use ntpkit_wire::KissCode;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    const NOW: u64 = 1_780_000_000;
    const DAY: u64 = 86_400;

    fn keys() -> NtsKeys {
        NtsKeys {
            aead: AeadAlgorithm::AesSivCmac256,
            c2s: (0..32).collect(),
            s2c: (32..64).collect(),
        }
    }

    fn other_keys() -> NtsKeys {
        NtsKeys {
            aead: AeadAlgorithm::AesSivCmac256,
            c2s: vec![0xAA; 32],
            s2c: vec![0xBB; 32],
        }
    }

    fn ring(master: u8) -> CookieKeyring {
        CookieKeyring::with_default_rotation(&[master; 32]).unwrap()
    }

    fn request_header() -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = 0b00_100_011;
        h[40..48].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        h
    }

    fn reply_header() -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0] = 0b00_100_100;
        h[1] = 2;
        h[12..16].copy_from_slice(b"LOCL");
        h[24..32].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        h
    }

    struct Exchange {
        pending: PendingRequest,
        request: Vec<u8>,
        outcome: ServerOutcome,
        reply: Vec<u8>,
    }

    fn exchange(
        client_keys: &NtsKeys,
        cookie: &[u8],
        placeholders: usize,
        server: &CookieKeyring,
        at: u64,
        seed: u64,
    ) -> Exchange {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut request = Vec::new();
        let pending = build_request(
            &request_header(),
            client_keys,
            cookie,
            placeholders,
            &mut rng,
            &mut request,
        )
        .unwrap();
        let mut reply = reply_header();
        let outcome = process_request(&request, server, at, &mut rng, &mut reply);
        Exchange {
            pending,
            request,
            outcome,
            reply,
        }
    }

    fn cookie_from(server: &CookieKeyring, k: &NtsKeys, at: u64) -> Vec<u8> {
        make_cookie(server, k, at, &mut Xoshiro256PlusPlus::seed_from_u64(99)).unwrap()
    }

    #[test]
    fn round_trip() {
        let server = ring(1);
        let cookie = cookie_from(&server, &keys(), NOW);
        let mut x = exchange(&keys(), &cookie, 2, &server, NOW, 7);
        assert_eq!(
            x.outcome,
            ServerOutcome::Reply {
                len: x.reply.len(),
                cookies: 3
            }
        );
        let ReplyVerdict::Authentic { cookies } = x.pending.verify_reply(&x.reply).unwrap() else {
            panic!("not authentic");
        };
        assert_eq!(cookies.len(), 3);
        for c in &cookies {
            assert_ne!(c, &cookie);
            // The new cookies hold the same association keys.
            assert_eq!(open_cookie(&server, c, NOW).unwrap(), keys());
        }
        // The header the caller built is kept as is.
        assert_eq!(&x.reply[..HEADER_LEN], &reply_header()[..]);
        assert!(x.reply.len() <= x.request.len());
    }

    #[test]
    fn not_nts_and_malformed() {
        let mut out = reply_header();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        assert_eq!(
            process_request(&request_header(), &ring(1), NOW, &mut rng, &mut out),
            ServerOutcome::NotNts
        );
        assert!(matches!(
            process_request(&[0; 10], &ring(1), NOW, &mut rng, &mut out),
            ServerOutcome::Drop(DropReason::Malformed(_))
        ));
        assert_eq!(out, reply_header());
    }

    #[test]
    fn every_bit_of_a_reply_matters() {
        let server = ring(1);
        let cookie = cookie_from(&server, &keys(), NOW);
        let x = exchange(&keys(), &cookie, 1, &server, NOW, 8);
        assert!(matches!(x.outcome, ServerOutcome::Reply { .. }));
        for bit in 0..x.reply.len() * 8 {
            let mut bad = x.reply.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut pending = x.pending.clone();
            let got = pending.verify_reply(&bad);
            assert!(got.is_err(), "bit {bit} accepted: {got:?}");
        }
        // Truncated or extended by a MAC-sized tail, it is refused too.
        let mut pending = x.pending.clone();
        assert!(pending.verify_reply(&x.reply[..x.reply.len() - 4]).is_err());
        let mut longer = x.reply.clone();
        longer.extend_from_slice(&[0; 20]);
        assert_eq!(pending.verify_reply(&longer), Err(ReplyError::TrailingMac));
        let mut appended = x.reply.clone();
        push_ef(&mut appended, COOKIE, &[1; 102]);
        assert_eq!(
            pending.verify_reply(&appended),
            Err(ReplyError::FieldsAfterAuthenticator)
        );
        assert!(pending.verify_reply(&x.reply).is_ok());
    }

    #[test]
    fn every_bit_of_a_request_matters() {
        let server = ring(1);
        let cookie = cookie_from(&server, &keys(), NOW);
        let x = exchange(&keys(), &cookie, 1, &server, NOW, 9);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(10);
        for bit in 0..x.request.len() * 8 {
            let mut bad = x.request.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let mut out = reply_header();
            let got = process_request(&bad, &server, NOW, &mut rng, &mut out);
            assert!(
                !matches!(got, ServerOutcome::Reply { .. }),
                "bit {bit}: {got:?}"
            );
        }
    }

    #[test]
    fn replayed_replies_are_refused() {
        let server = ring(1);
        let cookie = cookie_from(&server, &keys(), NOW);
        let mut x = exchange(&keys(), &cookie, 0, &server, NOW, 11);
        assert!(x.pending.verify_reply(&x.reply).is_ok());
        assert_eq!(
            x.pending.verify_reply(&x.reply),
            Err(ReplyError::AlreadyAnswered)
        );
        // The same reply offered to a later request (another unique id) is refused.
        let mut later = exchange(&keys(), &cookie, 0, &server, NOW, 12);
        assert_eq!(
            later.pending.verify_reply(&x.reply),
            Err(ReplyError::UniqueIdMismatch)
        );
        assert!(later.pending.verify_reply(&later.reply).is_ok());
    }

    #[test]
    fn stolen_cookie_with_other_keys_is_dropped() {
        let server = ring(1);
        let cookie = cookie_from(&server, &keys(), NOW);
        // Another client sends the cookie but can only authenticate with its own keys.
        let x = exchange(&other_keys(), &cookie, 0, &server, NOW, 13);
        assert_eq!(x.outcome, ServerOutcome::Drop(DropReason::Unauthentic));
        assert_eq!(x.reply, reply_header());
    }

    #[test]
    fn cookie_of_another_master_gets_a_nak() {
        let cookie = cookie_from(&ring(2), &keys(), NOW);
        let mut x = exchange(&keys(), &cookie, 3, &ring(1), NOW, 14);
        assert_eq!(
            x.outcome,
            ServerOutcome::Nak {
                len: x.reply.len(),
                reason: CookieError::Unauthentic
            }
        );
        let p = Packet::parse(&x.reply).unwrap();
        assert_eq!(p.header.kiss_code(), Some(KissCode::NtsNak));
        assert_eq!(x.pending.verify_reply(&x.reply), Ok(ReplyVerdict::Nak));
        assert!(x.reply.len() <= x.request.len());
        // A NAK for another request is not one for this.
        let mut other = exchange(&keys(), &cookie, 0, &ring(1), NOW, 15);
        assert_eq!(
            other.pending.verify_reply(&x.reply),
            Err(ReplyError::UniqueIdMismatch)
        );
    }

    #[test]
    fn two_servers_share_a_master() {
        let cookie = cookie_from(&ring(1), &keys(), NOW);
        let mut x = exchange(&keys(), &cookie, 0, &ring(1), NOW, 16);
        assert!(matches!(
            x.pending.verify_reply(&x.reply),
            Ok(ReplyVerdict::Authentic { .. })
        ));
    }

    #[test]
    fn key_rotation() {
        let server = ring(1);
        let cookie = cookie_from(&server, &keys(), NOW);
        for (at, ok) in [
            (NOW - 2 * DAY, false),
            (NOW - DAY, true),
            (NOW + DAY, true),
            (NOW + 2 * DAY, false),
        ] {
            let x = exchange(&keys(), &cookie, 0, &server, at, 17);
            match x.outcome {
                ServerOutcome::Reply { .. } => assert!(ok, "at {at}"),
                ServerOutcome::Nak {
                    reason: CookieError::UnknownKey(_),
                    ..
                } => assert!(!ok, "at {at}"),
                other => panic!("at {at}: {other:?}"),
            }
        }
    }

    #[test]
    fn replies_never_exceed_requests() {
        let server = ring(1);
        let cookie = cookie_from(&server, &keys(), NOW);
        for placeholders in 0..8 {
            let mut x = exchange(&keys(), &cookie, placeholders, &server, NOW, 18);
            let ServerOutcome::Reply { cookies, len } = x.outcome else {
                panic!("{:?}", x.outcome);
            };
            assert_eq!(cookies, placeholders + 1);
            assert!(len <= x.request.len(), "{placeholders}: {len}");
            assert!(x.pending.verify_reply(&x.reply).is_ok());
        }
        // Placeholders shorter than a cookie field earn nothing.
        let k = keys();
        let mut req = request_header().to_vec();
        push_ef(&mut req, UNIQUE_ID, &[5; 32]);
        push_ef(&mut req, COOKIE, &cookie);
        for _ in 0..3 {
            push_ef(&mut req, crate::ef::COOKIE_PLACEHOLDER, &[0; 40]);
        }
        push_authenticator(&mut req, k.aead, &k.c2s, &[6; 16], &[]).unwrap();
        let mut out = reply_header();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(19);
        assert!(matches!(
            process_request(&req, &server, NOW, &mut rng, &mut out),
            ServerOutcome::Reply { cookies: 1, .. }
        ));
    }

    #[test]
    fn structural_problems_are_dropped() {
        let server = ring(1);
        let cookie = cookie_from(&server, &keys(), NOW);
        let x = exchange(&keys(), &cookie, 0, &server, NOW, 20);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
        // A field after the authenticator.
        let mut req = x.request.clone();
        push_ef(&mut req, 0x7777, &[0; 28]);
        let mut out = reply_header();
        assert_eq!(
            process_request(&req, &server, NOW, &mut rng, &mut out),
            ServerOutcome::Drop(DropReason::FieldsAfterAuthenticator)
        );
        // A MAC trailer.
        let mut req = x.request.clone();
        req.extend_from_slice(&[0; 20]);
        assert_eq!(
            process_request(&req, &server, NOW, &mut rng, &mut out),
            ServerOutcome::Drop(DropReason::TrailingMac)
        );
        // The caller's buffer is not a bare header.
        let mut long = reply_header();
        long.push(0);
        assert_eq!(
            process_request(&x.request, &server, NOW, &mut rng, &mut long),
            ServerOutcome::Drop(DropReason::ReplyHeader(49))
        );
        assert_eq!(out, reply_header());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_requests_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
            let mut out = reply_header();
            let outcome = process_request(&bytes, &ring(1), NOW, &mut rng, &mut out);
            match outcome {
                ServerOutcome::Reply { len, .. } | ServerOutcome::Nak { len, .. } => {
                    proptest::prop_assert!(len <= bytes.len());
                }
                _ => proptest::prop_assert_eq!(out, reply_header()),
            }
        }

        #[test]
        fn mutated_requests_never_panic(
            placeholders in 0usize..8,
            flips in proptest::collection::vec((0usize..2000, 0u8..8), 1..4),
            cut in proptest::option::of(0usize..2000),
        ) {
            let server = ring(1);
            let cookie = cookie_from(&server, &keys(), NOW);
            let x = exchange(&keys(), &cookie, placeholders, &server, NOW, 22);
            let mut req = x.request.clone();
            for (at, bit) in flips {
                let i = at % req.len();
                req[i] ^= 1 << bit;
            }
            if let Some(c) = cut {
                req.truncate(c % (req.len() + 1));
            }
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
            let mut out = reply_header();
            if let ServerOutcome::Reply { len, .. } | ServerOutcome::Nak { len, .. } =
                process_request(&req, &server, NOW, &mut rng, &mut out)
            {
                proptest::prop_assert!(len <= req.len());
            }
        }
    }
}
