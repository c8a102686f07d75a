//! Hablar's browser SDK, compiled to WebAssembly and published as an npm package.

use wasm_bindgen::prelude::*;

/// The protocol version this SDK speaks.
#[wasm_bindgen(js_name = "protocolVersion")]
pub fn protocol_version() -> u32 {
    1
}
