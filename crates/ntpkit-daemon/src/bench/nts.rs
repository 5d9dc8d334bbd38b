//! `ntpkit bench --nts`: the load of [`super`] with NTS-protected requests (RFC 8915).
//!
//! One NTS-KE gives the keys and cookies and names the NTP server. Each thread then builds a
//! bounded pool of requests up front ([`NtsRequests`]), each with its own transmit timestamp,
//! unique identifier and authenticator (the key exchange's cookies used in turn), and sends the
//! pool round and round. Building a request costs an AEAD seal, as much as the server's check
//! of it: done per request, it would make the generator, not the server, the bottleneck.
//!
//! The trade-off: requests are sent again, with the same cookie and unique identifier.
//! Stateless servers (chronyd, `ntpkit serve`) remember neither, so they serve a request sent
//! again like a new one, with the same work; a real client never does this (each cookie goes
//! out once, so that its requests cannot be linked). A pool entry is sent again
//! [`POOL_LEN`] requests later: a reply later than that is taken for the newer request's.
//!
//! A reply is matched to its pool entry by its origin timestamp, and must echo that entry's
//! unique identifier. One reply in `verify_one_in` (every one by default) is verified in full
//! with [`ntpkit_nts::verify_reply_to`]: the authenticator opened with the server-to-client
//! key, the encrypted cookies parsed. The others are checked for the echoed unique identifier
//! and an authenticator field only.

use super::{
    inspect, BenchConfig, BenchError, BenchReport, Inspected, RequestBook, Requests, Tally,
};
use crate::nts_ke::{self, NtsError};
use ntpkit_nts::ef::{AUTHENTICATOR, UNIQUE_ID, UNIQUE_ID_LEN};
use ntpkit_nts::{build_request, verify_reply_to, NtsKeys, ReplyError, ReplyVerdict};
use ntpkit_wire::{Header, KissCode, Mode, NtpTimestamp, Packet, HEADER_LEN};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rustls::ClientConfig;
use serde::Serialize;
use std::fmt::Write as _;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

/// Requests each thread builds before the run and sends round and round (a power of two).
pub const POOL_LEN: usize = 1 << 14;
/// Bytes read of each reply: a reply is no longer than its request, and the request carries
/// one cookie and no placeholder.
const NTS_REPLY_BUF: usize = 1024;

/// NTS replies by verdict.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct NtsCounts {
    /// Replies whose authenticator verified under the server-to-client key.
    pub verified: u64,
    /// Replies not verified (sampling) that echoed their request's unique identifier and
    /// carried an authenticator.
    pub unverified: u64,
    /// NTS NAKs echoing a request's unique identifier.
    pub naks: u64,
    /// Replies that failed verification, or did not echo the unique identifier, or carried no
    /// authenticator.
    pub failed: u64,
    /// Why the first failed reply was rejected.
    pub first_failure: Option<ReplyError>,
}

impl NtsCounts {
    /// Adds another thread's counts; the first failure is kept.
    pub fn merge(&mut self, o: &NtsCounts) {
        self.verified += o.verified;
        self.unverified += o.unverified;
        self.naks += o.naks;
        self.failed += o.failed;
        self.first_failure = self.first_failure.or(o.first_failure);
    }

    fn fail(&mut self, e: ReplyError) {
        self.failed += 1;
        self.first_failure.get_or_insert(e);
    }
}

/// One thread's pool of NTS requests, and how it checks their replies.
#[derive(Debug)]
pub struct NtsRequests {
    keys: NtsKeys,
    /// The requests, one every `stride` bytes.
    packets: Vec<u8>,
    stride: usize,
    lens: Vec<usize>,
    ids: Vec<[u8; UNIQUE_ID_LEN]>,
    /// Transmit timestamp of entry 0; entry i carries `base + i`.
    base: u64,
    verify_one_in: u64,
    seen: u64,
}

