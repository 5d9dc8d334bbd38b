//! The server's per-request work in the core: parse a 48-byte client request and write the
//! reply (`Responder::respond`), and the same through the default serving policy (access rules
//! and a rate-limit table, with clients spread over many addresses within their limits:
//! `Responder::respond_from`). No sockets, no clock reads: the CPU cost a driver adds to its
//! system calls for each datagram.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ntpkit_core::{
    AccessList, ClockTime, Policy, RateLimit, RateLimiter, Responder, Response, ServedState,
};
use ntpkit_wire::{Header, Mode, NtpTimestamp, RefId};
use std::net::{IpAddr, Ipv4Addr};

fn respond(c: &mut Criterion) {
    let now = ClockTime(1_790_000_000_000_000_000);
    let state = ServedState::local(10, RefId::LOCL, -24, now.add_nanos(-500_000_000));
    let mut request = [0u8; 48];
    Header {
        mode: Mode::Client,
        poll: 6,
        transmit_ts: NtpTimestamp::from_bits(0x1234_5678_9abc_def0),
        ..Header::default()
    }
    .emit(&mut request);
    let mut responder = Responder::new();
    let mut reply = [0u8; 48];

    let mut g = c.benchmark_group("responder");
    g.throughput(Throughput::Elements(1));
    g.bench_function("respond_48_byte_request", |b| {
        b.iter(|| {
            let r = responder.respond(black_box(&request), black_box(now), &state, &mut reply);
            debug_assert_eq!(r, Response::Reply(48));
            black_box(&reply);
        })
    });
    let policy = Policy {
        access: AccessList::new(vec!["allow 10.0.0.0/8".parse().unwrap()]),
        rate: Some(RateLimiter::new(RateLimit::default(), [7, 11])),
    };
    let mut limited = Responder::with_policy(policy);
    let mut k = 0u32;
    let mut t = 0i64;
    g.bench_function("respond_from_with_access_and_rate_limit", |b| {
        b.iter(|| {
            // 100,000 clients in turn, each asking once every 100,000 requests.
            k = (k + 1) % 100_000;
            t += 1_000_000;
            let from = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | k));
            let r = limited.respond_from(
                black_box(&request),
                from,
                t,
                black_box(now),
                &state,
                &mut reply,
            );
            debug_assert_eq!(r, Response::Reply(48));
            black_box(&reply);
        })
    });
    g.finish();
}

criterion_group!(benches, respond);
criterion_main!(benches);
