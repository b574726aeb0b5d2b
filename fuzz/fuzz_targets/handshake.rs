//! Fuzzes the server side of the handshake: arbitrary Initial payloads (as the
//! first Noise message, or raw), then arbitrary follow-up handshake messages.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use surelink_proto::wire::{Frame, Header, PacketKind};
use surelink_proto::{Config, DatagramEvent, Endpoint};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let c_addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let Ok(mut sep) = Endpoint::new(Config::default(), 2, true) else { return };
    let mut parts = data.split(|&b| b == 0xff);
    let first = parts.next().unwrap_or(&[]);
    let mut initial = Vec::new();
    Header { kind: PacketKind::Initial, flags: 0, dcid: 7, pn: 0 }.encode(&mut initial);
    Frame::Handshake(first).encode(&mut initial);
    if initial.len() < 1200 {
        Frame::Padding(1200 - initial.len()).encode(&mut initial);
    }
    let mut buf = Vec::new();
    let mut server = match sep.handle(now, c_addr, &initial) {
        DatagramEvent::New(_, c) => c,
        _ => return,
    };
    server.handle_datagram(now, c_addr, &initial);
    while server.poll_transmit(now, &mut buf).is_some() {}
    let cid = server.local_cid();
    for (i, m) in parts.enumerate() {
        let t = now + Duration::from_millis(i as u64);
        let mut d = Vec::new();
        let kind = if i % 2 == 0 { PacketKind::Handshake } else { PacketKind::Initial };
        let dcid = if kind == PacketKind::Initial { 7 } else { cid };
        Header { kind, flags: 0, dcid, pn: i as u64 + 1 }.encode(&mut d);
        Frame::Handshake(m).encode(&mut d);
        let _ = sep.handle(t, c_addr, &d);
        server.handle_datagram(t, c_addr, &d);
        server.handle_timeout(t);
        while server.poll_transmit(t, &mut buf).is_some() {}
    }
});
