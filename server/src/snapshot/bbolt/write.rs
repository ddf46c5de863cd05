//! Writing a bbolt file that bbolt (and so etcd) opens: buckets are laid
//! out bottom-up from keys given in order, each leaf page filled up to a
//! page (a larger element gets overflow pages of its own), then branch
//! pages over them, level by level, then the root bucket's page, an empty
//! freelist page and, last, the two meta pages at the front. Every page
//! from 2 to the high-water mark belongs to exactly one tree or the
//! freelist, as in a freshly compacted bbolt file.

use std::io::Write;
use std::os::unix::fs::FileExt;

use super::{BRANCH, BUCKET_FLAG, BoltError, ELEMENT, FREELIST, LEAF, Meta, PAGE_HEADER, meta_page};

/// bbolt's page size on the platforms etcd runs on.
pub const PAGE_SIZE: usize = 4096;
/// bbolt refuses longer keys.
pub const MAX_KEY: usize = 32768;

/// A bbolt file being written: pages go out in order from page 2 (the
/// meta pages are written last, by [`Writer::finish`]). Buckets are filled
/// one at a time ([`Writer::bucket`], then [`Writer::put`] in key order),
/// in any order of names.
pub struct Writer {
    file: std::io::BufWriter<std::fs::File>,
    /// The next page id.
    next: u64,
    /// Top-level buckets written so far: name and root page.
    buckets: Vec<(Vec<u8>, u64)>,
    open: Option<Open>,
}

/// The bucket being filled.
struct Open {
    name: Vec<u8>,
    /// The elements of the leaf being filled, and its size so far.
    node: Vec<(Vec<u8>, Vec<u8>)>,
    size: usize,
    /// Each written leaf's first key and page.
    leaves: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

fn io(what: &str, err: std::io::Error) -> BoltError {
    BoltError::Io { what: what.to_string(), err }
}

impl Writer {
    /// Starts a file (it must be new or empty): the meta pages' places
    /// are left zero until [`Writer::finish`].
    pub fn create(file: std::fs::File) -> Result<Writer, BoltError> {
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        file.write_all(&[0u8; 2 * PAGE_SIZE]).map_err(|e| io("the meta pages", e))?;
        Ok(Writer { file, next: 2, buckets: Vec::new(), open: None })
    }

    /// Ends the bucket being filled, if any, and starts a new top-level
    /// bucket `name`.
    pub fn bucket(&mut self, name: &[u8]) -> Result<(), BoltError> {
        self.end_bucket()?;
        if name.is_empty() || self.buckets.iter().any(|(b, _)| b == name) {
            return Err(BoltError::Corrupt(format!("bucket {:?} twice or unnamed", String::from_utf8_lossy(name))));
        }
        self.open =
            Some(Open { name: name.to_vec(), node: Vec::new(), size: PAGE_HEADER, leaves: Vec::new(), last: None });
        Ok(())
    }

    /// Adds a key to the open bucket; it must be greater than the one before.
    pub fn put(&mut self, k: &[u8], v: &[u8]) -> Result<(), BoltError> {
        let Some(open) = self.open.as_mut() else {
            return Err(BoltError::Corrupt("a key outside any bucket".into()));
        };
        let bad = |why: String| BoltError::Corrupt(format!("bucket {:?}: {why}", String::from_utf8_lossy(&open.name)));
        if k.is_empty() || k.len() > MAX_KEY {
            return Err(bad(format!("a key of {} bytes (bbolt takes 1 to {MAX_KEY})", k.len())));
        }
        if open.last.as_deref().is_some_and(|l| l >= k) {
            return Err(bad("keys out of order".into()));
        }
        open.last = Some(k.to_vec());
        let add = ELEMENT + k.len() + v.len();
        if !open.node.is_empty() && (open.size + add > PAGE_SIZE || open.node.len() == u16::MAX as usize) {
            self.flush_leaf()?;
        }
        let open = self.open.as_mut().expect("open");
        open.node.push((k.to_vec(), v.to_vec()));
        open.size += add;
        Ok(())
    }

