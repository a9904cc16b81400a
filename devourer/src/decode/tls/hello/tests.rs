//! ClientHellos and ServerHellos built byte by byte (RFC 8446's layout), and what is read of
//! them; [`ClientHelloBytes`] also serves the tracker's and the pipeline's tests.

use super::*;

/// A ClientHello's parts, written as one TLS record (or several: [`ClientHelloBytes::records`]).
pub(crate) struct ClientHelloBytes {
    pub legacy_version: u16,
    pub ciphers: Vec<u16>,
    pub extensions: Vec<(u16, Vec<u8>)>,
}

pub(crate) fn sni(name: &str) -> (u16, Vec<u8>) {
    let mut e = Vec::new();
    e.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    e.push(0);
    e.extend_from_slice(&(name.len() as u16).to_be_bytes());
    e.extend_from_slice(name.as_bytes());
    (0x0000, e)
}

pub(crate) fn alpn(protos: &[&[u8]]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for p in protos {
        list.push(p.len() as u8);
        list.extend_from_slice(p);
    }
    let mut e = (list.len() as u16).to_be_bytes().to_vec();
    e.extend(list);
    (0x0010, e)
}

pub(crate) fn u16_list(ty: u16, len_bytes: usize, v: &[u16]) -> (u16, Vec<u8>) {
    let n = v.len() * 2;
    let mut e = if len_bytes == 1 {
        vec![n as u8]
    } else {
        (n as u16).to_be_bytes().to_vec()
    };
    for x in v {
        e.extend_from_slice(&x.to_be_bytes());
    }
    (ty, e)
}

