//! The OTLP exporter's transport: gRPC (tonic, the official services of
//! `opentelemetry-proto`) or HTTP/protobuf (`POST /v1/logs`, `/v1/metrics`), with headers,
//! TLS, gzip and a timeout per request. The endpoints, headers and certificates are checked
//! when the client is made (a mistake of the agent's configuration stops it at start, never
//! sends records to the dead-letter file). Failures are sorted as the OTLP specification sorts
//! them: retryable (no connection, gRPC UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, CANCELLED,
//! OUT_OF_RANGE, DATA_LOSS, RESOURCE_EXHAUSTED with RetryInfo; HTTP 429, 502, 503, 504), also
//! a collector
//! that does not accept this agent yet (credentials, a path: UNAUTHENTICATED,
//! PERMISSION_DENIED, NOT_FOUND, UNIMPLEMENTED; HTTP 401, 403, 404), which an operator fixes
//! while records wait in the spool; anything else refuses the request itself (it would be
//! refused again).

use std::time::Duration;

use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_client::LogsServiceClient,
    },
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_client::MetricsServiceClient,
    },
};
use prost::Message;
use tonic::{
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// `--otlp-protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(format!("{other:?}: expected grpc or http/protobuf")),
        }
    }
}

/// Where and how the exporter connects.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub protocol: Protocol,
    /// gRPC: the collector's URL; HTTP: the URLs of the logs and metrics endpoints.
    pub logs_url: String,
    pub metrics_url: String,
    pub headers: Vec<(String, String)>,
    /// PEM CA certificates the collector's certificate must chain to (else the system's).
    pub ca_pem: Option<Vec<u8>>,
    pub gzip: bool,
    pub timeout: Duration,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Worth sending again later: the collector is away, overloaded or timed out.
    #[error("{0}")]
    Retryable(String),
    /// The collector refused the request itself.
    #[error("refused: {0}")]
    Refused(String),
}

/// How many of an accepted request's items the collector rejected (a partial success), and
/// its message.
pub type Accepted = (i64, String);

/// One signal's gRPC endpoint and, once connected, its channel (kept between requests).
struct GrpcTarget {
    endpoint: Endpoint,
    channel: Option<Channel>,
}

enum Transport {
    /// Logs, then metrics (each signal may have an endpoint of its own).
    Grpc(Box<[GrpcTarget; 2]>),
    Http(reqwest::Client),
}

pub struct Client {
    cfg: ClientConfig,
    transport: Transport,
    metadata: tonic::metadata::MetadataMap,
}

/// Whether a gRPC status is worth sending again (see the module's comment).
pub fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled
            | DeadlineExceeded
            | ResourceExhausted
            | Aborted
            | OutOfRange
            | Unavailable
            | DataLoss
            | Unauthenticated
            | PermissionDenied
            | Unimplemented
            | NotFound
    )
}

/// The type of google.rpc.RetryInfo, as it stands in a status's details (an `Any`).
const RETRY_INFO: &[u8] = b"google.rpc.RetryInfo";

/// Whether an HTTP status is worth sending again (see the module's comment).
pub fn http_retryable(status: u16) -> bool {
    matches!(status, 401 | 403 | 404 | 429 | 502 | 503 | 504)
}

fn grpc_error(s: tonic::Status) -> ExportError {
    let text = format!("gRPC {:?}: {}", s.code(), s.message());
    // A status made here from a failed connection (tonic says Unknown: transport error, with
    // the error as its source) is no answer of the collector: sent again.
    let local = std::error::Error::source(&s).is_some();
    // RESOURCE_EXHAUSTED is worth another try only when the collector says when (RetryInfo in
    // the status details), as the specification has it; without, the request is too large.
    let retry_info = s
        .details()
        .windows(RETRY_INFO.len())
        .any(|w| w == RETRY_INFO);
    let retryable = match s.code() {
        tonic::Code::ResourceExhausted => retry_info,
        c => grpc_retryable(c),
    };
    if local || retryable {
        ExportError::Retryable(text)
    } else {
        ExportError::Refused(text)
    }
}

/// The gRPC endpoint of `url`, TLS for https:// (the CA file's certificates, else the
/// system's).
fn grpc_endpoint(url: &str, cfg: &ClientConfig) -> Result<Endpoint, String> {
    let mut e = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("the OTLP endpoint {url}: {e}"))?
        .connect_timeout(cfg.timeout)
        .timeout(cfg.timeout);
    if url.starts_with("https://") {
        let tls = match &cfg.ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        e = e
            .tls_config(tls)
            .map_err(|e| format!("TLS to the OTLP endpoint {url}: {e}"))?;
    }
    Ok(e)
}

