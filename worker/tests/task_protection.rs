//! ECS task scale-in protection over real HTTP against a stand-in for the ECS agent's
//! endpoint: protected while jobs run (and renewed), released when none do and at shutdown,
//! and a failing agent never stops the loop.

use opsfleet_worker::task_protection::TaskProtection;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A loopback agent that records each request's request line and body and answers `status`.
async fn agent(status: &'static str) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // Read the head, then the body its Content-Length announces.
            loop {
                let n = stream.read(&mut buf).await.unwrap_or(0);
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|l| l.parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= length || n == 0 {
                        let line = head.lines().next().unwrap_or_default().to_owned();
                        if let Ok(mut seen) = record.lock() {
                            seen.push((line, body.to_owned()));
                        }
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let _ = stream.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes()).await;
        }
    });
    (addr, seen)
}

fn bodies(seen: &Mutex<Vec<(String, String)>>) -> Vec<String> {
    seen.lock().map(|s| s.iter().map(|(_, b)| b.clone()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn protected_while_jobs_run_released_when_none_do_and_at_shutdown() {
    let (addr, seen) = agent("200 OK").await;
    let running = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&running);
    let shutdown = CancellationToken::new();
    let protection =
        TaskProtection::new(&format!("http://{addr}/api/task-1"), 6).expect("uri").with_tick(Duration::from_millis(20));
    let task = tokio::spawn(protection.run(move || count.load(Ordering::SeqCst), shutdown.clone()));

    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(bodies(&seen).is_empty(), "an idle worker asks for nothing");
    running.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(bodies(&seen), [r#"{"ProtectionEnabled":true,"ExpiresInMinutes":6}"#], "one grant while busy");
    running.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(bodies(&seen).last().map(String::as_str), Some(r#"{"ProtectionEnabled":false}"#));
    running.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops at shutdown").expect("task");
    let all = bodies(&seen);
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[3], r#"{"ProtectionEnabled":false}"#, "released at shutdown");
    let lines: Vec<String> = seen.lock().map(|s| s.iter().map(|(l, _)| l.clone()).collect()).unwrap_or_default();
    assert!(lines.iter().all(|l| l == "PUT /api/task-1/task-protection/v1/state HTTP/1.1"), "{lines:?}");
}

#[tokio::test]
async fn a_refusing_agent_is_asked_again_and_never_stops_the_loop() {
    let (addr, seen) = agent("400 Bad Request").await;
    let protection = TaskProtection::new(&format!("http://{addr}/api/t"), 1).expect("uri");
    let refused = protection.set(true).await.expect_err("the agent refuses");
    assert!(refused.to_string().contains("400 Bad Request"), "{refused}");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(protection.with_tick(Duration::from_millis(20)).run(|| 1, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(bodies(&seen).len() >= 4, "tried again at each tick: {:?}", bodies(&seen));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops at shutdown").expect("task");
    let nobody = TaskProtection::new(&format!("http://{}/api/t", free_addr()), 1).expect("uri");
    assert!(matches!(
        nobody.set(true).await,
        Err(opsfleet_worker::task_protection::ProtectionError::Unreachable { .. })
    ));
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}
