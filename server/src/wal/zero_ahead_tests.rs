//! The writer keeps the region just past the WAL's tail written with zeros,
//! so that fdatasync never has to convert unwritten extents. Checked with
//! FIEMAP on the real file; skipped where the filesystem keeps no unwritten
//! extents (tmpfs, or set_len instead of fallocate).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use bytes::Bytes;

use super::segment::{SEGMENT_SIZE, ZERO_AHEAD, list_segments};
use super::*;

const META: Metadata = Metadata { node_id: 1, cluster_id: 2 };

/// `_IOWR('f', 11, struct fiemap)` from linux/fs.h.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_FLAG_SYNC: u32 = 1;
const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
const MAX_EXTENTS: usize = 64;

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Extent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// `struct fiemap` with room for [`MAX_EXTENTS`] extents.
#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [Extent; MAX_EXTENTS],
}

/// Bytes of `[start, end)` the filesystem holds as unwritten extents, or
/// None where FIEMAP is unsupported.
fn unwritten_bytes(f: &File, start: u64, end: u64) -> Option<u64> {
    let mut m = Fiemap {
        start,
        length: end - start,
        flags: FIEMAP_FLAG_SYNC,
        mapped_extents: 0,
        extent_count: MAX_EXTENTS as u32,
        reserved: 0,
        extents: [Extent::default(); MAX_EXTENTS],
    };
    // SAFETY: the kernel writes at most `extent_count` extents into `m`, which we own.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP as _, &mut m as *mut Fiemap) };
    if rc != 0 {
        return None;
    }
    let mapped = &m.extents[..(m.mapped_extents as usize).min(MAX_EXTENTS)];
    Some(
        mapped
            .iter()
            .filter(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0)
            .map(|e| (e.logical + e.length).min(end).saturating_sub(e.logical.max(start)))
            .sum(),
    )
}

/// Offset just past the last non-zero byte in the first `scan` bytes.
fn written_end(f: &File, scan: usize) -> u64 {
    let mut buf = vec![0u8; scan];
    let n = f.read_at(&mut buf, 0).unwrap();
    buf[..n].iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1)
}

#[tokio::test]
async fn the_region_past_the_tail_is_written_zeros() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), META).unwrap();
    // About 3 MiB of 8 KiB entries, 16 to a batch as a busy leader writes them.
    let value = Bytes::from(vec![7u8; 8 << 10]);
    let mut index = 0;
    for _ in 0..24 {
        let batch = (0..16)
            .map(|_| {
                index += 1;
                Record::Entry { index, data: value.clone() }
            })
            .collect();
        wal.append_sync(batch).await.unwrap();
    }
    wal.close();
    let f = File::open(list_segments(d.path()).unwrap().pop().unwrap().1).unwrap();
    let tail = written_end(&f, 8 << 20);
    assert!(tail > 3 << 20, "the entries end at {tail}");
    // Far from the tail the segment is still only preallocated...
    match unwritten_bytes(&f, SEGMENT_SIZE - ZERO_AHEAD, SEGMENT_SIZE) {
        None | Some(0) => {
            eprintln!("skipped: this filesystem reports no unwritten extents");
            return;
        }
        Some(_) => {}
    }
    // ...while the next half MiB past it holds written zeros.
    assert_eq!(unwritten_bytes(&f, tail, tail + ZERO_AHEAD / 2), Some(0), "unwritten blocks right past the tail");
    assert_eq!(replayed_entries(d.path()), index);
}

fn replayed_entries(dir: &std::path::Path) -> u64 {
    let (wal, r) = Wal::open(dir, META).unwrap();
    wal.close();
    r.entries.len() as u64
}
