//! A loopback HTTP proxy in front of an emulator that injects the faults a fleet meets on the
//! way to AWS: latency, 5xx answers, throttling errors in the service's own dialect, connections
//! reset before a request reaches the service or after it was applied, and the service being
//! unreachable altogether. It also serves what AWS does and the emulators do not: DynamoDB's
//! eventually consistent reads (`GetItem` without `ConsistentRead`, queries of an index or
//! without `ConsistentRead`) see the table as it was a moment ago, and a standard SQS queue
//! delivers some messages twice. The plan can change while a fleet runs; every injected fault
//! is counted.

use super::aws_semantics::{AwsSemantics, Served};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Which faults to inject, as shares of requests (each drawn on its own).
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Requests delayed by 50 to 300 ms.
    pub latency: f64,
    /// Requests answered 500 without reaching the service.
    pub server_error: f64,
    /// Requests answered with the service's throttling error without reaching it.
    pub throttle: f64,
    /// Connections reset before the request reaches the service.
    pub reset_before: f64,
    /// Connections reset after the service applied the request (the caller never learns).
    pub reset_after: f64,
    /// Every connection refused at once: the service is unreachable.
    pub down: bool,
    /// DynamoDB: eventually consistent reads see the table as it was this long ago.
    pub stale_reads: Option<Duration>,
    /// SQS: the share of messages received from a standard queue that a later receive of the
    /// same queue delivers again.
    pub duplicates: f64,
}

impl FaultPlan {
    /// What AWS does on every request, faults or none: reads a second behind, one request in a
    /// hundred (writes among them) applied with its reply lost (the SDK sends it again), one
    /// standard-queue message in twenty delivered twice.
    pub fn aws() -> Self {
        FaultPlan { stale_reads: Some(Duration::from_secs(1)), reset_after: 0.01, duplicates: 0.05, ..Self::default() }
    }
}

/// One proxy.
pub struct FaultProxy {
    /// Where the proxy listens: point the SDK's endpoint here.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Injected;

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by the fault proxy")
    }
}

