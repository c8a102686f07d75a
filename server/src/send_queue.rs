//! A connection's send queue: what the hub fans out to it, the reader's direct
//! answers, and the signals for its writer (ping, stop), behind one lock.
//!
//! It replaces a bounded `mpsc` channel plus a stop `oneshot`, a ping timer and a
//! presence backlog, each polled by the writer on every wake-up. A fan-out to 1,000
//! members pushes 1,000 times; each push here is one uncontended lock, a `VecDeque`
//! push and, only if the writer is asleep, one wake-up (pushes that find the writer
//! already woken do not wake it again). The writer takes everything queued in one swap
//! and writes it with one flush.
//!
//! It is bounded like the channel it replaces: a push beyond `capacity` is refused with
//! [`Refused::Full`] and the hub decides what that means (see `rooms.rs`). Presence
//! that does not fit in half the queue is held back, latest per user, and goes out right
//! after the frames queued before it (see [`SendQueue::push_presence`]).

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::Utf8Bytes;
use hablar_protocol::{Seq, UserId};
use parking_lot::{Mutex, MutexGuard};

/// One frame queued for a connection.
#[derive(Debug, Clone)]
pub struct QueuedFrame {
    /// The encoded event, shared by every connection it goes to.
    pub text: Utf8Bytes,
    /// The message's seq for `new_message` from the fan-out, so that a resuming
    /// connection can drop what its replay already sent. `None` for anything else.
    pub seq: Option<Seq>,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `capacity` frames are waiting: the reader is too slow.
    Full,
    /// The connection's writer is gone.
    Closed,
}

/// What became of a presence event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresencePush {
    /// Queued like any frame.
    Queued,
    /// Held back (coalesced per user) until the writer takes the queue.
    Held,
    /// The connection's writer is gone.
    Closed,
}

/// What the writer is to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Write the batch it was handed (which may be empty), after a ping if `ping`.
    Write {
        /// A keep-alive ping is due.
        ping: bool,
    },
    /// Stop and hand the socket back.
    Stop,
}

/// A connection's outbound queue. Shared (`Arc`) by the hub, the reader, the writer and
/// the task that supervises the connection.
#[derive(Debug)]
pub struct SendQueue {
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<QueuedFrame>,
    /// Presence events held back, the latest per user.
    held: HashMap<UserId, Utf8Bytes>,
    /// The writer's waker while it waits; taken by the push that wakes it.
    waker: Option<Waker>,
    /// The writer is gone: pushes are refused.
    closed: bool,
    /// The writer is asked to stop.
    stop: bool,
    /// A keep-alive ping is due.
    ping: bool,
    /// The newest seq the connection has been given, by its replay or the fan-out.
    newest: Seq,
}

