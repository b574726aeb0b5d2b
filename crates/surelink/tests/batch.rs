//! The batch calls `Connection::send_many` and `Connection::recv_many` on a
//! simulated lossy network, on virtual time: every message arrives once, in
//! order, intact, whether the batch is of `Bytes` or a `MessageBatch` of
//! borrowed slices of every size; a batch larger than the send buffer waits
//! for room and completes; a message that is too large stops the batch with
//! the messages before it queued and the connection still usable. Packed
//! batches (`send_batch`) arrive whole, taken with `recv_batch` or message
//! by message, each with its batch's sequence number.

use std::net::SocketAddr;
use std::time::Duration;

use surelink::sim::SimNetwork;
use surelink::{
    Bytes, Connection, Endpoint, EndpointConfig, Message, MessageBatch, ProtocolConfig, SendError,
};

/// Bound on a test in virtual time.
const LIMIT: Duration = Duration::from_secs(600);

/// Message `i`: its index in 8 bytes, then `len - 8` bytes derived from it.
fn message(i: u64, len: usize) -> Bytes {
    let mut v = i.to_le_bytes().to_vec();
    v.extend((0..len.saturating_sub(8)).map(|k| (i as u8).wrapping_add(k as u8)));
    Bytes::from(v)
}

/// A connected pair on a network with 2 % loss and 5 ms delay each way; the
/// client's send buffer is `send_buffer` bytes.
async fn pair(
    network: &SimNetwork,
    send_buffer: usize,
) -> (Endpoint, Endpoint, Connection, Connection) {
    network.set_default_link("loss=2%,delay=5ms".parse().unwrap());
    let protocol = ProtocolConfig {
        send_buffer,
        max_message_size: send_buffer,
        ..ProtocolConfig::default()
    };
    let config = EndpointConfig::default().with_protocol(protocol);
    let server_addr: SocketAddr = "10.0.0.1:4433".parse().unwrap();
    let server = Endpoint::simulated(network, server_addr, config.clone(), true, 1).unwrap();
    let client =
        Endpoint::simulated(network, "10.0.0.2:0".parse().unwrap(), config, false, 2).unwrap();
    let (conn, accepted) = tokio::join!(client.connect(server_addr), server.accept());
    (server, client, conn.unwrap(), accepted.unwrap())
}

/// Every message until the graceful end, taken at most `max` per call;
/// also the largest batch one call returned.
async fn recv_all_many(conn: &Connection, max: usize) -> (Vec<Message>, usize) {
    let mut out = Vec::new();
    let mut largest = 0;
    loop {
        let n = conn
            .recv_many(&mut out, max)
            .await
            .expect("recv_many failed");
        if n == 0 {
            return (out, largest);
        }
        largest = largest.max(n);
    }
}

#[tokio::test(start_paused = true)]
async fn batches_larger_than_the_send_buffer_arrive_whole_and_in_order() {
    tokio::time::timeout(LIMIT, async {
        let network = SimNetwork::new(11);
        // 16 KiB of send buffer: each batch of 1,000 × 64 B must wait for room.
        let (_server, _client, conn, accepted) = pair(&network, 16 << 10).await;
        let receiver = tokio::spawn(async move { recv_all_many(&accepted, 300).await });
        let (batches, per_batch) = (20u64, 1_000u64);
        for b in 0..batches {
            let batch = (b * per_batch..(b + 1) * per_batch).map(|i| message(i, 64));
            assert_eq!(conn.send_many(0, batch).await.unwrap(), per_batch as usize);
        }
        conn.close().await.expect("graceful close");
        let (got, largest) = receiver.await.unwrap();
        assert_eq!(got.len() as u64, batches * per_batch);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.seq, i as u64);
            assert!(m.data == message(i as u64, 64), "message {i}");
        }
        assert!(largest <= 300, "a call returned {largest} > max messages");
        assert!(largest > 1, "messages ready together come in one call");
        assert!(network.stats().links.dropped() > 0, "the link lost nothing");
    })
    .await
    .expect("did not finish in virtual time");
}

