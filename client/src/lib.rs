//! Hablar's browser SDK, compiled to WebAssembly and published as an npm package: a live
//! chat connection that behaves well on bad networks.
//!
//! Layout: the decisions are plain state machines fed events and the current time, free
//! of browser I/O and tested natively; the wasm glue only carries them out.
//! - [`backoff`]: reconnect delays, exponential with full jitter, and the jitter source.
//! - [`typing`]: the typing lease, sender side and receiver side.
//! - [`outbox`]: sends waiting for their echo, bounded, resent on reconnect.
//! - [`resume`]: the `since`/`epoch` resume point and message deduplication.
//! - [`machine`]: the connection state machine that ties them together; its `config`,
//!   `input` (server frames as it reads them), `output` (what it asks of the glue) and
//!   `frames` (what each server frame changes) are submodules.
//! - `wasm` (wasm32 only), the glue that carries the decisions out: `client` (the
//!   `HablarClient` JS class), `listeners` (the app's listeners and waiting sends),
//!   `token` (a connection attempt's token), `socket` (the WebSocket and its events),
//!   `decode` (server frames with `JSON.parse`), `timer` (the one wake-up timer), `page`
//!   (`online`, `visibilitychange`), `payloads` (what the app receives), `types` (the
//!   package's TypeScript types), `js` (small JS helpers).

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
