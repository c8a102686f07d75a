//! The `hablar-server` binary: parses the configuration, binds its listeners, says where
//! it listens and starts a [`hablar_server::Server`].

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use hablar_server::{Config, Server};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// The server's flags, and how it tells a script that it is listening.
#[derive(Debug, Parser)]
#[command(name = "hablar-server", version, about = "Hablar's reference chat server")]
struct Args {
    /// The server's configuration.
    #[command(flatten)]
    config: Config,
    /// Once listening, write the bound address (`IP:PORT`, one line) to this file, so that
    /// a script that binds port 0 learns the port and knows the server is ready. Written
    /// whole (a rename), so a reader never sees part of it.
    #[arg(long, env = "HABLAR_PORT_FILE")]
    port_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args { config, port_file } = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let listener = match TcpListener::bind(config.bind).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("hablar-server: cannot listen on {}: {err}", config.bind);
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("hablar-server: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = config.validate(addr) {
        eprintln!("hablar-server: {err}");
        return ExitCode::FAILURE;
    }
    // Bound here rather than by the server, so that a taken address fails the start
    // before the address is announced.
    let metrics_bind = config.metrics_bind;
    let mut server = Server::new(config);
    if let Some(metrics_addr) = metrics_bind {
        match TcpListener::bind(metrics_addr).await {
            Ok(listener) => server = server.metrics_listener(listener),
            Err(err) => {
                eprintln!("hablar-server: cannot listen for metrics on {metrics_addr}: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    // For people; scripts use --port-file.
    println!("hablar-server listening on http://{addr}");
    let _ = std::io::stdout().flush();
    if let Some(path) = &port_file {
        if let Err(err) = write_port_file(path, addr) {
            eprintln!(
                "hablar-server: cannot write the port file {}: {err}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    match server.serve(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hablar-server: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `addr` to `path` through a temporary file renamed over it: a script polling for
/// the file finds it complete or not at all.
fn write_port_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, format!("{addr}\n"))?;
    std::fs::rename(&partial, path)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
