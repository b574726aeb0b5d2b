//! Variable-length integers, QUIC style (RFC 9000 §16).
//!
//! The two most significant bits of the first byte give the length (1, 2, 4 or 8
//! bytes); the remaining bits hold the value in network byte order. Values up to
//! 2^62 - 1 are representable. Decoding never panics: a short buffer is an error.

use super::{Reader, WireError};

/// The largest value a varint can carry.
pub const MAX: u64 = (1 << 62) - 1;

/// Number of bytes [`write()`] uses for `v`.
#[inline]
pub fn size(v: u64) -> usize {
    if v < 1 << 6 {
        1
    } else if v < 1 << 14 {
        2
    } else if v < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends `v` to `out`. Values above [`MAX`] are clamped to [`MAX`]; callers
/// only encode counters and lengths that stay far below it.
#[inline]
pub fn write(out: &mut Vec<u8>, v: u64) {
    let v = v.min(MAX);
    match size(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// Writes `v` into all of `buf` (1, 2, 4 or 8 bytes), a wider encoding
/// than [`write()`]'s when `buf` is longer than [`size`]`(v)`: for a field
/// whose width is fixed before its value is known. The reader accepts any
/// width.
///
/// # Panics
///
/// If `buf` is not 1, 2, 4 or 8 bytes long or `v` does not fit in it (a
/// caller's sizing bug, never input).
pub fn write_fixed(buf: &mut [u8], v: u64) {
    let width = buf.len();
    assert!(
        matches!(width, 1 | 2 | 4 | 8) && size(v) <= width,
        "{v} does not fit a {width}-byte varint"
    );
    let prefix = u64::from(width.trailing_zeros()) << (width * 8 - 2);
    buf.copy_from_slice(&(v | prefix).to_be_bytes()[8 - width..]);
}

/// Reads one varint from `r`.
#[inline]
pub fn read(r: &mut Reader<'_>) -> Result<u64, WireError> {
    let first = r.u8()?;
    let len = 1usize << (first >> 6);
    let mut v = u64::from(first & 0x3f);
    for _ in 1..len {
        v = (v << 8) | u64::from(r.u8()?);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(v in 0..=MAX) {
            let mut buf = Vec::new();
            write(&mut buf, v);
            prop_assert_eq!(buf.len(), size(v));
            let mut r = Reader::new(&buf);
            prop_assert_eq!(read(&mut r).unwrap(), v);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn truncated_is_error(v in 64..=MAX) {
            let mut buf = Vec::new();
            write(&mut buf, v);
            buf.pop();
            prop_assert!(read(&mut Reader::new(&buf)).is_err());
        }
    }

    proptest! {
        #[test]
        fn fixed_width_round_trip(v in 0..=MAX, wider in 0usize..4) {
            let width = (size(v) << wider).min(8);
            let mut buf = vec![0; width];
            write_fixed(&mut buf, v);
            let mut r = Reader::new(&buf);
            prop_assert_eq!(read(&mut r).unwrap(), v);
            prop_assert!(r.is_empty());
        }
    }

    #[test]
    fn boundaries() {
        for (v, n) in [(0, 1), (63, 1), (64, 2), (16383, 2), (16384, 4), (MAX, 8)] {
            assert_eq!(size(v), n, "{v}");
        }
    }
}
