//! ECS task scale-in protection while jobs run: a worker on ECS asks its agent
//! (`$ECS_AGENT_URI/task-protection/v1/state`) to keep it through a scale-in while it runs
//! action steps, and lets it go when it runs none. A step may take longer than the shutdown
//! grace (`timeout_secs`, 5 min by default, against 25 s), so the grace alone cannot cover it.
//! Protection never blocks a deployment or a crash: it only steers which tasks a scale-in
//! stops, and it expires on its own a little after the longest step if the worker dies.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How long one call to the agent may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the agent did not set the protection.
#[derive(Debug, thiserror::Error)]
pub enum ProtectionError {
    /// `ECS_AGENT_URI` is not an `http://host[:port]/path` URI.
    #[error("ECS_AGENT_URI `{0}` is not http://HOST[:PORT]/PATH")]
    BadUri(String),
    /// The agent could not be reached or did not answer in time.
    #[error("the ECS agent at {addr}: {reason}")]
    Unreachable {
        /// The agent's address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The agent answered with another status than 200.
    #[error("the ECS agent answered `{0}`")]
    Refused(String),
}

/// A worker's scale-in protection through its ECS agent.
#[derive(Debug, Clone)]
pub struct TaskProtection {
    addr: String,
    path: String,
    expires_minutes: u32,
    tick: Duration,
}

impl TaskProtection {
    /// Protection through the agent at `agent_uri` (`ECS_AGENT_URI`), each grant expiring after
    /// `expires_minutes` unless renewed; an error when the URI is not `http://HOST[:PORT]/PATH`.
    pub fn new(agent_uri: &str, expires_minutes: u32) -> Result<Self, ProtectionError> {
        let bad = || ProtectionError::BadUri(agent_uri.to_owned());
        let rest = agent_uri.strip_prefix("http://").ok_or_else(bad)?;
        let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, String::new()));
        if host.is_empty() {
            return Err(bad());
        }
        let addr = if host.contains(':') { host.to_owned() } else { format!("{host}:80") };
        Ok(TaskProtection {
            addr,
            path: format!("{}/task-protection/v1/state", path.trim_end_matches('/')),
            expires_minutes: expires_minutes.max(1),
            tick: Duration::from_secs(5),
        })
    }

    /// Looks at the running jobs every `tick` instead of every 5 s (tests).
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Keeps the task protected while `running()` is above zero, renewing the grant at half
    /// its life, and unprotected otherwise, until `shutdown`; then lets it go. Failures are
    /// logged and tried again at the next tick: protection is a preference, never a reason
    /// to stop working.
    pub async fn run(self, running: impl Fn() -> usize + Send, shutdown: CancellationToken) {
        let renew_after = Duration::from_secs(u64::from(self.expires_minutes) * 30);
        let mut protected: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.tick) => {}
            }
            let busy = running() > 0;
            let due = match (busy, protected) {
                (true, None) => true,
                (true, Some(since)) => since.elapsed() >= renew_after,
                (false, Some(_)) => true,
                (false, None) => false,
            };
            if !due {
                continue;
            }
            match self.set(busy).await {
                Ok(()) => {
                    protected = busy.then(Instant::now);
                    tracing::debug!(protected = busy, "Set ECS task scale-in protection.");
                }
                Err(e) => tracing::warn!(error = %e, protected = busy, "Cannot set ECS task scale-in protection."),
            }
        }
        if protected.is_some() {
            if let Err(e) = self.set(false).await {
                tracing::warn!(error = %e, "Cannot clear ECS task scale-in protection; it expires on its own.");
            }
        }
    }

    /// One `PUT` of the protection state.
    pub async fn set(&self, enabled: bool) -> Result<(), ProtectionError> {
        let body = if enabled {
            format!("{{\"ProtectionEnabled\":true,\"ExpiresInMinutes\":{}}}", self.expires_minutes)
        } else {
            "{\"ProtectionEnabled\":false}".to_owned()
        };
        let request = format!(
            "PUT {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.path,
            self.addr,
            body.len()
        );
        let unreachable = |reason: String| ProtectionError::Unreachable { addr: self.addr.clone(), reason };
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(&self.addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {CALL_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.lines().next().unwrap_or_default();
        if status.split(' ').nth(1) == Some("200") {
            Ok(())
        } else {
            Err(ProtectionError::Refused(status.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_uri_gives_the_address_and_the_path() {
        let p = TaskProtection::new("http://169.254.170.2/api/abc-123", 6).expect("valid");
        assert_eq!((p.addr.as_str(), p.path.as_str()), ("169.254.170.2:80", "/api/abc-123/task-protection/v1/state"));
        let p = TaskProtection::new("http://127.0.0.1:5123/v4/x/", 1).expect("valid");
        assert_eq!((p.addr.as_str(), p.path.as_str()), ("127.0.0.1:5123", "/v4/x/task-protection/v1/state"));
        assert!(TaskProtection::new("https://agent/api", 1).is_err());
        assert!(TaskProtection::new("http:///api", 1).is_err());
    }
}
