//! `tcx_drop IFACE ingress|egress first|last`: attaches a program that drops every packet to
//! IFACE's TCX chain, at its head or its tail, prints `attached` and holds the link until
//! killed. The tests use it to check where devourer sits in the chain and that it hands every
//! packet on. Raw bpf(2): two instructions need no object file.

use std::io::Write;

const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_F_BEFORE: u32 = 1 << 3;
const BPF_F_AFTER: u32 = 1 << 4;
const TC_ACT_SHOT: i32 = 2;

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> std::io::Result<i32> {
    // SAFETY: a zero-filled attribute union of the size passed, valid for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fd as i32)
    }
}

fn put32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, iface, hook, order] = &args[..] else {
        eprintln!("usage: tcx_drop IFACE ingress|egress first|last");
        std::process::exit(2);
    };
    // r0 = TC_ACT_SHOT; exit
    let mut insns = [0u8; 16];
    insns[0] = 0xb7;
    insns[4..8].copy_from_slice(&TC_ACT_SHOT.to_ne_bytes());
    insns[8] = 0x95;
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    put32(&mut attr, 0, BPF_PROG_TYPE_SCHED_CLS);
    put32(&mut attr, 4, 2);
    put64(&mut attr, 8, insns.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..56].copy_from_slice(b"drop_all");
    let prog = bpf(BPF_PROG_LOAD, &mut attr).expect("loading the drop program");
    let name = std::ffi::CString::new(iface.as_str()).unwrap();
    // SAFETY: a NUL-terminated interface name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {iface}");
    let mut attr = [0u8; 128];
    put32(&mut attr, 0, prog as u32);
    put32(&mut attr, 4, ifindex);
    put32(
        &mut attr,
        8,
        if hook == "egress" {
            BPF_TCX_EGRESS
        } else {
            BPF_TCX_INGRESS
        },
    );
    put32(
        &mut attr,
        12,
        if order == "first" {
            BPF_F_BEFORE
        } else {
            BPF_F_AFTER
        },
    );
    let _link = bpf(BPF_LINK_CREATE, &mut attr).expect("attaching to the TCX chain");
    println!("attached");
    std::io::stdout().flush().unwrap();
    loop {
        // SAFETY: waits for a signal; the link goes with the process.
        unsafe { libc::pause() };
    }
}
