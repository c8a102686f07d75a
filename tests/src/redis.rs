//! [`RedisServer`]: a real `redis-server` of the test's own, on a free port, in a
//! temporary directory, that a test can kill, stop and restart on the same port.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hablar_server::{BackendKind, Config, Secret};

use crate::{Backend, TestServer};

/// The binary the tests run.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A `redis-server` child process; killed and its directory removed on drop.
pub struct RedisServer {
    /// The port it listens on, the same across restarts.
    port: u16,
    /// Its working directory (where `SHUTDOWN SAVE` leaves `dump.rdb`).
    dir: PathBuf,
    /// The process while it runs.
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server without persistence (`--save '' --appendonly no`) on a free port
    /// and waits until it answers `PING`.
    pub async fn start() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hablar-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the redis temp dir");
        // A port taken between probing and binding is retried with another one.
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self {
                port,
                dir: dir.clone(),
                child: None,
            };
            if server.spawn().await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Points `config` at this server with the Redis backend, and short Redis timeouts
    /// so that fault tests stay fast.
    pub fn configure(&self, config: &mut Config) {
        config.backend = BackendKind::Redis;
        config.redis_url = Some(Secret::new(self.url()));
        config.redis.timeout_ms = 500;
        config.redis.reconnect_max_ms = 200;
        config.redis.health_interval_ms = 500;
    }

    /// Starts one more server instance on this Redis (any number may share it).
    pub async fn instance(&self) -> TestServer {
        self.instance_with(|_| {}).await
    }

    /// Like [`RedisServer::instance`], with the configuration changed by `configure`.
    pub async fn instance_with(&self, configure: impl FnOnce(&mut Config)) -> TestServer {
        // `Backend::Memory` starts no redis-server of its own; `configure` then points
        // the instance at this one.
        TestServer::start_with(Backend::Memory, |config| {
            self.configure(config);
            configure(config);
        })
        .await
    }

    /// Kills the server (SIGKILL): every key is lost, as in a crash without persistence.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server after writing its data to disk (`SHUTDOWN SAVE`), so that
    /// [`RedisServer::restart`] brings the same data back, like a failover or a restart
    /// with persistence.
    pub fn stop_keeping_data(&mut self) {
        let _ = self.try_command(&["SHUTDOWN", "SAVE"]);
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn().await,
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// Runs one command and returns its reply as text (integers and strings as they
    /// are, arrays one element per line, nil as `(nil)`). Panics on failure.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|err| panic!("redis command {args:?} failed: {err}"))
    }

    fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        (&stream).write_all(request.as_bytes())?;
        let mut reader = BufReader::new(stream);
        read_reply(&mut reader)
    }

    /// Spawns the process and waits (up to 5 s) until it answers; `false` if it exits.
    async fn spawn(&mut self) -> bool {
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run /usr/bin/redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.try_command(&["PING"]).is_ok_and(|pong| pong == "PONG") {
                return true;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill();
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Reads one RESP reply as text.
fn read_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(std::io::Error::other(rest.to_owned())),
        "$" => {
            let len: i64 = rest.parse().map_err(std::io::Error::other)?;
            if len < 0 {
                return Ok("(nil)".into());
            }
            let mut buf = vec![0; len as usize + 2];
            reader.read_exact(&mut buf)?;
            buf.truncate(len as usize);
            String::from_utf8(buf).map_err(std::io::Error::other)
        }
        "*" => {
            let len: i64 = rest.parse().map_err(std::io::Error::other)?;
            let mut items = Vec::new();
            for _ in 0..len.max(0) {
                items.push(read_reply(reader)?);
            }
            Ok(items.join("\n"))
        }
        _ => Err(std::io::Error::other(format!("unexpected reply {line:?}"))),
    }
}
