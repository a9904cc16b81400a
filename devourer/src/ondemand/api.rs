//! The HTTP trigger: `POST /captures` (a pcapdaemon request as the body) returns the capture's
//! id, `GET /captures/ID` its status. On its own listener, behind a bearer token that every
//! request needs (loopback too: host-network pods share it), checked before the body is read;
//! bodies over `max_request_bytes` are refused and counted.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, Request, State, rejection::StringRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use super::{Refused, Service};
use crate::ops::endpoint::{self, EndpointLimits};

/// How long `POST /captures` waits for the capture sockets to open before answering.
const LISTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone)]
struct Api {
    svc: Service,
    token: String,
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
    refused: prometheus::IntCounter,
) {
    let max_body = svc.config().capture.limits().max_request_bytes;
    let api = Api { svc, token };
    let app = Router::new()
        .route("/captures", post(create))
        .route("/captures/{id}", get(status))
        // Runs before the handlers' extractors: no body is read without the token.
        .route_layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(api);
    endpoint::serve(listener, app, limits, Some(refused)).await;
}

async fn authenticate(State(api): State<Api>, req: Request, next: Next) -> Response {
    if authorized(&api.token, req.headers()) {
        next.run(req).await
    } else {
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
        [(header::WWW_AUTHENTICATE, "Bearer")],
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
    match api.svc.submit(&body, "api") {
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
            let code = match e {
                Refused::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
                Refused::Invalid(_) => StatusCode::BAD_REQUEST,
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
