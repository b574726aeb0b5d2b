//! Fuzzes a live server connection and its endpoint with arbitrary datagrams.
//!
//! The input is split into datagrams at 0xFF 0xFF markers; datagrams that begin
//! with the byte 0xAA get the server connection's real header prepended, so the
//! fuzzer reaches the frame handlers. Must never panic.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use surelink_proto::wire::{Header, PacketKind};
use surelink_proto::{Config, DatagramEvent, Endpoint};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let c_addr = "127.0.0.1:1".parse().unwrap();
    let s_addr = "127.0.0.1:2".parse().unwrap();
    let mut cep = Endpoint::new(Config::default(), 1, false).unwrap();
    let mut sep = Endpoint::new(Config::default(), 2, true).unwrap();
    let (_, mut client) = cep.connect(now, s_addr);
    let mut buf = Vec::new();
    let t = client.poll_transmit(now, &mut buf).unwrap();
    let DatagramEvent::New(_, mut server) = sep.handle(now, c_addr, &buf[..t.size]) else {
        return;
    };
    server.handle_datagram(now, c_addr, &buf[..t.size]);
    let cid = server.local_cid();
    for (i, chunk) in data.split(|&b| b == 0xff).enumerate() {
        let t = now + Duration::from_millis(i as u64);
        let dgram = if chunk.first() == Some(&0xaa) {
            let mut d = Vec::new();
            Header { kind: PacketKind::Data, dcid: cid, pn: i as u64 + 10 }.encode(&mut d);
            d.extend_from_slice(&chunk[1..]);
            d
        } else {
            chunk.to_vec()
        };
        let _ = sep.handle(t, c_addr, &dgram);
        server.handle_datagram(t, c_addr, &dgram);
        server.handle_timeout(t);
        while server.poll_transmit(t, &mut buf).is_some() {}
        while server.recv().is_some() {}
    }
});
