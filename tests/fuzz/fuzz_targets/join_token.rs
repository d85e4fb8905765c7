//! libFuzzer entry for the `join_token` target; the logic is `leash_fuzz::join_token`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: leash_fuzz::seeds::write_for_libfuzzer("join_token"),
    |data: &[u8]| leash_fuzz::join_token(data)
);
