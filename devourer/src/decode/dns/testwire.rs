//! Builds DNS messages byte by byte for tests (names with any bytes, cut records, ...).

pub const QR: u16 = 0x8000;
pub const RD: u16 = 0x0100;
pub const RA: u16 = 0x0080;

pub fn name(labels: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for l in labels {
        v.push(l.len() as u8);
        v.extend_from_slice(l);
    }
    v.push(0);
    v
}

pub fn dotted(s: &str) -> Vec<u8> {
    let labels: Vec<&[u8]> = s
        .split('.')
        .filter(|l| !l.is_empty())
        .map(str::as_bytes)
        .collect();
    name(&labels)
}

pub struct Rr {
    pub name: Vec<u8>,
    pub rtype: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
}

pub fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Rr {
    Rr {
        name: dotted(owner),
        rtype: 1,
        ttl,
        rdata: ip.to_vec(),
    }
}

pub fn aaaa(owner: &str, ttl: u32, ip: [u8; 16]) -> Rr {
    Rr {
        name: dotted(owner),
        rtype: 28,
        ttl,
        rdata: ip.to_vec(),
    }
}

pub fn cname(owner: &str, ttl: u32, target: &str) -> Rr {
    Rr {
        name: dotted(owner),
        rtype: 5,
        ttl,
        rdata: dotted(target),
    }
}

pub fn txt(owner: &str, ttl: u32, parts: &[&[u8]]) -> Rr {
    let mut rdata = Vec::new();
    for p in parts {
        rdata.push(p.len() as u8);
        rdata.extend_from_slice(p);
    }
    Rr {
        name: dotted(owner),
        rtype: 16,
        ttl,
        rdata,
    }
}

/// A message with one question (name bytes, qtype, class IN) and the given answers.
pub fn msg(id: u16, flags: u16, qname: &[u8], qtype: u16, answers: &[Rr]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(qname);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    for rr in answers {
        m.extend_from_slice(&rr.name);
        m.extend_from_slice(&rr.rtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&rr.ttl.to_be_bytes());
        m.extend_from_slice(&(rr.rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rr.rdata);
    }
    m
}

pub fn query(id: u16, qname: &str, qtype: u16) -> Vec<u8> {
    msg(id, RD, &dotted(qname), qtype, &[])
}

pub fn response(id: u16, rcode: u16, qname: &str, qtype: u16, answers: &[Rr]) -> Vec<u8> {
    msg(id, QR | RD | RA | rcode, &dotted(qname), qtype, answers)
}
