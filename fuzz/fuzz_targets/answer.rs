//! A refresh endpoint's answer, as every dialect reads it. The input
//! format and the properties checked are in `fuzz/oracles/answer.rs`.

#![no_main]

#[path = "../oracles/answer.rs"]
mod oracle;

libfuzzer_sys::fuzz_target!(|data: &[u8]| oracle::check(data));
