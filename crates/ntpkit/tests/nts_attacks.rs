//! Attacks on a running `ntpkit serve --nts-ke`, from clients that break the rules: TLS 1.2
//! only, a wrong ALPN protocol, a client that stalls after the handshake, 100,000 malformed
//! key-exchange records inside TLS sessions, 100,000 malformed NTS requests over UDP, a cookie
//! used with another client's keys, and key-exchange connections from refused or too eager
//! addresses. The server must refuse each, count it, keep serving others meanwhile, and answer
//! a valid `ntpkit query --nts` at the end.
//!
//! Everything runs in a private network namespace on its loopback (see `support`); the server
//! runs without CAP_SYS_TIME and serves its clock, never sets it. Every loop is bounded in count
//! and time. The library's own tests cover the same ground without sockets
//! (`ntpkit_nts::server::tests`: `replayed_replies_are_refused` checks that a client refuses a
//! reply whose unique identifier is not its request's, `stolen_cookie_with_other_keys_is_dropped`,
//! `every_bit_of_a_request_matters`; `ntpkit_nts::ke::server` tests the TLS 1.2, ALPN and
//! record refusals in memory); these tests check that the running server does the same and
//! counts it. NTPKIT_SKIP_INTEROP=1 at build time marks them ignored.

mod support;

use ntpkit_nts::{build_request, KeClient, KeOutcome, PendingRequest, ReplyError};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Lab, Proc, Rng, NTPKIT};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const NTP_PORT: u16 = 11927;
const KE_PORT: u16 = 11967;
const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The server's certificate (self-signed, for `localhost` and 127.0.0.1) and its key.
struct Pki {
    crt: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn certificate(lab: &Lab) -> Pki {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
        .expect("certificate parameters")
        .self_signed(&key)
        .expect("self-signed certificate");
    Pki {
        crt: lab.write("server.crt", &cert.pem()),
        key: lab.write("server.key", &key.serialize_pem()),
        der: cert.der().clone(),
    }
}

/// `ntpkit serve` with NTS on 127.0.0.1 (NTP on `NTP_PORT`, NTS-KE on `KE_PORT`), with `extra`
/// flags, once it is ready.
fn serve<'l>(lab: &'l Lab, pki: &Pki, extra: &[&str]) -> Proc<'l> {
    let listen = format!("127.0.0.1:{NTP_PORT}");
    let ke = format!("127.0.0.1:{KE_PORT}");
    let crt = pki.crt.to_string_lossy().to_string();
    let key = pki.key.to_string_lossy().to_string();
    let master = lab.path("master").to_string_lossy().to_string();
    let mut args = vec![
        NTPKIT,
        "serve",
        "--listen",
        &listen,
        "--nts-ke",
        &ke,
        "--cert",
        &crt,
        "--key",
        &key,
        "--nts-master",
        &master,
    ];
    args.extend_from_slice(extra);
    let mut p = lab.spawn("serve", &args, SECS(300));
    p.wait_for("Waiting for NTP requests", SECS(10));
    p
}

/// The counters of the `served nts:` and `served udp:` lines of a fresh SIGUSR1 report, as
/// `nts.ke_failed`, `udp.answered`, ….
fn counters(serve: &mut Proc) -> HashMap<String, u64> {
    let reports = |p: &Proc| p.stdout().matches("served nts:").count();
    let before = reports(serve);
    serve.signal_command(libc::SIGUSR1);
    support::wait(SECS(5), || reports(serve) > before);
    let out = serve.stdout();
    let mut map = HashMap::new();
    for (prefix, name) in [("served nts:", "nts"), ("served udp:", "udp")] {
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in\n{out}"));
        for field in line[prefix.len()..].split_whitespace() {
            if let Some((k, v)) = field.split_once('=') {
                map.insert(format!("{name}.{k}"), v.parse().expect("counter value"));
            }
        }
    }
    map
}

/// Change of every counter from `a` to `b`.
fn delta(a: &HashMap<String, u64>, b: &HashMap<String, u64>, key: &str) -> u64 {
    b[key] - a[key]
}

