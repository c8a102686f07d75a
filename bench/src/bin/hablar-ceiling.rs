//! `hablar-ceiling`: the bare limit a chat server on this stack can reach. A WebSocket
//! broadcast server on tokio + tungstenite (the stack axum uses) that forwards each text
//! frame a client sends, as it is, to every connection of the same `/ws/chat/{id}/` path:
//! no auth, no JSON, no storage, one shared refcounted frame per fan-out, writes batched
//! with one flush. Whatever hablar-server does on top costs throughput against this.
//!
//!     hablar-ceiling [--bind 127.0.0.1:0]
//!
//! Prints `hablar-ceiling listening on http://IP:PORT` once listening.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Chats by path, each a broadcast channel of pre-encoded frames.
type Rooms = Arc<Mutex<HashMap<String, broadcast::Sender<Message>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut bind = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--bind", Some(addr)) => bind = addr,
            _ => {
                eprintln!("usage: hablar-ceiling [--bind ADDR]");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(&bind).await?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "hablar-ceiling listening on http://{}",
        listener.local_addr()?
    )?;
    out.flush()?;
    let rooms: Rooms = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve(stream, rooms.clone()));
    }
}

// tungstenite's handshake callback type fixes the large error variant.
#[allow(clippy::result_large_err)]
async fn serve(stream: TcpStream, rooms: Rooms) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().trim_end_matches('/').to_owned();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await else {
        return;
    };
    let tx = rooms
        .lock()
        .entry(path.clone())
        .or_insert_with(|| broadcast::channel(1024).0)
        .clone();
    let mut rx = tx.subscribe();
    let (mut sink, mut source) = ws.split();
    let reader = async {
        while let Some(Ok(frame)) = source.next().await {
            if let Message::Text(_) = frame {
                // Forward the frame itself: its bytes are shared by every receiver.
                let _ = tx.send(frame);
            }
        }
    };
    let writer = async {
        loop {
            let frame = match rx.recv().await {
                Ok(frame) => frame,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if sink.feed(frame).await.is_err() {
                break;
            }
            // Batch whatever else is queued, then one flush.
            loop {
                match rx.try_recv() {
                    Ok(frame) => {
                        if sink.feed(frame).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
    drop(rx);
    let mut rooms = rooms.lock();
    if rooms.get(&path).is_some_and(|tx| tx.receiver_count() == 0) {
        rooms.remove(&path);
    }
}
