//! WAL tests on real files: replay, truncation, torn tails, corruption,
//! segment cuts and identity checks.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use super::segment::list_segments;
use super::*;

const META: Metadata = Metadata { node_id: 1, cluster_id: 2 };

fn entries(range: std::ops::RangeInclusive<u64>, tag: &str) -> Vec<Record> {
    range.map(|i| Record::Entry { index: i, data: Bytes::from(format!("{tag}{i}")) }).collect()
}

async fn write(dir: &std::path::Path, recs: Vec<Record>) {
    let (wal, _) = Wal::open(dir, META).unwrap();
    wal.append_sync(recs).await.unwrap();
    wal.close();
}

fn replayed(dir: &std::path::Path) -> Replay {
    let (wal, r) = Wal::open(dir, META).unwrap();
    wal.close();
    r
}

fn last_segment(dir: &std::path::Path) -> std::path::PathBuf {
    list_segments(dir).unwrap().pop().unwrap().1
}

#[tokio::test]
async fn replays_entries_state_and_truncation() {
    let d = tempfile::tempdir().unwrap();
    let mut recs = entries(1..=5, "a");
    recs.push(Record::State(Bytes::from_static(b"vote1")));
    recs.push(Record::Truncate { since: 4 });
    recs.extend(entries(4..=6, "b"));
    recs.push(Record::Commit(Bytes::from_static(b"c5")));
    write(d.path(), recs).await;
    let r = replayed(d.path());
    let got: Vec<_> = r.entries.iter().map(|(i, b)| (*i, String::from_utf8_lossy(b).to_string())).collect();
    let want: Vec<_> =
        [(1, "a1"), (2, "a2"), (3, "a3"), (4, "b4"), (5, "b5"), (6, "b6")].map(|(i, s)| (i, s.to_string())).to_vec();
    assert_eq!(got, want);
    assert_eq!(r.state.as_deref(), Some(&b"vote1"[..]));
    assert_eq!(r.commit.as_deref(), Some(&b"c5"[..]));
    // Appending after a reopen continues the chain.
    write(d.path(), entries(7..=7, "c")).await;
    assert_eq!(replayed(d.path()).entries.back().unwrap().0, 7);
}

#[tokio::test]
async fn torn_tail_is_cut_and_kept_aside() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), entries(1..=3, "x")).await;
    let seg = last_segment(d.path());
    // Find the end of the data and chop the file in the middle of the last record.
    let buf = std::fs::read(&seg).unwrap();
    let end = buf.iter().rposition(|&b| b != 0).unwrap() + 1;
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len((end - 5) as u64).unwrap();
    let r = replayed(d.path());
    assert_eq!(r.entries.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2]);
    assert!(seg.with_extension("wal.broken").exists(), "damaged segment kept aside");
    // The repaired log takes new appends and replays them.
    write(d.path(), entries(3..=4, "y")).await;
    assert_eq!(replayed(d.path()).entries.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn garbage_in_the_middle_names_file_and_offset() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), entries(1..=3, "payload-that-is-long-enough-")).await;
    let seg = last_segment(d.path());
    let buf = std::fs::read(&seg).unwrap();
    // Offset of the second entry's data: flip a byte in it.
    let pos = buf.windows(29).position(|w| w == b"payload-that-is-long-enough-2").unwrap();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[buf[pos] ^ 0xff], pos as u64).unwrap();
    let err = Wal::open(d.path(), META).err().expect("corruption must be refused");
    let msg = err.to_string();
    assert!(matches!(err, WalError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&seg.file_name().unwrap().to_string_lossy().to_string()), "{msg}");
    assert!(msg.contains("offset"), "{msg}");
}

#[tokio::test]
async fn other_cluster_is_refused() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), entries(1..=1, "x")).await;
    let err = Wal::open(d.path(), Metadata { node_id: 1, cluster_id: 3 }).err().unwrap();
    assert!(matches!(err, WalError::ClusterMismatch { .. }), "{err}");
}

#[tokio::test]
async fn segments_are_cut_and_chained() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), META).unwrap();
    let big = Bytes::from(vec![7u8; 1 << 20]);
    for i in 1..=70u64 {
        wal.append_sync(vec![Record::Entry { index: i, data: big.clone() }]).await.unwrap();
    }
    wal.close();
    let segs = list_segments(d.path()).unwrap();
    assert_eq!(segs.len(), 2, "70 MiB of entries need a second 64 MB segment");
    assert_eq!(segs[1].0.seq, 1);
    let r = replayed(d.path());
    assert_eq!(r.entries.len(), 70);
    assert_eq!(r.entries.back().unwrap().0, 70);
    // Break the chain at the head of the second segment: refused, not repaired.
    let f = OpenOptions::new().write(true).open(&segs[1].1).unwrap();
    f.write_all_at(&[0xAA], 12).unwrap();
    assert!(matches!(Wal::open(d.path(), META), Err(WalError::Corrupt { .. })));
}

/// A segment file that keeps writes in memory until fdatasync, and on "power
/// loss" persists only a random subset of the unsynced 512-byte sectors.
mod lossy {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::super::segment::SegmentFile;

