//! The server's reply logic on arbitrary datagrams: never panics, never replies larger than the
//! request, and every reply parses as a server-mode packet.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntpkit_core::{ClockTime, Responder, Response, ServedState};
use ntpkit_wire::{Mode, Packet, RefId};

fuzz_target!(|data: &[u8]| {
    let now = ClockTime(1_795_000_000_000_000_000);
    let state = ServedState::local(2, RefId::LOCL, -20, now);
    let mut out = [0u8; 2048];
    if let Response::Reply(n) = Responder::new().respond(data, now, &state, &mut out) {
        assert!(n <= data.len());
        assert_eq!(Packet::parse(&out[..n]).expect("reply parses").header.mode, Mode::Server);
    }
});
