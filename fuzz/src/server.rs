//! The server-frame target: the real server (`hablar_server::serve` through the tests'
//! `TestServer`, memory backend, rate limits out of the way), started once per fuzz
//! process, and one WebSocket connection to it. Each input goes out as one frame followed
//! by a `ping`; its `pong` must come back, and a `new_message` must be answered (stored
//! and echoed, or refused with an `error`), or the connection must close with an allowed
//! code (after which the target connects again). A panic anywhere, a server task's
//! included, aborts the process, so libFuzzer reports it as a crash.

use std::sync::{Mutex, OnceLock, PoisonError};

use hablar_protocol::events::{parse_client, ClientEvent};
use hablar_tests::client::{Frame, TIMEOUT};
use hablar_tests::{Backend, Client, TestServer};
use serde_json::json;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;

/// The chat the fuzzer talks in, and its one member.
const CHAT: &str = "fuzz";
const USER: &str = "fuzzer";

/// How a connection may end after a frame: 1009, a frame over the size cap. Anything else
/// (1011 for a connection task that died, 1006 for a socket dropped without a close) is a
/// crash: no well-formed frame from a member may cost it its connection.
const ALLOWED_CLOSES: [u16; 1] = [1009];

/// Everything that lives as long as the fuzz process.
struct Harness {
    /// Runs the server's tasks on a worker thread while the fuzz thread drives the client.
    runtime: Runtime,
    /// The server; dropping it would stop it.
    server: TestServer,
    /// The connection every input is sent on.
    client: Client,
    /// The `id` of the next `ping`, so that a pong answers this input's ping and no other.
    next_ping: u64,
}

impl Harness {
    fn start() -> Self {
        abort_on_panic();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (server, client) = runtime.block_on(async {
            let server = TestServer::start_with(Backend::Memory, |config| {
                // Two frames per input, thousands of inputs a second, and a reconnect
                // after every allowed close: no limit may be what ends a connection.
                config.limits.rate_per_sec = 1e9;
                config.limits.rate_burst = u32::MAX;
                config.limits.typing_rate_per_sec = 1e9;
                config.limits.typing_burst = u32::MAX;
                config.limits.connect_rate_per_sec = 1e9;
                config.limits.connect_burst = u32::MAX;
                config.limits.max_connections_per_user = 1_000;
                // Every stored message is kept; a short history bounds the fuzzer's memory.
                config.limits.history_retention = 100;
            })
            .await;
            server.create_chat(CHAT, &[USER]).await;
            let client = server.join(CHAT, USER).await;
            (server, client)
        });
        Self {
            runtime,
            server,
            client,
            next_ping: 0,
        }
    }

    /// Sends `frame`, then a ping, and waits for that ping's pong (and, for a
    /// `new_message`, its echo or `error`), or for an allowed close.
    fn exchange(&mut self, frame: Message, new_message: bool) {
        self.next_ping += 1;
        let id = self.next_ping;
        let ping = Message::text(json!({ "type": "ping", "id": id }).to_string());
        self.runtime.block_on(async {
            // A send fails only when the server has closed; the read below says how.
            let _ = self.client.send(frame).await;
            let _ = self.client.send(ping).await;
            let mut ponged = false;
            // One input at a time, so an echo or error seen now answers this frame.
            let mut answered = !new_message;
            loop {
                match self.client.next_frame(TIMEOUT).await {
                    Some(Frame::Json(event)) => {
                        match event["type"].as_str() {
                            Some("pong") if event["id"] == id => ponged = true,
                            Some("new_message" | "error") => answered = true,
                            _ => {}
                        }
                        if ponged && answered {
                            return;
                        }
                    }
                    Some(Frame::Close(code)) => {
                        assert!(
                            ALLOWED_CLOSES.contains(&code),
                            "the server closed the connection with {code} after a frame"
                        );
                        self.client = self.server.join(CHAT, USER).await;
                        return;
                    }
                    None if ponged => {
                        panic!("a new_message was neither echoed nor refused within {TIMEOUT:?}")
                    }
                    None => panic!("no pong within {TIMEOUT:?}: the connection is dead"),
                }
            }
        });
    }
}

/// tokio catches a panic inside a task and lets the process go on; libFuzzer must see it.
/// (libfuzzer-sys installs the same hook; this one does not depend on that.)
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// Sends one input to the server: as a text frame when it is UTF-8, otherwise as a
/// binary frame (which the server must refuse with an `error`, not a close).
pub fn check(data: &[u8]) {
    static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();
    let harness = HARNESS.get_or_init(|| Mutex::new(Harness::start()));
    let mut harness = harness.lock().unwrap_or_else(PoisonError::into_inner);
    match std::str::from_utf8(data) {
        Ok(text) => {
            let new_message = matches!(parse_client(text), Ok(ClientEvent::NewMessage { .. }));
            harness.exchange(Message::text(text), new_message);
        }
        Err(_) => harness.exchange(Message::binary(data.to_vec()), false),
    }
}
