//! The Redis trigger: subscribes to the capture channel and hands each message to the service;
//! reconnects with backoff (jittered, doubling to a cap) whenever the server goes away.

use std::time::Duration;

use futures_util::StreamExt;

use super::Service;

/// Runs until the task is dropped.
pub async fn listen(svc: Service, url: String, channel: String, base: Duration, max: Duration) {
    let shown = redact(&url);
    let mut wait = base;
    loop {
        match subscribe(&svc, &url, &channel).await {
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

async fn subscribe(svc: &Service, url: &str, channel: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    tracing::info!(url = %redact(url), channel, "subscribed to capture requests");
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        match msg.get_payload::<String>() {
            Ok(text) => {
                let _ = svc.submit(&text, "redis");
            }
            Err(e) => tracing::warn!("capture request that is not text: {e}"),
        }
    }
    Ok(())
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            super::redact("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