impl Client {
    /// Checks the endpoints, headers and certificates (an error names what is wrong).
    pub fn new(cfg: ClientConfig) -> Result<Self, String> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        let mut http_headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            let bad = |e: &dyn std::fmt::Display| format!("the OTLP header {k:?}: {e}");
            let key =
                MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(|e| bad(&e))?;
            metadata.insert(
                key,
                MetadataValue::try_from(v.as_str()).map_err(|e| bad(&e))?,
            );
            let name =
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| bad(&e))?;
            let value = reqwest::header::HeaderValue::from_str(v).map_err(|e| bad(&e))?;
            http_headers.insert(name, value);
        }
        let transport = match cfg.protocol {
            Protocol::Grpc => Transport::Grpc(Box::new([
                GrpcTarget {
                    endpoint: grpc_endpoint(&cfg.logs_url, &cfg)?,
                    channel: None,
                },
                GrpcTarget {
                    endpoint: grpc_endpoint(&cfg.metrics_url, &cfg)?,
                    channel: None,
                },
            ])),
            Protocol::HttpProtobuf => {
                for u in [&cfg.logs_url, &cfg.metrics_url] {
                    reqwest::Url::parse(u).map_err(|e| format!("the OTLP endpoint {u}: {e}"))?;
                }
                // The CA file's certificates alone when one is given, else the system's (those
                // rustls can use): for an https:// endpoint, at least one.
                let mut b = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout)
                    .default_headers(http_headers)
                    .tls_built_in_root_certs(false);
                let https = [&cfg.logs_url, &cfg.metrics_url]
                    .iter()
                    .any(|u| u.starts_with("https://"));
                let roots: Vec<reqwest::Certificate> = match &cfg.ca_pem {
                    Some(pem) => reqwest::Certificate::from_pem_bundle(pem)
                        .map_err(|e| format!("the OTLP CA file: {e}"))?,
                    None if https => rustls_native_certs::load_native_certs()
                        .certs
                        .into_iter()
                        .filter(|c| rustls::RootCertStore::empty().add(c.clone()).is_ok())
                        .filter_map(|c| reqwest::Certificate::from_der(&c).ok())
                        .collect(),
                    None => Vec::new(),
                };
                if https && roots.is_empty() {
                    return Err(
                        "an https:// OTLP endpoint, and no CA certificate to check it against \
                         (--otlp-ca-file, or the system's)"
                            .into(),
                    );
                }
                for c in roots {
                    b = b.add_root_certificate(c);
                }
                Transport::Http(b.build().map_err(|e| format!("the OTLP client: {e}"))?)
            }
        };
        Ok(Self {
            cfg,
            transport,
            metadata,
        })
    }

    /// The gRPC channel of signal `i` (0 logs, 1 metrics), connected on first use and kept.
    async fn channel(&mut self, i: usize) -> Result<Channel, ExportError> {
        let Transport::Grpc(targets) = &mut self.transport else {
            unreachable!("gRPC channel of an HTTP client")
        };
        let t = &mut targets[i];
        if let Some(c) = &t.channel {
            return Ok(c.clone());
        }
        let c = t.endpoint.connect().await.map_err(|e| {
            ExportError::Retryable(format!("connecting to {}: {e}", t.endpoint.uri()))
        })?;
        t.channel = Some(c.clone());
        Ok(c)
    }

    /// `body` with the configured headers as gRPC metadata.
    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(body);
        *r.metadata_mut() = self.metadata.clone();
        r
    }

    /// A failed request drops the gRPC channels: the next one connects again.
    fn forget_channel(&mut self, e: &ExportError) {
        if let (Transport::Grpc(targets), ExportError::Retryable(_)) = (&mut self.transport, e) {
            for t in targets.iter_mut() {
                t.channel = None;
            }
        }
    }

    /// A request's outcome: on a retryable failure the gRPC channels are dropped (the next
    /// request connects again).
    fn settle<T>(&mut self, r: Result<T, ExportError>) -> Result<T, ExportError> {
        if let Err(e) = &r {
            self.forget_channel(e);
        }
        r
    }

    pub async fn export_logs(
        &mut self,
        req: ExportLogsServiceRequest,
    ) -> Result<Accepted, ExportError> {
        let r = match self.cfg.protocol {
            Protocol::Grpc => self.grpc_logs(req).await,
            Protocol::HttpProtobuf => self
                .http(&self.cfg.logs_url.clone(), req.encode_to_vec())
                .await
                .map(|b| ExportLogsServiceResponse::decode(&*b).unwrap_or_default()),
        };
        self.settle(r).map(|resp| {
            resp.partial_success.map_or((0, String::new()), |p| {
                (p.rejected_log_records, p.error_message)
            })
        })
    }

    async fn grpc_logs(
        &mut self,
        req: ExportLogsServiceRequest,
    ) -> Result<ExportLogsServiceResponse, ExportError> {
        let mut c = LogsServiceClient::new(self.channel(0).await?);
        if self.cfg.gzip {
            c = c.send_compressed(CompressionEncoding::Gzip);
        }
        let resp = c.export(self.request(req)).await.map_err(grpc_error)?;
        Ok(resp.into_inner())
    }

    pub async fn export_metrics(
        &mut self,
        req: ExportMetricsServiceRequest,
    ) -> Result<Accepted, ExportError> {
        let r = match self.cfg.protocol {
            Protocol::Grpc => self.grpc_metrics(req).await,
            Protocol::HttpProtobuf => self
                .http(&self.cfg.metrics_url.clone(), req.encode_to_vec())
                .await
                .map(|b| ExportMetricsServiceResponse::decode(&*b).unwrap_or_default()),
        };
        self.settle(r).map(|resp| {
            resp.partial_success.map_or((0, String::new()), |p| {
                (p.rejected_data_points, p.error_message)
            })
        })
    }

    async fn grpc_metrics(
        &mut self,
        req: ExportMetricsServiceRequest,
    ) -> Result<ExportMetricsServiceResponse, ExportError> {
        let mut c = MetricsServiceClient::new(self.channel(1).await?);
        if self.cfg.gzip {
            c = c.send_compressed(CompressionEncoding::Gzip);
        }
        let resp = c.export(self.request(req)).await.map_err(grpc_error)?;
        Ok(resp.into_inner())
    }

    /// One HTTP/protobuf request; the answer's body.
    async fn http(&self, url: &str, body: Vec<u8>) -> Result<Vec<u8>, ExportError> {
        let Transport::Http(client) = &self.transport else {
            unreachable!("HTTP request of a gRPC client")
        };
        let mut req = client
            .post(url)
            .header("content-type", "application/x-protobuf");
        let body = if self.cfg.gzip {
            req = req.header("content-encoding", "gzip");
            gzip(&body)
        } else {
            body
        };
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| ExportError::Retryable(format!("POST {url}: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default().to_vec();
        http_outcome(status, url, bytes)
    }
}

/// An HTTP answer: its body when accepted, else whether to send it again.
fn http_outcome(status: u16, url: &str, body: Vec<u8>) -> Result<Vec<u8>, ExportError> {
    match status {
        200..=299 => Ok(body),
        s if http_retryable(s) => Err(ExportError::Retryable(format!("POST {url}: HTTP {s}"))),
        s => Err(ExportError::Refused(format!("POST {url}: HTTP {s}"))),
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(body);
    e.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(protocol: Protocol, headers: &[(&str, &str)]) -> ClientConfig {
        ClientConfig {
            protocol,
            logs_url: "http://127.0.0.1:4317".into(),
            metrics_url: "http://127.0.0.1:4318".into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ca_pem: None,
            gzip: false,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_specifications_transient_failures_and_an_unready_collector_are_retried() {
        use tonic::Code::*;
        for c in [
            Unavailable,
            DeadlineExceeded,
            ResourceExhausted,
            Aborted,
            Unauthenticated,
        ] {
            assert!(grpc_retryable(c), "{c:?}");
        }
        for c in [
            InvalidArgument,
            Internal,
            Unknown,
            FailedPrecondition,
            AlreadyExists,
        ] {
            assert!(!grpc_retryable(c), "{c:?}");
        }
        for s in [429, 502, 503, 504, 401] {
            assert!(http_retryable(s), "{s}");
        }
        for s in [400, 413, 500, 501] {
            assert!(!http_retryable(s), "{s}");
        }
        let broken = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
        assert_eq!(broken.code(), Unknown);
        assert!(
            matches!(grpc_error(broken), ExportError::Retryable(_)),
            "a broken connection"
        );
        let answered = tonic::Status::new(Unknown, "the collector's own error");
        assert!(matches!(grpc_error(answered), ExportError::Refused(_)));
        let too_large = tonic::Status::new(ResourceExhausted, "message larger than max");
        assert!(matches!(grpc_error(too_large), ExportError::Refused(_)));
        let later = tonic::Status::with_details(
            ResourceExhausted,
            "busy",
            tonic::codegen::Bytes::from_static(
                b"\x12\x2a\n(type.googleapis.com/google.rpc.RetryInfo",
            ),
        );
        assert!(matches!(grpc_error(later), ExportError::Retryable(_)));
        for (status, retried) in [(503, true), (500, false), (400, false), (401, true)] {
            let r = http_outcome(status, "u", Vec::new());
            assert_eq!(
                matches!(r, Err(ExportError::Retryable(_))),
                retried,
                "{status}"
            );
        }
        assert!(http_outcome(200, "u", vec![1]).is_ok());
    }

    #[test]
    fn a_header_neither_grpc_nor_http_can_carry_stops_the_client_at_start() {
        for p in [Protocol::Grpc, Protocol::HttpProtobuf] {
            assert!(Client::new(cfg(p, &[("x-tenant", "edge 1")])).is_ok());
            assert!(Client::new(cfg(p, &[("x-tenant", "line\nbreak")])).is_err());
            assert!(Client::new(cfg(p, &[("bad key", "v")])).is_err());
        }
    }
}
