//! Starting capture on request for the live driver: the service, its Redis listener and its
//! HTTP API, when the configuration asks for them.

use std::sync::Arc;

use anyhow::{Result, bail};

use crate::{
    config::requests::RequestsConfig,
    ops::{endpoint::EndpointLimits, metrics::Metrics},
};

/// The running service (nothing in builds without libpcap).
#[cfg(feature = "capture-requests")]
pub type Requests = crate::ondemand::Service;
#[cfg(not(feature = "capture-requests"))]
pub type Requests = ();

/// Starts capture on request when configured.
#[cfg(feature = "capture-requests")]
pub async fn start(
    cfg: Option<RequestsConfig>,
    node: String,
    metrics: Arc<Metrics>,
    limits: EndpointLimits,
) -> Result<Option<Requests>> {
    use anyhow::Context;

    use crate::{
        ondemand::{Service, api, cloudshark::Cloudshark, redis, sqs},
        ops::endpoint::Refusals,
    };
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    let cloudshark = match &cfg.capture.cloudshark {
        Some(c) => {
            let token = std::fs::read_to_string(&c.token_file)
                .with_context(|| {
                    format!(
                        "reading the CloudShark token file {}",
                        c.token_file.display()
                    )
                })?
                .trim()
                .to_owned();
            if token.is_empty()
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bail!(
                    "the CloudShark token in {} must be one line of letters, digits, - and _",
                    c.token_file.display()
                );
            }
            tracing::info!(url = c.url, "captures are uploaded to CloudShark");
            Some(Cloudshark::new(c, token).context("the CloudShark client")?)
        }
        None => None,
    };
    let svc = Service::new(cfg.clone(), cloudshark, node.clone(), Some(metrics.clone()));
    if let Some(url) = cfg.redis_url.clone() {
        let listener = tokio::spawn(redis::listen(
            svc.clone(),
            url,
            cfg.channel.clone(),
            cfg.capture.retry_base,
            cfg.capture.retry_max,
            cfg.redis_ping,
        ));
        // It runs for good; if it ever dies, say so instead of going quiet.
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                tracing::error!(
                    "the Redis capture-request listener died: {e}; no more Redis requests"
                );
            }
        });
    }
    if let Some(q) = cfg.capture.sqs.clone() {
        let listener = tokio::spawn(sqs::listen(
            svc.clone(),
            q,
            node.clone(),
            cfg.capture.retry_base,
            cfg.capture.retry_max,
        ));
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                tracing::error!("the SQS capture-request listener died: {e}; no more SQS requests");
            }
        });
    }
    if let Some(k) = cfg.capture.kafka.clone() {
        start_kafka(&svc, k, &node, &cfg)?;
    }
    if let Some(a) = &cfg.api {
        let f = a
            .token_file
            .as_ref()
            .context("[api] needs token_file: the capture API always requires a bearer token")?;
        let token = std::fs::read_to_string(f)
            .with_context(|| format!("reading the API token file {}", f.display()))?
            .trim()
            .to_owned();
        if token.len() < api::MIN_TOKEN_BYTES {
            bail!(
                "the API token in {} is {} bytes: at least {} are required (for example `head -c 32 /dev/urandom | base64`)",
                f.display(),
                token.len(),
                api::MIN_TOKEN_BYTES
            );
        }
        let listener = api::bind(a.addr)
            .await
            .with_context(|| format!("binding the capture API on {} ([api] addr)", a.addr))?;
        tracing::info!(addr = %a.addr, "capture API listening (bearer token required)");
        let refused = Refusals {
            total: Some(metrics.limit_counter("endpoint_max_connections")),
            per_peer: Some(metrics.limit_counter("max_connections_per_peer")),
        };
        let failures = api::Failures::new(a.auth_failure_delay, a.auth_failure_delay_max);
        tokio::spawn(api::serve(
            listener,
            svc.clone(),
            token,
            limits,
            refused,
            failures,
        ));
    }
    tracing::info!(
        dir = %cfg.local_dir.display(),
        max_concurrent = cfg.capture.limits().max_concurrent,
        "capture on request enabled"
    );
    Ok(Some(svc))
}

#[cfg(not(feature = "capture-requests"))]
pub async fn start(
    cfg: Option<RequestsConfig>,
    _node: String,
    _metrics: Arc<Metrics>,
    _limits: EndpointLimits,
) -> Result<Option<Requests>> {
    if cfg.is_some() {
        bail!(
            "capture on request is configured, but this build has no libpcap (built without the capture-requests feature)"
        );
    }
    Ok(None)
}

/// Stops running captures and stores what they hold, until `deadline`.
pub async fn stop(requests: Option<Requests>, deadline: std::time::Instant) {
    #[cfg(feature = "capture-requests")]
    if let Some(svc) = requests {
        svc.shutdown(deadline.saturating_duration_since(std::time::Instant::now()))
            .await;
    }
    #[cfg(not(feature = "capture-requests"))]
    let _ = (requests, deadline);
}

/// The Kafka trigger, reading every partition of its topic.
#[cfg(all(feature = "capture-requests", feature = "kafka"))]
fn start_kafka(
    svc: &crate::ondemand::Service,
    k: crate::config::requests::KafkaSection,
    node: &str,
    cfg: &RequestsConfig,
) -> Result<()> {
    let sasl = match (&k.sasl_mechanism, &k.sasl_username, &k.sasl_password_file) {
        (Some(m), Some(u), Some(p)) => Some((m.as_str(), u.as_str(), p.as_path())),
        _ => None,
    };
    let connect = crate::assembly::build::kafka_connect(
        &k.brokers,
        k.tls.then(|| k.ca_file.clone()),
        sasl,
        node,
        k.timeout,
    )?;
    let listener = tokio::spawn(crate::ondemand::kafka::listen(
        svc.clone(),
        k,
        connect,
        cfg.capture.retry_base,
        cfg.capture.retry_max,
    ));
    tokio::spawn(async move {
        if let Err(e) = listener.await {
            tracing::error!("the Kafka capture-request listener died: {e}; no more Kafka requests");
        }
    });
    Ok(())
}

#[cfg(all(feature = "capture-requests", not(feature = "kafka")))]
fn start_kafka(
    _svc: &crate::ondemand::Service,
    _k: crate::config::requests::KafkaSection,
    _node: &str,
    _cfg: &RequestsConfig,
) -> Result<()> {
    bail!(
        "[capture.kafka] is configured, but this build has no Kafka client (built without the kafka feature)"
    )
}
