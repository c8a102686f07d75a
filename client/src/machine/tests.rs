//! The connection state machine driven through whole scenarios with injected time.

use super::*;

type M = &'static str;

fn machine() -> Machine<M> {
    Machine::new(Config::default(), 1)
}

/// Everything queued: the first through `poll`, the rest through `take_outputs` (what
/// the wasm glue uses), so every scenario checks that both hand out the same queue.
fn drain(m: &mut Machine<M>) -> Vec<Output<M>> {
    let mut out: Vec<Output<M>> = m.poll().into_iter().collect();
    out.extend(m.take_outputs());
    assert!(m.poll().is_none(), "take_outputs empties the queue");
    out
}

fn states(outputs: &[Output<M>]) -> Vec<State> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::State(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn sent(outputs: &[Output<M>]) -> Vec<Frame<M>> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn ready(epoch: &str, last_seq: u64, recovered: bool) -> Incoming {
    Incoming::Ready {
        user_id: Some("alice".into()),
        epoch: Some(epoch.into()),
        last_seq: Some(last_seq),
        recovered,
        presence: vec![User {
            user_id: "alice".into(),
            username: "Alice".into(),
        }],
    }
}

fn message(seq: Option<u64>, sender: &str, client_id: Option<&str>) -> Incoming {
    Incoming::Message {
        seq,
        id: seq.map(|s| format!("m{s}")),
        client_id: client_id.map(str::to_owned),
        sender_id: Some(sender.into()),
    }
}

fn user(id: &str) -> User {
    User {
        user_id: id.into(),
        username: id.to_uppercase(),
    }
}

/// Connects and opens with `ready` at `now`; returns the outputs of the open.
fn open_with_ready(m: &mut Machine<M>, now: f64, epoch: &str, last_seq: u64) -> Vec<Output<M>> {
    m.connect(now);
    m.on_socket_open(now);
    m.on_frame(now, ready(epoch, last_seq, true));
    drain(m)
}

/// Drops the connection at `now` and lets the reconnect timer fire; returns the
/// reconnect's `Connect` output.
fn drop_and_retry(m: &mut Machine<M>, now: f64, code: u16) -> Output<M> {
    m.on_socket_close(now, code);
    let at = m.next_deadline().expect("a reconnect is scheduled");
    m.tick(at);
    drain(m)
        .into_iter()
        .find(|o| matches!(o, Output::Connect { .. }))
        .expect("a connect after the delay")
}

#[test]
fn connect_then_ready_goes_open_and_never_waits_for_more() {
    let mut m = machine();
    m.connect(0.0);
    let out = drain(&mut m);
    assert_eq!(states(&out), [State::Connecting { attempt: 0 }]);
    assert!(out.contains(&Output::Connect {
        refresh_token: false,
        since: None
    }));
    m.on_socket_open(10.0);
    assert!(
        states(&drain(&mut m)).is_empty(),
        "open only once ready or timed out"
    );
    let verdict = m.on_frame(20.0, ready("e1", 5, true));
    assert_eq!(verdict, Verdict::default());
    let out = drain(&mut m);
    assert_eq!(states(&out), [State::Open]);
    assert!(!out.iter().any(|o| matches!(o, Output::ReloadHistory(_))));
    assert_eq!(m.user_id(), Some("alice"));
    assert_eq!(
        m.presence(),
        [user("alice").clone()].map(|mut u| {
            u.username = "Alice".into();
            u
        })
    );
}

#[test]
fn a_base_layer_peer_is_open_after_the_ready_timeout_and_gets_no_pings() {
    let mut m = machine();
    m.set_user_hint("alice".into());
    m.connect(0.0);
    m.on_socket_open(0.0);
    drain(&mut m);
    assert_eq!(m.next_deadline(), Some(2_000.0));
    m.tick(1_999.0);
    assert_eq!(m.state(), &State::Connecting { attempt: 0 });
    m.tick(2_000.0);
    assert_eq!(states(&drain(&mut m)), [State::Open]);
    // Typing and messages work without any extension.
    m.on_frame(2_100.0, Incoming::TypingStart(user("bob")));
    assert_eq!(m.typers().len(), 1);
    let v = m.on_frame(2_200.0, message(None, "bob", None));
    assert!(v.deliver);
    assert!(m.typers().is_empty(), "a typer's message ends their typing");
    // Hours of silence: never a ping, never declared dead.
    for minute in 1..=120 {
        m.tick(2_200.0 + f64::from(minute) * 60_000.0);
    }
    let out = drain(&mut m);
    assert!(!sent(&out).contains(&Frame::Ping));
    assert_eq!(m.state(), &State::Open);
}

#[test]
fn reconnecting_to_a_base_layer_peer_asks_for_a_history_reload() {
    let mut m = machine();
    m.connect(0.0);
    m.on_socket_open(0.0);
    m.tick(2_000.0);
    drain(&mut m);
    drop_and_retry(&mut m, 3_000.0, 1006);
    m.on_socket_open(5_000.0);
    m.tick(7_000.0);
    let out = drain(&mut m);
    assert_eq!(states(&out), [State::Open]);
    assert!(out.contains(&Output::ReloadHistory(ReloadReason::NoResume)));
}

#[test]
fn a_drop_reconnects_after_a_jittered_delay_and_resumes_from_the_last_seq() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 3);
    assert!(m.on_frame(100.0, message(Some(4), "bob", None)).deliver);
    m.on_socket_close(1_000.0, 1012);
    let out = drain(&mut m);
    let [State::Reconnecting { attempt, delay_ms }] = states(&out)[..] else {
        panic!("expected one reconnecting state, got {out:?}");
    };
    assert_eq!(attempt, 1);
    assert!((0.0..500.0).contains(&delay_ms));
    let at = 1_000.0 + delay_ms;
    assert_eq!(m.next_deadline(), Some(at));
    m.tick(at - 1.0);
    assert!(drain(&mut m).is_empty());
    m.tick(at);
    let out = drain(&mut m);
    assert_eq!(states(&out), [State::Connecting { attempt: 1 }]);
    assert!(out.contains(&Output::Connect {
        refresh_token: false,
        since: Some((4, "e1".into()))
    }));
}

