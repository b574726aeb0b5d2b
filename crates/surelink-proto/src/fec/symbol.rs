//! A repair symbol and its wire encoding.
//!
//! The encoder produces [`RepairSymbol`]s; the packet core writes each with
//! [`RepairSymbol::encode`] into a frame and the receiving core reads it back
//! with [`RepairSymbol::decode`], which rejects malformed input with an error.
//!
//! Layout (all integers big-endian), [`REPAIR_HEADER_LEN`] bytes of header:
//!
//! ```text
//! scheme      u8   1 = XOR rows×cols, 2 = Reed-Solomon k+m
//! shape_a     u8   rows (XOR) or k (Reed-Solomon)
//! shape_b     u8   cols (XOR) or m (Reed-Solomon)
//! sources     u8   source symbols in this group (1..=capacity; fewer when closed early)
//! index       u8   repair index within the group
//! first_seq   u64  sequence number of the group's first source symbol
//! block_len   u16  length of the repair block that follows (even, >= 2)
//! block       [u8; block_len]
//! ```

use super::codec::block_len;
use super::{FecError, FecScheme};

/// Longest source symbol (payload) the codec protects: a UDP payload over a
/// 1,500-byte IPv4 MTU.
pub const MAX_SOURCE_LEN: usize = 1472;

/// Bytes of a repair symbol's header on the wire, before its block.
pub const REPAIR_HEADER_LEN: usize = 15;

/// One repair symbol of a group: the group's identity and shape, its index,
/// and its block (a parity or Reed-Solomon recovery block of the group's
/// length-prefixed, padded source symbols).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairSymbol {
    /// The code and shape of the group.
    pub scheme: FecScheme,
    /// Sequence number of the group's first source symbol; the group covers
    /// `first_seq .. first_seq + sources`.
    pub first_seq: u64,
    /// Source symbols in the group.
    pub sources: u8,
    /// This symbol's repair index within the group.
    pub index: u8,
    /// The repair block.
    pub block: Vec<u8>,
}

impl RepairSymbol {
    /// Sequence numbers of the group's source symbols.
    pub fn source_range(&self) -> std::ops::Range<u64> {
        self.first_seq..self.first_seq.saturating_add(u64::from(self.sources))
    }

    /// Bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        REPAIR_HEADER_LEN + self.block.len()
    }

    /// Appends the wire encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (code, a, b) = self.scheme.to_wire();
        out.extend_from_slice(&[code, a, b, self.sources, self.index]);
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&(self.block.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.block);
    }

    /// Reads one repair symbol from the front of `input`; returns it and the
    /// bytes after it. Every field is checked: an unknown scheme or shape, a
    /// source count outside the shape, an index the group would not send, an
    /// odd, empty or oversized block, a sequence range that overflows or a
    /// truncated input is an error.
    pub fn decode(input: &[u8]) -> Result<(Self, &[u8]), FecError> {
        let (header, rest) = input
            .split_first_chunk::<REPAIR_HEADER_LEN>()
            .ok_or(FecError::Malformed("truncated header"))?;
        let [code, a, b, sources, index, ..] = *header;
        let scheme = FecScheme::from_wire(code, a, b)?;
        if sources == 0 || usize::from(sources) > scheme.group_capacity() {
            return Err(FecError::Malformed("source count outside the group shape"));
        }
        if !scheme.repair_indices(usize::from(sources)).contains(&index) {
            return Err(FecError::Malformed("repair index outside the group"));
        }
        let first_seq = u64::from_be_bytes(header[5..13].try_into().expect("8 bytes"));
        if first_seq.checked_add(u64::from(sources)).is_none() {
            return Err(FecError::Malformed("sequence range overflows"));
        }
        let len = usize::from(u16::from_be_bytes([header[13], header[14]]));
        if len < 2 || len % 2 != 0 || len > block_len(MAX_SOURCE_LEN) {
            return Err(FecError::Malformed("block length"));
        }
        if rest.len() < len {
            return Err(FecError::Malformed("truncated block"));
        }
        let (block, rest) = rest.split_at(len);
        let symbol = RepairSymbol {
            scheme,
            first_seq,
            sources,
            index,
            block: block.to_vec(),
        };
        Ok((symbol, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scheme_strategy() -> impl Strategy<Value = FecScheme> {
        prop_oneof![
            (1u8..=11, 1u8..=11).prop_map(|(rows, cols)| FecScheme::Xor { rows, cols }),
            (1u8..=128, 1u8..=64)
                .prop_map(|(source, repair)| FecScheme::ReedSolomon { source, repair }),
        ]
    }

    fn symbol_strategy() -> impl Strategy<Value = RepairSymbol> {
        (
            scheme_strategy(),
            any::<u64>(),
            any::<u16>(),
            any::<u16>(),
            1usize..=737,
        )
            .prop_map(|(scheme, first_seq, s, i, half)| {
                let sources = 1 + (s as usize % scheme.group_capacity()) as u8;
                let indices = scheme.repair_indices(usize::from(sources));
                RepairSymbol {
                    scheme,
                    first_seq: first_seq.min(u64::MAX - 200),
                    sources,
                    index: indices[i as usize % indices.len()],
                    block: (0..half * 2).map(|b| b as u8).collect(),
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip(symbol in symbol_strategy(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut out = Vec::new();
            symbol.encode(&mut out);
            prop_assert_eq!(out.len(), symbol.encoded_len());
            out.extend_from_slice(&tail);
            let (decoded, rest) = RepairSymbol::decode(&out).unwrap();
            prop_assert_eq!(decoded, symbol);
            prop_assert_eq!(rest, &tail[..]);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = RepairSymbol::decode(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error(symbol in symbol_strategy()) {
            let mut out = Vec::new();
            symbol.encode(&mut out);
            for cut in 0..out.len() {
                prop_assert!(RepairSymbol::decode(&out[..cut]).is_err());
            }
        }
    }

    #[test]
    fn malformed_fields_are_rejected() {
        let good = RepairSymbol {
            scheme: FecScheme::ReedSolomon {
                source: 4,
                repair: 2,
            },
            first_seq: 10,
            sources: 3,
            index: 1,
            block: vec![0; 4],
        };
        let mut bytes = Vec::new();
        good.encode(&mut bytes);
        assert!(RepairSymbol::decode(&bytes).is_ok());
        let corrupt = |at: usize, value: u8| {
            let mut b = bytes.clone();
            b[at] = value;
            RepairSymbol::decode(&b).map(|(symbol, _)| symbol)
        };
        assert_eq!(corrupt(0, 9), Err(FecError::Malformed("unknown scheme")));
        assert!(corrupt(1, 0).is_err()); // k = 0
        assert!(corrupt(3, 0).is_err()); // no sources
        assert!(corrupt(3, 5).is_err()); // more sources than k
        assert!(corrupt(4, 2).is_err()); // index beyond m
        assert!(corrupt(14, 3).is_err()); // odd block length
        let mut overflowing = Vec::new();
        RepairSymbol {
            first_seq: u64::MAX - 1,
            ..good
        }
        .encode(&mut overflowing);
        assert_eq!(
            RepairSymbol::decode(&overflowing),
            Err(FecError::Malformed("sequence range overflows"))
        );
    }
}
