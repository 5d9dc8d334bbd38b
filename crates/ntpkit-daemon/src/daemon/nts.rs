//! NTS for the daemon's sources (`nts = true`): the key exchange on a thread of its own, and
//! per source the cookie jar that protects each request and checks each reply.
//!
//! A source with NTS starts with a key exchange (TLS 1.3 to the configured host, port 4460
//! unless given); the source is added, at the NTP server and port the exchange negotiated,
//! only once it succeeds. Each request then spends one cookie and carries placeholders for
//! the cookies the jar misses; only replies that authenticate reach the core. Anything else
//! sent to the source's socket — a plain reply, a modified one, one for another request — is
//! dropped and counted: there is no fallback to unauthenticated time.
//!
//! A new key exchange runs when the jar is empty (cookies lost with their requests), after an
//! NTS NAK (the server can no longer open our cookies), and when the source becomes
//! unreachable (the server may have moved or changed its keys). A failed exchange is retried
//! with a doubling back-off; the jar keeps its cookies meanwhile.

use crate::nts_ke::{self, NtsError};
use ntpkit_core::sync::{NtsStatus, SourceId};
use ntpkit_core::MonoTime;
use ntpkit_nts::ke::DEFAULT_KE_PORT;
use ntpkit_nts::{CookieJar, KeError, KeOutcome, PendingRequest, ReplyVerdict};
use ntpkit_os::Waker;
use rand_core::RngCore;
use rustls::ClientConfig;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// A whole key exchange, connection included, must end within this time.
pub const KE_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry of a failed key exchange, seconds; doubled per failure up to [`RETRY_MAX`].
const RETRY_FIRST: f64 = 8.0;
/// Longest wait between retries of a failed key exchange, seconds.
const RETRY_MAX: f64 = 1024.0;

/// Who asked for a key exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeTarget {
    /// The first exchange of a configured server or pool member (entry index): the source is
    /// added when it succeeds.
    NewMember(usize),
    /// A new exchange for a running source.
    Source(SourceId),
}

/// What a key exchange found: the outcome with the negotiated NTP server as text and
/// address, or why it failed.
pub type KeResult = Result<(KeOutcome, String, SocketAddr), String>;

/// A finished key exchange.
#[derive(Debug)]
pub struct KeDone {
    /// Who asked.
    pub target: KeTarget,
    /// The key-exchange server it ran with.
    pub ke_addr: SocketAddr,
    /// What it gave.
    pub result: KeResult,
}

/// Runs a key exchange with `ke_addr` on a new thread, verifying the certificate for
/// `host`; the result goes to `tx` and `waker` is woken.
pub fn spawn_key_exchange(
    host: String,
    ke_addr: SocketAddr,
    tls: Arc<ClientConfig>,
    target: KeTarget,
    tx: mpsc::Sender<KeDone>,
    waker: Arc<Waker>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("nts-ke".into())
        .spawn(move || {
            let result = key_exchange(&host, ke_addr, tls);
            let _ = tx.send(KeDone {
                target,
                ke_addr,
                result,
            });
            waker.wake();
        })
        .map(|_| ())
}

fn key_exchange(host: &str, ke_addr: SocketAddr, tls: Arc<ClientConfig>) -> KeResult {
    let name = ke_addr.to_string();
    let outcome = nts_ke::key_exchange_at(host, &name, &[ke_addr], tls, KE_TIMEOUT)
        .map_err(|e| describe(&e, &name))?;
    // Without a server record the NTP server is the key-exchange server's address itself.
    let ke_host = ke_addr.ip().to_string();
    let (text, addr) =
        nts_ke::negotiated_server(&outcome, &ke_host).map_err(|e| describe(&e, &name))?;
    Ok((outcome, text, addr))
}

/// Says what went wrong in words that fit the daemon's configuration.
fn describe(e: &NtsError, server: &str) -> String {
    match e {
        NtsError::Refused(_) => format!(
            "NTS-KE server {server} refused the connection: check the address and its \
             key-exchange port ({DEFAULT_KE_PORT} unless the address gives one) and that it \
             runs NTS-KE"
        ),
        NtsError::Timeout(_, t) => format!(
            "NTS-KE server {server} did not complete the key exchange within {} s",
            t.as_secs()
        ),
        NtsError::Ke(_, KeError::UntrustedCertificate { reason, .. }) => format!(
            "the TLS certificate of NTS-KE server {server} is not trusted ({reason}): set \
             ca-file to the certificate or the CA that signed it, or check the server name and \
             this machine's date"
        ),
        other => other.to_string(),
    }
}

/// When the next key exchange of a source runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeSchedule {
    /// None needed.
    Idle,
    /// One is running.
    InFlight,
    /// At this time.
    At(MonoTime),
}

