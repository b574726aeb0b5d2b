//! A [`ReceiverStore`] shared by two receivers, as a receiver group shares
//! one in etcd: ownership passes from A to B mid-session, A must stop at
//! once (its output gets nothing more, it commits nothing more), B resumes
//! from the shared checkpoint, and the sender, moving to B, completes the
//! session with the output exact. Real loopback connections; every wait is
//! bounded.

use tokio::sync::watch;

use super::*;

/// The shared store: the owner's term, and the last committed checkpoint.
#[derive(Debug, Clone)]
struct Shared {
    owner: watch::Sender<u64>,
    checkpoint: Arc<Mutex<Option<SessionRecord>>>,
}

/// One receiver's handle on [`Shared`], valid while `term` owns it.
#[derive(Debug)]
struct Handle {
    shared: Shared,
    term: u64,
    loaded: Option<SessionRecord>,
}

impl Shared {
    fn handle(&self, term: u64) -> Handle {
        Handle {
            shared: self.clone(),
            term,
            loaded: self.checkpoint.lock().unwrap().clone(),
        }
    }
}

impl ReceiverStore for Handle {
    fn checkpoint(&self) -> Option<&SessionRecord> {
        self.loaded.as_ref()
    }

    async fn commit(&mut self, record: SessionRecord, _sync: bool) -> Result<(), SessionError> {
        // Compare-and-set under the term: a stale owner commits nothing.
        if *self.shared.owner.borrow() != self.term {
            return Err(SessionError::Deposed(format!(
                "term {} is stale",
                self.term
            )));
        }
        *self.shared.checkpoint.lock().unwrap() = Some(record);
        Ok(())
    }

    fn owned(&self, _now: std::time::Instant) -> bool {
        *self.shared.owner.borrow() == self.term
    }

    fn deposed(&self) -> impl std::future::Future<Output = SessionError> + Send + 'static {
        let mut owner = self.shared.owner.subscribe();
        let term = self.term;
        async move {
            let _ = owner.wait_for(|&o| o != term).await;
            SessionError::Deposed(format!("term {term} ended"))
        }
    }
}

/// Sends messages `0..count` to whichever address `leader` holds, moving
/// there after each failure.
async fn follow(
    mut tx: DurableSender<MemStorage>,
    leader: watch::Receiver<SocketAddr>,
    count: u64,
) -> Result<(), SessionError> {
    let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    loop {
        let addr = *leader.borrow();
        let Ok(conn) = client.connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let result = async {
            tx.attach(conn).await?;
            while tx.resume_cursor() < count {
                let i = tx.resume_cursor();
                tx.send(0, Bytes::from(message(i)), i + 1).await?;
            }
            tx.finish().await
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_connection() => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_receiver_stops_at_once_and_the_next_owner_completes_the_session_exactly() {
    let count = 600;
    let file = MemFile::default();
    let shared = Shared {
        owner: watch::channel(1).0,
        checkpoint: Arc::new(Mutex::new(None)),
    };
    let options = options(Durability::None);
    let server_a =
        Endpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::default()).unwrap();
    let (leader_tx, leader) = watch::channel(server_a.local_addr());
    let mut rx_a =
        DurableReceiver::with_store(shared.handle(1), MemSink::new(&file), options.clone())
            .unwrap();
    let a = tokio::spawn(async move {
        let result = rx_a.run(&server_a, |_| {}).await;
        (result, rx_a.stats().messages_delivered)
    });
    let tx = DurableSender::open(MemStorage::new(), "shared", options.clone()).unwrap();
    let sender = tokio::spawn(follow(tx, leader, count));

    // Depose A once a third of the output is there.
    let third = expected(count / 3).len();
    for _ in 0..3000 {
        if file.len() >= third {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(file.len() >= third, "no progress");
    shared.owner.send_replace(2);
    let (result, _) = tokio::time::timeout(SCENARIO_LIMIT, a)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(result, Err(SessionError::Deposed(_))),
        "{result:?}"
    );
    let checkpoint = shared.checkpoint.lock().unwrap().clone();
    assert!(checkpoint.is_some(), "A committed nothing");

    // B takes over from the shared checkpoint; the sender moves to it.
    let server_b =
        Endpoint::bind("127.0.0.1:0".parse().unwrap(), EndpointConfig::default()).unwrap();
    let mut rx_b =
        DurableReceiver::with_store(shared.handle(2), MemSink::new(&file), options).unwrap();
    let resumed_from = rx_b.delivered(0);
    assert!(resumed_from > 0, "B starts from A's committed watermark");
    leader_tx.send_replace(server_b.local_addr());
    let b = tokio::spawn(async move { rx_b.run(&server_b, |_| {}).await });
    tokio::time::timeout(SCENARIO_LIMIT, sender)
        .await
        .expect("the sender completes within the bound")
        .unwrap()
        .unwrap();
    tokio::time::timeout(SCENARIO_LIMIT, b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // A wrote nothing after it was deposed (its writes would have landed
    // after B's), and B's restore cut back what A wrote past the checkpoint.
    assert!(
        file.contents() == expected(count),
        "the output is not exact"
    );
}
