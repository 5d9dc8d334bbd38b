//! NTS on simulated paths: the client's cookie jar and the server's cookie keyring of
//! `ntpkit-nts`, driven as the daemon drives them, with NTS-KE modelled instead of run.
//!
//! Per NTS source the client keeps a [`CookieJar`]. Each request the core writes (its 48-byte
//! header) leaves through [`CookieJar::build_request`]; the server appends
//! [`process_request`]'s fields to the header its `Responder` wrote; the client hands the core
//! a reply's header only after [`CookieJar::accept_reply`] found it authentic. Replies that do
//! not verify, and NTS NAKs, never reach the core.
//!
//! NTS-KE is not run over TLS. A key exchange takes two round trips of the link's base delays;
//! it fails if the link is down, or loses one of its four messages (drawn with the link's loss
//! probabilities), at the moment each is sent, or if the server is not running. On success the
//! jar gets fresh keys and eight cookies made with the server's keyring ([`make_cookie`]); on
//! failure it is retried after 4 s, doubling to 1,024 s. A key exchange starts when the jar is
//! empty, after an NTS NAK, or after eight requests in a row went unanswered. While the jar is
//! empty the core's requests are not sent (starved polls); the core sees them as lost.
//!
//! Every source starts with its first key exchange done (the client ran it before it started),
//! so that a path without loss carries exactly the exchanges it carries without NTS.
//!
//! Randomness comes from streams of NTS's own, per link for the client and for the server's
//! cookies, per server node for its masters: turning NTS on changes no other draw.

use crate::clock::EPOCH_NS;
use crate::rng::{stream, uniform, Rng, StreamKind};
use crate::scenario::LinkProfile;
use ntpkit_nts::{
    make_cookie, process_request, AeadAlgorithm, CookieJar, CookieKeyring, NtsKeys, PendingRequest,
    ReplyVerdict, ServerOutcome, JAR_CAPACITY,
};
use ntpkit_wire::HEADER_LEN;
use rand_core::RngCore;
use serde::Serialize;

/// Requests in a row without an authentic reply after which the client runs NTS-KE again.
pub const UNANSWERED_LIMIT: u32 = 8;

/// Wait before the first retry of a failed key exchange, ns; doubled per failure.
const KE_RETRY_FIRST: i64 = 4_000_000_000;

/// Longest wait between key-exchange attempts, ns.
const KE_RETRY_MAX: i64 = 1_024_000_000_000;

/// A client node's NTS counts over all its NTS sources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NtsCounters {
    /// NTS requests sent.
    pub requests: u32,
    /// Replies that authenticated (handed to the core).
    pub authentic: u32,
    /// Replies dropped because they did not authenticate.
    pub not_authentic: u32,
    /// NTS NAKs received (the server could not open the cookie).
    pub naks: u32,
    /// Key exchanges that filled the jar, the first included.
    pub key_exchanges: u32,
    /// Key exchanges that failed.
    pub key_exchanges_failed: u32,
    /// Polls not sent because no cookie was held.
    pub starved_polls: u32,
}

/// A server node's cookie masters over time.
#[derive(Debug)]
pub struct NtsServer {
    /// (true time from which it holds, keyring), in time order; the first from t = 0.
    rings: Vec<(i64, CookieKeyring)>,
}

impl NtsServer {
    /// The server node `node` of a run seeded `seed`, replacing its master at each of
    /// `changes` (sorted, ns).
    pub fn new(seed: u64, node: usize, changes: &[i64]) -> NtsServer {
        let mut rng = stream(seed, StreamKind::NtsMaster, node as u64);
        let rings = std::iter::once(0)
            .chain(changes.iter().copied())
            .map(|from| {
                let mut master = [0u8; 32];
                rng.fill_bytes(&mut master);
                let ring = CookieKeyring::with_default_rotation(&master)
                    .expect("a 32-byte master is long enough");
                (from, ring)
            })
            .collect();
        NtsServer { rings }
    }

