//! A capture file (pcap or pcapng): every packet read, framed for the program, and run
//! through the replay clock, without a panic, an overflow or unbounded work.
#![no_main]

use devourer::drivers::replay::{
    pcapfile::{PcapFile, to_ethernet},
    scan_boundary,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut cap) = PcapFile::from_bytes(data.to_vec()) else {
        return;
    };
    let mut frame = Vec::new();
    let mut due: Option<u64> = None;
    for _ in 0..10_000 {
        let Ok(Some(pkt)) = cap.next_packet() else {
            return;
        };
        let linktype = cap.interfaces[pkt.iface].linktype;
        if to_ethernet(linktype, &pkt.data, &mut frame).is_ok() {
            assert!(frame.len() >= 14);
        }
        let d = *due.get_or_insert(pkt.ts_ns.saturating_add(1_000_000_000));
        if let Some((boundary, next)) = scan_boundary(d, pkt.ts_ns, 1_000_000_000) {
            assert!(boundary <= pkt.ts_ns && next >= boundary);
            due = Some(next);
        }
    }
});
