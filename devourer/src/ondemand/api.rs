//! The HTTP trigger: `POST /captures` (a pcapdaemon request as the body) returns the capture's
//! id, `GET /captures/ID` its status. On its own listener, behind a bearer token that every
//! request needs (loopback too: host-network pods share it), checked before the body is read;
//! bodies over `max_request_bytes` are refused and counted. A connection takes one of the
//! listener's slots only once a request authenticated; a wrong token is answered after a delay
//! that doubles with each failure of that peer ([`Failures`]) and closes the connection.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Extension, Json, Router,
    extract::{DefaultBodyLimit, Path, Request, State, rejection::StringRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use lru::LruCache;
use serde_json::json;

use super::{Refused, Service};
use crate::ops::endpoint::{self, EndpointLimits, Peer, Refusals, Slot, SlotPolicy};

/// The shortest token the API accepts (start-up refuses a shorter one).
pub const MIN_TOKEN_BYTES: usize = 16;

/// Peers whose failed attempts are remembered at most; the least recent go first.
const FAILURE_PEERS: usize = 4096;

/// Failed token attempts by peer: each failure is answered after `base` doubled per failure
/// before it (at most `max`); a success, or `max` × 8 without a failure, forgives the peer.
pub struct Failures {
    peers: Mutex<LruCache<IpAddr, (u32, Instant)>>,
    base: Duration,
    max: Duration,
}

impl Failures {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            peers: Mutex::new(LruCache::new(
                NonZeroUsize::new(FAILURE_PEERS).expect("non-zero"),
            )),
            base,
            max: max.max(base),
        }
    }

    /// Records a failure of `peer`; returns how long to wait before answering it.
    pub fn failed(&self, peer: IpAddr) -> Duration {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let forgiven = |last: Instant| now.duration_since(last) > self.max.saturating_mul(8);
        let n = match peers.get(&peer) {
            Some(&(n, last)) if !forgiven(last) => n + 1,
            _ => 1,
        };
        peers.put(peer, (n, now));
        self.base
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(self.max)
    }

    pub fn succeeded(&self, peer: IpAddr) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop(&peer);
    }
}

/// How long `POST /captures` waits for the capture sockets to open before answering.
const LISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone)]
struct Api {
    svc: Service,
    token: String,
    failures: Arc<Failures>,
}

/// Binds `addr` (failing start-up when it cannot) and serves until the task is dropped.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: Service,
    token: String,
    limits: EndpointLimits,
    refused: Refusals,
    failures: Failures,
) {
    let max_body = svc.config().capture.limits().max_request_bytes;
    let api = Api {
        svc,
        token,
        failures: Arc::new(failures),
    };
    let app = Router::new()
        .route("/captures", post(create))
        .route("/captures/{id}", get(status))
        // Runs before the handlers' extractors: no body is read without the token.
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(api);
    endpoint::serve(listener, app, limits, refused, SlotPolicy::AfterAuth).await;
}

/// Lets a request with the token through, once its connection holds a slot; a request without
/// it waits out its peer's delay, is counted and closes the connection.
async fn authenticate(
    State(api): State<Api>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(slot): Extension<Slot>,
    req: Request,
    next: Next,
) -> Response {
    if authorized(&api.token, req.headers()) {
        api.failures.succeeded(peer);
        if !slot.take() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONNECTION, "close")],
                Json(json!({"error": "too many connections (--endpoint-max-connections)"})),
            )
                .into_response();
        }
        next.run(req).await
    } else {
        let wait = api.failures.failed(peer);
        api.svc.unauthorized();
        tokio::time::sleep(wait).await;
        unauthorized()
    }
}

fn authorized(token: &str, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compare without an early exit on the first differing byte.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, "Bearer"),
            (header::CONNECTION, "close"),
        ],
        Json(json!({"error": "missing or wrong bearer token"})),
    )
        .into_response()
}

async fn create(State(api): State<Api>, body: Result<String, StringRejection>) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let reason = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "bad_json"
            };
            api.svc.refused_unread(reason, "api", &e.body_text());
            return (
                e.status(),
                Json(json!({"error": e.body_text(), "reason": reason})),
            )
                .into_response();
        }
    };
    let outcome = match api.svc.offer(body, "api") {
        Ok(rx) => rx.await.unwrap_or(Err(Refused::Stopping)),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(Some(id)) => {
            // Answer once the capture listens, so the caller can send traffic right away.
            let listening = api.svc.wait_listening(&id, LISTEN_WAIT).await;
            (
                StatusCode::ACCEPTED,
                Json(
                    json!({"id": id, "status": format!("/captures/{id}"), "listening": listening}),
                ),
            )
                .into_response()
        }
        Ok(None) => (
            StatusCode::OK,
            Json(json!({"id": null, "reason": "the request names other nodes"})),
        )
            .into_response(),
        Err(e) => {
            let code = match &e {
                Refused::Invalid(_) => StatusCode::BAD_REQUEST,
                Refused::LocalFull(..) | Refused::Stopping => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::TOO_MANY_REQUESTS,
            };
            (
                code,
                Json(json!({"error": e.to_string(), "reason": e.reason()})),
            )
                .into_response()
        }
    }
}

async fn status(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.svc.status(&id) {
        Some(s) => Json(s).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such capture"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_of_a_peer_doubles_its_delay_up_to_the_cap_and_a_success_forgives() {
        let f = Failures::new(Duration::from_millis(100), Duration::from_millis(700));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(
            (0..5).map(|_| ms(f.failed(a))).collect::<Vec<_>>(),
            [100, 200, 400, 700, 700]
        );
        assert_eq!(ms(f.failed(b)), 100, "peers are apart");
        f.succeeded(a);
        assert_eq!(ms(f.failed(a)), 100);
    }
}
