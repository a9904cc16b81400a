//! The Kafka trigger (pcapdaemon's `[kafka]`): every node must see every request, so each
//! reads every partition of the topic itself, without a consumer group (pcapdaemon read
//! partition 0 only, a quarter of an auto-created topic). At its first connection a node
//! starts at each partition's newest offset (a request is about the moment it was sent);
//! after a reconnect it goes on where it stopped, and a partition added later, or emptied by
//! a broker that lost its log, is read from its start. Each message value goes through the
//! same checks, limits and counters as Redis and SQS (source `kafka`). Unreachable brokers
//! are retried with backoff (jittered, doubling to a cap) and counted.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rskafka::client::{
    error::{Error as ClientError, ProtocolError},
    partition::{OffsetAt, PartitionClient, UnknownTopicHandling},
};
use tokio::task::JoinSet;

use super::Service;
use crate::{
    config::requests::KafkaSection,
    sink::kafka::client::{Connect, KafkaError},
};

/// Bytes one fetch asks for at most, per partition (a request is far smaller; the service
/// refuses any longer than `max_request_bytes` unparsed).
const FETCH_BYTES: i32 = 1 << 20;

/// The next offset to read in each partition, kept across reconnects.
type Offsets = Arc<Mutex<BTreeMap<i32, i64>>>;

/// Why the reading stopped: the partitions changed (read again at once), a failure to connect,
/// or the loss of a connection that was made (the backoff starts again from its base if the
/// connection stayed up longer than the last wait).
enum Stop {
    Repartitioned,
    Failed(KafkaError),
    /// With how long the connection had been up.
    Lost(KafkaError, Duration),
}

impl From<KafkaError> for Stop {
    fn from(e: KafkaError) -> Self {
        Self::Failed(e)
    }
}

/// Runs until the task is dropped.
pub async fn listen(
    svc: Service,
    cfg: KafkaSection,
    connect: Connect,
    base: Duration,
    max: Duration,
) {
    let offsets: Offsets = Arc::default();
    let mut wait = base;
    let mut slept = Duration::ZERO;
    let mut started = false;
    loop {
        let stop = read(&svc, &cfg, &connect, &offsets, &mut started).await;
        // A connection that stayed up longer than the last wait: the broker came back. (One
        // that fails at once, a fetch refused by an ACL, say, keeps backing off.)
        let lost = matches!(stop, Stop::Lost(_, up) if up >= slept);
        match stop {
            Stop::Repartitioned => {
                tracing::info!(
                    topic = cfg.topic,
                    "the capture topic's partitions changed; reading them all"
                );
                wait = base;
            }
            Stop::Failed(e) | Stop::Lost(e, _) => {
                if lost {
                    wait = base;
                }
                svc.kafka_connected(false);
                tracing::warn!(topic = cfg.topic, brokers = ?connect.brokers, retry_in = ?wait, "Kafka unavailable: {e}");
                let jitter = wait.mul_f64(fastrand::f64() * 0.2);
                slept = wait + jitter;
                tokio::time::sleep(slept).await;
                wait = (wait * 2).min(max);
            }
        }
    }
}

/// One connection: a reader per partition, until one fails or the partitions change.
async fn read(
    svc: &Service,
    cfg: &KafkaSection,
    connect: &Connect,
    offsets: &Offsets,
    started: &mut bool,
) -> Stop {
    let client = match connect.client().await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let parts = match connect.partitions(&client, &cfg.topic).await {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    let mut readers = JoinSet::new();
    for &p in &parts {
        let pc = connect
            .bounded(client.partition_client(cfg.topic.as_str(), p, UnknownTopicHandling::Retry))
            .await;
        let pc = match pc {
            Ok(pc) => pc,
            Err(e) => return e.into(),
        };
        let known = offsets.lock().expect("offsets").get(&p).copied();
        let from = match known {
            Some(o) => o,
            None => {
                // New at the first connection: from now on; a partition that appeared since:
                // all of it.
                let at = if *started {
                    OffsetAt::Earliest
                } else {
                    OffsetAt::Latest
                };
                match connect.bounded(pc.get_offset(at)).await {
                    Ok(o) => o,
                    Err(e) => return e.into(),
                }
            }
        };
        offsets.lock().expect("offsets").insert(p, from);
        readers.spawn(partition(
            svc.clone(),
            pc,
            connect.clone(),
            offsets.clone(),
            cfg.max_wait,
        ));
    }
    *started = true;
    svc.kafka_connected(true);
    let connected = tokio::time::Instant::now();
    tracing::info!(
        topic = cfg.topic,
        partitions = parts.len(),
        "reading capture requests from Kafka"
    );
    let mut tick = tokio::time::interval(cfg.metadata_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            done = readers.join_next() => {
                // A reader ends only on an error (dropping the set stops the others).
                return match done {
                    Some(Ok(e)) => Stop::Lost(e, connected.elapsed()),
                    Some(Err(e)) => Stop::Lost(
                        KafkaError::Other(format!("a partition reader died: {e}")),
                        connected.elapsed(),
                    ),
                    None => Stop::Repartitioned,
                };
            }
            _ = tick.tick() => {
                match connect.partitions(&client, &cfg.topic).await {
                    Ok(now) if now != parts => return Stop::Repartitioned,
                    Ok(_) => {}
                    Err(e) => return Stop::Lost(e, connected.elapsed()),
                }
            }
        }
    }
}

/// Reads one partition from its stored offset, handing each message to the service, until
/// a fetch fails.
async fn partition(
    svc: Service,
    pc: PartitionClient,
    connect: Connect,
    offsets: Offsets,
    max_wait: Duration,
) -> KafkaError {
    let p = pc.partition();
    let wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
    // The fetch itself waits up to max_wait for a message; the timeout covers the rest.
    let bounded = Connect {
        timeout: connect.timeout + max_wait,
        ..connect
    };
    loop {
        let from = offsets
            .lock()
            .expect("offsets")
            .get(&p)
            .copied()
            .unwrap_or(0);
        let fetched = bounded
            .bounded(pc.fetch_records(from, 1..FETCH_BYTES, wait_ms))
            .await;
        let records = match fetched {
            Ok((records, _high)) => records,
            Err(KafkaError::Client(ClientError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            })) => {
                // The log was cut below us (retention) or began again (a broker that lost
                // it): what is there now is all new.
                match bounded.bounded(pc.get_offset(OffsetAt::Earliest)).await {
                    Ok(o) => {
                        tracing::warn!(
                            partition = p,
                            from,
                            now = o,
                            "the capture topic's offsets moved; reading from its start"
                        );
                        offsets.lock().expect("offsets").insert(p, o);
                        continue;
                    }
                    Err(e) => return e,
                }
            }
            Err(e) => return e,
        };
        for r in records {
            if r.offset < from {
                // A compressed batch may start before the offset asked for.
                continue;
            }
            match r.record.value.as_deref().map(std::str::from_utf8) {
                Some(Ok(text)) => {
                    let _ = svc.offer(text.to_owned(), "kafka");
                }
                Some(Err(_)) => {
                    svc.refused_unread("bad_json", "kafka", "the message is not UTF-8 text")
                }
                None => svc.refused_unread("bad_json", "kafka", "the message has no value"),
            }
            offsets.lock().expect("offsets").insert(p, r.offset + 1);
        }
    }
}
