//! libFuzzer entry for the `reference` target; the logic is `leash_fuzz::reference`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: leash_fuzz::seeds::write_for_libfuzzer("reference"),
    |data: &[u8]| leash_fuzz::reference(data)
);
