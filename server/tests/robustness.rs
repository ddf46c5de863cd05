//! The fault harness: real kvd clusters of 3 and 5 members, concurrent
//! clients running a recorded mix of get, put, compare-and-swap txn, delete
//! and lease put/revoke with unique values, while members are killed (the
//! leader among them, on a disk that loses what they did not sync),
//! restarted, paused past the election timeout,
//! replaced by a fresh member, and (on loopback) left behind across a
//! membership change so that they catch up by a raft snapshot and are
//! killed right after its install; and, with each member in its own network
//! namespace, while the leader is cut off from its peers, single links are
//! cut and members' traffic is delayed (robustness/faults.rs).
//!
//! Checked afterwards: each key's history is linearizable (robustness/
//! checker.rs, Wing & Gong with Lowe's memoization, against etcd's model in
//! robustness/model.rs); a watcher that followed the keys across members saw
//! every revision once, in order, matching the history, every acknowledged
//! write included; every member has the same HashKV at the final revision
//! and the same membership, as its own raft holds it.
//!
//! CI runs short versions; `scripts/robustness` runs long ones
//! (`KVD_ROBUSTNESS_SECONDS`, `KVD_ROBUSTNESS_ROUNDS`). Each run prints one
//! `ROBUSTNESS {json}` line with its counts. With
//! `KVD_ROBUSTNESS_SERIALIZABLE_READS` set the clients read serializably, and
//! the checker must then find stale reads (`scripts/robustness
//! --serializable-reads` checks that it does).