impl State {
    /// Registers the writer's waker (without a clone when it is already the same).
    fn register(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}

impl SendQueue {
    /// An empty queue that holds up to `capacity` frames (at least 1). Allocates
    /// nothing until the first push: an idle connection costs only this struct.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::default(),
        }
    }

    /// Wakes the writer if it waits, after the lock is released (so it does not run into
    /// it). Taking the waker means later pushes do not wake it again until it has polled.
    fn wake_writer(mut state: MutexGuard<'_, State>) {
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Queues a frame.
    pub fn push(&self, item: QueuedFrame) -> Result<(), Refused> {
        let mut state = self.state.lock();
        self.admit(&state)?;
        if let Some(seq) = item.seq {
            state.newest = state.newest.max(seq);
        }
        state.queue.push_back(item);
        Self::wake_writer(state);
        Ok(())
    }

    /// Whether a frame may be queued now.
    fn admit(&self, state: &State) -> Result<(), Refused> {
        if state.closed {
            Err(Refused::Closed)
        } else if state.queue.len() >= self.capacity {
            Err(Refused::Full)
        } else {
            Ok(())
        }
    }

    /// Records that the connection's replay sent every message up to `seq`.
    pub fn replayed_up_to(&self, seq: Seq) {
        let mut state = self.state.lock();
        state.newest = state.newest.max(seq);
    }

    /// Queues the echo of a resend: the stored message `seq`, straight back to its
    /// sender. Only if the connection has been given every message up to `seq`: an echo
    /// ahead of the fan-out would reach the client before messages older than it (the
    /// SDK drops a seq at or below the newest it has, so those would be lost). Such an
    /// echo is not queued (`Ok(false)`): the fan-out brings that same message in its
    /// turn, or the connection is closed to resume with `since`.
    pub fn push_echo(&self, text: Utf8Bytes, seq: Seq) -> Result<bool, Refused> {
        let mut state = self.state.lock();
        self.admit(&state)?;
        if seq > state.newest {
            return Ok(false);
        }
        // Without a seq: the writer skips seqs the replay sent, and this one is wanted.
        state.queue.push_back(QueuedFrame { text, seq: None });
        Self::wake_writer(state);
        Ok(true)
    }

    /// Queues a presence event about `user`, or holds it back when presence is already
    /// held (so that each user's events stay in order) or the queue is half full. Held
    /// events go out, latest per user, right after the frames queued before them.
    pub fn push_presence(&self, user: &UserId, text: &Utf8Bytes) -> PresencePush {
        let mut state = self.state.lock();
        if state.closed {
            return PresencePush::Closed;
        }
        let outcome = if state.held.is_empty() && state.queue.len() < self.capacity / 2 {
            state.queue.push_back(QueuedFrame {
                text: text.clone(),
                seq: None,
            });
            PresencePush::Queued
        } else {
            state.held.insert(user.clone(), text.clone());
            PresencePush::Held
        };
        Self::wake_writer(state);
        outcome
    }

    /// Asks the writer to send a keep-alive ping.
    pub fn ping(&self) {
        let mut state = self.state.lock();
        state.ping = true;
        Self::wake_writer(state);
    }

    /// Asks the writer to stop, even in the middle of a write (see [`SendQueue::poll_stop`]).
    pub fn stop(&self) {
        let mut state = self.state.lock();
        state.stop = true;
        Self::wake_writer(state);
    }

    /// The writer is gone: later pushes are refused with [`Refused::Closed`].
    pub fn close(&self) {
        self.state.lock().closed = true;
    }

    /// Frames waiting (not yet taken by the writer).
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves everything waiting (queued frames, then held presence) into the empty
    /// `batch`, without waiting.
    pub fn take(&self, batch: &mut VecDeque<QueuedFrame>) {
        let mut state = self.state.lock();
        Self::take_locked(&mut state, batch);
    }

    fn take_locked(state: &mut State, batch: &mut VecDeque<QueuedFrame>) {
        debug_assert!(batch.is_empty(), "the writer hands back an empty batch");
        std::mem::swap(&mut state.queue, batch);
        // Everything queued before the held presence is in the batch now: it goes next.
        batch.extend(
            state
                .held
                .drain()
                .map(|(_, text)| QueuedFrame { text, seq: None }),
        );
    }

    /// The writer waits here: moves everything waiting into the empty `batch` and says
    /// whether to ping, or says stop.
    pub fn poll_next(&self, cx: &Context<'_>, batch: &mut VecDeque<QueuedFrame>) -> Poll<Next> {
        let mut state = self.state.lock();
        if state.stop {
            return Poll::Ready(Next::Stop);
        }
        if state.queue.is_empty() && state.held.is_empty() && !state.ping {
            state.register(cx);
            return Poll::Pending;
        }
        Self::take_locked(&mut state, batch);
        let ping = std::mem::take(&mut state.ping);
        Poll::Ready(Next::Write { ping })
    }

    /// Ready once the writer is asked to stop: raced with a write that may never end
    /// (a client that stopped reading), so that the socket can still be closed.
    pub fn poll_stop(&self, cx: &Context<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        if state.stop {
            return Poll::Ready(());
        }
        state.register(cx);
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::Arc;

    use super::*;

    fn frame(text: &'static str) -> QueuedFrame {
        QueuedFrame {
            text: Utf8Bytes::from_static(text),
            seq: None,
        }
    }

    fn texts(batch: &VecDeque<QueuedFrame>) -> Vec<&str> {
        batch.iter().map(|o| o.text.as_str()).collect()
    }

    #[tokio::test]
    async fn the_writer_takes_everything_queued_in_order_in_one_batch() {
        let queue = SendQueue::new(4);
        for text in ["a", "b", "c"] {
            queue.push(frame(text)).expect("room");
        }
        let mut batch = VecDeque::new();
        let next = poll_fn(|cx| queue.poll_next(cx, &mut batch)).await;
        assert_eq!(next, Next::Write { ping: false });
        assert_eq!(texts(&batch), ["a", "b", "c"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn an_echo_goes_out_only_once_the_connection_has_every_seq_up_to_it() {
        let queue = SendQueue::new(8);
        let echo = |seq| queue.push_echo(Utf8Bytes::from_static("echo"), Seq(seq));
        assert_eq!(echo(1), Ok(false), "nothing given yet");
        queue.replayed_up_to(Seq(3));
        assert_eq!(echo(4), Ok(false), "ahead of the replay");
        assert_eq!(echo(3), Ok(true), "the replay sent 3");
        let fanned = QueuedFrame {
            text: Utf8Bytes::from_static("5"),
            seq: Some(Seq(5)),
        };
        queue.push(fanned).expect("room");
        assert_eq!(echo(5), Ok(true), "the fan-out queued 5 before it");
        assert_eq!(echo(6), Ok(false), "ahead of the fan-out");
        queue.replayed_up_to(Seq(2));
        assert_eq!(echo(5), Ok(true), "an older replay does not move it back");
        let mut batch = VecDeque::new();
        queue.take(&mut batch);
        assert_eq!(texts(&batch), ["echo", "5", "echo", "echo"]);
        assert!(
            batch.iter().filter(|o| o.text == "echo").all(|o| o.seq.is_none()),
            "an echo is not dropped as already replayed"
        );
        queue.close();
        assert_eq!(echo(1), Err(Refused::Closed));
    }

    #[test]
    fn a_full_queue_refuses_and_a_closed_one_too() {
        let queue = SendQueue::new(2);
        queue.push(frame("a")).expect("room");
        queue.push(frame("b")).expect("room");
        assert_eq!(queue.push(frame("c")), Err(Refused::Full));
        assert_eq!(queue.len(), 2, "the refused frame is not queued");
        queue.close();
        let mut batch = VecDeque::new();
        queue.take(&mut batch);
        assert_eq!(queue.push(frame("d")), Err(Refused::Closed));
        assert_eq!(
            queue.push_presence(&UserId::new("bob").expect("id"), &Utf8Bytes::from_static("p")),
            PresencePush::Closed
        );
    }

    #[tokio::test]
    async fn a_push_wakes_a_waiting_writer() {
        let queue = Arc::new(SendQueue::new(4));
        let writer = tokio::spawn({
            let queue = queue.clone();
            async move {
                let mut batch = VecDeque::new();
                let next = poll_fn(|cx| queue.poll_next(cx, &mut batch)).await;
                (next, texts(&batch).join(","))
            }
        });
        tokio::task::yield_now().await;
        queue.push(frame("hello")).expect("room");
        let (next, got) = writer.await.expect("writer");
        assert_eq!(next, Next::Write { ping: false });
        assert_eq!(got, "hello");
    }

    #[tokio::test]
    async fn stop_wins_over_frames_and_ping_comes_alone() {
        let queue = SendQueue::new(4);
        queue.ping();
        let mut batch = VecDeque::new();
        assert_eq!(
            poll_fn(|cx| queue.poll_next(cx, &mut batch)).await,
            Next::Write { ping: true }
        );
        assert!(batch.is_empty());
        queue.push(frame("a")).expect("room");
        queue.stop();
        assert_eq!(poll_fn(|cx| queue.poll_next(cx, &mut batch)).await, Next::Stop);
        poll_fn(|cx| queue.poll_stop(cx)).await;
    }

    #[test]
    fn presence_beyond_half_the_queue_is_held_latest_per_user_and_goes_after() {
        let queue = SendQueue::new(4);
        let (bob, carol) = (UserId::new("bob").expect("id"), UserId::new("carol").expect("id"));
        let p = Utf8Bytes::from_static;
        assert_eq!(queue.push_presence(&bob, &p("join bob")), PresencePush::Queued);
        assert_eq!(
            queue.push_presence(&carol, &p("join carol")),
            PresencePush::Queued
        );
        // Half of 4 is taken: the rest is held, coalesced per user.
        assert_eq!(queue.push_presence(&bob, &p("leave bob")), PresencePush::Held);
        assert_eq!(queue.push_presence(&bob, &p("join bob 2")), PresencePush::Held);
        assert_eq!(queue.push_presence(&carol, &p("leave carol")), PresencePush::Held);
        // Messages still fit in the other half.
        queue.push(frame("message")).expect("room");
        let mut batch = VecDeque::new();
        queue.take(&mut batch);
        let got = texts(&batch);
        assert_eq!(got[..3], ["join bob", "join carol", "message"]);
        let mut held = got[3..].to_vec();
        held.sort_unstable();
        assert_eq!(held, ["join bob 2", "leave carol"]);
        batch.clear();
        queue.take(&mut batch);
        assert!(batch.is_empty(), "held presence goes out once");
    }
}