#[test]
fn online_and_visible_skip_the_wait() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    for _ in 0..6 {
        drop_and_retry(&mut m, 100.0, 1006);
    }
    m.on_socket_close(200.0, 1006);
    drain(&mut m);
    assert!(matches!(m.state(), State::Reconnecting { attempt: 7, .. }));
    m.on_online(300.0);
    let out = drain(&mut m);
    assert_eq!(states(&out), [State::Connecting { attempt: 7 }]);
    m.on_socket_close(400.0, 1006);
    drain(&mut m);
    m.on_visible(500.0);
    assert!(matches!(m.state(), State::Connecting { attempt: 8 }));
}

#[test]
fn the_attempt_count_resets_only_after_a_connection_stayed_up() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    drop_and_retry(&mut m, 20_000.0, 1006);
    m.on_socket_open(21_000.0);
    m.on_frame(21_000.0, ready("e1", 0, true));
    drain(&mut m);
    // Up for 1 s only: a flapping server keeps the client backing off.
    m.on_socket_close(22_000.0, 1006);
    assert!(matches!(m.state(), State::Reconnecting { attempt: 2, .. }));
    let at = m.next_deadline().expect("scheduled");
    m.tick(at);
    m.on_socket_open(at);
    m.on_frame(at, ready("e1", 0, true));
    // Up for 10 s: the next drop starts from attempt 1 again.
    m.on_socket_close(at + 10_000.0, 1006);
    assert!(matches!(m.state(), State::Reconnecting { attempt: 1, .. }));
}

#[test]
fn forbidden_and_not_found_fail_without_any_further_attempt() {
    for code in [4403, 4404] {
        let mut m = machine();
        m.connect(0.0);
        m.send("c1".into(), "queued").expect("room");
        m.on_socket_open(10.0);
        m.on_socket_close(20.0, code);
        let out = drain(&mut m);
        assert_eq!(
            states(&out),
            [State::Connecting { attempt: 0 }, State::Failed { code }],
            "never shown open, never retried"
        );
        assert!(out.contains(&Output::Reject {
            client_id: "c1".into(),
            error: SendError::Failed
        }));
        assert_eq!(m.next_deadline(), None);
        m.tick(1e9);
        m.on_online(1e9);
        assert!(drain(&mut m).is_empty());
        assert_eq!(m.send("c2".into(), "late"), Err(SendError::Failed));
    }
}

