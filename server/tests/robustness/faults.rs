//! The fault injector, one fault at a time with a few seconds of calm
//! between them, never more than a minority affected, so the cluster stays
//! available:
//! - SIGKILL and restart of a random member or of the leader;
//! - SIGSTOP/SIGCONT pauses longer than the election timeout;
//! - member replacement: MemberRemove, wipe its data, MemberAdd as a
//!   learner, start it with `--initial-cluster-state existing`, promote;
//! - snapshot catch-up across a membership change: a follower paused while
//!   a spare member joins, is promoted and leaves again and the log moves
//!   past what the leader keeps, resumed, caught up by a raft snapshot, and
//!   killed right after the install (then restarted);
//! - with kvd's crash points compiled in (the `failpoints` feature, as the
//!   test suite builds it): a restart that makes a member crash itself
//!   before or after a WAL fsync or before a backend commit; and, since
//!   members then run on a simulated disk that loses what was not synced
//!   (`KVD_POWER_CUT_SIM`, `server/src/powercut.rs`), every kill is a power
//!   cut, and a power cut on a member whose fdatasync takes 100-400 ms (so
//!   it applies entries before its own WAL holds them);
//! - with a [`Net`] (members in network namespaces): the leader or a random
//!   member cut off from every peer while clients still reach it, one
//!   peer-to-peer path cut, and a member's outgoing link throttled so its
//!   messages queue (delays) and overflow (losses).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvd_api::etcdserverpb::cluster_client::ClusterClient;
use kvd_api::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
};
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::common::Proc;
use crate::common::netns::Net;

/// The faults one run injected, for the report.
#[derive(Debug, Default, Clone)]
pub struct FaultLog {
    pub kills: usize,
    pub leader_kills: usize,
    pub pauses: usize,
    pub replacements: usize,
    pub isolations: usize,
    pub link_cuts: usize,
    pub delays: usize,
    pub crash_points: usize,
    pub power_cuts: usize,
    pub snapshot_churns: usize,
    pub events: Vec<String>,
}

impl FaultLog {
    pub fn total(&self) -> usize {
        self.kills
            + self.leader_kills
            + self.pauses
            + self.replacements
            + self.crash_points
            + self.power_cuts
            + self.snapshot_churns
            + self.isolations
            + self.link_cuts
            + self.delays
    }
}

fn signal(p: &Proc, sig: i32) {
    if let Some(c) = &p.child {
        // SAFETY: kill(2) on the pid of a child this test owns and has not reaped.
        unsafe {
            libc::kill(c.id() as i32, sig);
        }
    }
}

