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
