//! The driver's datagram I/O: the [`DatagramIo`] trait, its UDP
//! implementation [`UdpIo`], and creating UDP sockets (large kernel buffers,
//! non-blocking). The other implementation is the simulated network's socket
//! (`crate::sim`).
//!
//! The driver is generic over the trait, so each backend gets its own
//! monomorphised driver: no dynamic dispatch and no extra copy per datagram.
//!
//! The trait moves datagrams in batches: one `try_send` writes a run of
//! datagrams of equal size (the last may be shorter) to one destination, one
//! `try_recv` reads whatever one system call returns. [`UdpIo`] does this with
//! the `quinn-udp` crate: on Linux, UDP GSO (`UDP_SEGMENT`) on send and GRO
//! (`UDP_GRO`) plus `recvmmsg` on receive; elsewhere, whatever that crate
//! supports, down to one datagram per call. When the kernel refuses GSO
//! (`EIO` on some devices), `quinn-udp` lowers [`DatagramIo::max_segments`]
//! to 1 and the driver goes on one datagram at a time. With
//! [`EndpointConfig::batched_io`](crate::EndpointConfig::batched_io) off,
//! [`UdpIo`] uses tokio's plain `try_send_to` / `try_recv_from` instead.
//!
//! `try_recv` hands over each datagram in a buffer of its own, which the
//! caller keeps (the core decrypts it in place and delivers whole messages
//! as slices of it). [`UdpIo`] receives into buffers of [`RECV_BUFFER`]
//! bytes. One that comes back well filled (a GRO batch) is handed out, its
//! datagrams split off it without a copy; before the next receive it is
//! taken back if nothing refers to it any more (else a new one is
//! allocated) and zeroed again, as safe Rust cannot receive into
//! uninitialised memory. The datagrams of one that holds less than
//! [`HAND_OUT_AT`] bytes (ACKs, a lone datagram) are copied out, back to
//! back into a shared block that is likewise taken back once its datagrams
//! are gone: zeroing a whole buffer for them would cost more than the copy,
//! and allocating one buffer per datagram too.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::BytesMut;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Size of one receive buffer: the largest UDP payload, which is also the
/// largest run of datagrams GRO coalesces into one buffer.
const RECV_BUFFER: usize = 65_536;
/// Receive buffers handed to one `recvmmsg` when batching (1 MiB in all).
const RECV_BUFFERS: usize = 16;
/// A receive buffer that came back with at least this many bytes is handed
/// out with its datagrams (and replaced); below, they are copied out of it.
/// The choice weighs zeroing a whole buffer again against copying what this
/// one holds; a quarter is a judgement, not a measured crossover.
const HAND_OUT_AT: usize = RECV_BUFFER / 4;
/// Size of the blocks the datagrams of sparsely filled receive buffers are
/// copied into.
const COPY_BLOCK: usize = RECV_BUFFER;
/// Most bytes in one GSO send: the 16-bit UDP length minus the UDP and IPv6
/// headers (IPv4's limit, 65,507, is higher).
pub(crate) const MAX_SEND_BYTES: usize = u16::MAX as usize - 48;

/// Where an endpoint's driver reads and writes datagrams: one or more local
/// sockets, numbered from 0 (the index the core's paths use), with tokio
/// readiness. All methods are non-blocking.
pub(crate) trait DatagramIo: Send + Sync + 'static {
    /// How many local sockets there are (at least one).
    fn sockets(&self) -> usize;

    /// Most datagrams one [`try_send`](DatagramIo::try_send) on socket
    /// `local` may carry now (1: no batching). It may drop after a send
    /// error (the kernel refused segmentation offload).
    fn max_segments(&self, local: usize) -> usize;

    /// Writes `data` to `dest` from socket `local` in one call: datagrams of
    /// `segment` bytes back to back, the last one possibly shorter, at most
    /// [`max_segments`](DatagramIo::max_segments) of them and at most
    /// [`MAX_SEND_BYTES`] in all when there are several. Fails with
    /// [`io::ErrorKind::WouldBlock`] when the socket cannot take them now
    /// (then none was sent).
    fn try_send(
        &self,
        local: usize,
        dest: SocketAddr,
        data: &[u8],
        segment: usize,
    ) -> io::Result<()>;

    /// Reads what one call returns from socket `local` (one or more
    /// datagrams) and hands each datagram, in a buffer of its own, with its
    /// sender to `sink`: how many there were, or
    /// [`io::ErrorKind::WouldBlock`] when none is waiting.
    fn try_recv(
        &mut self,
        local: usize,
        sink: impl FnMut(SocketAddr, BytesMut),
    ) -> io::Result<usize>;

    /// Ready when some socket may have a datagram to read.
    fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ready when some socket may take a datagram.
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// The real backend: tokio UDP sockets, batched through `quinn-udp` or one
/// datagram per system call.
#[derive(Debug)]
pub(crate) struct UdpIo {
    sockets: Vec<UdpSocket>,
    /// One `quinn-udp` state per socket when batching; `None`: plain calls.
    batch: Option<Vec<UdpSocketState>>,
    /// Receive buffers, [`RECV_BUFFER`] initialised bytes each
    /// ([`RECV_BUFFERS`] of them when batching, else one); one handed out
    /// is left empty, still holding its allocation, until the next receive
    /// makes it whole again.
    recv_bufs: Vec<BytesMut>,
    /// Where the datagrams of sparsely filled receive buffers are copied.
    copies: BytesMut,
    /// Per receive buffer: what `recvmmsg` put there.
    recv_meta: Vec<RecvMeta>,
}

