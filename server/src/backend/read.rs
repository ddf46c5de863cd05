//! Reads: point reads and range scans that see buffered writes first
//! (etcd's readTx over the write buffer), and scans of committed data.

use std::borrow::Cow;

use bytes::Bytes;
use redb::ReadableDatabase;

use super::{Backend, BackendError, Table, def};

/// A read transaction on the backend's file, holding that file's database
/// open: a defragmentation that swaps in a new file meanwhile does not wait
/// for a long read (a snapshot export, a hash, a compaction's scan), which
/// goes on in the old file; the old database closes once its last reader is
/// done. (Fields drop in order: the transaction before its database.)
pub(super) struct Reading {
    pub(super) tx: redb::ReadTransaction,
    _db: std::sync::Arc<redb::Database>,
}

/// One table open for reading. For `key`, the table of its rows' chunks
/// opens at the first row stored cut (opening a table costs a lookup in
/// redb's table tree, per read).
pub(super) struct ReadTable<'r> {
    pub(super) rows: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    /// The transaction, where rows may be cut (`key`).
    cut_rows_in: Option<&'r redb::ReadTransaction>,
    chunks: std::cell::OnceCell<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
}

impl ReadTable<'_> {
    /// The whole row of the stored value `v` at `k` (see `chunk.rs`):
    /// `v` itself unless stored cut.
    pub(super) fn whole<'a>(&self, k: &[u8], v: &'a [u8]) -> Result<Cow<'a, [u8]>, BackendError> {
        match self.cut_rows_in {
            Some(tx) if super::chunk::is_cut(v) => {
                let chunks = match self.chunks.get() {
                    Some(c) => c,
                    None => {
                        let c = tx.open_table(def(Table::KeyChunk))?;
                        self.chunks.get_or_init(|| c)
                    }
                };
                super::chunk::whole(chunks, k, v)
            }
            _ => Ok(Cow::Borrowed(v)),
        }
    }
}

impl Reading {
    /// Opens table `t` for reading.
    pub(super) fn open(&self, t: Table) -> Result<ReadTable<'_>, BackendError> {
        let cut_rows_in = (t == Table::Key).then_some(&self.tx);
        Ok(ReadTable { rows: self.tx.open_table(def(t))?, cut_rows_in, chunks: std::cell::OnceCell::new() })
    }
}

impl Backend {
    /// A read transaction on the current file. The file's lock is held only
    /// to begin it: a read that began before a defragmentation's swap sees
    /// every commit made before the swap.
    pub(super) fn begin_read(&self) -> Result<Reading, BackendError> {
        let db = self.db.read();
        Ok(Reading { tx: db.begin_read()?, _db: db.clone() })
    }

    /// Reads one key, seeing buffered writes.
    pub fn get(&self, t: Table, k: &[u8]) -> Result<Option<Bytes>, BackendError> {
        Ok(self.get_many(t, std::slice::from_ref(&k.to_vec()))?.pop().flatten())
    }

    /// Reads several keys of one table, seeing buffered writes.
    pub fn get_many(&self, t: Table, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, BackendError> {
        let mut out = vec![None; keys.len()];
        let mut missing = Vec::new();
        {
            let b = self.bufs.read();
            for (i, k) in keys.iter().enumerate() {
                match b.pending.get(t, k).or_else(|| b.committing.as_ref().and_then(|c| c.get(t, k))) {
                    Some(v) => out[i] = v,
                    None => missing.push(i),
                }
            }
        }
        // Taken after the buffers: anything that left them is in redb by now.
        if !missing.is_empty() {
            let read = self.begin_read()?;
            let table = read.open(t)?;
            for i in missing {
                if let Some(g) = table.rows.get(keys[i].as_slice())? {
                    // A row put together from chunks is not copied again.
                    out[i] = Some(match table.whole(&keys[i], g.value())? {
                        Cow::Borrowed(row) => Bytes::copy_from_slice(row),
                        Cow::Owned(row) => Bytes::from(row),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Visits committed entries of `t` in `[start, end)` in key order until `f`
    /// returns false. Call [`commit`](Self::commit) first to include buffered writes.
    pub fn scan_committed(
        &self,
        t: Table,
        start: &[u8],
        end: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        let read = self.begin_read()?;
        let table = read.open(t)?;
        let iter = match end {
            Some(e) => table.rows.range::<&[u8]>(start..e)?,
            None => table.rows.range::<&[u8]>(start..)?,
        };
        for item in iter {
            let (k, v) = item?;
            if !f(k.value(), &table.whole(k.value(), v.value())?) {
                break;
            }
        }
        Ok(())
    }

    /// Reads every entry of `t` in `[start, end)` in key order, buffered
    /// writes included. Callers bound the range (watch catch-up reads a window
    /// of revisions at a time).
    pub fn scan(&self, t: Table, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Bytes)>, BackendError> {
        use std::collections::BTreeMap;
        use std::ops::Bound;
        // Buffers first: anything that leaves them is in redb before the read below.
        let mut overlay: BTreeMap<Vec<u8>, Option<Bytes>> = BTreeMap::new();
        {
            let b = self.bufs.read();
            for buf in b.committing.iter().map(|c| c.as_ref()).chain(std::iter::once(&b.pending)) {
                if let Some((_, m)) = buf.tables().find(|(bt, _)| *bt == t) {
                    for (k, v) in m.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))) {
                        overlay.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let mut out: BTreeMap<Vec<u8>, Bytes> = BTreeMap::new();
        self.scan_committed(t, start, Some(end), |k, v| {
            out.insert(k.to_vec(), Bytes::copy_from_slice(v));
            true
        })?;
        for (k, v) in overlay {
            match v {
                Some(v) => out.insert(k, v),
                None => out.remove(&k),
            };
        }
        Ok(out.into_iter().collect())
    }

    /// Visits every committed entry of every content table
    /// ([`Table::CONTENT`]) from one read transaction (a consistent view),
    /// until `f` returns false.
    pub fn scan_all_committed(&self, mut f: impl FnMut(Table, &[u8], &[u8]) -> bool) -> Result<(), BackendError> {
        let read = self.begin_read()?;
        for t in Table::CONTENT {
            let table = read.open(t)?;
            for item in table.rows.range::<&[u8]>(..)? {
                let (k, v) = item?;
                if !f(t, k.value(), &table.whole(k.value(), v.value())?) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