    pub struct Lossy {
        file: File,
        pending: Mutex<Vec<(u64, Vec<u8>)>>,
    }

    static CRASHED: AtomicBool = AtomicBool::new(false);
    static SEED: AtomicU64 = AtomicU64::new(1);
    static OPEN: Mutex<Vec<Arc<Lossy>>> = Mutex::new(Vec::new());

    struct Handle(Arc<Lossy>);

    impl SegmentFile for Handle {
        fn pwrite(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            if CRASHED.load(Ordering::SeqCst) {
                return Err(io::Error::other("power lost"));
            }
            self.0.pending.lock().unwrap().push((offset, buf.to_vec()));
            Ok(())
        }
        fn fdatasync(&self) -> io::Result<()> {
            // A slow disk: the window in which power can fail mid-flush.
            std::thread::sleep(std::time::Duration::from_millis(1));
            // Hold the lock across the check and the flush, so a crash cannot
            // slip in between and lose writes this call reports durable.
            let mut p = self.0.pending.lock().unwrap();
            if CRASHED.load(Ordering::SeqCst) {
                return Err(io::Error::other("power lost"));
            }
            for (off, buf) in p.drain(..) {
                self.0.file.write_all_at(&buf, off)?;
            }
            Ok(())
        }
    }

    pub fn hook(f: File) -> Box<dyn SegmentFile> {
        let l = Arc::new(Lossy { file: f, pending: Mutex::new(Vec::new()) });
        OPEN.lock().unwrap().push(l.clone());
        Box::new(Handle(l))
    }

    fn rand() -> u64 {
        let mut x = SEED.load(Ordering::SeqCst);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        SEED.store(x, Ordering::SeqCst);
        x
    }

    pub fn reset(seed: u64) {
        CRASHED.store(false, Ordering::SeqCst);
        SEED.store(seed.max(1), Ordering::SeqCst);
        OPEN.lock().unwrap().clear();
    }

    /// Power loss: some unsynced sectors reach the disk, the rest vanish.
    pub fn crash() {
        let files = OPEN.lock().unwrap().clone();
        for f in files {
            let mut p = f.pending.lock().unwrap();
            CRASHED.store(true, Ordering::SeqCst);
            for (off, buf) in p.drain(..) {
                let mut pos = 0usize;
                while pos < buf.len() {
                    let abs = off + pos as u64;
                    let end = (((abs / 512) + 1) * 512 - off) as usize;
                    let end = end.min(buf.len());
                    if rand().is_multiple_of(2) {
                        f.file.write_all_at(&buf[pos..end], abs).unwrap();
                    }
                    pos = end;
                }
            }
        }
        CRASHED.store(true, Ordering::SeqCst);
    }
}

/// Power loss at random points: every append whose callback said "durable" is
/// replayed, the log is a clean prefix, and the WAL opens (repairing a torn tail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_keeps_every_acknowledged_append() {
    use std::sync::{Arc, Mutex};
    let (mut lost_unsynced, mut repaired) = (0, 0);
    for seed in 1..=60u64 {
        let d = tempfile::tempdir().unwrap();
        lossy::reset(seed * 7919);
        let (wal, _) = Wal::open_with(d.path(), META, lossy::hook).unwrap();
        let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
        let crash_after = 20 + (seed * 37) % 200;
        let appended = crash_after + 40;
        for i in 1..=appended {
            let acked = acked.clone();
            let data = Bytes::from(vec![(i % 251) as u8; 1 + (i as usize * 131) % 3000]);
            wal.append(
                vec![Record::Entry { index: i, data }],
                Box::new(move |r| {
                    if r.is_ok() {
                        acked.lock().unwrap().push(i);
                    }
                }),
            );
            if i.is_multiple_of(3) {
                wal.append_lazy(vec![Record::Commit(Bytes::from(i.to_le_bytes().to_vec()))]);
            }
            if i == crash_after {
                lossy::crash();
            }
            if i.is_multiple_of(10) {
                // Let batches of several sectors build up behind a slow fdatasync.
                tokio::time::sleep(std::time::Duration::from_micros(700)).await;
            }
        }
        wal.close();
        let r = replayed(d.path());
        lost_unsynced += usize::from((r.entries.len() as u64) < appended);
        repaired += usize::from(
            std::fs::read_dir(d.path()).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".broken")),
        );
        let max_acked = acked.lock().unwrap().iter().copied().max().unwrap_or(0);
        let got: Vec<u64> = r.entries.iter().map(|e| e.0).collect();
        assert!(got.len() as u64 >= max_acked, "seed {seed}: acked up to {max_acked}, replayed {}", got.len());
        for (n, (i, data)) in r.entries.iter().enumerate() {
            assert_eq!(*i, n as u64 + 1, "seed {seed}: replayed log is not a clean prefix");
            assert_eq!(data.len(), 1 + (*i as usize * 131) % 3000, "seed {seed}: entry {i} damaged");
            assert!(data.iter().all(|&b| b == (*i % 251) as u8), "seed {seed}: entry {i} damaged");
        }
    }
    eprintln!("power loss: {lost_unsynced}/60 crashes lost unsynced appends, {repaired} left a torn tail");
    // The crashes must really have lost unsynced data and torn some writes.
    assert!(lost_unsynced > 50, "only {lost_unsynced} crashes lost anything");
    assert!(repaired > 0, "no crash left a torn tail to repair");
}