#[test]
fn unauthorized_refreshes_the_token_once_then_fails() {
    let mut m = machine();
    m.connect(0.0);
    drain(&mut m);
    m.on_socket_open(10.0);
    m.on_socket_close(20.0, 4401);
    let out = drain(&mut m);
    assert!(out.contains(&Output::Connect {
        refresh_token: true,
        since: None
    }));
    assert!(!states(&out)
        .iter()
        .any(|s| matches!(s, State::Reconnecting { .. })));
    m.on_socket_open(30.0);
    m.on_socket_close(40.0, 4401);
    assert_eq!(states(&drain(&mut m)), [State::Failed { code: 4401 }]);
}

#[test]
fn a_token_that_expires_mid_session_gets_a_fresh_refresh() {
    let mut m = machine();
    m.connect(0.0);
    m.on_socket_open(0.0);
    m.on_socket_close(1.0, 4401);
    m.on_socket_open(2.0);
    m.on_frame(3.0, ready("e1", 0, true));
    drain(&mut m);
    // Hours later the refreshed token expires too: once open, the refresh is new again.
    m.on_socket_close(3_600_000.0, 4401);
    let out = drain(&mut m);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Connect {
            refresh_token: true,
            ..
        }
    )));
}

#[test]
fn a_silent_dead_connection_is_detected_by_missing_pongs() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    assert_eq!(m.next_deadline(), Some(25_000.0));
    m.tick(25_000.0);
    assert_eq!(sent(&drain(&mut m)), [Frame::Ping]);
    assert_eq!(m.next_deadline(), Some(35_000.0));
    m.tick(35_000.0);
    let out = drain(&mut m);
    assert_eq!(
        out[0],
        Output::Disconnect {
            code: CLOSE_GIVING_UP
        }
    );
    assert!(matches!(
        states(&out)[..],
        [State::Reconnecting { attempt: 1, .. }]
    ));
}

#[test]
fn any_frame_answers_a_ping_and_a_busy_connection_is_not_pinged() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.tick(25_000.0);
    drain(&mut m);
    m.on_frame(26_000.0, Incoming::Other); // the pong
    m.tick(35_000.0);
    assert_eq!(m.state(), &State::Open);
    m.on_frame(40_000.0, message(Some(1), "bob", None));
    m.tick(50_000.0);
    assert!(sent(&drain(&mut m)).is_empty(), "traffic 10 s ago, no ping yet");
}

#[test]
fn visibility_probes_an_open_connection() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.on_visible(1_000.0);
    assert_eq!(sent(&drain(&mut m)), [Frame::Ping]);
    m.on_visible(1_001.0);
    assert!(sent(&drain(&mut m)).is_empty(), "one probe at a time");
}

#[test]
fn offline_sends_wait_in_the_outbox_and_go_out_once_open() {
    let mut m = machine();
    m.send("c1".into(), "first").expect("room");
    m.connect(0.0);
    m.send("c2".into(), "second").expect("room");
    m.on_socket_open(10.0);
    assert!(sent(&drain(&mut m)).is_empty(), "not before open");
    m.on_frame(20.0, ready("e1", 0, true));
    assert_eq!(
        sent(&drain(&mut m)),
        [Frame::Message("first"), Frame::Message("second")]
    );
    let v = m.on_frame(30.0, message(Some(1), "alice", Some("c1")));
    assert!(v.deliver && v.resolve);
    // The connection drops before c2's echo: it is sent again, with the same payload
    // (and so the same client_id), and its echo is delivered once.
    drop_and_retry(&mut m, 40.0, 1006);
    m.on_socket_open(1_000.0);
    m.on_frame(1_000.0, ready("e1", 2, true));
    assert_eq!(sent(&drain(&mut m)), [Frame::Message("second")]);
    let replayed = m.on_frame(1_001.0, message(Some(2), "alice", Some("c2")));
    assert!(replayed.deliver && replayed.resolve);
    let echo_of_resend = m.on_frame(1_002.0, message(Some(2), "alice", Some("c2")));
    assert_eq!(echo_of_resend, Verdict::default(), "duplicate, already resolved");
}