    /// Writes the open bucket's filled leaf.
    fn flush_leaf(&mut self) -> Result<(), BoltError> {
        let Some(mut open) = self.open.take() else { return Ok(()) };
        let items: Vec<(&[u8], &[u8], u32)> = open.node.iter().map(|(k, v)| (k.as_slice(), v.as_slice(), 0)).collect();
        let id = self.leaf(&items)?;
        open.leaves.push((open.node.first().map(|n| n.0.clone()).unwrap_or_default(), id));
        open.node.clear();
        open.size = PAGE_HEADER;
        self.open = Some(open);
        Ok(())
    }

    /// Writes what is left of the open bucket and its branch pages.
    fn end_bucket(&mut self) -> Result<(), BoltError> {
        let Some(open) = self.open.as_ref() else { return Ok(()) };
        // An empty bucket still gets its (empty) leaf.
        if !open.node.is_empty() || open.leaves.is_empty() {
            self.flush_leaf()?;
        }
        let open = self.open.take().expect("open");
        let root = self.branches(open.leaves)?;
        self.buckets.push((open.name, root));
        Ok(())
    }

    /// Writes one page (with overflow pages if `body` needs them) whose
    /// elements are `elems` (16 bytes each, offsets already relative to
    /// each element) followed by `data`; returns its id.
    fn page(&mut self, flags: u16, elems: &[[u8; ELEMENT]], data: &[u8]) -> Result<u64, BoltError> {
        let len = PAGE_HEADER + elems.len() * ELEMENT + data.len();
        let pages = len.div_ceil(PAGE_SIZE).max(1);
        let id = self.next;
        let mut head = [0u8; PAGE_HEADER];
        head[0..8].copy_from_slice(&id.to_le_bytes());
        head[8..10].copy_from_slice(&flags.to_le_bytes());
        head[10..12].copy_from_slice(&(elems.len() as u16).to_le_bytes());
        head[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        let w = |f: &mut std::io::BufWriter<std::fs::File>, b: &[u8]| f.write_all(b).map_err(|e| io("a page", e));
        w(&mut self.file, &head)?;
        for e in elems {
            w(&mut self.file, e)?;
        }
        w(&mut self.file, data)?;
        w(&mut self.file, &vec![0u8; pages * PAGE_SIZE - len])?;
        self.next += pages as u64;
        Ok(id)
    }

    /// Writes a leaf page of `(key, value, flags)`.
    fn leaf(&mut self, items: &[(&[u8], &[u8], u32)]) -> Result<u64, BoltError> {
        let mut elems = Vec::with_capacity(items.len());
        let mut data = Vec::new();
        for (i, (k, v, flags)) in items.iter().enumerate() {
            // From element i to its key: the rest of the elements, then
            // the data before it.
            let pos = (items.len() - i) * ELEMENT + data.len();
            let mut e = [0u8; ELEMENT];
            e[0..4].copy_from_slice(&flags.to_le_bytes());
            e[4..8].copy_from_slice(&(pos as u32).to_le_bytes());
            e[8..12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            e[12..16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            elems.push(e);
            data.extend_from_slice(k);
            data.extend_from_slice(v);
        }
        self.page(LEAF, &elems, &data)
    }

    /// Writes branch pages over `children` (first key, page), level by
    /// level, and returns the root's page.
    fn branches(&mut self, mut children: Vec<(Vec<u8>, u64)>) -> Result<u64, BoltError> {
        while children.len() > 1 {
            let mut parents = Vec::new();
            let mut group: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut size = PAGE_HEADER;
            let mut rest = children.into_iter().peekable();
            while let Some(child) = rest.next() {
                size += ELEMENT + child.0.len();
                group.push(child);
                let next_fits = rest.peek().is_some_and(|(k, _)| size + ELEMENT + k.len() <= PAGE_SIZE);
                // A branch of one child would not shrink the level.
                if !next_fits && (group.len() > 1 || rest.peek().is_none()) {
                    parents.push(self.branch(&group)?);
                    group.clear();
                    size = PAGE_HEADER;
                }
            }
            if !group.is_empty() {
                parents.push(self.branch(&group)?);
            }
            children = parents;
        }
        Ok(children.first().map_or(0, |c| c.1))
    }

    fn branch(&mut self, group: &[(Vec<u8>, u64)]) -> Result<(Vec<u8>, u64), BoltError> {
        let mut elems = Vec::with_capacity(group.len());
        let mut data = Vec::new();
        for (i, (k, child)) in group.iter().enumerate() {
            let pos = (group.len() - i) * ELEMENT + data.len();
            let mut e = [0u8; ELEMENT];
            e[0..4].copy_from_slice(&(pos as u32).to_le_bytes());
            e[4..8].copy_from_slice(&(k.len() as u32).to_le_bytes());
            e[8..16].copy_from_slice(&child.to_le_bytes());
            elems.push(e);
            data.extend_from_slice(k);
        }
        let id = self.page(BRANCH, &elems, &data)?;
        Ok((group[0].0.clone(), id))
    }

    /// Writes the root bucket, the freelist and the meta pages, and syncs;
    /// returns the file's length.
    pub fn finish(mut self) -> Result<u64, BoltError> {
        self.end_bucket()?;
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let headers: Vec<[u8; 16]> = buckets
            .iter()
            .map(|(_, root)| {
                let mut h = [0u8; 16];
                h[0..8].copy_from_slice(&root.to_le_bytes());
                h
            })
            .collect();
        let items: Vec<(&[u8], &[u8], u32)> =
            buckets.iter().zip(&headers).map(|((name, _), h)| (name.as_slice(), h.as_slice(), BUCKET_FLAG)).collect();
        let root = self.leaf(&items)?;
        let freelist = self.page(FREELIST, &[], &[])?;
        let file = self.file.into_inner().map_err(|e| io("the file", e.into_error()))?;
        for txid in [0, 1] {
            let meta = Meta { page_size: PAGE_SIZE as u32, root, high_water: self.next, txid };
            file.write_all_at(&meta_page(&meta, freelist), txid * PAGE_SIZE as u64)
                .map_err(|e| io("a meta page", e))?;
        }
        file.sync_all().map_err(|e| io("the file", e))?;
        Ok(self.next * PAGE_SIZE as u64)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing::bbolt::{read, write};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// What the writer writes, the reader (which checks every page)
        /// reads back: small and large values, empty buckets, trees of
        /// several levels.
        #[test]
        fn written_files_read_back(
            buckets in proptest::collection::btree_map(
                proptest::collection::vec(b'a'..=b'z', 1..8),
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 1..40),
                    prop_oneof![
                        8 => proptest::collection::vec(any::<u8>(), 0..200),
                        1 => proptest::collection::vec(any::<u8>(), 3000..20000),
                    ],
                    0..400,
                ),
                1..5,
            )
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            let len = write(&buckets, &path);
            prop_assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
            let mut want = buckets.clone();
            want.retain(|_, rows| !rows.is_empty());
            prop_assert_eq!(read(&path, len), Some(want));
        }
    }

    /// Keys out of order, an empty key and a key longer than bbolt takes
    /// are refused.
    #[test]
    fn bad_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(std::fs::File::create(dir.path().join("db")).unwrap()).unwrap();
        assert!(w.put(b"a", b"1").is_err(), "no bucket open");
        w.bucket(b"key").unwrap();
        w.put(b"b", b"1").unwrap();
        assert!(w.put(b"a", b"1").unwrap_err().to_string().contains("out of order"));
        assert!(w.put(b"", b"1").is_err());
        assert!(w.put(&vec![b'z'; MAX_KEY + 1], b"1").unwrap_err().to_string().contains("bytes"));
        assert!(w.bucket(b"key").is_err(), "a bucket twice");
    }
}
