//! The listener task of an impairer: reads client datagrams and routes them
//! to per-client flows.
//!
//! The relay owns the listening socket's read side and the flow table, a map
//! from client address to the flow task serving it (module `flow`). A
//! datagram from an unknown client opens a flow, unless the table already
//! holds [`ImpairConfig::max_flows`] flows, in which case the datagram is
//! dropped and counted as refused. Datagrams are handed to the flow over a
//! bounded queue, stamped with their arrival instant; if the queue is full
//! (the flow task cannot keep up) the datagram is dropped and counted.
//!
//! A flow that idles out tells the relay, which forgets it; datagrams that
//! raced with its end are routed again, to a fresh flow. On shutdown the
//! relay waits for every flow task to finish, so that the final counters are
//! complete.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use surelink_netem::Link;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::flow::{
    clock_now, flow_seed, is_transient, Datagram, Flow, FlowExit, Shared, ERROR_BACKOFF,
    MAX_DATAGRAM,
};
use super::ImpairConfig;
use crate::socket::bind_udp;

/// How many datagrams may wait between the relay and one flow task.
const INBOX_CAPACITY: usize = 4096;

/// The relay's handle on one flow.
#[derive(Debug)]
struct FlowEntry {
    id: u64,
    inbox: mpsc::Sender<Datagram>,
}

/// The listener task's state.
#[derive(Debug)]
pub(crate) struct Relay {
    config: ImpairConfig,
    /// When the impairer started: cut schedules count from here.
    start: Instant,
    listen: Arc<UdpSocket>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    table: HashMap<SocketAddr, FlowEntry>,
    next_flow: u64,
    exits_tx: mpsc::UnboundedSender<FlowExit>,
    exits_rx: mpsc::UnboundedReceiver<FlowExit>,
    tasks: JoinSet<()>,
}

impl Relay {
    pub(crate) fn new(
        config: ImpairConfig,
        start: Instant,
        listen: Arc<UdpSocket>,
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Self {
            config,
            start,
            listen,
            shared,
            shutdown,
            table: HashMap::new(),
            next_flow: 0,
            exits_tx,
            exits_rx,
            tasks: JoinSet::new(),
        }
    }

    /// Runs until shutdown is requested (or the handle is dropped), then
    /// waits for the flow tasks.
    pub(crate) async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            tokio::select! {
                biased;
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        break;
                    }
                }
                Some(exit) = self.exits_rx.recv() => self.on_exit(exit),
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(error) = joined {
                        tracing::error!(%error, "impairer flow task failed");
                    }
                }
                read = self.listen.recv_from(&mut buf) => match read {
                    Ok((len, client)) => {
                        let datagram = Datagram {
                            at: clock_now(),
                            payload: buf.get(..len).unwrap_or_default().to_vec(),
                        };
                        self.route(client, datagram);
                    }
                    Err(error) => {
                        self.shared.stats.listen_recv_error();
                        tracing::debug!(%error, "read on impairer socket failed");
                        if !is_transient(&error) {
                            tokio::time::sleep(ERROR_BACKOFF).await;
                        }
                    }
                },
            }
        }
        // Flows watch the same shutdown signal; closing their inboxes stops
        // them too if the signal was a dropped handle.
        self.table.clear();
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "impairer flow task failed");
            }
        }
    }

    /// Hands a client's datagram to its flow, opening one if needed.
    fn route(&mut self, client: SocketAddr, mut datagram: Datagram) {
        // Two attempts: the flow found may have just ended on its own.
        for _ in 0..2 {
            if !self.table.contains_key(&client) && !self.open_flow(client) {
                self.shared.stats.refuse_flow();
                return;
            }
            let Some(entry) = self.table.get(&client) else {
                return;
            };
            match entry.inbox.try_send(datagram) {
                Ok(()) => return,
                Err(TrySendError::Full(_)) => {
                    self.shared.stats.drop_backlog();
                    return;
                }
                Err(TrySendError::Closed(returned)) => {
                    self.table.remove(&client);
                    datagram = returned;
                }
            }
        }
    }

    /// Forgets a flow that ended and routes the datagrams it gave back.
    fn on_exit(&mut self, exit: FlowExit) {
        if self
            .table
            .get(&exit.client)
            .is_some_and(|entry| entry.id == exit.id)
        {
            self.table.remove(&exit.client);
        }
        for datagram in exit.leftovers {
            self.route(exit.client, datagram);
        }
    }

    /// Opens a flow for `client`; false if the table is full or the flow's
    /// socket or links could not be made.
    fn open_flow(&mut self, client: SocketAddr) -> bool {
        if self.table.len() >= self.config.max_flows {
            tracing::debug!(%client, max = self.config.max_flows, "flow table full");
            return false;
        }
        let id = self.next_flow;
        let socket = match self.connect_upstream() {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%client, %error, "could not open an upstream socket");
                return false;
            }
        };
        let links = Link::new(
            self.config.upstream.clone(),
            flow_seed(self.config.seed, id, 0),
            self.start,
        )
        .and_then(|up| {
            Link::new(
                self.config.downstream.clone(),
                flow_seed(self.config.seed, id, 1),
                self.start,
            )
            .map(|down| (up, down))
        });
        let (upstream, downstream) = match links {
            Ok(links) => links,
            Err(error) => {
                // Unreachable: the configuration was validated at start.
                tracing::error!(%error, "invalid impairment configuration");
                return false;
            }
        };
        self.next_flow += 1;
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let flow = Flow {
            id,
            client,
            socket,
            listen: Arc::clone(&self.listen),
            upstream,
            downstream,
            inbox,
            exits: self.exits_tx.clone(),
            shared: Arc::clone(&self.shared),
            shutdown: self.shutdown.clone(),
            idle_timeout: self.config.idle_timeout,
        };
        self.shared.stats.open_flow(id);
        self.tasks.spawn(flow.run());
        self.table.insert(
            client,
            FlowEntry {
                id,
                inbox: inbox_tx,
            },
        );
        tracing::debug!(flow = id, %client, "flow opened");
        true
    }

    /// A socket on an ephemeral port of the target's address family,
    /// connected to the target.
    fn connect_upstream(&self) -> io::Result<UdpSocket> {
        let any = match self.config.target.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = bind_udp(SocketAddr::new(any, 0), self.config.socket_buffer_size)?;
        socket.connect(self.config.target)?;
        UdpSocket::from_std(socket)
    }
}
