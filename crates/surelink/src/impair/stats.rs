//! Counters of an impairer: [`ImpairStats`] and [`DirectionStats`], and the
//! shared book they are read from.
//!
//! Each flow task keeps its own counters and copies them into the
//! [`StatsBook`] after every event; the listener adds the counters only it
//! sees (refused flows, full hand-over queues, listen-socket errors). When a
//! flow ends, its counters move into a running total, so
//! [`ImpairHandle::stats`](super::ImpairHandle::stats) is always the sum over
//! every flow ever opened.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use surelink_netem::LinkStats;
use surelink_proto::stats_schema::{Metric, StatsVisitor, Unit, Value, VisitStats};

/// Counters of one direction (upstream: client → target, downstream:
/// target → client), summed over all flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionStats {
    /// The impairment model's counters ([`LinkStats`]: sent, delivered,
    /// dropped by reason, duplicated, reordered, bytes), summed over flows.
    pub link: LinkStats,
    /// Datagrams written to the outgoing socket (delivered by the model and
    /// sent without error).
    pub forwarded: u64,
    /// Datagrams delivered by the model that the outgoing socket refused;
    /// they are lost.
    pub send_errors: u64,
    /// Failed reads on the socket this direction receives from (for
    /// example "connection refused" when nothing listens on the target).
    pub recv_errors: u64,
    /// Datagrams dropped before reaching the model because the impairer's
    /// own buffers were full: the flow's hand-over queue (its task could not
    /// keep up) or its limit of 65 536 datagrams in flight per direction.
    pub dropped_backlog: u64,
}

impl DirectionStats {
    /// Datagrams received in this direction: offered to the model or dropped
    /// before it.
    pub fn received(&self) -> u64 {
        self.link.sent + self.dropped_backlog
    }

    /// Adds `other`'s counters to these.
    pub(crate) fn add(&mut self, other: &DirectionStats) {
        add_link_stats(&mut self.link, &other.link);
        self.forwarded += other.forwarded;
        self.send_errors += other.send_errors;
        self.recv_errors += other.recv_errors;
        self.dropped_backlog += other.dropped_backlog;
    }
}

impl fmt::Display for DirectionStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} forwarded={} send_errors={} recv_errors={} dropped_backlog={}",
            self.link, self.forwarded, self.send_errors, self.recv_errors, self.dropped_backlog
        )
    }
}

/// Sums two sets of link counters field by field.
fn add_link_stats(total: &mut LinkStats, more: &LinkStats) {
    total.sent += more.sent;
    total.delivered += more.delivered;
    total.dropped_loss += more.dropped_loss;
    total.dropped_burst += more.dropped_burst;
    total.dropped_cut += more.dropped_cut;
    total.dropped_queue += more.dropped_queue;
    total.duplicated += more.duplicated;
    total.reordered += more.reordered;
    total.bytes_in = total.bytes_in.saturating_add(more.bytes_in);
    total.bytes_out = total.bytes_out.saturating_add(more.bytes_out);
}

/// Counters of an impairer since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImpairStats {
    /// Client → target.
    pub upstream: DirectionStats,
    /// Target → client.
    pub downstream: DirectionStats,
    /// Flows currently tracked.
    pub flows_active: u64,
    /// Flows opened since start (a client that returns after its flow
    /// expired opens a new one).
    pub flows_opened: u64,
    /// Flows forgotten after their idle timeout.
    pub flows_expired: u64,
    /// Datagrams from new clients dropped because no flow could be opened
    /// (the flow table was full, or the upstream socket could not be made).
    pub flows_refused: u64,
    /// Whether the on-demand cut is in force.
    pub cut: bool,
}

impl fmt::Display for ImpairStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "flows: opened={} active={} expired={} refused={} cut={}",
            self.flows_opened, self.flows_active, self.flows_expired, self.flows_refused, self.cut
        )?;
        writeln!(f, "upstream:   {}", self.upstream)?;
        write!(f, "downstream: {}", self.downstream)
    }
}

