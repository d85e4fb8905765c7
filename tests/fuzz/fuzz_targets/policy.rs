//! libFuzzer entry for the `policy` target; the logic is `leash_fuzz::policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: leash_fuzz::seeds::write_for_libfuzzer("policy"),
    |data: &[u8]| leash_fuzz::policy(data)
);
