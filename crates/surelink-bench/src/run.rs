//! Runs one workload for one system, each in a fresh tokio runtime (two
//! worker threads, the size of the machine the figures come from), so that
//! nothing a previous run left behind (timers, sessions, sockets) competes
//! with the next one.

use std::future::Future;
use std::io;
use std::time::Duration;

use crate::system::System;
use crate::transport::{kcp, quic, srt, surelink, tcp, udp, Mode, Route};
use crate::workload::{self, BulkRun, RtParams, RtRun, SmallRun};

/// Builds a runtime, runs `f` on it bounded by `limit`, and tears the
/// runtime down (waiting at most 2 s for its tasks).
pub(crate) fn isolated<T, F, Fut>(limit: Duration, f: F) -> io::Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        match tokio::time::timeout(limit, f()).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("gave up after {limit:?}"),
            )),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

fn not_applicable(system: System) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{system} does not take part in this workload"),
    )
}

/// One bulk transfer of `bytes` over clean loopback.
pub fn bulk(system: System, bytes: u64, limit: Duration) -> io::Result<BulkRun> {
    let delivery = system.delivery();
    isolated(limit + Duration::from_secs(30), move || async move {
        let mode = Mode::Bulk;
        match system {
            System::Surelink => {
                workload::bulk(
                    surelink::open(false, None, mode).await?,
                    bytes,
                    delivery,
                    limit,
                )
                .await
            }
            System::SurelinkPlaintext => {
                workload::bulk(
                    surelink::open(true, None, mode).await?,
                    bytes,
                    delivery,
                    limit,
                )
                .await
            }
            System::Quinn => {
                let pair = quic::open_stream(mode, None).await?;
                workload::bulk(pair, bytes, delivery, limit).await
            }
            System::Kcp => {
                workload::bulk(kcp::open(mode, None).await?, bytes, delivery, limit).await
            }
            System::Tcp => workload::bulk(tcp::open(mode).await?, bytes, delivery, limit).await,
            System::Udp => workload::bulk(udp::open(None).await?, bytes, delivery, limit).await,
            System::Srt => srt::bulk(bytes, limit).await,
            System::QuinnDatagram | System::SurelinkDeadline => Err(not_applicable(system)),
        }
    })
}

/// One small-message run of `window` over clean loopback; with
/// `per_message`, every system hands over each message in its own call,
/// otherwise the senders batch 64 KiB of messages per call.
pub fn small(system: System, window: Duration, per_message: bool) -> io::Result<SmallRun> {
    isolated(window + Duration::from_secs(30), move || async move {
        let mode = if per_message {
            Mode::SmallPerMessage
        } else {
            Mode::Small
        };
        match system {
            System::Surelink => {
                workload::small(surelink::open(false, None, mode).await?, window).await
            }
            System::SurelinkPlaintext => {
                workload::small(surelink::open(true, None, mode).await?, window).await
            }
            System::Quinn => workload::small(quic::open_stream(mode, None).await?, window).await,
            System::Kcp => workload::small(kcp::open(mode, None).await?, window).await,
            System::Tcp => workload::small(tcp::open(mode).await?, window).await,
            System::Udp => workload::small(udp::open(None).await?, window).await,
            System::Srt => {
                let latency = srt::latency_for(Duration::ZERO);
                let lifetime = window + Duration::from_secs(30);
                workload::small(srt::open_live(None, latency, lifetime).await?, window).await
            }
            System::QuinnDatagram | System::SurelinkDeadline => Err(not_applicable(system)),
        }
    })
}

/// One real-time run through an impairer with `route`; `rtt` is the
/// round-trip time the route adds (SRT's latency is derived from it).
pub fn realtime(
    system: System,
    params: &RtParams,
    route: &Route,
    rtt: Duration,
) -> io::Result<RtRun> {
    let delivery = system.delivery();
    let secs = Duration::from_secs_f64(params.secs);
    isolated(secs + Duration::from_secs(60), move || async move {
        let mode = Mode::Realtime;
        let r = Some(route);
        match system {
            System::Surelink => {
                workload::realtime(surelink::open(false, r, mode).await?, params, delivery).await
            }
            System::SurelinkPlaintext => {
                workload::realtime(surelink::open(true, r, mode).await?, params, delivery).await
            }
            System::Quinn => {
                workload::realtime(quic::open_stream(mode, r).await?, params, delivery).await
            }
            System::QuinnDatagram => {
                workload::realtime(quic::open_datagrams(r).await?, params, delivery).await
            }
            System::Kcp => workload::realtime(kcp::open(mode, r).await?, params, delivery).await,
            System::Udp => workload::realtime(udp::open(r).await?, params, delivery).await,
            System::Srt => {
                let latency = srt::latency_for(rtt);
                let lifetime = secs + Duration::from_secs(60);
                let pair = srt::open_live(r, latency, lifetime).await?;
                workload::realtime(pair, params, delivery).await
            }
            System::Tcp | System::SurelinkDeadline => Err(not_applicable(system)),
        }
    })
}
