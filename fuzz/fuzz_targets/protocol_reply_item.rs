#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| veil_protocol::fuzzing::reply_item(data));
