//! Golden tests: every event of PROTOCOL.md, as JSON a peer really sends, parses to the
//! expected typed value and serialises back to equal JSON (compared as parsed values,
//! not strings, so key order and spacing do not matter).

use hablar_protocol::events::{
    encode, parse_client, parse_server, ClientEvent, ClientMessage, ErrorEvent, Extra, HistoryPage, Message,
    MessageLimits, PresenceUser, Ready, Sender, ServerEvent,
};
use hablar_protocol::{ChatId, ClientId, Epoch, Error, ErrorCode, MessageId, Seq, UserId};
use serde_json::{json, Value};

fn user(id: &str) -> UserId {
    UserId::new(id).expect("valid user id")
}

fn extra(value: Value) -> Extra {
    match value {
        Value::Object(map) => map,
        other => panic!("extra fields must be an object, got {other}"),
    }
}

/// Parses `wire` as a client event, checks it equals `expected`, and that encoding it
/// gives back JSON equal to `wire`.
fn client_golden(wire: Value, expected: ClientEvent) {
    let parsed = parse_client(&wire.to_string()).expect("golden client frame parses");
    assert_eq!(parsed, expected);
    let back: Value = serde_json::from_str(&encode(&parsed)).expect("encoded event is JSON");
    assert_eq!(back, wire);
}

fn server_golden(wire: Value, expected: ServerEvent) {
    let parsed = parse_server(&wire.to_string()).expect("golden server frame parses");
    assert_eq!(parsed, expected);
    let back: Value = serde_json::from_str(&encode(&parsed)).expect("encoded event is JSON");
    assert_eq!(back, wire);
}

fn alice_message() -> Message {
    Message {
        id: MessageId::new("m-17").expect("valid"),
        seq: Some(Seq(17)),
        chat_id: ChatId::new("general").expect("valid"),
        content: "hello".into(),
        sender: Sender {
            id: user("42"),
            username: "alice".into(),
        },
        created_at: "2026-11-29T12:00:00Z".into(),
        client_id: Some(ClientId::new("c-1").expect("valid")),
        extra: Extra::new(),
    }
}

// --- base layer, client → server -------------------------------------------------------

#[test]
fn base_typing_start_from_client() {
    client_golden(json!({"type": "typing_start"}), ClientEvent::TypingStart);
}

#[test]
fn base_typing_stop_from_client() {
    client_golden(json!({"type": "typing_stop"}), ClientEvent::TypingStop);
}

#[test]
fn base_new_message_from_client() {
    client_golden(
        json!({"type": "new_message", "message": {"content": "hello"}}),
        ClientEvent::NewMessage {
            message: ClientMessage {
                content: "hello".into(),
                client_id: None,
                extra: Extra::new(),
            },
        },
    );
}

#[test]
fn new_message_keeps_client_id_and_pass_through_fields() {
    client_golden(
        json!({"type": "new_message", "message": {
            "content": "see above", "client_id": "c-9", "reply_to": "m-3",
            "attachments": [{"url": "https://example.org/a.png", "size": 1024}]
        }}),
        ClientEvent::NewMessage {
            message: ClientMessage {
                content: "see above".into(),
                client_id: Some(ClientId::new("c-9").expect("valid")),
                extra: extra(json!({
                    "reply_to": "m-3",
                    "attachments": [{"url": "https://example.org/a.png", "size": 1024}]
                })),
            },
        },
    );
}

// --- base layer, server → client -------------------------------------------------------

#[test]
fn base_typing_start_from_server() {
    server_golden(
        json!({"type": "typing_start", "user_id": "42", "username": "alice"}),
        ServerEvent::TypingStart {
            user_id: user("42"),
            username: "alice".into(),
        },
    );
}

#[test]
fn base_typing_stop_from_server() {
    server_golden(
        json!({"type": "typing_stop", "user_id": "42"}),
        ServerEvent::TypingStop { user_id: user("42") },
    );
}

