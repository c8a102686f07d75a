//! Browser tests of the SDK, run in headless Chromium by `wasm-pack test`.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn sdk_reports_protocol_version_one() {
    assert_eq!(hablar_client::protocol_version(), 1);
}
