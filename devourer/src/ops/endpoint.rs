//! Serving a node-local HTTP endpoint (metrics and health, the capture API) with the bounds a
//! shared node needs: a cap on connections at once (past it new ones are closed at once and
//! counted), a time limit to send a request's head, and a lifetime for each connection, so
//! that idle or slow clients cannot hold the agent's descriptors.

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus::IntCounter;
use tokio::{net::TcpListener, sync::Semaphore};

#[derive(Clone, Copy, Debug)]
pub struct EndpointLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a request's head, and the lifetime of a connection (keep-alive included).
    pub timeout: Duration,
}

/// Serves `app` on `listener` until the runtime stops; `refused` counts connections closed
/// because the cap was reached.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: EndpointLimits,
    refused: Option<IntCounter>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if let Some(c) = &refused {
                c.inc();
            }
            drop(stream);
            continue;
        };
        let svc = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.timeout)
                .serve_connection(TokioIo::new(stream), svc);
            // Past its lifetime a connection is dropped, whatever it was doing.
            let _ = tokio::time::timeout(limits.timeout, conn).await;
            drop(permit);
        });
    }
}