/// NTS state of one running source.
#[derive(Debug)]
pub struct NtsLink {
    /// Name the key-exchange server's certificate must carry.
    pub ke_host: String,
    /// Where the key exchanges go.
    pub ke_addr: SocketAddr,
    /// The negotiated NTP server as text (for status).
    pub ntp_server: String,
    jar: CookieJar,
    pending: Option<PendingRequest>,
    /// The next key exchange.
    pub ke: KeSchedule,
    /// Wait after the last failed key exchange, seconds; 0 after a success.
    backoff: f64,
    status: NtsStatus,
}

impl NtsLink {
    /// A source's NTS state after its first key exchange.
    pub fn new(ke_host: String, ke_addr: SocketAddr, outcome: KeOutcome, ntp: String) -> Self {
        let mut link = NtsLink {
            ke_host,
            ke_addr,
            ntp_server: ntp.clone(),
            jar: CookieJar::new(),
            pending: None,
            ke: KeSchedule::Idle,
            backoff: 0.0,
            status: NtsStatus::default(),
        };
        link.installed(outcome, ntp);
        link
    }

    /// Keeps the keys and cookies of a successful key exchange.
    pub fn installed(&mut self, outcome: KeOutcome, ntp: String) {
        self.status.aead = Some(outcome.keys.aead.name().to_string());
        self.status.key_exchanges += 1;
        self.status.last_error = None;
        self.jar.install(outcome.keys, outcome.cookies);
        self.pending = None;
        self.ntp_server = ntp;
        self.ke = KeSchedule::Idle;
        self.backoff = 0.0;
    }

    /// Notes a failed key exchange and schedules the next try.
    pub fn failed(&mut self, why: String, now: MonoTime) -> f64 {
        self.status.key_exchange_failures += 1;
        self.status.last_error = Some(why);
        self.backoff = if self.backoff > 0.0 {
            (self.backoff * 2.0).min(RETRY_MAX)
        } else {
            RETRY_FIRST
        };
        self.ke = KeSchedule::At(now.add_secs_f64(self.backoff));
        self.backoff
    }

    /// Asks for a key exchange as soon as possible, unless one runs or is already due.
    pub fn want_key_exchange(&mut self, now: MonoTime) {
        if self.ke == KeSchedule::Idle {
            self.ke = KeSchedule::At(now);
        }
    }

    /// The time of the next key exchange, if one waits.
    pub fn due(&self) -> Option<MonoTime> {
        match self.ke {
            KeSchedule::At(at) => Some(at),
            _ => None,
        }
    }

    /// Protects the core's `request` (its 48-byte header) with a cookie and an
    /// authenticator. None when no cookie is left: the poll is skipped and a key exchange is
    /// asked for.
    pub fn protect(
        &mut self,
        request: &[u8],
        now: MonoTime,
        rng: &mut dyn RngCore,
    ) -> Option<Vec<u8>> {
        let header: &[u8; ntpkit_wire::HEADER_LEN] = request.try_into().ok()?;
        if self.jar.needs_key_exchange() {
            self.status.starved += 1;
            self.want_key_exchange(now);
            return None;
        }
        let mut out = Vec::with_capacity(512);
        match self.jar.build_request(header, &mut { rng }, &mut out) {
            Ok(pending) => {
                self.pending = Some(pending);
                self.status.requests += 1;
                Some(out)
            }
            Err(e) => {
                tracing::warn!("NTS request to {}: {e}", self.ntp_server);
                self.want_key_exchange(now);
                None
            }
        }
    }

