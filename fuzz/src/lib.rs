//! What Hablar's fuzz targets check, kept out of the `fuzz_target!` files so that it is
//! linted, formatted and readable like any library code.
//!
//! - [`client_frame`]: the protocol's client-frame parser and the message checks the
//!   server applies to what it parsed (`fuzz_targets/client_frame.rs`).
//! - [`server`]: one real in-process server and one WebSocket connection to it; every
//!   input is sent as a frame and must be answered without a panic or a dead connection
//!   (`fuzz_targets/server_frame.rs`).

pub mod client_frame;
pub mod server;
