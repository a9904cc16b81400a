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
    use std::{io, net::TcpStream};

    use rustls::{ClientConnection, StreamOwned, pki_types::ServerName};

    use super::{Stream, TlsConfig};

    /// TLS over `tcp` to `host` (the certificate's name, unless the configuration names one).
    pub fn wrap(cfg: &TlsConfig, host: &str, tcp: TcpStream) -> io::Result<Box<dyn Stream>> {
        let config = crate::base::tls::client_config(cfg.ca_file.as_deref())?;
        let name = cfg.server_name.as_deref().unwrap_or(host).to_owned();
        let name = ServerName::try_from(name.clone())
            .map_err(|e| io::Error::other(format!("TLS server name {name:?}: {e}")))?;
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
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
