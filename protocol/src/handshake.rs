//! The handshake URL: `GET /ws/chat/{chat_id}/?token=…[&since=…&epoch=…]`.

use serde::Deserialize;

use crate::ids::{AccessToken, ChatId, Epoch, Seq};

/// The query string of the WebSocket handshake.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConnectQuery {
    /// The access JWT. Missing means 4401 after the upgrade.
    pub token: Option<AccessToken>,
    /// Resume: the last `seq` the client has.
    pub since: Option<Seq>,
    /// Resume: the epoch that `since` belongs to.
    pub epoch: Option<Epoch>,
}

/// The path of a chat's WebSocket endpoint, with the base layer's trailing slash.
pub fn ws_path(chat: &ChatId) -> String {
    format!("/ws/chat/{chat}/")
}

/// The path of a chat's history endpoint.
pub fn history_path(chat: &ChatId) -> String {
    format!("/api/chats/{chat}/messages")
}
