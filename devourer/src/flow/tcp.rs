//! TCP health on flow records: the handshake's round trip from the counting hook's own times,
//! the sockets' smoothed RTT the counting program sampled, retransmitted segments the kernel
//! reported by tuple, and connections that failed (a SYN answered by RST, or never answered).

use devourer_common::flow::{FlowValue, HOOK_EGRESS};

const TCP_SYN: u16 = 0x02;
const TCP_RST: u16 = 0x04;
const TCP_ACK: u16 = 0x10;

/// One direction's handshake times over the flow's life (program clock; 0: not seen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Handshake {
    /// The last SYN (bare, or a SYN-ACK) the direction's entries held: a retransmitted SYN
    /// starts the handshake again, and the SYN-ACK that answers it comes after it.
    syn_last: u64,
    /// Its first segment with ACK and without SYN.
    ack_first: u64,
}

impl Handshake {
    pub(super) fn observe(&mut self, v: &FlowValue) {
        self.syn_last = self.syn_last.max(v.syn_ns);
        if v.ack_ns != 0 && (self.ack_first == 0 || v.ack_ns < self.ack_first) {
            self.ack_first = v.ack_ns;
        }
    }
}

/// Smoothed RTT samples, in microseconds (the kernel's `srtt_us >> 3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Srtt {
    pub min_us: u32,
    pub max_us: u32,
    pub last_us: u32,
}

impl Srtt {
    fn one(us: u32) -> Self {
        Self {
            min_us: us,
            max_us: us,
            last_us: us,
        }
    }

    /// `later`'s samples after these: the least and greatest of both, `later`'s last.
    pub(super) fn then(self, later: Srtt) -> Srtt {
        Srtt {
            min_us: self.min_us.min(later.min_us),
            max_us: self.max_us.max(later.max_us),
            last_us: later.last_us,
        }
    }
}

/// A direction's RTT samples since its last record, and how many samples of its live entry
/// it has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Samples {
    pub(super) srtt: Option<Srtt>,
    /// `srtt_samples` of the live entry at its last read (0: no live entry).
    seen: u32,
}

impl Samples {
    /// Folds a read of the direction's entry (`was_live`: the same entry was read before,
    /// `live`: it stays in the map): a sample taken since the last read is the entry's last
    /// (the program samples at most once per scan interval; where two came between reads,
    /// the earlier is not seen).
    pub(super) fn observe(&mut self, v: &FlowValue, was_live: bool, live: bool) {
        let before = if was_live { self.seen } else { 0 };
        if v.srtt_samples != before && v.srtt_last_us != 0 {
            let s = Srtt::one(v.srtt_last_us);
            self.srtt = Some(self.srtt.map_or(s, |old| old.then(s)));
        }
        self.seen = if live { v.srtt_samples } else { 0 };
    }
}

/// What a TCP flow's record says about its health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpHealth {
    /// The handshake's round trip in ns (see [`handshake_rtt`]).
    pub handshake_rtt_ns: Option<u64>,
    /// The sockets' smoothed RTT samples since the last record (either end that is local).
    pub srtt: Option<Srtt>,
    /// Retransmitted segments since the last record (`None`: the kernel does not report them).
    pub retransmits: Option<u64>,
    /// The initiator's SYN was answered by a RST, or (at the flow's idle end) never.
    pub failed: bool,
}

/// Whether a direction counted at `hook` is sent from this node: first seen leaving one of its
/// devices (a packet that came in was counted where it entered), or entering a veth from its
/// peer (a pod). `has_peer` tells the veths.
pub(super) fn sent_here(hook: u32, has_peer: &dyn Fn(u32) -> bool) -> bool {
    hook != 0 && (hook & HOOK_EGRESS != 0 || has_peer(hook >> 1))
}

/// The handshake's round trip as the counting hooks saw it: of its two legs, SYN (the last) to
/// SYN-ACK is the network's round trip where the client is on this node or one of its pods (the
/// path to the server), SYN-ACK to the ACK that completes it where the server is (the path to
/// the client); the other leg is the local stack's turnaround. `local`: whether the client
/// and the server sent from here (see [`sent_here`]); where both or neither did, the longer
/// leg. Only once the ACK is seen: a handshake that did not complete has no round trip.
pub(super) fn handshake_rtt(
    client: &Handshake,
    server: &Handshake,
    local: (bool, bool),
) -> Option<u64> {
    let (syn, synack, ack) = (client.syn_last, server.syn_last, client.ack_first);
    if syn == 0 || synack < syn || ack < synack {
        return None;
    }
    let (to_server, to_client) = (synack - syn, ack - synack);
    Some(match local {
        (true, false) => to_server,
        (false, true) => to_client,
        _ => to_server.max(to_client),
    })
}

