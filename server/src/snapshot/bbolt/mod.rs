//! A reader for bbolt files, the format of etcd's backend and of the
//! snapshots `etcdctl snapshot save` writes (a bbolt file, then its
//! SHA-256), so that `kvctl snapshot restore` can bring an etcd's data in.
//!
//! The format, as bbolt's `internal/common/{page,meta}.go` define it (all
//! integers little-endian, as bbolt writes them on every platform etcd
//! runs on):
//! - the file is pages of `page_size` bytes; pages 0 and 1 are the two meta
//!   pages, the valid one with the higher transaction id is current;
//! - a page starts with `id u64 ‖ flags u16 ‖ count u16 ‖ overflow u32`
//!   and spans `overflow + 1` pages;
//! - a meta (at byte 16 of its page) is `magic u32 ‖ version u32 ‖
//!   page_size u32 ‖ flags u32 ‖ root u64 ‖ sequence u64 ‖ freelist u64 ‖
//!   high_water u64 ‖ txid u64 ‖ checksum u64`, the checksum being the
//!   FNV-1a 64 of the 56 bytes before it;
//! - a branch page holds `count` elements `pos u32 ‖ ksize u32 ‖ child u64`
//!   (the key at `pos` bytes from the element), a leaf page holds
//!   `flags u32 ‖ pos u32 ‖ ksize u32 ‖ vsize u32` (the value after the key);
//! - a leaf element with flag 1 is a bucket: its value is `root u64 ‖
//!   sequence u64`, followed, when `root` is 0, by the bucket's one leaf page
//!   inline.
//!
//! The root bucket holds the named buckets (etcd's `key`, `meta`, `lease`,
//! ...). Nothing here trusts the file: every offset is checked against its
//! page, every page against the file and the high-water mark, a page is
//! visited once, and keys must ascend, so a damaged file is refused with
//! what is wrong, never read past or looped over.

mod read;
mod write;

pub use read::Bolt;
pub use write::Writer;

use std::hash::Hasher;

/// bbolt's magic number and the one format version it has.
pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
const BUCKET_FLAG: u32 = 0x01;
/// The meta's bytes covered by its checksum, and its whole length.
const META_SUMMED: usize = 56;
const META_LEN: usize = 64;

/// What is wrong with a bbolt file, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("reading {what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("{0}")]
    Corrupt(String),
}

pub(super) fn corrupt(msg: impl Into<String>) -> BoltError {
    BoltError::Corrupt(msg.into())
}

/// The fields of a meta page kvd uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub root: u64,
    pub high_water: u64,
    pub txid: u64,
}

/// Whether `head` (the first bytes of a file) looks like a bbolt file:
/// page 0 is a meta page with bbolt's magic.
pub fn looks_like_bbolt(head: &[u8]) -> bool {
    head.len() >= PAGE_HEADER + 8
        && u16_at(head, 8) == META
        && u32_at(head, PAGE_HEADER) == MAGIC
        && u32_at(head, PAGE_HEADER + 4) == VERSION
}

pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses the meta of a meta page's first bytes; `None` if it is not a
/// valid one (magic, version, checksum, page size).
pub(super) fn parse_meta(page: &[u8]) -> Result<Meta, String> {
    if page.len() < PAGE_HEADER + META_LEN {
        return Err("too short for a meta page".into());
    }
    if u16_at(page, 8) != META {
        return Err(format!("page flags {:#x}, not a meta page", u16_at(page, 8)));
    }
    let m = &page[PAGE_HEADER..PAGE_HEADER + META_LEN];
    if u32_at(m, 0) != MAGIC {
        return Err("no bbolt magic".into());
    }
    if u32_at(m, 4) != VERSION {
        return Err(format!("bbolt format version {}, not {VERSION}", u32_at(m, 4)));
    }
    if checksum(&m[..META_SUMMED]) != u64_at(m, META_SUMMED) {
        return Err("meta checksum mismatch".into());
    }
    let page_size = u32_at(m, 8);
    if !page_size.is_power_of_two() || !(512..=1 << 20).contains(&page_size) {
        return Err(format!("page size {page_size} is not a power of two from 512 to 1 MiB"));
    }
    Ok(Meta { page_size, root: u64_at(m, 16), high_water: u64_at(m, 40), txid: u64_at(m, 48) })
}

/// bbolt's meta checksum: FNV-1a 64.
fn checksum(b: &[u8]) -> u64 {
    let mut fnv = fnv::FnvHasher::default();
    fnv.write(b);
    fnv.finish()
}

/// A meta page (page `txid % 2`, as bbolt writes them) of `page_size` bytes.
pub(super) fn meta_page(meta: &Meta, freelist: u64) -> Vec<u8> {
    let mut p = vec![0u8; meta.page_size as usize];
    p[0..8].copy_from_slice(&(meta.txid % 2).to_le_bytes());
    p[8..10].copy_from_slice(&META.to_le_bytes());
    let m = &mut p[PAGE_HEADER..PAGE_HEADER + META_LEN];
    m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    m[4..8].copy_from_slice(&VERSION.to_le_bytes());
    m[8..12].copy_from_slice(&meta.page_size.to_le_bytes());
    m[16..24].copy_from_slice(&meta.root.to_le_bytes());
    m[32..40].copy_from_slice(&freelist.to_le_bytes());
    m[40..48].copy_from_slice(&meta.high_water.to_le_bytes());
    m[48..56].copy_from_slice(&meta.txid.to_le_bytes());
    let sum = checksum(&m[..META_SUMMED]);
    m[META_SUMMED..META_LEN].copy_from_slice(&sum.to_le_bytes());
    p
}
