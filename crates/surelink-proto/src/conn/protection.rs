//! Per-connection packet protection: sealing, opening, key updates, anti-replay.
//!
//! In encrypted mode every Data packet's payload is sealed under the current
//! send key; the header's key-phase flag tells the receiver which key. The
//! sender rotates its key after `rekey_after_bytes` or `rekey_after`; the
//! receiver derives the next key when the phase flips and keeps the previous
//! one for packets still in flight. In plaintext mode nothing is sealed. In
//! both modes a packet number is accepted only once ([`ReplayWindow`]).

use std::time::{Duration, Instant};

use crate::crypto::{PacketKey, ReplayWindow, TAG_LEN};
use crate::wire::{Header, FLAG_KEY_PHASE, FLAG_PLAINTEXT};

/// Why an incoming packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Authentication failed (forged, corrupted, or wrong key).
    Authentication,
    /// The packet number was accepted before (or is too old).
    Replay,
    /// Protection mode of the packet does not match the connection's.
    Mode,
}

#[derive(Debug)]
struct Keys {
    send: PacketKey,
    send_phase: bool,
    send_bytes: u64,
    send_since: Instant,
    recv: PacketKey,
    recv_phase: bool,
    recv_prev: Option<PacketKey>,
    rekey_after_bytes: u64,
    rekey_after: Duration,
}

/// Packet protection state of one connection.
#[derive(Debug)]
pub struct Protection {
    keys: Option<Keys>,
    plaintext: bool,
    replay: ReplayWindow,
    key_updates: u64,
}

impl Protection {
    /// Protection before the handshake has produced keys.
    pub fn new(plaintext: bool) -> Self {
        Self {
            keys: None,
            plaintext,
            replay: ReplayWindow::default(),
            key_updates: 0,
        }
    }

    /// Installs the handshake's keys.
    pub fn install(
        &mut self,
        now: Instant,
        (send, recv): ([u8; 32], [u8; 32]),
        rekey_after_bytes: u64,
        rekey_after: Duration,
    ) {
        self.keys = Some(Keys {
            send: PacketKey::new(send),
            send_phase: false,
            send_bytes: 0,
            send_since: now,
            recv: PacketKey::new(recv),
            recv_phase: false,
            recv_prev: None,
            rekey_after_bytes,
            rekey_after,
        });
    }

    /// True once Data packets can be sent and received.
    pub fn is_ready(&self) -> bool {
        self.plaintext || self.keys.is_some()
    }

    /// Bytes each sealed packet grows by.
    pub fn overhead(&self) -> usize {
        if self.plaintext {
            0
        } else {
            TAG_LEN
        }
    }

    /// Key updates performed (sent and received).
    pub fn key_updates(&self) -> u64 {
        self.key_updates
    }

    /// Header flags for the next Data packet; rotates the send key when due.
    pub fn send_flags(&mut self, now: Instant) -> u8 {
        if self.plaintext {
            return FLAG_PLAINTEXT;
        }
        let Some(k) = self.keys.as_mut() else {
            return 0;
        };
        if k.send_bytes >= k.rekey_after_bytes
            || now.saturating_duration_since(k.send_since) >= k.rekey_after
        {
            k.send = k.send.next();
            k.send_phase = !k.send_phase;
            k.send_bytes = 0;
            k.send_since = now;
            self.key_updates += 1;
        }
        if k.send_phase {
            FLAG_KEY_PHASE
        } else {
            0
        }
    }

    /// Seals `packet[header_len..]` (a Data packet) in place.
    pub fn seal(&mut self, pn: u64, packet: &mut Vec<u8>, header_len: usize) {
        if let Some(k) = self.keys.as_mut() {
            k.send.seal(pn, packet, header_len);
            k.send_bytes += packet.len() as u64;
        }
    }

    /// Authenticates a Data packet and decrypts its payload in place:
    /// `packet[..header_len]` is the header, the rest the sealed payload and
    /// its tag. Returns the plaintext's length; the plaintext then starts at
    /// `header_len`. On failure the payload's bytes are unspecified (`ring`
    /// zeroes what it decrypted) and must not be read.
    pub fn open(
        &mut self,
        header: &Header,
        packet: &mut [u8],
        header_len: usize,
    ) -> Result<usize, OpenError> {
        if (header.flags & FLAG_PLAINTEXT != 0) != self.plaintext {
            return Err(OpenError::Mode);
        }
        if !self.replay.check(header.pn) {
            return Err(OpenError::Replay);
        }
        let (header_bytes, payload) = packet.split_at_mut(header_len);
        let len = if self.plaintext {
            payload.len()
        } else {
            let k = self.keys.as_mut().ok_or(OpenError::Authentication)?;
            let phase = header.flags & FLAG_KEY_PHASE != 0;
            if phase == k.recv_phase {
                k.recv
                    .open(header.pn, header_bytes, payload)
                    .map_err(|_| OpenError::Authentication)?
                    .len()
            } else {
                // Either the peer moved to the next key, or this is a late
                // packet under the previous one. A failed attempt garbles
                // the payload, so when a previous key is there to try second
                // it gets a copy (only packets of the other phase pay for it).
                let next = k.recv.next();
                let sealed = k.recv_prev.is_some().then(|| payload.to_vec());
                if let Ok(p) = next.open(header.pn, header_bytes, payload) {
                    let n = p.len();
                    k.recv_prev = Some(std::mem::replace(&mut k.recv, next));
                    k.recv_phase = phase;
                    self.key_updates += 1;
                    n
                } else {
                    let (Some(prev), Some(sealed)) = (k.recv_prev.as_ref(), sealed) else {
                        return Err(OpenError::Authentication);
                    };
                    payload.copy_from_slice(&sealed);
                    prev.open(header.pn, header_bytes, payload)
                        .map_err(|_| OpenError::Authentication)?
                        .len()
                }
            }
        };
        self.replay.record(header.pn);
        Ok(len)
    }
}
