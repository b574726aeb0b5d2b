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
            System::Udp | System::QuinnDatagram => Delivery::Unreliable,
            _ => Delivery::Reliable,
        }
    }

    /// `None` if the system takes part in `workload`, otherwise why not.
    pub fn not_applicable(self, workload: Workload) -> Option<&'static str> {
        match (self, workload) {
            (System::QuinnDatagram, Workload::Bulk | Workload::Small) => {
                Some("unreliable datagrams: real-time workload only")
            }
            (System::Tcp, Workload::Realtime) => {
                Some("the impairer forwards UDP only, so TCP cannot cross it")
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
