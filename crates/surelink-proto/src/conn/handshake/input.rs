//! Handshake input: what Initial, Handshake, Retry and Reject packets do to
//! the connection.
//!
//! The messages themselves (Noise XX or plaintext, transport parameters,
//! reset tokens) are built and checked by [`super::Handshake`]; this module
//! applies their outcome: it learns the peer's parameters and connection id,
//! installs packet keys, takes the handshake RTT sample, moves the
//! connection to established, or refuses the peer (Reject) and closes.
//!
//! Driven by the conductor's `handle_datagram_on` for every unprotected
//! packet that arrived on the first path.

use std::time::{Duration, Instant};

use super::HandshakeFailure;
use crate::conn::{Connection, ConnectionError, Side};
use crate::wire::{Frame, FrameIter, Header, PacketKind, FLAG_PLAINTEXT};

impl Connection {
    /// Handshake, Retry and Reject packets: unprotected, and allowed to carry
    /// only HANDSHAKE, TOKEN (Initial, Retry), CLOSE (Reject) and PADDING.
    pub(in crate::conn) fn on_handshake_packet(
        &mut self,
        now: Instant,
        header: &Header,
        payload: &[u8],
        size: usize,
    ) {
        let mut message = None;
        let mut token = None;
        let mut close = None;
        for f in FrameIter::new(payload) {
            match f {
                Ok(Frame::Padding(_)) => {}
                Ok(Frame::Handshake(m)) if message.is_none() => message = Some(m),
                Ok(Frame::Token(t)) if token.is_none() => token = Some(t),
                Ok(Frame::Close { code, reason }) if close.is_none() => {
                    close = Some((code, reason))
                }
                _ => {
                    self.stats.malformed_packets += 1;
                    return;
                }
            }
        }
        // A Reject may come from a peer in the other mode: that is its point.
        if header.kind != PacketKind::Reject
            && (header.flags & FLAG_PLAINTEXT != 0) != self.handshake.is_plaintext()
        {
            self.stats.malformed_packets += 1;
            return;
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += size as u64;
        if !self.validated {
            self.amp_received += size as u64;
        }
        match (self.side, header.kind) {
            (_, PacketKind::Reject) => {
                if let Some((code, reason)) = close {
                    if !self.lifecycle.handshake_confirmed() {
                        self.last_received = now;
                        self.enter_closed(Some(ConnectionError::Rejected {
                            code,
                            reason: reason.to_owned(),
                        }));
                    }
                }
            }
            (Side::Client, PacketKind::Retry) => {
                // Until the server answers, a Retry's token replaces the one
                // we hold: a server still under load when our token expired
                // (its Initials lost in a burst for the token's lifetime)
                // answers with a fresh one. Only the first goes out at once;
                // a replacement waits for the handshake timer, so a server
                // that keeps answering Retry cannot make us repeat faster.
                if let Some(t) = token {
                    if self.lifecycle.is_handshaking() && self.retry_token.as_deref() != Some(t) {
                        if self.retry_token.is_none() {
                            self.pending.handshake = true;
                        }
                        self.retry_token = Some(t.to_vec());
                    }
                }
            }
            (Side::Server, PacketKind::Initial) => {
                let Some(m) = message else { return };
                self.last_received = now;
                if !self.lifecycle.is_handshaking() {
                    return;
                }
                if self.handshake_out.is_some() {
                    // Our answer was lost: send it again.
                    self.pending.handshake = true;
                    return;
                }
                match self.handshake.server_hello(
                    m,
                    self.local_cid,
                    self.local_params(),
                    &self.reset_token,
                ) {
                    Ok((params, answer)) => {
                        self.first_initial_us = Some(self.clock_us(now));
                        self.peer_params = Some(params);
                        self.peer_max_data = params.receive_window;
                        self.handshake_out = Some(answer);
                        self.pending.handshake = true;
                    }
                    Err(f) => self.reject(f),
                }
            }
            (Side::Server, PacketKind::Handshake) => {
                let Some(m) = message else { return };
                if !self.lifecycle.is_handshaking() {
                    // The client repeats its last message until it hears from us.
                    self.paths[0].ping = true;
                    return;
                }
                if self.handshake_out.is_none() {
                    return;
                }
                self.last_received = now;
                match self.handshake.server_finish(m) {
                    Ok(reset) => {
                        self.peer_reset_token = reset;
                        self.handshake_rtt_sample(now);
                        if let (Some(p), Some(at)) = (self.peer_params, self.first_initial_us) {
                            self.provisional_offset(p.clock_origin_us, at);
                        }
                        self.install_keys(now);
                        self.validated = true;
                        self.handshake_out = None;
                        self.pending.handshake = false;
                        self.paths[0].ping = true;
                        // The client's last message is in: confirmed on both sides.
                        self.enter_established(true);
                    }
                    Err(f) => self.reject(f),
                }
            }
            (Side::Client, PacketKind::Handshake) => {
                let Some(m) = message else { return };
                if !self.lifecycle.is_handshaking() {
                    return;
                }
                self.last_received = now;
                match self.handshake.client_read_answer(m) {
                    Ok((cid, params, reset)) => {
                        self.peer_reset_token = reset;
                        self.handshake_rtt_sample(now);
                        self.handshake_sends = 0;
                        self.paths[0].pto_count = 0;
                        let local = self.clock_us(now);
                        self.provisional_offset(params.clock_origin_us, local);
                        self.peer_cid = cid;
                        self.peer_params = Some(params);
                        self.peer_max_data = params.receive_window;
                    }
                    Err(f) => return self.reject(f),
                }
                match self.handshake.client_complete(&self.reset_token) {
                    Ok(last) => {
                        self.install_keys(now);
                        self.handshake_out = Some(last);
                        self.pending.handshake = true;
                        self.paths[0].ping = true;
                        // Confirmed once the server's first protected packet arrives.
                        self.enter_established(false);
                    }
                    Err(f) => self.reject(f),
                }
            }
            _ => self.stats.malformed_packets += 1,
        }
    }

    /// The answer to our only handshake message measures the round trip.
    fn handshake_rtt_sample(&mut self, now: Instant) {
        if let (1, Some(sent)) = (self.handshake_sends, self.last_handshake_sent) {
            self.paths[0]
                .rtt
                .update(now.saturating_duration_since(sent), Duration::ZERO);
        }
    }

    /// Installs the packet keys the handshake produced.
    fn install_keys(&mut self, now: Instant) {
        if let Some(keys) = self.handshake.take_keys() {
            let (bytes, after) = self
                .handshake
                .config()
                .map_or((u64::MAX, Duration::MAX), |c| {
                    (c.rekey_after_bytes, c.rekey_after)
                });
            self.protection.install(now, keys, bytes, after);
        }
    }

    /// Refuses the handshake: tells the peer why, then closes.
    fn reject(&mut self, f: HandshakeFailure) {
        tracing::debug!(cid = self.local_cid, reason = %f.reason, "handshake refused");
        self.enter_refused(f.code, f.reason, f.error);
    }
}