impl VisitStats for ImpairStats {
    fn visit<V: StatsVisitor + ?Sized>(&self, v: &mut V) {
        let c = |key, family, help| Metric::counter(key, family, Unit::Count, help);
        v.counter(
            &c(
                "flows_opened",
                "impair_flows_opened",
                "Flows opened since start.",
            ),
            self.flows_opened,
        );
        v.gauge(
            &Metric::gauge(
                "flows_active",
                "impair_flows_active",
                Unit::Count,
                "Flows currently tracked.",
            ),
            Value::Integer(self.flows_active),
        );
        v.counter(
            &c(
                "flows_expired",
                "impair_flows_expired",
                "Flows forgotten after their idle timeout.",
            ),
            self.flows_expired,
        );
        v.counter(
            &c(
                "flows_refused",
                "impair_flows_refused",
                "Datagrams from new clients dropped because no flow could be opened.",
            ),
            self.flows_refused,
        );
        v.gauge(
            &Metric::gauge(
                "cut",
                "impair_cut",
                Unit::Count,
                "1 while the on-demand cut is in force.",
            ),
            Value::Integer(u64::from(self.cut)),
        );
        self.upstream.visit_direction(v, "upstream");
        self.downstream.visit_direction(v, "downstream");
    }
}

impl DirectionStats {
    /// Visits this direction's counters, each labelled `direction`, under
    /// its field's name as key.
    fn visit_direction<V: StatsVisitor + ?Sized>(&self, v: &mut V, direction: &'static str) {
        use Unit::{Bytes, Count};
        let link = &self.link;
        for (key, family, unit, help, value) in [
            (
                "sent",
                "impair_received",
                Count,
                "Datagrams offered to the impairment model.",
                link.sent,
            ),
            (
                "delivered",
                "impair_delivered",
                Count,
                "Datagrams released by the model, duplicates included.",
                link.delivered,
            ),
            (
                "dropped_loss",
                "impair_dropped_loss",
                Count,
                "Datagrams dropped by random loss.",
                link.dropped_loss,
            ),
            (
                "dropped_burst",
                "impair_dropped_burst",
                Count,
                "Datagrams dropped by burst loss.",
                link.dropped_burst,
            ),
            (
                "dropped_cut",
                "impair_dropped_cut",
                Count,
                "Datagrams dropped while the link was cut.",
                link.dropped_cut,
            ),
            (
                "dropped_queue",
                "impair_dropped_queue",
                Count,
                "Datagrams tail-dropped at a full bottleneck queue.",
                link.dropped_queue,
            ),
            (
                "dropped_backlog",
                "impair_dropped_backlog",
                Count,
                "Datagrams dropped before the model because the impairer's buffers were full.",
                self.dropped_backlog,
            ),
            (
                "duplicated",
                "impair_duplicated",
                Count,
                "Extra copies made by duplication.",
                link.duplicated,
            ),
            (
                "reordered",
                "impair_reordered",
                Count,
                "Datagrams held back so that later ones overtake them.",
                link.reordered,
            ),
            (
                "bytes_in",
                "impair_in",
                Bytes,
                "Bytes offered to the model.",
                link.bytes_in,
            ),
            (
                "bytes_out",
                "impair_out",
                Bytes,
                "Bytes released by the model.",
                link.bytes_out,
            ),
            (
                "forwarded",
                "impair_forwarded",
                Count,
                "Datagrams written to the outgoing socket.",
                self.forwarded,
            ),
            (
                "send_errors",
                "impair_send_errors",
                Count,
                "Datagrams the outgoing socket refused.",
                self.send_errors,
            ),
            (
                "recv_errors",
                "impair_recv_errors",
                Count,
                "Failed reads on the receiving socket.",
                self.recv_errors,
            ),
        ] {
            let metric =
                Metric::counter(key, family, unit, help).with_label("direction", direction);
            v.counter(&metric, value);
        }
    }
}

