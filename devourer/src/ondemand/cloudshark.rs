//! CloudShark upload (pcapdaemon's): a capture file is POSTed as multipart (part `file`, with
//! `additional_tags`) to `{url}/api/v1/{token}/upload`; the answer `{"filename":..,"id":..}`
//! names it, viewable at `{url}/captures/{id}`. Network errors, timeouts and 5xx/429 answers
//! are retried with backoff like S3 uploads; other refusals (a bad token, a file it rejects)
//! end at once. The token is never logged (it is in the URL: errors are shown without it).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde::Deserialize;

use super::store::{Retry, pause};
use crate::config::requests::CloudsharkSection;

/// Answers read at most (an answer is a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Where uploads go, with the token read from its file.
pub struct Cloudshark {
    base: String,
    token: String,
    /// Tags of every upload, after the request's.
    tags: String,
    client: reqwest::Client,
}

/// An uploaded capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub id: String,
    pub url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("CloudShark refused the upload (HTTP {status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error("{0}")]
    Transport(String),
    #[error("CloudShark's answer is not {{\"filename\",\"id\"}}: {0}")]
    BadAnswer(String),
    #[error("stopping before the upload succeeded (last: {0})")]
    ShuttingDown(Box<UploadError>),
}

impl UploadError {
    /// Whether trying again may succeed.
    fn transient(&self) -> bool {
        match self {
            Self::Refused { status, .. } => *status >= 500 || *status == 429,
            Self::Transport(_) => true,
            Self::BadAnswer(_) | Self::ShuttingDown(_) => false,
        }
    }
}

#[derive(Deserialize)]
struct Answer {
    id: serde_json::Value,
}

#[derive(Deserialize)]
struct Failure {
    #[serde(default)]
    exceptions: Vec<serde_json::Value>,
}

/// A reqwest error without its URL (which holds the token).
fn transport(e: reqwest::Error) -> UploadError {
    UploadError::Transport(e.without_url().to_string())
}

impl Cloudshark {
    /// The client for `[capture.cloudshark]`, with `token` (read from its `token_file`).
    pub fn new(s: &CloudsharkSection, token: String) -> Result<Self, reqwest::Error> {
        // No redirects (the URL holds the token: a redirect would carry it, in the Referer
        // too, wherever it pointed) and no plain http unless allowed.
        let client = reqwest::Client::builder()
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .https_only(!s.allow_http)
            .build()?;
        Ok(Self {
            base: s.url.trim_end_matches('/').to_owned(),
            token,
            tags: s.tags.trim_matches(',').to_owned(),
            client,
        })
    }

    /// pcapdaemon's tags: the request's, the configured ones, then
    /// `node:HOST,interface:IF,snaplength:N`.
    pub fn tags(&self, request: Option<&str>, node: &str, iface: &str, snap: u32) -> String {
        let ours = format!("node:{node},interface:{iface},snaplength:{snap}");
        [
            request.unwrap_or_default().trim_matches(','),
            &self.tags,
            &ours,
        ]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(",")
    }

    /// One attempt.
    async fn post(
        &self,
        name: &str,
        bytes: &bytes::Bytes,
        tags: &str,
    ) -> Result<Uploaded, UploadError> {
        // The file image is shared, not copied, by each attempt.
        let len = bytes.len() as u64;
        let file = reqwest::multipart::Part::stream_with_length(bytes.clone(), len)
            .file_name(name.to_owned())
            .mime_str("application/vnd.tcpdump.pcap")
            .map_err(transport)?;
        let form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("filename", name.to_owned())
            .text("additional_tags", tags.to_owned());
        let url = format!("{}/api/v1/{}/upload", self.base, self.token);
        let mut resp = self
            .client
            .post(url)
            .multipart(form)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER_BYTES {
                return Err(UploadError::BadAnswer(format!(
                    "more than {MAX_ANSWER_BYTES} bytes"
                )));
            }
        }
        let text = String::from_utf8_lossy(&body);
        if !(200..300).contains(&status) {
            let reason = serde_json::from_slice::<Failure>(&body)
                .ok()
                .filter(|f| !f.exceptions.is_empty())
                .map(|f| {
                    f.exceptions
                        .iter()
                        .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(UploadError::Refused { status, reason });
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| {
            UploadError::BadAnswer(format!(
                "{e}: {}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
        let id = match answer.id {
            serde_json::Value::String(s) if !s.is_empty() => s,
            serde_json::Value::Number(n) => n.to_string(),
            other => return Err(UploadError::BadAnswer(format!("id {other}"))),
        };
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(UploadError::BadAnswer(format!("id {id:?}")));
        }
        Ok(Uploaded {
            url: format!("{}/captures/{id}", self.base),
            id,
        })
    }

    /// Uploads `bytes` as `name`, retrying transient failures with backoff; retries stop early
    /// once `stop` is set (shutdown), so the caller can keep the file locally.
    pub async fn upload(
        &self,
        name: &str,
        bytes: &bytes::Bytes,
        tags: &str,
        retry: Retry,
        stop: &AtomicBool,
    ) -> Result<Uploaded, UploadError> {
        let mut wait = retry.base;
        let attempts = retry.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Stopping: the file goes to the local directory at once instead.
            if stop.load(Ordering::Relaxed) {
                return Err(UploadError::ShuttingDown(Box::new(UploadError::Transport(
                    "the agent is stopping".into(),
                ))));
            }
            let e = match self.post(name, bytes, tags).await {
                Ok(u) => return Ok(u),
                Err(e) => e,
            };
            tracing::warn!(name, attempt, "CloudShark upload failed: {e}");
            if !e.transient() || attempt >= attempts {
                return Err(e);
            }
            if !pause(wait, stop).await {
                return Err(UploadError::ShuttingDown(Box::new(e)));
            }
            wait = (wait * 2).min(retry.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(tags: &str) -> CloudsharkSection {
        CloudsharkSection {
            url: "https://cs.example/".into(),
            token_file: "/dev/null".into(),
            timeout: Duration::from_secs(5),
            tags: tags.into(),
            allow_http: false,
        }
    }

    #[test]
    fn tags_are_the_requests_then_the_configured_then_pcapdaemons() {
        let cs = Cloudshark::new(&section("site:lab,"), "t".into()).unwrap();
        assert_eq!(
            cs.tags(Some("blah,tagme"), "node-1", "eth0", 1500),
            "blah,tagme,site:lab,node:node-1,interface:eth0,snaplength:1500"
        );
        let bare = Cloudshark::new(&section(""), "t".into()).unwrap();
        assert_eq!(
            bare.tags(None, "n", "lo", 64),
            "node:n,interface:lo,snaplength:64"
        );
        assert_eq!(bare.base, "https://cs.example", "no doubled slash in URLs");
    }

    #[test]
    fn only_failures_that_may_pass_are_retried() {
        let refused = |status| UploadError::Refused {
            status,
            reason: String::new(),
        };
        assert!(refused(503).transient() && refused(429).transient());
        assert!(!refused(401).transient() && !refused(400).transient());
        assert!(UploadError::Transport("reset".into()).transient());
        assert!(!UploadError::BadAnswer("x".into()).transient());
    }
}
