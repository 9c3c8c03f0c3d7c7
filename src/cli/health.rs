//! `opsfleet healthcheck`: whether a process here answers on its metrics address and its
//! long-poll loops turn, for container health checks in images that have no curl.

use anyhow::Context;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// How long the check waits to connect, send and read.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The most of the metrics page the check reads.
const MAX_PAGE: u64 = 8 << 20;

/// The gauge of loops that stopped turning.
const STALLED: &str = "opsfleet_poll_loops_stalled";

/// GETs `/metrics` at `address`: exit 0 on an HTTP 200 with no stalled loop, else 1 with a
/// one-line reason.
pub fn check(address: &str) -> anyhow::Result<ExitCode> {
    match get_metrics(address).and_then(|page| loops_turn(&page)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("unhealthy: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn get_metrics(address: &str) -> anyhow::Result<String> {
    let addr: SocketAddr = address.parse().with_context(|| format!("`{address}` is not host:port"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("nothing answers on {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut page = Vec::new();
    stream.take(MAX_PAGE).read_to_end(&mut page).with_context(|| format!("{addr} did not answer"))?;
    let page = String::from_utf8_lossy(&page).into_owned();
    let status = page.lines().next().unwrap_or_default();
    anyhow::ensure!(status.split(' ').nth(1) == Some("200"), "{addr} answered `{status}`");
    Ok(page)
}

/// Fails when the page says a long-poll loop stopped turning.
fn loops_turn(page: &str) -> anyhow::Result<()> {
    let stalled = page
        .lines()
        .find_map(|l| l.strip_prefix(STALLED)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    anyhow::ensure!(stalled == 0.0, "{stalled} long-poll loops have not turned for 3 minutes");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_naming_stalled_loops_is_unhealthy_and_one_without_is_healthy() {
        assert!(loops_turn("opsfleet_jobs_in_flight 3\nopsfleet_poll_loops_stalled 0\n").is_ok());
        assert!(loops_turn("opsfleet_jobs_in_flight 3\n").is_ok(), "a process still starting has no loop yet");
        let err = loops_turn("# HELP x\nopsfleet_poll_loops_stalled 2\n").expect_err("stalled").to_string();
        assert_eq!(err, "2 long-poll loops have not turned for 3 minutes");
    }
}
