//! Replayable outboxes ([`crate::replay`]): the journal holds references,
//! not messages; a source that changed is refused when the session resumes
//! (by its identity) and when an unconfirmed message is read again (by the
//! message's checksum), with nothing sent; the kind of outbox is part of
//! the session. The crash scenarios with a replayable outbox are in
//! [`super::sim`]. Real loopback connections; every wait is bounded.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::replay::IDENTITY_BLOCK;
use crate::wire::Control;

/// Bytes per message in these tests.
const CHUNK: usize = 16 << 10;
/// Messages sent before the "crash".
const SENT: u64 = 10;

/// The input: `SENT` chunks, more than the two identity blocks.
fn input() -> Vec<u8> {
    let data: Vec<u8> = (0..SENT as usize * CHUNK)
        .map(|i| (i * 131 + i / 997) as u8)
        .collect();
    assert!(data.len() as u64 > 2 * IDENTITY_BLOCK);
    data
}

/// An in-memory [`ReplaySource`] whose content a test can change.
#[derive(Debug, Clone)]
pub(super) struct MemSource(pub(super) Arc<Mutex<Vec<u8>>>);

impl MemSource {
    pub(super) fn new(data: Vec<u8>) -> Self {
        MemSource(Arc::new(Mutex::new(data)))
    }
}

impl ReplaySource for MemSource {
    fn identity(&mut self) -> io::Result<SourceIdentity> {
        let data = self.0.lock().unwrap();
        let block = data.len().min(IDENTITY_BLOCK as usize);
        Ok(SourceIdentity {
            len: data.len() as u64,
            modified_ns: 0,
            head_crc: crc32c::crc32c(&data[..block]),
            tail_crc: crc32c::crc32c(&data[data.len() - block..]),
        })
    }

    fn read_at(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        let data = self.0.lock().unwrap();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        data.get(start..start + len)
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }
}

