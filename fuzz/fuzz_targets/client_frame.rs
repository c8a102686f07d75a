//! Fuzzes the protocol's client-frame parser and the server's message checks
//! (`hablar_fuzz::client_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hablar_fuzz::client_frame::check(data));
