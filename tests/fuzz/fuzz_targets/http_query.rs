//! libFuzzer entry for the `http_query` target; the logic is `leash_fuzz::http_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: leash_fuzz::seeds::write_for_libfuzzer("http_query"),
    |data: &[u8]| leash_fuzz::http_query(data)
);
