//! TLS to the Forward receiver (`--fluent-tls`): rustls, the receiver's certificate checked
//! against `--fluent-ca-file` or the system's CA certificates, for the name
//! `--fluent-tls-server-name` or the host of `--fluent`.

use std::{io, net::TcpStream};

use super::TlsConfig;

/// A connection to the receiver, plain or TLS.
pub trait Stream: io::Read + io::Write + Send {}

impl<T: io::Read + io::Write + Send> Stream for T {}

#[cfg(feature = "fluent-tls")]
mod imp {
    use std::{io, net::TcpStream, sync::Arc};

    use rustls::{
        ClientConfig, ClientConnection, RootCertStore, StreamOwned,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    };

    use super::{Stream, TlsConfig};

    fn roots(cfg: &TlsConfig) -> io::Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match &cfg.ca_file {
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
                "no CA certificate to check the receiver's with",
            ));
        }
        Ok(roots)
    }

    /// TLS over `tcp` to `host` (the certificate's name, unless the configuration names one).
    pub fn wrap(cfg: &TlsConfig, host: &str, tcp: TcpStream) -> io::Result<Box<dyn Stream>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots(cfg)?)
            .with_no_client_auth();
        let name = cfg.server_name.as_deref().unwrap_or(host).to_owned();
        let name = ServerName::try_from(name.clone())
            .map_err(|e| io::Error::other(format!("TLS server name {name:?}: {e}")))?;
        let conn = ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
        let mut s = StreamOwned::new(conn, tcp);
        // The handshake now, so that a bad certificate is reported as such.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(Box::new(s))
    }
}

/// `tcp` as is, or wrapped in TLS where configured.
pub fn wrap(tls: Option<&TlsConfig>, host: &str, tcp: TcpStream) -> io::Result<Box<dyn Stream>> {
    match tls {
        None => Ok(Box::new(tcp)),
        #[cfg(feature = "fluent-tls")]
        Some(cfg) => imp::wrap(cfg, host, tcp),
        #[cfg(not(feature = "fluent-tls"))]
        Some(_) => {
            let _ = host;
            Err(io::Error::other(
                "this build has no TLS for the Forward output (built without the fluent-tls feature)",
            ))
        }
    }
}
