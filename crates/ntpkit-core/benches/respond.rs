//! The server's per-request work in the core: parse a 48-byte client request and write the
//! reply (`Responder::respond`). No sockets, no clock reads: the CPU cost a driver adds to its
//! system calls for each datagram.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ntpkit_core::{ClockTime, Responder, Response, ServedState};
use ntpkit_wire::{Header, Mode, NtpTimestamp, RefId};

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
    g.finish();
}

criterion_group!(benches, respond);
criterion_main!(benches);