/// A receiver that answers one HELLO with a watermark of `next` on channel
/// 0 and never checkpoints; it counts the data messages it gets until the
/// connection ends (when the task ends).
fn watermark_only_receiver(
    server: &Endpoint,
    next: u64,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let data_messages = Arc::new(AtomicU64::new(0));
    let (server, counter) = (server.clone(), data_messages.clone());
    let task = tokio::spawn(async move {
        let conn = server.accept().await.expect("a connection");
        read_hello(&conn, Duration::from_secs(10))
            .await
            .expect("HELLO");
        let watermark = Progress {
            ended: false,
            next: [(0, next)].into_iter().collect(),
        };
        send_control(&conn, &Control::Watermark(watermark))
            .await
            .expect("WATERMARK");
        while let Ok(Some(m)) = conn.recv_message().await {
            if m.channel != CONTROL_CHANNEL {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (data_messages, task)
}

/// Sends the whole input in `CHUNK` messages to a receiver that confirms
/// nothing, then drops the sender (its journal in `storage` survives, all
/// of it unconfirmed). Returns the journal's bytes written.
async fn send_unconfirmed(storage: &MemStorage, source: &MemSource) -> u64 {
    let server = Endpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::default()).unwrap();
    let (received, _) = watermark_only_receiver(&server, 0);
    let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let options = SessionOptions::default().with_durability(Durability::Always);
    let mut tx =
        DurableSender::open_with_source(storage.clone(), "in", source.clone(), options).unwrap();
    assert!(tx.replays_from_source());
    tx.attach(client.connect(server.local_addr()).await.unwrap())
        .await
        .unwrap();
    let data = source.0.lock().unwrap().clone();
    let batch = data
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, chunk)| Outgoing {
            channel: 0,
            data: Bytes::copy_from_slice(chunk),
            cursor: ((i + 1) * CHUNK) as u64,
        })
        .collect();
    tx.send_batch(batch).await.unwrap();
    assert_eq!(tx.unconfirmed(), SENT as usize);
    assert_eq!(tx.unconfirmed_bytes(), data.len() + 8 * SENT as usize);
    assert_eq!(tx.resume_cursor(), data.len() as u64);
    for _ in 0..1000 {
        if received.load(Ordering::SeqCst) == SENT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(received.load(Ordering::SeqCst), SENT, "all sent");
    tx.journal_metrics().bytes_written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayable_outbox_journals_references_and_resends_from_the_source() {
    let storage = MemStorage::new();
    let source = MemSource::new(input());
    let written = send_unconfirmed(&storage, &source).await;
    // References of 16 bytes, not 160 KiB of messages.
    assert!(
        written < (SENT as usize * CHUNK / 10) as u64,
        "{written} bytes journalled"
    );

    // Restarted, it counts the referenced bytes and re-sends every message
    // from the source to a receiver that has none of them.
    let options = SessionOptions::default().with_durability(Durability::Always);
    let mut tx =
        DurableSender::open_with_source(storage.clone(), "in", source.clone(), options).unwrap();
    assert_eq!(tx.unconfirmed(), SENT as usize);
    assert_eq!(
        tx.unconfirmed_bytes(),
        input().len() + 8 * SENT as usize,
        "the outbox limit counts the referenced bytes"
    );
    let server = Endpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::default()).unwrap();
    let (received, _) = watermark_only_receiver(&server, 0);
    let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let resumed = tx
        .attach(client.connect(server.local_addr()).await.unwrap())
        .await
        .unwrap();
    assert_eq!(resumed.resent, SENT);
    for _ in 0..1000 {
        if received.load(Ordering::SeqCst) == SENT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(received.load(Ordering::SeqCst), SENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_bytes_that_changed_are_not_sent() {
    let storage = MemStorage::new();
    let source = MemSource::new(input());
    send_unconfirmed(&storage, &source).await;
    // One byte of message 4 changes: the source's length and its first and
    // last blocks stay the same, so only the message's checksum can tell.
    let changed = 4 * CHUNK + 100;
    assert!(
        changed as u64 > IDENTITY_BLOCK && changed as u64 + IDENTITY_BLOCK < input().len() as u64
    );
    source.0.lock().unwrap()[changed] ^= 0x40;

    let options = SessionOptions::default().with_durability(Durability::Always);
    let mut tx = DurableSender::open_with_source(storage, "in", source, options).unwrap();
    let server = Endpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::default()).unwrap();
    let (received, receiver) = watermark_only_receiver(&server, 0);
    let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let err = tx
        .attach(client.connect(server.local_addr()).await.unwrap())
        .await
        .unwrap_err();
    match err {
        SessionError::SourceBytesChanged { offset, len } => {
            assert_eq!((offset, len), (4 * CHUNK as u64, CHUNK as u32));
        }
        other => panic!("expected SourceBytesChanged, got {other}"),
    }
    assert!(tx.connection().is_none(), "the connection was given up");
    tokio::time::timeout(Duration::from_secs(10), receiver)
        .await
        .expect("the aborted connection ends")
        .unwrap();
    assert_eq!(received.load(Ordering::SeqCst), 0, "nothing was sent");
}

#[test]
fn a_changed_source_is_refused_when_the_session_resumes() {
    let storage = MemStorage::new();
    let source = MemSource::new(input());
    let tx = DurableSender::open_with_source(
        storage.clone(),
        "in",
        source.clone(),
        SessionOptions::default(),
    )
    .unwrap();
    drop(tx);
    // The same length, its last block changed.
    *source.0.lock().unwrap().last_mut().unwrap() ^= 1;
    let err = DurableSender::open_with_source(
        storage.clone(),
        "in",
        source.clone(),
        SessionOptions::default(),
    )
    .unwrap_err();
    let SessionError::SourceChanged { stored, current } = &err else {
        panic!("expected SourceChanged, got {err}");
    };
    assert_eq!(stored.len, current.len);
    assert_ne!(stored.tail_crc, current.tail_crc);
    assert!(
        err.to_string()
            .contains("the input changed since the session started"),
        "{err}"
    );
    // Restored, it resumes.
    *source.0.lock().unwrap().last_mut().unwrap() ^= 1;
    DurableSender::open_with_source(storage, "in", source, SessionOptions::default()).unwrap();
}

#[test]
fn the_kind_of_outbox_is_part_of_the_session() {
    let source = MemSource::new(input());
    let copies = MemStorage::new();
    drop(DurableSender::open(copies.clone(), "in", SessionOptions::default()).unwrap());
    let err =
        DurableSender::open_with_source(copies, "in", source.clone(), SessionOptions::default())
            .unwrap_err();
    assert!(
        matches!(&err, SessionError::State(s) if s.contains("holds copies")),
        "{err}"
    );

    let replay = MemStorage::new();
    drop(
        DurableSender::open_with_source(replay.clone(), "in", source, SessionOptions::default())
            .unwrap(),
    );
    let err = DurableSender::open(replay, "in", SessionOptions::default()).unwrap_err();
    assert!(
        matches!(&err, SessionError::State(s) if s.contains("refers to its input")),
        "{err}"
    );
}
