//! What a flow's TLS handshake said (decoded from the TLS ring in `decode::tls`): the client's
//! ClientHello and the version its server chose. Every record of the flow carries it.

use std::sync::Arc;

use devourer_common::flow::FlowKey;

/// A flow's TLS handshake as records show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The server name the ClientHello asked for (with Encrypted Client Hello, the outer one).
    pub sni: Option<Arc<str>>,
    /// The application protocols it offered, in its order.
    pub alpn: Vec<Arc<str>>,
    /// The highest version it offered (`supported_versions`, else the hello's own), as OpenSSL
    /// names it (`TLSv1.3`).
    pub version: Option<&'static str>,
    /// The version the ServerHello chose.
    pub version_negotiated: Option<&'static str>,
    /// The JA4 fingerprint of the ClientHello (FoxIO's specification).
    pub ja4: Option<Arc<str>>,
    /// The ClientHello carried an `encrypted_client_hello` extension (its outer hello: `sni` is
    /// the public name).
    pub ech: Option<bool>,
    /// The address and port that sent the ClientHello (the flow's initiator, unless the
    /// orientation says otherwise: then the SNI names no destination).
    pub client: Option<([u8; 16], u16)>,
}

/// What one handshake message told about the connection of `key` (the client's direction:
/// `src` is the client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSeen {
    pub key: FlowKey,
    pub what: Seen,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The ClientHello: every field but the negotiated version.
    Client(TlsInfo),
    /// The ServerHello's chosen version.
    Server(&'static str),
}

impl TlsInfo {
    /// Adds what a handshake message said: the first ClientHello sets the client's fields (a
    /// second one, after a HelloRetryRequest, changes nothing: JA4 fingerprints the first); a
    /// ServerHello sets the negotiated version.
    pub fn note(&mut self, seen: &Seen) {
        match seen {
            Seen::Client(c) if self.ja4.is_none() => {
                let negotiated = self.version_negotiated;
                *self = c.clone();
                self.version_negotiated = negotiated;
            }
            Seen::Client(_) => {}
            Seen::Server(v) => self.version_negotiated = Some(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_client_hello_stays_and_a_server_hello_adds_its_version_in_any_order() {
        let hello = |sni: &str, ja4: &str| {
            Seen::Client(TlsInfo {
                sni: Some(sni.into()),
                ja4: Some(ja4.into()),
                ..TlsInfo::default()
            })
        };
        let mut t = TlsInfo::default();
        t.note(&Seen::Server("TLSv1.3"));
        t.note(&hello("first.example", "t13d_a"));
        // After a HelloRetryRequest, the second hello changes nothing.
        t.note(&hello("second.example", "t13d_b"));
        assert_eq!(t.sni.as_deref(), Some("first.example"));
        assert_eq!(t.ja4.as_deref(), Some("t13d_a"));
        assert_eq!(t.version_negotiated, Some("TLSv1.3"));
    }
}
