//! Redis faults with real processes: redis-server killed, stopped and restarted, and the
//! instances' pub/sub connections cut, while clients chat. The server stays up, sends
//! fail with `unavailable` (never silently), and every client ends either complete (all
//! acknowledged messages, in order, no duplicates) or told `recovered: false`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hablar_protocol::events::{Message, ServerEvent};
use hablar_protocol::ErrorCode;
use hablar_tests::client::Frame;
use hablar_tests::redis::RedisServer;
use hablar_tests::server::no_rate_limit;
use hablar_tests::{tokens, Client, TestServer};
use serde_json::{json, Value};
use tokio::time::{sleep, timeout, Instant};

/// How long any one member may take to finish its part.
const PATIENCE: Duration = Duration::from_secs(15);

fn send(content: &str, client_id: &str) -> Value {
    json!({"type": "new_message", "message": {"content": content, "client_id": client_id}})
}

fn epoch_of(message: &Message) -> String {
    message
        .id
        .as_str()
        .rsplit_once('-')
        .map(|(epoch, _)| epoch.to_owned())
        .expect("ids are {epoch}-{seq}")
}

/// A client that behaves like the SDK: resends a message with the same `client_id` until
/// it is acknowledged, reconnects after a close with `since` and `epoch`, and starts over
/// when told `recovered: false`. It records every breach of the protocol's promises.
struct Member {
    user: &'static str,
    /// `ws://…/ws/chat/room/` of the instance it uses.
    base: String,
    client: Option<Client>,
    epoch: Option<String>,
    last_seq: u64,
    /// (seq, id, client_id) of the messages seen since the last reset, in order.
    seen: Vec<(u64, String, Option<String>)>,
    /// Own `client_id`s acknowledged by their echo.
    acked: Vec<String>,
    /// Got `recovered: false` at least once.
    told: bool,
    /// The `last_seq` of the last `recovered: false`: what the SDK reloaded over HTTP.
    reloaded_up_to: u64,
    /// Gaps, duplicates, messages of another epoch: what must never happen.
    breaches: Vec<String>,
    /// Acknowledgements of all members, so the test can fault Redis mid-traffic.
    progress: Arc<AtomicUsize>,
}

enum Outcome {
    Acked,
    Retry,
    Closed,
}

impl Member {
    fn new(server: &TestServer, user: &'static str, progress: Arc<AtomicUsize>) -> Self {
        Self {
            user,
            base: format!("ws://{}/ws/chat/room/", server.addr),
            client: None,
            epoch: None,
            last_seq: 0,
            seen: Vec::new(),
            acked: Vec::new(),
            told: false,
            reloaded_up_to: 0,
            breaches: Vec::new(),
            progress,
        }
    }

