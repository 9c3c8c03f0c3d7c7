//! A loopback HTTP layer in front of the emulator that serves EC2 as AWS does rather than as
//! moto does. moto is strongly consistent, finishes snapshots and images at once, never
//! throttles and never fails one region while another works; AWS does all of that:
//!
//! - **Eventual consistency.** For [`Ec2Plan::consistency`] after a resource is created, a
//!   describe that names it answers `Invalid….NotFound`, and a describe that lists or filters
//!   leaves it out; for as long after its tags change, a filtered describe leaves it out.
//! - **Pending.** Snapshots (made or copied) and images made through the layer read
//!   `pending` for [`Ec2Plan::pending`]; snapshots of [`Ec2Plan::erroring_volumes`] then read
//!   `error`.
//! - **Throttling.** One request-token bucket per API per (account, region), sized as EC2
//!   sizes them (mutating 50 + 5/s, filtered reads 100 + 20/s, unfiltered reads 50 + 10/s),
//!   scaled by [`Ec2Plan::throttle`]; an empty bucket answers `RequestLimitExceeded`.
//! - **Retryable errors.** A share of mutating calls answers `InternalError` or
//!   `ServiceUnavailable` without reaching the service; a share of creates is applied and then
//!   answers `InternalError` (the caller cannot tell it was made); a share of starts answers
//!   `InsufficientInstanceCapacity`; starts of [`Ec2Plan::no_start`] instances are accepted
//!   and fall back to `stopped`; starts of instances of [`Ec2Plan::no_capacity_types`]
//!   answer `InsufficientInstanceCapacity`; instances of [`Ec2Plan::stuck_stopping`] read
//!   `stopping` after their stop until a forced stop.
//! - **Failing places.** Every EC2 call in a [`FailingPlace`] answers its code, as a region
//!   not opted in (`OptInRequired`) or an account whose role lacks a permission
//!   (`UnauthorizedOperation`) does.
//!
//! Run Command's invocations are unknown, then in progress, for a while (see [`ssm`]).
//! RDS snapshots read `creating` for a while and encrypted cross-region copies must be
//! presigned (see [`rds`]). DynamoDB's control plane and the Tagging API get the same
//! treatment (see [`dynamodb`]):
//! tables `UPDATING` after an update, backups `CREATING` and missing from lists for a while,
//! a daily allowance of throughput decreases, lost replies and server errors.
//!
//! Everything else (STS, SNS, the calls the plan leaves alone) goes through unchanged. The
//! account of a call is learned from the `AssumeRole` answers that pass through (the access
//! key it handed out); other keys are the emulator's default account.
//!
//! It also fills in what EC2 does and the emulator does not: snapshot tags in `CreateImage`'s
//! tag specifications, `DeleteAssociatedSnapshots` on `DeregisterImage`, `CopyTagsFromSource`
//! on `CreateSnapshots`, `EnableImageDeprecation` (shown as `deprecationTime`),
//! `IncorrectInstanceState` for a type change of an instance that is not
//! stopped. `InvalidSnapshot.InUse` for a snapshot behind a registered image is
//! the emulator's own.

mod before;
mod buckets;
mod deprecations;
pub mod dynamodb;
mod fills;
mod hibernation;
pub mod rds;
mod request;
pub mod ssm;
mod xml;

pub use request::QueryRequest;

use buckets::Buckets;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The account of calls signed with keys the layer did not see handed out.
pub const DEFAULT_ACCOUNT: &str = "123456789012";

/// An (account, region) whose every EC2, DynamoDB and Tagging API call answers an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailingPlace {
    /// The account.
    pub account: String,
    /// The region.
    pub region: String,
    /// The error code, such as `UnauthorizedOperation` or `OptInRequired`.
    pub code: String,
}

