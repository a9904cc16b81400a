//! Conntrack over netlink (ctnetlink): the kernel's record of a connection, its original and
//! reply tuples, looked up by one of them. Where they are not mirror images the connection was
//! translated (SNAT, masquerade, DNAT). The pinned aya cannot relocate the conntrack kfuncs, so
//! the agent asks from userspace: lookups by tuple in batches that fit its receive buffer,
//! filtered walks one at a time.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
/// The type of a message carrying an entry (the answer to a GET or one of a dump's).
const CT_ENTRY: u16 = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_FILTER: u16 = 25;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
/// [`Conntrack::find`] compares the source address.
pub const FILTER_IP_SRC: u32 = 1 << 0;
/// ... the destination address.
pub const FILTER_IP_DST: u32 = 1 << 1;
/// ... the protocol.
pub const FILTER_PROTO_NUM: u32 = 1 << 3;

/// Protocols whose conntrack tuple carries ports (a lookup by tuple is one hash probe).
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 33 | 132 | 136)
}

/// One direction of a connection as conntrack keys it. `src_port`/`dst_port` are 0 for
/// protocols without ports (ICMP's identifier is not part of the agent's flows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Tuple {
    /// The same tuple seen from the other end.
    pub fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// A conntrack entry: the tuple of the connection's first packet and the one its replies carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("conntrack netlink: {0}")]
    Io(#[from] io::Error),
    #[error("conntrack netlink: malformed answer ({0})")]
    Malformed(&'static str),
}

/// A ctnetlink socket for lookups, with a receive timeout so no answer blocks the agent.
pub struct Conntrack {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    /// [`Conntrack::get_many`]'s receive slots (allocated at its first call).
    slots: Vec<u8>,
    /// Requests one write of [`Conntrack::get_many`] carries at most.
    per_write: usize,
}

/// Receive buffer asked for (a lookup's answers are all queued before its write returns).
const RCVBUF: usize = 4 << 20;
/// Receive-buffer room one answer may take (an entry's answer is built in a page-sized buffer).
const ANSWER_ROOM: usize = 8192;
/// Answers one `recvmmsg` reads at most, each into a slot of `ANSWER_ROOM` bytes.
const SLOTS: usize = 32;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;

impl Conntrack {
    /// Opens the socket (needs CAP_NET_ADMIN to be answered). `timeout` bounds every wait.
    pub fn open(timeout: Duration) -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros().max(1) as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Errors without the request echoed, and room for a batch of answers (the forced size
        // needs CAP_NET_ADMIN, which answers need anyway; else what rmem_max allows). Both
        // optional: a smaller buffer makes smaller batches.
        let _ = set_int(&fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
        if set_int(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            RCVBUF as libc::c_int,
        )
        .is_err()
        {
            let _ = set_int(
                &fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                RCVBUF as libc::c_int,
            );
        }
        let rcvbuf = get_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        Ok(Self {
            fd,
            seq: fastrand::u32(..),
            buf: vec![0; 64 * 1024],
            slots: Vec::new(),
            per_write: (rcvbuf.max(0) as usize / ANSWER_ROOM).clamp(1, 256),
        })
    }

    /// The entry of each tuple in `probes`, in order (`None`: conntrack has none under that
    /// tuple), asked in writes of many requests each and their answers read many at a time:
    /// a few system calls for hundreds of lookups instead of three or four for each.
    pub fn get_many(&mut self, probes: &[Tuple]) -> Result<Vec<Option<Entry>>, Error> {
        let mut out = vec![None; probes.len()];
        if self.slots.is_empty() && !probes.is_empty() {
            self.slots = vec![0; SLOTS * ANSWER_ROOM];
        }
        let per_write = self.per_write;
        for (chunk, answers) in probes.chunks(per_write).zip(out.chunks_mut(per_write)) {
            let base = self.seq.wrapping_add(1);
            let mut bytes = Vec::with_capacity(chunk.len() * 96);
            for (k, t) in chunk.iter().enumerate() {
                // No acknowledgement asked: each request gets one answer, the entry or an error.
                let mut msg = Request::new(IPCTNL_MSG_CT_GET, NLM_F_REQUEST, t.src);
                msg.tuple(CTA_TUPLE_ORIG, t, true);
                bytes.extend_from_slice(msg.finish(base.wrapping_add(k as u32)));
            }
            self.seq = base.wrapping_add(chunk.len() as u32 - 1);
            self.send(&bytes)?;
            let mut answered = vec![false; chunk.len()];
            let mut open = chunk.len();
            while open > 0 {
                for datagram in self.receive_many()? {
                    for m in messages(datagram) {
                        let (kind, mseq, body) = m?;
                        let k = mseq.wrapping_sub(base) as usize;
                        // Answers to an earlier call that timed out.
                        if k >= chunk.len() || answered[k] {
                            continue;
                        }
                        match kind {
                            NLMSG_ERROR => match error_code(body)? {
                                0 => continue,
                                c if c == -libc::ENOENT => {}
                                c => return Err(io::Error::from_raw_os_error(-c).into()),
                            },
                            CT_ENTRY => {
                                answers[k] = parse_entry(body)?;
                            }
                            _ => continue,
                        }
                        answered[k] = true;
                        open -= 1;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Reads the answers queued (waiting for the first only), each datagram into its slot.
    fn receive_many(&mut self) -> Result<Vec<&[u8]>, Error> {
        let mut iov: Vec<libc::iovec> = self
            .slots
            .chunks_exact_mut(ANSWER_ROOM)
            .map(|s| libc::iovec {
                iov_base: s.as_mut_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        // SAFETY: an all-zero mmsghdr is valid; each gets its own iovec below.
        let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; iov.len()];
        for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        let n = loop {
            // SAFETY: hdrs and the iovecs they point at (into self.slots) are valid for the
            // lengths given and outlive the call.
            let n = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    hdrs.len() as libc::c_uint,
                    // glibc types the flags `int`, musl `unsigned int`.
                    libc::MSG_WAITFORONE as _,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        };
        let mut out = Vec::with_capacity(n);
        for (h, slot) in hdrs[..n].iter().zip(self.slots.chunks_exact(ANSWER_ROOM)) {
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                return Err(Error::Malformed("answer larger than its buffer"));
            }
            out.push(&slot[..(h.msg_len as usize).min(ANSWER_ROOM)]);
        }
        Ok(out)
    }

    fn send(&self, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: an all-zero sockaddr_nl is the kernel's address once the family is set.
        let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: bytes and to are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Entries whose original tuple (or, with `reply_side`, reply tuple) matches `t` in the
    /// fields `flags` names (`FILTER_*`) and that `keep` keeps: at most `max` of them, and
    /// whether that was all. The kernel filters (Linux 5.8+) but still walks its whole table,
    /// so use sparingly.
    pub fn find(
        &mut self,
        t: &Tuple,
        (reply_side, flags): (bool, u32),
        max: usize,
        keep: &dyn Fn(&Entry) -> bool,
    ) -> Result<(Vec<Entry>, bool), Error> {
        let mut msg = Request::new(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, t.src);
        let (which, flag_attr) = if reply_side {
            (CTA_TUPLE_REPLY, CTA_FILTER_REPLY_FLAGS)
        } else {
            (CTA_TUPLE_ORIG, CTA_FILTER_ORIG_FLAGS)
        };
        msg.tuple(which, t, has_ports(t.proto));
        let filter = msg.begin(CTA_FILTER | NLA_F_NESTED);
        msg.attr(flag_attr, &flags.to_ne_bytes());
        msg.end(filter);
        let (mut out, mut all) = (Vec::new(), true);
        self.dump(msg, &mut |e| {
            if keep(&e) {
                if out.len() < max {
                    out.push(e);
                } else {
                    all = false;
                }
            }
            true
        })?;
        Ok((out, all))
    }

    /// Sends one dump request and reads its answers to the end of the dump, passing each entry
    /// to `each`. Answers to earlier requests that timed out are skipped by sequence number.
    fn dump(&mut self, mut msg: Request, each: &mut dyn FnMut(Entry) -> bool) -> Result<(), Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.send(msg.finish(seq))?;
        loop {
            // SAFETY: buf is valid and writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            for m in messages(&self.buf[..n as usize]) {
                let (kind, mseq, body) = m?;
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => match error_code(body)? {
                        0 => continue,
                        code => return Err(io::Error::from_raw_os_error(-code).into()),
                    },
                    NLMSG_DONE => return Ok(()),
                    CT_ENTRY => {
                        if let Some(e) = parse_entry(body)? {
                            each(e);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The netlink messages of one datagram: (type, sequence number, body).
pub(super) fn messages(mut rest: &[u8]) -> impl Iterator<Item = Result<(u16, u32, &[u8]), Error>> {
    std::iter::from_fn(move || {
        if rest.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4")) as usize;
        if len < 16 || len > rest.len() {
            rest = &[];
            return Some(Err(Error::Malformed("message length")));
        }
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4"));
        let body = &rest[16..len];
        rest = &rest[align(len).min(rest.len())..];
        Some(Ok((kind, seq, body)))
    })
}

/// The (negative) error number of an `NLMSG_ERROR` body, 0 for an acknowledgement.
fn error_code(body: &[u8]) -> Result<i32, Error> {
    body.get(..4)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4")))
        .ok_or(Error::Malformed("error message"))
}

fn set_int(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: v is a valid c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_int(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writing and len holds v's size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink request under construction: header, `nfgenmsg`, attributes.
struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(msg: u16, flags: u16, family_of: IpAddr) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | msg).to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        let family = match family_of {
            IpAddr::V4(_) => libc::AF_INET,
            IpAddr::V6(_) => libc::AF_INET6,
        };
        // nfgenmsg: family, version 0, resource id 0 (big-endian).
        buf.extend_from_slice(&[family as u8, 0, 0, 0]);
        Self { buf }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align(self.buf.len()), 0);
    }

    fn begin(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// A tuple attribute; ports only when asked (a dump filter leaves them out).
    fn tuple(&mut self, which: u16, t: &Tuple, ports: bool) {
        let outer = self.begin(which | NLA_F_NESTED);
        let ip = self.begin(CTA_TUPLE_IP | NLA_F_NESTED);
        match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.attr(CTA_IP_V4_SRC, &s.octets());
                self.attr(CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                self.attr(CTA_IP_V6_SRC, &v6(s).octets());
                self.attr(CTA_IP_V6_DST, &v6(d).octets());
            }
        }
        self.end(ip);
        let proto = self.begin(CTA_TUPLE_PROTO | NLA_F_NESTED);
        self.attr(CTA_PROTO_NUM, &[t.proto]);
        if ports {
            self.attr(CTA_PROTO_SRC_PORT, &t.src_port.to_be_bytes());
            self.attr(CTA_PROTO_DST_PORT, &t.dst_port.to_be_bytes());
        }
        self.end(proto);
        self.end(outer);
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Netlink attributes in `b`: (type without flags, payload). Stops at the first malformed one.
pub(super) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            b = &[];
            return None;
        }
        let payload = &b[4..len];
        b = &b[align(len).min(b.len())..];
        Some((kind, payload))
    })
}

/// An entry from a `CT_NEW` message body (`nfgenmsg` then attributes).
fn parse_entry(body: &[u8]) -> Result<Option<Entry>, Error> {
    let Some(attrs_bytes) = body.get(4..) else {
        return Err(Error::Malformed("short conntrack message"));
    };
    let (mut orig, mut reply) = (None, None);
    for (kind, payload) in attrs(attrs_bytes) {
        match kind {
            CTA_TUPLE_ORIG => orig = parse_tuple(payload),
            CTA_TUPLE_REPLY => reply = parse_tuple(payload),
            _ => {}
        }
    }
    Ok(match (orig, reply) {
        (Some(orig), Some(reply)) => Some(Entry { orig, reply }),
        _ => None,
    })
}

fn parse_tuple(b: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto) = (None, None, None);
    let (mut sp, mut dp) = (0u16, 0u16);
    for (kind, payload) in attrs(b) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, p) in attrs(payload) {
                    let addr = match p.len() {
                        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(p).ok()?)),
                        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(p).ok()?)),
                        _ => continue,
                    };
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(addr),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(addr),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, p) in attrs(payload) {
                    match (k, p) {
                        (CTA_PROTO_NUM, [n, ..]) => proto = Some(*n),
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => sp = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => dp = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let proto = proto?;
    if !has_ports(proto) {
        (sp, dp) = (0, 0);
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        proto,
        src_port: sp,
        dst_port: dp,
    })
}

/// A TCP tuple from text, for tests.
#[cfg(test)]
pub(crate) fn tcp(s: &str, sp: u16, d: &str, dp: u16) -> Tuple {
    Tuple {
        src: s.parse().expect("address"),
        dst: d.parse().expect("address"),
        proto: 6,
        src_port: sp,
        dst_port: dp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_tuple_parses_back_to_itself() {
        for t in [
            tcp("10.244.1.2", 40000, "192.168.77.2", 80),
            tcp("fd00::2", 1, "fd00::1", 443),
        ] {
            let mut r = Request::new(IPCTNL_MSG_CT_NEW, 0, t.src);
            r.tuple(CTA_TUPLE_ORIG, &t, true);
            r.tuple(CTA_TUPLE_REPLY, &t.reversed(), true);
            let bytes = r.finish(1).to_vec();
            let e = parse_entry(&bytes[16..]).unwrap().unwrap();
            assert_eq!(e.orig, t);
            assert_eq!(e.reply, t.reversed());
        }
    }

    #[test]
    fn batched_lookups_answer_every_probe_in_order_across_writes() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: ctnetlink answers only CAP_NET_ADMIN (run as root)");
            return;
        }
        let mut ct = Conntrack::open(Duration::from_secs(2)).expect("ctnetlink socket");
        // More probes than one write carries, for connections no one has (TEST-NET-3).
        let probes: Vec<Tuple> = (0..ct.per_write as u16 * 2 + 7)
            .map(|i| tcp("203.0.113.1", 1000 + i, "203.0.113.2", 80))
            .collect();
        let found = ct.get_many(&probes).expect("batched lookup");
        assert_eq!(found.len(), probes.len());
        assert!(found.iter().all(Option::is_none));
        // The socket stays in step: a lookup and a filtered walk after the batch get their own
        // answers.
        assert_eq!(ct.get_many(&probes[..1]).expect("lookup"), vec![None]);
        let (found, all) = ct
            .find(
                &probes[0],
                (false, FILTER_IP_SRC | FILTER_IP_DST),
                8,
                &|_| true,
            )
            .expect("walk");
        assert!(found.is_empty() && all);
        assert_eq!(ct.get_many(&[]).expect("nothing asked"), Vec::new());
    }

    #[test]
    fn truncated_or_hostile_attributes_do_not_panic() {
        let t = tcp("10.0.0.1", 1, "10.0.0.2", 2);
        let mut r = Request::new(IPCTNL_MSG_CT_NEW, 0, t.src);
        r.tuple(CTA_TUPLE_ORIG, &t, true);
        r.tuple(CTA_TUPLE_REPLY, &t, true);
        let bytes = r.finish(1).to_vec();
        for cut in 16..bytes.len() {
            let _ = parse_entry(&bytes[16..cut]);
        }
        let mut bad = bytes.clone();
        bad[20] = 0xff; // an attribute longer than the message
        let _ = parse_entry(&bad[16..]);
        assert!(parse_entry(&[]).is_err());
    }
}
