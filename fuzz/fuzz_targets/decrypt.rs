//! Fuzzes packet opening on an established encrypted connection: arbitrary
//! bytes behind a valid Data header (any key phase, any packet number) must be
//! refused cleanly; nothing may panic or be delivered.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use surelink_proto::wire::{Header, PacketKind};
use surelink_proto::Config;

mod common;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let Some((_, mut server, c_addr, _)) = common::established(Config::default(), now) else { return };
    let cid = server.local_cid();
    let before = server.stats().packets_received;
    for (i, chunk) in data.chunks(64).enumerate() {
        let mut d = Vec::new();
        let flags = chunk.first().map_or(0, |b| b & 1);
        let pn = chunk.get(1).map_or(i as u64, |&b| u64::from(b) * 3 + i as u64);
        Header { kind: PacketKind::Data, flags, dcid: cid, pn }.encode(&mut d);
        d.extend_from_slice(chunk);
        server.handle_datagram(now, c_addr, &d);
    }
    assert_eq!(server.stats().packets_received, before, "a forged packet was accepted");
    assert!(server.recv().is_none());
});