impl NtsRequests {
    /// Builds `pool` requests (a power of two) under `keys`, the cookies used in turn, the
    /// unique identifiers, nonces and transmit timestamps from `rng`; one reply in
    /// `verify_one_in` (at least 1) is verified in full.
    pub fn new(
        keys: &NtsKeys,
        cookies: &[Vec<u8>],
        pool: usize,
        verify_one_in: u64,
        rng: &mut impl RngCore,
    ) -> Result<NtsRequests, BenchError> {
        if !pool.is_power_of_two() || cookies.is_empty() {
            return Err(BenchError::Config(
                "an NTS pool needs a power-of-two size and at least one cookie".into(),
            ));
        }
        // The top bits set: no transmit timestamp of the pool is zero.
        let base = (rng.next_u64() | 1 << 63) & !(1 << 62);
        let mut header = [0u8; HEADER_LEN];
        Header {
            version: 4,
            mode: Mode::Client,
            ..Header::default()
        }
        .emit(&mut header);
        let mut built = Vec::new();
        let mut offsets = Vec::with_capacity(pool);
        let mut ids = Vec::with_capacity(pool);
        for i in 0..pool {
            ntpkit_wire::stamp_transmit(
                &mut header,
                NtpTimestamp::from_bits(base.wrapping_add(i as u64)),
            );
            let start = built.len();
            let pending = build_request(
                &header,
                keys,
                &cookies[i % cookies.len()],
                0,
                rng,
                &mut built,
            )
            .map_err(|e| BenchError::Config(format!("cannot build an NTS request: {e}")))?;
            offsets.push((start, built.len() - start));
            ids.push(*pending.unique_id());
        }
        let stride = offsets.iter().map(|&(_, l)| l).max().unwrap_or(HEADER_LEN);
        let mut packets = vec![0u8; stride * pool];
        for (i, &(start, len)) in offsets.iter().enumerate() {
            packets[i * stride..i * stride + len].copy_from_slice(&built[start..start + len]);
        }
        Ok(NtsRequests {
            keys: keys.clone(),
            packets,
            stride,
            lens: offsets.iter().map(|&(_, l)| l).collect(),
            ids,
            base,
            verify_one_in: verify_one_in.max(1),
            seen: 0,
        })
    }

    /// The sequence number of the latest request issued from pool entry `entry`, if any.
    fn latest_seq(&self, book: &RequestBook, entry: u64) -> Option<u64> {
        let issued = book.issued();
        let back = issued.wrapping_sub(entry) & (self.ids.len() as u64 - 1);
        let seq = issued.wrapping_sub(back);
        (seq >= 1 && seq <= issued).then_some(seq)
    }
}

/// Checks the cheap part of an NTS reply: exactly one unique identifier, `id`, and an
/// authenticator field.
fn echoes(id: &[u8], datagram: &[u8]) -> Result<(), ReplyError> {
    let packet = Packet::parse(datagram).map_err(ReplyError::Malformed)?;
    let (mut ids, mut matched, mut auth) = (0, false, false);
    for ef in packet.extensions() {
        match ef.field_type {
            UNIQUE_ID => {
                ids += 1;
                matched = ef.value == id;
            }
            AUTHENTICATOR => auth = true,
            _ => {}
        }
    }
    match (ids, matched, auth) {
        (1, true, true) => Ok(()),
        (1, true, false) => Err(ReplyError::Unauthenticated),
        (1, false, _) => Err(ReplyError::UniqueIdMismatch),
        (n, _, _) => Err(ReplyError::UniqueIdCount(n)),
    }
}

impl Requests for NtsRequests {
    fn max_len(&self) -> usize {
        self.stride
    }

    fn reply_len(&self) -> usize {
        NTS_REPLY_BUF.max(self.stride)
    }

    fn write(&mut self, book: &RequestBook, ahead: usize, buf: &mut [u8]) -> usize {
        let i = (book.seq(ahead) & (self.ids.len() as u64 - 1)) as usize;
        let len = self.lens[i];
        buf[..len].copy_from_slice(&self.packets[i * self.stride..i * self.stride + len]);
        len
    }

