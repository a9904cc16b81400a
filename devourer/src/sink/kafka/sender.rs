//! The Kafka sender thread: sends sealed spool segments, oldest first, each as one produce
//! request per partition (records grouped by their key's partition), over a client kept
//! between segments; a segment leaves the spool only once every partition leader
//! acknowledged its records. A partial failure keeps only the records not yet acknowledged
//! (sent again after the table's backoff); spool lines that are not JSON objects (torn by a
//! crash, corrupt) go to the quarantine file, never to a topic.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    io,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use rskafka::{
    chrono::DateTime,
    client::{
        Client,
        partition::{self, PartitionClient, UnknownTopicHandling},
    },
    record::Record,
};

use super::{
    Compression, KafkaConfig, KafkaStats, add,
    client::{KafkaError, partition_of},
};
use crate::sink::{
    remote::{self, Shutdown},
    spool::{
        Segment, Spool,
        rejects::{Kept, Rejects},
    },
};

pub(super) struct Sender {
    pub cfg: KafkaConfig,
    pub spool: Arc<Spool>,
    pub stats: Arc<KafkaStats>,
    pub shutdown: Shutdown,
    pub rejects: Rejects,
    pub client: Option<Client>,
    /// Each topic's partitions (from the client's metadata) and their clients.
    pub partitions: BTreeMap<String, Vec<(i32, Option<PartitionClient>)>>,
    /// Where the next record without a key goes (round robin).
    pub next: usize,
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Kafka(#[from] KafkaError),
    #[error("reading the spool: {0}")]
    Spool(io::Error),
}

/// The part of a spool line the sender reads: the record's key.
#[derive(serde::Deserialize)]
struct Keyed<'a> {
    #[serde(borrow, default)]
    community_id: Option<Cow<'a, str>>,
}

/// A spool line's key (its `community_id`, `None` when it has none), or `Err` when the line
/// is no JSON object.
fn key_of(line: &[u8]) -> Result<Option<Vec<u8>>, ()> {
    if line.first() != Some(&b'{') {
        return Err(());
    }
    let k: Keyed<'_> = serde_json::from_slice(line).map_err(|_| ())?;
    Ok(k.community_id.map(|c| c.into_owned().into_bytes()))
}

fn compression(c: Compression) -> partition::Compression {
    match c {
        Compression::None => partition::Compression::NoCompression,
        Compression::Gzip => partition::Compression::Gzip,
        Compression::Lz4 => partition::Compression::Lz4,
    }
}

/// The sender with the runtime its client runs on.
struct Driver {
    sender: Sender,
    rt: tokio::runtime::Runtime,
}

impl remote::Deliver for Driver {
    type Error = SendError;

    fn deliver(&mut self, seg: &Segment) -> Result<(), SendError> {
        let Self { sender, rt } = self;
        sender.deliver(rt, seg)
    }

    fn failed(&mut self, seg: &Segment, e: SendError) {
        let s = &mut self.sender;
        s.client = None;
        s.partitions.clear();
        add(&s.stats.errors, 1);
        tracing::warn!(
            topic = s.cfg.topic(&seg.table),
            brokers = ?s.cfg.connect.brokers,
            "Kafka: {e}; sending again after a pause"
        );
    }
}

