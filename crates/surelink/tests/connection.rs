//! Real-socket tests of the runtime over loopback: round trips, back-pressure,
//! connect timeouts, graceful close, aborts. Every wait is bounded by a timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use surelink::{
    Bytes, CloseError, ConnectError, Connection, ConnectionError, Endpoint, EndpointConfig,
    ProtocolConfig, RecvError, SendError,
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

/// Deterministic message content: recognisable per index, cheap to check.
fn message(index: usize, len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut x = (index as u32).wrapping_mul(2_654_435_761).wrapping_add(1);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    Bytes::from(v)
}

/// An endpoint configuration with protocol settings changed by `change`
/// (`ProtocolConfig` is `#[non_exhaustive]`: no struct literal outside its crate).
fn with_protocol(change: impl FnOnce(&mut ProtocolConfig)) -> EndpointConfig {
    let mut protocol = ProtocolConfig::default();
    change(&mut protocol);
    EndpointConfig::default().with_protocol(protocol)
}

/// A server endpoint and a connected client; the server side is accepted.
async fn pair(config: EndpointConfig) -> (Endpoint, Endpoint, Connection, Connection) {
    pair_on(loopback(), config).await
}

/// [`pair`] with both endpoints bound to `addr`.
async fn pair_on(
    addr: SocketAddr,
    config: EndpointConfig,
) -> (Endpoint, Endpoint, Connection, Connection) {
    let server = Endpoint::bind(addr, config.clone()).unwrap();
    let client = Endpoint::client_with_config(addr, config).unwrap();
    let (client_conn, server_conn) =
        tokio::join!(client.connect(server.local_addr()), server.accept());
    (server, client, client_conn.unwrap(), server_conn.unwrap())
}

