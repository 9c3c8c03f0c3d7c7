//! The presigned URL RDS asks of a cross-region copy of an encrypted snapshot: a SigV4-signed
//! `GET` of the same copy in the source region, naming the destination. AWS's SDKs that take
//! `SourceRegion` make it themselves; the Rust SDK takes only `PreSignedUrl`, so it is made
//! here with the copy's own credentials.

use super::Step;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use std::time::{Duration, SystemTime};

/// How long the URL is good for: RDS reads it when the copy starts.
const VALID_FOR: Duration = Duration::from_secs(3600);

/// Percent-encodes a query value as SigV4 wants it (unreserved characters kept).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL of `action` (`CopyDBSnapshot` or `CopyDBClusterSnapshot`) with `params` in
/// `source_region`, signed for an hour with `provider`'s credentials.
pub async fn presigned_url(
    provider: &SharedCredentialsProvider,
    source_region: &str,
    action: &str,
    params: &[(&str, &str)],
) -> Result<String, Step> {
    let refuse = |error: String| Step::Failed { retryable: true, error };
    let credentials =
        provider.provide_credentials().await.map_err(|e| refuse(format!("credentials to presign the copy: {e}")))?;
    let identity: Identity = credentials.into();
    let domain = if source_region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" };
    let host = format!("rds.{source_region}.{domain}");
    let mut query: Vec<(String, String)> =
        vec![("Action".into(), action.into()), ("Version".into(), "2014-10-31".into())];
    query.extend(params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let text: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    let url = format!("https://{host}/?{}", text.join("&"));
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(VALID_FOR);
    let signing = v4::SigningParams::builder()
        .identity(&identity)
        .region(source_region)
        .name("rds")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| refuse(format!("presigning the copy: {e}")))?
        .into();
    let request = SignableRequest::new("GET", &url, std::iter::once(("host", host.as_str())), SignableBody::Bytes(&[]))
        .map_err(|e| refuse(format!("presigning the copy: {e}")))?;
    let (instructions, _) =
        sign(request, &signing).map_err(|e| refuse(format!("presigning the copy: {e}")))?.into_parts();
    let signed: Vec<String> = instructions.params().iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    Ok(format!("{url}&{}", signed.join("&")))
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn query_values_are_encoded_as_sigv4_has_them() {
        assert_eq!(
            encode("arn:aws:rds:us-east-1:1:snapshot:a b/c~"),
            "arn%3Aaws%3Ards%3Aus-east-1%3A1%3Asnapshot%3Aa%20b%2Fc~"
        );
    }
}