#[test]
fn base_new_message_from_server() {
    server_golden(
        json!({"type": "new_message", "message": {
            "id": "m-17", "seq": 17, "chat_id": "general", "content": "hello",
            "sender": {"id": "42", "username": "alice"},
            "created_at": "2026-11-29T12:00:00Z", "client_id": "c-1"
        }}),
        ServerEvent::NewMessage {
            message: alice_message(),
        },
    );
}

#[test]
fn server_message_passes_the_senders_extra_fields_on() {
    let mut message = alice_message();
    message.extra = extra(json!({"reply_to": "m-3"}));
    server_golden(
        json!({"type": "new_message", "message": {
            "id": "m-17", "seq": 17, "chat_id": "general", "content": "hello",
            "sender": {"id": "42", "username": "alice"},
            "created_at": "2026-11-29T12:00:00Z", "client_id": "c-1", "reply_to": "m-3"
        }}),
        ServerEvent::NewMessage { message },
    );
}

#[test]
fn a_base_layer_peers_message_without_seq_and_with_integer_ids_is_read() {
    // What a Django Channels backend sends: database integers, no `seq`, no `client_id`.
    let frame = json!({"type": "new_message", "message": {
        "id": 981, "chat_id": "general", "content": "hi",
        "sender": {"id": 7, "username": "bob"}, "created_at": "2026-11-29T12:00:00+00:00"
    }});
    let ServerEvent::NewMessage { message } = parse_server(&frame.to_string()).expect("parses") else {
        panic!("expected new_message");
    };
    assert_eq!(message.id.as_str(), "981");
    assert_eq!(message.seq, None);
    assert_eq!(message.sender.id.as_str(), "7");
    assert_eq!(message.client_id, None);
}

