//! LEB128 varints, as treeIndex's compact forms write them: [`Revs`]'s
//! revision deltas and [`KeyMap`]'s front-coded keys.
//!
//! [`Revs`]: super::revs::Revs
//! [`KeyMap`]: super::keymap::KeyMap

/// Longest LEB128 encoding of a u64.
pub const MAX: usize = 10;

/// Writes `v` at `out[*at..]` and moves `at` past it; `out` must have
/// [`MAX`] bytes of room there.
pub fn put(out: &mut [u8], at: &mut usize, mut v: u64) {
    while v >= 0x80 {
        out[*at] = (v as u8) | 0x80;
        *at += 1;
        v >>= 7;
    }
    out[*at] = v as u8;
    *at += 1;
}

/// The next varint of `bytes`, which moves past it. The callers read only
/// what they wrote; a cut varint ends where the bytes do.
#[inline]
pub fn take(bytes: &mut &[u8]) -> u64 {
    if let [b, rest @ ..] = *bytes
        && *b < 0x80
    {
        *bytes = rest;
        return u64::from(*b);
    }
    take_long(bytes)
}

fn take_long(bytes: &mut &[u8]) -> u64 {
    let (mut v, mut shift) = (0u64, 0u32);
    while let Some((&b, rest)) = bytes.split_first() {
        *bytes = rest;
        v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    v
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(vs in proptest::collection::vec(any::<u64>(), 0..20)) {
            let mut buf = vec![0u8; vs.len() * super::MAX];
            let mut at = 0;
            for &v in &vs {
                super::put(&mut buf, &mut at, v);
            }
            let mut bytes = &buf[..at];
            for &v in &vs {
                prop_assert_eq!(super::take(&mut bytes), v);
            }
            prop_assert!(bytes.is_empty());
        }
    }
}