/// What the layer does.
#[derive(Debug, Clone, Default)]
pub struct Ec2Plan {
    /// How long after a create or a tag change describes do not see it yet.
    pub consistency: Duration,
    /// How long snapshots and images made through the layer stay `pending`.
    pub pending: Duration,
    /// Per-API token buckets at this scale of EC2's (1.0 is EC2's; `None`: no throttling).
    pub throttle: Option<f64>,
    /// The share of mutating calls answered `InternalError` or `ServiceUnavailable` before
    /// reaching the service.
    pub server_errors: f64,
    /// The share of creates applied and then answered `InternalError`.
    pub lost_creates: f64,
    /// The share of `StartInstances` and `RunInstances` answered `InsufficientInstanceCapacity`.
    pub no_capacity: f64,
    /// Instance types EC2 has no capacity for: a start of an instance of one answers
    /// `InsufficientInstanceCapacity`.
    pub no_capacity_types: BTreeSet<String>,
    /// Instances whose start is accepted and then falls back to `stopped`.
    pub no_start: BTreeSet<String>,
    /// Instances whose stop hangs in `stopping` until a forced stop.
    pub stuck_stopping: BTreeSet<String>,
    /// Volumes whose snapshots end in `error` once their pending time is over.
    pub erroring_volumes: BTreeSet<String>,
    /// Places that refuse every EC2 call.
    pub failing: Vec<FailingPlace>,
    /// How many times a day one DynamoDB table's throughput may be lowered (`None`: any).
    pub decreases_per_day: Option<u32>,
    /// Run Command commands containing one of these texts fail (exit code 1).
    pub failing_commands: BTreeSet<String>,
}

impl Ec2Plan {
    /// EC2 as it behaves on an ordinary day, with windows short enough for tests: a second of
    /// eventual consistency, two seconds of pending, EC2's own buckets, one mutating call in
    /// fifty answered with a server error and one start in fifty with no capacity.
    pub fn aws() -> Self {
        Ec2Plan {
            consistency: Duration::from_secs(1),
            pending: Duration::from_secs(2),
            throttle: Some(1.0),
            server_errors: 0.02,
            no_capacity: 0.02,
            decreases_per_day: Some(4),
            ..Self::default()
        }
    }
}

/// The layer: a proxy on a loopback port.
pub struct Ec2Realism {
    /// Where the layer listens: the endpoint to give the SDK.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

type Upstream = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

struct Shared {
    plan: Mutex<Ec2Plan>,
    seen: Mutex<Seen>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests received so far, by action (`StopInstances`, `CreateSnapshots`, …).
    calls: Mutex<BTreeMap<String, u64>>,
    client: Upstream,
    upstream: String,
}

/// What the layer remembers of the calls it served.
#[derive(Default)]
struct Seen {
    /// When each resource was made.
    created: HashMap<String, Instant>,
    /// When each resource's tags last changed.
    tagged: HashMap<String, Instant>,
    /// The account of each access key handed out by `AssumeRole`.
    accounts: HashMap<String, String>,
    /// The image each `CopyImage` client token made: EC2 answers a repeat with it.
    copy_tokens: HashMap<String, String>,
    /// The instances launched able to hibernate.
    hibernating: BTreeSet<String>,
    /// When each image deprecates (`EnableImageDeprecation`), as EC2 writes it, and when
    /// that was set (describes show it once the consistency window is over).
    deprecations: HashMap<String, (String, Instant)>,
    /// DynamoDB tables and backups.
    tables: dynamodb::Tables,
    /// RDS snapshots.
    rds: rds::Snapshots,
    /// Run Command's commands.
    commands: ssm::Commands,
    buckets: Buckets,
}

/// Why a request could not be served (the connection is dropped).
#[derive(Debug)]
struct Broken;

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the EC2 realism layer could not reach the emulator")
    }
}

impl std::error::Error for Broken {}