#[tokio::test]
async fn purge_deletes_whole_segments_below_the_marker() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), META).unwrap();
    let big = Bytes::from(vec![3u8; 1 << 20]);
    for i in 1..=70u64 {
        wal.append_sync(vec![Record::Entry { index: i, data: big.clone() }]).await.unwrap();
    }
    assert_eq!(list_segments(d.path()).unwrap().len(), 2);
    // Purging below the second segment's first entry keeps both segments.
    wal.purge(10, Bytes::from_static(b"p10")).await.unwrap();
    assert_eq!(list_segments(d.path()).unwrap().len(), 2);
    let second = list_segments(d.path()).unwrap()[1].0.index;
    wal.purge(second - 1, Bytes::from_static(b"p")).await.unwrap();
    let segs = list_segments(d.path()).unwrap();
    assert_eq!(segs.len(), 1, "the first segment holds only purged entries");
    wal.append_sync(entries(71..=71, "z")).await.unwrap();
    wal.close();
    let r = replayed(d.path());
    assert_eq!(r.entries.front().unwrap().0, second, "replay starts right after the purge point");
    assert_eq!(r.entries.back().unwrap().0, 71);
    assert_eq!(r.snapshot.as_ref().map(|s| s.0), Some(second - 1));
}

/// Counts pwrites and fdatasyncs of the segments it wraps (one test uses it).
mod counting {
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::super::segment::SegmentFile;

    pub static WRITES: AtomicU64 = AtomicU64::new(0);
    pub static SYNCS: AtomicU64 = AtomicU64::new(0);

    struct Counting(File);

    impl SegmentFile for Counting {
        fn pwrite(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            // Counts the writes of records, not the zeros written ahead of the tail.
            if buf.iter().any(|&b| b != 0) {
                WRITES.fetch_add(1, Ordering::SeqCst);
            }
            self.0.write_all_at(buf, offset)
        }
        fn fdatasync(&self) -> io::Result<()> {
            SYNCS.fetch_add(1, Ordering::SeqCst);
            self.0.sync_data()
        }
    }

    pub fn hook(f: File) -> Box<dyn SegmentFile> {
        Box::new(Counting(f))
    }
}

#[tokio::test]
async fn lazy_records_wait_for_the_next_fdatasync() {
    use std::sync::atomic::Ordering::SeqCst;
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open_with(d.path(), META, counting::hook).unwrap();
    wal.append_sync(entries(1..=1, "a")).await.unwrap();
    let (writes, syncs) = (counting::WRITES.load(SeqCst), counting::SYNCS.load(SeqCst));
    assert_eq!((writes, syncs), (1, 1), "one write and one fdatasync for an awaited append");
    // A commit record followed by an awaited append rides with it: no
    // write of its own...
    wal.append_lazy(vec![Record::Commit(Bytes::from_static(b"c1"))]);
    wal.append_sync(entries(2..=2, "a")).await.unwrap();
    assert_eq!(
        (counting::WRITES.load(SeqCst), counting::SYNCS.load(SeqCst)),
        (2, 2),
        "the lazy record took a write or an fdatasync of its own"
    );
    // ...and alone it is written once nothing came for a while, not synced...
    let start = std::time::Instant::now();
    wal.append_lazy(vec![Record::Commit(Bytes::from_static(b"c2"))]);
    while counting::WRITES.load(SeqCst) < 3 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "the lazy record was never written");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(counting::SYNCS.load(SeqCst), 2, "a batch of lazy records paid its own fdatasync");
    // ...until the next awaited append, whose fdatasync covers it.
    wal.append_sync(entries(3..=3, "a")).await.unwrap();
    assert_eq!(counting::SYNCS.load(SeqCst), 3);
    wal.close();
    let r = replayed(d.path());
    assert_eq!(r.commit.as_deref(), Some(&b"c2"[..]));
    assert_eq!(r.entries.len(), 3);
}

#[tokio::test]
async fn a_closed_wal_refuses_appends_instead_of_hanging() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), META).unwrap();
    wal.append_sync(entries(1..=1, "a")).await.unwrap();
    wal.close();
    let late = tokio::time::timeout(std::time::Duration::from_secs(10), wal.append_sync(entries(2..=2, "a")));
    assert!(matches!(late.await, Ok(Err(WalError::Closed))), "an append after close was not refused");
    let purge = tokio::time::timeout(std::time::Duration::from_secs(10), wal.purge(1, Bytes::new()));
    assert!(matches!(purge.await, Ok(Err(WalError::Closed))));
    wal.close();
    assert_eq!(replayed(d.path()).entries.len(), 1);
}
