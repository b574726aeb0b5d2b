//! The arithmetic of the codes, shared by the encoder and the decoder.
//!
//! Source symbols enter the code as *blocks* of one length for the whole
//! group: a 2-byte big-endian payload length, the payload, zero padding up to
//! the group's block length (the longest payload plus 2, rounded up to even
//! for the Reed-Solomon engine). Repair symbols are blocks of the same length,
//! so a recovered block gives back its payload's length as well as its bytes.

use std::collections::BTreeMap;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::FecScheme;

/// The block length of a group whose longest payload is `max_payload` bytes.
pub(crate) fn block_len(max_payload: usize) -> usize {
    (max_payload + 2).next_multiple_of(2)
}

/// Codes `payload` as a block of `len` bytes (`len >= payload.len() + 2`).
pub(crate) fn to_block(payload: &[u8], len: usize) -> Vec<u8> {
    let mut block = Vec::with_capacity(len);
    block.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    block.extend_from_slice(payload);
    block.resize(len, 0);
    block
}

/// The payload inside a block, or `None` if the block is not one that
/// [`to_block`] could have produced (length field too large, padding not
/// zero): the sign of inconsistent input, never recovered.
pub(crate) fn from_block(block: &[u8]) -> Option<&[u8]> {
    let (header, rest) = block.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*header));
    if len > rest.len() || rest[len..].iter().any(|&b| b != 0) {
        return None;
    }
    Some(&rest[..len])
}

/// The repair blocks of a group of source `blocks` (all of one length, at
/// least one), with their repair indices.
pub(crate) fn encode(scheme: FecScheme, blocks: &[Vec<u8>]) -> Vec<(u8, Vec<u8>)> {
    let Some(len) = blocks.first().map(Vec::len) else {
        return Vec::new();
    };
    match scheme {
        FecScheme::Xor { cols, .. } => scheme
            .repair_indices(blocks.len())
            .into_iter()
            .map(|index| {
                let mut parity = vec![0u8; len];
                for member in xor_members(cols, blocks.len(), index) {
                    xor_into(&mut parity, &blocks[member]);
                }
                (index, parity)
            })
            .collect(),
        FecScheme::ReedSolomon { repair, .. } => {
            let encoded = ReedSolomonEncoder::new(blocks.len(), usize::from(repair), len).and_then(
                |mut encoder| {
                    for block in blocks {
                        encoder.add_original_shard(block)?;
                    }
                    let result = encoder.encode()?;
                    Ok(result
                        .recovery_iter()
                        .map(<[u8]>::to_vec)
                        .collect::<Vec<_>>())
                },
            );
            // Shapes are validated and blocks are even, non-empty and of one
            // length, so the engine accepts them; an error yields no repair.
            encoded
                .map(|repairs| (0..repair).zip(repairs).collect())
                .unwrap_or_default()
        }
    }
}

/// Fills in the missing `sources` blocks of a group from the present source
/// blocks and `repairs` (by repair index), where the code allows; returns the
/// indices recovered. All present blocks must have one length.
pub(crate) fn recover(
    scheme: FecScheme,
    sources: &mut [Option<Vec<u8>>],
    repairs: &BTreeMap<u8, Vec<u8>>,
) -> Vec<usize> {
    match scheme {
        FecScheme::Xor { cols, .. } => recover_xor(cols, sources, repairs),
        FecScheme::ReedSolomon { repair, .. } => recover_reed_solomon(repair, sources, repairs),
    }
}

/// The source positions covered by XOR repair `index` in a group of `count`
/// sources laid out `cols` to a row.
fn xor_members(cols: u8, count: usize, index: u8) -> Vec<usize> {
    let cols = usize::from(cols);
    let index = usize::from(index);
    if index < cols {
        (index..count).step_by(cols).collect()
    } else {
        let row = index - cols;
        (row * cols..((row + 1) * cols).min(count)).collect()
    }
}

