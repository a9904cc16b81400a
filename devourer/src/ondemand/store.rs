//! Where finished captures go: a local directory (written atomically, within
//! `max_local_bytes`) and/or an S3-compatible bucket (object_store), uploads retried with
//! backoff and never overwriting an object; a capture whose upload keeps failing is written
//! locally instead, never dropped silently.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use object_store::{
    ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig,
    aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey},
    path::Path as ObjectPath,
};

use crate::{base::files, config::requests::S3Target};

/// Keeps names to `[A-Za-z0-9._-]`: interface names and node names become file names.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `NODE_IFACE_ALERTID_TIME.pcap` (design.md), TIME as `YYYYMMDDTHHMMSSZ`.
pub fn file_name(node: &str, iface: &str, alertid: u64, at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let c = crate::base::time::civil(secs, false);
    format!(
        "{}_{}_{alertid}_{:04}{:02}{:02}T{:02}{:02}{:02}Z.pcap",
        safe(node),
        safe(iface),
        c.year,
        c.month,
        c.day,
        c.hour,
        c.min,
        c.sec
    )
}

/// The object name of a capture: its file name with the capture's id before `.pcap`
/// (`NODE_IFACE_ALERTID_YYYYMMDDTHHMMSSZ_ID.pcap`), so that a replayed `alertid` in the
/// same second never names an existing object.
pub fn object_name(file_name: &str, id: &str) -> String {
    format!("{}_{}.pcap", file_name.trim_end_matches(".pcap"), safe(id))
}

/// Bytes the files directly in `dir` take (0 if it cannot be read).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum()
}

/// Writes `bytes` as `dir/name` atomically (a temporary file, fsync, rename): a reader never
/// sees half a capture. An existing file of that name gets a numbered sibling instead. A file
/// that would take the directory past `max_bytes` is not written (`StorageFull`).
pub fn write_local(dir: &Path, name: &str, bytes: &[u8], max_bytes: u64) -> io::Result<PathBuf> {
    files::create_dir_all(dir)?;
    let len = bytes.len() as u64;
    // Captures end in parallel: each reserves its bytes before writing, so two files that
    // each fit cannot together pass the cap (the lock covers the check, not the write).
    static RESERVED: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let reserved = || {
        RESERVED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    {
        let mut r = reserved();
        let held = dir_bytes(dir) + *r;
        if held + len > max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{len} more bytes would take the capture directory past max_local_bytes ({max_bytes}; it holds {held})"
                ),
            ));
        }
        *r += len;
    }
    let written = write_new(dir, name, bytes);
    *reserved() -= len;
    written
}

