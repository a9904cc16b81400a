//! The tunnels a flow may carry, told by its IP protocol or a well-known UDP port: the kernel
//! program adds their inner headers to each GSO segment, records mark them `tunnel`.

/// An encapsulation whose inner packets a tunnel device shows again as flows of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// IP in IP: IPv4 (protocol 4) or IPv6 (41) in IP.
    Ipip,
    /// GRE (protocol 47).
    Gre,
    /// WireGuard (UDP 51820).
    Wireguard,
    /// VXLAN (UDP 4789).
    Vxlan,
    /// Geneve (UDP 6081).
    Geneve,
}

pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_GRE: u8 = 47;
pub const WIREGUARD_PORT: u16 = 51820;
pub const VXLAN_PORT: u16 = 4789;
pub const GENEVE_PORT: u16 = 6081;

impl Tunnel {
    /// The tunnel a flow of `proto` between these ports carries (a UDP port at either end).
    #[inline(always)]
    pub fn of(proto: u8, src_port: u16, dst_port: u16) -> Option<Self> {
        const UDP: u8 = 17;
        let port = |p: u16| src_port == p || dst_port == p;
        match proto {
            IPPROTO_IPIP | IPPROTO_IPV6 => Some(Self::Ipip),
            IPPROTO_GRE => Some(Self::Gre),
            UDP if port(WIREGUARD_PORT) => Some(Self::Wireguard),
            UDP if port(VXLAN_PORT) => Some(Self::Vxlan),
            UDP if port(GENEVE_PORT) => Some(Self::Geneve),
            _ => None,
        }
    }

    /// Its name in records.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipip => "ipip",
            Self::Gre => "gre",
            Self::Wireguard => "wireguard",
            Self::Vxlan => "vxlan",
            Self::Geneve => "geneve",
        }
    }
}