    /// Connects (resuming when it has a position), retrying refusals while the store is
    /// away (1011) or not yet re-provisioned after losing its data: no chat yet (4404),
    /// or the chat but not yet its members (4403; `provision` writes the chat first, as
    /// an existing backend would). A 4403 that lasted would still fail the test, by
    /// its deadline.
    async fn connect(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(
                Instant::now() < deadline,
                "{}: not admitted within {PATIENCE:?}",
                self.user
            );
            let mut url = format!("{}?token={}", self.base, tokens::token(self.user));
            if let Some(epoch) = &self.epoch {
                url.push_str(&format!("&since={}&epoch={epoch}", self.last_seq));
            }
            let Ok(mut client) = Client::connect(&url).await else {
                sleep(Duration::from_millis(50)).await;
                continue;
            };
            match client.next_frame(Duration::from_secs(5)).await {
                Some(Frame::Json(value)) if value["type"] == "ready" => {
                    let ServerEvent::Ready(ready) =
                        hablar_protocol::events::parse_server(&value.to_string()).expect("ready parses")
                    else {
                        unreachable!()
                    };
                    if self.epoch.is_some() && !ready.recovered {
                        // The SDK reloads history over HTTP and continues from here.
                        self.told = true;
                        self.seen.clear();
                        self.last_seq = ready.last_seq.0;
                        self.reloaded_up_to = ready.last_seq.0;
                    }
                    if self.epoch.is_none() {
                        self.last_seq = ready.last_seq.0;
                    }
                    self.epoch = Some(ready.epoch.as_str().to_owned());
                    self.client = Some(client);
                    return;
                }
                Some(Frame::Close(1011 | 4403 | 4404 | 1012 | 1006)) | None => {
                    sleep(Duration::from_millis(50)).await;
                }
                other => panic!("{}: unexpected answer to a handshake: {other:?}", self.user),
            }
        }
    }

    fn on_message(&mut self, message: &Message) {
        let seq = message.seq.expect("numbered").0;
        let id = message.id.as_str().to_owned();
        if self.epoch.as_deref() != Some(epoch_of(message).as_str()) {
            self.breaches
                .push(format!("{}: message {id} of another epoch", self.user));
            return;
        }
        if seq == self.last_seq + 1 {
            self.last_seq = seq;
            let client_id = message.client_id.as_ref().map(|c| c.as_str().to_owned());
            self.seen.push((seq, id, client_id));
        } else if seq <= self.last_seq
            && (seq <= self.reloaded_up_to || self.seen.iter().any(|(_, seen, _)| *seen == id))
        {
            // The acknowledgement of a resend: the stored message again, which the SDK
            // matches by id (in what it saw, or in the history it reloaded).
        } else {
            self.breaches.push(format!(
                "{}: got seq {seq} after {} (gap or duplicate)",
                self.user, self.last_seq
            ));
            self.last_seq = self.last_seq.max(seq);
        }
    }

    /// Reads until `client_id` is acknowledged, refused, or the socket closes.
    async fn await_ack(&mut self, client_id: &str) -> Outcome {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let Some(client) = self.client.as_mut() else {
                return Outcome::Closed;
            };
            let frame = client
                .next_frame(deadline.saturating_duration_since(Instant::now()))
                .await;
            let value = match frame {
                Some(Frame::Json(value)) => value,
                Some(Frame::Close(_)) | None => {
                    self.client = None;
                    return Outcome::Closed;
                }
            };
            match value["type"].as_str() {
                Some("new_message") => {
                    let message: Message =
                        serde_json::from_value(value["message"].clone()).expect("a message");
                    self.on_message(&message);
                    if message.client_id.as_ref().map(|c| c.as_str()) == Some(client_id) {
                        return Outcome::Acked;
                    }
                }
                Some("error") if value["client_id"] == client_id => {
                    assert_eq!(
                        value["code"], "unavailable",
                        "{}: a store failure is reported as unavailable",
                        self.user
                    );
                    return Outcome::Retry;
                }
                _ => {}
            }
        }
    }

    /// Sends `count` messages one after the other, each until acknowledged.
    async fn send_all(mut self, count: usize) -> Self {
        let started = Instant::now();
        for i in 0..count {
            let client_id = format!("{}-{i}", self.user);
            loop {
                assert!(
                    started.elapsed() < PATIENCE,
                    "{}: stuck at {client_id}",
                    self.user
                );
                if self.client.is_none() {
                    self.connect().await;
                }
                let client = self.client.as_mut().expect("connected");
                if client
                    .send(tokio_tungstenite::tungstenite::Message::text(
                        send(&format!("{i}"), &client_id).to_string(),
                    ))
                    .await
                    .is_err()
                {
                    self.client = None;
                    continue;
                }
                match self.await_ack(&client_id).await {
                    Outcome::Acked => {
                        self.acked.push(client_id.clone());
                        self.progress.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Outcome::Retry => sleep(Duration::from_millis(30)).await,
                    Outcome::Closed => {}
                }
            }
        }
        self
    }

    /// Reads until it has seen `last` of `epoch` (reconnecting as needed).
    async fn catch_up_to(&mut self, epoch: &str, last: u64) {
        let started = Instant::now();
        while self.epoch.as_deref() != Some(epoch) || self.last_seq < last {
            assert!(
                started.elapsed() < PATIENCE,
                "{}: stuck at seq {}",
                self.user,
                self.last_seq
            );
            if self.client.is_none() {
                self.connect().await;
                continue;
            }
            let frame = self
                .client
                .as_mut()
                .expect("connected")
                .next_frame(Duration::from_secs(2))
                .await;
            match frame {
                Some(Frame::Json(value)) if value["type"] == "new_message" => {
                    let message: Message =
                        serde_json::from_value(value["message"].clone()).expect("a message");
                    self.on_message(&message);
                }
                Some(Frame::Json(_)) => {}
                Some(Frame::Close(_)) | None => self.client = None,
            }
        }
    }
}

