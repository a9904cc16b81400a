//! Record ids: a hash of what makes a record unique, so that the same record always gets the
//! same id (BigQuery's insertId; replays are reproducible).

use devourer_common::flow::FlowKey;
use sha2::{Digest, Sha256};

use crate::{
    base::inline::Inline,
    decode::{
        dns::DnsTx,
        http::{HttpMsg, message::Message},
    },
};

/// A record id: 16 bytes of SHA-256 in hex.
pub type RecordId = Inline<32>;

/// Flow record id: hash of the 5-tuple, interface, flow start, agent and seq. The same flow
/// record always gets the same id (BigQuery insertId; replays are reproducible).
pub fn record_id(key: &FlowKey, flow_start_ns: u64, agent: &str, seq: u32) -> RecordId {
    let mut h = Sha256::new();
    h.update(key.src_addr);
    h.update(key.dst_addr);
    h.update(key.src_port.to_be_bytes());
    h.update(key.dst_port.to_be_bytes());
    h.update([key.proto, key.flags]);
    h.update(key.ifindex.to_be_bytes());
    // Where the key had its VLAN: ids of untagged flows are what they were.
    h.update([0u8; 2]);
    h.update(flow_start_ns.to_be_bytes());
    hash_agent(&mut h, agent);
    h.update(seq.to_be_bytes());
    hex16(&h.finalize())
}

/// The agent name, length first, so that no two (agent, following field) pairs collide.
fn hash_agent(h: &mut Sha256, agent: &str) {
    h.update((agent.len() as u32).to_be_bytes());
    h.update(agent.as_bytes());
}

/// The client and server of a DNS or HTTP exchange, as records show their addresses.
fn hash_endpoints(
    h: &mut Sha256,
    (client, client_port): (&str, u16),
    (server, server_port): (&str, u16),
) {
    h.update(client);
    h.update(client_port.to_be_bytes());
    h.update(server);
    h.update(server_port.to_be_bytes());
}

/// DNS record id: hash of the endpoints (`addrs`: the client's and server's addresses as the
/// record shows them), transport, message id, query time and agent.
pub fn dns_id(tx: &DnsTx, (client, server): (&str, &str), agent: &str) -> RecordId {
    let mut h = Sha256::new();
    hash_endpoints(&mut h, (client, tx.client_port), (server, tx.server_port));
    h.update([u8::from(tx.tcp)]);
    h.update(tx.msg_id.to_be_bytes());
    h.update(tx.time_ns.to_be_bytes());
    hash_agent(&mut h, agent);
    hex16(&h.finalize())
}

pub(super) fn hex16(digest: &[u8]) -> RecordId {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in digest[..16].iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    RecordId::from_ascii(&out)
}

/// HTTP record id: hash of the endpoints (as for [`dns_id`]), time, kind and agent.
pub fn http_id(m: &HttpMsg, (client, server): (&str, &str), agent: &str) -> RecordId {
    let mut h = Sha256::new();
    hash_endpoints(&mut h, (client, m.client_port), (server, m.server_port));
    h.update(m.time_ns.to_be_bytes());
    h.update([u8::from(matches!(m.message, Message::Response(_)))]);
    // Pipelined messages share a packet time: the request line tells them apart.
    if let Message::Request(r) = &m.message {
        h.update(r.method.as_bytes());
        h.update(r.target.as_deref().unwrap_or_default().as_bytes());
    }
    hash_agent(&mut h, agent);
    hex16(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_differ_by_seq_agent_and_start_and_repeat_otherwise() {
        let k = FlowKey {
            proto: 6,
            ..Default::default()
        };
        let a = record_id(&k, 1, "node-a", 0);
        assert_eq!(a.len(), 32);
        assert_eq!(a, record_id(&k, 1, "node-a", 0));
        assert_ne!(a, record_id(&k, 1, "node-a", 1));
        assert_ne!(a, record_id(&k, 1, "node-b", 0));
        assert_ne!(a, record_id(&k, 2, "node-a", 0));
    }

    #[test]
    fn ids_are_the_first_16_digest_bytes_in_lowercase_hex() {
        let digest: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let want: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex16(&digest), want);
        // Pinned: ids are BigQuery insertIds, stable across versions.
        let k = FlowKey {
            proto: 6,
            ..Default::default()
        };
        assert_eq!(
            record_id(&k, 1, "node-a", 0),
            "7288becc4bb614ffcaab0b727e7a7eed"
        );
        let tx = DnsTx {
            status: crate::decode::dns::TxStatus::Success,
            time_ns: 5,
            client: "10.0.0.1".parse().unwrap(),
            client_port: 40000,
            server: "2001:db8::53".parse().unwrap(),
            server_port: 53,
            tcp: false,
            msg_id: 7,
            question: None,
            rcode: Some(0),
            answers: vec![],
            latency_ns: None,
            role: crate::base::local::Role::Client,
            ifindex: 2,
            cut: false,
            xlat: None,
        };
        assert_eq!(
            dns_id(&tx, ("10.0.0.1", "2001:db8::53"), "node-a"),
            "9d43ad7df38bbb1699a559660d96ef38"
        );
    }
}
