//! What the layer reads of a query-protocol request (EC2, STS, SNS): the service, the region
//! and access key from the signature's credential scope, and the form parameters.

use std::collections::BTreeMap;

/// One request, as the layer sees it.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    /// The signing service (`ec2`, `sts`, `sns`, …).
    pub service: String,
    /// The signing region.
    pub region: String,
    /// The access key that signed it.
    pub access_key: String,
    /// The form parameters, by name.
    pub params: BTreeMap<String, String>,
}

impl QueryRequest {
    /// Reads a request from its `Authorization` header and form body.
    pub fn parse(authorization: &str, body: &[u8]) -> Self {
        // `AWS4-HMAC-SHA256 Credential=AKID/20261204/us-east-1/ec2/aws4_request, …`
        let scope = authorization
            .split("Credential=")
            .nth(1)
            .and_then(|rest| rest.split([',', ' ']).next())
            .unwrap_or_default();
        let mut parts = scope.split('/');
        let access_key = parts.next().unwrap_or_default().to_owned();
        let _date = parts.next();
        let region = parts.next().unwrap_or_default().to_owned();
        let service = parts.next().unwrap_or_default().to_owned();
        let params = form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        QueryRequest { service, region, access_key, params }
    }

    /// The `Action` parameter.
    pub fn action(&self) -> &str {
        self.params.get("Action").map(String::as_str).unwrap_or_default()
    }

    /// The values of a list parameter (`SnapshotId.1`, `SnapshotId.2`, … or `SnapshotId`).
    pub fn list(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}.");
        self.params
            .iter()
            .filter(|(k, _)| {
                *k == name || k.strip_prefix(&prefix).is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether the request filters (`Filter.N.Name`) or pages (`MaxResults`, `NextToken`).
    pub fn filtered_or_paged(&self) -> bool {
        self.params.keys().any(|k| k.starts_with("Filter.") || k == "MaxResults" || k == "NextToken")
    }

    /// Whether the action changes something (EC2 counts every other action as a read).
    pub fn mutating(&self) -> bool {
        let a = self.action();
        !(a.starts_with("Describe") || a.starts_with("Get") || a.starts_with("List"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_scope_and_list_parameters() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261204/eu-west-1/ec2/aws4_request, SignedHeaders=host";
        let r =
            QueryRequest::parse(auth, b"Action=DescribeSnapshots&SnapshotId.1=snap-1&SnapshotId.2=snap-2&Owner.1=self");
        assert_eq!((r.service.as_str(), r.region.as_str(), r.access_key.as_str()), ("ec2", "eu-west-1", "AKIDEXAMPLE"));
        assert_eq!(r.action(), "DescribeSnapshots");
        assert_eq!(r.list("SnapshotId"), vec!["snap-1", "snap-2"]);
        assert!(!r.filtered_or_paged() && !r.mutating());
    }
}
