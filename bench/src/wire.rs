//! A minimal WebSocket client (RFC 6455) for the generator's connections.
//!
//! The generator shares the machine's two cores with the system under test, so every
//! cycle it spends on a frame is taken from the server it measures. tokio-tungstenite cost
//! it more than the frames are worth: profiled under scenario (a), 11 % of the generator's
//! samples were `memset`, tungstenite zeroing its whole read buffer (8 KiB) before every
//! read; each frame took a second `recv` that only returned `EAGAIN`; and the split stream
//! took a lock on every poll. This client reads whatever the socket has into a buffer it
//! never clears (tokio stops at a short read, one `recv` per wake-up), hands every complete
//! frame to a callback without copying it, answers pings, and masks what it sends, as a
//! client must.
//!
//! Only what the benchmark needs: `ws://` over TCP, no extensions, text frames out.
//! Continuation frames are put together, though the servers measured send whole frames.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::{Error, Result};

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// Spare room made in the read buffer before every read.
const READ_CHUNK: usize = 8 * 1024;
/// Largest message accepted (hablar-server's `ready` in a 10,000-member chat is ~400 KB).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Largest HTTP response head accepted during the handshake.
const MAX_HEAD: usize = 16 * 1024;

/// What a connection received, as the benchmark cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message (its bytes, not checked for UTF-8).
    Text(&'a [u8]),
    /// The server's close frame, with its code when it gave one.
    Close(Option<u16>),
}

/// Opens a WebSocket connection to `ws://{host}{path}`, sending `Origin` when given.
pub async fn connect(host: &str, path: &str, origin: Option<&str>) -> Result<(Reader, Writer)> {
    let mut stream = TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let key = generate_key();
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(2 * READ_CHUNK);
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(Error::Refused("handshake response head too long".into()));
        }
        buf.reserve(READ_CHUNK);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(Error::Refused("closed during the handshake".into()));
        }
    };
    check_upgrade(&buf[..end], &derive_accept_key(key.as_bytes()))?;
    buf.drain(..end);
    let (read, write) = stream.into_split();
    let writer = Writer(Arc::new(Mutex::new(WriteSide {
        half: write,
        mask: next_mask_seed(),
        closed: false,
    })));
    let reader = Reader {
        half: read,
        buf,
        fragments: None,
        writer: writer.clone(),
        started: false,
    };
    Ok((reader, writer))
}

/// Checks the response head: `101` and the accept key the request's key calls for.
fn check_upgrade(head: &[u8], accept: &str) -> Result<()> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("101") {
        let status = status.split_once(' ').map(|(_, s)| s).unwrap_or(status);
        return Err(Error::Refused(format!("HTTP {status}")));
    }
    let accepted = lines
        .filter_map(|line| line.split_once(':'))
        .any(|(name, value)| name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept);
    if accepted {
        Ok(())
    } else {
        Err(Error::Refused(
            "101 without the expected Sec-WebSocket-Accept".into(),
        ))
    }
}

/// The read half of a connection.
pub struct Reader {
    half: OwnedReadHalf,
    /// Received bytes not yet handed out: at most one incomplete frame after a read.
    buf: Vec<u8>,
    /// A fragmented text message being put together.
    fragments: Option<Vec<u8>>,
    /// For pongs and for answering a close.
    writer: Writer,
    /// Whether the bytes that came with the handshake response were handed out.
    started: bool,
}

impl Reader {
    /// Waits for the socket, reads what it has and hands every complete message to `f`.
    /// Returns `false` once the connection is over (closed by the server or lost); a read
    /// error is an `Err`.
    pub async fn read(&mut self, f: &mut impl FnMut(Event<'_>)) -> Result<bool> {
        if !self.started {
            // The first call hands out only what came with the handshake response (often
            // hablar-server's `ready`), without waiting for more.
            self.started = true;
            return self.dispatch(f).await;
        }
        self.buf.reserve(READ_CHUNK);
        if self.half.read_buf(&mut self.buf).await? == 0 {
            return Ok(false);
        }
        self.dispatch(f).await
    }

    /// Hands out the complete frames in the buffer; `false` after a close frame.
    async fn dispatch(&mut self, f: &mut impl FnMut(Event<'_>)) -> Result<bool> {
        let mut at = 0;
        let mut pings: Vec<Vec<u8>> = Vec::new();
        let mut close = None;
        while close.is_none() {
            let Some(frame) = parse_frame(&self.buf[at..])? else {
                break;
            };
            let payload = &self.buf[at + frame.header..at + frame.header + frame.len];
            at += frame.header + frame.len;
            match frame.opcode {
                TEXT if frame.fin => f(Event::Text(payload)),
                TEXT => self.fragments = Some(payload.to_vec()),
                CONTINUATION => {
                    let Some(mut message) = self.fragments.take() else {
                        return Err(protocol("a continuation frame with no message to continue"));
                    };
                    message.extend_from_slice(payload);
                    if message.len() > MAX_MESSAGE {
                        return Err(protocol("a fragmented message over the size limit"));
                    }
                    if frame.fin {
                        f(Event::Text(&message));
                    } else {
                        self.fragments = Some(message);
                    }
                }
                PING => pings.push(payload.to_vec()),
                CLOSE => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    f(Event::Close(code));
                    close = Some(code);
                }
                // Binary messages and pongs mean nothing to the benchmark.
                _ => {}
            }
        }
        self.buf.drain(..at);
        for ping in pings {
            self.writer.send(0xA, &ping).await?;
        }
        if let Some(code) = close {
            // Echo the close, as the closing handshake asks; the peer may be gone already.
            let _ = self.writer.close(code.unwrap_or(1000)).await;
            return Ok(false);
        }
        Ok(true)
    }
}

fn protocol(what: &str) -> Error {
    Error::Scenario(format!("websocket protocol: {what}"))
}

/// A complete frame at the start of a buffer.
struct Frame {
    fin: bool,
    opcode: u8,
    /// Header length, bytes.
    header: usize,
    /// Payload length, bytes.
    len: usize,
}

/// The first frame of `buf` when all of it is there, `None` when more bytes are needed.
fn parse_frame(buf: &[u8]) -> Result<Option<Frame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err(protocol("a masked frame from the server"));
    }
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")), 10),
        126 | 127 => return Ok(None),
        short => (short as u64, 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(protocol("a frame over the size limit"));
    }
    let len = len as usize;
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0f,
        header,
        len,
    }))
}