/// The CI failure of session 4, seen from the SDK: a server echoed a resend (seq 16)
/// before seq 15. Taking 16 would have made 15 look seen when it came, and the app
/// would never have had it.
#[test]
fn a_message_past_a_gap_makes_the_sdk_resume_and_nothing_is_lost() {
    let mut m = machine();
    m.send("c16".into(), "sixteen").expect("room");
    open_with_ready(&mut m, 0.0, "e1", 14);
    let early = m.on_frame(10.0, message(Some(16), "alice", Some("c16")));
    assert_eq!(early, Verdict::default(), "neither delivered nor acknowledged");
    let out = drain(&mut m);
    assert_eq!(
        out[0],
        Output::Disconnect {
            code: CLOSE_GIVING_UP
        }
    );
    assert!(matches!(states(&out)[..], [State::Reconnecting { .. }]));
    let at = m.next_deadline().expect("a reconnect is scheduled");
    m.tick(at);
    assert!(drain(&mut m).contains(&Output::Connect {
        refresh_token: false,
        since: Some((14, "e1".into()))
    }));
    m.on_socket_open(at + 10.0);
    m.on_frame(at + 10.0, ready("e1", 16, true));
    assert_eq!(
        sent(&drain(&mut m)),
        [Frame::Message("sixteen")],
        "still unacknowledged"
    );
    let v15 = m.on_frame(at + 11.0, message(Some(15), "bob", None));
    let v16 = m.on_frame(at + 12.0, message(Some(16), "alice", Some("c16")));
    assert!(v15.deliver && !v15.resolve);
    assert!(v16.deliver && v16.resolve);
    let echo = m.on_frame(at + 13.0, message(Some(16), "alice", Some("c16")));
    assert!(!echo.deliver, "the resend's echo is not a second message");
}

#[test]
fn a_full_outbox_is_an_error_not_a_drop() {
    let cfg = Config {
        outbox_limit: 2,
        ..Config::default()
    };
    let mut m: Machine<M> = Machine::new(cfg, 1);
    m.send("a".into(), "a").expect("room");
    m.send("b".into(), "b").expect("room");
    assert_eq!(m.send("c".into(), "c"), Err(SendError::OutboxFull));
}

#[test]
fn server_errors_reject_or_retry_the_message_they_are_about() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.send("bad".into(), "bad").expect("room");
    m.send("later".into(), "later").expect("room");
    drain(&mut m);
    let v = m.on_frame(
        10.0,
        Incoming::Error {
            code: "invalid_message".into(),
            client_id: Some("bad".into()),
        },
    );
    assert!(v.reject);
    let v = m.on_frame(
        20.0,
        Incoming::Error {
            code: "unavailable".into(),
            client_id: Some("later".into()),
        },
    );
    assert!(!v.reject, "not stored yet, but not lost");
    m.tick(2_020.0);
    assert_eq!(sent(&drain(&mut m)), [Frame::Message("later")]);
}

#[test]
fn typing_goes_out_only_while_open_and_stops_on_send() {
    let mut m = machine();
    m.keystroke(0.0);
    m.connect(0.0);
    m.keystroke(1.0);
    assert!(sent(&drain(&mut m)).is_empty(), "typing is never queued");
    m.on_socket_open(2.0);
    m.on_frame(2.0, ready("e1", 0, true));
    drain(&mut m);
    m.keystroke(100.0);
    m.keystroke(200.0);
    m.keystroke(3_100.0);
    assert_eq!(sent(&drain(&mut m)), [Frame::TypingStart, Frame::TypingStart]);
    m.send("c1".into(), "hi").expect("room");
    assert_eq!(sent(&drain(&mut m)), [Frame::TypingStop, Frame::Message("hi")]);
    m.keystroke(4_000.0);
    assert_eq!(sent(&drain(&mut m)), [Frame::TypingStart]);
    assert_eq!(m.next_deadline(), Some(6_000.0));
    m.tick(6_000.0);
    assert_eq!(sent(&drain(&mut m)), [Frame::TypingStop]);
}

