//! libFuzzer entry for the `cp_request` target; the logic is `leash_fuzz::cp_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: leash_fuzz::seeds::write_for_libfuzzer("cp_request"),
    |data: &[u8]| leash_fuzz::cp_request(data)
);
