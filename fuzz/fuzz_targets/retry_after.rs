//! `Retry-After` as a refresh reads it. The properties checked are in
//! `fuzz/oracles/retry_after.rs`.

#![no_main]

#[path = "../oracles/retry_after.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
