//! Dev mode's seed data: four users and two chats, so that the demo page and browser
//! tests have something to talk in without any setup.

use hablar_protocol::{ChatId, UserId};

use crate::backend::Backend;
use crate::error::Result;

/// Users (id, display name) seeded in dev mode. `mallory` is a member of nothing.
pub const USERS: [(&str, &str); 4] = [
    ("alice", "Alice"),
    ("bob", "Bob"),
    ("carol", "Carol"),
    ("mallory", "Mallory"),
];

/// Chats and their members seeded in dev mode.
pub const CHATS: [(&str, &[&str]); 2] = [
    ("general", &["alice", "bob", "carol"]),
    ("random", &["alice", "bob"]),
];

/// Puts the dev users and chats into `backend`.
pub async fn seed(backend: &dyn Backend) -> Result<()> {
    for (id, name) in USERS {
        backend
            .set_display_name(&UserId::new(id).expect("seed ids are valid"), name)
            .await?;
    }
    for (chat, members) in CHATS {
        let chat = ChatId::new(chat).expect("seed ids are valid");
        backend.create_chat(&chat).await?;
        for member in members {
            backend
                .add_member(&chat, &UserId::new(*member).expect("seed ids are valid"))
                .await?;
        }
    }
    Ok(())
}
