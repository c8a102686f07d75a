//! Captures one test's server logs (all levels) in memory, so the test can assert what
//! never appears in them (a token), unmixed with what concurrent tests log.
//!
//! A subscriber set as the global default would see every test in the process; a
//! [`Capture`] is instead the default dispatcher of the threads of one runtime
//! ([`Capture::runtime`]), so it sees exactly the servers that runtime runs.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::Dispatch;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs, once per process, a global subscriber that prints what `RUST_LOG` asks for
/// (nothing by default) through libtest's capture, for debugging a failing test. It
/// captures nothing: [`Capture`] does that, per test.
pub fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::from_default_env())
            .with_test_writer()
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Everything the server side logs on the threads of one runtime, at every level, with
/// span fields.
#[derive(Clone)]
pub struct Capture {
    buffer: Buffer,
    dispatch: Dispatch,
}

impl Capture {
    /// A multi-threaded tokio runtime whose worker and blocking threads log only into
    /// the returned capture.
    pub fn runtime() -> (tokio::runtime::Runtime, Capture) {
        let buffer = Buffer::default();
        let filter = EnvFilter::new("hablar_server=trace,tower_http=trace,axum=trace");
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(buffer.clone())
            .with_ansi(false)
            .finish();
        let capture = Capture {
            buffer,
            dispatch: Dispatch::new(subscriber),
        };
        let on_start = capture.dispatch.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                // The thread lives as long as the runtime; so does its default.
                std::mem::forget(tracing::dispatcher::set_default(&on_start));
            })
            .build()
            .expect("a tokio runtime");
        (runtime, capture)
    }

    /// Runs `test` on a runtime of its own whose logs go to a fresh capture.
    pub fn run<F: std::future::Future>(test: impl FnOnce(Capture) -> F) -> F::Output {
        let (runtime, capture) = Self::runtime();
        // `block_on` polls on this thread: it logs into the capture too.
        let _guard = tracing::dispatcher::set_default(&capture.dispatch);
        runtime.block_on(test(capture.clone()))
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.buffer
            .0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}
