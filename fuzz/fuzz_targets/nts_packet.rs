//! The NTS server's handling of arbitrary datagrams with fixed keys: never panics, and a reply or
//! NAK is never larger than the request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ntpkit_nts::{process_request, CookieKeyring, ServerOutcome};
use rand_xoshiro::rand_core::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let ring = CookieKeyring::with_default_rotation(&[0x5A; 32]).expect("32-byte master");
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0);
    let mut out = vec![0x24; 48];
    if let ServerOutcome::Reply { len, .. } | ServerOutcome::Nak { len, .. } =
        process_request(data, &ring, 1_780_000_000, &mut rng, &mut out)
    {
        assert!(len <= data.len());
    }
});
