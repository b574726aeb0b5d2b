//! The FEC schemes: which code protects a group and the group's shape.
//!
//! A scheme is chosen by the policy ([`FecConfig`](super::FecConfig)), stamped
//! into every repair symbol, and read back by the decoder, so the two ends
//! need not agree on it beforehand.

use std::fmt;

use super::FecError;

/// Most source symbols one group may hold.
pub const MAX_GROUP_SOURCES: usize = 128;
/// Most repair symbols one group may carry.
pub const MAX_GROUP_REPAIRS: usize = 64;

/// The code protecting a group of source symbols, with the group's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FecScheme {
    /// Row/column XOR parity in the manner of SMPTE 2022-1: the group's source
    /// symbols fill a `rows × cols` matrix row by row; one repair symbol is
    /// the XOR of each column (a burst of up to `cols` consecutive losses is
    /// repaired) and one the XOR of each row. Repair indices `0..cols` are the
    /// columns, `cols..cols + rows` the rows.
    Xor {
        /// Rows of the matrix.
        rows: u8,
        /// Columns of the matrix (consecutive symbols fill a row).
        cols: u8,
    },
    /// Systematic Reed-Solomon: `repair` repair symbols over `source` source
    /// symbols; any `repair` losses among the group's symbols are repaired.
    ReedSolomon {
        /// Source symbols per group (`k`).
        source: u8,
        /// Repair symbols per group (`m`).
        repair: u8,
    },
}

impl FecScheme {
    /// Wire code of the XOR scheme.
    pub(crate) const XOR_CODE: u8 = 1;
    /// Wire code of the Reed-Solomon scheme.
    pub(crate) const REED_SOLOMON_CODE: u8 = 2;

    /// Checks that the shape is within [`MAX_GROUP_SOURCES`] and
    /// [`MAX_GROUP_REPAIRS`] and non-empty.
    pub fn validate(&self) -> Result<(), FecError> {
        let (sources, repairs) = match *self {
            FecScheme::Xor { rows, cols } => (
                usize::from(rows) * usize::from(cols),
                usize::from(rows) + usize::from(cols),
            ),
            FecScheme::ReedSolomon { source, repair } => (usize::from(source), usize::from(repair)),
        };
        if sources == 0 || repairs == 0 {
            return Err(FecError::UnsupportedScheme(format!("{self}: empty group")));
        }
        if sources > MAX_GROUP_SOURCES || repairs > MAX_GROUP_REPAIRS {
            return Err(FecError::UnsupportedScheme(format!(
                "{self}: at most {MAX_GROUP_SOURCES} source and {MAX_GROUP_REPAIRS} repair symbols per group"
            )));
        }
        Ok(())
    }

    /// How many source symbols a full group holds.
    pub fn group_capacity(&self) -> usize {
        match *self {
            FecScheme::Xor { rows, cols } => usize::from(rows) * usize::from(cols),
            FecScheme::ReedSolomon { source, .. } => usize::from(source),
        }
    }

    /// The repair indices sent for a group of `sources` source symbols
    /// (fewer than [`group_capacity`](Self::group_capacity) when the group was
    /// closed early): XOR sends only the parities of non-empty rows and
    /// columns.
    pub fn repair_indices(&self, sources: usize) -> Vec<u8> {
        match *self {
            FecScheme::Xor { cols, .. } => {
                let columns = sources.min(usize::from(cols)) as u8;
                let rows = sources.div_ceil(usize::from(cols).max(1)) as u8;
                (0..columns)
                    .chain(cols..cols.saturating_add(rows))
                    .collect()
            }
            FecScheme::ReedSolomon { repair, .. } => (0..repair).collect(),
        }
    }

    /// Repair symbols per full group divided by source symbols per full group.
    pub fn overhead(&self) -> f64 {
        let repairs = match *self {
            FecScheme::Xor { rows, cols } => usize::from(rows) + usize::from(cols),
            FecScheme::ReedSolomon { repair, .. } => usize::from(repair),
        };
        repairs as f64 / self.group_capacity() as f64
    }

    /// The scheme's wire code and its two shape bytes.
    pub(crate) fn to_wire(self) -> (u8, u8, u8) {
        match self {
            FecScheme::Xor { rows, cols } => (Self::XOR_CODE, rows, cols),
            FecScheme::ReedSolomon { source, repair } => (Self::REED_SOLOMON_CODE, source, repair),
        }
    }

    /// Reads a scheme from its wire code and shape bytes, validated.
    pub(crate) fn from_wire(code: u8, a: u8, b: u8) -> Result<Self, FecError> {
        let scheme = match code {
            Self::XOR_CODE => FecScheme::Xor { rows: a, cols: b },
            Self::REED_SOLOMON_CODE => FecScheme::ReedSolomon {
                source: a,
                repair: b,
            },
            _ => return Err(FecError::Malformed("unknown scheme")),
        };
        scheme
            .validate()
            .map_err(|_| FecError::Malformed("unsupported scheme shape"))?;
        Ok(scheme)
    }
}

impl fmt::Display for FecScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FecScheme::Xor { rows, cols } => write!(f, "{rows}x{cols}"),
            FecScheme::ReedSolomon { source, repair } => write!(f, "{source}+{repair}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_bounds() {
        assert!(FecScheme::Xor { rows: 8, cols: 8 }.validate().is_ok());
        assert!(FecScheme::Xor { rows: 0, cols: 8 }.validate().is_err());
        assert!(FecScheme::Xor { rows: 16, cols: 16 }.validate().is_err());
        assert!(FecScheme::ReedSolomon {
            source: 16,
            repair: 4
        }
        .validate()
        .is_ok());
        assert!(FecScheme::ReedSolomon {
            source: 16,
            repair: 0
        }
        .validate()
        .is_err());
        assert!(FecScheme::ReedSolomon {
            source: 200,
            repair: 4
        }
        .validate()
        .is_err());
    }

    #[test]
    fn repair_indices_of_partial_groups() {
        let xor = FecScheme::Xor { rows: 3, cols: 4 };
        assert_eq!(xor.repair_indices(12), [0, 1, 2, 3, 4, 5, 6]);
        // Five sources: all four columns, two rows.
        assert_eq!(xor.repair_indices(5), [0, 1, 2, 3, 4, 5]);
        // Two sources: two columns, one row.
        assert_eq!(xor.repair_indices(2), [0, 1, 4]);
        let rs = FecScheme::ReedSolomon {
            source: 8,
            repair: 2,
        };
        assert_eq!(rs.repair_indices(3), [0, 1]);
        assert!((rs.overhead() - 0.25).abs() < 1e-12);
    }
}
