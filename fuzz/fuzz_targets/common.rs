//! Shared set-up for the fuzz targets: a client and a server connection that
//! completed their handshake in memory.

use std::net::SocketAddr;
use std::time::Instant;

use surelink_proto::{Config, Connection, DatagramEvent, Endpoint};

/// An established pair: (client, server, client address, server address).
pub fn established(config: Config, now: Instant) -> Option<(Connection, Connection, SocketAddr, SocketAddr)> {
    let c_addr: SocketAddr = "127.0.0.1:1".parse().ok()?;
    let s_addr: SocketAddr = "127.0.0.1:2".parse().ok()?;
    let mut cep = Endpoint::new(config.clone(), 1, false).ok()?;
    let mut sep = Endpoint::new(config, 2, true).ok()?;
    let (_, mut client) = cep.connect(now, s_addr);
    let mut server: Option<Connection> = None;
    let mut buf = Vec::new();
    for _ in 0..10 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            let d = buf[..t.size].to_vec();
            if let DatagramEvent::New(_, c) = sep.handle(now, c_addr, &d) {
                server = Some(*c);
            }
            if let Some(s) = server.as_mut() {
                s.handle_datagram(now, c_addr, &d);
            }
        }
        if let Some(s) = server.as_mut() {
            while let Some(t) = s.poll_transmit(now, &mut buf) {
                client.handle_datagram(now, s_addr, &buf[..t.size]);
            }
        }
    }
    let server = server?;
    (client.is_established() && server.is_established()).then_some((client, server, c_addr, s_addr))
}
