//! A whole NTS session in memory, through the public API only: NTS-KE with one server, whose
//! cookies come from a master secret, then protected NTP exchanges answered by that server and
//! by another one holding the same master (a fleet without shared state), and refused with a
//! NAK by a server holding another master.

use ntpkit_nts::ke::{client_config, server_config};
use ntpkit_nts::{
    make_cookie, process_request, CookieJar, CookieKeyring, KeClient, KeServer, KeServerSettings,
    NtsKeys, ReplyVerdict, ServerOutcome, JAR_CAPACITY,
};
use ntpkit_wire::{Header, Mode, NtpTimestamp, HEADER_LEN};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::time_provider::DefaultTimeProvider;
use rustls::RootCertStore;
use std::sync::Arc;

/// 2026-12-01, seconds since the Unix epoch.
const NOW: u64 = 1_796_083_200;

/// A self-signed certificate for `localhost` and its key.
fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// Runs NTS-KE between a fresh client and server; the server's cookies come from `ring`.
fn key_exchange(ring: &CookieKeyring, rng: &mut Xoshiro256PlusPlus) -> (NtsKeys, Vec<Vec<u8>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = certificate();
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let client_cfg = client_config(roots, provider.clone(), Arc::new(DefaultTimeProvider)).unwrap();
    let server_cfg =
        server_config(vec![cert], key, provider, Arc::new(DefaultTimeProvider)).unwrap();
    let mut client = KeClient::new(Arc::new(client_cfg), "localhost").unwrap();
    let mut server = KeServer::new(Arc::new(server_cfg), KeServerSettings::default()).unwrap();
    let mut maker = |k: &NtsKeys| make_cookie(ring, k, NOW, &mut *rng).unwrap();
    for _ in 0..50 {
        let mut bytes = Vec::new();
        client.transmit(&mut bytes);
        server.receive(&bytes, &mut maker);
        let mut back = Vec::new();
        server.transmit(&mut back);
        client.receive(&back);
        if client.is_finished() && server.is_finished() {
            break;
        }
    }
    let outcome = client.outcome().expect("finished").expect("key exchange");
    (outcome.keys, outcome.cookies)
}

fn request_header(transmit: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    Header {
        mode: Mode::Client,
        transmit_ts: NtpTimestamp::from_bits(transmit),
        ..Header::default()
    }
    .emit(&mut h);
    h
}

fn reply_header(transmit: u64) -> Vec<u8> {
    let mut h = [0u8; HEADER_LEN];
    Header {
        mode: Mode::Server,
        stratum: 1,
        origin_ts: NtpTimestamp::from_bits(transmit),
        ..Header::default()
    }
    .emit(&mut h);
    h.to_vec()
}

#[test]
fn key_exchange_then_protected_exchanges_across_a_fleet() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let master = [0x5a; 32];
    let ke_host = CookieKeyring::with_default_rotation(&master).unwrap();
    let ntp_host = CookieKeyring::with_default_rotation(&master).unwrap();
    let stranger = CookieKeyring::with_default_rotation(&[0xa5; 32]).unwrap();

    let (keys, cookies) = key_exchange(&ke_host, &mut rng);
    assert_eq!(cookies.len(), JAR_CAPACITY);
    let mut jar = CookieJar::default();
    jar.install(keys, cookies);

    // Twenty exchanges with the other host of the fleet: every reply authenticates, and the
    // jar stays full however many cookies each reply brings.
    for i in 0..20u64 {
        let mut request = Vec::new();
        let mut pending = jar
            .build_request(&request_header(1000 + i), &mut rng, &mut request)
            .unwrap();
        let mut reply = reply_header(1000 + i);
        let outcome = process_request(&request, &ntp_host, NOW + i * 64, &mut rng, &mut reply);
        let ServerOutcome::Reply { len, .. } = outcome else {
            panic!("exchange {i}: {outcome:?}");
        };
        assert!(len <= request.len(), "reply longer than the request");
        match jar.accept_reply(&mut pending, &reply).unwrap() {
            ReplyVerdict::Authentic { .. } => {}
            other => panic!("exchange {i}: {other:?}"),
        }
        assert!(!jar.needs_key_exchange());
    }

    // A server with another master cannot open the cookie: an NTS NAK, which empties the jar
    // and sends the client back to NTS-KE.
    let mut request = Vec::new();
    let mut pending = jar
        .build_request(&request_header(2000), &mut rng, &mut request)
        .unwrap();
    let mut reply = reply_header(2000);
    let outcome = process_request(&request, &stranger, NOW, &mut rng, &mut reply);
    assert!(matches!(outcome, ServerOutcome::Nak { .. }), "{outcome:?}");
    assert!(matches!(
        jar.accept_reply(&mut pending, &reply).unwrap(),
        ReplyVerdict::Nak
    ));
    assert!(jar.needs_key_exchange());
}

#[test]
fn cookies_outlive_one_rotation_but_not_two() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(8);
    let ring = CookieKeyring::with_default_rotation(&[0x11; 32]).unwrap();
    let (keys, cookies) = key_exchange(&ring, &mut rng);
    let mut jar = CookieJar::default();
    jar.install(keys, cookies);
    let day = 86_400;
    for (later, served) in [(day, true), (2 * day + 1, false)] {
        let mut request = Vec::new();
        jar.build_request(&request_header(1), &mut rng, &mut request)
            .unwrap();
        let mut reply = reply_header(1);
        let outcome = process_request(&request, &ring, NOW + later, &mut rng, &mut reply);
        assert_eq!(
            matches!(outcome, ServerOutcome::Reply { .. }),
            served,
            "{later} s later: {outcome:?}"
        );
    }
}
