//! Large `key` rows, stored as chunks that fill redb's blocks, in a table of
//! their own.
//!
//! redb keeps a leaf whose one entry is larger than a page in a block of a
//! power of two of pages: a 9,000-byte row took 16 KiB, a 64 KiB one 128 KiB
//! (twice etcd's bytes on disk; `tests/quota.rs`). bbolt uses just enough
//! overflow pages. So a row longer than a page's worth ([`SIZES`]' last) is
//! cut: as many chunks as fit of [`SIZES`]' first size (a leaf of one such
//! chunk fills a block of 4 pages exactly), then of its second (one page),
//! go to [`Table::KeyChunk`] under the row's key and the chunk's number, and
//! the `key` table keeps a head, with the rest of the row (less than a
//! page), that packs with its neighbours. A 64 KiB row is 4 chunks and a head
//! of 200 bytes: 4 lookups to read it back, not 16 of one page each.
//!
//! A head is [`MARKER`], then for each size in [`SIZES`]'s order the size
//! (u16 BE) and the number of chunks of it (u32 BE), then the row's last
//! bytes. A row is an encoded mvccpb.KeyValue, whose first byte is a field's
//! tag and never 0; a row that does start with 0 (written by a test or a
//! fuzzer) is stored as a head with no chunks, so every row reads back as it
//! was written. Rows written before chunking, up to any length, are read as
//! they are; a defragmentation cuts them.
//!
//! Only this module and the backend's redb calls see the layout: the write
//! buffer, snapshots, hashes and every reader above get whole rows.

use std::borrow::Cow;

use redb::{ReadableTable, StorageError, Table as RedbTable};

use super::{BackendError, Table};

/// Bytes per chunk, largest first. A leaf of one entry takes 12 bytes of
/// header and offsets (redb's `RawLeafBuilder::required_bytes`) and the
/// chunk's key 21 (a 17-byte revision key and a 4-byte number), so a chunk of
/// 16,350 bytes fills a block of four 4 KiB pages and one of 4,060 a page,
/// with a byte or two to spare.
pub(super) const SIZES: [usize; 2] = [16_350, 4_060];
/// The most a read reserves ahead for a row put together from chunks
/// (etcd's largest request is 1.5 MiB by default); longer rows grow as read.
const RESERVE_MAX: usize = 4 << 20;
/// The first byte of a head.
const MARKER: u8 = 0;
/// Marker, then a size and a count for each of [`SIZES`].
const HEAD: usize = 1 + SIZES.len() * (2 + 4);

type Bytes<'a> = &'a [u8];

/// How a `key` row is stored.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stored<'a> {
    /// The row itself.
    Whole(&'a [u8]),
    /// `runs[j].1` chunks of `runs[j].0` bytes for each `j` in order, then
    /// `tail`.
    Cut { runs: [(usize, u32); SIZES.len()], tail: &'a [u8] },
}

/// Whether a stored `key` value is a head (see [`parse`]).
pub(super) fn is_cut(stored: &[u8]) -> bool {
    stored.first() == Some(&MARKER)
}

/// Reads a stored `key` value.
pub(super) fn parse(stored: &[u8]) -> Result<Stored<'_>, String> {
    if !is_cut(stored) {
        return Ok(Stored::Whole(stored));
    }
    if stored.len() < HEAD {
        return Err(format!("a chunked row's head of {} bytes is cut short", stored.len()));
    }
    let mut runs = [(0, 0); SIZES.len()];
    for (j, run) in runs.iter_mut().enumerate() {
        let at = 1 + j * 6;
        let size = usize::from(u16::from_be_bytes([stored[at], stored[at + 1]]));
        let n = u32::from_be_bytes([stored[at + 2], stored[at + 3], stored[at + 4], stored[at + 5]]);
        if size == 0 && n > 0 {
            return Err("a chunked row's head names chunks of 0 bytes".into());
        }
        *run = (size, n);
    }
    if runs.iter().try_fold(0u32, |sum, (_, n)| sum.checked_add(*n)).is_none() {
        return Err("a chunked row's head names more than 2^32 chunks".into());
    }
    Ok(Stored::Cut { runs, tail: &stored[HEAD..] })
}

