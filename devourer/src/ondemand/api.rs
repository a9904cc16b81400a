//! The HTTP trigger: `POST /captures` (a pcapdaemon request as the body) returns the capture's
//! id, `GET /captures/ID` its status. On its own listener, behind a bearer token.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
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
    token: Option<String>,
}

/// Binds `addr` (failing start-up when it cannot) and serves until the task is dropped.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: Service,
    token: Option<String>,
    limits: EndpointLimits,
    refused: prometheus::IntCounter,
) {
    let app = Router::new()
        .route("/captures", post(create))
        .route("/captures/{id}", get(status))
        .with_state(Api { svc, token });
    endpoint::serve(listener, app, limits, Some(refused)).await;
}

fn authorized(api: &Api, headers: &HeaderMap) -> bool {
    let Some(token) = &api.token else {
        return true;
    };
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

async fn create(State(api): State<Api>, headers: HeaderMap, body: String) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
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

async fn status(State(api): State<Api>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    match api.svc.status(&id) {
        Some(s) => Json(s).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such capture"})),
        )
            .into_response(),
    }
}
