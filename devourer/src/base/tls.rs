//! TLS client settings the remote sinks and triggers share: rustls with the aws-lc-rs
//! provider, the peer's certificate checked against a CA file (PEM) or the system's CA
//! certificates.

#[cfg(any(feature = "fluent-tls", feature = "kafka"))]
pub use self::imp::*;

/// Makes aws-lc-rs the process's rustls provider: more than one provider is linked in (the
/// Kafka client's brings ring), and rustls refuses to guess between them. Call it once at
/// start, before any TLS client is built.
pub fn install_default_provider() {
    #[cfg(any(
        feature = "fluent-tls",
        feature = "kafka",
        feature = "k8s",
        feature = "capture-requests"
    ))]
    {
        // An error only says a provider is installed already.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

#[cfg(any(feature = "fluent-tls", feature = "kafka"))]
mod imp {
    use std::{io, path::Path, sync::Arc};

    use rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, pem::PemObject},
    };

    /// The CA certificates in `ca_file`, or the system's when `None`.
    pub fn roots(ca_file: Option<&Path>) -> io::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| io::Error::other(format!("reading {}: {e}", path.display())))?
                {
                    let cert = cert.map_err(|e| {
                        io::Error::other(format!("a certificate in {}: {e}", path.display()))
                    })?;
                    roots.add(cert).map_err(io::Error::other)?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A system certificate rustls cannot use is skipped, as browsers do.
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(io::Error::other(
                "no CA certificate to check the server's with",
            ));
        }
        Ok(roots)
    }

    /// A client configuration trusting [`roots`], without a client certificate.
    pub fn client_config(ca_file: Option<&Path>) -> io::Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots(ca_file)?)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}