    /// The keyring in use at true time `t`.
    pub fn ring(&self, t: i64) -> &CookieKeyring {
        let k = self.rings.partition_point(|&(from, _)| from <= t);
        &self.rings[k.saturating_sub(1)].1
    }
}

/// Unix seconds of a clock reading (Unix ns), as the keyring counts its rotation periods.
pub fn unix_secs(unix_ns: i64) -> u64 {
    (unix_ns.max(0) / 1_000_000_000) as u64
}

/// Unix seconds of true time `t` on the simulated clocks' scale.
pub fn true_unix_secs(t: i64) -> u64 {
    unix_secs(EPOCH_NS + t)
}

/// Where a source's key exchange stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeState {
    /// None running or due.
    Idle,
    /// Under way; ends at `done`, filling the jar if `ok`.
    Running { done: i64, ok: bool },
    /// Failed; the next attempt starts at `retry`.
    Waiting { retry: i64 },
}

/// An NTS request in flight: the datagram (request, then reply) and what its reply must match.
#[derive(Debug)]
pub struct InFlight {
    /// The datagram: the request until the server answers, then the reply.
    pub bytes: Vec<u8>,
    pending: PendingRequest,
}

/// One NTS source of a client, and its server's stream for the cookies it makes for it.
#[derive(Debug)]
pub struct NtsLink {
    jar: CookieJar,
    client_rng: Rng,
    server_rng: Rng,
    tamper: f64,
    unanswered: u32,
    failures: u32,
    ke: KeState,
}

impl NtsLink {
    /// The NTS state of link number `index` of a run seeded `seed`, with an empty jar.
    pub fn new(seed: u64, index: u64, tamper: f64) -> NtsLink {
        NtsLink {
            jar: CookieJar::new(),
            client_rng: stream(seed, StreamKind::NtsClient, index),
            server_rng: stream(seed, StreamKind::NtsServer, index),
            tamper,
            unanswered: 0,
            failures: 0,
            ke: KeState::Idle,
        }
    }

    /// Completes a key exchange with the server holding `ring` at `unix` seconds: fresh keys
    /// and a full jar of its cookies.
    pub fn fill(&mut self, ring: &CookieKeyring, unix: u64, counters: &mut NtsCounters) {
        let aead = AeadAlgorithm::AesSivCmac256;
        let mut key = || {
            let mut k = vec![0u8; aead.key_len()];
            self.client_rng.fill_bytes(&mut k);
            k
        };
        let keys = NtsKeys {
            aead,
            c2s: key(),
            s2c: key(),
        };
        let cookies: Vec<Vec<u8>> = (0..JAR_CAPACITY)
            .map(|_| {
                make_cookie(ring, &keys, unix, &mut self.server_rng)
                    .expect("keys of the algorithm's length")
            })
            .collect();
        self.jar.install(keys, cookies);
        self.unanswered = 0;
        self.failures = 0;
        self.ke = KeState::Idle;
        counters.key_exchanges += 1;
    }

    /// True when a key exchange should start now: the jar is empty or the server has not
    /// answered for [`UNANSWERED_LIMIT`] requests, and none is running or waiting.
    pub fn wants_key_exchange(&self) -> bool {
        self.ke == KeState::Idle
            && (self.jar.needs_key_exchange() || self.unanswered >= UNANSWERED_LIMIT)
    }

    /// Starts a key exchange at `now` over `profile` to a server that is running (or not);
    /// returns when it ends.
    pub fn start_key_exchange(
        &mut self,
        now: i64,
        profile: &LinkProfile,
        server_running: bool,
    ) -> i64 {
        let mut t = now;
        let mut ok = server_running;
        for dir in [
            &profile.request,
            &profile.reply,
            &profile.request,
            &profile.reply,
        ] {
            if profile.is_down(t) || (dir.loss > 0.0 && uniform(&mut self.client_rng) < dir.loss) {
                ok = false;
            }
            t += dir.delay;
        }
        self.ke = KeState::Running { done: t, ok };
        t
    }

