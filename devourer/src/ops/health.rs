//! The HTTP endpoints of a running agent: `/metrics` (with the probes, for compatibility) on
//! the metrics listener, and `/healthz` (the process is up and counting) and `/readyz`
//! (programs attached, the capture loop running, sinks alive) on a probe listener of their own,
//! on loopback (`--probe-addr`), which no pod's connections can crowd out.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};

use super::{
    endpoint::{self, EndpointLimits, Refusals, SlotPolicy},
    metrics::Metrics,
};

/// What the probes check.
pub struct Health {
    /// Programs attached and the capture loop running.
    pub capturing: AtomicBool,
    /// Every sink is still accepting records.
    pub sinks_ok: AtomicBool,
    /// Kubernetes metadata is on (`/readyz` says when it is stale; counting goes on).
    pub k8s_metadata: AtomicBool,
    /// Milliseconds since `born` at the start of the last scan (0: none yet).
    last_scan_ms: AtomicU64,
    born: Instant,
    /// Longer than this without a scan and `/healthz` fails: the counting thread is stuck.
    stall: Duration,
}

impl Health {
    /// `stall`: how long the counting thread may go without a scan before `/healthz` fails.
    pub fn new(stall: Duration) -> Self {
        Self {
            capturing: AtomicBool::new(false),
            sinks_ok: AtomicBool::new(false),
            k8s_metadata: AtomicBool::new(false),
            last_scan_ms: AtomicU64::new(0),
            born: Instant::now(),
            stall,
        }
    }

    /// A scan started now.
    pub fn scanned(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_scan_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// How long since the last scan started, once one did.
    fn since_scan(&self) -> Option<Duration> {
        match self.last_scan_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.born
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    /// `/healthz`: up, and (once capturing) the counting thread scanned within `stall`.
    fn live(&self) -> (StatusCode, String) {
        match self.since_scan() {
            Some(d) if self.capturing.load(Ordering::Relaxed) && d > self.stall => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("counting stalled: no scan for {:.1}s\n", d.as_secs_f64()),
            ),
            _ => (StatusCode::OK, "ok\n".into()),
        }
    }

    /// `/readyz`.
    fn ready(&self, metrics: &Metrics) -> (StatusCode, String) {
        let capturing = self.capturing.load(Ordering::Relaxed);
        let sinks = self.sinks_ok.load(Ordering::Relaxed);
        if capturing && sinks {
            let stale = self.k8s_metadata.load(Ordering::Relaxed) && metrics.k8s.stale.get() != 0;
            let body = if stale {
                "ready (kubernetes metadata stale: names may be missing or old)\n"
            } else {
                "ready\n"
            };
            (StatusCode::OK, body.into())
        } else {
            let why = format!("not ready: capturing={capturing} sinks={sinks}\n");
            (StatusCode::SERVICE_UNAVAILABLE, why)
        }
    }
}

/// `/healthz` and `/readyz`.
fn probes(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    let h = health.clone();
    Router::new()
        .route(
            "/healthz",
            get(move || {
                let h = h.clone();
                async move { h.live().into_response() }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let (h, m) = (health.clone(), metrics.clone());
                async move { h.ready(&m).into_response() }
            }),
        )
}

/// Serves `/metrics` (and the probes) on `listener` until the runtime stops.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: EndpointLimits,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let m = metrics.clone();
    let refused = Refusals {
        total: Some(metrics.limit_counter("endpoint_max_connections")),
        per_peer: Some(metrics.limit_counter("max_connections_per_peer")),
    };
    let app = probes(metrics, health).route(
        "/metrics",
        get(move || {
            let m = m.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
        }),
    );
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    endpoint::serve(listener, app, limits, refused, SlotPolicy::Accept).await;
    Ok(())
}

/// Serves `/healthz` and `/readyz` on `listener` (the probe listener, on loopback) until the
/// runtime stops.
pub async fn serve_probes(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: EndpointLimits,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let refused = Refusals {
        total: Some(metrics.limit_counter("endpoint_max_connections")),
        per_peer: None,
    };
    tracing::info!(%addr, "serving the probes /healthz, /readyz");
    endpoint::serve(
        listener,
        probes(metrics, health),
        limits,
        refused,
        SlotPolicy::Accept,
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_once_the_counting_thread_stops_scanning() {
        let h = Health::new(Duration::from_millis(50));
        assert_eq!(h.live().0, StatusCode::OK, "before the first scan");
        h.capturing.store(true, Ordering::Relaxed);
        h.scanned();
        assert_eq!(h.live().0, StatusCode::OK);
        std::thread::sleep(Duration::from_millis(120));
        let (code, body) = h.live();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("counting stalled"), "{body}");
        h.scanned();
        assert_eq!(h.live().0, StatusCode::OK);
        // Stopping (capturing off, the final flush) is not a stall.
        std::thread::sleep(Duration::from_millis(120));
        h.capturing.store(false, Ordering::Relaxed);
        assert_eq!(h.live().0, StatusCode::OK);
    }
}
