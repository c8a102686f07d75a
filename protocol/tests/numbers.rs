//! Numbers in a frame are read exactly (as the nearest `f64`, as JavaScript reads them),
//! so a ping id or a pass-through field that the server reads and writes out again
//! reaches its recipients unchanged, however many times it is relayed.

use hablar_protocol::events::{encode, parse_client, ClientEvent};
use serde_json::Value;

/// Numbers whose last digit a fast, inexact float parse gets wrong. The first was found
/// by the `client_frame` fuzz target (fuzz/corpus/client_frame/huge_integer).
const NUMBERS: [&str; 4] = [
    "1.2345678901234567e59",
    "123456789012345678901234567890123456789012345678901234567890",
    "0.30000000000000004",
    "2.2250738585072014e-308",
];

fn expected(number: &str) -> f64 {
    number.parse().expect("a valid float literal")
}

#[test]
fn a_ping_id_is_read_as_the_nearest_float() {
    for number in NUMBERS {
        let frame = format!(r#"{{"type":"ping","id":{number}}}"#);
        let Ok(ClientEvent::Ping { id: Some(id) }) = parse_client(&frame) else {
            panic!("{frame} is a ping with an id");
        };
        assert_eq!(id.as_f64(), Some(expected(number)), "{frame}");
    }
}

#[test]
fn a_pass_through_number_survives_being_relayed() {
    for number in NUMBERS {
        let frame = format!(r#"{{"type":"new_message","message":{{"content":"x","n":{number}}}}}"#);
        let mut event = parse_client(&frame).expect("a valid new_message");
        for _hop in 0..3 {
            event = parse_client(&encode(&event)).expect("an encoded event parses");
        }
        let ClientEvent::NewMessage { message } = event else {
            panic!("{frame} is a new_message");
        };
        assert_eq!(
            message.extra.get("n").and_then(Value::as_f64),
            Some(expected(number)),
            "{frame}"
        );
    }
}