/// The write half of a connection, shared by its publisher and its reader (pongs).
#[derive(Clone)]
pub struct Writer(Arc<Mutex<WriteSide>>);

struct WriteSide {
    half: OwnedWriteHalf,
    /// xorshift32 state for the frames' masking keys.
    mask: u32,
    /// A close frame was sent: nothing may follow it.
    closed: bool,
}

impl Writer {
    /// Sends one text message.
    pub async fn send_text(&self, text: &str) -> Result<()> {
        self.send(TEXT, text.as_bytes()).await
    }

    /// Sends a close frame with `code` (once; later calls do nothing).
    pub async fn close(&self, code: u16) -> Result<()> {
        self.send(CLOSE, &code.to_be_bytes()).await
    }

    async fn send(&self, opcode: u8, payload: &[u8]) -> Result<()> {
        let mut side = self.0.lock().await;
        if side.closed {
            return Ok(());
        }
        side.closed = opcode == CLOSE;
        let mut mask = side.mask;
        mask ^= mask << 13;
        mask ^= mask >> 17;
        mask ^= mask << 5;
        side.mask = mask;
        let frame = encode(opcode, payload, mask.to_be_bytes());
        side.half.write_all(&frame).await?;
        Ok(())
    }
}

/// A whole (final) client frame: header, masking key, masked payload.
fn encode(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// A distinct non-zero seed per connection (xorshift32 never leaves zero).
fn next_mask_seed() -> u32 {
    static SEEDS: AtomicU32 = AtomicU32::new(0x9e37_79b9);
    SEEDS.fetch_add(0x6d2b_79f5, Ordering::Relaxed) | 1
}

/// The server's side of a handshake, for tests that play the server over a real socket.
#[cfg(test)]
pub(crate) async fn accept_upgrade(socket: &mut TcpStream, then: &[u8]) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).await.expect("request");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("utf-8");
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("key");
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    // Frames sent in the same segment as the response.
    out.extend_from_slice(then);
    socket.write_all(&out).await.expect("write");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame: unmasked, `fin`, `opcode`, `payload`.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = encode(opcode, payload, [0; 4]);
        frame[0] = if fin { 0x80 | opcode } else { opcode };
        frame[1] &= 0x7f;
        // Drop the (zero) masking key: server frames carry none.
        let key_at = match payload.len() {
            n if n < 126 => 2,
            n if n <= u16::MAX as usize => 4,
            _ => 10,
        };
        frame.drain(key_at..key_at + 4);
        frame
    }

    #[test]
    fn a_client_frame_is_masked_with_its_key() {
        let frame = encode(TEXT, b"hello", [1, 2, 3, 4]);
        assert_eq!(frame[..6], [0x81, 0x85, 1, 2, 3, 4]);
        let unmasked: Vec<u8> = frame[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
            .collect();
        assert_eq!(unmasked, b"hello");
        let long = encode(TEXT, &[b'x'; 300], [0; 4]);
        assert_eq!(long[..4], [0x81, 0x80 | 126, 1, 44]);
        assert_eq!(long.len(), 4 + 4 + 300);
    }

    #[test]
    fn frames_are_parsed_only_when_whole() {
        for size in [0, 5, 125, 126, 300, 70_000] {
            let payload = vec![b'y'; size];
            let frame = server_frame(true, TEXT, &payload);
            for cut in [0, 1, frame.len() / 2, frame.len() - 1] {
                if cut < frame.len() {
                    assert!(
                        parse_frame(&frame[..cut]).expect("valid so far").is_none(),
                        "{size} cut at {cut}"
                    );
                }
            }
            let parsed = parse_frame(&frame).expect("valid").expect("whole");
            assert_eq!((parsed.fin, parsed.opcode, parsed.len), (true, TEXT, size));
            assert_eq!(parsed.header + parsed.len, frame.len());
        }
    }

    #[test]
    fn a_masked_or_oversized_server_frame_is_an_error() {
        let masked = encode(TEXT, b"hi", [9, 9, 9, 9]);
        assert!(parse_frame(&masked).is_err());
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
        assert!(parse_frame(&huge).is_err());
    }

    #[test]
    fn the_upgrade_needs_101_and_the_right_accept_key() {
        let accept = derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n");
        assert!(check_upgrade(ok.as_bytes(), &accept).is_ok());
        let wrong = ok.replace(&accept, "bm9wZQ==");
        assert!(check_upgrade(wrong.as_bytes(), &accept).is_err());
        let refused = check_upgrade(b"HTTP/1.1 403 Forbidden\r\n\r\n", &accept).expect_err("403");
        assert_eq!(refused.to_string(), "connect refused: HTTP 403 Forbidden");
    }

    /// Over a real socket: the bytes that came with the handshake, frames split across
    /// reads, a fragmented message, a ping answered with a pong, and a close echoed.
    #[tokio::test]
    async fn a_connection_reads_what_a_server_sends_and_answers_ping_and_close() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            // A first message in the same segment as the handshake response.
            let head = accept_upgrade(&mut socket, &server_frame(true, TEXT, b"first")).await;
            assert!(head.starts_with("GET /ws/chat/c/?token=t HTTP/1.1\r\n"), "{head}");
            assert!(head.contains("\r\nOrigin: http://o\r\n"), "{head}");
            let second = server_frame(true, TEXT, &[b'z'; 200]);
            socket.write_all(&second[..7]).await.expect("write");
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            socket.write_all(&second[7..]).await.expect("write");
            let mut rest = server_frame(false, TEXT, b"frag");
            rest.extend(server_frame(true, PING, b"p!"));
            rest.extend(server_frame(true, CONTINUATION, b"mented"));
            rest.extend(server_frame(true, CLOSE, &4408u16.to_be_bytes()));
            socket.write_all(&rest).await.expect("write");
            let mut got = Vec::new();
            socket.read_to_end(&mut got).await.expect("read");
            got
        });
        let (mut reader, writer) = connect(&host, "/ws/chat/c/?token=t", Some("http://o"))
            .await
            .expect("connect");
        let mut seen = Vec::new();
        let mut record = |event: Event<'_>| {
            seen.push(match event {
                Event::Text(t) => String::from_utf8(t.to_vec()).expect("utf-8"),
                Event::Close(code) => format!("close {code:?}"),
            })
        };
        while reader.read(&mut record).await.expect("read") {}
        drop(writer);
        drop(reader);
        let z = "z".repeat(200);
        assert_eq!(seen, ["first", z.as_str(), "fragmented", "close Some(4408)"]);
        // What the client sent back: a masked pong with the ping's payload, then a close
        // echoing the server's code.
        let got = server.await.expect("server");
        let pong = parse_frame_masked(&got);
        assert_eq!(pong, (0xA, b"p!".to_vec()));
        let close = parse_frame_masked(&got[2 + 4 + 2..]);
        assert_eq!(close, (CLOSE, 4408u16.to_be_bytes().to_vec()));
    }

    /// A frame that came in the same segment as the handshake response is handed out
    /// without waiting for anything more from the server (which sends nothing more here).
    #[tokio::test]
    async fn a_frame_that_came_with_the_handshake_is_not_held_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            accept_upgrade(&mut socket, &server_frame(true, TEXT, br#"{"type":"ready"}"#)).await;
            // Keep the connection open and silent until the test is over.
            let _ = held.await;
        });
        let (mut reader, _writer) = connect(&host, "/", None).await.expect("connect");
        let mut seen = Vec::new();
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while seen.is_empty() {
                let open = reader
                    .read(&mut |event| {
                        if let Event::Text(t) = event {
                            seen.push(t.to_vec());
                        }
                    })
                    .await
                    .expect("read");
                assert!(open, "the server keeps the connection open");
            }
        })
        .await;
        assert!(
            got.is_ok(),
            "the frame sent with the handshake response was held back"
        );
        assert_eq!(seen, [br#"{"type":"ready"}"#.to_vec()]);
        drop(hold);
    }

    /// A short client frame's opcode and unmasked payload.
    fn parse_frame_masked(frame: &[u8]) -> (u8, Vec<u8>) {
        assert_eq!(frame[0] & 0x80, 0x80, "fin");
        assert_eq!(frame[1] & 0x80, 0x80, "masked");
        let len = (frame[1] & 0x7f) as usize;
        let key = &frame[2..6];
        let payload = frame[6..6 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        (frame[0] & 0x0f, payload)
    }
}
