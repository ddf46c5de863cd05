//! The write buffer in front of redb: applied changes wait here until the next
//! batch commit, and reads look here first (etcd's txWriteBuffer).

use std::collections::BTreeMap;

use bytes::Bytes;

/// The tables kvd keeps in the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Table {
    /// Revision key -> encoded mvccpb.KeyValue.
    Key = 0,
    /// Named metadata: consistent index, compaction revisions.
    Meta = 1,
    /// Active alarms: member id (8 bytes BE) ‖ alarm type (4 bytes BE) -> empty.
    Alarm = 2,
    /// Leases: id (8 bytes BE) -> TTL in seconds (8 bytes BE).
    Lease = 3,
    /// Auth users: name -> encoded authpb.User (password as a bcrypt hash).
    AuthUser = 4,
    /// Auth roles: name -> encoded authpb.Role.
    AuthRole = 5,
    /// Revision key -> the `key` row's mvccpb.KeyValue without its value
    /// and mod revision: what treeIndex is rebuilt from at start, a
    /// twentieth of the bytes of `key` at 1 KiB values. Derived from `key`,
    /// written in the same transactions, and left out of snapshots and
    /// hashes ([`Table::CONTENT`]).
    KeyMeta = 6,
    /// (Revision key ‖ chunk number) -> a chunk of a long `key` row: how
    /// the backend stores rows longer than a page (`backend/chunk.rs`).
    /// Never written through the buffer; readers see whole `key` rows.
    KeyChunk = 7,
}

impl Table {
    pub const fn name(self) -> &'static str {
        match self {
            Table::Key => "key",
            Table::Meta => "meta",
            Table::Alarm => "alarm",
            Table::Lease => "lease",
            Table::AuthUser => "authUsers",
            Table::AuthRole => "authRoles",
            Table::KeyMeta => "keyMeta",
            Table::KeyChunk => "keyChunk",
        }
    }

    /// Every table in the file, in the order of their codes.
    pub const ALL: [Table; 8] = [
        Table::Key,
        Table::Meta,
        Table::Alarm,
        Table::Lease,
        Table::AuthUser,
        Table::AuthRole,
        Table::KeyMeta,
        Table::KeyChunk,
    ];

    /// The tables that hold the content, in their order in snapshots and
    /// hashes: all but the derived [`Table::KeyMeta`] and the chunks of
    /// `key` rows, which readers get whole.
    pub const CONTENT: [Table; 6] =
        [Table::Key, Table::Meta, Table::Alarm, Table::Lease, Table::AuthUser, Table::AuthRole];

    /// The content table with this on-disk code (as in snapshot files).
    pub fn from_u8(v: u8) -> Option<Table> {
        Table::CONTENT.into_iter().find(|t| *t as u8 == v)
    }
}

/// Pending puts (`Some`) and deletes (`None`) per table, in key order.
#[derive(Debug, Default, Clone)]
pub struct Buffer {
    tables: BTreeMap<Table, BTreeMap<Vec<u8>, Option<Bytes>>>,
    ops: usize,
    /// The keys and values of the buffered puts: what the commit adds to
    /// the file, before redb's pages (the quota counts it, see
    /// [`super::Backend::size_with_buffered`]).
    bytes: u64,
}

/// What a buffered entry adds to the file: a put its key and value, a delete nothing.
fn entry_bytes(k: usize, v: &Option<Bytes>) -> u64 {
    v.as_ref().map_or(0, |v| (k + v.len()) as u64)
}

impl Buffer {
    pub fn put(&mut self, t: Table, k: Vec<u8>, v: Bytes) {
        self.set(t, k, Some(v));
    }

    /// Buffers `v` for `k`, in place of what was buffered for it.
    fn set(&mut self, t: Table, k: Vec<u8>, v: Option<Bytes>) {
        let len = k.len();
        self.bytes += entry_bytes(len, &v);
        if let Some(old) = self.tables.entry(t).or_default().insert(k, v) {
            self.bytes -= entry_bytes(len, &old);
        }
        self.ops += 1;
    }

    /// [`put`](Self::put) for a key written again and again (the consistent
    /// index, once per applied entry): its buffered slot is reused, so the
    /// key is copied only the first time.
    pub fn put_named(&mut self, t: Table, k: &'static [u8], v: Bytes) {
        let m = self.tables.entry(t).or_default();
        self.bytes += (k.len() + v.len()) as u64;
        match m.get_mut(k) {
            Some(slot) => {
                self.bytes -= entry_bytes(k.len(), slot);
                *slot = Some(v);
            }
            None => {
                m.insert(k.to_vec(), Some(v));
            }
        }
        self.ops += 1;
    }

    pub fn delete(&mut self, t: Table, k: Vec<u8>) {
        self.set(t, k, None);
    }

    /// `Some(Some(v))`: buffered value; `Some(None)`: buffered delete; `None`: not buffered.
    pub fn get(&self, t: Table, k: &[u8]) -> Option<Option<Bytes>> {
        self.tables.get(&t)?.get(k).cloned()
    }

    /// Adds `newer`'s writes on top of this buffer's (newer wins per key).
    pub fn absorb(&mut self, newer: Buffer) {
        for (t, m) in newer.tables {
            self.tables.entry(t).or_default().extend(m);
        }
        self.ops += newer.ops;
        self.bytes = self.tables.values().flatten().map(|(k, v)| entry_bytes(k.len(), v)).sum();
    }

    pub fn ops(&self) -> usize {
        self.ops
    }

    /// The bytes of the buffered puts' keys and values.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    pub fn tables(&self) -> impl Iterator<Item = (Table, &BTreeMap<Vec<u8>, Option<Bytes>>)> {
        self.tables.iter().map(|(t, m)| (*t, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_key_written_again_keeps_the_last_value() {
        let mut b = Buffer::default();
        b.put_named(Table::Meta, b"consistent_index", Bytes::from_static(b"1"));
        b.put(Table::Meta, b"term".to_vec(), Bytes::from_static(b"t"));
        b.put_named(Table::Meta, b"consistent_index", Bytes::from_static(b"2"));
        assert_eq!(b.get(Table::Meta, b"consistent_index"), Some(Some(Bytes::from_static(b"2"))));
        assert_eq!(b.get(Table::Meta, b"term"), Some(Some(Bytes::from_static(b"t"))));
        assert_eq!(b.tables().map(|(_, m)| m.len()).sum::<usize>(), 2);
        assert_eq!(b.ops(), 3);
    }

    #[test]
    fn bytes_count_each_key_once_with_its_last_value() {
        let v = |n: usize| Bytes::from(vec![b'v'; n]);
        let mut b = Buffer::default();
        b.put(Table::Key, b"k1".to_vec(), v(10));
        b.put(Table::Key, b"k1".to_vec(), v(30));
        b.put(Table::KeyMeta, b"k1".to_vec(), v(5));
        b.put_named(Table::Meta, b"ci", v(8));
        b.put_named(Table::Meta, b"ci", v(8));
        assert_eq!(b.bytes(), (2 + 30) + (2 + 5) + (2 + 8));
        b.delete(Table::Key, b"k1".to_vec());
        b.delete(Table::Key, b"gone".to_vec());
        assert_eq!(b.bytes(), (2 + 5) + (2 + 8));
        let mut newer = Buffer::default();
        newer.put(Table::KeyMeta, b"k1".to_vec(), v(50));
        newer.put(Table::Key, b"k2".to_vec(), v(1));
        b.absorb(newer);
        assert_eq!(b.bytes(), (2 + 50) + (2 + 8) + (2 + 1));
    }
}
