//! The HTTP endpoints of a running agent: `/metrics`, `/healthz` (the process is up) and
//! `/readyz` (programs attached, the capture loop running, sinks alive), on the tokio runtime.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};

use super::{
    endpoint::{self, EndpointLimits},
    metrics::Metrics,
};

/// What `/readyz` checks.
#[derive(Default)]
pub struct Health {
    /// Programs attached and the capture loop running.
    pub capturing: AtomicBool,
    /// Every sink is still accepting records.
    pub sinks_ok: AtomicBool,
    /// Kubernetes metadata is on (`/readyz` says when it is stale; counting goes on).
    pub k8s_metadata: AtomicBool,
}

/// Serves the endpoints on `listener` until the runtime stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: EndpointLimits,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let m = metrics.clone();
    let refused = metrics.limit_counter("endpoint_max_connections");
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let (h, m2) = (health.clone(), metrics.clone());
                async move {
                    let capturing = h.capturing.load(Ordering::Relaxed);
                    let sinks = h.sinks_ok.load(Ordering::Relaxed);
                    if capturing && sinks {
                        let stale =
                            h.k8s_metadata.load(Ordering::Relaxed) && m2.k8s.stale.get() != 0;
                        let body = if stale {
                            "ready (kubernetes metadata stale: names may be missing or old)\n"
                        } else {
                            "ready\n"
                        };
                        (StatusCode::OK, body).into_response()
                    } else {
                        let why = format!("not ready: capturing={capturing} sinks={sinks}\n");
                        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
                    }
                }
            }),
        );
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    endpoint::serve(listener, app, limits, Some(refused)).await;
    Ok(())
}
