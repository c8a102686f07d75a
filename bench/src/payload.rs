//! Message frames: what a publisher sends, and the cheap look at what a member receives.
//!
//! The send time travels in the message content as `~hb{step}.{micros}~`, then padding
//! to the configured content size. Every backend keeps `content` as it was sent, whatever
//! JSON it wraps around it (Django writes `"content": "…"` with a space, hablar-server
//! without, the ceiling forwards the client frame as is), so the receiver scans for the
//! marker instead of parsing JSON: the generator must stay cheaper than the servers.

/// What a received text frame is, as far as the benchmark cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A benchmark message: the window it was sent in and its due time (µs on the
    /// generator's clock).
    Message {
        /// The measurement window (sweep step) that sent it.
        step: u32,
        /// Due time of the message in microseconds since the generator's epoch.
        sent_us: u64,
    },
    /// hablar-server's `ready`: the connection is admitted.
    Ready,
    /// An `error` event: counted as an error.
    Error,
    /// Anything else (presence, typing, a message without a marker): ignored.
    Other,
}

const MARKER: &str = "~hb";

/// The `new_message` frame of message `seq` sent in window `step` at `sent_us`, its
/// content padded to `content_bytes` (at least the marker's length).
pub fn new_message(step: u32, sent_us: u64, seq: u64, content_bytes: usize) -> String {
    let mut content = format!("{MARKER}{step}.{sent_us}~ ");
    while content.len() < content_bytes {
        content.push('x');
    }
    format!(r#"{{"type":"new_message","message":{{"content":"{content}","client_id":"b{step}-{seq}"}}}}"#)
}

/// Classifies a received text frame.
pub fn classify(frame: &str) -> Received {
    if let Some(at) = frame.find(MARKER) {
        if let Some((step, sent_us)) = parse_marker(&frame[at + MARKER.len()..]) {
            return Received::Message { step, sent_us };
        }
    }
    // Events are small; the `type` is near the start of hablar-server's frames.
    if is_type(frame, "ready") {
        Received::Ready
    } else if is_type(frame, "error") {
        Received::Error
    } else {
        Received::Other
    }
}

fn is_type(frame: &str, kind: &str) -> bool {
    let compact = format!(r#""type":"{kind}""#);
    let spaced = format!(r#""type": "{kind}""#);
    frame.contains(&compact) || frame.contains(&spaced)
}

fn parse_marker(rest: &str) -> Option<(u32, u64)> {
    let (step, rest) = rest.split_once('.')?;
    let (sent, _) = rest.split_once('~')?;
    Some((step.parse().ok()?, sent.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_message_is_recognised_in_every_backends_wrapping() {
        let frame = new_message(3, 1_234_567, 9, 100);
        let ours = format!(
            r#"{{"type":"new_message","message":{{"id":"1","seq":4,"content":"{}"}}}}"#,
            &frame[frame.find("~hb").expect("marker")..frame.find("\",\"client_id").expect("end")]
        );
        let django = ours.replace("\":\"", "\": \"");
        for f in [frame.as_str(), ours.as_str(), django.as_str()] {
            assert_eq!(
                classify(f),
                Received::Message {
                    step: 3,
                    sent_us: 1_234_567
                }
            );
        }
    }

    #[test]
    fn content_is_padded_to_the_configured_size() {
        let frame = new_message(0, 5, 0, 100);
        let v: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(v["message"]["content"].as_str().expect("content").len(), 100);
        assert_eq!(v["message"]["client_id"], "b0-0");
    }

    #[test]
    fn events_are_told_apart() {
        assert_eq!(classify(r#"{"type":"ready","user_id":"u1"}"#), Received::Ready);
        assert_eq!(classify(r#"{"type": "error", "code": "x"}"#), Received::Error);
        assert_eq!(
            classify(r#"{"type":"presence_join","user_id":"u1"}"#),
            Received::Other
        );
        assert_eq!(classify(r#"{"content":"~hbnope"}"#), Received::Other);
    }
}
