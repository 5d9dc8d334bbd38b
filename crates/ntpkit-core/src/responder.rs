//! The server's reply logic: request bytes in, reply bytes out.
//!
//! Call contract, per datagram: the driver takes the receive time as close to arrival as the OS
//! allows, calls [`Responder::respond_from`] with the request, its source address, that time,
//! the served clock's state and a reply buffer at least as long as the request, then — as late
//! as possible — overwrites the transmit timestamp with [`ntpkit_wire::stamp_transmit`] and
//! sends the reply. The reply carries the receive time as its transmit time until then, so it is
//! valid even unstamped. The responder's [`Policy`] (access rules, rate limits) decides first
//! whether the request is answered, kissed or dropped; [`Responder::respond`] answers without
//! asking it.

use crate::policy::{Admission, Policy};
use crate::served::ServedState;
use crate::time::ClockTime;
use ntpkit_wire::{Header, KissCode, LeapIndicator, Mode, Packet, ParseError, HEADER_LEN};
use std::net::IpAddr;

/// What [`Responder::respond`] decided about one datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Response {
    /// A reply of this many bytes was written to the buffer.
    Reply(usize),
    /// A kiss-o'-death of this many bytes (never more than the request) was written to the
    /// buffer.
    Kiss(usize, KissCode),
    /// A well-formed packet that is not a request we answer; nothing is sent.
    Ignored(IgnoreReason),
    /// Not a valid NTP packet; nothing is sent.
    Malformed(ParseError),
}

/// Why a well-formed packet gets no answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IgnoreReason {
    /// Not a client-mode request (server replies, broadcasts, symmetric, control mode 6 and
    /// private mode 7 are never answered: no amplification, no reflection).
    NotARequest(Mode),
    /// The reply buffer is shorter than the reply.
    BufferTooSmall,
    /// The access rules refuse the client (silently).
    Denied,
    /// The client is over its rate (and this request gets no kiss-o'-death).
    RateLimited,
}

/// Counters of what the responder did, as `ntpkit serve` prints them on exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ResponderStats {
    /// Requests answered.
    pub answered: u64,
    /// Well-formed packets not answered.
    pub ignored: u64,
    /// Datagrams that failed to parse.
    pub malformed: u64,
    /// Requests refused by the access rules (dropped or kissed).
    pub denied: u64,
    /// Requests over the client's rate (dropped or kissed).
    pub limited: u64,
    /// Kisses-o'-death sent (DENY, RSTR, RATE).
    pub kissed: u64,
}

/// Answers client-mode NTP requests (RFC 5905 §8, server mode 4).
#[derive(Clone, Debug, Default)]
pub struct Responder {
    stats: ResponderStats,
    policy: Policy,
}

impl Responder {
    /// A responder with zeroed counters that answers everybody.
    pub fn new() -> Self {
        Responder::default()
    }

    /// A responder that asks `policy` about every request of [`respond_from`](Self::respond_from).
    pub fn with_policy(policy: Policy) -> Self {
        Responder {
            stats: ResponderStats::default(),
            policy,
        }
    }

    /// Handles one datagram from `from`, received at `received` (the served clock) and `now`
    /// (ns on a steady timescale, for the rate limits); see the module docs. Packets that are
    /// not requests are ignored before the policy is asked (they cost no rate).
    pub fn respond_from(
        &mut self,
        request: &[u8],
        from: IpAddr,
        now: i64,
        received: ClockTime,
        state: &ServedState,
        reply: &mut [u8],
    ) -> Response {
        let packet = match self.parse_request(request) {
            Ok(p) => p,
            Err(response) => return response,
        };
        match self.policy.admit(from, now) {
            Admission::Serve => self.answer(&packet, received, state, reply),
            Admission::Kiss(code) => {
                match code {
                    KissCode::Rate => self.stats.limited += 1,
                    _ => self.stats.denied += 1,
                }
                self.kiss(&packet.header, code, received, state, reply)
            }
            Admission::Denied => {
                self.stats.denied += 1;
                Response::Ignored(IgnoreReason::Denied)
            }
            Admission::Limited => {
                self.stats.limited += 1;
                Response::Ignored(IgnoreReason::RateLimited)
            }
        }
    }