#[test]
fn typers_exclude_ourselves_and_leave_on_stop_message_leave_or_expiry() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.on_frame(10.0, Incoming::TypingStart(user("alice")));
    assert!(
        m.typers().is_empty(),
        "our own typing echoed by a peer is filtered"
    );
    for who in ["bob", "carol", "dave", "erin"] {
        m.on_frame(10.0, Incoming::TypingStart(user(who)));
    }
    assert_eq!(m.typers().len(), 4);
    m.on_frame(
        20.0,
        Incoming::TypingStop {
            user_id: "bob".into(),
        },
    );
    m.on_frame(30.0, message(Some(1), "carol", None));
    m.on_frame(
        40.0,
        Incoming::PresenceLeave {
            user_id: "dave".into(),
        },
    );
    let names: Vec<&str> = m.typers().iter().map(|t| t.user_id.as_str()).collect();
    assert_eq!(names, ["erin"]);
    drain(&mut m);
    m.tick(6_009.0);
    assert_eq!(m.typers().len(), 1);
    m.tick(6_010.0);
    assert_eq!(drain(&mut m), [Output::TypersChanged]);
    assert!(m.typers().is_empty());
}

#[test]
fn typers_and_the_typing_lease_are_forgotten_with_the_connection() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.on_frame(10.0, Incoming::TypingStart(user("bob")));
    m.keystroke(10.0);
    drain(&mut m);
    m.on_socket_close(20.0, 1006);
    let out = drain(&mut m);
    assert!(out.contains(&Output::TypersChanged));
    assert!(m.typers().is_empty());
    assert!(!sent(&out).contains(&Frame::TypingStop), "nothing to send it on");
}

#[test]
fn an_unrecovered_resume_asks_the_app_to_reload_history() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 9);
    drop_and_retry(&mut m, 10.0, 1012);
    m.on_socket_open(1_000.0);
    m.on_frame(1_000.0, ready("e2", 0, false));
    let out = drain(&mut m);
    assert!(out.contains(&Output::ReloadHistory(ReloadReason::NotRecovered)));
    assert!(m.on_frame(1_001.0, message(Some(1), "bob", None)).deliver);
}

#[test]
fn close_stops_typing_closes_the_socket_and_rejects_waiting_sends() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.keystroke(1.0);
    m.send("c1".into(), "hi").expect("room");
    m.keystroke(2.0);
    drain(&mut m);
    m.close();
    let out = drain(&mut m);
    assert_eq!(
        out,
        [
            Output::Send(Frame::TypingStop),
            Output::Disconnect { code: 1000 },
            Output::State(State::Closed),
            Output::Reject {
                client_id: "c1".into(),
                error: SendError::Closed
            },
        ]
    );
    m.on_socket_close(3.0, 1000);
    assert!(drain(&mut m).is_empty(), "our own close is not a drop");
    assert_eq!(m.next_deadline(), None);
    m.connect(4.0);
    assert_eq!(m.state(), &State::Connecting { attempt: 0 });
}

#[test]
fn a_hanging_connect_is_abandoned_and_retried() {
    let mut m = machine();
    m.connect(0.0);
    drain(&mut m);
    m.tick(15_000.0);
    let out = drain(&mut m);
    assert_eq!(
        out[0],
        Output::Disconnect {
            code: CLOSE_GIVING_UP
        }
    );
    assert!(matches!(
        states(&out)[..],
        [State::Reconnecting { attempt: 1, .. }]
    ));
}

#[test]
fn a_late_ready_after_the_timeout_turns_on_resume_and_the_heartbeat() {
    let mut m = machine();
    m.connect(0.0);
    m.on_socket_open(0.0);
    m.tick(2_000.0);
    assert_eq!(m.state(), &State::Open);
    assert_eq!(
        m.next_deadline(),
        None,
        "no heartbeat for a peer that may be base-layer"
    );
    m.on_frame(2_500.0, ready("e1", 4, true));
    let out = drain(&mut m);
    assert_eq!(states(&out), [State::Connecting { attempt: 0 }, State::Open]);
    assert_eq!(m.next_deadline(), Some(27_500.0), "pings from now on");
    let Output::Connect { since, .. } = drop_and_retry(&mut m, 3_000.0, 1006) else {
        unreachable!("drop_and_retry returns a connect");
    };
    assert_eq!(since, Some((4, "e1".into())));
}

#[test]
fn connect_is_idempotent_while_connected() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.connect(10.0);
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.state(), &State::Open);
}

