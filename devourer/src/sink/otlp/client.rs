//! The OTLP exporter's transport: gRPC (tonic, the official services of
//! `opentelemetry-proto`) or HTTP/protobuf (`POST /v1/logs`, `/v1/metrics`), with headers,
//! TLS, gzip and a timeout per request. Failures are sorted as the OTLP specification sorts
//! them: retryable (no connection, gRPC UNAVAILABLE and its kin, HTTP 429/502/503/504) or not
//! (the request itself is refused: it would be refused again).

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

enum Transport {
    Grpc(Option<Channel>),
    Http(reqwest::Client),
}

pub struct Client {
    cfg: ClientConfig,
    transport: Transport,
}

fn grpc_error(s: tonic::Status) -> ExportError {
    use tonic::Code::*;
    let text = format!("gRPC {:?}: {}", s.code(), s.message());
    match s.code() {
        Cancelled | DeadlineExceeded | ResourceExhausted | Aborted | OutOfRange | Unavailable
        | DataLoss | Unknown | Internal => ExportError::Retryable(text),
        // A collector not ready for this agent (credentials, a path) may be once it is fixed:
        // records wait in the spool rather than being lost.
        Unauthenticated | PermissionDenied | Unimplemented | NotFound => {
            ExportError::Retryable(text)
        }
        _ => ExportError::Refused(text),
    }
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Self, String> {
        let transport = match cfg.protocol {
            Protocol::Grpc => Transport::Grpc(None),
            Protocol::HttpProtobuf => {
                let mut b = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout);
                if let Some(pem) = &cfg.ca_pem {
                    for c in reqwest::Certificate::from_pem_bundle(pem)
                        .map_err(|e| format!("the OTLP CA file: {e}"))?
                    {
                        b = b.add_root_certificate(c);
                    }
                }
                Transport::Http(b.build().map_err(|e| format!("the OTLP client: {e}"))?)
            }
        };
        Ok(Self { cfg, transport })
    }

    /// A gRPC channel, connected on first use and kept.
    async fn channel(&mut self) -> Result<Channel, ExportError> {
        let Transport::Grpc(ch) = &mut self.transport else {
            unreachable!("gRPC channel of an HTTP client")
        };
        if let Some(c) = ch {
            return Ok(c.clone());
        }
        let url = &self.cfg.logs_url;
        let mut e = Endpoint::from_shared(url.clone())
            .map_err(|e| ExportError::Refused(format!("{url}: {e}")))?
            .connect_timeout(self.cfg.timeout)
            .timeout(self.cfg.timeout);
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &self.cfg.ca_pem {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            e = e
                .tls_config(tls)
                .map_err(|e| ExportError::Refused(format!("TLS to {url}: {e}")))?;
        }
        let c = e
            .connect()
            .await
            .map_err(|e| ExportError::Retryable(format!("connecting to {url}: {e}")))?;
        *ch = Some(c.clone());
        Ok(c)
    }

    /// `body` with the configured headers as gRPC metadata.
    fn request<T>(&self, body: T) -> Result<tonic::Request<T>, ExportError> {
        let mut r = tonic::Request::new(body);
        for (k, v) in &self.cfg.headers {
            let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|e| ExportError::Refused(format!("header {k}: {e}")))?;
            let value = MetadataValue::try_from(v.as_str())
                .map_err(|e| ExportError::Refused(format!("header {k}: {e}")))?;
            r.metadata_mut().insert(key, value);
        }
        Ok(r)
    }

    /// A failed request drops the gRPC channel: the next one connects again.
    fn forget_channel(&mut self, e: &ExportError) {
        if let (Transport::Grpc(ch), ExportError::Retryable(_)) = (&mut self.transport, e) {
            *ch = None;
        }
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
                .map(|b| {
                    let resp = ExportLogsServiceResponse::decode(&*b).unwrap_or_default();
                    resp.partial_success.map_or((0, String::new()), |p| {
                        (p.rejected_log_records, p.error_message)
                    })
                }),
        };
        if let Err(e) = &r {
            self.forget_channel(e);
        }
        r
    }

    async fn grpc_logs(&mut self, req: ExportLogsServiceRequest) -> Result<Accepted, ExportError> {
        let ch = self.channel().await?;
        let mut c = LogsServiceClient::new(ch);
        if self.cfg.gzip {
            c = c.send_compressed(CompressionEncoding::Gzip);
        }
        let resp = c.export(self.request(req)?).await.map_err(grpc_error)?;
        Ok(resp
            .into_inner()
            .partial_success
            .map_or((0, String::new()), |p| {
                (p.rejected_log_records, p.error_message)
            }))
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
                .map(|b| {
                    let resp = ExportMetricsServiceResponse::decode(&*b).unwrap_or_default();
                    resp.partial_success.map_or((0, String::new()), |p| {
                        (p.rejected_data_points, p.error_message)
                    })
                }),
        };
        if let Err(e) = &r {
            self.forget_channel(e);
        }
        r
    }

    async fn grpc_metrics(
        &mut self,
        req: ExportMetricsServiceRequest,
    ) -> Result<Accepted, ExportError> {
        let ch = self.channel().await?;
        let mut c = MetricsServiceClient::new(ch);
        if self.cfg.gzip {
            c = c.send_compressed(CompressionEncoding::Gzip);
        }
        let resp = c.export(self.request(req)?).await.map_err(grpc_error)?;
        Ok(resp
            .into_inner()
            .partial_success
            .map_or((0, String::new()), |p| {
                (p.rejected_data_points, p.error_message)
            }))
    }

    /// One HTTP/protobuf request; the answer's body.
    async fn http(&self, url: &str, body: Vec<u8>) -> Result<Vec<u8>, ExportError> {
        let Transport::Http(client) = &self.transport else {
            unreachable!("HTTP request of a gRPC client")
        };
        let mut req = client
            .post(url)
            .header("content-type", "application/x-protobuf");
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
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
        match status {
            200..=299 => Ok(bytes),
            // As for gRPC: credentials and paths may be fixed; the records wait.
            401 | 403 | 404 | 408 | 429 | 500..=599 => {
                Err(ExportError::Retryable(format!("POST {url}: HTTP {status}")))
            }
            _ => Err(ExportError::Refused(format!("POST {url}: HTTP {status}"))),
        }
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(body);
    e.finish().unwrap_or_default()
}
