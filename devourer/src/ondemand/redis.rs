//! The Redis trigger: subscribes to the capture channel and hands each message to the service;
//! reconnects with backoff (jittered, doubling to a cap) whenever the server goes away.

use std::time::Duration;

use futures_util::StreamExt;

use super::Service;
use crate::base::text::redact_url as redact;

/// Runs until the task is dropped. `ping` is the keepalive period (and its answer's deadline).
pub async fn listen(
    svc: Service,
    url: String,
    channel: String,
    base: Duration,
    max: Duration,
    ping: Duration,
) {
    let shown = redact(&url);
    // rediss://: several rustls providers are linked in, so name the process default (an
    // error only says one is set already).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut wait = base;
    loop {
        let res = subscribe(&svc, &url, &channel, ping).await;
        svc.redis_subscribed(false);
        match res {
            Ok(()) => {
                tracing::warn!(url = %shown, channel, "Redis subscription ended; reconnecting");
                wait = base;
            }
            Err(e) => tracing::warn!(
                url = %shown,
                channel,
                retry_in = ?wait,
                "Redis unavailable: {e}"
            ),
        }
        let jitter = wait.mul_f64(fastrand::f64() * 0.2);
        tokio::time::sleep(wait + jitter).await;
        wait = (wait * 2).min(max);
    }
}

/// Why a subscription ended (the listener reconnects after any of them).
#[derive(Debug, thiserror::Error)]
enum SubscribeError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer within {0:?} while subscribing")]
    SubscribeTimeout(Duration),
    #[error("no answer to a ping within {0:?}")]
    PingTimeout(Duration),
}

/// One subscription, until the server closes it or stops answering pings.
async fn subscribe(
    svc: &Service,
    url: &str,
    channel: &str,
    ping: Duration,
) -> Result<(), SubscribeError> {
    let connect = async {
        let client = redis::Client::open(url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        redis::RedisResult::Ok(pubsub)
    };
    let pubsub = match tokio::time::timeout(ping, connect).await {
        Ok(r) => r?,
        Err(_) => return Err(SubscribeError::SubscribeTimeout(ping)),
    };
    tracing::info!(url = %redact(url), channel, "subscribed to capture requests");
    svc.redis_subscribed(true);
    let (mut sink, mut messages) = pubsub.split();
    let mut tick = tokio::time::interval(ping);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else { return Ok(()) };
                // Redis hands over whole messages; the service refuses long ones unparsed.
                // Taken or refused at once: nothing waits here, so Redis's own buffer stays small.
                match std::str::from_utf8(msg.get_payload_bytes()) {
                    Ok(text) => {
                        let _ = svc.offer(text.to_owned(), "redis");
                    }
                    Err(_) => svc.refused_unread("bad_json", "redis", "the message is not UTF-8 text"),
                }
            }
            _ = tick.tick() => {
                match tokio::time::timeout(ping, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(SubscribeError::PingTimeout(ping)),
                }
            }
        }
    }
}
