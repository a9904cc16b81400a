//! The SQS trigger (pcapdaemon's): long-polls this node's queue, deletes each message on
//! receipt and only then hands it to the service: at most once, since a capture request is
//! about the moment it was sent, and one redelivered after a restart (the liveness probe
//! killed the agent, say) would capture the wrong moment and could loop. Backs off (jittered,
//! doubling to a cap) while the queue is unreachable.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, timeout::TimeoutConfig};
use aws_sdk_sqs::{Client, error::DisplayErrorContext};

use super::Service;
use crate::config::requests::{SqsSection, endpoint_url};

/// Runs until the task is dropped.
pub async fn listen(svc: Service, cfg: SqsSection, node: String, base: Duration, max: Duration) {
    let url = cfg.queue_url(&node);
    let client = client(&cfg).await;
    tracing::info!(url, "reading capture requests from SQS");
    let mut wait = base;
    loop {
        match receive(&svc, &client, &url, &cfg).await {
            Ok(()) => wait = base,
            Err(e) => {
                tracing::warn!(url, retry_in = ?wait, "SQS unavailable: {e}");
                let jitter = wait.mul_f64(fastrand::f64() * 0.2);
                tokio::time::sleep(wait + jitter).await;
                wait = (wait * 2).min(max);
            }
        }
    }
}

/// A client with the default credential chain (environment, profile, web identity, instance
/// metadata), the configured region (else the environment's, else us-east-1) and endpoint, and
/// a deadline on every call a little past the long-poll wait.
async fn client(cfg: &SqsSection) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .operation_timeout(Duration::from_secs(cfg.wait_seconds as u64 + 15))
            .build(),
    );
    if let Some(r) = &cfg.region {
        loader = loader.region(Region::new(r.clone()));
    }
    let shared = loader.load().await;
    let mut b = aws_sdk_sqs::config::Builder::from(&shared);
    if shared.region().is_none() {
        b = b.region(Region::new("us-east-1"));
    }
    if let Some(e) = &cfg.endpoint {
        b = b.endpoint_url(endpoint_url(e));
    }
    Client::from_conf(b.build())
}

/// One long poll: every message received is deleted, then goes to the service.
async fn receive(
    svc: &Service,
    client: &Client,
    url: &str,
    cfg: &SqsSection,
) -> Result<(), String> {
    let out = client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(cfg.chunk_size)
        .wait_time_seconds(cfg.wait_seconds)
        .send()
        .await
        .map_err(|e| DisplayErrorContext(e).to_string())?;
    for m in out.messages() {
        // A message not deleted may come again: it is not run (at most once).
        let Some(handle) = m.receipt_handle() else {
            continue;
        };
        client
            .delete_message()
            .queue_url(url)
            .receipt_handle(handle)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        match m.body() {
            Some(text) => {
                let _ = svc.offer(text.to_owned(), "sqs");
            }
            None => svc.refused_unread("bad_json", "sqs", "the message has no body"),
        }
    }
    Ok(())
}