/// The head to store for `row`, and its chunks in order; None when the row
/// is stored as it is.
pub(super) fn cut(row: &[u8]) -> Option<(Vec<u8>, Vec<&[u8]>)> {
    if row.len() <= SIZES[SIZES.len() - 1] && !is_cut(row) {
        return None;
    }
    let mut head = Vec::with_capacity(HEAD + SIZES[SIZES.len() - 1]);
    head.push(MARKER);
    let (mut rest, mut pieces) = (row, Vec::new());
    for size in SIZES {
        let n = rest.len() / size;
        let (whole, after) = rest.split_at(n * size);
        pieces.extend(whole.chunks(size));
        rest = after;
        head.extend_from_slice(&(size as u16).to_be_bytes());
        head.extend_from_slice(&(n as u32).to_be_bytes());
    }
    head.extend_from_slice(rest);
    Some((head, pieces))
}

/// The key of chunk `i` of the row at `key`. Revision keys are 17 or 18
/// bytes; the number's first byte is below 0x74 (`t`, a tombstone's last
/// byte) for any row under 1.9 TB, so one row's chunks never interleave with
/// another's.
pub(super) fn chunk_key(key: &[u8], i: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 4);
    k.extend_from_slice(key);
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// The error for a row whose chunks do not read back.
fn damaged(key: &[u8], what: String) -> BackendError {
    BackendError::Storage(format!(
        "the key table's row {} is damaged: {what} (restore the member from a snapshot, or remove its data dir to \
         rejoin the cluster)",
        hex(key)
    ))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The whole row of a stored `key` value at `key`: borrowed when stored
/// whole, else put together from `chunks`.
pub(super) fn whole<'a>(
    chunks: &impl ReadableTable<Bytes<'static>, Bytes<'static>>,
    key: &[u8],
    stored: &'a [u8],
) -> Result<Cow<'a, [u8]>, BackendError> {
    let (runs, tail) = match parse(stored).map_err(|e| damaged(key, e))? {
        Stored::Whole(row) => return Ok(Cow::Borrowed(row)),
        Stored::Cut { runs, tail } => (runs, tail),
    };
    let mut row = Vec::with_capacity(capacity_for(&runs, tail.len()));
    let n: u32 = runs.iter().map(|(_, n)| n).sum();
    if n > 0 {
        // The size each chunk must have, in order.
        let mut sizes = runs.iter().flat_map(|(size, n)| std::iter::repeat_n(*size, *n as usize));
        let (first, last) = (chunk_key(key, 0), chunk_key(key, n - 1));
        let mut next = 0u32;
        for item in chunks.range::<&[u8]>(first.as_slice()..=last.as_slice())? {
            let (k, v) = item?;
            let k = k.value();
            let in_place = k.len() == key.len() + 4 && k.starts_with(key) && k[key.len()..] == next.to_be_bytes();
            let size = sizes.next().unwrap_or(0);
            if !in_place || v.value().len() != size {
                return Err(damaged(key, format!("chunk {next} of {n} is out of place or not {size} bytes")));
            }
            row.extend_from_slice(v.value());
            next += 1;
        }
        if next != n {
            return Err(damaged(key, format!("{} of its {n} chunks are missing", n - next)));
        }
    }
    row.extend_from_slice(tail);
    Ok(Cow::Owned(row))
}

/// The bytes to reserve for a row of `runs` and a tail: the head's own
/// figures, but no more than [`RESERVE_MAX`], so that a damaged head does
/// not make a read allocate what it names.
fn capacity_for(runs: &[(usize, u32)], tail: usize) -> usize {
    let named = runs.iter().map(|(size, n)| size.saturating_mul(*n as usize)).fold(0usize, usize::saturating_add);
    named.min(RESERVE_MAX) + tail
}

/// Whether each key, visited in key order, is one that `sorted` (in key
/// order) names: a merge of the two, for `retain_in`'s one pass.
fn named_in(sorted: &[Vec<u8>]) -> impl FnMut(&[u8]) -> bool + '_ {
    let mut next = sorted.iter().map(Vec::as_slice).peekable();
    move |k| {
        while next.next_if(|d| *d < k).is_some() {}
        next.next_if(|d| *d == k).is_some()
    }
}

/// The number of chunks of a stored `key` value (0 when stored whole or
/// unreadable: nothing to remove).
pub(super) fn count(stored: &[u8]) -> u32 {
    match parse(stored) {
        Ok(Stored::Cut { runs, .. }) => runs.iter().map(|(_, n)| n).sum(),
        _ => 0,
    }
}

