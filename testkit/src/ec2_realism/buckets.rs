//! EC2's request-token buckets: one per API per (account, region), sized by the kind of API
//! as EC2 documents them.

use super::request::QueryRequest;
use std::collections::HashMap;
use std::time::Instant;

/// EC2's bucket for an API: (size, refill per second).
pub fn ec2_bucket(request: &QueryRequest) -> (f64, f64) {
    if request.mutating() {
        (50.0, 5.0)
    } else if request.filtered_or_paged() {
        (100.0, 20.0)
    } else {
        // Unfiltered and unpaginated reads (IDs only, or everything) have a smaller bucket.
        (50.0, 10.0)
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every (account, region, API) seen.
#[derive(Debug, Default)]
pub struct Buckets {
    buckets: HashMap<(String, String, String), Bucket>,
}

impl Buckets {
    /// Takes a token for the request; `false` when its bucket is empty (`RequestLimitExceeded`).
    /// `scale` multiplies EC2's size and refill (1.0 is EC2's).
    pub fn take(&mut self, account: &str, region: &str, request: &QueryRequest, scale: f64) -> bool {
        let (size, refill) = ec2_bucket(request);
        let (size, refill) = ((size * scale).max(1.0), refill * scale);
        let now = Instant::now();
        let bucket = self
            .buckets
            .entry((account.to_owned(), region.to_owned(), request.action().to_owned()))
            .or_insert(Bucket { tokens: size, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * refill).min(size);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> QueryRequest {
        QueryRequest::parse("Credential=AK/d/us-east-1/ec2/aws4_request", body.as_bytes())
    }

    #[test]
    fn each_api_has_its_own_bucket_sized_by_its_kind() {
        let mut buckets = Buckets::default();
        let copy = request("Action=CopySnapshot&SourceSnapshotId=snap-1");
        let taken = (0..60).filter(|_| buckets.take("a", "r", &copy, 1.0)).count();
        assert_eq!(taken, 50, "a mutating API's bucket holds 50");
        assert!(buckets.take("a", "r", &request("Action=CreateTags"), 1.0), "another API is not throttled");
        assert!(buckets.take("a", "other", &copy, 1.0), "nor the same API in another region");
        assert_eq!(ec2_bucket(&request("Action=DescribeSnapshots&SnapshotId.1=s")), (50.0, 10.0));
        assert_eq!(ec2_bucket(&request("Action=DescribeSnapshots&Filter.1.Name=tag:x")), (100.0, 20.0));
    }
}