/// The index of the leader, if a running member names itself leader within 2 s.
async fn find_leader(members: &Arc<Mutex<Vec<Proc>>>) -> Option<usize> {
    let endpoints: Vec<String> = members.lock().unwrap().iter().map(|m| m.endpoint.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        for (i, e) in endpoints.iter().enumerate() {
            let ch = tonic::transport::Channel::from_shared(e.clone())
                .unwrap()
                .timeout(Duration::from_millis(300))
                .connect_lazy();
            let mut m = kvd_api::etcdserverpb::maintenance_client::MaintenanceClient::new(ch);
            if let Ok(st) = m.status(kvd_api::etcdserverpb::StatusRequest {}).await {
                let st = st.into_inner();
                if st.leader != 0 && Some(st.leader) == st.header.map(|h| h.member_id) {
                    return Some(i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The kinds of fault the injector picks from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    LeaderKill,
    Kill,
    Pause,
    Replace,
    /// kvd restarted to crash itself at one of its crash points.
    CrashPoint,
    /// A member on a slow disk loses power.
    PowerCut,
    /// A follower catches up by snapshot across a membership change and is
    /// killed right after the install.
    SnapshotChurn,
    Isolate,
    Cut,
    Throttle,
}

/// Crash points on the write path (server/src/failpoints.rs).
const CRASH_POINTS: [&str; 3] = ["wal_before_fsync", "wal_after_fsync", "backend_before_commit"];

/// Where a spare member may run for a while: its address, data dir and flags.
#[derive(Clone)]
pub struct Spare {
    pub ip: String,
    pub dir: std::path::PathBuf,
    pub flags: Vec<String>,
}

/// Injects faults until `until`, then leaves every member running and every
/// link healed.
pub async fn inject(
    members: Arc<Mutex<Vec<Proc>>>,
    net: Option<Arc<Net>>,
    spare: Option<Spare>,
    until: Instant,
    start: Instant,
) -> FaultLog {
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut log = FaultLog::default();
    let n = members.lock().unwrap().len();
    let mut menu = vec![Fault::LeaderKill, Fault::Kill, Fault::Pause, Fault::Replace];
    if cfg!(feature = "failpoints") {
        menu.extend([Fault::CrashPoint, Fault::PowerCut]);
    }
    if spare.is_some() {
        menu.push(Fault::SnapshotChurn);
    }
    if net.is_some() {
        menu.extend([Fault::Isolate, Fault::Cut, Fault::Throttle]);
    }
    // Let the clients get going first.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Every short run has a snapshot catch-up across a membership change
    // (with a spare) and a power cut on a leader (with crash points) first;
    // then faults at random.
    let mut first: Vec<Fault> =
        [spare.is_some().then_some(Fault::SnapshotChurn), cfg!(feature = "failpoints").then_some(Fault::PowerCut)]
            .into_iter()
            .flatten()
            .rev()
            .collect();
    while Instant::now() < until {
        let at = start.elapsed().as_secs_f64();
        let fault = first.pop().unwrap_or_else(|| menu[rng.random_range(0..menu.len())]);
        let victim = match fault {
            Fault::LeaderKill | Fault::Isolate => find_leader(&members).await.unwrap_or_else(|| rng.random_range(0..n)),
            // A follower: it must fall behind the leader's log.
            Fault::SnapshotChurn => match find_leader(&members).await {
                Some(l) => (l + rng.random_range(1..n)) % n,
                None => rng.random_range(0..n),
            },
            _ => rng.random_range(0..n),
        };
        let down = Duration::from_millis(rng.random_range(600..1800));
        match fault {
            Fault::LeaderKill | Fault::Kill => {
                members.lock().unwrap()[victim].kill9();
                let leader = if fault == Fault::LeaderKill { " (leader)" } else { "" };
                log.events.push(format!("{at:.1}s kill -9 m{victim}{leader} for {down:?}"));
                tokio::time::sleep(down).await;
                members.lock().unwrap()[victim].restart();
                *(if fault == Fault::LeaderKill { &mut log.leader_kills } else { &mut log.kills }) += 1;
            }
            Fault::Pause => {
                signal(&members.lock().unwrap()[victim], libc::SIGSTOP);
                log.pauses += 1;
                log.events.push(format!("{at:.1}s pause m{victim} {down:?}"));
                tokio::time::sleep(down).await;
                signal(&members.lock().unwrap()[victim], libc::SIGCONT);
            }
            Fault::Replace => {
                log.events.push(format!("{at:.1}s replace m{victim}"));
                let took = replace(&members, victim).await;
                log.events.push(format!("  m{victim} replaced and promoted in {took:?}"));
                log.replacements += 1;
            }
            Fault::SnapshotChurn => {
                let spare = spare.as_ref().expect("the menu has this fault only with a spare");
                log.events.push(format!("{at:.1}s pause m{victim}, a spare joins and leaves"));
                let outcome = snapshot_churn(&members, victim, spare).await;
                log.events.push(format!("  m{victim}: {outcome}"));
                log.snapshot_churns += 1;
            }
            Fault::PowerCut => {
                let slow = rng.random_range(100..400);
                let outcome = power_cut(&members, victim, slow, down).await;
                log.events
                    .push(format!("{at:.1}s power cut on m{victim} (fdatasync {slow} ms) after {down:?}: {outcome}"));
                log.power_cuts += 1;
            }
            Fault::CrashPoint => {
                let point = CRASH_POINTS[rng.random_range(0..CRASH_POINTS.len())];
                let after = rng.random_range(5..60);
                let outcome = crash_at(&members, victim, &format!("{point}={after}*off->return")).await;
                log.events.push(format!("{at:.1}s crash m{victim} at {point} after {after}: {outcome}"));
                log.crash_points += 1;
            }
            Fault::Isolate | Fault::Cut | Fault::Throttle => {
                let net = net.as_ref().expect("network faults need namespaces");
                let down = down * 2;
                match fault {
                    Fault::Isolate => {
                        log.events.push(format!("{at:.1}s isolate m{victim} (leader) from its peers for {down:?}"));
                        (0..n).filter(|&j| j != victim).for_each(|j| net.cut(victim, j, true));
                        log.isolations += 1;
                    }
                    Fault::Cut => {
                        let other = (victim + rng.random_range(1..n)) % n;
                        log.events.push(format!("{at:.1}s cut m{victim} <-> m{other} for {down:?}"));
                        net.cut(victim, other, true);
                        log.link_cuts += 1;
                    }
                    _ => {
                        let (kbit, queue) = (rng.random_range(64..512), rng.random_range(50..400));
                        log.events.push(format!(
                            "{at:.1}s throttle m{victim} to {kbit} kbit/s, {queue} ms queue, for {down:?}"
                        ));
                        net.throttle(victim, kbit, queue);
                        log.delays += 1;
                    }
                }
                tokio::time::sleep(down).await;
                net.heal();
            }
        }
        // Calm: the restarted member catches up before the next fault.
        let calm = Duration::from_millis(rng.random_range(800..2500));
        tokio::time::sleep(calm.min(until.saturating_duration_since(Instant::now()))).await;
    }
    log
}

/// Restarts member `victim` with `FAILPOINTS=spec`, waits up to 5 s for it
/// to crash there (kill -9 if it has not), and restarts it without.
async fn crash_at(members: &Arc<Mutex<Vec<Proc>>>, victim: usize, spec: &str) -> &'static str {
    {
        let mut m = members.lock().unwrap();
        m[victim].set_env("FAILPOINTS", Some(spec));
        m[victim].restart();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut outcome = "not reached in 5 s, killed";
    while Instant::now() < deadline {
        let exited =
            members.lock().unwrap()[victim].child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited {
            outcome = "crashed there";
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut m = members.lock().unwrap();
    m[victim].set_env("FAILPOINTS", None);
    m[victim].restart();
    outcome
}

/// Restarts member `victim` on a disk whose fdatasync takes `slow_ms`,
/// moves the leadership to it (a leader applies entries the others hold
/// before its own fdatasync covers them), lets it serve for `after`, cuts
/// its power (kill -9 on the simulated disk: what it did not fdatasync is
/// lost) and restarts it on a normal disk.
async fn power_cut(members: &Arc<Mutex<Vec<Proc>>>, victim: usize, slow_ms: u64, after: Duration) -> &'static str {
    use kvd_api::etcdserverpb::maintenance_client::MaintenanceClient;
    use kvd_api::etcdserverpb::{MoveLeaderRequest, StatusRequest};
    let endpoint = {
        let mut m = members.lock().unwrap();
        m[victim].set_env("FAILPOINTS", Some(&format!("wal_before_fsync=sleep({slow_ms})")));
        m[victim].restart();
        m[victim].endpoint.clone()
    };
    let client = |e: String| {
        MaintenanceClient::new(Channel::from_shared(e).unwrap().timeout(Duration::from_secs(2)).connect_lazy())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut led = false;
    while Instant::now() < deadline && !led {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(st) = client(endpoint.clone()).status(StatusRequest {}).await else { continue };
        let id = st.into_inner().header.map_or(0, |h| h.member_id);
        let Some(l) = find_leader(members).await else { continue };
        if l == victim {
            led = true;
            break;
        }
        let leader = members.lock().unwrap()[l].endpoint.clone();
        let _ = client(leader).move_leader(MoveLeaderRequest { target_id: id }).await;
    }
    tokio::time::sleep(after).await;
    let mut m = members.lock().unwrap();
    let died = m[victim].child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
    m[victim].set_env("FAILPOINTS", None);
    m[victim].restart();
    match (died, led) {
        (true, _) => "it had stopped before the cut",
        (false, true) => "cut while leading, restarted",
        (false, false) => "cut (leadership did not move to it), restarted",
    }
}

/// Calls `f` on a Cluster client of each member but `skip` in turn until one
/// succeeds, for up to 30 s; returns the last error after that.
async fn try_cluster_call<T, F, Fut>(endpoints: &[String], skip: usize, what: &str, mut f: F) -> Result<T, String>
where
    F: FnMut(ClusterClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut last = String::new();
        for (i, e) in endpoints.iter().enumerate().filter(|(i, _)| *i != skip) {
            let ch = Channel::from_shared(e.clone()).unwrap().timeout(Duration::from_secs(3)).connect_lazy();
            match f(ClusterClient::new(ch)).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => last = format!("m{i}: {}", s.message()),
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{what} failed for 30 s: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`try_cluster_call`], panicking on failure.
async fn cluster_call<T, F, Fut>(endpoints: &[String], skip: usize, what: &str, f: F) -> T
where
    F: FnMut(ClusterClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    try_cluster_call(endpoints, skip, what, f).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Replaces member `victim` by a new member with the same name and peer URL
/// and an empty data dir, as an operator replaces a failed member.
async fn replace(members: &Arc<Mutex<Vec<Proc>>>, victim: usize) -> Duration {
    let started = Instant::now();
    let endpoints: Vec<String> = members.lock().unwrap().iter().map(|m| m.endpoint.clone()).collect();
    let name = format!("m{victim}");
    let list = cluster_call(&endpoints, victim, "MemberList", |mut c| async move {
        c.member_list(MemberListRequest { linearizable: true }).await
    })
    .await;
    // By peer URL: a member publishes its name only some time after it starts.
    let peer = members.lock().unwrap()[victim].flag("--initial-advertise-peer-urls").unwrap_or_default().to_string();
    let old = list
        .members
        .iter()
        .find(|m| m.peer_ur_ls.contains(&peer))
        .unwrap_or_else(|| panic!("{name} ({peer}) is not a member: {:?}", list.members));
    let (old_id, peer_urls) = (old.id, old.peer_ur_ls.clone());
    // A retried remove whose first answer was lost finds the member gone.
    cluster_call(&endpoints, victim, "MemberRemove", |mut c| async move {
        match c.member_remove(MemberRemoveRequest { id: old_id }).await {
            Err(s) if s.message() == "etcdserver: member not found" => Ok(tonic::Response::new(Default::default())),
            r => r,
        }
    })
    .await;
    {
        let mut m = members.lock().unwrap();
        m[victim].kill9();
        std::fs::remove_dir_all(&m[victim].data_dir).unwrap();
    }
    // A retried add whose first answer was lost finds the peer URL taken:
    // the member list then names the new member.
    let added = cluster_call(&endpoints, victim, "MemberAdd", |mut c| {
        let peer_ur_ls = peer_urls.clone();
        async move {
            match c.member_add(MemberAddRequest { peer_ur_ls: peer_ur_ls.clone(), is_learner: true }).await {
                Err(s) if s.message() == "etcdserver: Peer URLs already exists" => {
                    let list = c.member_list(MemberListRequest { linearizable: true }).await?.into_inner();
                    let member = list.members.iter().find(|m| m.peer_ur_ls == peer_ur_ls).cloned();
                    Ok(tonic::Response::new(MemberAddResponse { member, members: list.members, header: None }))
                }
                r => r,
            }
        }
    })
    .await;
    let new_id = added.member.as_ref().expect("MemberAdd names the new member").id;
    assert_ne!(new_id, old_id, "the replacement kept the removed member's id");
    // Names by peer URL, from the members' own flags: MemberList shows a
    // name only once its member has published it.
    let ic = initial_cluster(members, &added.members, &peer, &name);
    {
        let mut m = members.lock().unwrap();
        m[victim].set_flag("--initial-cluster", &ic);
        m[victim].set_flag("--initial-cluster-state", "existing");
        m[victim].restart();
    }
    // Promotion fails ("learner not ready") until the learner has caught up.
    let promoted = try_cluster_call(&endpoints, victim, "MemberPromote", |mut c| async move {
        c.member_promote(MemberPromoteRequest { id: new_id }).await
    })
    .await;
    if let Err(e) = promoted {
        let log = members.lock().unwrap()[victim].log_text();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        panic!("{e}\nthe new m{victim}'s log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    started.elapsed()
}

/// How many snapshots member `i` has installed, by its log.
fn installs(members: &Arc<Mutex<Vec<Proc>>>, i: usize) -> usize {
    members.lock().unwrap()[i].log_text().matches("installed snapshot from the leader").count()
}

/// Pauses `victim`; meanwhile a spare member joins as a learner, is promoted
/// and removed again, while the clients' writes move the log on (the
/// cluster's snapshot flags keep little of it). Then resumes `victim`, waits
/// for its snapshot install and kills it at once, and restarts it.
async fn snapshot_churn(members: &Arc<Mutex<Vec<Proc>>>, victim: usize, spare: &Spare) -> String {
    let endpoints: Vec<String> = members.lock().unwrap().iter().map(|m| m.endpoint.clone()).collect();
    let before = installs(members, victim);
    signal(&members.lock().unwrap()[victim], libc::SIGSTOP);
    let peer = format!("http://{}:{}", spare.ip, crate::common::free_port_on(&spare.ip));
    let added = cluster_call(&endpoints, victim, "MemberAdd (spare)", |mut c| {
        let peer_ur_ls = vec![peer.clone()];
        async move { c.member_add(MemberAddRequest { peer_ur_ls, is_learner: true }).await }
    })
    .await;
    let id = added.member.as_ref().expect("MemberAdd names the new member").id;
    let ic = initial_cluster(members, &added.members, &peer, "spare");
    let _ = std::fs::remove_dir_all(&spare.dir);
    let mut flags: Vec<&str> = spare.flags.iter().map(String::as_str).collect();
    flags.extend(["--initial-cluster-state", "existing"]);
    let mut proc = Proc::member(&spare.dir, &spare.ip, "spare", &peer, &ic, &flags);
    let promoted = try_cluster_call(&endpoints, victim, "MemberPromote (spare)", |mut c| async move {
        c.member_promote(MemberPromoteRequest { id }).await
    })
    .await;
    if let Err(e) = promoted {
        let log = proc.log_text();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        panic!("{e}\nthe spare's log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    // The victim is still paused: the spare's removal needs the two others.
    cluster_call(&endpoints, victim, "MemberRemove (spare)", |mut c| async move {
        match c.member_remove(MemberRemoveRequest { id }).await {
            Err(s) if s.message() == "etcdserver: member not found" => Ok(tonic::Response::new(Default::default())),
            r => r,
        }
    })
    .await;
    proc.kill9();
    // More writes after the change, so the victim's log is left far behind.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&members.lock().unwrap()[victim], libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(10);
    let installed = loop {
        if installs(members, victim) > before {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    members.lock().unwrap()[victim].restart();
    if installed {
        "installed a snapshot, killed at once".into()
    } else {
        "caught up by the log (no snapshot in 10 s), killed".into()
    }
}

/// `--initial-cluster` for a member joining at `peer` as `name`: every
/// member of `list`, named after the harness's own members by peer URL.
fn initial_cluster(
    members: &Arc<Mutex<Vec<Proc>>>,
    list: &[kvd_api::etcdserverpb::Member],
    peer: &str,
    name: &str,
) -> String {
    let mut names: Vec<(String, String)> = members
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| (p.flag("--initial-advertise-peer-urls").unwrap_or_default().to_string(), format!("m{i}")))
        .collect();
    names.push((peer.to_string(), name.to_string()));
    list.iter()
        .flat_map(|m| m.peer_ur_ls.iter())
        .map(|u| {
            let n = names.iter().find(|(p, _)| p == u).map_or("unknown", |(_, n)| n.as_str());
            format!("{n}={u}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Every member's membership (ids and learner flags), as its own raft holds
/// it, must be the same: a member that counts a removed member as a voter
/// could form a quorum apart from the others.
pub async fn check_membership(members: &Arc<Mutex<Vec<Proc>>>) -> Result<(), String> {
    let endpoints: Vec<String> = members.lock().unwrap().iter().map(|m| m.endpoint.clone()).collect();
    let mut views = Vec::new();
    for e in &endpoints {
        let ch = Channel::from_shared(e.clone()).unwrap().timeout(Duration::from_secs(3)).connect_lazy();
        let list = ClusterClient::new(ch)
            .member_list(MemberListRequest { linearizable: false })
            .await
            .map_err(|s| format!("{e}: MemberList: {}", s.message()))?
            .into_inner();
        let mut view: Vec<(u64, bool)> = list.members.iter().map(|m| (m.id, m.is_learner)).collect();
        view.sort();
        views.push(view);
    }
    if views.windows(2).all(|w| w[0] == w[1]) && views[0].len() == endpoints.len() && views[0].iter().all(|m| !m.1) {
        Ok(())
    } else {
        Err(format!("members' memberships (id, learner) differ or are not the {} voters: {views:x?}", endpoints.len()))
    }
}

/// Waits until every member serves linearizable reads again.
pub async fn all_ready(members: &Arc<Mutex<Vec<Proc>>>) {
    let endpoints: Vec<String> = members.lock().unwrap().iter().map(|m| m.endpoint.clone()).collect();
    for e in endpoints {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ch = tonic::transport::Channel::from_shared(e.clone()).unwrap().connect_lazy();
            let mut kv = kvd_api::etcdserverpb::kv_client::KvClient::new(ch);
            if kv
                .range(kvd_api::etcdserverpb::RangeRequest { key: b"ready".to_vec(), ..Default::default() })
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                let log = members.lock().unwrap().iter().find(|m| m.endpoint == e).map(Proc::log_text);
                let log = log.unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "{e} does not serve 30 s after the faults; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