    /// A key-exchange event of this source at `now`: ends the running exchange (filling the
    /// jar from `ring` if it succeeded) or starts the next attempt. Returns the time of the
    /// source's next key-exchange event, if any.
    pub fn on_key_exchange(
        &mut self,
        now: i64,
        ring: &CookieKeyring,
        profile: &LinkProfile,
        server_running: bool,
        counters: &mut NtsCounters,
    ) -> Option<i64> {
        match self.ke {
            KeState::Running { done, ok: true } if done == now => {
                self.fill(ring, true_unix_secs(now), counters);
                None
            }
            KeState::Running { done, ok: false } if done == now => {
                counters.key_exchanges_failed += 1;
                let wait = KE_RETRY_FIRST
                    .saturating_mul(1 << self.failures.min(20))
                    .min(KE_RETRY_MAX);
                self.failures += 1;
                let retry = now + wait;
                self.ke = KeState::Waiting { retry };
                Some(retry)
            }
            KeState::Waiting { retry } if retry == now => {
                Some(self.start_key_exchange(now, profile, server_running))
            }
            _ => None,
        }
    }

    /// The core wants to send `header`: the NTS request, or None if no cookie is held (a
    /// starved poll).
    pub fn request(
        &mut self,
        header: &[u8; HEADER_LEN],
        counters: &mut NtsCounters,
    ) -> Option<InFlight> {
        let mut bytes = Vec::new();
        match self
            .jar
            .build_request(header, &mut self.client_rng, &mut bytes)
        {
            Ok(pending) => {
                counters.requests += 1;
                self.unanswered += 1;
                Some(InFlight { bytes, pending })
            }
            Err(_) => {
                counters.starved_polls += 1;
                None
            }
        }
    }

    /// The server holding `ring` answers the request in `packet` with `header` (final: the
    /// transmit timestamp stamped) at its clock's `unix` seconds. False if it sends nothing.
    pub fn serve(
        &mut self,
        packet: &mut InFlight,
        header: &[u8; HEADER_LEN],
        ring: &CookieKeyring,
        unix: u64,
    ) -> bool {
        let mut reply = header.to_vec();
        match process_request(&packet.bytes, ring, unix, &mut self.server_rng, &mut reply) {
            ServerOutcome::Reply { .. } | ServerOutcome::Nak { .. } => {
                packet.bytes = reply;
                true
            }
            ServerOutcome::NotNts | ServerOutcome::Drop(_) => false,
        }
    }

    /// A reply arrives: its header if it is authentic (then the core gets it), else None,
    /// counted as a NAK or as not authentic. An on-path attacker may first flip the lowest
    /// bit of its transmit timestamp (the source's `nts-tamper` probability).
    pub fn accept(
        &mut self,
        packet: InFlight,
        counters: &mut NtsCounters,
    ) -> Option<[u8; HEADER_LEN]> {
        let InFlight {
            mut bytes,
            mut pending,
        } = packet;
        if self.tamper > 0.0 && uniform(&mut self.client_rng) < self.tamper {
            bytes[HEADER_LEN - 1] ^= 1;
        }
        match self.jar.accept_reply(&mut pending, &bytes) {
            Ok(ReplyVerdict::Authentic { .. }) => {
                counters.authentic += 1;
                self.unanswered = 0;
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&bytes[..HEADER_LEN]);
                Some(header)
            }
            Ok(ReplyVerdict::Nak) => {
                counters.naks += 1;
                None
            }
            Err(_) => {
                counters.not_authentic += 1;
                None
            }
        }
    }
}

/// NTS datagrams in flight, by slot; a packet refers to its slot.
#[derive(Debug, Default)]
pub struct InFlightSlab {
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
}

impl InFlightSlab {
    /// Stores `p`; returns its slot.
    pub fn insert(&mut self, p: InFlight) -> u32 {
        match self.free.pop() {
            Some(k) => {
                self.slots[k as usize] = Some(p);
                k
            }
            None => {
                self.slots.push(Some(p));
                self.slots.len() as u32 - 1
            }
        }
    }

    /// The datagram in slot `k`.
    pub fn get_mut(&mut self, k: u32) -> &mut InFlight {
        self.slots[k as usize].as_mut().expect("slot in use")
    }