/// Writes `bytes` as a new file `dir/name` (or a numbered sibling), atomically: linked into
/// place, which never replaces a file another capture has just written there.
fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", fastrand::u64(..)));
    let res = (|| {
        let mut f = files::create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        let mut n = 0;
        loop {
            let path = match n {
                0 => dir.join(name),
                n => dir.join(format!("{}.{n}.pcap", name.trim_end_matches(".pcap"))),
            };
            match std::fs::hard_link(&tmp, &path) {
                Ok(()) => return Ok(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(e),
            }
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    res
}

/// Upload retries: attempts, first wait, longest wait, and each attempt's time limit.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
    pub timeout: Duration,
}

/// The object key of `name` under the target's folder.
pub fn object_key(t: &S3Target, name: &str) -> String {
    match t.folder.as_deref().map(|f| f.trim_matches('/')) {
        Some(f) if !f.is_empty() => format!("{f}/{name}"),
        _ => name.to_owned(),
    }
}

/// Why an upload failed for good.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("S3 configuration: {0}")]
    Config(#[source] object_store::Error),
    #[error("{0}")]
    Put(#[source] object_store::Error),
    #[error("acl {0:?} is not a header value")]
    Acl(String),
    #[error("{0} (no more retries: shutting down)")]
    ShuttingDown(#[source] object_store::Error),
    #[error("the object exists already; it is not overwritten")]
    Exists,
}

/// Credentials and settings from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity, instance metadata).
pub fn from_env() -> AmazonS3Builder {
    AmazonS3Builder::from_env()
}

/// The target's bucket, region, endpoint, encryption and time limits on top of `b`.
fn configure(b: AmazonS3Builder, t: &S3Target, retry: Retry) -> Result<AmazonS3, UploadError> {
    let mut options = ClientOptions::new()
        .with_timeout(retry.timeout)
        .with_connect_timeout(retry.timeout.min(Duration::from_secs(5)));
    if let Some(acl) = &t.acl {
        // The destination's canned ACL on every upload (signed like the other headers); a
        // bucket that refuses ACLs fails the upload, which keeps the file locally.
        let value = HeaderValue::from_str(acl).map_err(|_| UploadError::Acl(acl.clone()))?;
        options = options.with_default_headers(HeaderMap::from_iter([(
            HeaderName::from_static("x-amz-acl"),
            value,
        )]));
    }
    let mut b = b
        .with_bucket_name(&t.bucket)
        .with_region(t.region.as_deref().unwrap_or("us-east-1"))
        // Our own retries below, with configurable backoff.
        .with_retry(RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        })
        .with_client_options(options);
    if let Some(url) = t.endpoint_url() {
        // Plain http only where the administrator allowed it for this destination.
        b = b.with_allow_http(t.allow_http).with_endpoint(url);
    }
    if t.encryption {
        let key: AmazonS3ConfigKey = "aws_server_side_encryption"
            .parse()
            .map_err(UploadError::Config)?;
        b = b.with_config(key, "AES256");
    }
    b.build().map_err(UploadError::Config)
}

/// Uploads `bytes` to the target with the credentials and settings of `b` (see
/// [`from_env`]), only where no object of that key exists (`If-None-Match: *`; a store that
/// does not implement conditional writes gets a plain put, the key being unique anyway).
/// Retries stop early once `stop` is set (shutdown), so the caller can keep the file locally.
pub async fn upload(
    b: AmazonS3Builder,
    t: &S3Target,
    key: &str,
    bytes: bytes::Bytes,
    retry: Retry,
    stop: &AtomicBool,
) -> Result<(), UploadError> {
    let store = configure(b, t, retry)?;
    let path = ObjectPath::from(key);
    let payload = PutPayload::from(bytes);
    let mut wait = retry.base;
    let attempts = retry.attempts.max(1);
    let mut attempt = 0;
    let mut mode = PutMode::Create;
    loop {
        attempt += 1;
        let opts = PutOptions {
            mode: mode.clone(),
            ..PutOptions::default()
        };
        let last = match store.put_opts(&path, payload.clone(), opts).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => return Err(UploadError::Exists),
            Err(e @ object_store::Error::NotImplemented { .. }) if mode == PutMode::Create => {
                tracing::warn!(bucket = %t.bucket, "the store does not take conditional writes ({e}); uploading without If-None-Match");
                mode = PutMode::Overwrite;
                attempt -= 1;
                continue;
            }
            Err(e) => {
                tracing::warn!(bucket = %t.bucket, key, attempt, "upload failed: {e}");
                e
            }
        };
        if attempt >= attempts {
            return Err(UploadError::Put(last));
        }
        if !pause(wait, stop).await {
            return Err(UploadError::ShuttingDown(last));
        }
        wait = (wait * 2).min(retry.max);
    }
}

/// Waits `wait` and up to a fifth more (jitter) before an upload's next attempt; `false` as
/// soon as `stop` is set (shutdown).
pub async fn pause(wait: Duration, stop: &AtomicBool) -> bool {
    let jitter = wait.mul_f64(fastrand::f64() * 0.2);
    let until = tokio::time::Instant::now() + wait + jitter;
    while tokio::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100).min(wait + jitter)).await;
    }
    !stop.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design_and_stay_file_names() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_779_540_000);
        assert_eq!(
            file_name("node-1", "eth0", 655443, at),
            "node-1_eth0_655443_20260523T124000Z.pcap"
        );
        assert_eq!(
            file_name("a/b", "../x", 0, at),
            "a-b_..-x_0_20260523T124000Z.pcap"
        );
        let t = S3Target {
            bucket: "b".into(),
            folder: Some("/pcaps/".into()),
            ..S3Target::default()
        };
        assert_eq!(object_key(&t, "f.pcap"), "pcaps/f.pcap");
        assert_eq!(
            object_name("node-1_eth0_655443_20260523T124000Z.pcap", "19b2c3d4e5-7"),
            "node-1_eth0_655443_20260523T124000Z_19b2c3d4e5-7.pcap"
        );
    }

    #[test]
    fn a_dead_endpoint_fails_after_the_attempts_and_shutdown_cuts_the_retries() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t = S3Target {
            bucket: "pcaps".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            allow_http: true,
            ..S3Target::default()
        };
        // Uploads with `attempts` tries `base` apart; the error, and whether it came quickly.
        let upload_fails = |attempts, base, stopping: bool| {
            let r = Retry {
                attempts,
                base,
                max: base,
                timeout: Duration::from_secs(2),
            };
            let creds = AmazonS3Builder::new()
                .with_access_key_id("k")
                .with_secret_access_key("s");
            let stop = AtomicBool::new(stopping);
            let t0 = std::time::Instant::now();
            let e = rt
                .block_on(upload(creds, &t, "k.pcap", vec![1].into(), r, &stop))
                .unwrap_err()
                .to_string();
            // Far below the hour the backoff asks for below, and far above what building a
            // client and three refused connections take on a loaded machine.
            (e, t0.elapsed() < Duration::from_secs(120))
        };
        let (e, _) = upload_fails(3, Duration::from_millis(10), false);
        assert!(!e.contains("shutting down"), "{e}");
        // An hour between attempts, but shutdown is under way: one attempt, then give up.
        let (e, quick) = upload_fails(100, Duration::from_secs(3600), true);
        assert!(e.contains("shutting down") && quick, "{e}");
    }

    #[test]
    fn local_files_appear_whole_and_never_overwrite() {
        let dir = std::env::temp_dir().join(format!("devourer-store-{}", std::process::id()));
        let a = write_local(&dir, "x.pcap", b"one", 6).unwrap();
        let b = write_local(&dir, "x.pcap", b"two", 6).unwrap();
        let full = write_local(&dir, "x.pcap", b"3", 6).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::StorageFull, "{full}");
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).unwrap(), b"one");
        assert_eq!(std::fs::read(&b).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn captures_ending_together_never_take_the_directory_past_its_cap() {
        let dir = std::env::temp_dir().join(format!("devourer-store-cap-{}", std::process::id()));
        let written: usize = std::thread::scope(|s| {
            let writers: Vec<_> = (0..16)
                .map(|i| {
                    let dir = &dir;
                    s.spawn(move || write_local(dir, &format!("{i}.pcap"), &[0; 100], 1000))
                })
                .collect();
            writers
                .into_iter()
                .map(|w| w.join().unwrap().is_ok() as usize)
                .sum()
        });
        // At most the cap (one whose bytes were still reserved may have been refused too).
        assert!((1..=10).contains(&written) && dir_bytes(&dir) == 100 * written as u64);
        assert!(dir_bytes(&dir) <= 1000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
