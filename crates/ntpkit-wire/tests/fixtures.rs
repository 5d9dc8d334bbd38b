//! The codec against packets captured from real chronyd, ntpdig/ntpdate and NTPsec traffic
//! (see tests/fixtures/README.md for how each was captured).

use ntpkit_wire::{LeapIndicator, Mode, NtpTimestamp, Packet, RefId};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = text.trim();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Parses, checks that emit reproduces the bytes, and returns the packet's owned header.
fn round_trip(bytes: &[u8]) -> Packet<'_> {
    let p = Packet::parse(bytes).expect("fixture parses");
    let mut out = vec![0u8; p.buffer_len()];
    assert_eq!(p.emit(&mut out), Ok(bytes.len()));
    assert_eq!(out, bytes, "emit reproduces the captured bytes");
    p
}

#[test]
fn chronyd_client_request_hides_its_clock() {
    let b = fixture("chronyd_client_request");
    let p = round_trip(&b);
    let h = p.header;
    assert_eq!(
        (b.len(), h.version, h.mode, h.stratum, h.poll),
        (48, 4, Mode::Client, 0, 6)
    );
    assert_eq!(
        h.precision, 32,
        "chronyd sends an out-of-range precision in requests"
    );
    assert!(h.origin_ts.is_zero() && h.receive_ts.is_zero() && h.reference_ts.is_zero());
    assert!(!h.transmit_ts.is_zero());
}

#[test]
fn chronyd_server_exchange() {
    let req = fixture("chronyd_server_request");
    let rep = fixture("chronyd_server_reply");
    let q = round_trip(&req).header;
    let r = round_trip(&rep).header;
    assert_eq!(
        (r.leap, r.version, r.mode, r.stratum),
        (LeapIndicator::NoWarning, 4, Mode::Server, 1)
    );
    assert_eq!(r.reference_id, RefId([0x7f, 0x7f, 0x01, 0x01]));
    assert_eq!(
        r.origin_ts, q.transmit_ts,
        "origin echoes the request's transmit"
    );
    assert!(r.transmit_ts.wrapping_sub(r.receive_ts).to_nanos() >= 0);
    assert_eq!(r.transmit_ts.to_bits() >> 32, 0xeeac8354);
    // Resolved near the capture date (2026-11-21), the reply's time is in late 2026.
    let unix = r.transmit_ts.to_unix_nanos(1_795_000_000 * 1_000_000_000);
    assert!(
        (1_795_000_000..1_796_000_000).contains(&(unix / 1_000_000_000)),
        "{unix}"
    );
}

#[test]
fn ntpdig_and_ntpdate_requests_send_leap_3() {
    for name in ["ntpdig_request", "ntpdate_request"] {
        let b = fixture(name);
        let h = round_trip(&b).header;
        assert_eq!(
            (h.leap, h.version, h.mode),
            (LeapIndicator::Unsynchronized, 4, Mode::Client),
            "{name}"
        );
        assert_eq!(
            h.transmit_ts.to_bits() >> 32,
            if name == "ntpdig_request" {
                0xeeac8364
            } else {
                0xeeac8366
            }
        );
    }
}

#[test]
fn nts_extension_fields() {
    let req = fixture("chronyd_nts_request");
    let p = round_trip(&req);
    let efs: Vec<_> = p
        .extensions()
        .map(|e| (e.field_type, e.value.len() + 4))
        .collect();
    assert_eq!(efs, vec![(0x0104, 36), (0x0204, 104), (0x0404, 40)]);
    assert_eq!(p.mac, None);
    let rep = fixture("chronyd_nts_reply");
    let r = round_trip(&rep);
    let efs: Vec<_> = r
        .extensions()
        .map(|e| (e.field_type, e.value.len() + 4))
        .collect();
    assert_eq!(efs, vec![(0x0104, 36), (0x0404, 144)]);
    let uid_req = p.extensions().next().unwrap().value;
    let uid_rep = r.extensions().next().unwrap().value;
    assert_eq!(uid_req, uid_rep, "the reply echoes the unique identifier");
    assert_eq!(r.header.origin_ts, p.header.transmit_ts);
}

#[test]
fn ntpsec_orphan_reply_has_zero_reference_time() {
    let q = round_trip(&fixture("ntpsec_request")).header;
    let r = round_trip(&fixture("ntpsec_reply")).header;
    assert_eq!((r.mode, r.stratum, r.precision), (Mode::Server, 5, -24));
    assert_eq!(r.reference_id.as_ipv4().to_string(), "127.0.0.1");
    assert_eq!(r.reference_ts, NtpTimestamp::ZERO);
    assert_eq!(r.origin_ts, q.transmit_ts);
}

#[test]
fn truncations_of_real_packets_never_panic() {
    for name in [
        "chronyd_nts_request",
        "chronyd_nts_reply",
        "chronyd_server_reply",
    ] {
        let b = fixture(name);
        for n in 0..b.len() {
            let _ = Packet::parse(&b[..n]);
        }
    }
}
