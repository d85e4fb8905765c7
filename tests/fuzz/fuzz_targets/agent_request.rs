//! libFuzzer entry for the `agent_request` target; the logic is `leash_fuzz::agent_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: leash_fuzz::seeds::write_for_libfuzzer("agent_request"),
    |data: &[u8]| leash_fuzz::agent_request(data)
);