    /// Takes the datagram out of slot `k` and frees the slot.
    pub fn take(&mut self, k: u32) -> InFlight {
        let p = self.slots[k as usize].take().expect("slot in use");
        self.free.push(k);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Direction;

    fn profile(loss: f64) -> LinkProfile {
        let d = Direction {
            delay: 1_000_000,
            jitter: None,
            loss,
        };
        LinkProfile {
            request: d,
            reply: d,
            processing: 0,
            outages: vec![(10_000_000_000, 20_000_000_000)],
            periodic: None,
        }
    }

    fn header() -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = 0x23;
        h
    }

    #[test]
    fn masters_change_at_their_times() {
        let s = NtsServer::new(1, 0, &[100, 200]);
        let keys = |t| s.ring(t).current(1_780_000_000).bytes().to_vec();
        assert_eq!(keys(0), keys(99));
        assert_ne!(keys(99), keys(100));
        assert_ne!(keys(100), keys(200));
        assert_eq!(keys(200), keys(i64::MAX));
        // The same seed and node give the same masters.
        let again = NtsServer::new(1, 0, &[]);
        assert_eq!(
            keys(0),
            again.ring(0).current(1_780_000_000).bytes().to_vec()
        );
    }

    #[test]
    fn key_exchange_takes_two_round_trips_and_fails_in_an_outage() {
        let server = NtsServer::new(1, 0, &[]);
        let mut c = NtsCounters::default();
        let mut link = NtsLink::new(1, 0, 0.0);
        assert!(link.wants_key_exchange());
        let p = profile(0.0);
        let done = link.start_key_exchange(0, &p, true);
        assert_eq!(done, 4_000_000);
        assert!(!link.wants_key_exchange());
        assert_eq!(
            link.on_key_exchange(done, server.ring(done), &p, true, &mut c),
            None
        );
        assert_eq!(c.key_exchanges, 1);
        assert_eq!(link.jar.len(), JAR_CAPACITY);
        // In the outage: fails, and is retried after 4 s, then 8 s.
        link.jar.clear();
        let t = 12_000_000_000;
        let done = link.start_key_exchange(t, &p, true);
        let retry = link.on_key_exchange(done, server.ring(done), &p, true, &mut c);
        assert_eq!(retry, Some(done + KE_RETRY_FIRST));
        let done2 = link
            .on_key_exchange(retry.unwrap(), server.ring(0), &p, true, &mut c)
            .unwrap();
        let retry2 = link.on_key_exchange(done2, server.ring(0), &p, true, &mut c);
        assert_eq!(retry2, Some(done2 + 2 * KE_RETRY_FIRST));
        assert_eq!(c.key_exchanges_failed, 2);
        // A server that is not running fails it too.
        let mut other = NtsLink::new(1, 1, 0.0);
        let done = other.start_key_exchange(0, &p, false);
        assert!(other
            .on_key_exchange(done, server.ring(0), &p, true, &mut c)
            .is_some());
    }

    #[test]
    fn an_exchange_verifies_and_a_flipped_bit_is_dropped() {
        let server = NtsServer::new(2, 0, &[]);
        let mut c = NtsCounters::default();
        for (tamper, authentic) in [(0.0, true), (1.0, false)] {
            let mut link = NtsLink::new(2, 0, tamper);
            link.fill(server.ring(0), true_unix_secs(0), &mut c);
            let mut p = link.request(&header(), &mut c).unwrap();
            let mut reply = header();
            reply[0] = 0x24;
            assert!(link.serve(&mut p, &reply, server.ring(0), true_unix_secs(0)));
            assert_eq!(link.accept(p, &mut c).is_some(), authentic);
        }
        assert_eq!((c.requests, c.authentic, c.not_authentic), (2, 1, 1));
    }

    #[test]
    fn an_empty_jar_starves_the_poll() {
        let mut c = NtsCounters::default();
        let mut link = NtsLink::new(3, 0, 0.0);
        assert!(link.request(&header(), &mut c).is_none());
        assert_eq!((c.requests, c.starved_polls), (0, 1));
    }
}
