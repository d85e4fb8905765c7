//! libFuzzer entry for the `envfile` target; the logic is `leash_fuzz::env_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: leash_fuzz::seeds::write_for_libfuzzer("envfile"),
    |data: &[u8]| leash_fuzz::env_file(data)
);
