//! The daemon's HTTP endpoint (127.0.0.1 by default): `/metrics` (OpenMetrics text),
//! `/healthz` (the control loop is turning), `/readyz` (manifests loaded and valid) and,
//! with a git source and a webhook secret, `POST /hooks/git` (`webhook.rs`).
//!
//! The listener cannot be exhausted by idle clients: a connection must send its request
//! head within [`HEADER_READ_TIMEOUT`], at most [`MAX_CONNECTIONS`] are open at once, and
//! when all are taken a new connection evicts the oldest one that is still waiting for its
//! request head (a scraper sends its head at once, so it is never the one evicted). The
//! daemon's file descriptors therefore stay far from its limit, and a scrape still gets
//! through while a flood of half-open requests is under way.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;
use tower::ServiceExt as _;

use crate::metrics::Metrics;

/// How long a client may take to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more evict the oldest idle one.
pub const MAX_CONNECTIONS: usize = 64;
/// No exchange with this endpoint legitimately lasts longer (responses are small): a bound
/// on keep-alive connections and on clients that never read their response.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// When the controller loop last turned, shared between the loop and `/healthz`.
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds since `epoch` (monotonic: a wall-clock jump raises no false alarm).
    last: AtomicU64,
    /// Longer than this without a turn and the loop counts as stalled.
    pub stale_after: Duration,
}

impl Heartbeat {
    pub fn new(stale_after: Duration) -> Self {
        Heartbeat {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            stale_after,
        }
    }

    /// Records that the loop turned now.
    pub fn beat(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// How long since the loop last turned.
    pub fn silent_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

fn router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>, heartbeat: Arc<Heartbeat>) -> Router {
    Router::new()
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
        .route(
            "/healthz",
            get(move || {
                let silent = heartbeat.silent_for();
                let stale_after = heartbeat.stale_after;
                async move {
                    if silent <= stale_after {
                        (StatusCode::OK, "ok\n".to_string())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!(
                                "control loop stalled: it has not turned for {:.1}s (limit {}s)\n",
                                silent.as_secs_f64(),
                                stale_after.as_secs()
                            ),
                        )
                    }
                }
            }),
        )
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
        )
}

/// The open connections: each can be told to close, and says whether a request is in flight.
#[derive(Default)]
struct Connections {
    next: u64,
    open: BTreeMap<u64, Open>,
}

struct Open {
    evict: oneshot::Sender<()>,
    busy: Arc<AtomicBool>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    heartbeat: Arc<Heartbeat>,
    hooks: Option<Router>,
) {
    let app = router(metrics, ready, heartbeat);
    // `/hooks/git` (the webhook) exists only with a secret to check it against.
    let app = match hooks {
        Some(hooks) => app.merge(hooks),
        None => app,
    };
    let connections = Arc::new(Mutex::new(Connections::default()));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or a connection reset before accept: pause
                // rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (evict_tx, evict_rx) = oneshot::channel();
        let busy = Arc::new(AtomicBool::new(false));
        let id = {
            let mut conns = connections.lock().expect("never poisoned");
            if conns.open.len() >= MAX_CONNECTIONS {
                // Oldest first: ids grow with every accept.
                let victim = conns
                    .open
                    .iter()
                    .find(|(_, c)| !c.busy.load(Ordering::SeqCst))
                    .map(|(id, _)| *id);
                match victim.and_then(|id| conns.open.remove(&id)) {
                    Some(victim) => {
                        let _ = victim.evict.send(());
                    }
                    // Every slot is answering a request: refuse this one.
                    None => continue,
                }
            }
            let id = conns.next;
            conns.next += 1;
            conns.open.insert(
                id,
                Open {
                    evict: evict_tx,
                    busy: busy.clone(),
                },
            );
            id
        };
        let app = app.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (app, busy) = (app.clone(), busy.clone());
                async move {
                    busy.store(true, Ordering::SeqCst);
                    let response = app.oneshot(request).await;
                    busy.store(false, Ordering::SeqCst);
                    response
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(MAX_CONNECTION_AGE, connection) => {}
                _ = evict_rx => {}
            }
            connections.lock().expect("never poisoned").open.remove(&id);
        });
    }
}