impl UdpIo {
    /// Drives `sockets`, batching if `batched` and `quinn-udp` can set the
    /// sockets up (otherwise one datagram per call, logged).
    pub(crate) fn new(sockets: Vec<UdpSocket>, batched: bool) -> Self {
        let batch = if batched {
            match sockets
                .iter()
                .map(|s| UdpSocketState::new(s.into()))
                .collect::<io::Result<Vec<_>>>()
            {
                Ok(states) => Some(states),
                Err(e) => {
                    tracing::warn!(error = %e, "batched UDP I/O unavailable; one datagram per system call");
                    None
                }
            }
        } else {
            None
        };
        let buffers = if batch.is_some() { RECV_BUFFERS } else { 1 };
        if let Some(state) = batch.as_ref().and_then(|states| states.first()) {
            tracing::debug!(
                gso_segments = state.max_gso_segments(),
                gro_segments = state.gro_segments(),
                "batched UDP I/O"
            );
        }
        Self {
            sockets,
            batch,
            recv_bufs: (0..buffers)
                .map(|_| BytesMut::zeroed(RECV_BUFFER))
                .collect(),
            recv_meta: vec![RecvMeta::default(); buffers],
            copies: BytesMut::new(),
        }
    }

    /// The socket for `local` (the last one if out of range).
    fn socket(&self, local: usize) -> &UdpSocket {
        &self.sockets[local.min(self.sockets.len() - 1)]
    }

    /// Ready as soon as `poll` says any one socket is.
    fn poll_any(
        &self,
        mut poll: impl FnMut(&UdpSocket) -> Poll<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        self.sockets
            .iter()
            .find_map(|s| match poll(s) {
                Poll::Ready(r) => Some(Poll::Ready(r)),
                Poll::Pending => None,
            })
            .unwrap_or(Poll::Pending)
    }
}

impl DatagramIo for UdpIo {
    fn sockets(&self) -> usize {
        self.sockets.len()
    }

    fn max_segments(&self, local: usize) -> usize {
        self.batch
            .as_ref()
            .and_then(|states| states.get(local))
            .map_or(1, UdpSocketState::max_gso_segments)
    }

    fn try_send(
        &self,
        local: usize,
        dest: SocketAddr,
        data: &[u8],
        segment: usize,
    ) -> io::Result<()> {
        let socket = self.socket(local);
        let state = self.batch.as_ref().and_then(|states| states.get(local));
        let Some(state) = state else {
            return socket.try_send_to(data, dest).map(drop);
        };
        let transmit = Transmit {
            destination: dest,
            ecn: None,
            contents: data,
            segment_size: (data.len() > segment).then_some(segment),
            src_ip: None,
        };
        socket.try_io(Interest::WRITABLE, || {
            state.try_send(socket.into(), &transmit)
        })
    }

