//! Real sockets, two paths: a transfer across two `surelink impair` links, the
//! primary cut mid-transfer and later restored; the output is byte-identical
//! and the connection's event stream tells the story.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use surelink::impair::{ImpairConfig, Impairer, LinkConfig};
use surelink::{ConnectionEvent, Endpoint, EndpointConfig, PathId, PathMode};

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn link() -> LinkConfig {
    "delay=5ms,jitter=1ms".parse().unwrap()
}

async fn transfer_with_cut(mode: PathMode) {
    let mut config = EndpointConfig::default();
    config.protocol.path_mode = mode;
    let server = Endpoint::bind_many(&[any(), any()], config.clone()).unwrap();
    let [a, b] = server.local_addrs()[..] else {
        panic!("two sockets")
    };
    let primary = Impairer::start(ImpairConfig::new(any(), a).with_both(link())).unwrap();
    let backup = Impairer::start(ImpairConfig::new(any(), b).with_both(link())).unwrap();

    let payload: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = payload.clone();
    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.expect("a connection");
        let mut got = Vec::new();
        while let Some(m) = conn.recv().await.expect("recv") {
            got.extend_from_slice(&m);
        }
        got
    });

    let client = Endpoint::client_with_config(any(), config).unwrap();
    let conn = client.connect(primary.local_addr()).await.unwrap();
    conn.add_path(backup.local_addr()).expect("path added");
    let events = tokio::spawn({
        let conn = conn.clone();
        async move {
            let mut events = Vec::new();
            while let Some(e) = conn.next_event().await {
                events.push(e);
            }
            events
        }
    });
    // 256 chunks over about 1.3 s; the primary is cut for about 0.6 s of it.
    for (i, chunk) in payload.chunks(16 << 10).enumerate() {
        if i == 64 {
            primary.set_cut(true);
        }
        if i == 192 {
            primary.set_cut(false);
        }
        conn.send(Bytes::copy_from_slice(chunk)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Everything acknowledged (bounded by the test's timeout).
    while conn.unacked_bytes() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = conn.path_stats();
    conn.close().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), receiver)
        .await
        .expect("receiver finished")
        .unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "output differs");
    // The backup carried data.
    assert!(stats[1].bytes_sent > 100_000, "{stats:?}");
    // The events: the backup validated, the primary suspected, the data moved
    // over, and a graceful end that closes the stream.
    let events = tokio::time::timeout(Duration::from_secs(10), events)
        .await
        .expect("the event stream ends with the connection")
        .unwrap();
    let position = |wanted: &ConnectionEvent| events.iter().position(|e| e == wanted);
    let up = position(&ConnectionEvent::PathUp(PathId(1))).expect("PathUp(1)");
    let suspect = position(&ConnectionEvent::PathSuspect(PathId(0))).expect("PathSuspect(0)");
    let moved = position(&ConnectionEvent::FailedOver {
        from: PathId(0),
        to: PathId(1),
    })
    .expect("FailedOver 0 -> 1");
    assert!(up < suspect && suspect <= moved, "{events:?}");
    assert_eq!(
        events.last(),
        Some(&ConnectionEvent::Closed { error: None }),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_path_takes_over_a_cut_primary_losslessly() {
    tokio::time::timeout(Duration::from_secs(60), transfer_with_cut(PathMode::Backup))
        .await
        .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_survives_a_cut_primary() {
    tokio::time::timeout(
        Duration::from_secs(60),
        transfer_with_cut(PathMode::Broadcast),
    )
    .await
    .expect("bounded");
}
