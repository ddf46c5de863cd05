//! MVCC: treeIndex (key -> revisions, in memory) over the backend
//! (revision -> encoded KeyValue), as etcd's `storage/mvcc`.

#[cfg(test)]
mod compaction_tests;
mod generations;
pub mod index;
pub mod key_index;
pub(crate) mod key_meta;
mod keymap;
pub mod kvstore;
#[cfg(test)]
mod restore_tests;
pub mod revision;
mod revs;
mod txn;
mod varint;

pub use index::RangeEnd;
pub use kvstore::{CompactionPacing, Content, KvStore, RangeOptions, RangeResult};
pub use revision::Revision;
pub use txn::WriteTxn;

/// Errors of the MVCC layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error("mvcc: corrupt value at revision {0:?}")]
    Corrupt(Revision),
    #[error("mvcc: {0}")]
    Backend(#[from] crate::backend::BackendError),
}

/// Meta table keys (fixed names; values are 8-byte big-endian integers).
pub mod meta {
    pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
    pub const CONSISTENT_TERM: &[u8] = b"term";
    pub const SCHEDULED_COMPACT_REV: &[u8] = b"scheduledCompactRev";
    pub const FINISHED_COMPACT_REV: &[u8] = b"finishedCompactRev";

    pub fn encode(v: u64) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(&v.to_be_bytes())
    }

    pub fn decode(b: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(b.try_into().ok()?))
    }
}
