//! Reading a bbolt file: the meta pages, then every bucket's tree, each
//! page checked before it is believed (see the module above for the layout).

use std::collections::HashSet;
use std::os::unix::fs::FileExt;

use super::{
    BRANCH, BUCKET_FLAG, BoltError, ELEMENT, LEAF, META_LEN, Meta, PAGE_HEADER, corrupt, parse_meta, u16_at, u32_at,
    u64_at,
};

/// Deeper than any real tree (bbolt splits pages at half full, so depth
/// grows by one for every ~100-fold more keys).
const MAX_DEPTH: usize = 64;

/// An open bbolt file (the first `len` bytes of `file`: a snapshot's
/// SHA-256 trailer is not part of it).
pub struct Bolt<'a> {
    file: &'a std::fs::File,
    len: u64,
    meta: Meta,
}

impl<'a> Bolt<'a> {
    /// Reads and checks the meta pages; the current one is the valid one
    /// with the higher transaction id, as bbolt picks it.
    pub fn open(file: &'a std::fs::File, len: u64) -> Result<Bolt<'a>, BoltError> {
        let read = |off: u64, n: usize| -> Result<Option<Vec<u8>>, BoltError> {
            if off + n as u64 > len {
                return Ok(None);
            }
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, off)
                .map_err(|err| BoltError::Io { what: format!("the meta page at byte {off}"), err })?;
            Ok(Some(buf))
        };
        let first =
            read(0, PAGE_HEADER + META_LEN)?.ok_or_else(|| corrupt(format!("{len} bytes is too short for bbolt")))?;
        let m0 = parse_meta(&first);
        // Page 1 is one page in; when page 0 is damaged its page size is
        // unknown, so try the sizes bbolt is built with.
        let sizes: Vec<u64> = match &m0 {
            Ok(m) => vec![m.page_size as u64],
            Err(_) => vec![4096, 8192, 16384, 65536, 2048, 1024, 32768],
        };
        let mut m1 = Err("not found".to_string());
        for size in sizes {
            if let Some(p) = read(size, PAGE_HEADER + META_LEN)? {
                m1 = parse_meta(&p).and_then(|m| {
                    if m.page_size as u64 == size { Ok(m) } else { Err("its page size disagrees".into()) }
                });
                if m1.is_ok() {
                    break;
                }
            }
        }
        let meta = match (m0, m1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(a), Err(b)) => {
                return Err(corrupt(format!("neither meta page is valid (page 0: {a}; page 1: {b})")));
            }
        };
        let bolt = Bolt { file, len, meta };
        let pages = len / meta.page_size as u64;
        if meta.high_water > pages {
            return Err(corrupt(format!(
                "truncated: the file has {pages} pages of {} bytes, its meta counts {} ({} bytes missing)",
                meta.page_size,
                meta.high_water,
                (meta.high_water - pages) * meta.page_size as u64
            )));
        }
        Ok(bolt)
    }

    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>, BoltError> {
        if id < 2 || id >= self.meta.high_water {
            return Err(corrupt(format!(
                "a tree points at page {id}, outside the data pages 2..{}",
                self.meta.high_water
            )));
        }
        let size = self.meta.page_size as u64;
        let off = id * size;
        let mut head = [0u8; PAGE_HEADER];
        self.file
            .read_exact_at(&mut head, off)
            .map_err(|err| BoltError::Io { what: format!("page {id} at byte {off}"), err })?;
        if u64_at(&head, 0) != id {
            return Err(corrupt(format!("page {id} says it is page {}", u64_at(&head, 0))));
        }
        let span = (u32_at(&head, 12) as u64 + 1) * size;
        if off + span > self.meta.high_water * size || off + span > self.len {
            return Err(corrupt(format!(
                "page {id} spans {span} bytes, past the end of the data ({} pages)",
                self.meta.high_water
            )));
        }
        let mut page = vec![0u8; span as usize];
        self.file
            .read_exact_at(&mut page, off)
            .map_err(|err| BoltError::Io { what: format!("page {id} at byte {off}"), err })?;
        Ok(page)
    }

    /// Calls `f(bucket, key, value)` for every key of every top-level
    /// bucket, buckets and keys in order. A nested bucket (etcd has none)
    /// is refused: nothing kvd could restore it into.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8], &[u8]) -> Result<(), String>) -> Result<(), BoltError> {
        let mut seen = HashSet::new();
        let mut buckets = Vec::new();
        let mut last = None;
        self.walk(Node::Page(self.meta.root), 0, &mut seen, &mut last, &mut |k, v, is_bucket| {
            if !is_bucket {
                return Err(format!("the root holds a key {:?} that is not a bucket", String::from_utf8_lossy(k)));
            }
            buckets.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        for (name, header) in buckets {
            let shown = String::from_utf8_lossy(&name).into_owned();
            if header.len() < 16 {
                return Err(corrupt(format!("bucket {shown:?}: its header is {} bytes, not 16", header.len())));
            }
            let root = u64_at(&header, 0);
            let node = if root == 0 { Node::Inline(header[16..].to_vec()) } else { Node::Page(root) };
            let mut last = None;
            self.walk(node, 0, &mut seen, &mut last, &mut |k, v, is_bucket| {
                if is_bucket {
                    return Err(format!("holds a nested bucket {:?}", String::from_utf8_lossy(k)));
                }
                f(&name, k, v)
            })
            .map_err(|e| match e {
                BoltError::Corrupt(m) => corrupt(format!("bucket {shown:?}: {m}")),
                e => e,
            })?;
        }
        Ok(())
    }

    /// Visits a tree's leaf elements in order, checking the page layout.
    fn walk(
        &self,
        node: Node,
        depth: usize,
        seen: &mut HashSet<u64>,
        last: &mut Option<Vec<u8>>,
        f: &mut Visit,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(corrupt(format!("a tree is deeper than {MAX_DEPTH} pages")));
        }
        let (id, page) = match node {
            Node::Page(id) => {
                if !seen.insert(id) {
                    return Err(corrupt(format!("page {id} is reached twice")));
                }
                (Some(id), self.page(id)?)
            }
            Node::Inline(bytes) => (None, bytes),
        };
        let at = || id.map_or_else(|| "an inline bucket page".to_string(), |id| format!("page {id}"));
        if page.len() < PAGE_HEADER {
            return Err(corrupt(format!("{} is {} bytes long", at(), page.len())));
        }
        let (flags, count) = (u16_at(&page, 8), u16_at(&page, 10) as usize);
        if PAGE_HEADER + count * ELEMENT > page.len() {
            return Err(corrupt(format!("{}: {count} elements do not fit in {} bytes", at(), page.len())));
        }
        // An element's bytes, `pos` counted from the element itself.
        let slice = |i: usize, pos: u32, len: u64| -> Result<&[u8], BoltError> {
            let start = (PAGE_HEADER + i * ELEMENT) as u64 + pos as u64;
            let end = start + len;
            if end > page.len() as u64 {
                return Err(corrupt(format!("{}: element {i} runs past the page ({end} > {})", at(), page.len())));
            }
            Ok(&page[start as usize..end as usize])
        };
        match flags {
            LEAF => {
                for i in 0..count {
                    let e = PAGE_HEADER + i * ELEMENT;
                    let (eflags, pos, ksize, vsize) =
                        (u32_at(&page, e), u32_at(&page, e + 4), u32_at(&page, e + 8), u32_at(&page, e + 12));
                    let kv = slice(i, pos, ksize as u64 + vsize as u64)?;
                    let (k, v) = kv.split_at(ksize as usize);
                    if last.as_deref().is_some_and(|l| l >= k) {
                        return Err(corrupt(format!("{}: keys out of order at element {i}", at())));
                    }
                    *last = Some(k.to_vec());
                    f(k, v, eflags & BUCKET_FLAG != 0).map_err(corrupt)?;
                }
                Ok(())
            }
            BRANCH if id.is_some() => {
                for i in 0..count {
                    let e = PAGE_HEADER + i * ELEMENT;
                    let child = u64_at(&page, e + 8);
                    slice(i, u32_at(&page, e), u32_at(&page, e + 4) as u64)?;
                    self.walk(Node::Page(child), depth + 1, seen, last, f)?;
                }
                Ok(())
            }
            other => Err(corrupt(format!("{} has flags {other:#x}, not a branch or leaf page", at()))),
        }
    }
}

