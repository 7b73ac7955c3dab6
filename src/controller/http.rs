//! The daemon's HTTP endpoint (127.0.0.1 by default): `/metrics` (OpenMetrics text),
//! `/healthz` (the process is alive) and `/readyz` (manifests loaded and valid).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;

use crate::metrics::Metrics;

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) {
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                // Prometheus asks for OpenMetrics; anything else gets the classic text format.
                let open_metrics = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/openmetrics-text"));
                let (content_type, text) = if open_metrics {
                    (
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        metrics.encode(),
                    )
                } else {
                    (
                        "text/plain; version=0.0.4; charset=utf-8",
                        metrics.encode_text(),
                    )
                };
                async move { ([(header::CONTENT_TYPE, content_type)], text) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::SeqCst);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "manifests not loaded or invalid\n",
                        )
                    }
                }
            }),
        );
    let _ = axum::serve(listener, app).await;
}