/// The stored messages, oldest first, as (seq, client_id), and the store's epoch, read
/// through the server.
async fn store(server: &TestServer) -> (Vec<(u64, String)>, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, page) = server
            .history("room", &tokens::token("alice"), "?limit=100")
            .await;
        if status == 200 {
            let messages: Vec<Message> = serde_json::from_value(page["messages"].clone()).expect("messages");
            let epoch = messages.first().map(epoch_of).unwrap_or_default();
            let stored = messages
                .iter()
                .map(|m| {
                    let client_id = m.client_id.as_ref().map(|c| c.as_str().to_owned());
                    (m.seq.expect("seq").0, client_id.unwrap_or_default())
                })
                .collect();
            return (stored, epoch);
        }
        assert!(Instant::now() < deadline, "history never answered: {status}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Re-provisions the chat after Redis lost it, as the app that owns memberships would.
async fn provision(server: &TestServer) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let url = format!("{}/api/admin/chats/room", server.http_url());
        let put = server
            .http
            .put(url)
            .bearer_auth(hablar_tests::server::ADMIN_KEY)
            .send()
            .await;
        if put.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "redis never came back");
        sleep(Duration::from_millis(50)).await;
    }
    for user in ["alice", "bob"] {
        server.add_member("room", user).await;
    }
}

enum Fault {
    /// SIGKILL: Redis comes back empty (no persistence), the chat gets a new epoch.
    KillLosingData,
    /// SHUTDOWN SAVE and restart: Redis comes back with its data.
    RestartKeepingData,
}

