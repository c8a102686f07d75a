//! The writer: `ready` and the replay, then the send queue in batches, each within a
//! deadline.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use hablar_protocol::{CloseCode, Seq};

use super::End;
use crate::send_queue::{Next, QueuedFrame, SendQueue};

/// Why the writer returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wrote {
    /// Told to stop between batches: everything it was handed is written.
    Told,
    /// Told to stop in the middle of a batch, whose rest is lost: nothing queued after
    /// it may be written (that would leave the client a gap; it resumes with `since`).
    Cut,
    /// The connection ends (the client is too slow, or gone).
    End(End),
}

/// Writes `first` (`ready` and the replay), then what the queue hands over, in batches
/// (feed, then one flush), and the keep-alive pings it asks for. A batch not written
/// within `deadline` ends the connection as too slow (4408): a client that stopped
/// reading must not hold its task, its slot and its presence for ever.
pub(super) async fn write_loop(
    sink: &mut SplitSink<WebSocket, WsMessage>,
    queue: &SendQueue,
    delivered: Seq,
    first: VecDeque<QueuedFrame>,
    deadline: Duration,
) -> Wrote {
    let mut batch = first;
    let mut ping = false;
    loop {
        let write = async {
            if ping {
                sink.feed(WsMessage::Ping(Default::default())).await?;
            }
            for item in batch.drain(..) {
                // The replay already sent messages up to `delivered`.
                if item.seq.is_some_and(|seq| seq <= delivered) {
                    continue;
                }
                sink.feed(WsMessage::Text(item.text)).await?;
            }
            sink.flush().await
        };
        // A client that stopped reading blocks the write for good: stopping must still
        // get the socket back, to close it.
        let written = tokio::select! {
            biased;
            written = tokio::time::timeout(deadline, write) => written,
            () = poll_fn(|cx| queue.poll_stop(cx)) => return Wrote::Cut,
        };
        match written {
            Err(_) => {
                tracing::info!("a write did not complete in time: too slow");
                return Wrote::End(End::Close(CloseCode::TooSlow));
            }
            Ok(Err(_)) => return Wrote::End(End::Gone),
            Ok(Ok(())) => {}
        }
        // A burst (or the replay) grew the batch; an idle connection should not keep
        // that memory.
        batch.clear();
        if batch.capacity() > 64 {
            batch.shrink_to(16);
        }
        ping = match poll_fn(|cx| queue.poll_next(cx, &mut batch)).await {
            Next::Stop => return Wrote::Told,
            Next::Write { ping } => ping,
        };
    }
}