#[test]
fn integer_user_ids_are_read_as_strings() {
    let event = parse_server(r#"{"type":"typing_start","user_id":7,"username":"bob"}"#).expect("parses");
    assert_eq!(
        event,
        ServerEvent::TypingStart {
            user_id: user("7"),
            username: "bob".into()
        }
    );
}

// --- extensions ------------------------------------------------------------------------

#[test]
fn ping_round_trips_with_and_without_id() {
    client_golden(json!({"type": "ping"}), ClientEvent::Ping { id: None });
    client_golden(
        json!({"type": "ping", "id": 12}),
        ClientEvent::Ping { id: Some(json!(12)) },
    );
    client_golden(
        json!({"type": "ping", "id": "p-1"}),
        ClientEvent::Ping {
            id: Some(json!("p-1")),
        },
    );
}

#[test]
fn mark_read_round_trips() {
    client_golden(
        json!({"type": "mark_read", "up_to": "m-17"}),
        ClientEvent::MarkRead {
            up_to: MessageId::new("m-17").expect("valid"),
        },
    );
}

#[test]
fn ready_round_trips() {
    server_golden(
        json!({"type": "ready", "user_id": "42", "chat_id": "general", "epoch": "e1x9",
               "last_seq": 17, "recovered": true,
               "presence": [{"user_id": "42", "username": "alice"}, {"user_id": "7", "username": "bob"}]}),
        ServerEvent::Ready(Ready {
            user_id: user("42"),
            chat_id: ChatId::new("general").expect("valid"),
            epoch: Epoch::new("e1x9").expect("valid"),
            last_seq: Seq(17),
            recovered: true,
            presence: vec![
                PresenceUser {
                    user_id: user("42"),
                    username: "alice".into(),
                },
                PresenceUser {
                    user_id: user("7"),
                    username: "bob".into(),
                },
            ],
        }),
    );
}

#[test]
fn presence_events_round_trip() {
    let bob = PresenceUser {
        user_id: user("7"),
        username: "bob".into(),
    };
    server_golden(
        json!({"type": "presence_join", "user_id": "7", "username": "bob"}),
        ServerEvent::PresenceJoin(bob.clone()),
    );
    server_golden(
        json!({"type": "presence_leave", "user_id": "7", "username": "bob"}),
        ServerEvent::PresenceLeave(bob),
    );
}

#[test]
fn read_round_trips() {
    server_golden(
        json!({"type": "read", "user_id": "7", "up_to": "m-17"}),
        ServerEvent::Read {
            user_id: user("7"),
            up_to: MessageId::new("m-17").expect("valid"),
        },
    );
}

#[test]
fn pong_round_trips_with_and_without_id() {
    server_golden(json!({"type": "pong"}), ServerEvent::Pong { id: None });
    server_golden(
        json!({"type": "pong", "id": 12}),
        ServerEvent::Pong { id: Some(json!(12)) },
    );
}

#[test]
fn error_events_round_trip_every_code() {
    for code in [
        "bad_json",
        "unknown_type",
        "invalid_message",
        "rate_limited",
        "too_large",
        "unavailable",
    ] {
        server_golden(
            json!({"type": "error", "code": code, "detail": "why"}),
            ServerEvent::Error(ErrorEvent {
                code: ErrorCode::parse(code),
                detail: "why".into(),
                client_id: None,
            }),
        );
    }
    server_golden(
        json!({"type": "error", "code": "invalid_message", "detail": "content is empty", "client_id": "c-2"}),
        ServerEvent::Error(ErrorEvent {
            code: ErrorCode::InvalidMessage,
            detail: "content is empty".into(),
            client_id: Some(ClientId::new("c-2").expect("valid")),
        }),
    );
}

#[test]
fn history_page_round_trips() {
    let page = HistoryPage {
        messages: vec![alice_message()],
        has_more: false,
    };
    let json = serde_json::to_value(&page).expect("serialises");
    assert_eq!(json["messages"][0]["seq"], json!(17));
    assert_eq!(serde_json::from_value::<HistoryPage>(json).expect("parses"), page);
}

// --- forward compatibility -------------------------------------------------------------

#[test]
fn unknown_fields_are_ignored_on_every_event() {
    assert_eq!(
        parse_client(r#"{"type":"typing_start","v":2}"#),
        Ok(ClientEvent::TypingStart)
    );
    assert_eq!(
        parse_client(r#"{"type":"ping","id":1,"trace":"x"}"#),
        Ok(ClientEvent::Ping { id: Some(json!(1)) })
    );
    assert_eq!(
        parse_server(r#"{"type":"typing_stop","user_id":"7","device":"phone"}"#),
        Ok(ServerEvent::TypingStop { user_id: user("7") })
    );
    let ready = parse_server(
        r#"{"type":"ready","user_id":"42","chat_id":"g","epoch":"e","last_seq":0,"recovered":true,"presence":[],"region":"eu"}"#,
    );
    assert!(matches!(ready, Ok(ServerEvent::Ready(_))), "{ready:?}");
}

#[test]
fn an_unknown_type_from_a_client_is_a_typed_error_naming_it() {
    let err = parse_client(r#"{"type":"reaction_add","emoji":"+1"}"#).expect_err("unknown type");
    assert_eq!(err, Error::UnknownType("reaction_add".into()));
    assert_eq!(err.code(), ErrorCode::UnknownType);
}

#[test]
fn an_unknown_type_from_a_server_is_ignorable() {
    assert_eq!(
        parse_server(r#"{"type":"reaction_add","emoji":"+1"}"#),
        Ok(ServerEvent::Unknown)
    );
}

// --- invalid frames --------------------------------------------------------------------

#[test]
fn malformed_json_is_bad_json() {
    for frame in ["{", "not json", "", r#"{"type": "typing_start""#] {
        let err = parse_client(frame).expect_err("malformed");
        assert!(matches!(err, Error::BadJson(_)), "{frame:?} gave {err:?}");
        assert_eq!(err.code(), ErrorCode::BadJson);
    }
}

#[test]
fn json_that_is_not_an_event_is_bad_json() {
    for frame in [
        "[]",
        "42",
        r#""typing_start""#,
        r#"{"kind":"typing_start"}"#,
        r#"{"type":5}"#,
    ] {
        let err = parse_client(frame).expect_err("not an event");
        assert!(matches!(err, Error::BadJson(_)), "{frame:?} gave {err:?}");
    }
}

#[test]
fn a_known_type_with_wrong_fields_is_invalid_message() {
    for frame in [
        r#"{"type":"new_message"}"#,
        r#"{"type":"new_message","message":{}}"#,
        r#"{"type":"new_message","message":{"content":5}}"#,
        r#"{"type":"new_message","message":"hello"}"#,
        r#"{"type":"new_message","message":{"content":"x","client_id":""}}"#,
        r#"{"type":"mark_read"}"#,
    ] {
        let err = parse_client(frame).expect_err("invalid");
        assert!(
            matches!(err, Error::InvalidEvent { .. }),
            "{frame:?} gave {err:?}"
        );
        assert_eq!(err.code(), ErrorCode::InvalidMessage);
    }
}

#[test]
fn a_malformed_known_server_event_is_an_error_not_unknown() {
    let err = parse_server(r#"{"type":"typing_start"}"#).expect_err("no user_id");
    assert!(
        matches!(err, Error::InvalidEvent { ref kind, .. } if kind == "typing_start"),
        "{err:?}"
    );
}

// --- message rules ---------------------------------------------------------------------

#[test]
fn into_parts_trims_and_drops_server_owned_fields() {
    let message: ClientMessage = serde_json::from_value(json!({
        "content": "  hi there \n", "client_id": "c-1", "reply_to": "m-1",
        "id": "spoof", "seq": 999, "sender": {"id": "admin", "username": "root"},
        "created_at": "1999-01-01T00:00:00Z", "chat_id": "other"
    }))
    .expect("parses");
    let parts = message.into_parts(MessageLimits::default()).expect("valid");
    assert_eq!(parts.content, "hi there");
    assert_eq!(parts.client_id, Some(ClientId::new("c-1").expect("valid")));
    assert_eq!(parts.extra, extra(json!({"reply_to": "m-1"})));
}

#[test]
fn a_base_layer_clients_own_id_becomes_its_client_id() {
    let message: ClientMessage =
        serde_json::from_value(json!({"content": "hi", "id": "tmp-5"})).expect("parses");
    let parts = message.into_parts(MessageLimits::default()).expect("valid");
    assert_eq!(parts.client_id, Some(ClientId::new("tmp-5").expect("valid")));
    assert!(parts.extra.is_empty(), "the spoofable id is not passed on");
}

#[test]
fn content_length_counts_unicode_scalars_after_trimming() {
    let at_limit = ClientMessage {
        content: format!("  {}  ", "é".repeat(4000)),
        client_id: None,
        extra: Extra::new(),
    };
    assert!(at_limit.into_parts(MessageLimits::default()).is_ok());
    let over = ClientMessage {
        content: "é".repeat(4001),
        client_id: None,
        extra: Extra::new(),
    };
    assert!(matches!(
        over.into_parts(MessageLimits::default()),
        Err(Error::InvalidEvent { .. })
    ));
    let blank = ClientMessage {
        content: " \n\t ".into(),
        client_id: None,
        extra: Extra::new(),
    };
    assert!(matches!(
        blank.into_parts(MessageLimits::default()),
        Err(Error::InvalidEvent { .. })
    ));
}

/// A value whose arrays and objects nest `levels` deep.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!("leaf"), |inner, i| {
        if i % 2 == 0 {
            json!([inner])
        } else {
            json!({ "k": inner })
        }
    })
}

#[test]
fn identity_looking_fields_are_dropped_at_every_depth_and_the_rest_passes_on() {
    let frame = json!({"type": "new_message", "message": {
        "content": "hi", "client_id": "c-1",
        "sender_id": "bob", "user_id": "bob", "userId": "bob", "author": {"id": "bob", "username": "Bob"},
        "authorName": "Bob", "from": "bob", "sent_by": "bob", "displayName": "Bob",
        "meta": {"sender": {"id": "bob"}, "note": "x"},
        "reply_to": "m-1", "file_name": "a.txt", "format": "md",
        "attachments": [{"by": "bob", "url": "https://a.example/f"}],
    }});
    let Ok(ClientEvent::NewMessage { message }) = parse_client(&frame.to_string()) else {
        panic!("a new_message")
    };
    let parts = message.into_parts(MessageLimits::default()).expect("valid");
    assert_eq!(
        parts.extra,
        extra(json!({
            "meta": {"note": "x"}, "reply_to": "m-1", "file_name": "a.txt", "format": "md",
            "attachments": [{"url": "https://a.example/f"}],
        }))
    );
}

#[test]
fn pass_through_values_nest_at_most_16_levels_and_deeper_is_invalid_message() {
    let message = |levels: usize| ClientMessage {
        content: "hi".into(),
        client_id: None,
        extra: extra(json!({ "deep": nested(levels) })),
    };
    let parts = message(16)
        .into_parts(MessageLimits::default())
        .expect("16 levels pass");
    assert_eq!(parts.extra["deep"], nested(16));
    for levels in [17, 120] {
        let err = message(levels)
            .into_parts(MessageLimits::default())
            .expect_err("too deep");
        assert_eq!(err.code(), ErrorCode::InvalidMessage);
        assert!(
            err.to_string().contains("`deep` nests deeper than 16 levels"),
            "{err}"
        );
    }
}

#[test]
fn whatever_into_parts_accepts_parses_again_inside_every_frame_that_carries_it() {
    // The deepest accepted message, inside a server frame and inside a frame nested a few
    // levels deeper still (as a broker's envelope nests it), reads back.
    let parts = ClientMessage {
        content: "hi".into(),
        client_id: None,
        extra: extra(json!({ "deep": nested(16) })),
    }
    .into_parts(MessageLimits::default())
    .expect("accepted");
    let message = Message {
        extra: parts.extra,
        ..alice_message()
    };
    let frame = encode(&ServerEvent::NewMessage { message });
    assert!(parse_server(&frame).is_ok());
    let enveloped = format!(r#"{{"a":{{"b":{{"c":{{"d":{frame}}}}}}}}}"#);
    assert!(serde_json::from_str::<Value>(&enveloped).is_ok());
}

#[test]
fn the_whole_message_as_stored_is_limited_and_over_is_too_large() {
    // 4,000 four-byte characters and the longest client_id fit the default limit.
    let longest = ClientMessage {
        content: "😀".repeat(4000),
        client_id: Some(ClientId::new("c".repeat(64)).expect("valid")),
        extra: extra(json!({"reply_to": "m-1", "attachments": [{"url": "x".repeat(2000)}]})),
    };
    assert!(longest.into_parts(MessageLimits::default()).is_ok());
    let padded = ClientMessage {
        content: "hi".into(),
        client_id: Some(ClientId::new("c-9").expect("valid")),
        extra: extra(json!({"pad": "x".repeat(21 * 1024)})),
    };
    let err = padded
        .into_parts(MessageLimits::default())
        .expect_err("over 20 KiB");
    assert_eq!(err.code(), ErrorCode::TooLarge);
    assert!(matches!(err, Error::TooLarge { max: 20_480, .. }), "{err:?}");
    // Dropped fields do not count: what is measured is what is stored.
    let spoofing = ClientMessage {
        content: "hi".into(),
        client_id: None,
        extra: extra(json!({"sender_id": "x".repeat(30_000)})),
    };
    assert!(spoofing.into_parts(MessageLimits::default()).is_ok());
    let tight = MessageLimits {
        max_message_bytes: 19,
        ..MessageLimits::default()
    };
    let short = ClientMessage {
        content: "hello".into(),
        client_id: None,
        extra: Extra::new(),
    };
    // {"content":"hello"} is 19 bytes.
    assert!(short.clone().into_parts(tight).is_ok());
    let longer = ClientMessage {
        content: "hello!".into(),
        ..short
    };
    assert_eq!(
        longer.into_parts(tight),
        Err(Error::TooLarge { bytes: 20, max: 19 })
    );
}