/// Peels the XOR parities: any parity with exactly one missing member gives
/// that member back, which may complete another parity; repeats until no
/// parity makes progress.
fn recover_xor(
    cols: u8,
    sources: &mut [Option<Vec<u8>>],
    repairs: &BTreeMap<u8, Vec<u8>>,
) -> Vec<usize> {
    let mut recovered = Vec::new();
    loop {
        let mut progress = false;
        for (&index, parity) in repairs {
            let members = xor_members(cols, sources.len(), index);
            let mut missing = members.iter().filter(|&&m| sources[m].is_none());
            let (Some(&lost), None) = (missing.next(), missing.next()) else {
                continue;
            };
            let mut block = parity.clone();
            for &member in &members {
                if let Some(present) = &sources[member] {
                    xor_into(&mut block, present);
                }
            }
            sources[lost] = Some(block);
            recovered.push(lost);
            progress = true;
        }
        if !progress {
            return recovered;
        }
    }
}

/// Reed-Solomon decoding: with at least as many symbols as sources, every
/// missing source comes back.
fn recover_reed_solomon(
    repair: u8,
    sources: &mut [Option<Vec<u8>>],
    repairs: &BTreeMap<u8, Vec<u8>>,
) -> Vec<usize> {
    let present = sources.iter().flatten().count();
    let Some(len) = repairs.values().next().map(Vec::len) else {
        return Vec::new();
    };
    if present == sources.len() || present + repairs.len() < sources.len() {
        return Vec::new();
    }
    let decoded =
        ReedSolomonDecoder::new(sources.len(), usize::from(repair), len).and_then(|mut decoder| {
            for (i, block) in sources.iter().enumerate() {
                if let Some(block) = block {
                    decoder.add_original_shard(i, block)?;
                }
            }
            for (&index, block) in repairs {
                decoder.add_recovery_shard(usize::from(index), block)?;
            }
            let result = decoder.decode()?;
            Ok(result
                .restored_original_iter()
                .map(|(i, block)| (i, block.to_vec()))
                .collect::<Vec<_>>())
        });
    let mut recovered = Vec::new();
    for (i, block) in decoded.unwrap_or_default() {
        if let Some(slot @ None) = sources.get_mut(i) {
            *slot = Some(block);
            recovered.push(i);
        }
    }
    recovered
}

/// `target ^= other`, over the common length.
fn xor_into(target: &mut [u8], other: &[u8]) {
    for (t, o) in target.iter_mut().zip(other) {
        *t ^= o;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_reject_garbage() {
        let block = to_block(b"abc", block_len(5));
        assert_eq!(block.len(), 8);
        assert_eq!(from_block(&block), Some(&b"abc"[..]));
        assert_eq!(from_block(&[0, 9, 1, 2]), None);
        assert_eq!(from_block(&[0, 1, 7, 7]), None);
        assert_eq!(from_block(&[0]), None);
        assert_eq!(from_block(&[0, 0]), Some(&b""[..]));
    }

    #[test]
    fn xor_peeling_recovers_a_row_and_a_column_loss() {
        let scheme = FecScheme::Xor { rows: 2, cols: 2 };
        let blocks: Vec<Vec<u8>> = (0..4u8).map(|i| to_block(&[i; 3], 6)).collect();
        let repairs: BTreeMap<u8, Vec<u8>> = encode(scheme, &blocks).into_iter().collect();
        // Lose 0 and 1 (one row): columns 0 and 1 each give one back.
        let mut sources: Vec<Option<Vec<u8>>> = blocks.iter().cloned().map(Some).collect();
        sources[0] = None;
        sources[1] = None;
        let mut got = recover(scheme, &mut sources, &repairs);
        got.sort_unstable();
        assert_eq!(got, [0, 1]);
        assert!(sources
            .iter()
            .zip(&blocks)
            .all(|(s, b)| s.as_ref() == Some(b)));
    }
}
