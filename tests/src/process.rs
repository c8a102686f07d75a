//! The `hablar-server` binary as a child process on a free port: started with
//! `--bind 127.0.0.1:0 --port-file …` and ready once the port file exists (the server
//! writes it whole once it listens). The one way Rust code starts the binary.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a server may take to listen (a debug build on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server may take to stop after SIGTERM (its grace period is 5 s by default).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `hablar-server`; killed on drop if still running.
pub struct ServerProcess {
    /// Where it listens (from its port file).
    pub addr: SocketAddr,
    /// The process.
    child: Child,
    /// Its port file, removed on drop.
    port_file: PathBuf,
}

impl ServerProcess {
    /// Starts `command` (the binary and its flags; its stdio as the caller set it) on a
    /// free loopback port and waits until it listens. Fails if it exits first, or does
    /// not listen within 30 s.
    pub fn start(mut command: Command) -> io::Result<Self> {
        let port_file = unique_port_file();
        let _ = std::fs::remove_file(&port_file);
        let child = command
            .args(["--bind", "127.0.0.1:0", "--port-file"])
            .arg(&port_file)
            .spawn()?;
        let mut process = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            port_file,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&process.port_file) {
                process.addr = text
                    .trim()
                    .parse()
                    .map_err(|err| io::Error::other(format!("port file {text:?}: {err}")))?;
                return Ok(process);
            }
            if let Some(status) = process.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "hablar-server exited before listening: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "hablar-server did not listen within {START_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process, e.g. to take its piped stdout.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Stops it with SIGTERM (a graceful shutdown) and returns how it exited; fails if it
    /// is still running 10 s later.
    pub fn terminate(mut self) -> io::Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!("kill -TERM: {status}")));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(exit) = self.child.try_wait()? {
                return Ok(exit);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "no exit {STOP_TIMEOUT:?} after SIGTERM"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.port_file);
    }
}

/// A path in the temporary directory no other server of any test process uses.
fn unique_port_file() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("hablar-server-{}-{n}.port", std::process::id()))
}
