//! What the end-to-end tests share: the emulator's environment, the binary, the boto3 client,
//! unique names.

#![allow(dead_code)]

pub mod action_fleet;
pub mod aws_semantics;
pub mod fault_proxy;
pub mod process_fleet;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command};

/// The repository root (tests run with it as the working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require_emulator() {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some() && std::env::var_os("OPSFLEET_TEST_PYTHON").is_some(),
        "the end-to-end tests need the emulator and its Python client: run them with tests/run.sh"
    );
}

/// A fleet name no other test uses.
pub fn unique_fleet(prefix: &str) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Writes a config whose `FLEET` placeholder is the fleet name; returns its path.
pub fn write_config(fleet: &str, template: &str) -> PathBuf {
    let dir = root().join("target").join("e2e");
    std::fs::create_dir_all(&dir).expect("create target/e2e");
    let path = dir.join(format!("{fleet}.toml"));
    std::fs::write(&path, template.replace("FLEET", fleet)).expect("write config");
    path
}

/// The `opsfleet` binary with the given arguments, in the repository root.
pub fn opsfleet(args: &[&str]) -> Command {
    require_emulator();
    let mut command = Command::new(env!("CARGO_BIN_EXE_opsfleet"));
    command.args(args).current_dir(root()).env("RUST_LOG", "warn,opsfleet=info");
    command
}

/// The endpoints of the fast emulators (fauxqs for SQS, DynamoDB Local) that `tests/run.sh`
/// starts, for fleets under load or faults.
pub fn fast_endpoints() -> (String, String) {
    match (std::env::var("OPSFLEET_TEST_FAST_SQS"), std::env::var("OPSFLEET_TEST_FAST_DYNAMODB")) {
        (Ok(sqs), Ok(dynamodb)) => (sqs, dynamodb),
        _ => panic!("the load and fault tests need the fast emulators: run them with tests/run.sh"),
    }
}

/// The `opsfleet` binary against the fast emulators (the SDK's per-service endpoint
/// variables), in the repository root.
pub fn opsfleet_fast(args: &[&str]) -> Command {
    let (sqs, dynamodb) = fast_endpoints();
    let mut command = opsfleet(args);
    command.env("AWS_ENDPOINT_URL_SQS", sqs).env("AWS_ENDPOINT_URL_DYNAMODB", dynamodb);
    command
}

/// A backend on the fast emulators, for a test process that talks to them itself.
pub async fn fast_backend() -> opsfleet_backend::AwsBackend {
    let (sqs, dynamodb) = fast_endpoints();
    opsfleet_backend::AwsBackend::with_endpoints(&opsfleet_backend::AwsBackend::sdk_config().await, &sqs, &dynamodb)
}

/// The `opsfleet` binary for commands that need no AWS endpoint.
pub fn opsfleet_offline(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_opsfleet"));
    command.args(args).current_dir(root());
    command
}

/// The boto3 client script with the given arguments.
pub fn python_client(args: &[&str]) -> Command {
    require_emulator();
    let python = std::env::var("OPSFLEET_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = Command::new(python);
    command.arg(root().join("tests").join("sqs_client.py")).args(args).current_dir(root());
    command
}

/// Drains a queue with boto3 until it stays empty for `quiet` seconds.
pub fn drain(queue: &str, quiet: f64) -> Vec<Value> {
    let out = python_client(&["drain", queue, &quiet.to_string()]).output().expect("run drain");
    assert!(out.status.success(), "drain {queue}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("drain line")).collect()
}

/// Sends SIGTERM to a child process.
pub fn terminate(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
}

/// A child process killed when the guard drops, so a failed test leaves nothing running.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address with a port free right now.
pub fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// The body of a plain HTTP GET, retried until the server answers (up to 10 s).
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let mut response = String::new();
            if stream.write_all(request.as_bytes()).is_ok() && stream.read_to_string(&mut response).is_ok() {
                return response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
            }
        }
        assert!(std::time::Instant::now() < deadline, "no HTTP answer from {addr}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
