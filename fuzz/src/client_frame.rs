//! The client-frame target: `parse_client`, then the server's message checks, must never
//! panic, and what they accept must keep the promises PROTOCOL.md makes about it.

use hablar_protocol::events::{
    encode, parse_client, parse_server, ClientEvent, ClientMessage, Message, MessageLimits, MessageParts,
    Sender, ServerEvent, SERVER_OWNED_FIELDS,
};
use hablar_protocol::passthrough;
use hablar_protocol::{limits, ChatId, MessageId, Result, Seq, UserId};
use serde_json::Value;

/// Splits a parsed message as the server does. The one place the fuzz targets call
/// `into_parts`, so that a change to its parameters (more limits) is made here only.
pub fn into_parts(message: ClientMessage) -> Result<MessageParts> {
    message.into_parts(MessageLimits::default())
}

/// Checks one input. Bytes that are not UTF-8 are read lossily: a server never sees them
/// in a text frame, but the replacement characters still exercise the parser.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let event = match parse_client(&text) {
        Ok(event) => event,
        Err(err) => {
            // Both go into the `error` event the server answers with.
            let _ = err.code();
            let _ = err.to_string();
            return;
        }
    };
    let again = parse_client(&encode(&event)).expect("an encoded client event parses again");
    assert_eq!(again, event, "a client event survives encode and parse");
    if let ClientEvent::NewMessage { message } = event {
        if let Ok(parts) = into_parts(message) {
            check_parts(parts);
        }
    }
}

/// What the server stores must be what PROTOCOL.md says it stores, and must reach a
/// recipient as it was stored.
fn check_parts(parts: MessageParts) {
    let content = &parts.content;
    assert!(!content.is_empty(), "stored content is never empty");
    assert_eq!(content.trim(), content, "stored content is trimmed");
    assert!(content.chars().count() <= limits::MAX_CONTENT_CHARS);
    for field in SERVER_OWNED_FIELDS {
        assert!(
            !parts.extra.contains_key(field),
            "a client set the server-owned {field}"
        );
    }
    let stored = passthrough::stored_bytes(&parts.content, parts.client_id.as_ref(), &parts.extra);
    assert!(
        stored <= limits::MAX_MESSAGE_BYTES,
        "a stored message of {stored} B is over the limit"
    );
    for (name, value) in &parts.extra {
        assert!(
            !passthrough::deeper_than(value, limits::MAX_FIELD_DEPTH),
            "{name} nests deeper than the limit"
        );
        assert_no_identity(name, value);
    }
    let message = Message {
        id: MessageId::new("m-1").expect("a valid message id"),
        seq: Some(Seq(1)),
        chat_id: ChatId::new("general").expect("a valid chat id"),
        content: parts.content,
        sender: Sender {
            id: UserId::new("42").expect("a valid user id"),
            username: "alice".into(),
        },
        created_at: "2026-12-07T12:00:00Z".into(),
        client_id: parts.client_id,
        extra: parts.extra,
    };
    let event = ServerEvent::NewMessage { message };
    let received = parse_server(&encode(&event)).expect("a stored message reaches a client readable");
    assert_eq!(
        received, event,
        "a stored message reaches a client as it was stored"
    );
}

/// No field that names a person survives, at any depth (PROTOCOL.md: identity is the
/// server's).
fn assert_no_identity(name: &str, value: &Value) {
    assert!(
        !passthrough::is_identity_field(name),
        "the identity-looking field {name} was kept"
    );
    match value {
        Value::Object(fields) => fields.iter().for_each(|(k, v)| assert_no_identity(k, v)),
        Value::Array(items) => items.iter().for_each(|v| assert_no_identity(name, v)),
        _ => {}
    }
}