    /// Checks a datagram from the source: the NTP header of an authentic reply to the request
    /// in flight, for the core; None for anything else (counted; after an NTS NAK a key
    /// exchange is asked for).
    pub fn open<'a>(&mut self, reply: &'a [u8], now: MonoTime) -> Option<&'a [u8]> {
        let Some(pending) = self.pending.as_mut() else {
            self.status.rejected += 1;
            return None;
        };
        match self.jar.accept_reply(pending, reply) {
            Ok(ReplyVerdict::Authentic { .. }) => {
                self.status.authenticated += 1;
                Some(&reply[..ntpkit_wire::HEADER_LEN])
            }
            Ok(ReplyVerdict::Nak) => {
                self.status.naks += 1;
                self.pending = None;
                tracing::warn!(
                    "NTP server {} answered with an NTS NAK (it cannot open our cookies): new \
                     key exchange with {}",
                    self.ntp_server,
                    self.ke_addr
                );
                self.want_key_exchange(now);
                None
            }
            Err(e) => {
                self.status.rejected += 1;
                tracing::debug!("dropped a reply from {}: {e}", self.ntp_server);
                None
            }
        }
    }

    /// What NTS did for this source.
    pub fn status(&self) -> NtsStatus {
        NtsStatus {
            cookies: self.jar.len(),
            ..self.status.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntpkit_nts::{make_cookie, process_request, AeadAlgorithm, CookieKeyring, NtsKeys};
    use rand_core::SeedableRng;

    const NOW: u64 = 1_780_000_000;

    fn keys() -> NtsKeys {
        NtsKeys {
            aead: AeadAlgorithm::AesSivCmac256,
            c2s: vec![1; 32],
            s2c: vec![2; 32],
        }
    }

    fn link(ring: &CookieKeyring, cookies: usize, rng: &mut rand_chacha::ChaCha20Rng) -> NtsLink {
        let cookies = (0..cookies)
            .map(|_| make_cookie(ring, &keys(), NOW, rng).unwrap())
            .collect();
        let outcome = KeOutcome {
            keys: keys(),
            cookies,
            server: None,
            port: None,
        };
        let addr: SocketAddr = "192.0.2.1:4460".parse().unwrap();
        NtsLink::new("ke.example".into(), addr, outcome, "192.0.2.1:123".into())
    }

    fn header() -> [u8; 48] {
        let mut h = [0u8; 48];
        h[0] = 0x23;
        h[40] = 7;
        h
    }

    /// The server's side: the reply `process_request` makes for `request`.
    fn serve(request: &[u8], ring: &CookieKeyring, rng: &mut rand_chacha::ChaCha20Rng) -> Vec<u8> {
        let mut reply = vec![0u8; 48];
        reply[0] = 0x24;
        process_request(request, ring, NOW, rng, &mut reply);
        reply
    }

    #[test]
    fn authentic_replies_pass_and_refill_the_jar() {
        let ring = CookieKeyring::with_default_rotation(&[7; 32]).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let mut l = link(&ring, 8, &mut rng);
        let t = MonoTime(0);
        for _ in 0..20 {
            let request = l.protect(&header(), t, &mut rng).expect("a cookie is held");
            let reply = serve(&request, &ring, &mut rng);
            let header_back = l.open(&reply, t).expect("authentic");
            assert_eq!(header_back.len(), 48);
            // The same reply twice is refused: a replay.
            assert!(l.open(&reply, t).is_none());
        }
        let s = l.status();
        assert_eq!((s.requests, s.authenticated, s.rejected), (20, 20, 20));
        assert_eq!(s.cookies, 8);
        assert_eq!(s.aead.as_deref(), Some("AEAD_AES_SIV_CMAC_256"));
    }

    #[test]
    fn plain_and_modified_replies_never_reach_the_core() {
        let ring = CookieKeyring::with_default_rotation(&[7; 32]).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let mut l = link(&ring, 8, &mut rng);
        let t = MonoTime(0);
        // Nothing in flight: dropped.
        assert!(l.open(&header(), t).is_none());
        let request = l.protect(&header(), t, &mut rng).unwrap();
        let reply = serve(&request, &ring, &mut rng);
        // The header alone, as a server without NTS would answer: no downgrade.
        assert!(l.open(&reply[..48], t).is_none());
        for bit in [3 * 8, 40 * 8 + 1, (reply.len() - 1) * 8] {
            let mut bad = reply.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(l.open(&bad, t).is_none(), "bit {bit}");
        }
        assert!(
            l.open(&reply, t).is_some(),
            "the genuine reply still passes"
        );
        assert_eq!(l.status().rejected, 5);
    }

    #[test]
    fn running_out_of_cookies_skips_the_poll_and_asks_for_a_key_exchange() {
        let ring = CookieKeyring::with_default_rotation(&[7; 32]).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let mut l = link(&ring, 2, &mut rng);
        let t = MonoTime(5);
        // Replies lost: each request spends a cookie.
        assert!(l.protect(&header(), t, &mut rng).is_some());
        assert!(l.protect(&header(), t, &mut rng).is_some());
        assert_eq!(l.ke, KeSchedule::Idle);
        assert!(l.protect(&header(), t, &mut rng).is_none());
        assert_eq!(l.status().starved, 1);
        assert_eq!(l.due(), Some(t));
    }

    #[test]
    fn a_nak_asks_for_a_key_exchange_and_failures_back_off() {
        let other = CookieKeyring::with_default_rotation(&[8; 32]).unwrap();
        let ring = CookieKeyring::with_default_rotation(&[7; 32]).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        // Cookies from a server whose master this one does not hold.
        let mut l = link(&other, 8, &mut rng);
        let t = MonoTime(0);
        let request = l.protect(&header(), t, &mut rng).unwrap();
        let reply = serve(&request, &ring, &mut rng);
        assert!(l.open(&reply, t).is_none());
        assert_eq!(l.status().naks, 1);
        assert_eq!(l.status().cookies, 0, "a NAK empties the jar");
        assert_eq!(l.due(), Some(t));
        l.ke = KeSchedule::InFlight;
        assert_eq!(l.failed("refused".into(), t), RETRY_FIRST);
        l.ke = KeSchedule::InFlight;
        assert_eq!(l.failed("refused".into(), t), 2.0 * RETRY_FIRST);
        assert_eq!(l.due(), Some(t.add_secs_f64(2.0 * RETRY_FIRST)));
        l.ke = KeSchedule::InFlight;
        assert_eq!(l.failed("refused".into(), t), 4.0 * RETRY_FIRST);
        assert_eq!(l.status().last_error.as_deref(), Some("refused"));
        assert_eq!(l.status().key_exchange_failures, 3);
    }
}