    fn count(
        &mut self,
        tally: &mut Tally,
        book: &mut RequestBook,
        datagram: &[u8],
        now_ns: i64,
        in_window: bool,
    ) {
        let (origin, stratum, kiss) = match inspect(datagram) {
            Inspected::Malformed => {
                tally.invalid.malformed += 1;
                return;
            }
            Inspected::BadMode => {
                tally.invalid.bad_mode += 1;
                return;
            }
            Inspected::Reply {
                origin,
                stratum,
                kiss,
            } => (origin, stratum, kiss),
        };
        let entry = origin.wrapping_sub(self.base);
        let Some(seq) = (entry < self.ids.len() as u64)
            .then(|| self.latest_seq(book, entry))
            .flatten()
        else {
            tally.invalid.unknown_origin += 1;
            return;
        };
        let (sent_ns, measured) = match book.answer(book.cookie_of(seq)) {
            super::Answer::Unknown => {
                tally.invalid.unknown_origin += 1;
                return;
            }
            super::Answer::Duplicate => {
                tally.invalid.duplicate += 1;
                return;
            }
            super::Answer::Ours {
                sent_ns, measured, ..
            } => (sent_ns, measured),
        };
        let id = &self.ids[entry as usize];
        match kiss {
            Some(KissCode::NtsNak) => match verify_reply_to(id, &self.keys, datagram) {
                Ok(ReplyVerdict::Nak) => tally.nts.naks += 1,
                Ok(ReplyVerdict::Authentic { .. }) => tally.kiss.add(KissCode::NtsNak),
                Err(e) => tally.nts.fail(e),
            },
            Some(code) => tally.kiss.add(code),
            None if stratum >= 16 => tally.invalid.bad_stratum += 1,
            None => {
                let sample = self.seen.is_multiple_of(self.verify_one_in);
                self.seen += 1;
                let checked = if sample {
                    match verify_reply_to(id, &self.keys, datagram) {
                        Ok(ReplyVerdict::Authentic { .. }) => {
                            tally.nts.verified += 1;
                            Ok(())
                        }
                        Ok(ReplyVerdict::Nak) => Err(ReplyError::Unauthenticated),
                        Err(e) => Err(e),
                    }
                } else {
                    echoes(id, datagram).inspect(|()| tally.nts.unverified += 1)
                };
                match checked {
                    Ok(()) => tally.count_valid(sent_ns, measured, now_ns, in_window),
                    Err(e) => tally.nts.fail(e),
                }
            }
        }
    }
}

/// What `ntpkit bench --nts` needs besides the load.
#[derive(Clone, Debug)]
pub struct NtsBenchConfig {
    /// Host of the NTS-KE server (also the TLS server name).
    pub ke_host: String,
    /// Its TCP port.
    pub ke_port: u16,
    /// The TLS configuration (trusted certificates).
    pub tls: Arc<ClientConfig>,
    /// Time allowed for the key exchange.
    pub ke_timeout: Duration,
    /// One reply in this many is verified in full (at least 1).
    pub verify_one_in: u64,
    /// Accept servers outside loopback.
    pub allow_remote: bool,
}

/// The key exchange and the NTS counts of a run, as printed.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct NtsReport {
    /// The NTS-KE server, `HOST:PORT`.
    pub ke_server: String,
    /// The NTP server it named, `HOST:PORT`.
    pub ntp_server: String,
    /// The negotiated AEAD algorithm.
    pub aead: &'static str,
    /// Cookies the key exchange gave (the pool uses them in turn).
    pub cookies: usize,
    /// Requests each thread built before the run and sent round and round.
    pub pool: usize,
    /// One reply in this many is verified in full.
    pub verify_one_in: u64,
    /// Replies verified under the server-to-client key (whole run).
    pub verified: u64,
    /// Replies that echoed their unique identifier with an authenticator, not verified.
    pub unverified: u64,
    /// NTS NAKs.
    pub naks: u64,
    /// Replies that failed verification.
    pub failed: u64,
    /// Why the first failed reply was rejected.
    pub first_failure: Option<String>,
}

