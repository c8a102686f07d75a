//! What a server does to the pass-through fields of a client's message before it stores
//! them: it bounds their nesting depth, drops every field whose name looks like an
//! identity (at every depth, so that only the server's `sender` says who wrote a
//! message), and measures the message as it will be stored.

use std::io;

use serde::Serialize;
use serde_json::Value;

use crate::events::Extra;
use crate::ids::ClientId;

/// The words that make a field name an identity claim: a field is dropped when one word
/// of its name, or two adjacent words joined, is one of these (see [`is_identity_field`]).
pub const IDENTITY_WORDS: [&str; 22] = [
    "sender",
    "user",
    "userid",
    "uid",
    "author",
    "owner",
    "creator",
    "poster",
    "from",
    "by",
    "member",
    "account",
    "profile",
    "username",
    "displayname",
    "nickname",
    "nick",
    "avatar",
    "identity",
    "actor",
    "principal",
    "impersonate",
];

/// The words of a field name, lowercased: split at `_`, `-`, `.`, whitespace and where a
/// lowercase letter is followed by an uppercase one (`displayName` → `display`, `name`).
/// Empty words (from separators in a row) are left out.
pub fn words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut after_lower = false;
    for c in name.chars() {
        let separator = matches!(c, '_' | '-' | '.') || c.is_whitespace();
        let boundary = separator || (after_lower && c.is_uppercase());
        if boundary && !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        after_lower = c.is_lowercase();
        if !separator {
            word.extend(c.to_lowercase());
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Whether a pass-through field called `name` claims an identity and is dropped: one of
/// its [`words`], or two adjacent ones joined, is in [`IDENTITY_WORDS`]. So `sender_id`,
/// `userId`, `author`, `sent_by` and `displayName` are, while `reply_to`, `attachments`,
/// `file_name` and `format` are not.
pub fn is_identity_field(name: &str) -> bool {
    let words = words(name);
    let listed = |word: &str| IDENTITY_WORDS.contains(&word);
    words.iter().any(|word| listed(word))
        || words
            .windows(2)
            .any(|pair| listed(&format!("{}{}", pair[0], pair[1])))
}

/// Drops every identity field ([`is_identity_field`]) from `extra` and from every object
/// inside it, objects in arrays included. Recursion is as deep as the value, so check
/// [`deeper_than`] first.
pub fn drop_identity_fields(extra: &mut Extra) {
    extra.retain(|name, _| !is_identity_field(name));
    for value in extra.values_mut() {
        drop_identity_fields_in(value);
    }
}

fn drop_identity_fields_in(value: &mut Value) {
    match value {
        Value::Object(map) => drop_identity_fields(map),
        Value::Array(items) => items.iter_mut().for_each(drop_identity_fields_in),
        _ => {}
    }
}

/// Whether arrays and objects nest in `value` more than `levels` deep. A string or
/// number is 0 deep, `[]` and `{"a": 1}` are 1 deep, `[{"a": []}]` is 3 deep. Looks no
/// deeper than `levels + 1`, so a hostile value costs no more than an accepted one.
pub fn deeper_than(value: &Value, levels: usize) -> bool {
    match value {
        Value::Array(items) => levels == 0 || items.iter().any(|item| deeper_than(item, levels - 1)),
        Value::Object(map) => levels == 0 || map.values().any(|item| deeper_than(item, levels - 1)),
        _ => false,
    }
}

/// What the server stores of a client's message, in the shape it has in the stored JSON.
#[derive(Serialize)]
struct Stored<'a> {
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a ClientId>,
    #[serde(flatten)]
    extra: &'a Extra,
}

/// Counts the bytes written to it and keeps none of them.
struct ByteCount(usize);

impl io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The size in bytes of a message's client-given part as the server stores it: one JSON
/// object of its `content`, `client_id` and pass-through fields (without the fields the
/// server adds, whose size the server bounds itself).
pub fn stored_bytes(content: &str, client_id: Option<&ClientId>, extra: &Extra) -> usize {
    let mut count = ByteCount(0);
    let stored = Stored {
        content,
        client_id,
        extra,
    };
    serde_json::to_writer(&mut count, &stored).expect("a JSON value with string keys always serialises");
    count.0
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn extra(value: Value) -> Extra {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn names_split_at_separators_and_camel_case_and_are_lowercased() {
        assert_eq!(words("sender_id"), ["sender", "id"]);
        assert_eq!(words("userId"), ["user", "id"]);
        assert_eq!(words("UserID"), ["user", "id"]);
        assert_eq!(words("displayName"), ["display", "name"]);
        assert_eq!(words("meta.sender"), ["meta", "sender"]);
        assert_eq!(words("sent-by now"), ["sent", "by", "now"]);
        assert_eq!(words("__a..b__"), ["a", "b"]);
        assert_eq!(words("USERNAME"), ["username"]);
        assert_eq!(words(""), Vec::<String>::new());
    }

    #[test]
    fn identity_looking_names_are_recognised_by_word_or_adjacent_pair() {
        for name in [
            "sender",
            "sender_id",
            "user_id",
            "userId",
            "USER_ID",
            "uid",
            "author",
            "authorName",
            "from",
            "sent_by",
            "displayName",
            "display_name",
            "nick_name",
            "user name",
            "owner",
            "createdBy",
            "avatar_url",
            "Impersonate",
            "actor.id",
            "principal",
            "x-member-id",
        ] {
            assert!(is_identity_field(name), "{name} claims an identity");
        }
    }

    #[test]
    fn ordinary_names_are_kept_even_when_they_contain_a_listed_word() {
        for name in [
            "reply_to",
            "attachments",
            "file_name",
            "format",
            "byte_count",
            "users2",
            "fromage",
            "authority",
            "nickel",
            "owners",
            "content_type",
            "id",
            "name",
            "thread",
            "mentions",
        ] {
            assert!(!is_identity_field(name), "{name} is not an identity field");
        }
    }

    #[test]
    fn identity_fields_are_dropped_at_every_depth_and_in_arrays() {
        let mut fields = extra(json!({
            "sender_id": "bob", "user_id": "bob", "author": {"id": "bob", "username": "Bob"},
            "from": "bob", "displayName": "Bob",
            "meta": {"sender": {"id": "bob"}, "note": "x", "deeper": {"ownerId": 1, "keep": [1]}},
            "reply_to": "m-1",
            "attachments": [{"by": "bob", "url": "https://a.example/f"}, [{"userId": 2, "n": 3}]],
        }));
        drop_identity_fields(&mut fields);
        assert_eq!(
            Value::Object(fields),
            json!({
                "meta": {"note": "x", "deeper": {"keep": [1]}},
                "reply_to": "m-1",
                "attachments": [{"url": "https://a.example/f"}, [{"n": 3}]],
            })
        );
    }

    #[test]
    fn depth_counts_nested_arrays_and_objects() {
        fn nested(levels: usize) -> Value {
            (0..levels).fold(json!("leaf"), |inner, i| {
                if i % 2 == 0 {
                    json!([inner])
                } else {
                    json!({ "k": inner })
                }
            })
        }
        assert!(!deeper_than(&json!("x"), 0));
        assert!(deeper_than(&json!([]), 0));
        assert!(!deeper_than(&json!([{"a": []}]), 3));
        assert!(deeper_than(&json!([{"a": []}]), 2));
        assert!(!deeper_than(&nested(16), 16));
        assert!(deeper_than(&nested(17), 16));
        assert!(deeper_than(&nested(120), 16));
    }

    #[test]
    fn the_stored_size_is_the_json_of_content_client_id_and_fields() {
        let client_id = ClientId::new("c-1").expect("valid");
        let fields = extra(json!({"reply_to": "m-1"}));
        let expected = json!({"content": "hé", "client_id": "c-1", "reply_to": "m-1"}).to_string();
        assert_eq!(stored_bytes("hé", Some(&client_id), &fields), expected.len());
        let bare = json!({"content": "hé"}).to_string();
        assert_eq!(stored_bytes("hé", None, &Extra::new()), bare.len());
    }
}
