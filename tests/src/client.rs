//! [`Client`]: a real WebSocket client (tokio-tungstenite) with typed, time-limited reads.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hablar_protocol::events::{self, parse_server, Ready, ServerEvent};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a read waits before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What arrived on a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame, parsed as JSON.
    Json(Value),
    /// A close frame with its code (1005 when none, 1006 when the TCP stream ended).
    Close(u16),
}

/// A test client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Opens `url` without an `Origin` header.
    pub async fn connect(url: &str) -> Result<Self, tungstenite::Error> {
        Self::connect_with_origin(url, None).await
    }

    /// Opens `url` with an optional `Origin` header, like a browser.
    pub async fn connect_with_origin(url: &str, origin: Option<&str>) -> Result<Self, tungstenite::Error> {
        let headers: Vec<_> = origin.map(|origin| ("origin", origin)).into_iter().collect();
        Self::connect_with_headers(url, &headers).await
    }

    /// Opens `url` with extra request headers (`Origin`, `X-Forwarded-For`…).
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Self, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request
                .headers_mut()
                .append(*name, HeaderValue::from_str(value).expect("a header value"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { ws })
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a text frame as it is.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends any frame; `Err` when the connection is gone.
    pub async fn send(&mut self, message: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(message).await
    }

    /// The next text or close frame within `within` (pings and pongs skipped).
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match next {
                None | Some(Err(_)) => return Some(Frame::Close(1006)),
                Some(Ok(Message::Text(text))) => {
                    let value = serde_json::from_str(text.as_str()).expect("server frames are JSON");
                    return Some(Frame::Json(value));
                }
                Some(Ok(Message::Close(frame))) => {
                    // Send the queued close reply at once, as a browser does, so the server
                    // does not wait for it.
                    let _ = self.ws.flush().await;
                    return Some(Frame::Close(frame.map_or(1005, |f| u16::from(f.code))));
                }
                Some(Ok(Message::Binary(_))) => panic!("the server sends no binary frames"),
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next server event as JSON; fails the test on timeout or close.
    pub async fn recv_json(&mut self) -> Value {
        match self.next_frame(TIMEOUT).await {
            Some(Frame::Json(value)) => value,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The next server event, typed; fails the test on timeout or close.
    pub async fn recv_event(&mut self) -> ServerEvent {
        let value = self.recv_json().await;
        parse_server(&value.to_string()).unwrap_or_else(|err| panic!("bad server event {value}: {err}"))
    }

    /// Reads `ready` (must be the next event).
    pub async fn ready(&mut self) -> Ready {
        match self.recv_event().await {
            ServerEvent::Ready(ready) => ready,
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// Skips events until one matches `pred`, and returns it.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&ServerEvent) -> bool) -> ServerEvent {
        loop {
            let event = self.recv_event().await;
            if pred(&event) {
                return event;
            }
        }
    }

    /// The next `new_message`'s message, skipping other events.
    pub async fn next_message(&mut self) -> events::Message {
        match self
            .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
            .await
        {
            ServerEvent::NewMessage { message } => message,
            _ => unreachable!("recv_until returns what it waited for"),
        }
    }

    /// Reads until the close frame and returns its code (skipping events).
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.next_frame(TIMEOUT).await {
                Some(Frame::Close(code)) => return code,
                Some(Frame::Json(_)) => {}
                None => panic!("no close within {TIMEOUT:?}"),
            }
        }
    }

    /// Asserts that no event arrives within `within`; returns what did arrive otherwise.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(frame) = self.next_frame(within).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// Closes normally (1000).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close reply so the server sees a clean close.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}