#[test]
fn a_too_big_close_is_reported_and_reconnects() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.on_socket_close(10.0, 1009);
    let out = drain(&mut m);
    assert!(out.contains(&Output::CloseError { code: 1009 }));
    assert!(matches!(
        states(&out)[..],
        [State::Reconnecting { attempt: 1, .. }]
    ));
}

/// Another member can put any `client_id` in a message. Theirs is their message: it is
/// delivered as such, and our send still waits for our own echo (and is resent until it
/// comes: a stranger's message must not make ours look delivered and drop it).
#[test]
fn an_echo_of_our_client_id_from_another_sender_neither_resolves_our_send_nor_is_dropped() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.send("c1".into(), "mine").expect("room");
    drain(&mut m);
    let spoof = m.on_frame(10.0, message(Some(1), "mallory", Some("c1")));
    assert!(spoof.deliver, "mallory's message is shown, as hers");
    assert!(!spoof.resolve, "it does not acknowledge alice's send");
    // The connection drops before alice's echo: her message is still waiting, and goes
    // out again.
    drop_and_retry(&mut m, 20.0, 1006);
    m.on_socket_open(1_000.0);
    m.on_frame(1_000.0, ready("e1", 1, true));
    assert_eq!(sent(&drain(&mut m)), [Frame::Message("mine")]);
    let own = m.on_frame(1_001.0, message(Some(2), "alice", Some("c1")));
    assert!(own.deliver && own.resolve, "alice's own echo resolves her send");
    let again = m.on_frame(1_002.0, message(Some(3), "mallory", Some("c1")));
    assert!(again.deliver && !again.resolve);
}

/// A base-layer peer sends no `ready`: who we are comes from the `userId` option or
/// the token's `user_id` claim (the glue's `set_user_hint`).
#[test]
fn without_ready_our_echo_is_recognised_by_the_user_id_we_were_given() {
    let mut m = machine();
    m.set_user_hint("alice".into());
    m.connect(0.0);
    m.on_socket_open(0.0);
    m.tick(2_000.0);
    m.send("c1".into(), "mine").expect("room");
    drain(&mut m);
    let spoof = m.on_frame(2_100.0, message(None, "bob", Some("c1")));
    assert!(spoof.deliver && !spoof.resolve);
    let own = m.on_frame(2_200.0, message(None, "alice", Some("c1")));
    assert!(own.deliver && own.resolve);
}

/// `ready.user_id` is the server's word and wins over a hint that disagrees.
#[test]
fn ready_user_id_decides_whose_echo_is_ours() {
    let mut m = machine();
    m.set_user_hint("someone-else".into());
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.send("c1".into(), "mine").expect("room");
    drain(&mut m);
    let hinted = m.on_frame(10.0, message(Some(1), "someone-else", Some("c1")));
    assert!(!hinted.resolve);
    let own = m.on_frame(20.0, message(Some(2), "alice", Some("c1")));
    assert!(own.resolve);
}

/// An echo without a sender cannot be shown to be ours once we know who we are.
#[test]
fn an_echo_without_a_sender_does_not_resolve_a_send_of_a_known_user() {
    let mut m = machine();
    open_with_ready(&mut m, 0.0, "e1", 0);
    m.send("c1".into(), "mine").expect("room");
    drain(&mut m);
    let anonymous = Incoming::Message {
        seq: Some(1),
        id: Some("m1".into()),
        client_id: Some("c1".into()),
        sender_id: None,
    };
    let v = m.on_frame(10.0, anonymous);
    assert!(v.deliver && !v.resolve);
}

/// With no `ready`, no `userId` option and no readable `user_id` claim, the SDK has
/// nothing to compare a sender with: the `client_id` alone acknowledges, so sends still
/// settle (README: give `userId` on such a backend).
#[test]
fn with_no_known_identity_the_client_id_alone_acknowledges() {
    let mut m = machine();
    m.connect(0.0);
    m.on_socket_open(0.0);
    m.tick(2_000.0);
    m.send("c1".into(), "mine").expect("room");
    drain(&mut m);
    assert_eq!(m.user_id(), None);
    let v = m.on_frame(2_100.0, message(None, "whoever", Some("c1")));
    assert!(v.deliver && v.resolve);
}
