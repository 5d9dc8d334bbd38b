//! NTS-KE record reader: any byte string is either decoded or refused with an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ntpkit_nts::ke::records::parse_records(data);
});