/// Whether the initiator's connection failed: it sent a bare SYN and nothing after (no ACK),
/// got no SYN-ACK, and the other side reset it, or (`idle_end`: the flow went idle) never
/// answered. A connection whose handshake another path carried (the client's ACKs seen, the
/// answer not) has not failed.
pub(super) fn failed(
    (client_syn, client_tcp): (bool, u16),
    server_tcp: u16,
    server: &Handshake,
    idle_end: bool,
) -> bool {
    let answered = server.syn_last != 0 || server_tcp & TCP_SYN != 0;
    client_syn && client_tcp & TCP_ACK == 0 && !answered && (server_tcp & TCP_RST != 0 || idle_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(syn_last: u64, ack_first: u64) -> Handshake {
        Handshake {
            syn_last,
            ack_first,
        }
    }

    #[test]
    fn a_local_client_measures_syn_to_syn_ack_and_a_local_server_syn_ack_to_ack() {
        // Client here: SYN at 1 ms, SYN-ACK back at 41 ms, ACK 20 us later.
        let client = hs(1_000_000, 41_020_000);
        let server = hs(41_000_000, 0);
        assert_eq!(
            handshake_rtt(&client, &server, (true, false)),
            Some(40_000_000)
        );
        // Server here: SYN in at 1 ms, SYN-ACK out 30 us later, ACK back 40 ms after that.
        let client = hs(1_000_000, 41_030_000);
        let server = hs(1_030_000, 0);
        assert_eq!(
            handshake_rtt(&client, &server, (false, true)),
            Some(40_000_000)
        );
        // Told by locality, not length: a server slower than the network.
        let client = hs(1_000_000, 1_100_000);
        let server = hs(1_090_000, 0);
        assert_eq!(handshake_rtt(&client, &server, (true, false)), Some(90_000));
        assert_eq!(handshake_rtt(&client, &server, (false, true)), Some(10_000));
        // Neither end here (a routed node) or both: the longer leg.
        assert_eq!(
            handshake_rtt(&client, &server, (false, false)),
            Some(90_000)
        );
    }

    #[test]
    fn a_retransmitted_syn_times_from_the_last_syn_and_an_incomplete_handshake_has_none() {
        // SYNs at 0 and 1 s (the first lost), SYN-ACK at 1.05 s, ACK at once.
        let client = hs(1_000_000_000, 1_050_010_000);
        let server = hs(1_050_000_000, 0);
        assert_eq!(
            handshake_rtt(&client, &server, (true, false)),
            Some(50_000_000)
        );
        // No ACK yet, no SYN-ACK, or a SYN-ACK older than the last SYN: nothing to time.
        assert_eq!(
            handshake_rtt(&hs(1_000, 0), &hs(2_000, 0), (true, false)),
            None
        );
        assert_eq!(
            handshake_rtt(&hs(1_000, 5_000), &hs(0, 0), (true, false)),
            None
        );
        assert_eq!(
            handshake_rtt(&hs(3_000, 5_000), &hs(2_000, 0), (true, false)),
            None
        );
    }

    #[test]
    fn a_syn_answered_by_reset_or_never_fails_and_an_answered_or_carried_one_does_not() {
        let none = hs(0, 0);
        assert!(
            failed((true, 0x02), 0x14, &none, false),
            "RST+ACK to the SYN"
        );
        assert!(!failed((true, 0x02), 0, &none, false), "still waiting");
        assert!(failed((true, 0x02), 0, &none, true), "never answered");
        assert!(!failed((true, 0x12), 0x12, &hs(5, 0), true), "answered");
        assert!(
            !failed((true, 0x12), 0, &none, true),
            "the client went on: the answer took another path"
        );
        assert!(
            !failed((false, 0x10), 0x14, &none, true),
            "no SYN seen: unknown"
        );
    }

    #[test]
    fn hooks_tell_what_was_sent_from_here() {
        let veth = |i: u32| i == 7;
        assert!(sent_here(3 << 1 | HOOK_EGRESS, &veth), "leaving eth0");
        assert!(!sent_here(3 << 1, &veth), "entering eth0");
        assert!(sent_here(7 << 1, &veth), "entering a veth from its pod");
        assert!(
            sent_here(7 << 1 | HOOK_EGRESS, &veth),
            "the node's own packet, first seen leaving into the pod"
        );
        assert!(!sent_here(0, &veth));
    }

    #[test]
    fn samples_fold_each_new_one_and_ignore_a_reread() {
        let mut s = Samples::default();
        let v = |n: u32, last: u32| FlowValue {
            srtt_samples: n,
            srtt_last_us: last,
            ..FlowValue::default()
        };
        s.observe(&v(1, 500), false, true);
        s.observe(&v(1, 500), true, true);
        assert_eq!(s.srtt, Some(Srtt::one(500)));
        s.observe(&v(2, 300), true, true);
        s.observe(&v(3, 900), true, false);
        assert_eq!(
            s.srtt,
            Some(Srtt {
                min_us: 300,
                max_us: 900,
                last_us: 900
            })
        );
        // A fresh entry counts from zero.
        s.observe(&v(1, 700), false, true);
        assert_eq!(s.srtt.unwrap().last_us, 700);
    }
}
