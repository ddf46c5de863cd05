//! `kvctl compact` and `kvctl defrag --rolling` against real 3-member kvd
//! clusters (127.0.0.211-213 and 127.0.0.221-223): the revision they compact
//! to, duration retention through the in-cluster checkpoints, the rolling
//! order (followers first, leadership moved before the leader's turn), bytes
//! freed, the skip threshold, refusal while a member is down, and the JSON
//! result line that also lands in the termination log.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{Proc, leader, put_retrying, ready_cluster};
use kvd_api::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, StatusRequest};
use serde_json::Value;

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

struct Run {
    ok: bool,
    json: Value,
    stderr: String,
}

/// Runs kvctl with `args`, the termination log going to `log` (created empty first).
async fn kvctl(args: &[&str], log: &Path) -> Run {
    std::fs::write(log, b"").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .arg("--termination-log")
        .arg(log)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = if out.status.success() {
        assert_eq!(stdout.lines().count(), 1, "one result line: {stdout}");
        let logged = std::fs::read_to_string(log).unwrap();
        assert_eq!(logged, stdout.trim_end(), "the termination log holds the result line");
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    } else {
        Value::Null
    };
    Run { ok: out.status.success(), json, stderr }
}

fn endpoints(members: &[Proc]) -> String {
    members.iter().map(|m| m.endpoint.clone()).collect::<Vec<_>>().join(",")
}

/// Puts `n` keys under `prefix`; returns the revision after the last.
async fn put_many(m: &Proc, prefix: &str, n: usize, value: &str) -> i64 {
    let mut kv = m.kv().await;
    let mut rev = 0;
    for i in 0..n {
        let req = PutRequest { key: format!("{prefix}{i:05}").into(), value: value.into(), ..Default::default() };
        rev = put_retrying(&mut kv, req).await.header.unwrap().revision;
    }
    rev
}

