//! What EC2 does that the emulator does not, filled in around its calls: snapshot tags in
//! `CreateImage`'s tag specifications, `CopyImage`'s tag specifications (image and
//! snapshots), `DeleteAssociatedSnapshots` on `DeregisterImage`, `CopyTagsFromSource` on
//! `CreateSnapshots`, AMI names unique per account and region (`InvalidAMIName.Duplicate`),
//! an instance's type changed only while it is stopped (`IncorrectInstanceState`), and starts
//! of instances of types the plan has no capacity for (`InsufficientInstanceCapacity`).

use super::request::QueryRequest;
use super::xml;
use std::collections::BTreeMap;

/// Work to do once the emulator has answered a call.
#[derive(Debug, Default)]
pub struct After {
    /// Tags to put on the snapshots of the image the call made.
    pub image_snapshot_tags: Vec<(String, String)>,
    /// Tags to put on the image the call made.
    pub image_tags: Vec<(String, String)>,
    /// Snapshots to delete once the image is deregistered.
    pub delete_snapshots: Vec<String>,
    /// Copy each new snapshot's volume tags onto it.
    pub copy_volume_tags: bool,
    /// The call is refused with this code and message instead.
    pub refused: Option<(&'static str, String)>,
}

/// What the plan says about capacity: instance types EC2 has none of.
pub type NoCapacityTypes = std::collections::BTreeSet<String>;

/// The request as the emulator can take it, and what is left to do after it.
pub async fn before(
    request: &QueryRequest,
    call: &impl Upstream,
    no_capacity: &NoCapacityTypes,
) -> (Option<BTreeMap<String, String>>, After) {
    let mut after = After::default();
    match request.action() {
        "ModifyInstanceAttribute" if new_type(request).is_some() => {
            let id = request.params.get("InstanceId").cloned().unwrap_or_default();
            let state = instance(call, &id).await.map(|(state, _)| state);
            if let Some(state) = state.filter(|s| s != "stopped") {
                let message = format!("The instance '{id}' is not in the 'stopped' state (it is '{state}').");
                after.refused = Some(("IncorrectInstanceState", message));
            }
            (None, after)
        }
        "StartInstances" if !no_capacity.is_empty() => {
            for id in request.list("InstanceId") {
                if let Some((_, kind)) = instance(call, &id).await.filter(|(_, kind)| no_capacity.contains(kind)) {
                    let message = format!(
                        "We currently do not have sufficient {kind} capacity in the Availability Zone you requested."
                    );
                    after.refused = Some(("InsufficientInstanceCapacity", message));
                }
            }
            (None, after)
        }
        "CreateImage" => {
            let name = request.params.get("Name").cloned().unwrap_or_default();
            let taken = call
                .call(&[
                    ("Action", "DescribeImages"),
                    ("Owner.1", "self"),
                    ("Filter.1.Name", "name"),
                    ("Filter.1.Value.1", &name),
                ])
                .await
                .is_some_and(|answer| !xml::items(&answer, "imagesSet").is_empty());
            if taken {
                after.refused =
                    Some(("InvalidAMIName.Duplicate", format!("AMI name {name} is already in use by an AMI")));
                return (None, after);
            }
            let mut params = request.params.clone();
            after.image_snapshot_tags = take_specs(&mut params, "snapshot");
            if after.image_snapshot_tags.is_empty() {
                return (None, after);
            }
            (Some(params), after)
        }
        "CopyImage" => {
            let mut params = request.params.clone();
            after.image_snapshot_tags = take_specs(&mut params, "snapshot");
            after.image_tags = take_specs(&mut params, "image");
            (Some(params), after)
        }
        "DeregisterImage" if request.params.get("DeleteAssociatedSnapshots").is_some_and(|v| v == "true") => {
            let image = request.params.get("ImageId").cloned().unwrap_or_default();
            let answer = call.call(&[("Action", "DescribeImages"), ("ImageId.1", &image)]).await;
            after.delete_snapshots = answer
                .as_deref()
                .map(|a| xml::texts(a, "snapshotId").into_iter().map(str::to_owned).collect())
                .unwrap_or_default();
            (None, after)
        }
        "CreateSnapshots" => {
            after.copy_volume_tags = request.params.get("CopyTagsFromSource").is_some_and(|v| v == "volume");
            (None, after)
        }
        _ => (None, after),
    }
}

/// The instance type a `ModifyInstanceAttribute` sets, in either of its spellings.
fn new_type(request: &QueryRequest) -> Option<&String> {
    request
        .params
        .get("InstanceType.Value")
        .or_else(|| request.params.get("Attribute").filter(|a| *a == "instanceType").and(request.params.get("Value")))
}

/// An instance's state and type, read from the emulator.
async fn instance(call: &impl Upstream, id: &str) -> Option<(String, String)> {
    let answer = call.call(&[("Action", "DescribeInstances"), ("InstanceId.1", id)]).await?;
    let (from, to) = *xml::items(&answer, "instancesSet").first()?;
    let item = &answer[from..to];
    let state = xml::text(&item[item.find("<instanceState>")?..], "name")?.to_owned();
    Some((state, xml::text(item, "instanceType")?.to_owned()))
}

/// Takes the tag specifications of one resource type out of a request: their tags.
fn take_specs(params: &mut BTreeMap<String, String>, kind: &str) -> Vec<(String, String)> {
    let specs: Vec<String> = params
        .iter()
        .filter(|(k, v)| k.starts_with("TagSpecification.") && k.ends_with(".ResourceType") && *v == kind)
        .map(|(k, _)| k.trim_end_matches("ResourceType").to_owned())
        .collect();
    let mut out = Vec::new();
    for prefix in &specs {
        let keys: Vec<String> = params.keys().filter(|k| k.starts_with(prefix.as_str())).cloned().collect();
        let mut tags: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
        for key in keys {
            let value = params.remove(&key).unwrap_or_default();
            let rest = &key[prefix.len()..];
            if let Some(tag) = rest.strip_prefix("Tag.") {
                let (n, field) = tag.split_once('.').unwrap_or((tag, ""));
                let entry = tags.entry(n.to_owned()).or_default();
                match field {
                    "Key" => entry.0 = Some(value),
                    "Value" => entry.1 = Some(value),
                    _ => {}
                }
            }
        }
        out.extend(tags.into_values().filter_map(|(k, v)| Some((k?, v.unwrap_or_default()))));
    }
    out
}

/// Does what is left once the emulator made what the call asked for (`answer`).
pub async fn after(after: After, answer: &str, call: &impl Upstream) {
    if !after.image_tags.is_empty() {
        if let Some(image) = xml::text(answer, "imageId") {
            tag(call, &[image.to_owned()], &after.image_tags).await;
        }
    }
    if !after.image_snapshot_tags.is_empty() {
        if let Some(image) = xml::text(answer, "imageId") {
            let described = call.call(&[("Action", "DescribeImages"), ("ImageId.1", image)]).await.unwrap_or_default();
            let snapshots: Vec<String> = xml::texts(&described, "snapshotId").into_iter().map(str::to_owned).collect();
            tag(call, &snapshots, &after.image_snapshot_tags).await;
        }
    }
    for snapshot in &after.delete_snapshots {
        call.call(&[("Action", "DeleteSnapshot"), ("SnapshotId", snapshot)]).await;
    }
    if after.copy_volume_tags {
        for (from, to) in xml::items(answer, "snapshotSet") {
            let item = &answer[from..to];
            let (Some(snapshot), Some(volume)) = (xml::text(item, "snapshotId"), xml::text(item, "volumeId")) else {
                continue;
            };
            let described =
                call.call(&[("Action", "DescribeVolumes"), ("VolumeId.1", volume)]).await.unwrap_or_default();
            let tags: Vec<(String, String)> = xml::items(&described, "tagSet")
                .into_iter()
                .filter_map(|(a, b)| {
                    let t = &described[a..b];
                    Some((xml::text(t, "key")?.to_owned(), xml::text(t, "value").unwrap_or_default().to_owned()))
                })
                .filter(|(k, _)| !k.starts_with("aws:"))
                .collect();
            tag(call, &[snapshot.to_owned()], &tags).await;
        }
    }
}

async fn tag(call: &impl Upstream, resources: &[String], tags: &[(String, String)]) {
    if resources.is_empty() || tags.is_empty() {
        return;
    }
    let mut params: Vec<(String, String)> = vec![("Action".into(), "CreateTags".into())];
    for (i, r) in resources.iter().enumerate() {
        params.push((format!("ResourceId.{}", i + 1), r.clone()));
    }
    for (i, (k, v)) in tags.iter().enumerate() {
        params.push((format!("Tag.{}.Key", i + 1), k.clone()));
        params.push((format!("Tag.{}.Value", i + 1), v.clone()));
    }
    let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    call.call(&refs).await;
}

/// Calls the emulator directly, signed as the call being served.
pub trait Upstream {
    /// Sends a query-protocol call; its answer when it succeeded.
    fn call(&self, params: &[(&str, &str)]) -> impl std::future::Future<Output = Option<String>> + Send;
}
