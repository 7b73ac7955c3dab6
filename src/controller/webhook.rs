//! `POST /hooks/git` on the metrics listener: a push notification (GitHub, Gitea, GitLab
//! with a GitHub-style signature) that makes the git source fetch now instead of at its next
//! `--interval`. Only a request signed with the shared secret acts: `X-Hub-Signature-256:
//! sha256=<hex>`, an HMAC-SHA256 of the raw body, compared in constant time. Anything else
//! is answered and counted (`convoy_webhook_requests_total{result}`), never acted on.
//! Without `--webhook-secret-file` the route does not exist (404): convoy never acts unsigned.
//!
//! The request only wakes the fetcher ([`super::git::Feed::trigger`]); what was pushed is
//! read from the repository, never from the body, so a replayed or forged payload can at
//! worst cause one more fetch of the real branch.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::git::Feed;
use crate::metrics::Metrics;

/// The webhook's path.
pub const PATH: &str = "/hooks/git";
/// The largest body accepted (GitHub's push payloads are capped at 25 MB, but a manifest
/// repository's pushes are small; what matters is the signature, not the content).
pub const MAX_BODY: usize = 1024 * 1024;
/// The signature header GitHub (and Gitea, Forgejo) send.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Every `result` label of `convoy_webhook_requests_total`.
pub const RESULTS: [&str; 5] = [
    "accepted",
    "missing_signature",
    "bad_signature",
    "too_large",
    "timeout",
];

/// What a request's signature says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Missing,
    Invalid,
}

/// Checks `X-Hub-Signature-256` (`sha256=<64 hex digits>`) against the HMAC-SHA256 of `body`
/// under `secret`, in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&[u8]>) -> Verdict {
    let Some(header) = header else {
        return Verdict::Missing;
    };
    let Some(hex) = header.strip_prefix(b"sha256=") else {
        return Verdict::Invalid;
    };
    let Ok(signature) = hex::decode(hex) else {
        return Verdict::Invalid;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Verdict::Invalid;
    };
    mac.update(body);
    match mac.verify_slice(&signature) {
        Ok(()) => Verdict::Valid,
        Err(_) => Verdict::Invalid,
    }
}

/// The `/hooks/git` route: a valid request notifies `feed` (202), others are refused.
pub fn router(secret: Arc<Vec<u8>>, feed: Arc<Feed>, metrics: Arc<Metrics>) -> Router {
    metrics.declare_webhook(&RESULTS);
    Router::new().route(
        PATH,
        post(move |request: Request<Body>| {
            let (secret, feed, metrics) = (secret.clone(), feed.clone(), metrics.clone());
            async move {
                let (status, result, text) = handle(&secret, &feed, request).await;
                metrics.webhook_request(result);
                (status, text)
            }
        }),
    )
}

/// How long a request's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn handle(
    secret: &[u8],
    feed: &Feed,
    request: Request<Body>,
) -> (StatusCode, &'static str, &'static str) {
    let too_large = (
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "body over 1 MiB\n",
    );
    let (parts, body) = request.into_parts();
    let declared = declared_length(&parts.headers);
    if declared.is_some_and(|n| n > MAX_BODY) {
        return too_large;
    }
    let header = parts.headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
    if header.is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            "missing_signature",
            "missing X-Hub-Signature-256\n",
        );
    }
    // A sender that trickles its body would hold a task and a connection: it gets 10 s.
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => return too_large,
        Err(_) => {
            return (
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "body not received within 10 s\n",
            );
        }
    };
    match verify(secret, &body, header) {
        Verdict::Valid => {
            feed.trigger.notify_one();
            (StatusCode::ACCEPTED, "accepted", "fetch requested\n")
        }
        Verdict::Missing | Verdict::Invalid => (
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "invalid X-Hub-Signature-256\n",
        ),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn github_signature_example_verifies() {
        // The example of GitHub's "Validating webhook deliveries" documentation.
        let header = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify(
                b"It's a Secret to Everybody",
                b"Hello, World!",
                Some(header)
            ),
            Verdict::Valid
        );
    }

    #[test]
    fn only_the_exact_signature_of_the_exact_body_is_valid() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = sign(b"s3cret", body);
        type Row<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>, Verdict);
        let rows: [Row; 7] = [
            (b"s3cret", body, Some(good.as_bytes()), Verdict::Valid),
            (b"other", body, Some(good.as_bytes()), Verdict::Invalid),
            (b"s3cret", b"{}", Some(good.as_bytes()), Verdict::Invalid),
            (b"s3cret", body, None, Verdict::Missing),
            (
                b"s3cret",
                body,
                Some(&good.as_bytes()[7..]),
                Verdict::Invalid,
            ),
            (b"s3cret", body, Some(b"sha256=zz"), Verdict::Invalid),
            (
                b"s3cret",
                body,
                Some(&good.as_bytes()[..40]),
                Verdict::Invalid,
            ),
        ];
        for (secret, body, header, expected) in rows {
            assert_eq!(verify(secret, body, header), expected, "{header:?}");
        }
    }
}
