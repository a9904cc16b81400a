//! Connecting to Kafka brokers (shared by the export sink and the capture trigger): the
//! bootstrap list, TLS (the brokers' certificates checked against a CA file or the system's),
//! SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), every request bounded by one timeout; and the
//! partition a key goes to, as Kafka's own producers choose it.

use std::{path::PathBuf, time::Duration};

use rskafka::{
    BackoffConfig,
    client::{Client, ClientBuilder, Credentials, SaslConfig, partition::UnknownTopicHandling},
};

/// The SASL mechanisms offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl std::str::FromStr for Mechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            _ => Err(format!(
                "SASL mechanism {s:?}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
            )),
        }
    }
}

/// SASL credentials (the password read from its file by the caller).
#[derive(Clone)]
pub struct Sasl {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Where the brokers are and how to talk to them.
#[derive(Clone, Debug)]
pub struct Connect {
    /// `HOST:PORT` of one or more brokers (the rest are learned from their metadata).
    pub brokers: Vec<String>,
    /// TLS, checked against this CA file (`Some(None)`: the system's CA certificates).
    pub tls: Option<Option<PathBuf>>,
    pub sasl: Option<Sasl>,
    /// The client id brokers log (the agent's name).
    pub client_id: String,
    /// Each request, connection and metadata lookup at most this long.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("{0}")]
    Client(#[from] rskafka::client::error::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("TLS settings: {0}")]
    Tls(std::io::Error),
    #[error(
        "topic {0} does not exist on the brokers (create it, or let the brokers create topics)"
    )]
    NoTopic(String),
    #[error("{0}")]
    Other(String),
}

impl Connect {
    /// Runs `f` against the timeout.
    pub async fn bounded<T, E: Into<KafkaError>>(
        &self,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, KafkaError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(KafkaError::Timeout(self.timeout)),
        }
    }

    /// A client, its metadata fetched from a bootstrap broker.
    pub async fn client(&self) -> Result<Client, KafkaError> {
        // rskafka retries inside each call; its own deadline stops it where ours would.
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: self.timeout / 4,
            base: 2.0,
            deadline: Some(self.timeout),
        };
        let mut b = ClientBuilder::new(self.brokers.clone())
            .client_id(self.client_id.as_str())
            .backoff_config(backoff)
            // Fetches ask for at most a few MiB; metadata is small.
            .max_message_size(64 << 20);
        if let Some(ca) = &self.tls {
            b = b.tls_config(
                crate::base::tls::client_config(ca.as_deref()).map_err(KafkaError::Tls)?,
            );
        }
        if let Some(s) = &self.sasl {
            let c = Credentials::new(s.username.clone(), s.password.clone());
            b = b.sasl_config(match s.mechanism {
                Mechanism::Plain => SaslConfig::Plain(c),
                Mechanism::ScramSha256 => SaslConfig::ScramSha256(c),
                Mechanism::ScramSha512 => SaslConfig::ScramSha512(c),
            });
        }
        self.bounded(b.build()).await
    }

    /// The partitions of `topic` (sorted), from fresh metadata. A topic the brokers do not
    /// list is asked for by name once (which creates it where the brokers create topics on
    /// first use, as Kafka does by default).
    pub async fn partitions(&self, client: &Client, topic: &str) -> Result<Vec<i32>, KafkaError> {
        for attempt in 0..2 {
            let topics = self.bounded(client.list_topics()).await?;
            if let Some(t) = topics.into_iter().find(|t| t.name == topic)
                && !t.partitions.is_empty()
            {
                return Ok(t.partitions.into_iter().collect());
            }
            if attempt == 0 {
                // A metadata request naming the topic; its own answer is not needed.
                let named = client.partition_client(topic, 0, UnknownTopicHandling::Error);
                let _ = tokio::time::timeout(self.timeout, named).await;
            }
        }
        Err(KafkaError::NoTopic(topic.to_owned()))
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), so that a key lands in the partition
/// Kafka's own producers would choose for it.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The index among `n` partitions of a record with `key` (Kafka's default partitioner:
/// `toPositive(murmur2(key)) % n`).
pub fn partition_of(key: &[u8], n: usize) -> usize {
    ((murmur2(key) & 0x7fff_ffff) as u32 as usize) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_land_where_kafkas_java_partitioner_puts_them() {
        // Values of org.apache.kafka.common.utils.Utils.murmur2, from Kafka's UtilsTest.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
        assert_eq!(
            partition_of(b"21", 4),
            (-973932308i32 & 0x7fff_ffff) as usize % 4
        );
    }

    #[test]
    fn sasl_mechanisms_are_read_by_their_iana_names() {
        assert_eq!(
            "scram-sha-512".parse::<Mechanism>(),
            Ok(Mechanism::ScramSha512)
        );
        assert_eq!("PLAIN".parse::<Mechanism>(), Ok(Mechanism::Plain));
        assert!("GSSAPI".parse::<Mechanism>().is_err());
    }
}