/// The value that a defragmentation's copy stores for the stored `key`
/// value `stored` at `key`: the value as it is (a head's chunks are copied
/// with [`Table::KeyChunk`]), unless it is a long row that a build before
/// chunks stored whole, which is cut now, its chunks put in `chunks`.
pub(super) fn recut<'a>(
    chunks: &mut RedbTable<'_, Bytes<'static>, Bytes<'static>>,
    key: &[u8],
    stored: &'a [u8],
) -> Result<Cow<'a, [u8]>, StorageError> {
    let whole_and_long = if is_cut(stored) { None } else { cut(stored) };
    let Some((head, pieces)) = whole_and_long else {
        return Ok(Cow::Borrowed(stored));
    };
    for (i, piece) in (0u32..).zip(pieces) {
        chunks.insert(chunk_key(key, i).as_slice(), piece)?;
    }
    Ok(Cow::Owned(head))
}

/// The `key` table and its chunks, open in one write transaction: every
/// write of a `key` row goes through here.
pub(super) struct KeyRows<'txn> {
    pub(super) rows: RedbTable<'txn, Bytes<'static>, Bytes<'static>>,
    pub(super) chunks: RedbTable<'txn, Bytes<'static>, Bytes<'static>>,
}

impl<'txn> KeyRows<'txn> {
    pub(super) fn open(tx: &'txn redb::WriteTransaction) -> Result<Self, BackendError> {
        Ok(KeyRows {
            rows: tx.open_table(super::def(Table::Key))?,
            chunks: tx.open_table(super::def(Table::KeyChunk))?,
        })
    }

    /// Writes `row` at `key`, cut if long, and removes the chunks of the
    /// row it replaces that the new one does not overwrite.
    pub(super) fn insert(&mut self, key: &[u8], row: &[u8]) -> Result<(), StorageError> {
        let (old, n) = match cut(row) {
            None => (self.rows.insert(key, row)?.map_or(0, |g| count(g.value())), 0),
            Some((head, pieces)) => {
                let mut n = 0u32;
                for piece in pieces {
                    self.chunks.insert(chunk_key(key, n).as_slice(), piece)?;
                    n += 1;
                }
                (self.rows.insert(key, head.as_slice())?.map_or(0, |g| count(g.value())), n)
            }
        };
        self.remove_chunks(key, n, old)
    }

    /// Removes the row at `key` and its chunks.
    pub(super) fn remove(&mut self, key: &[u8]) -> Result<(), StorageError> {
        let old = self.rows.remove(key)?.map_or(0, |g| count(g.value()));
        self.remove_chunks(key, 0, old)
    }

    /// Removes chunks `from..to` of the row at `key`.
    fn remove_chunks(&mut self, key: &[u8], from: u32, to: u32) -> Result<(), StorageError> {
        for i in from..to {
            self.chunks.remove(chunk_key(key, i).as_slice())?;
        }
        Ok(())
    }

    /// Removes the chunks of rows already removed: `doomed` holds each
    /// row's key and number of chunks, in key order. One pass over the
    /// leaves of their range.
    fn remove_chunks_of(&mut self, doomed: &[(Vec<u8>, u32)]) -> Result<(), StorageError> {
        let keys: Vec<Vec<u8>> = doomed.iter().flat_map(|(k, n)| (0..*n).map(|i| chunk_key(k, i))).collect();
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else { return Ok(()) };
        let mut named = named_in(&keys);
        self.chunks.retain_in::<&[u8], _>(first.as_slice()..=last.as_slice(), |k, _| !named(k))
    }
}

