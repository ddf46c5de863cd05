//! What apply needs from MVCC: reads at the visible revision, and (for write
//! transactions) puts and deletes. Implemented by the store (read-only) and by
//! the MVCC write transaction.

use crate::mvcc::{Content, KvStore, MvccError, RangeEnd, RangeOptions, RangeResult, WriteTxn};

/// A read view at one revision.
pub trait View {
    fn range(&self, key: &[u8], end: RangeEnd<'_>, opts: RangeOptions) -> Result<RangeResult, MvccError>;
    /// The revision reads see.
    fn rev(&self) -> i64;
    /// The compaction revision.
    fn compact_rev(&self) -> i64;
}

/// A view that can also write (only inside apply).
pub trait WriteView: View {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> i64;
    /// Deletes every key in range; returns the deleted keys.
    fn delete_range(&mut self, key: &[u8], end: RangeEnd<'_>) -> Vec<Vec<u8>>;
    fn has_changes(&self) -> bool;
}

/// The store itself, read-only, at its current revision (fixed at creation).
/// It holds the store's content: a snapshot installed meanwhile waits, so
/// that every read of the view sees the same content.
pub struct ReadView<'a> {
    store: &'a KvStore,
    content: Content<'a>,
    rev: i64,
}

impl<'a> ReadView<'a> {
    pub fn new(store: &'a KvStore) -> Self {
        let content = store.content();
        Self { store, rev: store.rev(), content }
    }
}

impl View for ReadView<'_> {
    fn range(&self, key: &[u8], end: RangeEnd<'_>, mut opts: RangeOptions) -> Result<RangeResult, MvccError> {
        if opts.rev > self.rev {
            return Err(MvccError::FutureRev);
        }
        if opts.rev <= 0 {
            opts.rev = self.rev;
        }
        let mut r = self.store.range_in(&self.content, key, end, opts)?;
        r.rev = self.rev;
        Ok(r)
    }
    fn rev(&self) -> i64 {
        self.rev
    }
    fn compact_rev(&self) -> i64 {
        self.store.compact_rev()
    }
}

impl View for WriteTxn<'_> {
    fn range(&self, key: &[u8], end: RangeEnd<'_>, opts: RangeOptions) -> Result<RangeResult, MvccError> {
        WriteTxn::range(self, key, end, opts)
    }
    fn rev(&self) -> i64 {
        WriteTxn::rev(self)
    }
    fn compact_rev(&self) -> i64 {
        self.store().compact_rev()
    }
}

impl WriteView for WriteTxn<'_> {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> i64 {
        WriteTxn::put(self, key, value, lease)
    }
    fn delete_range(&mut self, key: &[u8], end: RangeEnd<'_>) -> Vec<Vec<u8>> {
        WriteTxn::delete_range(self, key, end)
    }
    fn has_changes(&self) -> bool {
        WriteTxn::has_changes(self)
    }
}
