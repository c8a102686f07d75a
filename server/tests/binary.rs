//! The `hablar-server` binary as scripts use it: its address in the `--port-file` and in
//! one stdout line, SIGTERM stops it cleanly, and dev mode refuses a public address.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use hablar_tests::process::ServerProcess;

fn server() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hablar-server"));
    command.env_remove("HABLAR_JWT_SECRET").env("RUST_LOG", "warn");
    command
}

#[test]
fn prints_its_address_serves_and_stops_on_sigterm() {
    let mut command = server();
    command.arg("--dev").stdout(Stdio::piped()).stderr(Stdio::null());
    let mut server = ServerProcess::start(command).expect("start hablar-server");
    let addr = server.addr.to_string();
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
    let stdout = server.child().stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the address line");
    assert_eq!(
        line.trim().strip_prefix("hablar-server listening on http://"),
        Some(addr.as_str()),
        "unexpected first line {line:?}"
    );

    let mut http = TcpStream::connect(&addr).expect("connect");
    http.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    http.read_to_string(&mut response).expect("response");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );

    let exit = server.terminate().expect("stops after SIGTERM");
    assert!(exit.success(), "{exit}");
}

#[test]
fn dev_mode_on_a_public_address_refuses_to_start() {
    let output = server()
        .args(["--bind", "0.0.0.0:0", "--dev"])
        .output()
        .expect("run hablar-server");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no listening line");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--dev-allow-public"));
}

#[test]
fn refuses_to_start_without_a_jwt_secret() {
    let output = server()
        .args(["--bind", "127.0.0.1:0"])
        .output()
        .expect("run hablar-server");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("JWT secret"));
}

#[test]
fn refuses_to_start_when_its_metrics_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = server()
        .args(["--bind", "127.0.0.1:0", "--dev", "--metrics-bind", &addr])
        .output()
        .expect("run hablar-server");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no listening line");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen for metrics"), "{stderr}");
}
