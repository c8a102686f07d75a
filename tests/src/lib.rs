//! Helpers for Hablar's cross-crate tests: starting real servers and services on free
//! ports and talking to them over real sockets.
