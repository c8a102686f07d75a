//! The client-frame target: `parse_client`, then the server's message checks, must never
//! panic, and what they accept must keep the promises PROTOCOL.md makes about it.

use hablar_protocol::events::{
    encode, parse_client, parse_server, ClientEvent, ClientMessage, Message, MessageParts, Sender,
    ServerEvent, SERVER_OWNED_FIELDS,
};
use hablar_protocol::{limits, ChatId, MessageId, Result, Seq, UserId};

/// Splits a parsed message as the server does. The one place the fuzz targets call
/// `into_parts`, so that a change to its parameters (more limits) is made here only.
pub fn into_parts(message: ClientMessage) -> Result<MessageParts> {
    message.into_parts(limits::MAX_CONTENT_CHARS)
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