    fn try_recv(
        &mut self,
        local: usize,
        mut sink: impl FnMut(SocketAddr, BytesMut),
    ) -> io::Result<usize> {
        for buf in &mut self.recv_bufs {
            make_whole(buf);
        }
        let socket = &self.sockets[local];
        let copies = &mut self.copies;
        let Some(state) = self.batch.as_ref().and_then(|states| states.get(local)) else {
            let (n, from) = socket.try_recv_from(&mut self.recv_bufs[0])?;
            return Ok(hand_out(
                &mut self.recv_bufs[0],
                copies,
                n,
                n,
                from,
                &mut sink,
            ));
        };
        let mut chunks = self.recv_bufs.iter_mut();
        let mut bufs: [IoSliceMut<'_>; RECV_BUFFERS] = std::array::from_fn(|_| {
            IoSliceMut::new(chunks.next().map_or(&mut [][..], |b| &mut b[..]))
        });
        let meta = &mut self.recv_meta;
        let filled = socket.try_io(Interest::READABLE, || {
            state.recv(socket.into(), &mut bufs, meta)
        })?;
        let mut datagrams = 0;
        for (buf, meta) in self.recv_bufs.iter_mut().zip(meta.iter()).take(filled) {
            // GRO: several datagrams of `stride` bytes, the last maybe shorter.
            datagrams += hand_out(buf, copies, meta.len, meta.stride, meta.addr, &mut sink);
        }
        Ok(datagrams)
    }

    fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_any(|s| s.poll_recv_ready(cx))
    }

    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_any(|s| s.poll_send_ready(cx))
    }
}

/// Makes `buf` a receive buffer of [`RECV_BUFFER`] initialised bytes again
/// after its datagrams were handed out: its own allocation if nothing
/// refers to it any more, else a new one.
fn make_whole(buf: &mut BytesMut) {
    if buf.len() == RECV_BUFFER {
        return;
    }
    buf.clear();
    if !buf.try_reclaim(RECV_BUFFER) {
        *buf = BytesMut::with_capacity(RECV_BUFFER);
    }
    buf.resize(RECV_BUFFER, 0);
}

/// Hands the datagrams that the first `len` bytes of `buf` hold, `stride`
/// bytes each (the last may be shorter), to `sink` from `from`; returns how
/// many there were. A well-filled buffer is handed out, its datagrams split
/// off it (`buf` is left empty, for [`make_whole`]); otherwise they are
/// copied into `copies` and split off there, and `buf` stays as it is, to
/// be received into again.
fn hand_out(
    buf: &mut BytesMut,
    copies: &mut BytesMut,
    len: usize,
    stride: usize,
    from: SocketAddr,
    sink: &mut impl FnMut(SocketAddr, BytesMut),
) -> usize {
    let len = len.min(buf.len());
    let stride = stride.max(1);
    if len < HAND_OUT_AT {
        let datagrams = buf[..len].chunks(stride);
        let count = datagrams.len();
        for datagram in datagrams {
            if !copies.try_reclaim(datagram.len()) {
                *copies = BytesMut::with_capacity(COPY_BLOCK.max(datagram.len()));
            }
            copies.extend_from_slice(datagram);
            sink(from, copies.split());
        }
        return count;
    }
    buf.truncate(len);
    let mut count = 0;
    while !buf.is_empty() {
        sink(from, buf.split_to(stride.min(buf.len())));
        count += 1;
    }
    count
}

/// Binds a non-blocking UDP socket to `addr`, asking for `buffer_size` bytes of
/// kernel send and receive buffer. A refused buffer size is logged, not fatal.
pub(crate) fn bind_udp(addr: SocketAddr, buffer_size: usize) -> io::Result<std::net::UdpSocket> {
    let mut sockets = bind_udp_group(addr, buffer_size, 1)?;
    Ok(sockets.remove(0))
}

/// Binds `count` (at least one) non-blocking UDP sockets to `addr`, asking
/// for `buffer_size` bytes of kernel send and receive buffer each (a refused
/// size is logged, not fatal). Several share the address through
/// `SO_REUSEPORT` (Linux: the kernel spreads peers over them by a hash of
/// the addresses); with port 0 the first picks the port and the others join it.
///
/// `SO_REUSEPORT` would also let another process of the same user join a
/// port it binds the same way, and take a share of its peers. So before it
/// binds a given port for several sockets, it binds it once without the
/// option and lets it go: a port held by anyone fails with
/// [`io::ErrorKind::AddrInUse`], as it does for one socket.
pub(crate) fn bind_udp_group(
    addr: SocketAddr,
    buffer_size: usize,
    count: usize,
) -> io::Result<Vec<std::net::UdpSocket>> {
    if count > 1 && addr.port() != 0 {
        drop(bind_udp(addr, 0)?);
    }
    let mut sockets: Vec<std::net::UdpSocket> = Vec::with_capacity(count);
    let mut bind_to = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        configure(&socket, buffer_size);
        socket.set_nonblocking(true)?;
        if count > 1 {
            share_port(&socket)?;
        }
        socket.bind(&bind_to.into())?;
        let socket: std::net::UdpSocket = socket.into();
        bind_to = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Lets several sockets bind the same address (`SO_REUSEPORT`).
#[cfg(target_os = "linux")]
fn share_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

/// Several sockets per address are only made on Linux
/// ([`EndpointConfig::driver_count`](crate::EndpointConfig::driver_count)).
#[cfg(not(target_os = "linux"))]
fn share_port(_socket: &Socket) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "several sockets on one address need Linux",
    ))
}

