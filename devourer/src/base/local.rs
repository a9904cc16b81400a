//! This host: its name, and which addresses are its own (the interfaces' addresses, re-read
//! periodically, plus configured networks: `--local-net`, the only source offline), which
//! decides the [`Role`] this host plays in a DNS or HTTP exchange.

use std::{collections::HashSet, io, net::IpAddr};

use ipnet::IpNet;

/// Which side of an exchange (DNS, HTTP) this host is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// This host answered: the server (packetlog CQ/CR).
    Server,
    /// This host asked (packetlog SQ/SR).
    Client,
    /// Neither address is this host's.
    Transit,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
            Self::Transit => "transit",
        }
    }

    /// packetlog's kind of a query (request) or response seen in this role.
    pub fn kind(self, response: bool) -> &'static str {
        match (self, response) {
            (Self::Server, false) => "CQ",
            (Self::Server, true) => "CR",
            (Self::Client, false) => "SQ",
            (Self::Client, true) => "SR",
            (Self::Transit, false) => "Q",
            (Self::Transit, true) => "R",
        }
    }
}

/// This host's name (records' `agent` when no name is configured).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let ret = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if ret != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[derive(Clone, Debug, Default)]
pub struct LocalAddrs {
    nets: Vec<IpNet>,
    addrs: HashSet<IpAddr>,
    /// The interfaces' addresses were read (live).
    interfaces_read: bool,
}

impl LocalAddrs {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self {
            nets,
            addrs: HashSet::new(),
            interfaces_read: false,
        }
    }

    /// Replaces the interface addresses with the ones the host has now.
    pub fn refresh_from_interfaces(&mut self) -> io::Result<()> {
        self.addrs = interface_addrs()?;
        self.interfaces_read = true;
        Ok(())
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.is_own(ip) || self.nets.iter().any(|n| n.contains(ip))
    }

    /// Live: the interfaces' addresses were read (offline, only `--local-net` is known).
    pub fn is_live(&self) -> bool {
        self.interfaces_read
    }

    /// One of this host's own addresses: live, an interface's (not merely one inside
    /// `--local-net`, whose ranges hold pods and other machines too); offline, where no
    /// interface is read, `--local-net` is all there is to say which are the host's.
    pub fn is_own(&self, ip: &IpAddr) -> bool {
        if self.interfaces_read {
            self.addrs.contains(ip)
        } else {
            self.nets.iter().any(|n| n.contains(ip))
        }
    }

    /// This host's side of an exchange between `client` and `server` (DNS, HTTP).
    pub fn role(&self, client: &IpAddr, server: &IpAddr) -> Role {
        if self.contains(server) {
            Role::Server
        } else if self.contains(client) {
            Role::Client
        } else {
            Role::Transit
        }
    }
}

/// Every address configured on an interface of this network namespace.
pub fn interface_addrs() -> io::Result<HashSet<IpAddr>> {
    let mut out = HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr of the family it states.
            unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.insert(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.insert(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_local_and_configured_networks_count() {
        let mut l = LocalAddrs::new(vec!["192.0.2.0/24".parse().unwrap()]);
        l.refresh_from_interfaces().unwrap();
        assert!(l.contains(&"127.0.0.1".parse().unwrap()));
        assert!(l.contains(&"192.0.2.77".parse().unwrap()));
        assert!(!l.contains(&"198.51.100.1".parse().unwrap()));
    }
}