impl Ec2Realism {
    /// Starts the layer on a free loopback port in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, plan: Ec2Plan) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            plan: Mutex::new(plan),
            seen: Mutex::default(),
            counts: Mutex::default(),
            calls: Mutex::default(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            upstream: upstream.trim_end_matches('/').to_owned(),
        });
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
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
        Ok(Ec2Realism { url: format!("http://{addr}"), shared, task })
    }

    /// `base` with every service's endpoint at the layer (the environment's per-service
    /// endpoints, which would otherwise win over the config's, are left out).
    pub fn sdk_config(&self, base: &aws_types::SdkConfig) -> aws_types::SdkConfig {
        let mut builder = base.to_builder();
        builder.set_service_config(None::<NoServiceConfig>);
        builder.endpoint_url(&self.url).build()
    }

    /// Changes what the layer does from now on.
    pub fn set(&self, plan: Ec2Plan) {
        *lock(&self.shared.plan) = plan;
    }

    /// Changes the plan in place.
    pub fn change(&self, edit: impl FnOnce(&mut Ec2Plan)) {
        edit(&mut lock(&self.shared.plan));
    }

    /// What the layer does now.
    pub fn plan(&self) -> Ec2Plan {
        lock(&self.shared.plan).clone()
    }

    /// What the layer did so far, by kind (`not_found`, `hidden`, `pending`, `throttled`,
    /// `server_error`, `lost_create`, `no_capacity`, `no_capacity_type`, `no_start`,
    /// `incorrect_state`, `failing_place`, `error`).
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.shared.counts).clone()
    }

    /// The requests received so far, by action (`StopInstances`, `CreateSnapshots`, …), retries
    /// included.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        lock(&self.shared.calls).clone()
    }

    /// Waits until everything made or tagged so far is seen by every describe.
    pub async fn settle(&self) {
        let window = lock(&self.shared.plan).consistency;
        let last = {
            let seen = lock(&self.shared.seen);
            seen.created.values().chain(seen.tagged.values()).max().copied()
        };
        if let Some(last) = last {
            let left = window.saturating_sub(last.elapsed());
            tokio::time::sleep(left + Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Ec2Realism {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The describe actions the layer edits: the set their items are in, the element naming an
/// item, the list parameter naming ids, and the code for an unknown id.
const DESCRIBES: &[(&str, &str, &str, &str, &str)] = &[
    ("DescribeSnapshots", "snapshotSet", "snapshotId", "SnapshotId", "InvalidSnapshot.NotFound"),
    ("DescribeImages", "imagesSet", "imageId", "ImageId", "InvalidAMIID.NotFound"),
    ("DescribeVolumes", "volumeSet", "volumeId", "VolumeId", "InvalidVolume.NotFound"),
    ("DescribeInstances", "reservationSet", "instanceId", "InstanceId", "InvalidInstanceID.NotFound"),
    // Tags are read by filter only: a resource whose tags changed lately shows none yet.
    ("DescribeTags", "tagSet", "resourceId", "", ""),
];

/// The creates the layer remembers, with the element naming what they made.
const CREATES: &[(&str, &str)] = &[
    ("CreateSnapshot", "snapshotId"),
    ("CreateSnapshots", "snapshotId"),
    ("CopySnapshot", "snapshotId"),
    ("CreateImage", "imageId"),
    ("CopyImage", "imageId"),
    ("RegisterImage", "imageId"),
    ("CreateVolume", "volumeId"),
    ("RunInstances", "instanceId"),
];

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/xml"));
    response
}

fn ec2_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    answer(status, xml::error(code, message))
}

async fn handle(req: Request<Incoming>, shared: &Shared) -> Result<Response<Full<Bytes>>, Broken> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|_| Broken)?.to_bytes();
    let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let request = QueryRequest::parse(auth, &body);
    let plan = lock(&shared.plan).clone();
    let count = |kind: &'static str| *lock(&shared.counts).entry(kind).or_default() += 1;
    let action = request.action().to_owned();
    *lock(&shared.calls).entry(action.clone()).or_default() += 1;

    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    if matches!(request.service.as_str(), "dynamodb" | "tagging" | "ssm") && !target.is_empty() {
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let url = format!("{}{path}", shared.upstream);
        let upstream = |target: String, body: Bytes| {
            let mut forward = Request::builder().method(hyper::Method::POST).uri(&url);
            for (name, value) in &parts.headers {
                if name != hyper::header::CONTENT_LENGTH && name != "x-amz-target" {
                    forward = forward.header(name, value);
                }
            }
            let forward = forward.header("x-amz-target", target).body(Full::new(body));
            async move {
                let answer = shared.client.request(forward.map_err(|_| Broken)?).await.map_err(|_| Broken)?;
                let status = answer.status();
                let body = answer.into_body().collect().await.map_err(|_| Broken)?.to_bytes();
                Ok((status, String::from_utf8_lossy(&body).into_owned()))
            }
        };
        let account = lock(&shared.seen).accounts.get(&request.access_key).cloned();
        let account = account.unwrap_or_else(|| DEFAULT_ACCOUNT.to_owned());
        if let Some(place) = plan.failing.iter().find(|p| p.account == account && p.region == request.region) {
            count("failing_place");
            let message = format!("{target} in account {account} is refused in {}", request.region);
            return Ok(dynamodb::error(StatusCode::BAD_REQUEST, &place.code, &message));
        }
        if request.service == "ssm" {
            return ssm::serve(shared, &plan, &target, &body, &count, upstream).await;
        }
        return dynamodb::serve(shared, &plan, &target, &body, &count, upstream).await;
    }

    if request.service == "rds" {
        if let Some(refused) = rds::before(&plan, &request, &count) {
            return Ok(refused);
        }
    }
    if request.service == "ec2" {
        if let Some(refused) = before::refused(shared, &plan, &request, &count) {
            return Ok(refused);
        }
    }

    // A repeated `CopyImage` client token makes nothing new: EC2 answers with the first copy.
    let token = (action == "CopyImage").then(|| request.params.get("ClientToken").cloned()).flatten();
    if let Some(image) = token.as_ref().and_then(|t| lock(&shared.seen).copy_tokens.get(t).cloned()) {
        count("copy_token_repeated");
        return Ok(answer(StatusCode::OK, xml::copy_image_answer(&image)));
    }

    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let direct = Direct { shared, headers: &parts.headers, url: format!("{}{path}", shared.upstream) };
    if request.service == "ec2" && matches!(action.as_str(), "EnableImageDeprecation" | "DisableImageDeprecation") {
        return Ok(deprecations::serve(shared, &request, &direct).await);
    }
    let (changed, later) = if request.service == "ec2" {
        fills::before(&request, &direct, &plan.no_capacity_types).await
    } else {
        (None, fills::After::default())
    };
    if let Some((code, message)) = &later.refused {
        return Ok(match *code {
            "InsufficientInstanceCapacity" => {
                count("no_capacity_type");
                ec2_error(StatusCode::INTERNAL_SERVER_ERROR, code, message)
            }
            "IncorrectInstanceState" => {
                count("incorrect_state");
                ec2_error(StatusCode::BAD_REQUEST, code, message)
            }
            _ => ec2_error(StatusCode::BAD_REQUEST, code, message),
        });
    }
    let body = match changed {
        Some(params) => Bytes::from(form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish()),
        None => body,
    };
    let mut forward = Request::builder().method(parts.method.clone()).uri(&direct.url);
    for (name, value) in &parts.headers {
        if name != hyper::header::CONTENT_LENGTH {
            forward = forward.header(name, value);
        }
    }
    let forward = forward.body(Full::new(body)).map_err(|_| Broken)?;
    let upstream = shared.client.request(forward).await.map_err(|_| Broken)?;
    let (mut head, upstream) = upstream.into_parts();
    let text = String::from_utf8_lossy(&upstream.collect().await.map_err(|_| Broken)?.to_bytes()).into_owned();
    let ok = head.status.is_success();

    if request.service == "sts" && action == "AssumeRole" && ok {
        let account = request.params.get("RoleArn").and_then(|arn| arn.split(':').nth(4)).unwrap_or_default();
        if let Some(key) = xml::text(&text, "AccessKeyId") {
            lock(&shared.seen).accounts.insert(key.to_owned(), account.to_owned());
        }
    }
    if request.service == "rds" && ok {
        head.headers.remove("content-length");
        return Ok(match rds::after(shared, &plan, &request, text, &count) {
            Some(text) => Response::from_parts(head, Full::new(Bytes::from(text))),
            None => rds::lost(),
        });
    }
    if request.service != "ec2" || !ok {
        head.headers.remove("content-length");
        return Ok(Response::from_parts(head, Full::new(Bytes::from(text))));
    }

    fills::after(later, &text, &direct).await;
    if let (Some(token), Some(image)) = (token, xml::text(&text, "imageId")) {
        lock(&shared.seen).copy_tokens.insert(token, image.to_owned());
    }
    let now = Instant::now();
    if let Some((_, element)) = CREATES.iter().find(|(a, _)| *a == action) {
        let made = match action.as_str() {
            // Only the instances' own ids: not those of their volumes or interfaces.
            "RunInstances" => xml::items(&text, "instancesSet")
                .into_iter()
                .filter_map(|(from, to)| xml::text(&text[from..to], element).map(str::to_owned))
                .collect(),
            _ => xml::texts(&text, element).into_iter().map(str::to_owned).collect::<Vec<_>>(),
        };
        if action == "RunInstances" {
            hibernation::launched(shared, &request, &made);
        }
        let mut seen = lock(&shared.seen);
        for id in made {
            seen.created.insert(id, now);
        }
        drop(seen);
        if rand::thread_rng().gen::<f64>() < plan.lost_creates {
            count("lost_create");
            return Ok(ec2_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "An internal error has occurred"));
        }
    }
    if action == "CreateTags" || action == "DeleteTags" {
        let mut seen = lock(&shared.seen);
        for id in request.list("ResourceId") {
            seen.tagged.insert(id, now);
        }
    }
    let text = if action == "DescribeImages" { deprecations::shown(shared, &plan, text) } else { text };
    let text = if action == "DescribeInstances" { hibernation::shown(shared, text) } else { text };
    let text = match DESCRIBES.iter().find(|(a, ..)| *a == action) {
        Some(&(_, set, element, _, _)) => after_describe(shared, &plan, &request, &text, set, element, &count),
        None => text,
    };
    head.headers.remove("content-length");
    Ok(Response::from_parts(head, Full::new(Bytes::from(text))))
}