/// A Range of `key` at `rev`: Ok, or the error message.
async fn range_at(m: &Proc, key: &str, rev: i64) -> Result<(), String> {
    let req = RangeRequest { key: key.into(), revision: rev, ..Default::default() };
    m.kv().await.range(req).await.map(|_| ()).map_err(|s| s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_by_revisions_and_by_duration() {
    let dir = tempfile::tempdir().unwrap();
    let members = ready_cluster(dir.path(), 3, 211, &[]).await;
    let eps = endpoints(&members);
    let log = dir.path().join("termination-log");
    let rev = put_many(&members[0], "k/", 20, "v").await;

    // Current revision minus 5.
    let r = kvctl(&["compact", "--endpoints", &eps, "--retain-revisions", "5"], &log).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.json["compactedRevision"], rev - 5);
    assert_eq!(r.json["currentRevision"], rev);
    assert!(r.json["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", r.json);
    assert_eq!(range_at(&members[1], "k/00000", rev - 6).await, Err(COMPACTED.to_string()));
    assert_eq!(range_at(&members[1], "k/00000", rev - 5).await, Ok(()));

    // Nothing new to compact, or a retention above the current revision: success, nothing compacted.
    let r = kvctl(&["compact", "--endpoints", &eps, "--retain-revisions", "5"], &log).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.json["compactedRevision"], Value::Null);
    let r = kvctl(&["compact", "--endpoints", &eps, "--retain-revisions", "100000"], &log).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.json["compactedRevision"], Value::Null);
    assert_eq!(r.json["targetRevision"], 0);

    // Duration: the first run only leaves a checkpoint of the current revision.
    // The windows are seconds wide so that a loaded machine, where a kvctl
    // run can take a second or two, still lands each run where it is meant to.
    let retain = Duration::from_secs(10);
    let dur = ["compact", "--endpoints", eps.as_str(), "--retain-duration", "10s"];
    let t_first = std::time::Instant::now();
    let first = kvctl(&dur, &log).await;
    assert!(first.ok, "{}", first.stderr);
    assert_eq!(first.json["compactedRevision"], Value::Null);
    assert_eq!(first.json["currentRevision"], rev);
    put_many(&members[2], "d/", 10, "v").await;
    // A checkpoint is added at most every retention/64 (156 ms here): on a
    // quiet machine the second run could otherwise come sooner and add none.
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Checkpoints younger than 10s: nothing to compact, one more checkpoint.
    let second = kvctl(&dur, &log).await;
    let t_second = std::time::Instant::now();
    assert!(second.ok, "{}", second.stderr);
    assert_eq!(second.json["compactedRevision"], Value::Null);
    let second_rev = second.json["currentRevision"].as_i64().unwrap();
    assert!(second_rev > rev);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let later = put_many(&members[2], "e/", 10, "v").await;
    let r = kvctl(&dur, &log).await;
    assert!(r.ok, "{}", r.stderr);
    if t_first.elapsed() < retain {
        assert_eq!(r.json["compactedRevision"], Value::Null, "still under 10s: {}", r.json);
    }
    // The first two checkpoints are then over 10s old, the third (taken at
    // least 4 s after the second) is not: compact to the newest old enough
    // (the second run's), keep everything after it.
    tokio::time::sleep(
        (t_second + retain + Duration::from_millis(500)).saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    let r = kvctl(&dur, &log).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.json["compactedRevision"], second_rev, "{}", r.json);
    assert_eq!(range_at(&members[0], "d/00000", second_rev - 1).await, Err(COMPACTED.to_string()));
    assert_eq!(range_at(&members[0], "d/00000", second_rev).await, Ok(()));
    assert_eq!(range_at(&members[0], "e/00000", later).await, Ok(()));

    // Garbled checkpoints are ignored (history is kept), not fatal.
    let mut kv = members[0].kv().await;
    let key = "kvd.io/kvctl/compaction-checkpoints";
    kv.put(PutRequest { key: key.into(), value: b"{garbage".to_vec(), ..Default::default() }).await.unwrap();
    let r = kvctl(&dur, &log).await;
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("ignoring unreadable checkpoints"), "{}", r.stderr);
    assert_eq!(r.json["compactedRevision"], Value::Null);

    // No member answers: an error, a non-zero exit.
    let r = kvctl(&["compact", "--endpoints", "127.0.0.1:1", "--timeout", "300ms"], &log).await;
    assert!(!r.ok && r.stderr.starts_with("kvctl: "), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_defrag_moves_leadership_first_and_honours_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = ready_cluster(dir.path(), 3, 221, &[]).await;
    let log = dir.path().join("termination-log");
    // 1,500 values of 4 KiB, two thirds deleted and compacted away: free pages on every member.
    let rev = put_many(&members[0], "big/", 1500, &"x".repeat(4096)).await;
    let mut kv = members[0].kv().await;
    for i in (0..1500).filter(|i| i % 3 != 0) {
        kv.delete_range(DeleteRangeRequest { key: format!("big/{i:05}").into(), ..Default::default() }).await.unwrap();
    }
    kv.compact(CompactionRequest { revision: rev + 1000, physical: true }).await.unwrap();
    // Each member compacts as it applies the compaction; its Status shows
    // the freed pages once its own compaction is done.
    for m in &members {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let st = m.maintenance().await.status(StatusRequest {}).await.unwrap().into_inner();
            let free = (st.db_size - st.db_size_in_use) as f64 / st.db_size as f64;
            if free >= 0.3 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{}: {free:.3} free after the compaction", m.endpoint);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let old_leader = leader(&members).await;
    let old_name = format!("m{old_leader}");

    // Any one endpoint will do: members are reached on their MemberList client URLs.
    let one = members[(old_leader + 1) % 3].endpoint.clone();
    let r = kvctl(&["defrag", "--rolling", "--endpoints", &one, "--skip-if-free-below", "0.1"], &log).await;
    assert!(r.ok, "{}", r.stderr);
    let done = r.json["members"].as_array().unwrap();
    let names: Vec<&str> = done.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "{}", r.json);
    assert_eq!(names[2], old_name, "the leader goes last: {}", r.json);
    for m in done {
        assert!(m["bytesFreed"].as_i64().unwrap() > 0, "{}", r.json);
        assert!(u64::from_str_radix(m["id"].as_str().unwrap(), 16).is_ok(), "{}", r.json);
    }
    let moved_to = r.json["leaderMovedTo"].as_str().unwrap().to_string();
    assert_ne!(moved_to, old_name);
    let new_leader = leader(&members).await;
    assert_ne!(new_leader, old_leader, "leadership moved off the leader before its defragmentation");
    assert_eq!(format!("m{new_leader}"), moved_to);
    // The threshold decides, member by member.
    let mut free = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        let st = m.maintenance().await.status(StatusRequest {}).await.unwrap().into_inner();
        free.insert(format!("m{i}"), (st.db_size - st.db_size_in_use) as f64 / st.db_size as f64);
    }
    let r = kvctl(&["defrag", "--rolling", "--endpoints", &one, "--skip-if-free-below", "0.1"], &log).await;
    assert!(r.ok, "{}", r.stderr);
    let names = |k: &str| -> BTreeSet<String> {
        r.json[k].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
    };
    let want: BTreeSet<String> = free.iter().filter(|(_, f)| **f >= 0.1).map(|(n, _)| n.clone()).collect();
    assert_eq!(names("members"), want, "free fractions {free:?}: {}", r.json);
    assert_eq!(names("skipped").len() + want.len(), 3, "{}", r.json);
    let new_leader = leader(&members).await;
    // Nothing over 99% free: everyone is skipped and leadership stays.
    let r = kvctl(&["defrag", "--rolling", "--endpoints", &one, "--skip-if-free-below", "0.99"], &log).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.json["members"].as_array().unwrap().len(), 0, "{}", r.json);
    assert_eq!(r.json["skipped"].as_array().unwrap().len(), 3, "{}", r.json);
    assert_eq!(r.json["leaderMovedTo"], Value::Null);
    assert_eq!(leader(&members).await, new_leader);

    // A member down: refuse before touching anyone.
    let victim = (new_leader + 1) % 3;
    members[victim].kill9();
    let alive: Vec<String> = (0..3).filter(|i| *i != victim).map(|i| members[i].endpoint.clone()).collect();
    let r = kvctl(&["defrag", "--rolling", "--endpoints", &alive.join(","), "--timeout", "1s"], &log).await;
    assert!(!r.ok, "must refuse with a member down");
    assert!(r.stderr.contains("refusing to defragment") && r.stderr.contains(&format!("m{victim}")), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "", "no result on refusal");
}