/// The receive buffer the kernel granted `socket`, as `SO_RCVBUF` reports it
/// (on Linux twice the size asked for, the kernel's own accounting, capped by
/// `net.core.rmem_max`); `None` if it does not say.
pub(crate) fn granted_recv_buffer(socket: &std::net::UdpSocket) -> Option<usize> {
    socket2::SockRef::from(socket).recv_buffer_size().ok()
}

/// Raises the kernel buffers of an existing socket and makes it non-blocking.
pub(crate) fn prepare_std(
    socket: std::net::UdpSocket,
    buffer_size: usize,
) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::from(socket);
    configure(&socket, buffer_size);
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Whether a receive buffer that `SO_RCVBUF` reports as `granted` falls
/// short of `asked`: Linux grants twice the size asked for (its own
/// bookkeeping counted in) and reports that, so a full grant reads 2 × asked.
fn recv_buffer_falls_short(granted: usize, asked: usize) -> bool {
    let full = if cfg!(target_os = "linux") {
        asked.saturating_mul(2)
    } else {
        asked
    };
    granted < full
}

/// The smallest receive buffer granted to `sockets` (as `SO_RCVBUF`
/// reports it), if it falls short of the `asked` bytes: the kernel capped
/// it (`net.core.rmem_max` on Linux, for a process without
/// `CAP_NET_ADMIN`).
pub(crate) fn capped_recv_buffer(sockets: &[&std::net::UdpSocket], asked: usize) -> Option<usize> {
    let granted = sockets
        .iter()
        .filter_map(|s| granted_recv_buffer(s))
        .min()?;
    (asked > 0 && recv_buffer_falls_short(granted, asked)).then_some(granted)
}

