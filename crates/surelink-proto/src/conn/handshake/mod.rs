//! The connection handshake: three messages, carried in HANDSHAKE frames.
//!
//! ```text
//! client                                   server
//!   Initial   [TOKEN] HANDSHAKE(m1 ⊃ CONNECT) PADDING  →
//!             ←  Handshake  HANDSHAKE(m2 ⊃ ACCEPT TOKEN)
//!   Handshake HANDSHAKE(m3 ⊃ TOKEN)                  →
//! ```
//!
//! In encrypted mode m1..m3 are the Noise `XX` messages and CONNECT / ACCEPT
//! ride in their payloads (authenticated; ACCEPT also encrypted). The TOKEN
//! frames of m2 and m3 carry each side's stateless reset token for the
//! connection id it issued (encrypted in Noise mode; see `crypto::ResetKey`). In plaintext
//! mode the messages are the payloads themselves. The client checks the
//! server's static key against the expected one after m2; the server checks the
//! client's against its allow-list after m3. Failures carry a CLOSE code and a
//! human-readable reason for a Reject packet.

mod input;

use crate::crypto::{CryptoConfig, Identity, NoiseHandshake, PublicKey, Security, RESET_TOKEN_LEN};
use crate::wire::{Frame, FrameIter, TransportParams};

use super::{close_code, ConnectionError};

/// A handshake failure: what to tell the peer and what to report locally.
#[derive(Debug, Clone)]
pub struct HandshakeFailure {
    /// CLOSE code for the Reject packet.
    pub code: u64,
    /// Reason for the Reject packet.
    pub reason: String,
    /// The local error.
    pub error: ConnectionError,
}

impl HandshakeFailure {
    fn failed(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self {
            code: close_code::HANDSHAKE_FAILED,
            error: ConnectionError::HandshakeFailed(reason.clone()),
            reason,
        }
    }
}

/// The cryptographic side of the handshake.
#[derive(Debug)]
enum Mode {
    Noise(Box<NoiseHandshake>),
    Plain,
}

/// Handshake progress of one connection.
#[derive(Debug)]
pub struct Handshake {
    mode: Option<Mode>,
    config: Option<CryptoConfig>,
    peer_key: Option<PublicKey>,
    keys: Option<([u8; 32], [u8; 32])>,
}

/// A stateless reset token.
pub type ResetToken = [u8; RESET_TOKEN_LEN];

fn encode(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in frames {
        f.encode(&mut v);
    }
    v
}

/// The reset token among the frames following the first of a handshake payload.
fn reset_token<'a>(
    frames: impl Iterator<Item = Result<Frame<'a>, crate::wire::WireError>>,
) -> Option<ResetToken> {
    frames.filter_map(Result::ok).find_map(|f| match f {
        Frame::Token(t) => t.try_into().ok(),
        _ => None,
    })
}

impl Handshake {
    /// A handshake for `security`; `identity` and `seed` are used in encrypted mode.
    pub fn new(
        security: &Security,
        identity: Option<&Identity>,
        initiator: bool,
        seed: [u8; 32],
    ) -> Result<Self, HandshakeFailure> {
        let (mode, config) = match security {
            Security::InsecurePlaintext => (Mode::Plain, None),
            Security::Encrypted(c) => {
                let id = identity.ok_or_else(|| HandshakeFailure::failed("no identity"))?;
                let hs = NoiseHandshake::new(initiator, id, c.psk.as_ref(), seed)
                    .map_err(|e| HandshakeFailure::failed(e.to_string()))?;
                (Mode::Noise(Box::new(hs)), Some(c.clone()))
            }
        };
        Ok(Self {
            mode: Some(mode),
            config,
            peer_key: None,
            keys: None,
        })
    }

    /// True in plaintext mode.
    pub fn is_plaintext(&self) -> bool {
        self.config.is_none()
    }

    /// The peer's authenticated static key, once known.
    pub fn peer_key(&self) -> Option<PublicKey> {
        self.peer_key
    }

    /// The rekey policy (encrypted mode).
    pub fn config(&self) -> Option<&CryptoConfig> {
        self.config.as_ref()
    }

    /// Takes the transport keys once the handshake finished (encrypted mode).
    pub fn take_keys(&mut self) -> Option<([u8; 32], [u8; 32])> {
        self.keys.take()
    }

    fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeFailure> {
        match self.mode.as_mut() {
            Some(Mode::Noise(hs)) => hs
                .write(payload)
                .map_err(|e| HandshakeFailure::failed(e.to_string())),
            Some(Mode::Plain) => Ok(payload.to_vec()),
            None => Err(HandshakeFailure::failed("handshake already finished")),
        }
    }

    fn read(&mut self, msg: &[u8]) -> Result<Vec<u8>, HandshakeFailure> {
        match self.mode.as_mut() {
            Some(Mode::Noise(hs)) => hs.read(msg).map_err(|_| {
                HandshakeFailure::failed(
                    "handshake authentication failed (pre-shared key mismatch or corrupt message)",
                )
            }),
            Some(Mode::Plain) => Ok(msg.to_vec()),
            None => Err(HandshakeFailure::failed("handshake already finished")),
        }
    }

    fn finish(&mut self) {
        if let Some(Mode::Noise(hs)) = self.mode.take() {
            self.peer_key = hs.remote_static();
            if hs.is_finished() {
                self.keys = Some(hs.split());
            }
        }
    }

    fn noise_peer(&self) -> Option<PublicKey> {
        match &self.mode {
            Some(Mode::Noise(hs)) => hs.remote_static(),
            _ => None,
        }
    }

    /// Client: the first message, carrying our parameters.
    pub fn client_hello(&mut self, params: TransportParams) -> Result<Vec<u8>, HandshakeFailure> {
        self.write(&encode(&[Frame::Connect(params)]))
    }

    /// Server: reads the first message; returns the client's parameters and
    /// the answer carrying ours, our connection id and its reset token.
    pub fn server_hello(
        &mut self,
        msg: &[u8],
        cid: u64,
        params: TransportParams,
        reset: &ResetToken,
    ) -> Result<(TransportParams, Vec<u8>), HandshakeFailure> {
        let payload = self.read(msg)?;
        let theirs = match FrameIter::new(&payload).next() {
            Some(Ok(Frame::Connect(p))) => p,
            _ => {
                return Err(HandshakeFailure::failed(
                    "first handshake message unreadable (pre-shared key on one side only?)",
                ))
            }
        };
        let answer = self.write(&encode(&[
            Frame::Accept { cid, params },
            Frame::Token(reset),
        ]))?;
        Ok((theirs, answer))
    }

    /// Client: reads the server's answer; returns its connection id,
    /// parameters and reset token (if it sent one).
    pub fn client_read_answer(
        &mut self,
        msg: &[u8],
    ) -> Result<(u64, TransportParams, Option<ResetToken>), HandshakeFailure> {
        let payload = self.read(msg)?;
        let mut frames = FrameIter::new(&payload);
        match frames.next() {
            Some(Ok(Frame::Accept { cid, params })) => Ok((cid, params, reset_token(frames))),
            _ => Err(HandshakeFailure::failed("server answer lacks ACCEPT")),
        }
    }

    /// Client: checks the server's key and writes the last message, carrying
    /// our reset token.
    pub fn client_complete(&mut self, reset: &ResetToken) -> Result<Vec<u8>, HandshakeFailure> {
        if let (Some(expected), Some(got)) = (
            self.config.as_ref().and_then(|c| c.peer_key),
            self.noise_peer(),
        ) {
            if expected != got {
                return Err(HandshakeFailure {
                    code: close_code::SERVER_KEY_MISMATCH,
                    reason: format!(
                        "the client expected server key {} but the server presented {}",
                        expected.fingerprint(),
                        got.fingerprint()
                    ),
                    error: ConnectionError::PeerKeyMismatch { expected, got },
                });
            }
        }
        let last = self.write(&encode(&[Frame::Token(reset)]))?;
        self.finish();
        Ok(last)
    }

    /// Server: reads the last message and checks the client's key; returns
    /// the client's reset token (if it sent one).
    pub fn server_finish(&mut self, msg: &[u8]) -> Result<Option<ResetToken>, HandshakeFailure> {
        let payload = self.read(msg)?;
        let reset = reset_token(FrameIter::new(&payload));
        self.finish();
        if let (Some(allow), Some(got)) = (
            self.config.as_ref().and_then(|c| c.allow.as_ref()),
            self.peer_key,
        ) {
            if !allow.contains(&got) {
                return Err(HandshakeFailure {
                    code: close_code::KEY_NOT_ALLOWED,
                    reason: format!(
                        "client key {} is not on the server's allow-list",
                        got.fingerprint()
                    ),
                    error: ConnectionError::PeerNotAllowed(got),
                });
            }
        }
        Ok(reset)
    }
}