impl ClientHelloBytes {
    /// The handshake message (type 1).
    pub fn message(&self) -> Vec<u8> {
        let mut body = self.legacy_version.to_be_bytes().to_vec();
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&((self.ciphers.len() * 2) as u16).to_be_bytes());
        for c in &self.ciphers {
            body.extend_from_slice(&c.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        let mut exts = Vec::new();
        for (ty, data) in &self.extensions {
            exts.extend_from_slice(&ty.to_be_bytes());
            exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            exts.extend_from_slice(data);
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    /// The message in records of at most `max` bytes of fragment each.
    pub fn records(&self, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for frag in self.message().chunks(max) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(frag.len() as u16).to_be_bytes());
            out.extend_from_slice(frag);
        }
        out
    }

    pub fn record(&self) -> Vec<u8> {
        self.records(16_384)
    }

    /// FoxIO's JA4.md example (its `JA4_ro` order) with GREASE where browsers put it, the
    /// server name `name`.
    pub fn spec_example(name: &str) -> Self {
        let sig_algs = [
            0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
        ];
        let empty = |ty: u16| (ty, Vec::new());
        Self {
            legacy_version: 0x0303,
            ciphers: vec![
                0x2a2a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8,
                0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
            ],
            extensions: vec![
                empty(0x5a5a),
                (0x001b, vec![2, 0, 2]),
                sni(name),
                (0x0033, vec![0, 0]),
                alpn(&[b"h2", b"http/1.1"]),
                (0x4469, vec![0, 3, 2, b'h', b'2']),
                empty(0x0017),
                (0x002d, vec![1, 1]),
                u16_list(0x000d, 2, &sig_algs),
                (0x0005, vec![1, 0, 0, 0, 0]),
                empty(0x0023),
                empty(0x0012),
                u16_list(0x002b, 1, &[0x6a6a, 0x0304, 0x0303]),
                (0xff01, vec![0]),
                (0x000b, vec![1, 0]),
                u16_list(0x000a, 2, &[0x8a8a, 0x001d, 0x0017]),
                (0x0015, vec![0; 40]),
            ],
        }
    }
}

#[test]
fn a_browser_like_hello_gives_its_name_protocols_version_and_the_specifications_ja4() {
    let info = client_hello(&ClientHelloBytes::spec_example("example.com").record()).unwrap();
    assert_eq!(info.sni.as_deref(), Some("example.com"));
    let alpn: Vec<&str> = info.alpn.iter().map(|a| &**a).collect();
    assert_eq!(alpn, ["h2", "http/1.1"]);
    assert_eq!(info.version, Some("TLSv1.3"));
    assert_eq!(
        info.ja4.as_deref(),
        Some("t13d1516h2_8daaf6152771_e5627efa2ab1")
    );
    assert_eq!(info.ech, Some(false));
    assert_eq!(info.version_negotiated, None);
}

#[test]
fn a_hello_split_over_records_reads_the_same_and_a_cut_one_is_incomplete() {
    let hello = ClientHelloBytes::spec_example("example.com");
    let whole = client_hello(&hello.record()).unwrap();
    assert_eq!(client_hello(&hello.records(100)).unwrap(), whole);
    let record = hello.record();
    for cut in [0, 4, 5, 60, record.len() - 1] {
        assert_eq!(
            client_hello(&record[..cut]),
            Err(HelloError::Incomplete),
            "{cut}"
        );
    }
    assert_eq!(
        client_hello(b"GET / HTTP/1.1\r\n"),
        Err(HelloError::NotHello)
    );
}

#[test]
fn a_tls12_hello_without_extensions_and_an_ech_hello() {
    let bare = ClientHelloBytes {
        legacy_version: 0x0303,
        ciphers: vec![0xc02f, 0x009c],
        extensions: Vec::new(),
    };
    let info = client_hello(&bare.record()).unwrap();
    assert_eq!(info.sni, None);
    assert!(info.alpn.is_empty());
    assert_eq!(info.version, Some("TLSv1.2"));
    assert_eq!(
        info.ja4.as_deref(),
        Some(&*format!(
            "t12i020000_{}_000000000000",
            &sha_hex("009c,c02f")[..12]
        ))
    );
    let mut ech = ClientHelloBytes::spec_example("public.example");
    ech.extensions
        .push((0xfe0d, vec![0, 0, 1, 0, 1, 7, 0, 0, 0, 0]));
    let info = client_hello(&ech.record()).unwrap();
    assert_eq!(info.ech, Some(true));
    assert_eq!(info.sni.as_deref(), Some("public.example"));
}

#[test]
fn hostile_names_are_bounded_and_made_text() {
    let mut h = ClientHelloBytes::spec_example("x");
    let long = "a".repeat(300);
    h.extensions[2] = sni(&long);
    let mut protos: Vec<Vec<u8>> = (0..40).map(|i| format!("p{i}").into_bytes()).collect();
    protos[0] = vec![0xff, b'x'];
    let refs: Vec<&[u8]> = protos.iter().map(Vec::as_slice).collect();
    h.extensions[4] = alpn(&refs);
    let info = client_hello(&h.record()).unwrap();
    assert_eq!(info.sni.as_deref().map(str::len), Some(255));
    assert_eq!(info.alpn.len(), MAX_ALPN);
    assert_eq!(&*info.alpn[0], "\u{fffd}x");
    // JA4 reads the first ALPN's bytes: 0xff and 'x' (0x78).
    assert_eq!(&info.ja4.as_deref().unwrap()[8..10], "f8");
    // An extension whose length runs past the hello.
    let bad = ClientHelloBytes {
        legacy_version: 0x0303,
        ciphers: vec![0x1301],
        extensions: vec![(0x0017, Vec::new())],
    };
    let mut msg = bad.message();
    let n = msg.len();
    msg[n - 1] = 9;
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend(msg);
    assert_eq!(client_hello(&rec), Err(HelloError::Malformed));
}

/// A ServerHello choosing `version`, TLS 1.3's way (`supported_versions`) or the old one.
pub(crate) fn server_hello(version: u16) -> Vec<u8> {
    let mut body = 0x0303u16.to_be_bytes().to_vec();
    body.extend_from_slice(&[9; 32]);
    body.push(0);
    body.extend_from_slice(&0x1301u16.to_be_bytes());
    body.push(0);
    let exts: Vec<u8> = if version == 0x0304 {
        vec![0x00, 0x2b, 0, 2, 3, 4]
    } else {
        vec![0xff, 0x01, 0, 1, 0]
    };
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend(exts);
    if version != 0x0304 {
        body[..2].copy_from_slice(&version.to_be_bytes());
    }
    let mut msg = vec![2];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend(body);
    let mut rec = vec![0x16, 3, 3];
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend(msg);
    rec
}

#[test]
fn a_server_hello_tells_the_chosen_version() {
    assert_eq!(server_version(&server_hello(0x0304)), Ok("TLSv1.3"));
    assert_eq!(server_version(&server_hello(0x0303)), Ok("TLSv1.2"));
    assert_eq!(server_version(&server_hello(0x0301)), Ok("TLSv1"));
    let h = ClientHelloBytes::spec_example("a").record();
    assert_eq!(server_version(&h), Err(HelloError::NotHello));
}

fn sha_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
