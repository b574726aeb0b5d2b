//! A burst of connects into a server whose socket buffer holds only a few
//! Initials, on the simulated network and virtual time: every connection
//! opened at once must end connected, however many Initials the full buffer
//! drops.
//!
//! A dropped Initial is repeated by the client's handshake timer (the probe
//! timeout, doubling up to `max_pto`). Clients that started in the same
//! instant used to repeat in the same instant too, round after round, so each
//! round only a buffer's worth of them got in and the others ran out of
//! connect timeout (10 s, about a dozen rounds). Each repetition now waits a
//! random 0–50 % longer, which spreads a round over time the server drains
//! its buffer in.

use std::time::Duration;

use surelink::sim::SimNetwork;
use surelink::{Connection, Endpoint, EndpointConfig, ProtocolConfig};
use tokio::task::JoinSet;

/// Client hosts, each opening [`PER_CLIENT`] connections at once.
const CLIENTS: u16 = 8;
const PER_CLIENT: usize = 50;
/// The server's receive buffer: room for 20 padded Initials (1,200 bytes).
const SERVER_BUFFER: usize = 24_000;
/// Bound on the test in virtual time.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn every_connection_of_a_burst_into_a_small_server_buffer_connects() {
    tokio::time::timeout(LIMIT, async {
        let network = SimNetwork::new(5);
        network.set_default_link("delay=5ms".parse().unwrap());
        let total = usize::from(CLIENTS) * PER_CLIENT;
        let server_addr = "10.0.0.1:4433".parse().unwrap();
        // One source per client host brings many handshakes: lift the
        // per-source budget, as `surelink perf server` does. The retry
        // threshold stays at its default, so most handshakes go through a
        // Retry round trip too.
        let budget = u32::try_from(total).unwrap();
        let protocol = ProtocolConfig {
            max_connections: total,
            source_handshake_burst: budget,
            source_handshake_rate: budget,
            ..ProtocolConfig::default()
        };
        let mut server_config = EndpointConfig::default().with_protocol(protocol);
        server_config.socket_buffer_size = SERVER_BUFFER;
        let server = Endpoint::simulated(&network, server_addr, server_config, true, 1).unwrap();
        let accepting = tokio::spawn(async move {
            let mut accepted = Vec::with_capacity(total);
            while accepted.len() < total {
                accepted.push(server.accept().await.expect("the server accepts"));
            }
            (server, accepted)
        });

        let mut connects = JoinSet::new();
        let mut clients = Vec::new();
        for host in 0..CLIENTS {
            let addr = format!("10.0.1.{}:0", host + 1).parse().unwrap();
            let client = Endpoint::simulated(
                &network,
                addr,
                EndpointConfig::default(),
                false,
                100 + u64::from(host),
            )
            .unwrap();
            for _ in 0..PER_CLIENT {
                let client = client.clone();
                connects.spawn(async move { client.connect(server_addr).await });
            }
            clients.push(client);
        }
        let mut connected: Vec<Connection> = Vec::with_capacity(total);
        let mut failed = Vec::new();
        while let Some(joined) = connects.join_next().await {
            match joined.expect("a connect task") {
                Ok(conn) => connected.push(conn),
                Err(e) => failed.push(e.to_string()),
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {total} connects failed, the first: {}",
            failed.len(),
            failed[0]
        );
        let (_server, accepted) = accepting.await.unwrap();
        assert_eq!(accepted.len(), total);
        let overflowed = network.stats().overflowed;
        assert!(
            overflowed > 0,
            "the burst must overflow the server's buffer for the test to mean anything"
        );
        drop((connected, accepted, clients));
    })
    .await
    .expect("within the time limit");
}
