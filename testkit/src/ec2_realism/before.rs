//! What the layer answers instead of EC2: a failing place, an empty bucket, a server error, no
//! capacity, a start that falls back, a describe of what is too new to be seen.

use super::{answer, ec2_error, hibernation, lock, Ec2Plan, QueryRequest, Shared, DEFAULT_ACCOUNT, DESCRIBES};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use rand::Rng;

/// What the layer answers instead of the service, if anything.
pub(super) fn refused(
    shared: &Shared,
    plan: &Ec2Plan,
    request: &QueryRequest,
    count: &impl Fn(&'static str),
) -> Option<Response<Full<Bytes>>> {
    let action = request.action();
    let account =
        lock(&shared.seen).accounts.get(&request.access_key).cloned().unwrap_or_else(|| DEFAULT_ACCOUNT.to_owned());
    if let Some(place) = plan.failing.iter().find(|p| p.account == account && p.region == request.region) {
        count("failing_place");
        let message = format!("{} in account {account} is refused in {}", action, request.region);
        return Some(ec2_error(StatusCode::FORBIDDEN, &place.code, &message));
    }
    if let Some(scale) = plan.throttle {
        if !lock(&shared.seen).buckets.take(&account, &request.region, request, scale) {
            count("throttled");
            return Some(ec2_error(StatusCode::SERVICE_UNAVAILABLE, "RequestLimitExceeded", "Request limit exceeded."));
        }
    }
    let mut rng = rand::thread_rng();
    if request.mutating() && rng.gen::<f64>() < plan.server_errors {
        count("server_error");
        return Some(if rng.gen::<bool>() {
            ec2_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "An internal error has occurred")
        } else {
            ec2_error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The service is unavailable")
        });
    }
    if matches!(action, "StartInstances" | "RunInstances") && rng.gen::<f64>() < plan.no_capacity {
        count("no_capacity");
        let message = "We currently do not have sufficient capacity in the Availability Zone you requested.";
        return Some(ec2_error(StatusCode::INTERNAL_SERVER_ERROR, "InsufficientInstanceCapacity", message));
    }
    if let Some(message) = hibernation::refused(shared, request, count) {
        return Some(ec2_error(StatusCode::BAD_REQUEST, "UnsupportedHibernationConfiguration", &message));
    }
    if action == "StopInstances" && request.params.get("Force").is_some_and(|f| f == "true") {
        let ids = request.list("InstanceId");
        let mut live = lock(&shared.plan);
        if ids.iter().any(|id| live.stuck_stopping.remove(id)) {
            count("forced_stop");
        }
    }
    if action == "StartInstances" {
        let ids = request.list("InstanceId");
        if !ids.is_empty() && ids.iter().all(|id| plan.no_start.contains(id)) {
            count("no_start");
            let items: String = ids
                .iter()
                .map(|id| {
                    format!(
                        "<item><instanceId>{id}</instanceId><currentState><code>0</code><name>pending</name>\
                         </currentState><previousState><code>80</code><name>stopped</name></previousState></item>"
                    )
                })
                .collect();
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<StartInstancesResponse xmlns=\
                 \"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>realism</requestId>\
                 <instancesSet>{items}</instancesSet></StartInstancesResponse>"
            );
            return Some(answer(StatusCode::OK, body));
        }
    }
    if let Some(&(_, _, _, param, code)) = DESCRIBES.iter().find(|(a, ..)| *a == action) {
        let seen = lock(&shared.seen);
        let recent = request
            .list(param)
            .into_iter()
            .find(|id| seen.created.get(id).is_some_and(|at| at.elapsed() < plan.consistency));
        if let Some(id) = recent {
            count("not_found");
            return Some(ec2_error(StatusCode::BAD_REQUEST, code, &format!("The id '{id}' does not exist")));
        }
    }
    None
}
