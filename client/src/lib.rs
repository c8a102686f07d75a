//! Hablar's browser SDK, compiled to WebAssembly and published as an npm package: a live
//! chat connection that behaves well on bad networks.
//!
//! Layout: the decisions are plain state machines fed events and the current time, free
//! of browser I/O and tested natively; the wasm glue only carries them out.
//! - [`backoff`]: reconnect delays, exponential with full jitter, and the jitter source.
//! - [`typing`]: the typing lease, sender side and receiver side.
//! - [`outbox`]: sends waiting for their echo, bounded, resent on reconnect.
//! - [`resume`]: the `since`/`epoch` resume point and message deduplication.
//! - [`machine`]: the connection state machine that ties them together.
//! - `wasm` (wasm32 only): the `HablarClient` JS class, WebSocket and timer glue, frame
//!   decoding with `JSON.parse`, and the TypeScript types of the package.

pub mod backoff;
pub mod machine;
pub mod outbox;
pub mod resume;
pub mod typing;
#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(target_arch = "wasm32")]
pub use wasm::HablarClient;

use wasm_bindgen::prelude::*;

/// The protocol version this SDK speaks.
#[wasm_bindgen(js_name = "protocolVersion")]
pub fn protocol_version() -> u32 {
    1
}