/// The counters of one flow, both directions.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FlowCounters {
    pub(crate) upstream: DirectionStats,
    pub(crate) downstream: DirectionStats,
}

impl FlowCounters {
    fn add(&mut self, other: &FlowCounters) {
        self.upstream.add(&other.upstream);
        self.downstream.add(&other.downstream);
    }
}

/// Where flows and the listener publish their counters.
#[derive(Debug, Default)]
pub(crate) struct StatsBook {
    inner: Mutex<BookInner>,
}

#[derive(Debug, Default)]
struct BookInner {
    /// Latest counters of each live flow, by flow index.
    live: HashMap<u64, FlowCounters>,
    /// Counters of ended flows plus those kept by the listener.
    retired: FlowCounters,
    flows_opened: u64,
    flows_expired: u64,
    flows_refused: u64,
}

impl StatsBook {
    fn lock(&self) -> MutexGuard<'_, BookInner> {
        // A panic elsewhere while holding the lock leaves plain counters
        // behind; they are still worth reading.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a new flow.
    pub(crate) fn open_flow(&self, id: u64) {
        let mut book = self.lock();
        book.live.insert(id, FlowCounters::default());
        book.flows_opened += 1;
    }

    /// Publishes the current counters of a live flow.
    pub(crate) fn update_flow(&self, id: u64, counters: &FlowCounters) {
        if let Some(slot) = self.lock().live.get_mut(&id) {
            *slot = *counters;
        }
    }

    /// Moves a flow's final counters into the running total.
    pub(crate) fn close_flow(&self, id: u64, counters: &FlowCounters, expired: bool) {
        let mut book = self.lock();
        book.live.remove(&id);
        book.retired.add(counters);
        if expired {
            book.flows_expired += 1;
        }
    }

    /// Counts a datagram from a client no flow could be opened for.
    pub(crate) fn refuse_flow(&self) {
        self.lock().flows_refused += 1;
    }

    /// Counts an upstream datagram dropped at a full hand-over queue.
    pub(crate) fn drop_backlog(&self) {
        self.lock().retired.upstream.dropped_backlog += 1;
    }

    /// Counts a failed read on the listening socket.
    pub(crate) fn listen_recv_error(&self) {
        self.lock().retired.upstream.recv_errors += 1;
    }

    /// The sum over all flows, live and ended.
    pub(crate) fn snapshot(&self, cut: bool) -> ImpairStats {
        let book = self.lock();
        let mut total = book.retired;
        for counters in book.live.values() {
            total.add(counters);
        }
        ImpairStats {
            upstream: total.upstream,
            downstream: total.downstream,
            flows_active: book.live.len() as u64,
            flows_opened: book.flows_opened,
            flows_expired: book.flows_expired,
            flows_refused: book.flows_refused,
            cut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_live_and_retired() {
        let book = StatsBook::default();
        book.open_flow(0);
        book.open_flow(1);
        let mut a = FlowCounters::default();
        a.upstream.link.sent = 3;
        a.upstream.forwarded = 2;
        a.downstream.link.bytes_out = 10;
        book.update_flow(0, &a);
        book.update_flow(1, &a);
        book.update_flow(7, &a); // unknown flow: ignored
        book.drop_backlog();
        book.refuse_flow();
        let s = book.snapshot(false);
        assert_eq!(s.upstream.link.sent, 6);
        assert_eq!(s.upstream.forwarded, 4);
        assert_eq!(s.upstream.dropped_backlog, 1);
        assert_eq!(s.upstream.received(), 7);
        assert_eq!(s.downstream.link.bytes_out, 20);
        assert_eq!((s.flows_active, s.flows_opened, s.flows_refused), (2, 2, 1));

        book.close_flow(0, &a, true);
        let s = book.snapshot(true);
        assert_eq!(s.upstream.link.sent, 6, "closing keeps the counters");
        assert_eq!((s.flows_active, s.flows_expired), (1, 1));
        assert!(s.cut);
        assert!(s.to_string().contains("forwarded=4"));
    }
}