/// A describe's answer as AWS would give it now: recent resources left out of lists, recent
/// snapshots and images still pending.
fn after_describe(
    shared: &Shared,
    plan: &Ec2Plan,
    request: &QueryRequest,
    text: &str,
    set: &str,
    element: &str,
    count: &impl Fn(&'static str),
) -> String {
    let listing = request.params.keys().all(|k| !k.starts_with(&format!("{}.", id_param(request.action()))));
    let filtered = request.params.keys().any(|k| k.starts_with("Filter."));
    let seen = lock(&shared.seen);
    let young = |map: &HashMap<String, Instant>, id: &str, window: Duration| {
        map.get(id).is_some_and(|at| at.elapsed() < window)
    };
    xml::edit_items(text, set, |item| {
        let ids = xml::texts(item, element);
        let own = ids.first().copied().unwrap_or_default();
        if listing
            && ids.iter().any(|id| {
                young(&seen.created, id, plan.consistency) || (filtered && young(&seen.tagged, id, plan.consistency))
            })
        {
            count("hidden");
            return None;
        }
        if element == "snapshotId" {
            if young(&seen.created, own, plan.pending) {
                count("pending");
                return Some(
                    item.replace("<status>completed</status>", "<status>pending</status>")
                        .replace("<progress>100%</progress>", "<progress>42%</progress>"),
                );
            }
            let volume = xml::text(item, "volumeId").unwrap_or_default();
            if seen.created.contains_key(own) && plan.erroring_volumes.contains(volume) {
                count("error");
                return Some(item.replace("<status>completed</status>", "<status>error</status>"));
            }
        }
        if element == "instanceId"
            && ids.iter().any(|id| plan.stuck_stopping.contains(*id))
            && item.contains("<name>stopped</name>")
        {
            count("stuck_stopping");
            return Some(
                item.replace("<code>80</code>", "<code>64</code>")
                    .replace("<name>stopped</name>", "<name>stopping</name>"),
            );
        }
        if element == "imageId" && young(&seen.created, own, plan.pending) {
            count("pending");
            return Some(item.replace("<imageState>available</imageState>", "<imageState>pending</imageState>"));
        }
        Some(item.to_owned())
    })
}

fn id_param(action: &str) -> &'static str {
    DESCRIBES.iter().find(|(a, ..)| *a == action).map_or("", |d| d.3)
}

/// Calls to the emulator on behalf of the call being served, with its headers.
struct Direct<'a> {
    shared: &'a Shared,
    headers: &'a hyper::HeaderMap,
    url: String,
}

impl fills::Upstream for Direct<'_> {
    async fn call(&self, params: &[(&str, &str)]) -> Option<String> {
        let mut all: Vec<(&str, &str)> = params.to_vec();
        all.push(("Version", "2016-11-15"));
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(&all).finish();
        let mut request = Request::builder().method(hyper::Method::POST).uri(&self.url);
        for (name, value) in self.headers {
            if name != hyper::header::CONTENT_LENGTH {
                request = request.header(name, value);
            }
        }
        let request = request.body(Full::new(Bytes::from(body))).ok()?;
        let answer = self.shared.client.request(request).await.ok()?;
        let ok = answer.status().is_success();
        let body = answer.into_body().collect().await.ok()?.to_bytes();
        ok.then(|| String::from_utf8_lossy(&body).into_owned())
    }
}

/// No per-service settings from the environment.
#[derive(Debug)]
struct NoServiceConfig;

impl aws_types::service_config::LoadServiceConfig for NoServiceConfig {
    fn load_config(&self, _key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        None
    }
}