impl Sender {
    pub fn run(self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("the Kafka sender has no runtime: {e}; records stay spooled");
                return;
            }
        };
        for torn in self.spool.take_torn() {
            self.quarantine(&torn.table, "torn (a crash during an append)", &torn.bytes);
        }
        let (spool, shutdown) = (self.spool.clone(), self.shutdown.clone());
        let (base, max) = (self.cfg.backoff_base, self.cfg.backoff_max);
        remote::drain(
            &spool,
            &shutdown,
            base,
            max,
            "kafka",
            &mut Driver { sender: self, rt },
        );
    }

    fn quarantine(&self, table: &str, why: &str, raw: &[u8]) {
        add(&self.stats.of(table).quarantined, 1);
        match self.rejects.quarantine(table, why, raw) {
            Ok(Kept::Stored) => tracing::warn!(
                table,
                file = %self.rejects.quarantine_path().display(),
                "a Kafka spool line that is no record ({why}) was quarantined"
            ),
            Ok(Kept::Full) => {}
            Err(e) => tracing::error!(table, "quarantining a Kafka spool line failed: {e}"),
        }
    }

    /// Produces one segment's records; then it leaves the spool.
    fn deliver(&mut self, rt: &tokio::runtime::Runtime, seg: &Segment) -> Result<(), SendError> {
        let text = std::fs::read(&seg.path).map_err(SendError::Spool)?;
        let mut records = Vec::new();
        let mut bad = Vec::new();
        for l in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match key_of(l) {
                Ok(key) => records.push((l, key)),
                Err(()) => bad.push(l),
            }
        }
        if !records.is_empty() {
            let topic = self.cfg.topic(&seg.table).to_owned();
            let unsent = rt.block_on(self.produce(&topic, &seg.table, &records));
            if let Err((left, e)) = unsent {
                // What was acknowledged leaves the segment; the rest (and lines to
                // quarantine) is sent again.
                let stats = self.stats.of(&seg.table);
                add(&stats.retried, left.len() as u64);
                let mut keep = Vec::new();
                for l in left
                    .iter()
                    .map(|&i| records[i].0)
                    .chain(bad.iter().copied())
                {
                    keep.extend_from_slice(l);
                    keep.push(b'\n');
                }
                if left.len() < records.len() {
                    self.spool.rewrite(seg, &keep).map_err(SendError::Spool)?;
                }
                return Err(e);
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            self.stats
                .last_success
                .store(now.as_secs(), std::sync::atomic::Ordering::Relaxed);
        }
        // Acknowledged (or nothing to send): what was not a record is kept aside first.
        for l in bad {
            self.quarantine(&seg.table, "not a JSON object", l);
        }
        self.spool.done(seg).map_err(SendError::Spool)
    }

    /// Sends `records` (line, key) to `topic`, one request per partition; on failure, the
    /// indexes of the records not acknowledged.
    async fn produce(
        &mut self,
        topic: &str,
        table: &str,
        records: &[(&[u8], Option<Vec<u8>>)],
    ) -> Result<(), (Vec<usize>, SendError)> {
        let all = || (0..records.len()).collect::<Vec<_>>();
        let connect = &self.cfg.connect;
        if self.client.is_none() {
            add(&self.stats.connects, 1);
            self.client = Some(connect.client().await.map_err(|e| (all(), e.into()))?);
        }
        let client = self.client.as_ref().expect("connected");
        if !self.partitions.contains_key(topic) {
            let ps = connect
                .partitions(client, topic)
                .await
                .map_err(|e| (all(), e.into()))?;
            self.partitions.insert(
                topic.to_owned(),
                ps.into_iter().map(|p| (p, None)).collect(),
            );
        }
        let parts = self.partitions.get_mut(topic).expect("listed");
        let mut by_partition: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, (_, key)) in records.iter().enumerate() {
            let p = match key {
                Some(k) => partition_of(k, parts.len()),
                None => {
                    self.next = self.next.wrapping_add(1);
                    self.next % parts.len()
                }
            };
            by_partition.entry(p).or_default().push(i);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let timestamp = DateTime::from_timestamp_millis(now.as_millis() as i64).unwrap_or_default();
        let compression = compression(self.cfg.compression);
        let mut left: Vec<usize> = Vec::new();
        let mut failure = None;
        for (p, idxs) in by_partition {
            if failure.is_some() {
                left.extend(idxs);
                continue;
            }
            let (id, pc) = &mut parts[p];
            let sent = async {
                if pc.is_none() {
                    let c = connect
                        .bounded(client.partition_client(topic, *id, UnknownTopicHandling::Retry))
                        .await?;
                    *pc = Some(c);
                }
                let batch = idxs
                    .iter()
                    .map(|&i| Record {
                        key: records[i].1.clone(),
                        value: Some(records[i].0.to_vec()),
                        headers: BTreeMap::new(),
                        timestamp,
                    })
                    .collect();
                let pc = pc.as_ref().expect("made");
                connect.bounded(pc.produce(batch, compression)).await
            };
            match sent.await {
                Ok(_) => add(&self.stats.of(table).sent, idxs.len() as u64),
                Err(e) => {
                    left.extend(idxs);
                    failure = Some(SendError::from(e));
                }
            }
        }
        match failure {
            None => Ok(()),
            Some(e) => Err((left, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_keyed_by_its_community_id_and_anything_but_an_object_is_refused() {
        assert_eq!(
            key_of(br#"{"type":"flow","community_id":"1:a+b/c="}"#),
            Ok(Some(b"1:a+b/c=".to_vec()))
        );
        assert_eq!(key_of(br#"{"type":"overflow"}"#), Ok(None));
        assert_eq!(key_of(br#"{"community_id":null}"#), Ok(None));
        assert_eq!(
            key_of(br#"{"community_id":"1:\u0041"}"#),
            Ok(Some(b"1:A".to_vec()))
        );
        assert!(key_of(br#"{"type":"flow","#).is_err(), "torn");
        assert!(key_of(br#"["1:a"]"#).is_err(), "an array");
        assert!(key_of(b"").is_err());
    }
}
