//! libFuzzer entry for the `config` target; the logic is `leash_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: leash_fuzz::seeds::write_for_libfuzzer("config"),
    |data: &[u8]| leash_fuzz::config(data)
);