#[path = "robustness/checker.rs"]
mod checker;
mod common;
#[path = "robustness/diagnose.rs"]
mod diagnose;
#[path = "robustness/faults.rs"]
mod faults;
#[path = "robustness/model.rs"]
mod model;
#[path = "robustness/watch_check.rs"]
mod watch_check;
#[path = "robustness/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::Verdict;
use kvd_api::etcdserverpb::RangeRequest;
use kvd_api::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The store's revision, read linearizably from any member that answers.
async fn current_revision(endpoints: &[String]) -> i64 {
    for _ in 0..100 {
        for e in endpoints {
            let mut kv = KvClient::new(Channel::from_shared(e.clone()).unwrap().connect_lazy());
            if let Ok(r) = kv.range(RangeRequest { key: b"rb/".to_vec(), ..Default::default() }).await {
                return r.into_inner().header.unwrap().revision;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no member answers a linearizable read")
}

/// A failed check, with the key and revisions to show members' views of.
struct Failure {
    what: String,
    key: usize,
    revs: Vec<i64>,
}

fn show(ops: &[(usize, &workload::KvOp)]) -> String {
    ops.iter()
        .map(|(member, o)| {
            let ret = if o.ret == u64::MAX { "?".to_string() } else { format!("{:.6}", o.ret as f64 / 1e9) };
            format!(
                "\n  client {} on m{member} [{:.6}s, {ret}s] {:?} -> {:?}",
                o.client,
                o.call as f64 / 1e9,
                o.input,
                o.output
            )
        })
        .collect()
}

/// The revisions an operation's answer names.
fn revs_of(o: &model::Output) -> Vec<i64> {
    match o {
        model::Output::Get { mod_rev, .. } => vec![*mod_rev],
        model::Output::Put { rev } | model::Output::Delete { rev, .. } | model::Output::Revoke { rev } => vec![*rev],
        model::Output::Cas { rev, seen, .. } => [Some(*rev), seen.map(|s| s.1)].into_iter().flatten().collect(),
        model::Output::Unknown => vec![],
    }
}

/// Checks each key's history for linearizability, then the watch.
fn check_history(
    history: &[workload::Recorded],
    seen: &[watch_check::Seen],
    first: i64,
    last: i64,
) -> Result<usize, Failure> {
    let mut by_key: BTreeMap<usize, (Vec<workload::KvOp>, Vec<usize>)> = BTreeMap::new();
    for r in history {
        let e = by_key.entry(r.key).or_default();
        e.0.push(r.op.clone());
        e.1.push(r.member);
    }
    for (&k, (ops, members)) in &by_key {
        let pick = |is: &[usize]| is.iter().map(|&i| (members[i], &ops[i])).collect::<Vec<_>>();
        match checker::check::<model::Kv>(ops, 200_000_000) {
            Verdict::Linearizable => {}
            Verdict::Illegal(v) => {
                let tail = pick(&v.prefix[v.prefix.len().saturating_sub(10)..]);
                let stuck = pick(&v.stuck);
                let revs =
                    stuck.iter().chain(tail.last()).flat_map(|(_, o)| revs_of(&o.output)).filter(|r| *r > 0).collect();
                return Err(Failure {
                    what: format!(
                        "key {k} is not linearizable ({} operations)\nlast linearized:{}\nnone of these can come next:{}",
                        ops.len(),
                        show(&tail),
                        show(&stuck)
                    ),
                    key: k,
                    revs,
                });
            }
            Verdict::Inconclusive => {
                return Err(Failure {
                    what: format!("the checker gave up on key {k} ({} operations)", ops.len()),
                    key: k,
                    revs: vec![],
                });
            }
        }
    }
    watch_check::check(seen, history, first, last).map_err(|e| Failure {
        what: format!("watch: {e}"),
        key: 0,
        revs: vec![],
    })
}

/// Where a run's members live.
#[derive(Clone, Copy)]
enum Place {
    /// On 127.0.0.`base`, 127.0.0.`base+1`, ...
    Loopback(u8),
    /// One network namespace each, on subnet 10.77.`subnet`.0/24, so the
    /// injector can also cut and delay their links.
    Namespaces(u8),
}

/// One run: a cluster of `n` members at `place`, faults for `secs`, checks.
async fn run(n: usize, place: Place, secs: u64) {
    let clients = env_or("KVD_ROBUSTNESS_CLIENTS", 8) as usize;
    let keys = env_or("KVD_ROBUSTNESS_KEYS", 10) as usize;
    // Snapshots every 500 entries, keeping 50 for followers: a member left
    // behind for a second catches up by a snapshot, not by the log.
    let flags = ["--log-level", "info", "--snapshot-count", "500", "--experimental-snapshot-catchup-entries", "50"];
    let net = match place {
        Place::Namespaces(subnet) => Some(Arc::new(common::netns::Net::new(subnet, n))),
        Place::Loopback(_) => None,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut members = match (place, &net) {
        (Place::Loopback(base), _) => common::cluster_with(dir.path(), n, base, &flags),
        (Place::Namespaces(_), Some(net)) => common::cluster_in(net, dir.path(), &flags),
        (Place::Namespaces(_), None) => unreachable!("namespaces were just created"),
    };
    for m in &members {
        m.ready().await;
    }
    if cfg!(feature = "failpoints") {
        // From now on a disk that loses what was not synced: every kill is
        // a power cut.
        for m in members.iter_mut() {
            m.set_env("KVD_POWER_CUT_SIM", Some("1"));
            m.restart();
            m.ready().await;
        }
    }
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    let members = Arc::new(Mutex::new(members));
    let first_rev = current_revision(&endpoints).await + 1;

    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let (target_tx, target_rx) = tokio::sync::watch::channel(i64::MAX);
    let progress = Arc::new(Mutex::new(String::new()));
    let watcher = tokio::spawn(watch_check::record(endpoints.clone(), first_rev, target_rx, progress.clone()));
    // On loopback a spare member can join for a while, on the next address.
    let spare = match place {
        Place::Loopback(base) => Some(faults::Spare {
            ip: format!("127.0.0.{}", base as usize + n),
            dir: dir.path().join("spare"),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        }),
        Place::Namespaces(_) => None,
    };
    let injector = tokio::spawn(faults::inject(members.clone(), net.clone(), spare, until, start));
    let mut history = workload::run(endpoints.clone(), clients, keys, start, until).await;
    let faults = injector.await.unwrap();
    faults::all_ready(&members).await;
    history.extend(workload::final_reads(&endpoints, keys, start).await);
    let last_rev = current_revision(&endpoints).await;
    target_tx.send(last_rev).unwrap();
    let Ok(done) = tokio::time::timeout(Duration::from_secs(60), watcher).await else {
        let mut revs = Vec::new();
        for e in &endpoints {
            let mut kv = KvClient::new(Channel::from_shared(e.clone()).unwrap().connect_lazy());
            let r = kv.range(RangeRequest { key: b"rb/".to_vec(), serializable: true, ..Default::default() }).await;
            revs.push(r.map(|r| r.into_inner().header.unwrap().revision).map_err(|s| s.message().to_string()));
        }
        drop(members);
        panic!(
            "the watcher did not reach revision {last_rev} within 60 s: {}; members' revisions {revs:?}; faults: {:?}; \
             member logs and data kept in {}",
            progress.lock().unwrap(),
            faults.events,
            dir.keep().display()
        );
    };
    let (seen, resumes) = done.unwrap();

    // Linearizability, key by key; then the watch; then the replicas.
    let mut acknowledged = 0;
    let failure = match check_history(&history, &seen, first_rev, last_rev) {
        Err(f) => Some(f),
        Ok(n) => {
            acknowledged = n;
            let hashes = common::hashes_at(&endpoints, last_rev).await;
            let membership = faults::check_membership(&members).await;
            if !hashes.windows(2).all(|w| w[0] == w[1]) {
                Some(Failure {
                    what: format!("members differ at revision {last_rev}: {hashes:?}"),
                    key: 0,
                    revs: vec![],
                })
            } else {
                membership.err().map(|what| Failure { what, key: 0, revs: vec![] })
            }
        }
    };
    if let Some(f) = failure {
        let report =
            diagnose::report(&endpoints, &seen, &workload::key_name(f.key), &f.revs, first_rev, last_rev).await;
        drop(members);
        let kept = dir.keep();
        panic!("{}\nfaults: {:?}\n{report}member logs and data kept in {}", f.what, faults.events, kept.display());
    }
    let unknown = history.iter().filter(|r| matches!(r.op.output, model::Output::Unknown)).count();
    assert!(faults.total() > 0 || secs < 3, "no fault was injected");
    assert!(acknowledged > 0, "no write was acknowledged");
    println!(
        "ROBUSTNESS {{\"members\":{n},\"place\":\"{}\",\"seconds\":{secs},\"clients\":{clients},\"keys\":{keys},\"operations\":{},\"acknowledged_writes\":{acknowledged},\"unknown_outcome\":{unknown},\"revisions_watched\":{},\"watch_resumes\":{resumes},\"kills\":{},\"leader_kills\":{},\"pauses\":{},\"replacements\":{},\"crash_points\":{},\"power_cuts\":{},\"snapshot_churns\":{},\"isolations\":{},\"link_cuts\":{},\"delays\":{},\"anomalies\":0,\"lost_writes\":0}}",
        match place {
            Place::Loopback(_) => "loopback",
            Place::Namespaces(_) => "namespaces",
        },
        history.len(),
        seen.len(),
        faults.kills,
        faults.leader_kills,
        faults.pauses,
        faults.replacements,
        faults.crash_points,
        faults.power_cuts,
        faults.snapshot_churns,
        faults.isolations,
        faults.link_cuts,
        faults.delays,
    );
    eprintln!("faults: {:?}", faults.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_stay_linearizable_under_kills_and_pauses() {
    let secs = env_or("KVD_ROBUSTNESS_SECONDS", 20);
    for _ in 0..env_or("KVD_ROBUSTNESS_ROUNDS", 1) {
        run(3, Place::Loopback(60), secs).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_stay_linearizable_under_kills_and_pauses() {
    let secs = env_or("KVD_ROBUSTNESS_SECONDS", 15);
    for _ in 0..env_or("KVD_ROBUSTNESS_ROUNDS", 1) {
        run(5, Place::Loopback(70), secs).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_stay_linearizable_under_partitions_and_delays() {
    let secs = env_or("KVD_ROBUSTNESS_SECONDS", 20);
    for _ in 0..env_or("KVD_ROBUSTNESS_ROUNDS", 1) {
        run(3, Place::Namespaces(60), secs).await;
    }
}