/// Where a write transaction writes one table's rows: `key` rows through
/// [`KeyRows`], any other table as it is.
pub(super) enum Writer<'txn> {
    Key(KeyRows<'txn>),
    Plain(RedbTable<'txn, Bytes<'static>, Bytes<'static>>),
}

impl<'txn> Writer<'txn> {
    /// Opens table `t` ([`Table::KeyChunk`] alone only for a
    /// defragmentation's copy of it as it is).
    pub(super) fn open(tx: &'txn redb::WriteTransaction, t: Table) -> Result<Self, BackendError> {
        Ok(match t {
            Table::Key => Writer::Key(KeyRows::open(tx)?),
            _ => Writer::Plain(tx.open_table(super::def(t))?),
        })
    }

    pub(super) fn insert(&mut self, key: &[u8], row: &[u8]) -> Result<(), StorageError> {
        match self {
            Writer::Key(kr) => kr.insert(key, row),
            Writer::Plain(t) => t.insert(key, row).map(drop),
        }
    }

    pub(super) fn remove(&mut self, key: &[u8]) -> Result<(), StorageError> {
        match self {
            Writer::Key(kr) => kr.remove(key),
            Writer::Plain(t) => t.remove(key).map(drop),
        }
    }

    /// Removes the rows from `from` through `through` that `doomed` (in
    /// key order) names, in one pass over the leaves (redb's `retain_in`;
    /// removed one by one, each walked down from the root and rebuilt the
    /// branches above it, most of a compaction step's time in a profile),
    /// and a removed `key` row's chunks after them.
    /// `removed` sees each removed key.
    pub(super) fn remove_named(
        &mut self,
        from: &[u8],
        through: &[u8],
        doomed: &[Vec<u8>],
        mut removed: impl FnMut(&[u8]),
    ) -> Result<(), StorageError> {
        let mut named = named_in(doomed);
        let mut cut = Vec::new();
        let key_rows = matches!(self, Writer::Key(_));
        let mut keep = |k: &[u8], v: &[u8]| {
            let gone = named(k);
            if gone {
                removed(k);
                let n = if key_rows { count(v) } else { 0 };
                if n > 0 {
                    cut.push((k.to_vec(), n));
                }
            }
            !gone
        };
        match self {
            Writer::Key(kr) => {
                kr.rows.retain_in::<&[u8], _>(from..=through, |k, v| keep(k, v))?;
                kr.remove_chunks_of(&cut)
            }
            Writer::Plain(t) => t.retain_in::<&[u8], _>(from..=through, |k, v| keep(k, v)),
        }
    }

    /// Removes every row (and chunk).
    pub(super) fn clear(&mut self) -> Result<(), StorageError> {
        match self {
            Writer::Key(kr) => {
                kr.rows.retain(|_, _| false)?;
                kr.chunks.retain(|_, _| false)
            }
            Writer::Plain(t) => t.retain(|_, _| false),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BIG: usize = SIZES[0];
    const PAGE: usize = SIZES[1];

    fn rev_key(main: u64) -> Vec<u8> {
        let mut k = main.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&0u64.to_be_bytes());
        k
    }

    /// Writes `rows` through [`KeyRows`], in order, then reads `keys` back
    /// whole; also returns the number of chunks stored.
    fn write_then_read(rows: &[(Vec<u8>, Vec<u8>)], keys: &[Vec<u8>]) -> (Vec<Vec<u8>>, u64) {
        use redb::ReadableTableMetadata;
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut kr = KeyRows::open(&tx).unwrap();
            for (k, v) in rows {
                kr.insert(k, v).unwrap();
            }
        }
        tx.commit().unwrap();
        let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
        let t = tx.open_table(super::super::def(Table::Key)).unwrap();
        let c = tx.open_table(super::super::def(Table::KeyChunk)).unwrap();
        let read = keys
            .iter()
            .map(|k| {
                let stored = t.get(k.as_slice()).unwrap().unwrap();
                whole(&c, k, stored.value()).unwrap().into_owned()
            })
            .collect();
        (read, c.len().unwrap())
    }

    fn round_trip(rows: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
        write_then_read(rows, &rows.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()).0
    }

    #[test]
    fn rows_of_every_length_and_first_byte_read_back_as_written() {
        let lens = [0, 1, 100, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE + 7, BIG - 1, BIG, BIG + PAGE, 65_536, 1_600_000];
        let mut rows = Vec::new();
        for (i, len) in lens.into_iter().enumerate() {
            for first in [0u8, 0x0a] {
                let v: Vec<u8> = (0..len).map(|j| if j == 0 { first } else { (j * 7 + i) as u8 }).collect();
                rows.push((rev_key(rows.len() as u64 + 1), v));
            }
        }
        assert_eq!(round_trip(&rows), rows.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>());
    }

    #[test]
    fn long_rows_are_cut_and_short_ones_are_not() {
        assert!(cut(&[0x0a; PAGE]).is_none());
        let lens = |row: &[u8]| cut(row).unwrap().1.iter().map(|p| p.len()).collect::<Vec<_>>();
        assert_eq!(lens(&[0x0a; 9000]), [PAGE, PAGE]);
        assert_eq!(lens(&[0x0a; 40_000]), [BIG, BIG, PAGE]);
        assert_eq!(lens(&[0x0a; 65_536]), [BIG; 4]);
        let (head, _) = cut(&[0x0a; 40_000]).unwrap();
        let tail = &[0x0a; 40_000 - 2 * BIG - PAGE][..];
        assert_eq!(parse(&head).unwrap(), Stored::Cut { runs: [(BIG, 2), (PAGE, 1)], tail });
        // A row starting with the marker is stored as a head with no chunks.
        let (head, pieces) = cut(&[0, 1, 2]).unwrap();
        assert!(pieces.is_empty());
        assert_eq!(parse(&head).unwrap(), Stored::Cut { runs: [(BIG, 0), (PAGE, 0)], tail: &[0, 1, 2][..] });
    }

    /// Overwrites that shrink a row remove the chunks it no longer has;
    /// removals remove them all; the chunk table ends up empty.
    #[test]
    fn replaced_and_removed_rows_leave_no_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            use redb::ReadableTableMetadata;
            let mut kr = KeyRows::open(&tx).unwrap();
            let (a, b, c) = (rev_key(1), rev_key(2), rev_key(3));
            // 2 + 1, 2, and 1 chunks.
            kr.insert(&a, &[0x0a; 40_000]).unwrap();
            kr.insert(&b, &[0x0a; 9000]).unwrap();
            kr.insert(&c, &[0x0a; 20_000]).unwrap();
            assert_eq!(kr.chunks.len().unwrap(), 6);
            // a's first two chunks are now of a page, its third goes.
            kr.insert(&a, &[0x0a; 9000]).unwrap();
            assert_eq!(kr.chunks.len().unwrap(), 5);
            kr.insert(&c, b"\x0asmall").unwrap();
            assert_eq!(kr.chunks.len().unwrap(), 4);
            kr.remove(&a).unwrap();
            let stored = kr.rows.remove(b.as_slice()).unwrap().map(|g| count(g.value())).unwrap();
            kr.remove_chunks_of(&[(b.clone(), stored)]).unwrap();
            assert_eq!(kr.chunks.len().unwrap(), 0);
            assert_eq!(kr.rows.len().unwrap(), 1);
        }
        tx.commit().unwrap();
    }

    #[test]
    fn missing_or_damaged_chunks_are_reported_with_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db.redb")).unwrap();
        let k = rev_key(9);
        let tx = db.begin_write().unwrap();
        {
            let mut kr = KeyRows::open(&tx).unwrap();
            kr.insert(&k, &[0x0a; 3 * PAGE + 5]).unwrap();
            kr.chunks.remove(chunk_key(&k, 2).as_slice()).unwrap();
        }
        tx.commit().unwrap();
        let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
        let (t, c) = (
            tx.open_table(super::super::def(Table::Key)).unwrap(),
            tx.open_table(super::super::def(Table::KeyChunk)).unwrap(),
        );
        let stored = t.get(k.as_slice()).unwrap().unwrap();
        let err = whole(&c, &k, stored.value()).unwrap_err().to_string();
        assert!(err.contains("1 of its 3 chunks are missing") && err.contains(&hex(&k)), "{err}");
        assert!(whole(&c, &k, &[0, 1]).unwrap_err().to_string().contains("cut short"));
        // A head naming two billion chunks of 16 KiB (32 TB) is an error,
        // not an allocation of what it names.
        let mut huge = vec![MARKER];
        huge.extend_from_slice(&(BIG as u16).to_be_bytes());
        huge.extend_from_slice(&(1u32 << 31).to_be_bytes());
        huge.extend_from_slice(&(PAGE as u16).to_be_bytes());
        huge.extend_from_slice(&0u32.to_be_bytes());
        let other = rev_key(10);
        let err = whole(&c, &other, &huge).unwrap_err().to_string();
        assert!(err.contains("2147483648 chunks are missing"), "{err}");
        let Ok(Stored::Cut { runs, tail }) = parse(&huge) else { panic!("a head") };
        let reserved = capacity_for(&runs, tail.len());
        assert!(reserved <= RESERVE_MAX, "reserved {reserved} bytes");
    }

    proptest! {
        /// Any rows, overwritten any number of times, read back as last
        /// written, and the chunk table holds exactly their chunks.
        #[test]
        fn any_rows_read_back(writes in prop::collection::vec((0u64..6, prop::collection::vec(any::<u8>(), 0..BIG + 3 * PAGE)), 1..12)) {
            let rows: Vec<_> = writes.into_iter().map(|(k, v)| (rev_key(k), v)).collect();
            let last: std::collections::BTreeMap<_, _> = rows.iter().cloned().collect();
            let keys: Vec<_> = last.keys().cloned().collect();
            let (got, chunks) = write_then_read(&rows, &keys);
            prop_assert_eq!(got, last.values().cloned().collect::<Vec<_>>());
            let want_chunks: u64 = last
                .values()
                .map(|v| if v.len() > PAGE { (v.len() / BIG + v.len() % BIG / PAGE) as u64 } else { 0 })
                .sum();
            prop_assert_eq!(chunks, want_chunks);
        }
    }
}
