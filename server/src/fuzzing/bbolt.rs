//! The `bbolt_file` fuzz target: etcd snapshots and db files as
//! `kvctl snapshot status|restore` read them.

use std::collections::BTreeMap;

use crate::snapshot::bbolt::{Bolt, Writer};

/// Bucket name -> key -> value.
pub(crate) type Buckets = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

/// etcd's bucket names, so that generated files reach the row mapping.
const NAMES: [&[u8]; 8] = [b"alarm", b"auth", b"authRoles", b"authUsers", b"cluster", b"key", b"lease", b"meta"];

/// An etcd snapshot or db file. The first byte picks how it is made: odd,
/// the rest is the file; even, buckets and rows taken from the input are
/// written with kvd's bbolt writer (which must read back exactly), then the
/// file is cut or a byte flipped where the input's last bytes say. Reading
/// it as a snapshot (hash checked or not) must succeed or refuse with an
/// error: never panic, never read past the file, never loop.
pub fn bbolt_file(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("snapshot.db");
    if mode % 2 == 1 {
        std::fs::write(&path, rest).expect("write file");
    } else {
        let buckets = buckets_from(rest);
        let len = write(&buckets, &path);
        let mut want = buckets;
        want.retain(|_, rows| !rows.is_empty());
        assert_eq!(read(&path, len), Some(want), "a written file reads back");
        damage(&path, rest);
    }
    for skip in [false, true] {
        let _ = crate::snapshot::status(&path, skip);
    }
}

/// Buckets from the input's length-prefixed chunks: a chunk picks a
/// bucket, then key and value chunks follow in pairs.
fn buckets_from(data: &[u8]) -> Buckets {
    let mut buckets = Buckets::new();
    let mut chunks = super::chunks(data).into_iter();
    let mut current = NAMES[0].to_vec();
    while let Some(c) = chunks.next() {
        match c.first() {
            Some(&b) if b < 16 => current = NAMES[b as usize % NAMES.len()].to_vec(),
            _ if !c.is_empty() => {
                let v = chunks.next().unwrap_or_default();
                // A large value now and then, for overflow pages.
                let v = if v.first() == Some(&0xff) { v.repeat(64) } else { v.to_vec() };
                buckets.entry(current.clone()).or_default().insert(c.to_vec(), v);
            }
            _ => {}
        }
    }
    buckets
}

/// Writes `buckets` as a bbolt file with kvd's writer; returns its length.
pub(crate) fn write(buckets: &Buckets, path: &std::path::Path) -> u64 {
    let mut w = Writer::create(std::fs::File::create(path).expect("create")).expect("create");
    // Buckets in reverse order of names: the writer's root sorts them.
    for (name, rows) in buckets.iter().rev() {
        w.bucket(name).expect("bucket");
        for (k, v) in rows {
            w.put(k, v).expect("put");
        }
    }
    w.finish().expect("finish")
}

/// Reads a bbolt file's buckets back (empty ones are not seen); `None`
/// if the reader refuses it.
pub(crate) fn read(path: &std::path::Path, len: u64) -> Option<Buckets> {
    let file = std::fs::File::open(path).ok()?;
    let bolt = Bolt::open(&file, len).ok()?;
    let mut out = Buckets::new();
    bolt.for_each(|b, k, v| {
        out.entry(b.to_vec()).or_default().insert(k.to_vec(), v.to_vec());
        Ok(())
    })
    .ok()?;
    Some(out)
}

/// The input's last 5 bytes: an offset (4 bytes) and a byte to xor there;
/// 0 cuts the file at the offset instead.
fn damage(path: &std::path::Path, data: &[u8]) {
    if data.len() < 5 {
        return;
    }
    let tail = &data[data.len() - 5..];
    let mut bytes = std::fs::read(path).expect("read back");
    if bytes.is_empty() {
        return;
    }
    let at = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as usize % bytes.len();
    match tail[4] {
        0 => bytes.truncate(at),
        x => bytes[at] ^= x,
    }
    std::fs::write(path, bytes).expect("write damaged");
}
