//! Message frames: what a publisher sends, and the cheap look at what a member receives.
//!
//! The send time travels in the message content as `~hb{step}.{micros}~`, then padding
//! to the configured content size, or to whatever makes the whole frame a given size
//! (so that a system forwarding the frame as it is delivers as many bytes as one that
//! wraps the content in a larger envelope). Every backend keeps `content` as it was sent, whatever
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

/// The frame around the content and the client id (nothing in them needs escaping).
const HEAD: &str = r#"{"type":"new_message","message":{"content":""#;
const MID: &str = r#"","client_id":""#;
const TAIL: &str = r#""}}"#;

/// How a message is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// The content is padded to this many bytes (it is never shorter than the marker).
    Content(usize),
    /// The whole frame is padded to exactly this many bytes. Exact for every step, seq
    /// and timestamp when at least [`longest_unpadded_frame`] (which [`Padding::frame`]
    /// checks); a frame that does not fit is sent unpadded.
    Frame(usize),
}

impl Padding {
    /// Frames of exactly `bytes` bytes, or an error when some message could not be that
    /// short.
    pub fn frame(bytes: usize) -> crate::Result<Self> {
        let least = longest_unpadded_frame();
        if bytes < least {
            return Err(crate::Error::Scenario(format!(
                "--frame-bytes {bytes} is too small: a frame without padding takes up to \
                 {least} bytes (marker, step, timestamp and client_id at their widest)"
            )));
        }
        Ok(Self::Frame(bytes))
    }
}

/// The longest frame [`new_message`] builds without padding: the smallest frame size
/// every message can be padded to exactly.
pub fn longest_unpadded_frame() -> usize {
    new_message(u32::MAX, u64::MAX, u64::MAX, Padding::Content(0)).len()
}

/// The `new_message` frame of message `seq` sent in window `step` at `sent_us`, padded
/// as `padding` says.
pub fn new_message(step: u32, sent_us: u64, seq: u64, padding: Padding) -> String {
    let marker = format!("{MARKER}{step}.{sent_us}~ ");
    let client_id = format!("b{step}-{seq}");
    let unpadded = HEAD.len() + marker.len() + MID.len() + client_id.len() + TAIL.len();
    let pad = match padding {
        Padding::Content(bytes) => bytes.saturating_sub(marker.len()),
        Padding::Frame(bytes) => bytes.saturating_sub(unpadded),
    };
    let mut frame = String::with_capacity(unpadded + pad);
    frame.push_str(HEAD);
    frame.push_str(&marker);
    frame.extend(std::iter::repeat_n('x', pad));
    frame.push_str(MID);
    frame.push_str(&client_id);
    frame.push_str(TAIL);
    frame
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
        let frame = new_message(3, 1_234_567, 9, Padding::Content(100));
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
        let frame = new_message(0, 5, 0, Padding::Content(100));
        let v: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(v["message"]["content"].as_str().expect("content").len(), 100);
        assert_eq!(v["message"]["client_id"], "b0-0");
        // The frame the ceiling forwards with 100 B content, as the method describes it.
        assert_eq!(
            frame,
            format!(
                r#"{{"type":"new_message","message":{{"content":"~hb0.5~ {}","client_id":"b0-0"}}}}"#,
                "x".repeat(92)
            )
        );
    }

    #[test]
    fn frames_are_exactly_the_requested_size_whatever_the_digits() {
        let padding = Padding::frame(300).expect("300 B fits every frame");
        for (step, sent_us, seq) in [
            (0, 0, 0),
            (7, 5, 3),
            (12, 3_000_000, 1_279),
            (123, 98_765_432_101, 1_000_000),
            (u32::MAX, u64::MAX, u64::MAX),
        ] {
            let frame = new_message(step, sent_us, seq, padding);
            assert_eq!(frame.len(), 300, "{frame}");
            // Still a valid message whose marker the receivers read back.
            let v: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
            assert_eq!(v["message"]["client_id"], format!("b{step}-{seq}"));
            assert_eq!(classify(&frame), Received::Message { step, sent_us });
        }
    }

    #[test]
    fn the_smallest_frame_size_is_the_widest_unpadded_frame() {
        let least = longest_unpadded_frame();
        let padding = Padding::frame(least).expect("the widest frame fits exactly");
        let widest = new_message(u32::MAX, u64::MAX, u64::MAX, padding);
        assert_eq!(widest.len(), least);
        assert!(!widest.contains('x'), "no room left for padding: {widest}");
        let err = Padding::frame(least - 1).expect_err("one byte short");
        assert!(err.to_string().contains("--frame-bytes"), "{err}");
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
