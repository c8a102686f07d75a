//! The `hablar-server` binary: parses the configuration, binds its listeners and calls
//! [`hablar_server::serve_with`].

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use hablar_server::{serve_with, Config};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
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
    let metrics = match config.metrics_bind {
        Some(metrics_addr) => match TcpListener::bind(metrics_addr).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                eprintln!("hablar-server: cannot listen for metrics on {metrics_addr}: {err}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    // Scripts bind port 0 and read the port from this one line.
    println!("hablar-server listening on http://{addr}");
    let _ = std::io::stdout().flush();
    match serve_with(listener, metrics, config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hablar-server: {err}");
            ExitCode::FAILURE
        }
    }
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