    /// Handles one datagram received at `received`; see the module docs for the contract.
    ///
    /// The reply echoes the request's version (1–4) and poll, sets origin = the request's
    /// transmit timestamp, receive = `received`, and fills stratum, leap, reference ID,
    /// precision, root delay, root dispersion and reference time from `state`. It is 48 bytes,
    /// or 52 (a crypto-NAK) when the request carried a MAC we cannot verify; never longer than
    /// the request.
    pub fn respond(
        &mut self,
        request: &[u8],
        received: ClockTime,
        state: &ServedState,
        reply: &mut [u8],
    ) -> Response {
        match self.parse_request(request) {
            Ok(packet) => self.answer(&packet, received, state, reply),
            Err(response) => response,
        }
    }

    /// The request, or the response to a datagram that is not one (counted).
    fn parse_request<'a>(&mut self, request: &'a [u8]) -> Result<Packet<'a>, Response> {
        let packet = match Packet::parse(request) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(Response::Malformed(e));
            }
        };
        let req = packet.header;
        // NTPv1 had no mode field: its clients send mode 0 (as ntpd treats them).
        let is_request =
            req.mode == Mode::Client || (req.version == 1 && req.mode == Mode::Reserved);
        if !is_request {
            self.stats.ignored += 1;
            return Err(Response::Ignored(IgnoreReason::NotARequest(req.mode)));
        }
        Ok(packet)
    }

    /// A kiss-o'-death for `req`: leap 3, stratum 0, the code as reference ID, the request's
    /// transmit timestamp echoed (so that the client knows it is meant for it); 48 bytes.
    fn kiss(
        &mut self,
        req: &Header,
        code: KissCode,
        received: ClockTime,
        state: &ServedState,
        reply: &mut [u8],
    ) -> Response {
        if reply.len() < HEADER_LEN {
            self.stats.ignored += 1;
            return Response::Ignored(IgnoreReason::BufferTooSmall);
        }
        let received_ts = received.to_ntp();
        let header = Header {
            leap: LeapIndicator::Unsynchronized,
            version: req.version,
            mode: Mode::Server,
            stratum: 0,
            poll: req.poll,
            precision: state.precision,
            reference_id: code.refid(),
            origin_ts: req.transmit_ts,
            receive_ts: received_ts,
            transmit_ts: received_ts,
            ..Header::default()
        };
        let head: &mut [u8; HEADER_LEN] = (&mut reply[..HEADER_LEN])
            .try_into()
            .expect("length checked above");
        header.emit(head);
        self.stats.kissed += 1;
        Response::Kiss(HEADER_LEN, code)
    }

    /// The reply to a request.
    fn answer(
        &mut self,
        packet: &Packet,
        received: ClockTime,
        state: &ServedState,
        reply: &mut [u8],
    ) -> Response {
        let req = packet.header;
        let len = if packet.mac.is_some() {
            HEADER_LEN + 4
        } else {
            HEADER_LEN
        };
        if reply.len() < len {
            self.stats.ignored += 1;
            return Response::Ignored(IgnoreReason::BufferTooSmall);
        }
        let received_ts = received.to_ntp();
        let header = Header {
            leap: state.leap,
            version: req.version,
            mode: Mode::Server,
            stratum: state.stratum,
            poll: req.poll,
            precision: state.precision,
            root_delay: ntpkit_wire::NtpShort::from_nanos(state.root_delay),
            root_dispersion: state.root_dispersion_at(received),
            reference_id: state.reference_id,
            reference_ts: state.reference_time.to_ntp(),
            origin_ts: req.transmit_ts,
            receive_ts: received_ts,
            transmit_ts: received_ts,
        };
        let head: &mut [u8; HEADER_LEN] = (&mut reply[..HEADER_LEN])
            .try_into()
            .expect("length checked above");
        header.emit(head);
        if len > HEADER_LEN {
            // Crypto-NAK: key ID 0, no digest (RFC 5905 §7.4).
            reply[HEADER_LEN..len].fill(0);
        }
        self.stats.answered += 1;
        Response::Reply(len)
    }

    /// Call when the driver does not send a reply this responder wrote (an NTS request whose
    /// authenticator does not verify): it counts as ignored, not answered.
    pub fn withdraw_reply(&mut self) {
        if self.stats.answered > 0 {
            self.stats.answered -= 1;
            self.stats.ignored += 1;
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ResponderStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntpkit_wire::{LeapIndicator, NtpTimestamp, RefId};

    const NOW: ClockTime = ClockTime(1_790_000_000_000_000_000);

    fn state() -> ServedState {
        ServedState::local(3, RefId([10, 0, 0, 1]), -24, NOW.add_nanos(-1_000_000_000))
    }

    fn request(version: u8, mode: Mode) -> [u8; 48] {
        let h = Header {
            version,
            mode,
            poll: 6,
            transmit_ts: NtpTimestamp::from_bits(0xdead_beef_0bad_f00d),
            ..Header::default()
        };
        let mut b = [0u8; 48];
        h.emit(&mut b);
        b
    }

    #[test]
    fn answers_client_request() {
        let mut r = Responder::new();
        let mut out = [0u8; 64];
        let resp = r.respond(&request(4, Mode::Client), NOW, &state(), &mut out);
        assert_eq!(resp, Response::Reply(48));
        let h = Header::parse(&out).unwrap();
        assert_eq!(h.mode, Mode::Server);
        assert_eq!(h.version, 4);
        assert_eq!(h.stratum, 3);
        assert_eq!(h.poll, 6);
        assert_eq!(h.precision, -24);
        assert_eq!(h.leap, LeapIndicator::NoWarning);
        assert_eq!(h.reference_id, RefId([10, 0, 0, 1]));
        assert_eq!(h.origin_ts, NtpTimestamp::from_bits(0xdead_beef_0bad_f00d));
        assert_eq!(h.receive_ts, NOW.to_ntp());
        assert_eq!(h.transmit_ts, NOW.to_ntp());
        assert_eq!(h.reference_ts, NOW.add_nanos(-1_000_000_000).to_ntp());
        // 1 s old reference: 15 µs of aging plus 2^-24 s precision, rounded up to 16.16.
        let disp = h.root_dispersion.to_seconds_f64();
        assert!(
            (disp - 15e-6 - 2f64.powi(-24)).abs() < 2.0 / 65536.0,
            "{disp}"
        );
        assert_eq!(r.stats().answered, 1);
    }

    #[test]
    fn echoes_every_version_and_ntpv1_mode0() {
        for v in 1..=4 {
            let mut out = [0u8; 48];
            assert_eq!(
                Responder::new().respond(&request(v, Mode::Client), NOW, &state(), &mut out),
                Response::Reply(48)
            );
            assert_eq!(Header::parse(&out).unwrap().version, v);
        }
        let mut out = [0u8; 48];
        assert_eq!(
            Responder::new().respond(&request(1, Mode::Reserved), NOW, &state(), &mut out),
            Response::Reply(48)
        );
        assert_eq!(
            Responder::new().respond(&request(4, Mode::Reserved), NOW, &state(), &mut out),
            Response::Ignored(IgnoreReason::NotARequest(Mode::Reserved))
        );
    }

    #[test]
    fn never_answers_other_modes() {
        let mut r = Responder::new();
        let mut out = [0u8; 48];
        for mode in [
            Mode::SymmetricActive,
            Mode::SymmetricPassive,
            Mode::Server,
            Mode::Broadcast,
            Mode::Control,
            Mode::Private,
        ] {
            assert_eq!(
                r.respond(&request(4, mode), NOW, &state(), &mut out),
                Response::Ignored(IgnoreReason::NotARequest(mode))
            );
        }
        assert_eq!(out, [0u8; 48], "nothing written");
        assert_eq!(
            r.stats(),
            ResponderStats {
                ignored: 6,
                ..ResponderStats::default()
            }
        );
    }

    #[test]
    fn malformed_counted() {
        let mut r = Responder::new();
        let mut out = [0u8; 64];
        assert!(matches!(
            r.respond(&[0x23; 47], NOW, &state(), &mut out),
            Response::Malformed(_)
        ));
        let mut long = [0u8; 50];
        long[..48].copy_from_slice(&request(4, Mode::Client));
        assert!(matches!(
            r.respond(&long, NOW, &state(), &mut out),
            Response::Malformed(_)
        ));
        assert_eq!(r.stats().malformed, 2);
    }

    #[test]
    fn mac_gets_crypto_nak_no_longer_than_request() {
        let mut req = [0u8; 68];
        req[..48].copy_from_slice(&request(4, Mode::Client));
        req[48..52].copy_from_slice(&7u32.to_be_bytes());
        let mut out = [0xFFu8; 68];
        assert_eq!(
            Responder::new().respond(&req, NOW, &state(), &mut out),
            Response::Reply(52)
        );
        let p = Packet::parse(&out[..52]).unwrap();
        assert!(p.mac.unwrap().is_crypto_nak());
    }

    #[test]
    fn the_policy_kisses_denies_and_limits_and_never_amplifies() {
        use crate::policy::{AccessList, RateLimit, RateLimiter};
        let policy = Policy {
            access: AccessList::new(vec![
                "deny 192.0.2.7 kod".parse().unwrap(),
                "deny 192.0.2.8".parse().unwrap(),
                "allow all".parse().unwrap(),
            ]),
            rate: Some(RateLimiter::new(
                RateLimit {
                    burst: 1,
                    kod_leak: 1,
                    ..RateLimit::default()
                },
                [1, 2],
            )),
        };
        let mut r = Responder::with_policy(policy);
        let req = request(4, Mode::Client);
        let mut out = [0u8; 48];
        let from = |s: &str| s.parse::<IpAddr>().unwrap();
        // A denied client with a kiss: DENY, stratum 0, leap 3, the cookie echoed.
        assert_eq!(
            r.respond_from(&req, from("192.0.2.7"), 0, NOW, &state(), &mut out),
            Response::Kiss(48, KissCode::Deny)
        );
        let h = Header::parse(&out).unwrap();
        assert_eq!((h.stratum, h.leap), (0, LeapIndicator::Unsynchronized));
        assert_eq!(h.reference_id, RefId(*b"DENY"));
        assert_eq!(h.origin_ts, NtpTimestamp::from_bits(0xdead_beef_0bad_f00d));
        assert_eq!(
            r.respond_from(&req, from("192.0.2.8"), 0, NOW, &state(), &mut out),
            Response::Ignored(IgnoreReason::Denied)
        );
        // Within the rate, then over it: every other request kissed with RATE.
        let c = from("192.0.2.9");
        assert_eq!(
            r.respond_from(&req, c, 0, NOW, &state(), &mut out),
            Response::Reply(48)
        );
        let over: Vec<Response> = (0..4)
            .map(|_| r.respond_from(&req, c, 0, NOW, &state(), &mut out))
            .collect();
        assert_eq!(
            over,
            vec![
                Response::Ignored(IgnoreReason::RateLimited),
                Response::Kiss(48, KissCode::Rate),
                Response::Ignored(IgnoreReason::RateLimited),
                Response::Kiss(48, KissCode::Rate),
            ]
        );
        // A server reply or junk costs no rate: the next request of a fresh client passes.
        assert!(matches!(
            r.respond_from(
                &request(4, Mode::Server),
                from("192.0.2.10"),
                0,
                NOW,
                &state(),
                &mut out
            ),
            Response::Ignored(IgnoreReason::NotARequest(_))
        ));
        assert_eq!(
            r.respond_from(&req, from("192.0.2.10"), 0, NOW, &state(), &mut out),
            Response::Reply(48)
        );
        let st = r.stats();
        assert_eq!(
            (st.answered, st.denied, st.limited, st.kissed),
            (2, 2, 4, 3)
        );
    }

    #[test]
    fn unsynchronized_state_advertised() {
        let mut out = [0u8; 48];
        let s = ServedState::unsynchronized(-20);
        Responder::new().respond(&request(4, Mode::Client), NOW, &s, &mut out);
        let h = Header::parse(&out).unwrap();
        assert_eq!((h.leap, h.stratum), (LeapIndicator::Unsynchronized, 16));
    }

    #[test]
    fn a_withdrawn_reply_counts_as_ignored() {
        let mut r = Responder::new();
        let mut out = [0u8; 48];
        let req = request(4, Mode::Client);
        assert!(matches!(
            r.respond(&req, NOW, &state(), &mut out),
            Response::Reply(48)
        ));
        r.withdraw_reply();
        assert_eq!((r.stats().answered, r.stats().ignored), (0, 1));
        r.withdraw_reply();
        assert_eq!(
            (r.stats().answered, r.stats().ignored),
            (0, 1),
            "nothing left to withdraw"
        );
    }
}