/// What a walk calls with each leaf element: key, value, whether it is a
/// bucket.
type Visit<'f> = dyn FnMut(&[u8], &[u8], bool) -> Result<(), String> + 'f;

/// Where a tree starts: a page of the file, or a bucket's inline page.
enum Node {
    Page(u64),
    Inline(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny bbolt file written by hand: meta pages, a root leaf holding
    /// one bucket, whose leaf holds two keys.
    fn tiny() -> Vec<u8> {
        let ps = 4096usize;
        let mut f = vec![0u8; ps * 4];
        for (n, txid) in [(0usize, 2u64), (1, 1)] {
            let meta = Meta { page_size: ps as u32, root: 2, high_water: 4, txid };
            f[n * ps..(n + 1) * ps].copy_from_slice(&super::super::meta_page(&meta, u64::MAX));
        }
        leaf(&mut f[2 * ps..3 * ps], 2, &[(b"key".as_slice(), [3u64.to_le_bytes(), [0; 8]].concat(), BUCKET_FLAG)]);
        leaf(&mut f[3 * ps..], 3, &[(b"a".as_slice(), b"1".to_vec(), 0), (b"b".as_slice(), b"22".to_vec(), 0)]);
        f
    }

    fn leaf(p: &mut [u8], id: u64, elems: &[(&[u8], Vec<u8>, u32)]) {
        p[0..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&LEAF.to_le_bytes());
        p[10..12].copy_from_slice(&(elems.len() as u16).to_le_bytes());
        let mut data = PAGE_HEADER + elems.len() * ELEMENT;
        for (i, (k, v, flags)) in elems.iter().enumerate() {
            let e = PAGE_HEADER + i * ELEMENT;
            p[e..e + 4].copy_from_slice(&flags.to_le_bytes());
            p[e + 4..e + 8].copy_from_slice(&((data - e) as u32).to_le_bytes());
            p[e + 8..e + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            p[e + 12..e + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            p[data..data + k.len()].copy_from_slice(k);
            p[data + k.len()..data + k.len() + v.len()].copy_from_slice(v);
            data += k.len() + v.len();
        }
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(String, String, String)>, BoltError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let bolt = Bolt::open(&file, bytes.len() as u64)?;
        let mut out = Vec::new();
        bolt.for_each(|b, k, v| {
            let s = |x: &[u8]| String::from_utf8_lossy(x).into_owned();
            out.push((s(b), s(k), s(v)));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn reads_a_bucket() {
        let all = read_all(&tiny()).unwrap();
        assert_eq!(all, vec![("key".into(), "a".into(), "1".into()), ("key".into(), "b".into(), "22".into())]);
    }

    #[test]
    fn damage_is_named() {
        let good = tiny();
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Damage, &str)> = vec![
            (Box::new(|f| f.truncate(4096 * 3)), "truncated"),
            (Box::new(|f| f[3 * 4096] = 9), "says it is page"),
            (Box::new(|f| f[3 * 4096 + 11] = 1), "do not fit"),
            (Box::new(|f| f[3 * 4096 + 16 + 6] = 1), "runs past the page"),
            (Box::new(|f| f[2 * 4096 + 35] = 7), "outside the data pages"),
            (Box::new(|f| f[2 * 4096 + 35] = 2), "reached twice"),
            (Box::new(|f| f[3 * 4096 + 8] = 0x10), "not a branch or leaf"),
            (Box::new(|f| f[3 * 4096 + 50] = b'a'), "out of order"),
            (
                Box::new(|f| {
                    f[20] ^= 1;
                    f[4096 + 20] ^= 1;
                }),
                "neither meta page is valid",
            ),
        ];
        for (damage, want) in cases {
            let mut f = good.clone();
            damage(&mut f);
            let err = read_all(&f).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
        // One damaged meta page is not fatal: the other one is used.
        let mut f = good.clone();
        f[20] ^= 1;
        assert_eq!(read_all(&f).unwrap().len(), 2);
    }
}