/// Polls the counters until `cond` holds (at most 15 s) and returns them.
fn counters_when(
    serve: &mut Proc,
    cond: impl Fn(&HashMap<String, u64>) -> bool,
) -> HashMap<String, u64> {
    let deadline = Instant::now() + SECS(15);
    loop {
        let c = counters(serve);
        if cond(&c) || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A valid `ntpkit query --nts` against the server, which must succeed.
fn assert_query_succeeds(lab: &Lab, pki: &Pki, serve: &Proc) {
    let ke = format!("localhost:{KE_PORT}");
    let ca = pki.crt.to_string_lossy().to_string();
    let r = lab.run(
        &[
            NTPKIT,
            "query",
            "--nts",
            &ke,
            "--ca-file",
            &ca,
            "--samples",
            "1",
            "--json",
        ],
        SECS(20),
    );
    assert!(r.status.success(), "{r}\n{}", serve.output());
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("root certificate");
    roots
}

/// A TLS client configuration with the versions and ALPN protocols given.
fn tls_client(
    ca: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

/// A TCP connection to the key-exchange port from `from`, with 5 s timeouts.
fn connect(from: Ipv4Addr) -> TcpStream {
    let s = support::tcp_connect_from(from, SocketAddrV4::new(LOCALHOST, KE_PORT))
        .expect("connect to the NTS-KE port");
    s.set_read_timeout(Some(SECS(5))).expect("timeout");
    s.set_write_timeout(Some(SECS(5))).expect("timeout");
    s
}

/// A TLS handshake with the key-exchange server (call inside the namespace).
fn handshake(
    config: Arc<ClientConfig>,
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    let mut sock = connect(LOCALHOST);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    for _ in 0..20 {
        if !conn.is_handshaking() {
            return Ok(StreamOwned::new(conn, sock));
        }
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Err("handshake did not finish in 20 rounds".into())
}

/// A whole key exchange on `sock` with ntpkit's client (call inside the namespace).
fn key_exchange(ca: &CertificateDer<'static>, mut sock: TcpStream) -> Result<KeOutcome, String> {
    let config = ntpkit_nts::ke::client_config(
        roots(ca),
        provider(),
        Arc::new(rustls::time_provider::DefaultTimeProvider),
    )
    .map_err(|e| e.to_string())?;
    let mut ke = KeClient::new(Arc::new(config), "localhost").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    for _ in 0..200 {
        let mut out = Vec::new();
        ke.transmit(&mut out);
        if !out.is_empty() {
            sock.write_all(&out).map_err(|e| e.to_string())?;
        }
        if let Some(outcome) = ke.outcome() {
            return outcome.map_err(|e| e.to_string());
        }
        match sock.read(&mut buf) {
            Ok(0) => ke.receive_eof(),
            Ok(n) => ke.receive(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("key exchange did not end in 200 rounds".into())
}

/// The test's deterministic generator as a `rand_core` source (unique ids, nonces).
struct TestRng(Rng);

impl rand_core::RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill(dst)
    }
}

/// A valid NTS request with `cookie` under `keys`.
fn nts_request(
    keys: &ntpkit_nts::NtsKeys,
    cookie: &[u8],
    rng: &mut TestRng,
) -> (Vec<u8>, PendingRequest) {
    let mut header = [0u8; 48];
    header[0] = 0x23; // version 4, client
    rng.0.fill(&mut header[40..48]);
    let mut out = Vec::new();
    let pending = build_request(&header, keys, cookie, 0, rng, &mut out).expect("NTS request");
    (out, pending)
}

/// A UDP socket connected to the server's NTP port (call inside the namespace).
fn ntp_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.connect(("127.0.0.1", NTP_PORT)).expect("connect");
    s
}

/// Sends `request` and returns the first datagram that comes back within `limit`.
fn exchange(s: &UdpSocket, request: &[u8], limit: Duration) -> Option<Vec<u8>> {
    s.send(request).expect("send");
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 2048];
    s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

/// TLS 1.2 only, a wrong ALPN protocol and no ALPN at all are refused and counted as failed
/// key exchanges; a client that completes the handshake and then says nothing is closed at the
/// 10 s deadline, and another client's key exchange succeeds meanwhile.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn ke_handshake_attacks_are_refused_and_counted() {
    support::require("ke_handshake_attacks_are_refused_and_counted", &[]);
    let lab = Lab::new("ntsah");
    let pki = certificate(&lab);
    let mut serve = serve(&lab, &pki, &[]);
    let ca = pki.der.clone();
    let (tls12, http, none, stalled) = lab.in_netns(move || {
        let tls12 = handshake(tls_client(&ca, &[&rustls::version::TLS12], &[b"ntske/1"])).err();
        let http = handshake(tls_client(&ca, &[&rustls::version::TLS13], &[b"http/1.1"])).err();
        // Without ALPN the handshake completes; the server then closes without an answer.
        let mut none = handshake(tls_client(&ca, &[&rustls::version::TLS13], &[]))
            .expect("a TLS 1.3 handshake without ALPN completes");
        let _ = none.write_all(&[0x80, 0x01, 0x00, 0x02, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00]);
        let mut answer = Vec::new();
        let _ = none.read_to_end(&mut answer);
        let stalled = handshake(tls_client(&ca, &[&rustls::version::TLS13], &[b"ntske/1"]))
            .expect("handshake of the stalling client");
        (tls12, http, answer, stalled)
    });
    let stall_start = Instant::now();
    support::say(&format!(
        "TLS 1.2 only: {tls12:?}\nALPN http/1.1: {http:?}\nno ALPN: {} bytes of answer",
        none.len()
    ));
    let tls12 = tls12.expect("a TLS 1.2 client is refused");
    assert!(tls12.contains("ProtocolVersion"), "{tls12}");
    let http = http.expect("a client without ntske/1 is refused");
    assert!(http.contains("NoApplicationProtocol"), "{http}");
    assert!(none.is_empty(), "a client without ALPN got an answer");

    // While the stalled session is open, another client's exchange succeeds.
    let query_start = Instant::now();
    assert_query_succeeds(&lab, &pki, &serve);
    let query_took = query_start.elapsed();
    assert!(
        stall_start.elapsed() < SECS(8),
        "the query took {query_took:?}"
    );

    // The stalled session is closed at the deadline (10 s after it was accepted).
    let mut stalled = stalled;
    stalled
        .sock
        .set_read_timeout(Some(SECS(15)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    let closed = loop {
        match stalled.read(&mut buf) {
            Ok(0) | Err(_) => break stall_start.elapsed(),
            Ok(_) => continue,
        }
    };
    support::say(&format!(
        "query during the stall took {:.2} s; the stalled session was closed after {:.2} s",
        query_took.as_secs_f64(),
        closed.as_secs_f64()
    ));
    assert!(
        (SECS(8)..SECS(13)).contains(&closed),
        "stalled session closed after {closed:?}"
    );
    let c = counters(&mut serve);
    assert_eq!(c["nts.ke_served"], 1, "{c:?}");
    assert_eq!(c["nts.ke_failed"], 4, "{c:?}");
    assert_query_succeeds(&lab, &pki, &serve);
}

/// One key-exchange record that is not a valid part of a request: random, or a valid
/// request's record with its type, length or body broken.
fn bad_record(rng: &mut Rng) -> Vec<u8> {
    let mut r = Vec::new();
    let push = |r: &mut Vec<u8>, t: u16, len: u16, body: &[u8]| {
        r.extend_from_slice(&t.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(body);
    };
    // The records of a valid request: Next Protocol NTPv4, AEAD 15, End of Message.
    let valid: [(u16, &[u8]); 3] = [(0x8001, &[0, 0]), (0x0004, &[0, 15]), (0x8000, &[])];
    match rng.range(0, 7) {
        0 => {
            // A random type and body, the length right.
            let mut body = vec![0u8; rng.range(0, 48)];
            rng.fill(&mut body);
            push(&mut r, rng.next_u64() as u16, body.len() as u16, &body);
        }
        1 => {
            // A valid record with one bit of it flipped.
            let (t, body) = valid[rng.range(0, 2)];
            push(&mut r, t, body.len() as u16, body);
            let bit = rng.range(0, r.len() * 8 - 1);
            r[bit / 8] ^= 1 << (bit % 8);
        }
        2 => {
            // A valid type whose length says more or less than the body has.
            let (t, body) = valid[rng.range(0, 2)];
            let len = (body.len() as u16).wrapping_add(rng.range(1, 64) as u16);
            push(&mut r, t, len, body);
        }
        3 => {
            // A critical record of a type no request may carry (Error, Warning, New Cookie,
            // or one this server does not know).
            let t = [0x8002, 0x8003, 0x8005, 0x8000 | rng.range(8, 0x7fff) as u16][rng.range(0, 3)];
            let mut body = vec![0u8; rng.range(0, 16)];
            rng.fill(&mut body);
            push(&mut r, t, body.len() as u16, &body);
        }
        4 => {
            // A length that claims nearly the whole 64 KiB message.
            push(&mut r, 0x8001, 0xfff0 + rng.range(0, 15) as u16, &[0, 0]);
        }
        5 => {
            // Next Protocol or AEAD with an odd-length or empty body, or protocols and
            // algorithms nobody implements.
            let t = [0x8001, 0x0004, 0x8004][rng.range(0, 2)];
            let body: Vec<u8> = match rng.range(0, 2) {
                0 => vec![0],
                1 => Vec::new(),
                _ => vec![0x7f, 0xff, 0x12, 0x34],
            };
            push(&mut r, t, body.len() as u16, &body);
        }
        6 => {
            // A truncated header.
            r.extend_from_slice(&(rng.next_u64() as u32).to_be_bytes()[..rng.range(1, 3)]);
        }
        _ => {
            // End of Message with a body.
            push(&mut r, 0x8000, 2, &[0xde, 0xad]);
        }
    }
    r
}

/// 100,000 malformed key-exchange records, 400 per TLS session in 252 sessions on 4
/// connections at a time: every session ends as a failed key exchange, none crashes or stalls
/// the server, and a valid key exchange succeeds at the end.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn malformed_ke_records_are_refused_and_counted() {
    support::require("malformed_ke_records_are_refused_and_counted", &[]);
    const THREADS: usize = 4;
    const SESSIONS: usize = 63;
    const RECORDS: usize = 400;
    let lab = Lab::new("ntsar");
    let pki = certificate(&lab);
    let mut serve = serve(&lab, &pki, &["--no-rate-limit"]);
    let before = counters(&mut serve);
    let started = Instant::now();
    let mut threads = Vec::new();
    for t in 0..THREADS {
        let ns = lab.ns.clone();
        let ca = pki.der.clone();
        threads.push(std::thread::spawn(move || {
            support::enter_netns(&ns);
            let mut rng = Rng::new(0x6b65_0000 + t as u64);
            let config = tls_client(&ca, &[&rustls::version::TLS13], &[b"ntske/1"]);
            let (mut records, mut answered) = (0usize, 0usize);
            for _ in 0..SESSIONS {
                let mut blob = Vec::new();
                for _ in 0..RECORDS {
                    blob.extend_from_slice(&bad_record(&mut rng));
                }
                records += RECORDS;
                let mut s = handshake(config.clone()).expect("handshake");
                // The server stops reading at the first bad record and closes: writes may fail.
                let _ = s.write_all(&blob);
                s.conn.send_close_notify();
                let _ = s.conn.complete_io(&mut s.sock);
                let _ = s.sock.shutdown(std::net::Shutdown::Write);
                let mut answer = Vec::new();
                let _ = s.read_to_end(&mut answer);
                if !answer.is_empty() {
                    answered += 1;
                }
            }
            (records, answered)
        }));
    }
    let (mut records, mut answered) = (0, 0);
    for t in threads {
        let (r, a) = t.join().expect("attacker thread");
        records += r;
        answered += a;
    }
    let took = started.elapsed();
    let sessions = (THREADS * SESSIONS) as u64;
    let after = counters_when(&mut serve, |c| {
        delta(&before, c, "nts.ke_failed") + delta(&before, c, "nts.ke_served") >= sessions
    });
    let failed = delta(&before, &after, "nts.ke_failed");
    let served = delta(&before, &after, "nts.ke_served");
    support::say(&format!(
        "{records} malformed records in {sessions} TLS sessions in {:.1} s: ke_failed +{failed}, \
         ke_served +{served}; {answered} sessions got an Error record or other answer",
        took.as_secs_f64()
    ));
    assert!(records >= 100_000);
    assert_eq!(failed, sessions, "{after:?}");
    assert_eq!(served, 0, "{after:?}");
    assert_query_succeeds(&lab, &pki, &serve);
}

/// The offsets of the extension fields of an NTS request (after the 48-byte header).
fn field_offsets(packet: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 48;
    while at + 4 <= packet.len() {
        out.push(at);
        let len = usize::from(u16::from_be_bytes([packet[at + 2], packet[at + 3]]));
        if len < 4 {
            break;
        }
        at += len;
    }
    out
}

/// A mutation of the valid request `base`: bit flips, a truncation, a field length changed,
/// a random cookie, junk appended, or random bytes; never `base` itself (two flips of one bit,
/// say, are tried again). Returns which of these (its index in [`MUTATIONS`]) and the packet.
fn mutate(base: &[u8], fields: &[usize], rng: &mut Rng) -> (usize, Vec<u8>) {
    for _ in 0..100 {
        let (kind, p) = mutate_once(base, fields, rng);
        if p != base {
            return (kind, p);
        }
    }
    panic!("100 mutations in a row left the request unchanged");
}

/// The kinds of mutation, as [`mutate`] numbers them.
const MUTATIONS: [&str; 6] = [
    "bit flips",
    "truncated",
    "field length",
    "random cookie",
    "junk appended",
    "random bytes",
];
/// The index of the random-cookie mutation, which must get a NAK.
const RANDOM_COOKIE: usize = 3;

fn mutate_once(base: &[u8], fields: &[usize], rng: &mut Rng) -> (usize, Vec<u8>) {
    let mut p = base.to_vec();
    let kind = rng.range(0, 5);
    match kind {
        0 => {
            for _ in 0..rng.range(1, 4) {
                let bit = rng.range(0, p.len() * 8 - 1);
                p[bit / 8] ^= 1 << (bit % 8);
            }
        }
        1 => p.truncate(rng.range(0, p.len() - 1)),
        2 => {
            let at = fields[rng.range(0, fields.len() - 1)];
            let len = rng.next_u64() as u16;
            p[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        3 => {
            // The cookie field (the second) with a random body of its length.
            let at = fields[1];
            let len = usize::from(u16::from_be_bytes([p[at + 2], p[at + 3]]));
            rng.fill(&mut p[at + 4..at + len]);
        }
        4 => {
            let mut junk = vec![0u8; rng.range(1, 64)];
            rng.fill(&mut junk);
            p.extend_from_slice(&junk);
        }
        _ => {
            p = vec![0u8; rng.range(1, 600)];
            rng.fill(&mut p);
        }
    }
    (kind, p)
}

/// 100,000 mutations of a valid NTS request over UDP, in bursts of 100 each followed by a plain
/// NTP request that must be answered (so the server has handled the burst and is not stalled):
/// every datagram is accounted for by the server's counters, none gets an authenticated reply
/// and the cookies that do not open get NAKs; a valid query succeeds at the end.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn malformed_nts_requests_are_dropped_and_counted() {
    support::require("malformed_nts_requests_are_dropped_and_counted", &[]);
    const PACKETS: usize = 100_000;
    const BURST: usize = 100;
    let lab = Lab::new("ntsau");
    let pki = certificate(&lab);
    let mut serve = serve(&lab, &pki, &["--no-rate-limit"]);
    let ca = pki.der.clone();
    let ke = lab
        .in_netns(move || key_exchange(&ca, connect(LOCALHOST)))
        .expect("key exchange");
    let before = counters(&mut serve);
    let rcvbuf_before = lab.udp_counters()["RcvbufErrors"];
    let ns = lab.ns.clone();
    let started = Instant::now();
    let (probes, received, kinds) = std::thread::spawn(move || {
        support::enter_netns(&ns);
        let mut rng = Rng::new(0x6e74_7375);
        let mut trng = TestRng(Rng::new(0x5eed));
        let (base, mut pending) = nts_request(&ke.keys, &ke.cookies[0], &mut trng);
        let fuzz = ntp_socket();
        // The valid request itself is answered, authentically.
        let reply = exchange(&fuzz, &base, SECS(2)).expect("reply to the valid request");
        assert!(pending.verify_reply(&reply).is_ok());
        let fields = field_offsets(&base);
        assert_eq!(fields.len(), 3, "unique id, cookie, authenticator");
        let probe = ntp_socket();
        fuzz.set_nonblocking(true).expect("nonblocking");
        let (mut probes, mut received) = (0u64, 0u64);
        let mut kinds = [0u64; MUTATIONS.len()];
        let mut buf = [0u8; 2048];
        for burst in 0..PACKETS / BURST {
            for _ in 0..BURST {
                // A full send buffer is waited out, never skipped.
                let (kind, p) = mutate(&base, &fields, &mut rng);
                kinds[kind] += 1;
                let deadline = Instant::now() + SECS(5);
                while let Err(e) = fuzz.send(&p) {
                    assert!(
                        e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline,
                        "send: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            probes += 1;
            if let Err(e) = support::ntp::udp_exchange(&probe, SECS(5)) {
                panic!("no answer to a plain request after burst {burst}: {e}");
            }
            while fuzz.recv(&mut buf).is_ok() {
                received += 1;
            }
        }
        (probes, received, kinds)
    })
    .join()
    .expect("attacker thread");
    let took = started.elapsed();
    let after = counters(&mut serve);
    let lost = lab.udp_counters()["RcvbufErrors"] - rcvbuf_before;
    let d = |k: &str| delta(&before, &after, k);
    let sent = PACKETS as u64 + 1 + probes;
    let handled = d("udp.answered") + d("udp.ignored") + d("udp.malformed");
    let sent_kinds: Vec<String> = MUTATIONS
        .iter()
        .zip(kinds)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    support::say(&format!(
        "{PACKETS} mutated NTS requests ({}) and {probes} plain probes in {:.1} s: udp answered \
         +{} ignored +{} malformed +{}; nts replies +{} naks +{} dropped +{}; {received} \
         datagrams came back; {lost} lost to full receive buffers",
        sent_kinds.join(", "),
        took.as_secs_f64(),
        d("udp.answered"),
        d("udp.ignored"),
        d("udp.malformed"),
        d("nts.replies"),
        d("nts.naks"),
        d("nts.dropped"),
    ));
    assert_eq!(handled + lost, sent, "every datagram is counted: {after:?}");
    assert_eq!(
        d("nts.replies"),
        1,
        "only the valid request was answered authentically"
    );
    assert!(
        d("nts.naks") >= kinds[RANDOM_COOKIE],
        "every random cookie gets a NAK"
    );
    assert!(d("nts.dropped") > 0);
    assert!(
        d("nts.dropped") <= d("udp.ignored"),
        "a dropped NTS request counts as ignored"
    );
    assert_query_succeeds(&lab, &pki, &serve);
}

/// A cookie from another client's key exchange, used with the attacker's own keys, is dropped
/// (the authenticator does not verify under the keys inside the cookie) and counted; a genuine
/// reply offered to a request with another unique identifier is refused by the client.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn stolen_cookie_and_foreign_reply_are_refused() {
    support::require("stolen_cookie_and_foreign_reply_are_refused", &[]);
    let lab = Lab::new("ntsas");
    let pki = certificate(&lab);
    let mut serve = serve(&lab, &pki, &[]);
    let before = counters(&mut serve);
    let ca = pki.der.clone();
    let (stolen, mismatch) = lab.in_netns(move || {
        let victim = key_exchange(&ca, connect(LOCALHOST)).expect("victim's key exchange");
        let attacker = key_exchange(&ca, connect(LOCALHOST)).expect("attacker's key exchange");
        let mut rng = TestRng(Rng::new(0xa77a));
        let s = ntp_socket();
        let (forged, _) = nts_request(&attacker.keys, &victim.cookies[0], &mut rng);
        let stolen = exchange(&s, &forged, Duration::from_millis(500));
        // The victim's own request is answered; the answer does not fit another request.
        let (request, mut pending) = nts_request(&victim.keys, &victim.cookies[1], &mut rng);
        let reply = exchange(&s, &request, SECS(2)).expect("reply to the victim");
        let (_, mut other) = nts_request(&victim.keys, &victim.cookies[2], &mut rng);
        let mismatch = other.verify_reply(&reply);
        assert!(pending.verify_reply(&reply).is_ok());
        (stolen, mismatch)
    });
    assert!(
        stolen.is_none(),
        "a request with a stolen cookie was answered"
    );
    assert_eq!(mismatch, Err(ReplyError::UniqueIdMismatch));
    let after = counters(&mut serve);
    assert_eq!(delta(&before, &after, "nts.dropped"), 1, "{after:?}");
    assert_eq!(delta(&before, &after, "nts.replies"), 1, "{after:?}");
    assert_eq!(delta(&before, &after, "nts.ke_served"), 2, "{after:?}");
    assert_query_succeeds(&lab, &pki, &serve);
}

/// `--access` and the rate limit apply to key-exchange connections: one from a refused address
/// is closed at accept and counted as denied; past the burst, one from the same address is
/// closed and counted as limited, while another address is served.
#[test]
#[cfg_attr(ntpkit_skip_interop, ignore = "NTPKIT_SKIP_INTEROP=1")]
fn ke_access_rules_and_rate_limit_apply() {
    support::require("ke_access_rules_and_rate_limit_apply", &[]);
    let lab = Lab::new("ntsaa");
    let pki = certificate(&lab);
    let mut serve = serve(
        &lab,
        &pki,
        &[
            "--access",
            "deny 127.0.0.2",
            "--access",
            "allow all",
            "--rate-limit-burst",
            "2",
            "--rate-limit-interval",
            "12",
        ],
    );
    let ca = pki.der.clone();
    let results = lab.in_netns(move || {
        let from = |last: u8| Ipv4Addr::new(127, 0, 0, last);
        let denied = key_exchange(&ca, connect(from(2)));
        let first = key_exchange(&ca, connect(from(1)));
        let second = key_exchange(&ca, connect(from(1)));
        let third = key_exchange(&ca, connect(from(1)));
        let other = key_exchange(&ca, connect(from(3)));
        [denied, first, second, third, other].map(|r| r.map(|_| ()))
    });
    support::say(&format!("key exchanges: {results:?}"));
    let [denied, first, second, third, other] = &results;
    assert!(denied.is_err() && third.is_err(), "{results:?}");
    assert!(
        first.is_ok() && second.is_ok() && other.is_ok(),
        "{results:?}"
    );
    let c = counters(&mut serve);
    assert_eq!(c["nts.ke_denied"], 1, "{c:?}");
    assert_eq!(c["nts.ke_limited"], 1, "{c:?}");
    assert_eq!(c["nts.ke_served"], 3, "{c:?}");
    assert_eq!(c["nts.ke_failed"], 0, "{c:?}");
}