/// Two members on two instances send 20 messages each while Redis fails and returns.
async fn chat_through(fault: Fault) {
    let mut redis = RedisServer::start().await;
    let a = redis.instance_with(no_rate_limit).await;
    let b = redis.instance_with(no_rate_limit).await;
    a.create_chat("room", &["alice", "bob"]).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let mut alice = Member::new(&a, "alice", progress.clone());
    let mut bob = Member::new(&b, "bob", progress.clone());
    alice.connect().await;
    bob.connect().await;
    let alice = tokio::spawn(alice.send_all(20));
    let bob = tokio::spawn(bob.send_all(20));
    let deadline = Instant::now() + PATIENCE;
    while progress.load(Ordering::Relaxed) < 10 {
        assert!(Instant::now() < deadline, "no traffic before the fault");
        sleep(Duration::from_millis(2)).await;
    }
    match fault {
        Fault::KillLosingData => redis.kill(),
        Fault::RestartKeepingData => redis.stop_keeping_data(),
    }
    sleep(Duration::from_millis(300)).await;
    redis.restart().await;
    if matches!(fault, Fault::KillLosingData) {
        provision(&a).await;
    }
    let mut alice = timeout(PATIENCE, alice)
        .await
        .expect("alice finished")
        .expect("alice ran");
    let mut bob = timeout(PATIENCE, bob)
        .await
        .expect("bob finished")
        .expect("bob ran");

    let (stored, epoch) = store(&a).await;
    let seqs: Vec<u64> = stored.iter().map(|(seq, _)| *seq).collect();
    let first = seqs.first().copied().unwrap_or(1);
    assert_eq!(
        seqs,
        (first..first + seqs.len() as u64).collect::<Vec<_>>(),
        "the store has no gap"
    );
    let stored_ids: Vec<&str> = stored.iter().map(|(_, id)| id.as_str()).collect();
    let unique: HashSet<&str> = stored_ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        stored_ids.len(),
        "no message stored twice: {stored_ids:?}"
    );
    let last = seqs.last().copied().unwrap_or(0);
    for member in [&mut alice, &mut bob] {
        member.catch_up_to(&epoch, last).await;
    }
    for member in [&alice, &bob] {
        assert!(member.breaches.is_empty(), "{:?}", member.breaches);
        // What the member holds is exactly the store's tail.
        let held: Vec<u64> = member.seen.iter().map(|(seq, _, _)| *seq).collect();
        assert!(
            held.len() <= seqs.len() && held == seqs[seqs.len() - held.len()..],
            "{} holds {:?} (told: {}), the store {stored:?}",
            member.user,
            member.seen,
            member.told
        );
        if !member.told {
            assert_eq!(held, seqs, "{} was not told, so it holds everything", member.user);
        }
    }
    match fault {
        Fault::RestartKeepingData => {
            // Nothing acknowledged was lost, in the store or at any member.
            for id in alice.acked.iter().chain(&bob.acked) {
                assert!(unique.contains(id.as_str()), "acknowledged {id} was lost");
            }
            assert_eq!(stored.len(), 40);
        }
        Fault::KillLosingData => {
            // The store lost what it held: whoever had seen any of it must have been told.
            for member in [&alice, &bob] {
                assert!(
                    member.told || member.seen.len() == stored.len(),
                    "{} kept a history the store no longer has, untold",
                    member.user
                );
            }
            assert!(alice.told && bob.told, "both had seen messages of the lost epoch");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_redis_during_traffic_loses_no_acknowledged_message() {
    chat_through(Fault::RestartKeepingData).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_during_traffic_tells_every_client_recovered_false() {
    chat_through(Fault::KillLosingData).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_sends_fail_with_unavailable_and_sockets_stay_open() {
    let mut redis = RedisServer::start().await;
    let a = redis.instance().await;
    let b = redis.instance().await;
    a.create_chat("room", &["alice", "bob"]).await;
    let mut alice = a.join("room", "alice").await;
    let mut bob = b.join("room", "bob").await;
    redis.stop_keeping_data();
    alice.send_json(&send("hello", "c1")).await;
    match alice.recv_until(|e| matches!(e, ServerEvent::Error(_))).await {
        ServerEvent::Error(err) => {
            assert_eq!(err.code, ErrorCode::Unavailable);
            assert_eq!(err.client_id.as_ref().map(|c| c.as_str()), Some("c1"));
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    alice.send_json(&json!({"type": "ping", "id": "p"})).await;
    assert!(
        matches!(alice.recv_event().await, ServerEvent::Pong { .. }),
        "still open"
    );
    let (status, _) = a.history("room", &tokens::token("alice"), "").await;
    assert_eq!(status, 503, "HTTP says unavailable too");
    redis.restart().await;
    // The SDK's outbox resends with the same client_id until it is acknowledged.
    let deadline = Instant::now() + PATIENCE;
    let stored = loop {
        alice.send_json(&send("hello", "c1")).await;
        match alice
            .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. } | ServerEvent::Error(_)))
            .await
        {
            ServerEvent::NewMessage { message } => break message,
            ServerEvent::Error(err) if err.code == ErrorCode::Unavailable => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline, "never recovered");
        sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stored.seq.map(|s| s.0), Some(1));
    // Bob's instance resubscribed by itself: the message reaches him live.
    let got = bob
        .recv_until(|e| matches!(e, ServerEvent::NewMessage { .. }))
        .await;
    assert!(matches!(got, ServerEvent::NewMessage { message } if message == stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_an_instances_pubsub_is_cut_reach_its_clients_in_order() {
    let redis = RedisServer::start().await;
    let a = redis.instance_with(no_rate_limit).await;
    let b = redis.instance_with(no_rate_limit).await;
    a.create_chat("room", &["alice", "bob"]).await;
    let mut alice = a.join("room", "alice").await;
    let mut bob = b.join("room", "bob").await;
    let mut expected = 0;
    for round in 0..5 {
        // Cuts every pub/sub connection (both instances); command connections stay.
        redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        for i in 0..5 {
            bob.send_json(&send(&format!("{round}.{i}"), &format!("r{round}-{i}")))
                .await;
        }
        expected += 5;
        let mut got = Vec::new();
        while got.len() < 5 {
            match alice.next_frame(Duration::from_secs(5)).await {
                Some(Frame::Json(v)) if v["type"] == "new_message" => {
                    got.push(v["message"]["seq"].as_u64().expect("seq"));
                }
                Some(Frame::Json(_)) => {}
                other => panic!("alice lost her socket: {other:?}"),
            }
        }
        let want: Vec<u64> = (expected - 4..=expected).collect();
        assert_eq!(
            got, want,
            "round {round}: the gap was filled from the stream, in order"
        );
    }
    alice.expect_silence(Duration::from_millis(200)).await;
}

/// Redis forgets its scripts when it restarts (the script cache is never persisted), and
/// a connection's messages are sent to it pipelined. The batch of one connection must
/// keep its order even when it meets an empty script cache, while another connection
/// loads the script in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_keeps_its_order_when_redis_loses_its_scripts() {
    const BURST: usize = 150;
    let redis = RedisServer::start().await;
    let server = redis.instance_with(no_rate_limit).await;
    server.create_chat("room", &["alice", "bob", "carol"]).await;
    let mut bob = server.join("room", "bob").await;
    let mut alice = server.join("room", "alice").await;
    let mut carol = server.join("room", "carol").await;
    // carol keeps loading the script from her own connection while alice's burst runs.
    let chatter = tokio::spawn(async move {
        for i in 0..BURST {
            carol.send_json(&send(&format!("c{i}"), &format!("c-{i}"))).await;
            tokio::task::yield_now().await;
        }
        carol
    });
    for i in 0..BURST {
        if i % 25 == 0 {
            assert_eq!(redis.command(&["SCRIPT", "FLUSH"]), "OK");
        }
        alice.send_json(&send(&format!("a{i}"), &format!("a-{i}"))).await;
    }
    let mut from_alice = Vec::new();
    let mut seqs = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while from_alice.len() < BURST {
        assert!(
            Instant::now() < deadline,
            "alice's burst did not arrive: {from_alice:?}"
        );
        if let ServerEvent::NewMessage { message } = bob.recv_event().await {
            seqs.push(message.seq.expect("seq").0);
            if message.sender.id.as_str() == "alice" {
                from_alice.push(message.content);
            }
        }
    }
    let sent: Vec<String> = (0..BURST).map(|i| format!("a{i}")).collect();
    assert_eq!(from_alice, sent, "alice's messages in the order she sent them");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs ascend: {seqs:?}");
    drop(chatter.await.expect("carol"));
}

/// The `new_message` frames `client` receives within `within`, as (seq, client_id).
async fn messages_within(client: &mut Client, within: Duration) -> Vec<(u64, String)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while let Some(frame) = client
        .next_frame(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        match frame {
            Frame::Json(v) if v["type"] == "new_message" => got.push((
                v["message"]["seq"].as_u64().expect("seq"),
                v["message"]["client_id"].as_str().unwrap_or_default().to_owned(),
            )),
            Frame::Json(_) => {}
            Frame::Close(code) => panic!("the socket closed: {code}"),
        }
    }
    got
}

/// The echo of a resend (the stored message, sent straight back to the sender) must not
/// overtake messages before it that the sender's instance has not fanned out yet: the
/// SDK takes seqs in order and drops anything at or below the newest it has, so an echo
/// of seq 2 before seq 1 would cost the app message 1. (Seen in CI: a send stored just as
/// Redis restarted, resent, echoed ahead of what the instance's pub/sub had missed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resends_echo_never_overtakes_messages_its_instance_has_not_delivered() {
    let redis = RedisServer::start().await;
    // Instance b talks to Redis as its own ACL user, so that its pub/sub alone can be
    // cut and kept out (revoking channels closes its subscription and refuses a new one).
    redis.command(&["ACL", "SETUSER", "hb", "on", ">pw", "~*", "&*", "+@all"]);
    let a = redis.instance_with(no_rate_limit).await;
    let as_hb = format!("redis://hb:pw@127.0.0.1:{}/", redis.port());
    let b = redis
        .instance_with(|config| {
            no_rate_limit(config);
            config.redis_url = Some(hablar_server::Secret::new(as_hb));
        })
        .await;
    a.create_chat("room", &["alice", "bob"]).await;
    let mut alice = a.join("room", "alice").await;
    let mut bob_on_a = a.join("room", "bob").await;
    let mut bob = b.join("room", "bob").await;
    redis.command(&["ACL", "SETUSER", "hb", "resetchannels"]);

    // Stored while b hears nothing: seq 1 from alice, seq 2 from bob as "b1" (through a,
    // as when his first try's echo was lost with the connection that carried it).
    alice.send_json(&send("one", "a1")).await;
    let first = messages_within(&mut alice, Duration::from_millis(300)).await;
    assert_eq!(first, [(1, "a1".into())], "stored first");
    bob_on_a.send_json(&send("two", "b1")).await;
    let second = messages_within(&mut alice, Duration::from_millis(300)).await;
    assert_eq!(second, [(2, "b1".into())], "stored second");
    // Bob resends "b1" through b: a duplicate, answered with the stored seq 2.
    bob.send_json(&send("two", "b1")).await;
    let early = messages_within(&mut bob, Duration::from_millis(500)).await;
    assert_eq!(early, [], "nothing may reach bob on b before seq 1 does");

    // b's pub/sub comes back and fills its gap from the stream.
    redis.command(&["ACL", "SETUSER", "hb", "allchannels"]);
    let late = messages_within(&mut bob, Duration::from_secs(3)).await;
    assert_eq!(
        late,
        [(1, "a1".into()), (2, "b1".into())],
        "bob gets both in order, once each; seq 2 acknowledges his resend"
    );
}
