//! Fuzzes the real server's handling of a member's frames over a real WebSocket
//! (`hablar_fuzz::server`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hablar_fuzz::server::check(data));