#[tokio::test(start_paused = true)]
async fn a_too_large_message_stops_the_batch_after_the_ones_before_it() {
    tokio::time::timeout(LIMIT, async {
        let network = SimNetwork::new(12);
        let (_server, _client, conn, accepted) = pair(&network, 16 << 10).await;
        let receiver = tokio::spawn(async move { recv_all_many(&accepted, 1_000).await });
        let batch = vec![
            message(0, 100),
            message(1, 100),
            message(2, 17 << 10),
            message(3, 100),
        ];
        let err = conn.send_many(0, batch).await.unwrap_err();
        assert_eq!(
            err,
            SendError::TooLarge {
                size: 17 << 10,
                max: 16 << 10
            }
        );
        // The connection goes on: the next batch follows the first two.
        let more = (2..5).map(|i| message(i, 100));
        assert_eq!(conn.send_many(0, more).await.unwrap(), 3);
        conn.close().await.expect("graceful close");
        let (got, _) = receiver.await.unwrap();
        let data: Vec<Bytes> = got.into_iter().map(|m| m.data).collect();
        let expected: Vec<Bytes> = (0..5).map(|i| message(i, 100)).collect();
        assert_eq!(data, expected);
    })
    .await
    .expect("did not finish in virtual time");
}

#[tokio::test(start_paused = true)]
async fn message_batches_of_every_size_arrive_whole_and_in_order() {
    tokio::time::timeout(LIMIT, async {
        let network = SimNetwork::new(13);
        // 16 KiB of send buffer: batches wait for room; sizes cross the
        // 256-byte line between copied and kept messages, and reach a
        // message larger than a packet.
        let (_server, _client, conn, accepted) = pair(&network, 16 << 10).await;
        let receiver = tokio::spawn(async move {
            let (got, _) = recv_all_many(&accepted, 500).await;
            (got, accepted.stats())
        });
        let sizes = [0, 1, 8, 64, 255, 256, 257, 1_000, 3_000];
        let mut batch = MessageBatch::new();
        let mut sent = Vec::new();
        for b in 0..30 {
            for size in sizes.iter().cycle().skip(b).take(200) {
                let m = message(sent.len() as u64, *size);
                batch.push(&m);
                sent.push(m);
            }
            assert_eq!(conn.send_many(0, batch.iter()).await.unwrap(), 200);
            batch.clear();
        }
        conn.close().await.expect("graceful close");
        let (got, stats) = receiver.await.unwrap();
        let data: Vec<Bytes> = got.into_iter().map(|m| m.data).collect();
        assert_eq!(data.len(), sent.len());
        assert!(data == sent, "messages differ");
        // Every message taken had its latency recorded, once.
        assert_eq!(stats.latency_histogram.count(), sent.len() as u64);
        assert!(network.stats().links.dropped() > 0, "the link lost nothing");
    })
    .await
    .expect("did not finish in virtual time");
}

#[tokio::test(start_paused = true)]
async fn packed_batches_arrive_whole_through_loss_and_wait_for_room_in_the_send_buffer() {
    tokio::time::timeout(LIMIT, async {
        let network = SimNetwork::new(17);
        // 16 KiB of send buffer: batches of 150 × 100 B fill most of it, so
        // the sender waits for acknowledgements between batches.
        let (_server, _client, conn, accepted) = pair(&network, 16 << 10).await;
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            // Alternate: a batch whole, then one message of the next.
            loop {
                let Some(batch) = accepted.recv_batch().await.expect("recv_batch") else {
                    break;
                };
                assert!(batch.is_packed());
                got.extend(
                    batch
                        .iter()
                        .map(Bytes::copy_from_slice)
                        .map(|b| (batch.seq, b)),
                );
                match accepted.recv_message().await.expect("recv_message") {
                    Some(m) => got.push((m.seq, m.data)),
                    None => break,
                }
            }
            got
        });
        let (batches, per_batch) = (30u64, 150u64);
        let mut batch = MessageBatch::new();
        for b in 0..batches {
            (b * per_batch..(b + 1) * per_batch).for_each(|i| batch.push(&message(i, 100)));
            assert_eq!(conn.send_batch(0, &mut batch).await.unwrap(), Some(b));
            assert!(batch.is_empty());
        }
        // Each message of each batch counts as acknowledged: the close
        // finds none missing.
        conn.close().await.expect("graceful close");
        let got = receiver.await.unwrap();
        assert_eq!(got.len() as u64, batches * per_batch);
        for (i, (seq, data)) in got.iter().enumerate() {
            let i = i as u64;
            assert_eq!(
                *seq,
                i / per_batch,
                "message {i} is in batch {}",
                i / per_batch
            );
            assert_eq!(*data, message(i, 100), "message {i}");
        }
        assert!(network.stats().links.dropped() > 0, "the link lost nothing");
    })
    .await
    .expect("virtual-time limit");
}