async fn recv_all(conn: &Connection) -> Vec<surelink::Message> {
    let mut out = Vec::new();
    while let Some(m) = conn.recv_message().await.expect("recv failed") {
        out.push(m);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_of_mixed_sizes_on_two_channels() {
    bounded(async {
        let (_server, _client, client, server) = pair(EndpointConfig::default()).await;
        let mut sizes = vec![0, 1, 100, 1_400, 1_452, 5_000, 65_536, 3 << 20, 0, 7];
        let mut x = 12_345u64;
        for _ in 0..300 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            sizes.push((x >> 33) as usize % 20_000);
        }
        let receiver = tokio::spawn(async move { recv_all(&server).await });
        for (i, &len) in sizes.iter().enumerate() {
            let channel = (i % 2) as u64;
            client.send_on(channel, message(i, len)).await.unwrap();
        }
        client.close().await.expect("graceful close");
        let got = receiver.await.unwrap();
        assert_eq!(got.len(), sizes.len());
        // Per channel, messages arrive in order and intact.
        for channel in 0..2u64 {
            let expected: Vec<usize> = (0..sizes.len())
                .filter(|i| (i % 2) as u64 == channel)
                .collect();
            let received: Vec<&surelink::Message> =
                got.iter().filter(|m| m.channel == channel).collect();
            assert_eq!(received.len(), expected.len());
            for (seq, (m, &i)) in received.iter().zip(&expected).enumerate() {
                assert_eq!(m.seq, seq as u64);
                assert_eq!(m.data.len(), sizes[i], "message {i} length");
                assert!(m.data == message(i, sizes[i]), "message {i} content");
            }
        }
        let stats = client.stats();
        assert_eq!(stats.messages_sent, sizes.len() as u64);
        assert_eq!(stats.messages_acked, sizes.len() as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_everything_and_the_sender_is_held_back() {
    bounded(async {
        const SEND_BUFFER: usize = 64 << 10;
        let config = with_protocol(|p| {
            p.send_buffer = SEND_BUFFER;
            p.max_message_size = 64 << 10;
            p.receive_window = 256 << 10;
        });
        let (_server, _client, client, server) = pair(config).await;
        let count = 256;
        let len = 16 << 10;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = server.recv().await.unwrap() {
                got.push(m);
                // A slow application: the flow-control window fills up.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            got
        });
        let mut most_unacked = 0;
        for i in 0..count {
            client.send(message(i, len)).await.unwrap();
            most_unacked = most_unacked.max(client.unacked_bytes());
        }
        client.close().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got.len(), count);
        for (i, m) in got.iter().enumerate() {
            assert!(*m == message(i, len), "message {i}");
        }
        assert!(
            most_unacked <= SEND_BUFFER as u64,
            "send buffer exceeded: {most_unacked} bytes unacknowledged"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_silent_port_times_out() {
    bounded(async {
        // Bound but never read: nobody answers.
        let silent = std::net::UdpSocket::bind(loopback()).unwrap();
        let remote = silent.local_addr().unwrap();
        let config = EndpointConfig::default().with_connect_timeout(Duration::from_millis(300));
        let client = Endpoint::client_with_config(loopback(), config).unwrap();
        let err = client.connect(remote).await.unwrap_err();
        assert_eq!(
            err,
            ConnectError::TimedOut {
                remote,
                after: Duration::from_millis(300)
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("300ms") && text.contains(&remote.to_string()),
            "{text}"
        );
        // The half-made connection is cleaned up.
        client.wait_idle().await;
        assert_eq!(client.stats().connections, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_after_the_peer_acknowledged_everything() {
    bounded(async {
        let (_server, _client, client, server) = pair(EndpointConfig::default()).await;
        let count = 200;
        for i in 0..count {
            client.send(message(i, 10_000)).await.unwrap();
        }
        // The server application has not read anything yet.
        client.close().await.expect("graceful close");
        assert_eq!(client.unacked_bytes(), 0);
        let stats = client.stats();
        assert_eq!(stats.messages_acked, count as u64);
        // Acknowledged means the peer holds every message already.
        assert_eq!(server.stats().messages_delivered, count as u64);
        let got = recv_all(&server).await;
        assert_eq!(got.len(), count);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, m)| m.data == message(i, 10_000)));
        // Closing again is harmless; sending is refused.
        client.close().await.unwrap();
        assert_eq!(client.send(Bytes::new()).await, Err(SendError::Closed));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_playout_hands_over_the_held_messages_in_order() {
    bounded(async {
        // An hour of playout: nothing is handed over by the clock here.
        let config = with_protocol(|p| p.playout_delay = Some(Duration::from_secs(3600)));
        let (_server, _client, client, server) = pair(config).await;
        let count = 300;
        let queued = client
            .send_many(0, (0..count).map(|i| message(i, 100)))
            .await
            .unwrap();
        assert_eq!(queued, count);
        // The close returns once the server's transport acknowledged every
        // message, all of them still held back for their playout time.
        client.close().await.expect("graceful close");
        let held = server.stats();
        assert_eq!(held.messages_delivered, 0, "{held:?}");
        assert!(held.bundles_received > 0, "{held:?}");
        assert!(client.stats().bundled_messages_sent > 0);
        assert_eq!(server.release_held(), count as u64);
        let got = recv_all(&server).await;
        assert_eq!(got.len(), count);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, m)| m.seq == i as u64 && m.data == message(i, 100)));
        let stats = server.stats();
        assert_eq!(stats.messages_released_early, count as u64);
        assert_eq!(stats.messages_delivered, count as u64);
        assert_eq!(server.release_held(), 0, "the hold stays lifted");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_and_server_initiated_close() {
    bounded(async {
        let (_server, _client, client, server) = pair(EndpointConfig::default()).await;
        let echo = tokio::spawn(async move {
            let mut n = 0;
            while let Some(m) = server.recv().await.unwrap() {
                server.send(m).await.unwrap();
                n += 1;
                if n == 50 {
                    break;
                }
            }
            server.close().await.unwrap();
        });
        for i in 0..50 {
            client.send(message(i, i * 300)).await.unwrap();
        }
        for i in 0..50 {
            assert_eq!(client.recv().await.unwrap(), Some(message(i, i * 300)));
        }
        assert_eq!(
            client.recv().await.unwrap(),
            None,
            "graceful close by the server"
        );
        echo.await.unwrap();
        assert_eq!(client.closed().await, None);
        assert_eq!(client.send(Bytes::new()).await, Err(SendError::Closed));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_aborts() {
    bounded(async {
        let (_server, _client, client, server) = pair(EndpointConfig::default()).await;
        client
            .send(Bytes::from_static(b"last words"))
            .await
            .unwrap();
        let clone = client.clone();
        drop(client);
        // A clone keeps it alive.
        assert!(!clone.is_closed());
        drop(clone);
        // An abort drops what was not yet delivered: the message may or may not
        // have made it, but the abort always arrives.
        let outcome = loop {
            match server.recv().await {
                Ok(Some(m)) => assert_eq!(&m[..], b"last words"),
                other => break other,
            }
        };
        match outcome {
            Err(RecvError::ConnectionLost(ConnectionError::PeerClosed { code, .. })) => {
                assert_eq!(code, surelink::proto::close_code::APPLICATION_ABORT);
            }
            other => panic!("expected the peer's abort, got {other:?}"),
        }
        assert!(matches!(
            server.close().await,
            Err(CloseError::ConnectionLost(_))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_endpoint_does_not_accept() {
    bounded(async {
        let client = Endpoint::client(loopback()).unwrap();
        assert!(client.accept().await.is_none());
        // Nor does it answer a connection attempt.
        let config = EndpointConfig::default().with_connect_timeout(Duration::from_millis(200));
        let other = Endpoint::client_with_config(loopback(), config).unwrap();
        assert!(matches!(
            other.connect(client.local_addr()).await,
            Err(ConnectError::TimedOut { .. })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_messages_are_refused() {
    bounded(async {
        let config = with_protocol(|p| p.max_message_size = 1 << 20);
        let (_server, _client, client, _server_conn) = pair(config).await;
        let err = client
            .send(Bytes::from(vec![0; (1 << 20) + 1]))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            SendError::TooLarge {
                size: (1 << 20) + 1,
                max: 1 << 20
            }
        );
    })
    .await;
}

#[test]
fn creating_an_endpoint_outside_a_runtime_is_an_error() {
    assert!(matches!(
        Endpoint::client(loopback()),
        Err(surelink::BindError::NoRuntime)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_learn_each_others_keys() {
    bounded(async {
        let (server_ep, client_ep, client, server) = pair(EndpointConfig::default()).await;
        let server_key = server_ep.public_key().expect("encrypted by default");
        let client_key = client_ep.public_key().expect("encrypted by default");
        assert_eq!(client.peer_key(), Some(server_key));
        assert_eq!(server.peer_key(), Some(client_key));
        assert_ne!(server_key, client_key);
    })
    .await;
}

/// Sends 8 MiB from a client to a server endpoint, both made with `config`
/// and bound to `addr`, checks that it arrives byte for byte, and returns
/// both endpoints' stats.
async fn bulk_transfer(
    addr: SocketAddr,
    config: EndpointConfig,
) -> (surelink::EndpointStats, surelink::EndpointStats) {
    let (server_ep, client_ep, client, server) = pair_on(addr, config).await;
    let count = 128;
    let len = 64 << 10;
    let receiver = tokio::spawn(async move { recv_all(&server).await });
    for i in 0..count {
        client.send(message(i, len)).await.unwrap();
    }
    client.close().await.expect("graceful close");
    let got = receiver.await.unwrap();
    assert_eq!(got.len(), count);
    for (i, m) in got.iter().enumerate() {
        assert!(m.data == message(i, len), "message {i}");
    }
    (client_ep.stats(), server_ep.stats())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_with_batched_io_sends_many_datagrams_per_call() {
    bounded(async {
        let (client, server) = bulk_transfer(loopback(), EndpointConfig::default()).await;
        assert_batched(&client, &server);
    })
    .await;
}

/// The same over IPv6 loopback, where the host has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_with_batched_io_over_ipv6() {
    bounded(async {
        let addr: SocketAddr = "[::1]:0".parse().unwrap();
        if std::net::UdpSocket::bind(addr).is_err() {
            eprintln!("no IPv6 loopback here: skipped");
            return;
        }
        let (client, server) = bulk_transfer(addr, EndpointConfig::default()).await;
        assert_batched(&client, &server);
    })
    .await;
}

/// The counters of a batched bulk transfer from `client` to `server`.
fn assert_batched(client: &surelink::EndpointStats, server: &surelink::EndpointStats) {
    assert!(client.datagrams_sent > 5_000, "{client:?}");
    assert!(client.send_calls > 0 && client.recv_calls > 0, "{client:?}");
    assert!(server.recv_calls > 0, "{server:?}");
    if cfg!(target_os = "linux") {
        // UDP GSO: runs of datagrams in one sendmsg; GRO and recvmmsg:
        // many datagrams in one receive call.
        assert!(
            client.datagrams_sent > client.send_calls,
            "no send carried more than one datagram: {client:?}"
        );
        assert!(
            server.datagrams_received > server.recv_calls,
            "no receive brought more than one datagram: {server:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_without_batched_io_makes_one_call_per_datagram() {
    bounded(async {
        let config = EndpointConfig::default().with_batched_io(false);
        let (client, server) = bulk_transfer(loopback(), config).await;
        assert!(client.datagrams_sent > 5_000, "{client:?}");
        assert_eq!(client.send_calls, client.datagrams_sent, "{client:?}");
        assert_eq!(client.recv_calls, client.datagrams_received, "{client:?}");
        assert_eq!(server.send_calls, server.datagrams_sent, "{server:?}");
        assert_eq!(server.recv_calls, server.datagrams_received, "{server:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receive_window_is_capped_at_the_socket_buffer() {
    bounded(async {
        // A 1 MiB socket buffer, 64 KiB messages: the window shrinks from the
        // protocol's 32 MiB to at most 3/4 of what the kernel granted.
        let mut config = with_protocol(|p| p.max_message_size = 64 << 10);
        config.socket_buffer_size = 1 << 20;
        let asked = config.protocol.receive_window;
        let (server, _client, client, server_conn) = pair(config).await;
        let window = server.config().protocol.receive_window;
        assert!(window < asked, "window {window} not capped (asked {asked})");
        assert!(
            window >= (64 << 10) + 32,
            "window {window} below one message"
        );
        // Never below one maximal message, whatever the buffer.
        let mut big = with_protocol(|p| p.max_message_size = 4 << 20);
        big.socket_buffer_size = 64 << 10;
        let small = Endpoint::bind(loopback(), big).unwrap();
        assert_eq!(
            small.config().protocol.receive_window,
            (4 << 20) + 32,
            "one maximal message must still fit"
        );
        // Data still flows through the capped window.
        let receiver = tokio::spawn(async move { recv_all(&server_conn).await });
        for i in 0..64 {
            client.send(message(i, 60_000)).await.unwrap();
        }
        client.close().await.expect("graceful close");
        let got = receiver.await.unwrap();
        assert_eq!(got.len(), 64);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, m)| m.data == message(i, 60_000)));
    })
    .await;
}
