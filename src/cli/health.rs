//! `opsfleet healthcheck`: whether a process here answers on its metrics address, for
//! container health checks in images that have no curl.

use anyhow::Context;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// How long the check waits to connect, send and read.
const TIMEOUT: Duration = Duration::from_secs(3);

/// GETs `/metrics` at `address`: exit 0 on an HTTP 200, else 1 with a one-line reason.
pub fn check(address: &str) -> anyhow::Result<ExitCode> {
    match get_metrics(address) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("unhealthy: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn get_metrics(address: &str) -> anyhow::Result<()> {
    let addr: SocketAddr = address.parse().with_context(|| format!("`{address}` is not host:port"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("nothing answers on {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 32];
    let read = stream.read(&mut head).with_context(|| format!("{addr} did not answer"))?;
    let status = String::from_utf8_lossy(&head[..read]);
    let status = status.lines().next().unwrap_or_default();
    anyhow::ensure!(status.split(' ').nth(1) == Some("200"), "{addr} answered `{status}`");
    Ok(())
}