fn configure(socket: &Socket, buffer_size: usize) {
    if buffer_size == 0 {
        return;
    }
    if let Err(e) = socket.set_recv_buffer_size(buffer_size) {
        tracing::warn!(error = %e, buffer_size, "could not set SO_RCVBUF");
    }
    #[cfg(target_os = "linux")]
    if socket
        .recv_buffer_size()
        .is_ok_and(|granted| recv_buffer_falls_short(granted, buffer_size))
    {
        // Capped at net.core.rmem_max: a process with CAP_NET_ADMIN may go
        // beyond it (SO_RCVBUFFORCE); others keep what they were granted.
        if let Err(e) = nix::sys::socket::setsockopt(
            socket,
            nix::sys::socket::sockopt::RcvBufForce,
            &buffer_size,
        ) {
            tracing::debug!(error = %e, buffer_size, "SO_RCVBUFFORCE refused");
        }
    }
    if let Err(e) = socket.set_send_buffer_size(buffer_size) {
        tracing::warn!(error = %e, buffer_size, "could not set SO_SNDBUF");
    }
    tracing::debug!(
        requested = buffer_size,
        rcvbuf = socket.recv_buffer_size().ok(),
        sndbuf = socket.send_buffer_size().ok(),
        "socket buffers"
    );
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    #[test]
    fn a_buffer_falls_short_only_below_a_full_grant() {
        let asked = 8 << 20;
        let full = if cfg!(target_os = "linux") {
            2 * asked
        } else {
            asked
        };
        assert!(!recv_buffer_falls_short(full, asked));
        assert!(recv_buffer_falls_short(full - 1, asked));
        // Linux's default cap (net.core.rmem_max = 208 KiB) reported doubled.
        assert!(recv_buffer_falls_short(2 * 212_992, asked));
    }

    /// The next datagrams `io` reads (one call), with their contents.
    async fn recv_one_call(io: &mut UdpIo) -> Vec<BytesMut> {
        for _ in 0..100 {
            poll_fn(|cx| io.poll_recv_ready(cx)).await.unwrap();
            let mut got = Vec::new();
            match io.try_recv(0, |_, data| got.push(data)) {
                Ok(_) => return got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("nothing received");
    }

    #[test]
    fn a_batch_is_split_at_its_stride_whether_copied_or_handed_out() {
        let from = SocketAddr::from(([127, 0, 0, 1], 9));
        for (len, stride) in [(HAND_OUT_AT - 1, 1400), (RECV_BUFFER - 7, 1400)] {
            let mut buf = BytesMut::zeroed(RECV_BUFFER);
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (i / stride) as u8;
            }
            let mut got = Vec::new();
            let mut copies = BytesMut::new();
            let count = hand_out(&mut buf, &mut copies, len, stride, from, &mut |_, d| {
                got.push(d)
            });
            assert_eq!(count, len.div_ceil(stride));
            assert_eq!(got.len(), count);
            for (i, d) in got.iter().enumerate() {
                let expected = stride.min(len - i * stride);
                assert_eq!(d.len(), expected, "datagram {i} of {len} bytes");
                assert!(
                    d.iter().all(|&b| b == i as u8),
                    "datagram {i} of {len} bytes"
                );
            }
            let handed_out = len >= HAND_OUT_AT;
            assert_eq!(buf.is_empty(), handed_out, "{len} bytes");
        }
    }

    #[test]
    fn buffers_come_back_for_the_next_receive_zeroed_once_their_datagrams_are_gone() {
        let from = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut copies = BytesMut::new();
        for keep_one in [true, false] {
            let mut buf = BytesMut::zeroed(RECV_BUFFER);
            buf.fill(0xee);
            let at = buf.as_ptr();
            let mut got = Vec::new();
            hand_out(
                &mut buf,
                &mut copies,
                RECV_BUFFER,
                1400,
                from,
                &mut |_, d| got.push(d),
            );
            let kept = if keep_one { got.pop() } else { None };
            drop(got);
            make_whole(&mut buf);
            assert_eq!(buf.len(), RECV_BUFFER);
            // A datagram still alive keeps the buffer: a new one is made.
            // Otherwise the buffer itself comes back.
            assert_eq!(buf.as_ptr() == at, kept.is_none());
            assert!(buf.iter().all(|&b| b == 0), "no stale byte");
        }

        // Copies share a block, taken back once its datagrams are gone.
        let mut small = BytesMut::zeroed(RECV_BUFFER);
        small[..1000].fill(7);
        let mut got = Vec::new();
        hand_out(&mut small, &mut copies, 300, 100, from, &mut |_, d| {
            got.push(d)
        });
        assert_eq!(got.len(), 3);
        let block = got[0].as_ptr();
        assert_eq!(got[1].as_ptr(), block.wrapping_add(100), "back to back");
        drop(got);
        // The next copies follow in the same block; once it is full, it is
        // taken back from its start.
        let mut next = block.wrapping_add(300);
        let reused = (0..100).any(|_| {
            let mut at = None;
            hand_out(&mut small, &mut copies, 1000, 1000, from, &mut |_, d| {
                assert_eq!(d, vec![7; 1000]);
                at = Some(d.as_ptr());
            });
            if at == Some(block) {
                return true;
            }
            assert_eq!(at, Some(next));
            next = next.wrapping_add(1000);
            false
        });
        assert!(reused, "the block is used again");
    }

    #[tokio::test]
    async fn a_receive_buffer_used_again_holds_only_the_new_datagram() {
        for batched in [true, false] {
            let rx = UdpSocket::from_std(bind_udp(([127, 0, 0, 1], 0).into(), 0).unwrap()).unwrap();
            let to = rx.local_addr().unwrap();
            let tx = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
            let mut io = UdpIo::new(vec![rx], batched);
            // Below `HAND_OUT_AT`, copied out: the next datagram lands in the
            // same buffer. Above, handed out: the next lands in a new one.
            for long in [HAND_OUT_AT - 1, HAND_OUT_AT + 1000] {
                for (len, byte) in [(long, 0xee), (5, 1), (long / 2, 0xdd), (1, 2)] {
                    tx.send_to(&vec![byte; len], to).unwrap();
                    let got = recv_one_call(&mut io).await;
                    assert_eq!(got.len(), 1, "batched {batched}, {len} bytes");
                    assert_eq!(got[0], vec![byte; len], "batched {batched}, {len} bytes");
                }
            }
        }
    }
}
