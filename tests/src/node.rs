//! A Kubernetes node in network namespaces: a bridge with two pods on veth pairs, an uplink
//! veth to an outside namespace, routing between them (optionally masquerading the pods on the
//! uplink, like a CNI's SNAT), offloads off. The agent runs in the node namespace with
//! `--all-interfaces`, where one packet crosses several attached interfaces.

use super::{Netns, sh};

pub const POD_IPS: [&str; 2] = ["10.244.1.2", "10.244.1.3"];
pub const GATEWAY: &str = "10.244.1.1";
pub const NODE_UPLINK_IP: &str = "192.168.77.1";
pub const OUTSIDE_IP: &str = "192.168.77.2";
/// The node's interfaces: the bridge, the pods' host-side veths and the uplink.
pub const BRIDGE: &str = "br0";
pub const POD_VETHS: [&str; 2] = ["vh1", "vh2"];
pub const UPLINK: &str = "up0";
/// A ClusterIP-style service address DNAT'd to a backend outside (see [`Node::service`]).
pub const SERVICE_IP: &str = "10.96.0.10";

pub struct Node {
    pub node: Netns,
    pub pods: [Netns; 2],
    pub outside: Netns,
}

const OFFLOADS_OFF: &str = "tso off gso off gro off tx off rx off";

impl Node {
    /// The topology; `masquerade`: the pods' traffic leaves the uplink with the node's
    /// address (nftables), and the outside has no route back to the pods.
    pub fn new(masquerade: bool) -> Self {
        let node = Netns::new("dvnode");
        let pods = [Netns::new("dvpod"), Netns::new("dvpod")];
        let outside = Netns::new("dvout");
        node.sh(&format!(
            "sysctl -qw net.ipv4.ip_forward=1
             ip link add {BRIDGE} type bridge stp_state 0 forward_delay 0
             ip addr add {GATEWAY}/24 dev {BRIDGE}
             ethtool -K {BRIDGE} {OFFLOADS_OFF} >/dev/null 2>&1 || true
             ip link set {BRIDGE} up"
        ));
        for (i, pod) in pods.iter().enumerate() {
            let host = POD_VETHS[i];
            sh(&format!(
                "ip link add {host} netns {n} type veth peer name eth0 netns {p}",
                n = node.name,
                p = pod.name
            ));
            node.sh(&format!(
                "ip link set {host} master {BRIDGE}
                 ethtool -K {host} {OFFLOADS_OFF} >/dev/null 2>&1 || true
                 ip link set {host} up"
            ));
            pod.sh(&format!(
                "ip addr add {ip}/24 dev eth0
                 ethtool -K eth0 {OFFLOADS_OFF} >/dev/null 2>&1 || true
                 ip link set eth0 up
                 ip route add default via {GATEWAY}",
                ip = POD_IPS[i]
            ));
        }
        sh(&format!(
            "ip link add {UPLINK} netns {n} type veth peer name eth0 netns {o}",
            n = node.name,
            o = outside.name
        ));
        node.sh(&format!(
            "ip addr add {NODE_UPLINK_IP}/24 dev {UPLINK}
             ethtool -K {UPLINK} {OFFLOADS_OFF} >/dev/null 2>&1 || true
             ip link set {UPLINK} up"
        ));
        outside.sh(&format!(
            "ip addr add {OUTSIDE_IP}/24 dev eth0
             ethtool -K eth0 {OFFLOADS_OFF} >/dev/null 2>&1 || true
             ip link set eth0 up"
        ));
        if masquerade {
            node.sh(&format!(
                "nft add table ip dvnat
                 nft 'add chain ip dvnat post {{ type nat hook postrouting priority 100; }}'
                 nft add rule ip dvnat post oifname {UPLINK} ip saddr 10.244.1.0/24 masquerade"
            ));
        } else {
            outside.sh(&format!("ip route add 10.244.1.0/24 via {NODE_UPLINK_IP}"));
        }
        Self {
            node,
            pods,
            outside,
        }
    }

    /// A ClusterIP-style service: connections from the pods to `SERVICE_IP:port` are DNAT'd
    /// to `OUTSIDE_IP:target` (nftables prerouting, as kube-proxy does; a routed backend, so
    /// the replies come back through the node and are un-DNAT'd there).
    pub fn service(&self, port: u16, target: u16) {
        self.service_at(SERVICE_IP, port, target);
    }

    /// [`Node::service`] on another address.
    pub fn service_at(&self, addr: &str, port: u16, target: u16) {
        self.service_proto(addr, "tcp", port, target);
    }

    /// [`Node::service_at`] for `proto` (`tcp` or `udp`).
    pub fn service_proto(&self, addr: &str, proto: &str, port: u16, target: u16) {
        self.node.sh(&format!(
            "nft add table ip dvsvc
             nft 'add chain ip dvsvc pre {{ type nat hook prerouting priority -100; }}'
             nft add rule ip dvsvc pre ip daddr {addr} {proto} dport {port} dnat to {OUTSIDE_IP}:{target}"
        ));
    }
}
