//! Endpoints with several driver tasks (`EndpointConfig::drivers`), over real
//! sockets on 127.0.0.1: connections spread over the drivers of both sides
//! all deliver, and a connection whose datagrams the kernel hands to
//! another driver's socket (every answer to a client endpoint lands on one
//! of its sockets, whichever driver its connection lives on; a second path
//! comes from another address) keeps working, through a cut of its primary
//! path. A port someone holds is refused as with one driver. Every wait is
//! bounded; nothing asserts on timing.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use surelink::impair::{ImpairConfig, Impairer, LinkConfig};
use surelink::{
    BindError, Bytes, Connection, ConnectionEvent, Endpoint, EndpointConfig, PathId, PathMode,
};

/// Upper bound on any single test's run time (debug builds on a small machine).
const TEST_LIMIT: Duration = Duration::from_secs(120);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test did not finish in time")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn two_drivers() -> EndpointConfig {
    EndpointConfig::default().with_drivers(2)
}

/// Message `index` of connection `conn`: recognisable, cheap to check.
fn message(conn: usize, index: usize) -> Bytes {
    Bytes::from(format!("connection {conn} message {index} ").repeat(1 + index % 40))
}

/// Sends `count` messages on `conn` and checks that the server echoes each
/// back, in order; then closes gracefully.
async fn echo_round_trip(conn: Connection, id: usize, count: usize) {
    for i in 0..count {
        conn.send(message(id, i)).await.unwrap();
    }
    for i in 0..count {
        let echoed = conn.recv().await.unwrap().expect("an echo");
        assert_eq!(echoed, message(id, i), "connection {id}, message {i}");
    }
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_two_drivers_on_each_side_all_deliver() {
    bounded(async {
        let server = Endpoint::bind(loopback(), two_drivers()).unwrap();
        assert_eq!(server.drivers(), 2);
        let addr = server.local_addr();
        let echo = tokio::spawn({
            let server = server.clone();
            async move {
                while let Some(conn) = server.accept().await {
                    tokio::spawn(async move {
                        while let Ok(Some(m)) = conn.recv().await {
                            if conn.send(m).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        // Three client endpoints (three source ports for the kernel to
        // spread over the server's drivers), four connections each, taken
        // by each endpoint's two drivers in turn.
        let clients: Vec<Endpoint> = (0..3)
            .map(|_| Endpoint::client_with_config(loopback(), two_drivers()).unwrap())
            .collect();
        let mut transfers = Vec::new();
        for (c, client) in clients.iter().enumerate() {
            assert_eq!(client.drivers(), 2);
            for k in 0..4 {
                let conn = client.connect(addr).await.unwrap();
                transfers.push(tokio::spawn(echo_round_trip(conn, c * 4 + k, 200)));
            }
        }
        for t in transfers {
            t.await.unwrap();
        }
        let stats = server.stats();
        assert_eq!(stats.protocol.accepted, 12, "{stats:?}");
        for client in &clients {
            // Every answer comes from the server's one address to the
            // client's one address, so it lands on one of the client's two
            // sockets: the connections of the other driver were served
            // through a hand-over.
            let stats = client.stats();
            assert!(stats.datagrams_handed_over > 0, "{stats:?}");
            client.wait_idle().await;
        }
        drop(server);
        echo.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_path_takes_over_for_connections_on_either_driver() {
    bounded(async {
        let mut config = two_drivers();
        config.protocol.path_mode = PathMode::Backup;
        let server = Endpoint::bind_many(&[loopback(), loopback()], config.clone()).unwrap();
        let [a, b] = server.local_addrs()[..] else {
            panic!("two addresses")
        };
        let link: LinkConfig = "delay=2ms".parse().unwrap();
        let primary =
            Impairer::start(ImpairConfig::new(loopback(), a).with_both(link.clone())).unwrap();
        let backup = Impairer::start(ImpairConfig::new(loopback(), b).with_both(link)).unwrap();
        let receiver = tokio::spawn({
            let server = server.clone();
            async move {
                let mut received = Vec::new();
                for _ in 0..2 {
                    let conn = server.accept().await.expect("a connection");
                    received.push(tokio::spawn(async move {
                        let mut got = Vec::new();
                        while let Some(m) = conn.recv().await.expect("recv") {
                            got.push(m);
                        }
                        got
                    }));
                }
                let mut outputs = Vec::new();
                for r in received {
                    outputs.push(r.await.unwrap());
                }
                outputs
            }
        });

        // Two connections from one client endpoint with two drivers: one on
        // each driver, so whichever socket the kernel gives the answers
        // to, one connection is served through a hand-over.
        let client = Endpoint::client_with_config(loopback(), config).unwrap();
        let mut conns = Vec::new();
        for _ in 0..2 {
            let conn = client.connect(primary.local_addr()).await.unwrap();
            conn.add_path(backup.local_addr()).expect("path added");
            conns.push(conn);
        }
        // Both connections send; the primary is cut a third of the way
        // through and stays cut.
        for i in 0..300 {
            if i == 100 {
                primary.set_cut(true);
            }
            for (id, conn) in conns.iter().enumerate() {
                conn.send(message(id, i)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for conn in &conns {
            let events = {
                let mut seen = Vec::new();
                while conn.unacked_bytes() > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                while let Ok(Some(e)) =
                    tokio::time::timeout(Duration::from_millis(1), conn.next_event()).await
                {
                    seen.push(e);
                }
                seen
            };
            assert!(
                events.contains(&ConnectionEvent::FailedOver {
                    from: PathId(0),
                    to: PathId(1),
                }),
                "{events:?}"
            );
            conn.close().await.unwrap();
        }
        let outputs = receiver.await.unwrap();
        let mut ids = Vec::new();
        for got in outputs {
            assert_eq!(got.len(), 300);
            let id = (0..2)
                .find(|&id| got[0] == message(id, 0))
                .expect("a known connection");
            for (i, m) in got.iter().enumerate() {
                assert_eq!(*m, message(id, i), "connection {id}, message {i}");
            }
            ids.push(id);
        }
        ids.sort_unstable();
        assert_eq!(ids, [0, 1]);
        let stats = client.stats();
        assert!(stats.datagrams_handed_over > 0, "{stats:?}");
    })
    .await;
}

#[tokio::test]
async fn a_port_in_use_is_refused_with_several_drivers_too() {
    let in_use = |result: Result<Endpoint, BindError>| match result {
        Err(BindError::Io { source, .. }) => source.kind() == std::io::ErrorKind::AddrInUse,
        _ => false,
    };
    // Held by an endpoint with two drivers (its sockets share the port) …
    let first = Endpoint::bind(loopback(), two_drivers()).unwrap();
    assert_eq!(first.drivers(), 2);
    assert!(in_use(Endpoint::bind(first.local_addr(), two_drivers())));
    assert!(in_use(Endpoint::bind(
        first.local_addr(),
        EndpointConfig::default().with_drivers(1)
    )));
    // … or by a plain socket.
    let plain = std::net::UdpSocket::bind(loopback()).unwrap();
    assert!(in_use(Endpoint::bind(
        plain.local_addr().unwrap(),
        two_drivers()
    )));
    // Free again once the endpoint is gone (its drivers have nothing to drain).
    let addr = first.local_addr();
    drop(first);
    let mut rebound = None;
    for _ in 0..200 {
        match Endpoint::bind(addr, two_drivers()) {
            Ok(endpoint) => {
                rebound = Some(endpoint);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert_eq!(rebound.expect("the port is free again").drivers(), 2);
}
