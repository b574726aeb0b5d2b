//! Fuzzes a live plaintext-mode server connection with arbitrary datagrams.
//!
//! The input is split into datagrams at 0xFF bytes; datagrams that begin with
//! 0xAA get the connection's real Data header prepended, so the fuzzer reaches
//! every frame handler (plaintext mode: no authentication in the way).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use surelink_proto::wire::{Header, PacketKind, FLAG_PLAINTEXT};
use surelink_proto::{Config, Security};

mod common;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let config = Config { security: Security::InsecurePlaintext, ..Config::default() };
    let Some((_, mut server, c_addr, _)) = common::established(config, now) else { return };
    let cid = server.local_cid();
    let mut buf = Vec::new();
    for (i, chunk) in data.split(|&b| b == 0xff).enumerate() {
        let t = now + Duration::from_millis(i as u64);
        let dgram = if chunk.first() == Some(&0xaa) {
            let mut d = Vec::new();
            Header { kind: PacketKind::Data, flags: FLAG_PLAINTEXT, dcid: cid, pn: i as u64 + 10 }.encode(&mut d);
            d.extend_from_slice(&chunk[1..]);
            d
        } else {
            chunk.to_vec()
        };
        server.handle_datagram(t, c_addr, &dgram);
        server.handle_timeout(t);
        while server.poll_transmit(t, &mut buf).is_some() {}
        while server.recv().is_some() {}
    }
});
