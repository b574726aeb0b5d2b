//! The systems the harness compares, and which workloads each takes part in.

use std::fmt;

use clap::ValueEnum;
use serde::Serialize;

use crate::transport::Delivery;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// surelink, encrypted (the default configuration).
    Surelink,
    /// surelink with `Security::InsecurePlaintext`: the cost of encryption.
    SurelinkPlaintext,
    /// surelink with `Delivery::Deadline(3 × RTT)` on its channel: deadline
    /// workload only.
    SurelinkDeadline,
    /// quinn: one bidirectional stream, length-prefixed messages.
    Quinn,
    /// quinn: QUIC datagrams (unreliable), real-time workload only.
    QuinnDatagram,
    /// KCP (`tokio_kcp`), fast mode.
    Kcp,
    /// SRT (Debian's srt-tools).
    Srt,
    /// TCP with `TCP_NODELAY`.
    Tcp,
    /// Raw UDP, no reliability.
    Udp,
}

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// N MiB over clean loopback.
    Bulk,
    /// 64-byte messages as fast as possible.
    Small,
    /// 1000 msg/s of 200 bytes through the impairer.
    Realtime,
    /// The real-time stream over two impaired paths, the primary cut
    /// mid-run (single path for peers without multipath).
    Failover,
    /// The real-time stream with a deadline of 3 × RTT: surelink's deadline
    /// mode against SRT live at the same latency.
    Deadline,
    /// Durable sessions (`--state`): throughput per durability policy and
    /// restart → resumed delivery (surelink only; see `durable`).
    Durable,
}

impl System {
    /// The name used on the command line, in tables and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            System::Surelink => "surelink",
            System::SurelinkPlaintext => "surelink-plaintext",
            System::SurelinkDeadline => "surelink-deadline",
            System::Quinn => "quinn",
            System::QuinnDatagram => "quinn-datagram",
            System::Kcp => "kcp",
            System::Srt => "srt",
            System::Tcp => "tcp",
            System::Udp => "udp",
        }
    }

    /// Whether the system promises to deliver every message.
    pub fn delivery(self) -> Delivery {
        match self {
            System::Udp | System::QuinnDatagram | System::SurelinkDeadline => Delivery::Unreliable,
            _ => Delivery::Reliable,
        }
    }

    /// `None` if the system takes part in `workload`, otherwise why not.
    pub fn not_applicable(self, workload: Workload) -> Option<&'static str> {
        match (self, workload) {
            (System::QuinnDatagram, Workload::Bulk | Workload::Small) => {
                Some("unreliable datagrams: real-time workload only")
            }
            (System::Tcp, Workload::Realtime | Workload::Failover) => {
                Some("the impairer forwards UDP only, so TCP cannot cross it")
            }
            (System::SurelinkDeadline, Workload::Deadline) | (System::Srt, Workload::Deadline) => {
                None
            }
            (System::SurelinkDeadline, _) => Some("deadline workload only"),
            (_, Workload::Deadline) => {
                Some("the deadline workload compares surelink's deadline mode with SRT live")
            }
            (System::SurelinkPlaintext, Workload::Failover) => {
                Some("failover is measured with the default (encrypted) configuration")
            }
            (System::QuinnDatagram, Workload::Failover) => {
                Some("unreliable: the failover comparison uses quinn's reliable stream")
            }
            _ => None,
        }
    }

    /// A reliable peer surelink's real-time targets compare against.
    pub fn is_reliable_peer(self) -> bool {
        matches!(
            self,
            System::Quinn | System::Kcp | System::Srt | System::Tcp
        )
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
