//! Image deprecation, which the emulator does not serve: the layer keeps each image's
//! deprecation time and shows it in `DescribeImages` once EC2's consistency window is over.

use super::fills::Upstream;
use super::{answer, ec2_error, lock, xml, Direct, Ec2Plan, QueryRequest, Shared};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use std::time::Instant;

/// `EnableImageDeprecation` and `DisableImageDeprecation`, which the emulator does not serve:
/// the time is kept by the layer and shown in `DescribeImages` as `deprecationTime`.
pub(super) async fn serve(shared: &Shared, request: &QueryRequest, direct: &Direct<'_>) -> Response<Full<Bytes>> {
    let action = request.action();
    let image = request.params.get("ImageId").cloned().unwrap_or_default();
    let known = direct
        .call(&[("Action", "DescribeImages"), ("ImageId.1", &image)])
        .await
        .is_some_and(|answer| !xml::items(&answer, "imagesSet").is_empty());
    if !known {
        return ec2_error(
            StatusCode::BAD_REQUEST,
            "InvalidAMIID.NotFound",
            &format!("The image id '[{image}]' does not exist"),
        );
    }
    let mut seen = lock(&shared.seen);
    match request.params.get("DeprecateAt") {
        Some(at) if action == "EnableImageDeprecation" => {
            seen.deprecations.insert(image, (at.clone(), Instant::now()));
        }
        _ => {
            seen.deprecations.remove(&image);
        }
    }
    answer(
        StatusCode::OK,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>realism</requestId><return>true</return></{action}Response>"
        ),
    )
}

/// A `DescribeImages` answer with each image's deprecation time (once it reads back).
pub(super) fn shown(shared: &Shared, plan: &Ec2Plan, text: String) -> String {
    let seen = lock(&shared.seen);
    if seen.deprecations.is_empty() {
        return text;
    }
    xml::edit_items(&text, "imagesSet", |item| {
        let set = xml::text(item, "imageId").and_then(|id| seen.deprecations.get(id));
        let at = set.filter(|(_, when)| when.elapsed() >= plan.consistency).map(|(at, _)| at);
        Some(match at {
            Some(at) if !item.contains("<deprecationTime>") => {
                item.replacen("</imageId>", &format!("</imageId><deprecationTime>{at}</deprecationTime>"), 1)
            }
            _ => item.to_owned(),
        })
    })
}
