//! parse → emit → parse: any datagram either fails to parse or survives a round trip unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntpkit_wire::Packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::parse(data) {
        let mut out = vec![0u8; p.buffer_len()];
        let n = p.emit(&mut out).expect("buffer_len is enough");
        assert_eq!(&out[..n], data);
        assert_eq!(Packet::parse(&out[..n]).expect("re-parses"), p);
    }
});