impl NtsReport {
    /// The NTS lines of the text report.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "nts: key exchange with {} ({}, {} cookies), NTP server {}; {} requests built per \
             thread and sent again and again",
            self.ke_server,
            self.aead,
            self.cookies,
            self.ntp_server,
            super::group(self.pool as u64)
        );
        let _ = writeln!(
            s,
            "nts replies (whole run): {} verified with the server-to-client key, {} checked for \
             the unique id only (1 in {} verified); {} NTS NAK, {} failed verification",
            super::group(self.verified),
            super::group(self.unverified),
            self.verify_one_in,
            super::group(self.naks),
            super::group(self.failed)
        );
        if let Some(f) = &self.first_failure {
            let _ = writeln!(s, "first failure: {f}");
        }
        s
    }
}

/// Refuses a key-exchange server outside loopback unless `allow_remote`.
pub fn check_ke_target(host: &str, port: u16, allow_remote: bool) -> Result<(), BenchError> {
    let name = format!("{host}:{port}");
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| BenchError::Nts(NtsError::Resolve(name.clone(), e.to_string())))?;
    for a in addrs {
        super::check_target(a, allow_remote)?;
    }
    Ok(())
}

/// Runs NTS-KE with the configured server, then the load of `cfg` (whose target is replaced
/// by the NTP server the key exchange named) with NTS requests. Returns the tally and the
/// report.
pub fn run(cfg: &BenchConfig, nts: &NtsBenchConfig) -> Result<(Tally, BenchReport), BenchError> {
    super::validate(cfg)?;
    check_ke_target(&nts.ke_host, nts.ke_port, nts.allow_remote)?;
    let outcome = nts_ke::key_exchange(&nts.ke_host, nts.ke_port, nts.tls.clone(), nts.ke_timeout)
        .map_err(BenchError::Nts)?;
    let (ntp_name, target) =
        nts_ke::negotiated_server(&outcome, &nts.ke_host).map_err(BenchError::Nts)?;
    super::check_target(target, nts.allow_remote)?;
    let cfg = BenchConfig {
        target,
        ..cfg.clone()
    };
    let mut rng = ChaCha20Rng::try_from_os_rng().map_err(|e| BenchError::Random(e.to_string()))?;
    let tally = super::run_with(&cfg, |_| {
        NtsRequests::new(
            &outcome.keys,
            &outcome.cookies,
            POOL_LEN,
            nts.verify_one_in,
            &mut rng,
        )
    })?;
    let mut report = BenchReport::new(&cfg, &tally);
    let ke_server = if nts.ke_host.contains(':') {
        format!("[{}]:{}", nts.ke_host, nts.ke_port)
    } else {
        format!("{}:{}", nts.ke_host, nts.ke_port)
    };
    report.nts = Some(NtsReport {
        ke_server,
        ntp_server: ntp_name,
        aead: outcome.keys.aead.name(),
        cookies: outcome.cookies.len(),
        pool: POOL_LEN,
        verify_one_in: nts.verify_one_in.max(1),
        verified: tally.nts.verified,
        unverified: tally.nts.unverified,
        naks: tally.nts.naks,
        failed: tally.nts.failed,
        first_failure: tally.nts.first_failure.map(|e| e.to_string()),
    });
    Ok((tally, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntpkit_nts::{process_request, AeadAlgorithm, CookieKeyring, ServerOutcome};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn keys() -> NtsKeys {
        NtsKeys {
            aead: AeadAlgorithm::AesSivCmac256,
            c2s: vec![3; 32],
            s2c: vec![4; 32],
        }
    }

    /// The server's answer to `request`, as `ntpkit serve` builds it.
    fn serve(ring: &CookieKeyring, request: &[u8], rng: &mut Xoshiro256PlusPlus) -> Vec<u8> {
        let req = Header::parse(request).unwrap();
        let mut out = vec![0u8; HEADER_LEN];
        Header {
            version: 4,
            mode: Mode::Server,
            stratum: 2,
            origin_ts: req.transmit_ts,
            ..Header::default()
        }
        .emit((&mut out[..]).try_into().unwrap());
        match process_request(request, ring, 1_000, rng, &mut out) {
            ServerOutcome::Reply { len, .. } | ServerOutcome::Nak { len, .. } => out.truncate(len),
            other => panic!("{other:?}"),
        }
        out
    }

    #[test]
    fn pool_requests_are_served_matched_and_verified() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let ring = CookieKeyring::new(&[9u8; 32], 3600).unwrap();
        let cookies: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                let mut c = ntpkit_nts::make_cookie(&ring, &keys(), 1_000, &mut rng).unwrap();
                c.resize(c.len().next_multiple_of(4), 0);
                c
            })
            .collect();
        let mut reqs = NtsRequests::new(&keys(), &cookies, 8, 2, &mut rng).unwrap();
        let mut book = RequestBook::new(6, 1, 77);
        let mut tally = Tally::default();
        let mut buf = vec![0u8; reqs.max_len()];
        let mut sent = Vec::new();
        // Twelve requests: the pool of eight goes round once and a half.
        for k in 0..12 {
            let len = reqs.write(&book, 0, &mut buf);
            sent.push(buf[..len].to_vec());
            book.issue(0, 100 * k, true);
        }
        assert_eq!(sent[0], sent[8], "entries are sent again");
        assert_ne!(sent[0], sent[1]);
        for req in &sent[4..] {
            let reply = serve(&ring, req, &mut rng);
            reqs.count(&mut tally, &mut book, &reply, 5_000, true);
        }
        assert_eq!(tally.valid, 8, "{tally:?}");
        assert_eq!((tally.nts.verified, tally.nts.unverified), (4, 4));
        assert_eq!(tally.nts.failed, 0);
        // A reply again: the request is answered already.
        let again = serve(&ring, &sent[11], &mut rng);
        reqs.count(&mut tally, &mut book, &again, 5_000, true);
        assert_eq!(tally.invalid.duplicate, 1);
        // Entries 0..4 were sent again (requests 8..12): replies to requests 0..4 count for
        // those, already answered.
        let old = serve(&ring, &sent[0], &mut rng);
        reqs.count(&mut tally, &mut book, &old, 5_000, true);
        assert_eq!(tally.invalid.duplicate, 2);
    }

    #[test]
    fn forged_and_naked_replies_fail_and_naks_count() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(6);
        let ring = CookieKeyring::new(&[9u8; 32], 3600).unwrap();
        let other = CookieKeyring::new(&[8u8; 32], 3600).unwrap();
        let mut c = ntpkit_nts::make_cookie(&ring, &keys(), 1_000, &mut rng).unwrap();
        c.resize(c.len().next_multiple_of(4), 0);
        let mut reqs = NtsRequests::new(&keys(), &[c], 4, 1, &mut rng).unwrap();
        let mut book = RequestBook::new(6, 1, 1);
        let mut tally = Tally::default();
        let mut buf = vec![0u8; reqs.max_len()];
        let mut sent = Vec::new();
        for k in 0..3 {
            let len = reqs.write(&book, 0, &mut buf);
            sent.push(buf[..len].to_vec());
            book.issue(0, k, true);
        }
        // A bit flipped in the encrypted part: fails verification.
        let mut forged = serve(&ring, &sent[0], &mut rng);
        let last = forged.len() - 8;
        forged[last] ^= 1;
        reqs.count(&mut tally, &mut book, &forged, 10, true);
        // A server without the master secret answers with a NAK.
        let nak = serve(&other, &sent[1], &mut rng);
        reqs.count(&mut tally, &mut book, &nak, 10, true);
        // A plain reply to an NTS request.
        let plain = &serve(&ring, &sent[2], &mut rng)[..HEADER_LEN];
        reqs.count(&mut tally, &mut book, plain, 10, true);
        assert_eq!(tally.valid, 0);
        assert_eq!(tally.nts.naks, 1);
        assert_eq!(tally.nts.failed, 2);
        assert_eq!(tally.nts.first_failure, Some(ReplyError::Unauthentic));
    }
}
