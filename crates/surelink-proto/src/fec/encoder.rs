//! The sending side of FEC: groups source symbols and emits repair symbols.
//!
//! Driven by the sender: every protected packet payload goes in through
//! [`FecEncoder::push_source`] with the next sequence number of the FEC source
//! stream; when that fills the group, the group's repair symbols come back, to
//! be sent right after it. A group still open [`max_hold`](FecEncoder::new)
//! after its first symbol is closed by the timer
//! ([`FecEncoder::poll_timeout`] / [`FecEncoder::handle_timeout`]), so a slow
//! stream's last packets are protected without waiting for more traffic.

use std::time::{Duration, Instant};

use super::codec::{block_len, encode, to_block};
use super::{FecError, FecScheme, RepairSymbol, MAX_SOURCE_LEN};

/// Groups source symbols and produces their repair symbols.
#[derive(Debug)]
pub struct FecEncoder {
    scheme: FecScheme,
    max_hold: Duration,
    /// Sequence number of the open group's first symbol.
    first_seq: u64,
    /// Payloads of the open group, in sequence order.
    payloads: Vec<Vec<u8>>,
    /// When the open group received its first symbol.
    opened_at: Option<Instant>,
}

impl FecEncoder {
    /// An encoder for `scheme` that closes a group at the latest `max_hold`
    /// after its first source symbol.
    pub fn new(scheme: FecScheme, max_hold: Duration) -> Result<Self, FecError> {
        scheme.validate()?;
        Ok(Self {
            scheme,
            max_hold,
            first_seq: 0,
            payloads: Vec::with_capacity(scheme.group_capacity()),
            opened_at: None,
        })
    }

    /// The scheme new groups use.
    pub fn scheme(&self) -> FecScheme {
        self.scheme
    }

    /// Switches to `scheme` (as the policy re-sizes the redundancy): closes
    /// the open group under the old scheme and returns its repair symbols.
    pub fn set_scheme(&mut self, scheme: FecScheme) -> Result<Vec<RepairSymbol>, FecError> {
        scheme.validate()?;
        let repairs = self.flush();
        self.scheme = scheme;
        Ok(repairs)
    }

    /// Adds source symbol `seq` (sent at `now`). Returns the group's repair
    /// symbols if it completes the group, else nothing. The first symbol of a
    /// group may have any sequence number; the next ones must follow it.
    pub fn push_source(
        &mut self,
        now: Instant,
        seq: u64,
        payload: &[u8],
    ) -> Result<Vec<RepairSymbol>, FecError> {
        if payload.len() > MAX_SOURCE_LEN {
            return Err(FecError::SourceTooLong { len: payload.len() });
        }
        if self.payloads.is_empty() {
            self.first_seq = seq;
            self.opened_at = Some(now);
        } else {
            let expected = self.first_seq + self.payloads.len() as u64;
            if seq != expected {
                return Err(FecError::SequenceGap { expected, got: seq });
            }
        }
        self.payloads.push(payload.to_vec());
        if self.payloads.len() >= self.scheme.group_capacity() {
            return Ok(self.flush());
        }
        Ok(Vec::new())
    }

    /// When the open group must be closed, if one is open.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.opened_at.map(|opened| opened + self.max_hold)
    }

    /// Closes the open group if its hold time has passed by `now`; returns its
    /// repair symbols.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<RepairSymbol> {
        match self.poll_timeout() {
            Some(deadline) if now >= deadline => self.flush(),
            _ => Vec::new(),
        }
    }

    /// Closes the open group now, however few symbols it has, and returns its
    /// repair symbols (nothing if no group is open).
    pub fn flush(&mut self) -> Vec<RepairSymbol> {
        self.opened_at = None;
        if self.payloads.is_empty() {
            return Vec::new();
        }
        let longest = self.payloads.iter().map(Vec::len).max().unwrap_or(0);
        let len = block_len(longest);
        let blocks: Vec<Vec<u8>> = self
            .payloads
            .drain(..)
            .map(|payload| to_block(&payload, len))
            .collect();
        let sources = blocks.len() as u8;
        encode(self.scheme, &blocks)
            .into_iter()
            .map(|(index, block)| RepairSymbol {
                scheme: self.scheme,
                first_seq: self.first_seq,
                sources,
                index,
                block,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RS: FecScheme = FecScheme::ReedSolomon {
        source: 4,
        repair: 2,
    };

    #[test]
    fn a_full_group_emits_its_repairs() {
        let now = Instant::now();
        let mut encoder = FecEncoder::new(RS, Duration::from_millis(10)).unwrap();
        for seq in 100..103 {
            assert!(encoder.push_source(now, seq, b"abc").unwrap().is_empty());
        }
        let repairs = encoder.push_source(now, 103, b"defgh").unwrap();
        assert_eq!(repairs.len(), 2);
        for (i, repair) in repairs.iter().enumerate() {
            assert_eq!(repair.index, i as u8);
            assert_eq!(repair.first_seq, 100);
            assert_eq!(repair.sources, 4);
            assert_eq!(repair.block.len(), 8); // 2 + 5, rounded up to even
        }
        assert_eq!(encoder.poll_timeout(), None);
    }

    #[test]
    fn the_timer_closes_a_slow_group() {
        let start = Instant::now();
        let hold = Duration::from_millis(10);
        let mut encoder = FecEncoder::new(RS, hold).unwrap();
        assert!(encoder.push_source(start, 7, b"x").unwrap().is_empty());
        assert_eq!(encoder.poll_timeout(), Some(start + hold));
        assert!(encoder.handle_timeout(start + hold / 2).is_empty());
        let repairs = encoder.handle_timeout(start + hold);
        assert_eq!(repairs.len(), 2);
        assert!(repairs.iter().all(|r| r.sources == 1 && r.first_seq == 7));
        assert_eq!(encoder.poll_timeout(), None);
        assert!(encoder.flush().is_empty());
    }

    #[test]
    fn bad_input_is_an_error() {
        let now = Instant::now();
        let mut encoder = FecEncoder::new(RS, Duration::from_millis(10)).unwrap();
        assert_eq!(
            encoder.push_source(now, 0, &[0; MAX_SOURCE_LEN + 1]),
            Err(FecError::SourceTooLong {
                len: MAX_SOURCE_LEN + 1
            })
        );
        encoder.push_source(now, 5, b"a").unwrap();
        assert_eq!(
            encoder.push_source(now, 7, b"b"),
            Err(FecError::SequenceGap {
                expected: 6,
                got: 7
            })
        );
        assert!(FecEncoder::new(FecScheme::Xor { rows: 0, cols: 1 }, Duration::ZERO).is_err());
        let switched = encoder
            .set_scheme(FecScheme::Xor { rows: 2, cols: 2 })
            .unwrap();
        assert_eq!(switched.len(), 2);
        assert_eq!(encoder.scheme(), FecScheme::Xor { rows: 2, cols: 2 });
    }
}