impl std::error::Error for Injected {}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy");
        let addr: SocketAddr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            plan: Mutex::new(FaultPlan::default()),
            counts: Mutex::default(),
            log: Mutex::default(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            upstream: upstream.trim_end_matches('/').to_owned(),
            aws: AwsSemantics::default(),
        });
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                if s.plan.lock().unwrap_or_else(PoisonError::into_inner).down {
                    *s.counts.lock().unwrap_or_else(PoisonError::into_inner).entry("unreachable").or_default() += 1;
                    drop(stream);
                    continue;
                }
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = Arc::clone(&s);
                        async move { handle(req, &s).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy { url: format!("http://{addr}"), shared, task }
    }

    /// Sets the faults to inject from now on.
    pub fn set(&self, plan: FaultPlan) {
        *self.shared.plan.lock().unwrap_or_else(PoisonError::into_inner) = plan;
    }

    /// The faults injected from now on.
    pub fn plan(&self) -> FaultPlan {
        self.shared.plan.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.shared.counts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every request forwarded, with when it was forwarded and its action (the `Action` of a
    /// query-protocol body, or the `X-Amz-Target` operation).
    pub fn requests(&self) -> Vec<(std::time::Instant, String)> {
        self.shared.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Eventually consistent reads served stale, and standard-queue messages delivered twice.
    pub fn aws_semantics(&self) -> (u64, u64) {
        let aws = &self.shared.aws;
        (
            aws.stale_reads.load(std::sync::atomic::Ordering::Relaxed),
            aws.second_deliveries.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The number of faults injected so far.
    pub fn total(&self) -> u64 {
        self.injected().values().sum()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Upstream = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Sends requests to the service with the headers of the request being served.
pub struct Forwarder<'a> {
    client: &'a Upstream,
    url: String,
    headers: &'a hyper::HeaderMap,
    /// `DynamoDB_20120810` or `AmazonSQS`.
    service: String,
}

impl Forwarder<'_> {
    /// Sends `operation` with `body`; the status and body of the answer, or `None` when the
    /// service could not be reached.
    pub async fn call(&self, operation: &str, body: Bytes) -> Option<(u16, Bytes)> {
        let mut request = Request::builder().method(hyper::Method::POST).uri(&self.url);
        for (name, value) in self.headers {
            if name != hyper::header::CONTENT_LENGTH && name.as_str() != "x-amz-target" {
                request = request.header(name, value);
            }
        }
        let request =
            request.header("x-amz-target", format!("{}.{operation}", self.service)).body(Full::new(body)).ok()?;
        let answer = self.client.request(request).await.ok()?;
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    }
}

/// Everything a request is served with.
struct Shared {
    plan: Mutex<FaultPlan>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    log: Mutex<Vec<(std::time::Instant, String)>>,
    client: Upstream,
    upstream: String,
    aws: AwsSemantics,
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Result<Response<Full<Bytes>>, Injected> {
    let plan = shared.plan.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let count = |kind: &'static str| {
        *shared.counts.lock().unwrap_or_else(PoisonError::into_inner).entry(kind).or_default() += 1;
    };
    let (draws, pause) = {
        let mut rng = rand::thread_rng();
        let draws: [f64; 5] = [rng.gen(), rng.gen(), rng.gen(), rng.gen(), rng.gen()];
        (draws, Duration::from_millis(rng.gen_range(50..300)))
    };
    if plan.down {
        count("unreachable");
        return Err(Injected);
    }
    let target = req.headers().get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let dynamodb = target.starts_with("DynamoDB");
    if draws[0] < plan.latency {
        count("latency");
        tokio::time::sleep(pause).await;
    }
    if draws[1] < plan.reset_before {
        count("reset_before");
        return Err(Injected);
    }
    if draws[2] < plan.server_error {
        count("server_error");
        let kind = if dynamodb { "com.amazonaws.dynamodb.v20120810#InternalServerError" } else { "InternalError" };
        return Ok(error(StatusCode::INTERNAL_SERVER_ERROR, kind, dynamodb));
    }
    if draws[3] < plan.throttle {
        count("throttle");
        let kind = if dynamodb {
            "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
        } else {
            "ThrottlingException"
        };
        return Ok(error(StatusCode::BAD_REQUEST, kind, dynamodb));
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|_| Injected)?.to_bytes();
    let operation = target.rsplit('.').next().unwrap_or_default().to_owned();
    let action = String::from_utf8_lossy(&body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action=").map(str::to_owned))
        .unwrap_or_else(|| operation.clone());
    shared.log.lock().unwrap_or_else(PoisonError::into_inner).push((std::time::Instant::now(), action));
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let forwarder = Forwarder {
        client: &shared.client,
        url: format!("{}{path}", shared.upstream),
        headers: &parts.headers,
        service: target.split('.').next().unwrap_or_default().to_owned(),
    };
    let served = match (dynamodb, plan.stale_reads) {
        (true, Some(lag)) => shared.aws.dynamodb(lag, &operation, &body, &forwarder).await,
        (false, _) if plan.duplicates > 0.0 && target.starts_with("AmazonSQS") => {
            shared.aws.sqs(plan.duplicates, &operation, &body, &forwarder).await
        }
        _ => Served::Forward,
    };
    let answer = match served {
        Served::Answer(status, answer) => {
            let status = StatusCode::from_u16(status).map_err(|_| Injected)?;
            Response::builder()
                .status(status)
                .header("content-type", "application/x-amz-json-1.0")
                .body(Full::new(answer))
                .map_err(|_| Injected)?
        }
        Served::Forward => {
            let mut forward = Request::builder().method(parts.method.clone()).uri(format!("{}{path}", shared.upstream));
            for (name, value) in &parts.headers {
                forward = forward.header(name, value);
            }
            let forward = forward.body(Full::new(body)).map_err(|_| Injected)?;
            let answer = shared.client.request(forward).await.map_err(|_| Injected)?;
            let (parts, body) = answer.into_parts();
            let body = body.collect().await.map_err(|_| Injected)?.to_bytes();
            Response::from_parts(parts, Full::new(body))
        }
    };
    if draws[4] < plan.reset_after {
        count("reset_after");
        return Err(Injected);
    }
    Ok(answer)
}

/// An error answer in the service's JSON dialect.
fn error(status: StatusCode, kind: &str, dynamodb: bool) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "__type": kind, "message": "injected by the fault proxy" }).to_string();
    // Both services speak AWS JSON 1.0.
    let mut response = Response::builder().status(status).header("content-type", "application/x-amz-json-1.0");
    if !dynamodb {
        // SQS's JSON protocol names the error code in this header too.
        let code = kind.rsplit('#').next().unwrap_or(kind);
        response = response.header("x-amzn-query-error", format!("{code};Receiver"));
    }
    response.body(Full::new(Bytes::from(body))).unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
