//! Revisions and their on-disk key form.
//!
//! A backend key is the 8-byte big-endian main revision, `_`, the 8-byte
//! big-endian sub revision (17 bytes); a tombstone appends `t` (18 bytes).
//! Big-endian keeps byte order equal to revision order in the B-tree.

/// A (main, sub) revision: main is the write request, sub the key within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// Length of a backend revision key without the tombstone marker.
pub const REV_KEY_LEN: usize = 17;
/// Marker byte appended to the key of a tombstone.
pub const TOMBSTONE: u8 = b't';

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// Encodes the backend key; `tombstone` appends the marker.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut k = Vec::with_capacity(REV_KEY_LEN + 1);
        k.extend_from_slice(&self.main.to_be_bytes());
        k.push(b'_');
        k.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            k.push(TOMBSTONE);
        }
        k
    }

    /// Decodes a backend key into the revision and whether it is a tombstone.
    pub fn from_key(k: &[u8]) -> Option<(Revision, bool)> {
        if !(k.len() == REV_KEY_LEN || (k.len() == REV_KEY_LEN + 1 && k[REV_KEY_LEN] == TOMBSTONE)) || k[8] != b'_' {
            return None;
        }
        let main = i64::from_be_bytes(k[0..8].try_into().ok()?);
        let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
        Some((Revision { main, sub }, k.len() == REV_KEY_LEN + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_roundtrip_and_order() {
        let a = Revision::new(5, 1);
        let b = Revision::new(256, 0);
        assert_eq!(Revision::from_key(&a.to_key(false)), Some((a, false)));
        assert_eq!(Revision::from_key(&b.to_key(true)), Some((b, true)));
        assert!(a.to_key(false) < b.to_key(false));
        assert_eq!(a.to_key(false).len(), 17);
        assert_eq!(Revision::from_key(b"short"), None);
    }
}
