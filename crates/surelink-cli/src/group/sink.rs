//! [`DatagramSink`]: a group leader's datagram output (`recv --to udp://`).
//!
//! Each message leaves at once as one UDP datagram; the position is the
//! number of messages sent. A datagram cannot be taken back, so restoring
//! to the checkpoint only moves the count back: messages after the last
//! committed checkpoint are sent again by the next leader (at least once,
//! duplicates only after the watermark).

use std::io;
use std::net::{SocketAddr, UdpSocket};

use surelink_session::DurableSink;

/// Sends each delivered message as one datagram to a fixed address.
#[derive(Debug)]
pub struct DatagramSink {
    socket: UdpSocket,
    target: SocketAddr,
    sent: u64,
}

impl DatagramSink {
    /// A sink sending from `socket` to `target`.
    pub fn new(socket: UdpSocket, target: SocketAddr) -> Self {
        DatagramSink {
            socket,
            target,
            sent: 0,
        }
    }
}

impl DurableSink for DatagramSink {
    fn write(&mut self, _channel: u64, data: &[u8]) -> io::Result<()> {
        if let Err(e) = self.socket.send_to(data, self.target) {
            // As without a group: a datagram the OS refuses is lost, not fatal.
            tracing::warn!(target = %self.target, len = data.len(), error = %e, "cannot forward a datagram");
        }
        self.sent += 1;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn position(&self) -> u64 {
        self.sent
    }

    fn restore(&mut self, position: u64) -> io::Result<()> {
        self.sent = position;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("udp://{}", self.target)
    }
}
