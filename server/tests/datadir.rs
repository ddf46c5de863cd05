//! A damaged data dir is repaired or refused with a message that names the
//! problem; never a panic, never silent loss.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Proc;
use kvd_api::etcdserverpb::{PutRequest, RangeRequest, RangeResponse};

const KEYS: usize = 50;

async fn fill(kvd: &Proc) {
    let mut kv = kvd.kv().await;
    for i in 0..KEYS {
        kv.put(PutRequest {
            key: format!("key{i:03}").into(),
            value: format!("value{i}").into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

async fn all(kvd: &Proc) -> RangeResponse {
    let mut kv = kvd.kv().await;
    kv.range(RangeRequest { key: b"key".to_vec(), range_end: b"kez".to_vec(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
}

fn segment(data: &Path) -> PathBuf {
    let dir = data.join("member/wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

/// Offsets of the frames in a segment (see server/src/wal/record.rs).
fn frames(seg: &Path) -> Vec<usize> {
    let b = std::fs::read(seg).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    while off + 12 <= b.len() && b[off..off + 8].iter().any(|&x| x != 0) {
        out.push(off);
        let len = u32::from_le_bytes(b[off..off + 4].try_into().unwrap()) as usize;
        off += 12 + len + b[off + 5] as usize;
    }
    out.push(off);
    out
}

/// Starts kvd, writes the keys, stops it cleanly; returns the data dir and the expected keys.
async fn prepared(dir: &Path) -> (PathBuf, RangeResponse) {
    let data = dir.join("d");
    let mut kvd = Proc::kvd_ready(&data, &[]).await;
    fill(&kvd).await;
    let before = all(&kvd).await;
    let status = kvd.stop().expect("kvd was running");
    assert!(status.success(), "a clean stop exits 0, got {status}:\n{}", kvd.log_text());
    (data, before)
}

fn expect_refusal(data: &Path, extra: &[&str], must_contain: &[&str]) {
    let mut kvd = Proc::kvd(data, extra);
    let status = kvd.wait_exit(Duration::from_secs(20)).expect("kvd must refuse to start");
    assert!(!status.success());
    let log = kvd.log_text();
    assert!(!log.contains("panicked"), "kvd panicked:\n{log}");
    for s in must_contain {
        assert!(log.contains(s), "expected {s:?} in:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_wal_tail_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (data, before) = prepared(dir.path()).await;
    let seg = segment(&data);
    let end = *frames(&seg).last().unwrap();
    // A write that never finished: a frame header promising 200 bytes, 40 of
    // them written, then the file ends.
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    let mut torn = vec![0u8; 12 + 40];
    torn[0..4].copy_from_slice(&200u32.to_le_bytes());
    torn[4] = 2;
    torn[5] = 4;
    torn[6..8].copy_from_slice(&0x4B56u16.to_le_bytes());
    torn[12..].fill(0x5A);
    f.write_all_at(&torn, end as u64).unwrap();
    f.set_len((end + torn.len()) as u64).unwrap();
    let kvd = Proc::kvd_ready(&data, &[]).await;
    let after = all(&kvd).await;
    assert_eq!(after.kvs, before.kvs, "every acknowledged key survives the repair");
    assert!(seg.with_extension("wal.broken").exists(), "the damaged segment is kept aside");
    // And the repaired member takes writes.
    kvd.kv()
        .await
        .put(PutRequest { key: b"after".to_vec(), value: b"ok".to_vec(), ..Default::default() })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_a_segment_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = prepared(dir.path()).await;
    let seg = segment(&data);
    let fr = frames(&seg);
    let victim = fr[fr.len() / 2];
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0xAB; 24], victim as u64 + 8).unwrap();
    let name = seg.file_name().unwrap().to_string_lossy().to_string();
    expect_refusal(&data, &[], &["corrupt log", &name, "offset"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_backend_is_rebuilt_from_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let (data, before) = prepared(dir.path()).await;
    std::fs::remove_file(data.join("member/db.redb")).unwrap();
    let kvd = Proc::kvd_ready(&data, &[]).await;
    let after = all(&kvd).await;
    assert_eq!(after.kvs, before.kvs);
    assert_eq!(after.kvs.len(), KEYS);
    assert_eq!(after.header.unwrap().revision, before.header.unwrap().revision);
}

/// A data dir restarted with other bootstrap flags (another cluster token)
/// starts as the member it is, with its data: as etcd's, the flags only
/// bootstrap an empty data dir, and are ignored with a warning after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_ignores_bootstrap_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (data, before) = prepared(dir.path()).await;
    let kvd = Proc::kvd_ready(&data, &["--initial-cluster-token", "another-cluster", "--log-level", "info"]).await;
    assert!(kvd.log_text().contains("--initial-cluster-state are ignored"), "{}", kvd.log_text());
    assert_eq!(all(&kvd).await.kvs, before.kvs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_that_lost_acknowledged_entries_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = prepared(dir.path()).await;
    let seg = segment(&data);
    let fr = frames(&seg);
    // Cut the log at a frame boundary well before its end, as a disk that lost
    // synced data would: the backend is now ahead of the WAL.
    let cut = fr[fr.len() - 12];
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(cut as u64).unwrap();
    f.set_len(64_000_000).unwrap();
    expect_refusal(&data, &[], &["WAL records were lost"]);
}

/// A member that has started once and comes back with an empty data dir
/// (its volume was lost) is refused, whether it would bootstrap (`new`) or
/// join (`existing`): its votes and acknowledged entries are gone, so
/// starting under its old id could lose committed writes. Removed and added
/// back, the same peer URL joins as a new learner and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_that_lost_its_data_must_be_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = common::cluster(dir.path(), 3, 191);
    for m in &members {
        m.ready().await;
    }
    let l = common::leader(&members).await;
    let via = members[l].endpoint.clone();
    let (ok, _, err) = common::etcdctl(&via, &["put", "before", "loss"], None);
    assert!(ok, "{err}");
    let victim = (l + 1) % 3;
    let name = format!("m{victim}");
    let member_id = |name: &str| {
        let (ok, out, err) = common::etcdctl(&via, &["member", "list", "-w", "json"], None);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["members"].as_array().unwrap().iter().find(|m| m["name"] == name).and_then(|m| m["ID"].as_u64())
    };
    // Published: the member has started.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let old_id = loop {
        if let Some(id) = member_id(&name) {
            break id;
        }
        assert!(std::time::Instant::now() < deadline, "{name} never published its name");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let v = &mut members[victim];
    v.kill9();
    std::fs::remove_dir_all(&v.data_dir).unwrap();
    // With its first flags (`new`) it would bootstrap a second cluster under
    // the same id; joining (`existing`) it would rejoin as the old member.
    for state in ["new", "existing"] {
        v.set_flag("--initial-cluster-state", state);
        v.restart();
        let st = v.wait_exit(Duration::from_secs(30)).expect("a member that lost its data must not start");
        assert!(!st.success());
        let log = v.log_text();
        let said = format!("--initial-cluster-state {state}: member {old_id:x}");
        assert!(log.contains(&said) && log.contains("its data is lost"), "{state}: {log}");
        std::fs::remove_dir_all(&v.data_dir).unwrap();
    }

    // The replacement: remove, add back as a learner, start from empty.
    let (ok, _, err) = common::etcdctl(&via, &["member", "remove", &format!("{old_id:x}")], None);
    assert!(ok, "{err}");
    let peer = v.flag("--initial-advertise-peer-urls").unwrap().to_string();
    let (ok, out, err) =
        common::etcdctl(&via, &["member", "add", &name, "--learner", &format!("--peer-urls={peer}")], None);
    assert!(ok && out.contains("added as learner"), "{out}{err}");
    v.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, _) =
            common::etcdctl(&v.endpoint, &["get", "before", "--consistency=s", "--print-value-only"], None);
        if ok && out.trim() == "loss" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the replacement never caught up:\n{}", v.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new_id = member_id(&name).expect("the replacement publishes its name");
    assert_ne!(new_id, old_id);
}
