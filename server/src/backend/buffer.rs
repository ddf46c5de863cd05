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
        }
    }

    /// Every table in the file.
    pub const ALL: [Table; 7] =
        [Table::Key, Table::Meta, Table::Alarm, Table::Lease, Table::AuthUser, Table::AuthRole, Table::KeyMeta];

    /// The tables that hold the content, in their order in snapshots and
    /// hashes: all but the derived [`Table::KeyMeta`].
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
}

impl Buffer {
    pub fn put(&mut self, t: Table, k: Vec<u8>, v: Bytes) {
        self.tables.entry(t).or_default().insert(k, Some(v));
        self.ops += 1;
    }

    /// [`put`](Self::put) for a key written again and again (the consistent
    /// index, once per applied entry): its buffered slot is reused, so the
    /// key is copied only the first time.
    pub fn put_named(&mut self, t: Table, k: &'static [u8], v: Bytes) {
        let m = self.tables.entry(t).or_default();
        match m.get_mut(k) {
            Some(slot) => *slot = Some(v),
            None => {
                m.insert(k.to_vec(), Some(v));
            }
        }
        self.ops += 1;
    }

    pub fn delete(&mut self, t: Table, k: Vec<u8>) {
        self.tables.entry(t).or_default().insert(k, None);
        self.ops += 1;
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
    }

    pub fn ops(&self) -> usize {
        self.ops
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
}
